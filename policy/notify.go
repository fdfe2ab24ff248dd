package policy

import (
	"context"
	"time"

	"github.com/respite/respite/backend"
)

// Notify mode (postgres.invalidation.mode notify), for a role without
// replication rights: the leader (the same lease as the slot's consumer)
// LISTENs on the channel that the documented trigger (backend.NotifyFunctionSQL,
// NotifyTriggerSQL) pg_notify()s with each changed row's table and key,
// and applies each notification as the logical stream's changes are
// applied (capture.apply: Redis, every in-process tier, fill leases).
// NOTIFY has no replay: whatever was sent while no instance listened is
// gone, so the tracked routes are flushed every time the LISTEN starts
// (at start-up, after a lost connection, after a change of leader).
// Notifications are delivered after their transaction committed, so a
// fill's lease works as with the stream.
func (c *capture) consumeNotify(ctx context.Context) error {
	l, err := backend.Listen(ctx, c.dsn, c.cfg.Channel)
	if err != nil {
		return err
	}
	defer l.Close()
	// Listening now: anything from before may have been missed.
	for _, r := range c.tracked {
		if err := c.flushRoute(ctx, r); err != nil {
			return err
		}
	}
	c.log.Info("listening for notifications; tracked routes flushed (NOTIFY has no replay)", "channel", c.cfg.Channel, "routes", len(c.tracked))
	var beaten time.Time
	for {
		ch, ok, err := l.Next(ctx, c.interval())
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if ok {
			if ch.Unknown && ch.Table == 0 {
				c.log.Warn("a notification that is not the trigger's was ignored", "channel", c.cfg.Channel)
				continue
			}
			if err := c.apply(ctx, &backend.Txn{Changes: []backend.Change{ch}}); err != nil {
				return err
			}
		}
		if !ok || time.Since(beaten) >= c.interval() {
			c.beat(ctx)
			beaten = time.Now()
		}
	}
}
