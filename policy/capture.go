package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
)

// Change capture (postgres.invalidation.mode logical): one instance of a
// deployment, the holder of the leader lease in Redis (SET NX PX,
// renewed every status_interval), consumes the persistent logical slot
// over a publication of the tracked routes' tables (backend/replication.go).
// For every committed transaction it deletes, in Redis, the cached copy,
// the negative marker and the fill leases (lease.go) of every key the
// transaction touched (old and new key when the key column changed), drops
// them from its own in-process tiers and tells the other instances to
// (local.go's channel); only then does it acknowledge the transaction to
// PostgreSQL, so confirmed_flush_lsn never passes a commit whose
// invalidation is not applied: a consumer that dies before the ack gets
// the transaction again (at least once). TRUNCATE, a key the stream does
// not carry (no REPLICA IDENTITY covering it), a slot created anew or
// found lost (wal_status = lost), and a publication whose tables changed
// flush the whole route (its keys deleted by SCAN, its epoch bumped so
// fills in flight are refused, every in-process tier purged). When idle,
// the consumer asks for a keepalive every status_interval and
// acknowledges its WAL end, so an idle publication does not pin WAL, and
// it writes a heartbeat (Redis' clock) that every instance reads: a
// heartbeat older than max_lag makes the tracked routes serve reads from
// PostgreSQL until the stream is applied again.
type capture struct {
	cfg     config.Invalidation
	dsn     string
	db      *backend.DB
	rdb     redis.UniversalClient
	cache   Cache
	log     *slog.Logger
	tracked []*Route
	sh      *shared
	token   string // this instance's leader token
	// warned holds the tables whose key-less changes were logged once.
	warned map[uint32]bool
	// unnamed holds the routes a change's key could not name, logged once.
	unnamed map[*Route]bool
	hooks   captureHooks
	Stats   CaptureStats
}

// captureHooks let tests stop the consumer at chosen points.
type captureHooks struct {
	// beforeAck runs after a transaction is applied, before its ack;
	// false drops the connection there, as a killed process would.
	beforeAck atomic.Pointer[func(txn *backend.Txn) bool]
	// crashed makes the consumer stop as a killed process would: its
	// connection dropped without a word, its lease left to expire.
	crashed atomic.Bool
}

// CaptureStats is what the change capture did; read with Load.
type CaptureStats struct {
	Leader       atomic.Bool  // this instance consumes the slot
	Txns         atomic.Int64 // transactions applied
	Skipped      atomic.Int64 // the proxy's own transactions skipped (tagged)
	Keys         atomic.Int64 // keys invalidated
	Flushes      atomic.Int64 // whole-route flushes (TRUNCATE, lost or new slot, reconnect in notify mode)
	Errors       atomic.Int64 // consumer restarts after an error
	LagBytes     atomic.Int64 // the slot's WAL behind the server's position (leader only)
	Stale        atomic.Bool  // the stream is older than max_lag: tracked reads go to PostgreSQL
	SlotsCreated atomic.Int64
}

func leaderKey(slot string) string    { return "respite:cdc:leader:" + slot }
func heartbeatKey(slot string) string { return "respite:cdc:applied:" + slot }

func newCapture(cfg config.Config, db *backend.DB, rdb redis.UniversalClient, cache Cache, routes []*Route, sh *shared, log *slog.Logger) *capture {
	c := &capture{cfg: cfg.Postgres.Invalidation, dsn: cfg.Postgres.DSN, db: db, rdb: rdb, cache: cache, sh: sh,
		log:   log.With("component", "change-capture", "slot", cfg.Postgres.Invalidation.Slot),
		token: cfg.WriteBack.Consumer + "/" + newToken()}
	for _, r := range routes {
		if r.cfg.TrackChanges {
			c.tracked = append(c.tracked, r)
		}
	}
	return c
}

func (c *capture) interval() time.Duration { return time.Duration(c.cfg.StatusInterval) }

// name names the leader lease and the heartbeat: the slot, or in notify
// mode the channel.
func (c *capture) name() string {
	if c.cfg.Mode == config.InvalidationNotify {
		return "notify:" + c.cfg.Channel
	}
	return c.cfg.Slot
}

// ready reports whether every tracked route's table is described.
func (c *capture) ready() bool {
	for _, r := range c.tracked {
		if r.Unready() != nil {
			return false
		}
	}
	return true
}

// run is the capture's life: watch the heartbeat, and whenever the
// leader lease is free take it and consume the slot, until ctx ends.
func (c *capture) run(ctx context.Context) {
	go c.watchLag(ctx)
	lease := time.Duration(c.cfg.Lease)
	tagChecked := false
	for ctx.Err() == nil {
		if !c.ready() {
			sleepCtx(ctx, c.interval())
			continue
		}
		if !tagChecked {
			tagChecked = true
			c.sh.tag.Store(c.cfg.Mode == config.InvalidationLogical && c.canTag(ctx))
		}
		won, err := c.rdb.SetNX(ctx, leaderKey(c.name()), c.token, lease).Result()
		if err != nil || !won {
			sleepCtx(ctx, c.interval())
			continue
		}
		c.log.Info("leader: applying changes from PostgreSQL", "mode", c.cfg.Mode)
		c.Stats.Leader.Store(true)
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); c.renew(lctx, cancel) }()
		if c.cfg.Mode == config.InvalidationNotify {
			err = c.consumeNotify(lctx)
		} else {
			err = c.consume(lctx)
		}
		cancel()
		<-done
		c.Stats.Leader.Store(false)
		if c.hooks.crashed.Load() {
			return
		}
		releaseLock.Run(context.WithoutCancel(ctx), c.rdb, []string{leaderKey(c.name())}, c.token)
		if err != nil && ctx.Err() == nil {
			c.Stats.Errors.Add(1)
			c.log.Warn("change capture stopped; retrying", "err", LogDetail(err))
			sleepCtx(ctx, c.interval())
		}
	}
}

// renewLease extends the lease only while it is still ours.
var renewLease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)

// renew keeps the leader lease every status_interval; a lease lost (or
// Redis unreachable past half the lease) stops the consumer.
func (c *capture) renew(ctx context.Context, stop context.CancelFunc) {
	lease := time.Duration(c.cfg.Lease)
	last := time.Now()
	for ctx.Err() == nil {
		sleepCtx(ctx, c.interval())
		if ctx.Err() != nil {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, lease/2)
		n, err := renewLease.Run(rctx, c.rdb, []string{leaderKey(c.name())}, c.token, lease.Milliseconds()).Int()
		cancel()
		switch {
		case err == nil && n == 1:
			last = time.Now()
		case err == nil || time.Since(last) > lease/2:
			c.log.Warn("leader lease lost: stopping the consumer", "err", err)
			stop()
			return
		}
	}
}

// consume prepares the publication and the slot, then applies the stream
// until ctx ends or an error.
func (c *capture) consume(ctx context.Context) error {
	var tables []*backend.Table
	keys := map[uint32]backend.Key{}
	for _, r := range c.tracked {
		key := r.table.Key()
		if k, ok := keys[r.table.OID()]; ok && !slices.Equal(k.Columns, key.Columns) || ok && len(key.Columns) > 1 && k.Separator != key.Separator {
			return fmt.Errorf("routes on table %s track changes with two keys (%s, %s): not supported", r.table.Name(), keyDesc(k), keyDesc(key))
		}
		tables = append(tables, r.table)
		keys[r.table.OID()] = key
	}
	flush := ""
	changed, err := c.db.EnsurePublication(ctx, c.cfg.Publication, tables)
	if err != nil {
		return fmt.Errorf("publication %s: %w", c.cfg.Publication, err)
	}
	if changed {
		flush = "publication created or its tables changed"
	}
	info, err := c.db.Slot(ctx, c.cfg.Slot)
	if err != nil {
		return err
	}
	if info.Exists && info.WALStatus == "lost" {
		c.log.Error("the replication slot is lost (PostgreSQL removed WAL it needed: max_slot_wal_keep_size): recreating it and flushing the tracked routes")
		if err := c.db.DropSlot(ctx, c.cfg.Slot); err != nil {
			return err
		}
		info.Exists = false
		flush = "slot lost"
	}
	if !info.Exists {
		if err := c.db.CreateSlot(ctx, c.cfg.Slot); err != nil {
			return fmt.Errorf("creating slot %s: %w", c.cfg.Slot, err)
		}
		c.Stats.SlotsCreated.Add(1)
		if flush == "" {
			flush = "slot created"
		}
	}
	if flush != "" {
		// Changes from before the slot (or the table's publication) are
		// not in the stream: nothing cached from before can be trusted.
		for _, r := range c.tracked {
			if err := c.flushRoute(ctx, r); err != nil {
				return err
			}
		}
		c.log.Info("tracked routes flushed", "why", flush, "routes", len(c.tracked))
	}
	rep, err := backend.StartReplication(ctx, c.dsn, c.cfg.Slot, c.cfg.Publication, keys)
	if err != nil {
		return err
	}
	defer func() {
		if c.hooks.crashed.Load() {
			rep.Abandon()
		} else {
			rep.Close()
		}
	}()
	var pinged time.Time
	for {
		if time.Since(pinged) >= c.interval() {
			// Where is the server? Its keepalive comes back as an idle
			// event once everything before it was returned.
			if err := rep.Ping(); err != nil {
				return err
			}
			pinged = time.Now()
			if lag, err := c.db.SlotLag(ctx, c.cfg.Slot); err == nil {
				c.Stats.LagBytes.Store(lag)
			}
		}
		nctx, cancel := context.WithTimeout(ctx, c.interval())
		ev, err := rep.Next(nctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !(nctx.Err() != nil && errors.Is(err, nctx.Err())) {
			// A real error, even one that came as the wait ran out: pgconn
			// closes the connection on any error but a timeout, and a
			// Ping on it would race with that close.
			return err
		}
		switch {
		case ev.Txn != nil:
			// Invalidated only once new snapshots see the commit: a fill
			// that reads after the invalidation must read the new rows
			// (one that read before it loses its lease to it, lease.go).
			if len(ev.Txn.Changes) > 0 {
				if err := c.db.WaitVisible(ctx, ev.Txn.Xid); err != nil {
					return err
				}
			}
			if err := c.apply(ctx, ev.Txn); err != nil {
				return err
			}
			if h := c.hooks.beforeAck.Load(); h != nil && !(*h)(ev.Txn) {
				c.hooks.crashed.Store(true)
				return errors.New("stopped before the ack (test hook)")
			}
			if err := rep.Ack(ev.Txn.End); err != nil {
				return err
			}
		case ev.WALEnd > 0:
			// Idle: every transaction sent before is applied.
			if err := rep.Ack(ev.WALEnd); err != nil {
				return err
			}
			c.beat(ctx)
		}
	}
}

// keyDesc names a key in an error: its column, or its columns and
// separator.
func keyDesc(k backend.Key) string {
	if len(k.Columns) == 1 {
		return k.Columns[0]
	}
	return strings.Join(k.Columns, "+") + " joined by " + strconv.Quote(k.Separator)
}

// apply invalidates what txn changed, everywhere, before it is acked.
func (c *capture) apply(ctx context.Context, txn *backend.Txn) error {
	byRoute := map[*Route][]string{}
	flush := map[*Route]bool{}
	own := tagsOf(txn)
	for _, ch := range txn.Changes {
		for _, r := range c.tracked {
			if r.table.OID() != ch.Table {
				continue
			}
			if ch.Kind == backend.ChangeTruncate || ch.Unknown {
				if ch.Unknown && !c.warned[ch.Table] {
					if c.warned == nil {
						c.warned = map[uint32]bool{}
					}
					c.warned[ch.Table] = true
					c.log.Warn("a change whose key the stream did not carry flushed the route (logged once per table): when the key column is not in the table's replica identity every UPDATE and DELETE flushes the route; give the table one that covers it (ALTER TABLE ... REPLICA IDENTITY FULL, or USING INDEX on the key column's unique index)",
						"table", r.table.Name(), "route", r.cfg.Name, "key", strings.Join(r.table.KeyColumns(), ", "))
				}
				flush[r] = true
				continue
			}
			for _, k := range ch.Keys {
				canon, err := r.table.CanonicalForm(ctx, k)
				var ke *backend.KeyError
				if errors.As(err, &ke) {
					// No key of the route can name it (a part holding the
					// separator, or a trigger that sends another key).
					if !c.unnamed[r] {
						if c.unnamed == nil {
							c.unnamed = map[*Route]bool{}
						}
						c.unnamed[r] = true
						c.log.Warn("a changed row's key names no key of the route: skipped (logged once per route); in notify mode, check that the trigger passes every key column (docs/OPERATIONS.md)",
							"route", r.cfg.Name)
					}
					continue
				}
				if err != nil {
					return err
				}
				key := string(r.cacheKey([]byte(r.cfg.Prefix + canon))) // where the route caches it (cache_version)
				if toks := own[r.cfg.Name+"\x00"+key]; toks != nil && r.stores {
					done, err := c.ownFinished(ctx, key, toks)
					if err != nil {
						return err
					}
					if done {
						c.Stats.Skipped.Add(1)
						continue // the cache holds what the proxy committed
					}
				}
				byRoute[r] = append(byRoute[r], key)
			}
		}
	}
	for r := range flush {
		if err := c.flushRoute(ctx, r); err != nil {
			return err
		}
		delete(byRoute, r)
	}
	for r, keys := range byRoute {
		if err := c.invalidate(ctx, r, keys); err != nil {
			return err
		}
	}
	c.Stats.Txns.Add(1)
	return nil
}

// invalidateChunk bounds the keys of one pipeline and one message.
const invalidateChunk = 256

// invalidate deletes keys' cached copies, negative markers and fill
// leases in Redis, drops them from this instance's in-process tier and
// tells the other instances to; an error means some may be left.
func (c *capture) invalidate(ctx context.Context, r *Route, keys []string) error {
	seen := map[string]bool{}
	uniq := keys[:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			uniq = append(uniq, k)
		}
	}
	for len(uniq) > 0 {
		n := min(len(uniq), invalidateChunk)
		chunk := uniq[:n]
		uniq = uniq[n:]
		cmds := make([][][]byte, len(chunk))
		for i, k := range chunk {
			cmds[i] = [][]byte{cmdDel, []byte(k), []byte(negKey(k)), []byte(leaseKey(k))}
		}
		out, err := c.cache.Do(ctx, 2, cmds...)
		if err != nil {
			return err
		}
		for _, o := range out {
			if len(o) > 0 && o[0] == '-' {
				return redisErr(strings.TrimSpace(string(o[1:])))
			}
		}
		for _, k := range chunk {
			r.loads.slot(k).Add(1)
			r.loads.flights.forget(k)
			r.localDrop(k)
		}
		if r.local != nil {
			if err := r.publish(ctx, chunk...); err != nil {
				return err
			}
		}
		r.Stats.Invalidations.Add(int64(len(chunk)))
		c.Stats.Keys.Add(int64(len(chunk)))
	}
	return nil
}

// flushRoute drops every cached copy of r: its epoch first (fills in
// flight are refused), then its keys and negative markers (SCAN), then
// every instance's in-process tier.
func (c *capture) flushRoute(ctx context.Context, r *Route) error {
	if err := c.rdb.Incr(ctx, epochKey(r.rkey())).Err(); err != nil {
		return err
	}
	for _, pattern := range []string{globEscape(r.cfg.Prefix) + "*", globEscape(negKey(r.cfg.Prefix)) + "*"} {
		var cursor uint64
		for {
			keys, next, err := c.rdb.Scan(ctx, cursor, pattern, 1000).Result()
			if err != nil {
				return err
			}
			if len(keys) > 0 {
				if err := c.rdb.Unlink(ctx, keys...).Err(); err != nil {
					return err
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
	r.localPurge()
	if r.local != nil {
		if err := r.publish(ctx); err != nil {
			return err
		}
	}
	c.Stats.Flushes.Add(1)
	return nil
}

// globEscape quotes SCAN MATCH's special characters.
func globEscape(s string) string {
	var b strings.Builder
	for _, ch := range s {
		if strings.ContainsRune(`*?[]\`, ch) {
			b.WriteByte('\\')
		}
		b.WriteRune(ch)
	}
	return b.String()
}

// beatScript (KEYS: heartbeat) stores Redis' clock in ms.
var beatScript = redis.NewScript(`
local t = redis.call('TIME')
redis.call('SET', KEYS[1], tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
return 1`)

// ageScript (KEYS: heartbeat; ARGV: since, ms by Redis' clock, or 0)
// returns the heartbeat's age in ms by Redis' clock, -1 without one or
// with one older than since, and Redis' clock.
var ageScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hb = tonumber(redis.call('GET', KEYS[1]) or '')
if not hb or hb < tonumber(ARGV[1]) then return {-1, now} end
return {now - hb, now}`)

// beat records that the stream is applied up to now.
func (c *capture) beat(ctx context.Context) {
	if err := beatScript.Run(ctx, c.rdb, []string{heartbeatKey(c.name())}).Err(); err != nil {
		c.log.Warn("writing the change-capture heartbeat failed", "err", err)
	}
}

// watchLag reads the heartbeat every status_interval: older than max_lag
// (or absent, or unreadable), the tracked routes read from PostgreSQL. So
// does a heartbeat from before this instance started: a stream lost
// while no instance ran (the slot lost) is flushed by the next leader
// before it beats, and until then nothing cached may be trusted.
func (c *capture) watchLag(ctx context.Context) {
	c.Stats.Stale.Store(true)
	for _, r := range c.tracked {
		r.stale.Store(true)
	}
	maxLag := time.Duration(c.cfg.MaxLag)
	var since int64
	for ctx.Err() == nil {
		v, err := ageScript.Run(ctx, c.rdb, []string{heartbeatKey(c.name())}, since).Int64Slice()
		stale := err != nil || len(v) != 2 || v[0] < 0 || time.Duration(v[0])*time.Millisecond > maxLag
		if since == 0 && err == nil && len(v) == 2 {
			since = v[1]
			stale = true
		}
		if ctx.Err() != nil {
			return
		}
		if stale != c.Stats.Stale.Load() {
			if stale {
				c.log.Warn("change capture is behind by more than max_lag: tracked routes read from PostgreSQL", "max_lag", maxLag)
			} else {
				c.log.Info("change capture applied: tracked routes use the cache")
			}
		}
		c.Stats.Stale.Store(stale)
		for _, r := range c.tracked {
			r.stale.Store(stale)
		}
		sleepCtx(ctx, c.interval())
	}
}
