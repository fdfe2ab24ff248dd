package server

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/push"
	"github.com/tidwall/redcon"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// pin is a session's own upstream connection, taken for WATCH/MULTI,
// SELECT of another database, CLIENT TRACKING and the like. It comes from
// go-redis' EphemeralConn, so closing it closes the socket: a pinned
// connection never returns to a pool with its server-side state.
type pin struct {
	conn     *redis.Conn
	multi    bool // inside MULTI
	watch    bool // WATCH armed
	tracking bool // CLIENT TRACKING on
	sticky   bool // state the proxy cannot follow: keep until the client leaves
	tracked  bool // CLIENT TRACKING was used: the connection is never reused
	upID     int64

	queued    int       // commands queued since MULTI: the next one's place in EXEC's array
	ops       []queued  // routed writes queued in this MULTI
	watched   []string  // keys WATCHed (for retry metadata)
	watchedAt time.Time // when the first WATCH was armed
}

// pinUp gives the session a pinned connection if it has none. The
// connection dials lazily: a failure surfaces on the first command.
func (c *session) pinUp() {
	if c.pin != nil {
		return
	}
	cn := c.s.up.takePinned(c.proto)
	c.pin = &pin{conn: cn}
	c.s.pinned.Add(1)
	if c.s.live.Load().Transactions.IdleTimeout > 0 {
		// The idle timeout ends the session with CLIENT KILL ID.
		ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
		c.pin.upID, _ = cn.ClientID(ctx).Result()
		cancel()
	}
}

// unpin closes the pinned connection; Redis drops its MULTI and WATCH.
func (c *session) unpin() { c.dropPin(false) }

// releasePin ends a pinned session that ended normally: its connection is
// reset (RESET) and verified in the background, then reused by a later
// session, or closed.
func (c *session) releasePin() { c.dropPin(true) }

func (c *session) dropPin(reuse bool) {
	p := c.pin
	if p == nil {
		return
	}
	c.endWatch()
	if reuse && !p.tracked && !p.sticky {
		go c.s.up.recycle(c.proto, p.conn)
	} else {
		p.conn.Close()
	}
	c.pin = nil
	c.s.pinned.Add(-1)
	c.countPin()
}

// endWatch forgets the session's watched keys and leaves the gate.
func (c *session) endWatch() {
	p := c.pin
	if len(p.watched) > 0 {
		c.s.conflicts.unwatch(p.watched)
	}
	p.watched, p.watchedAt = nil, time.Time{}
	c.s.gate.leave(c)
}

// forwardPinned sends cmds on the pinned connection as one pipeline, writes
// the replies in order, follows the connection state they reveal, and
// releases the pin once no state is left.
func (c *session) forwardPinned(cmds []redcon.Command) {
	if c.s.metrics != nil {
		defer c.observe(admin.ClassPinned, time.Now())
	}
	defer c.countPin()
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
	defer cancel()
	if !c.pin.multi {
		c.s.conflicts.noteWrites(cmds, &c.keys)
	}
	raws := make([]*redis.RawCmd, len(cmds))
	if len(cmds) == 1 {
		raws[0] = redis.NewRawCmd(ctx, toArgs(cmds[0].Args)...)
		c.pin.conn.Process(ctx, raws[0])
	} else {
		p := c.pin.conn.Pipeline()
		for i, cmd := range cmds {
			raws[i] = redis.NewRawCmd(ctx, toArgs(cmd.Args)...)
			p.Process(ctx, raws[i])
		}
		p.Exec(ctx)
	}
	broken := false
	for i, raw := range raws {
		if raw.Err() != nil {
			broken = true
		}
		c.sendRaw(raw)
		c.follow(cmds[i].Args, raw.Val())
	}
	if broken {
		// The connection's state is unknown now: drop it. Redis discards
		// a dropped connection's MULTI and WATCH, as for any client.
		c.unpin()
		return
	}
	c.maybeUnpin()
}

// follow updates the pin's state from one command and its raw reply.
func (c *session) follow(args [][]byte, reply []byte) {
	p := c.pin
	ok := len(reply) > 0 && reply[0] == '+'
	name := args[0]
	switch {
	case p.multi && !router.Is(name, "exec") && !router.Is(name, "discard"):
		if router.Is(name, "select") || router.Is(name, "client") || router.Is(name, "hello") {
			p.sticky = true // takes effect at EXEC; the proxy cannot follow it
		}
		if string(reply) == "+QUEUED\r\n" {
			p.queued++
		}
	case router.Is(name, "multi"):
		if ok && !p.multi {
			p.multi, p.queued, p.ops = true, 0, nil
		}
	case router.Is(name, "exec"), router.Is(name, "discard"):
		p.multi, p.watch, p.ops = false, false, nil
		c.endWatch()
	case router.Is(name, "watch"):
		if ok {
			p.watch = true
			keys := make([]string, len(args)-1)
			for i, k := range args[1:] {
				keys[i] = string(k)
			}
			c.s.conflicts.watch(keys)
			p.watched = append(p.watched, keys...)
			if p.watchedAt.IsZero() {
				p.watchedAt = time.Now()
			}
		}
	case router.Is(name, "unwatch"):
		if ok {
			p.watch = false
			c.endWatch()
		}
	case router.Is(name, "select"):
		if ok {
			c.db, _ = strconv.Atoi(string(args[1]))
		}
	case router.Is(name, "client") && len(args) > 2 && router.Is(args[1], "tracking"):
		if ok {
			p.tracking = router.Is(args[2], "on")
			if p.tracking && !p.tracked && c.proto == 3 {
				// Invalidation pushes reach go-redis while it reads a
				// reply on this connection; hand them to the client.
				p.conn.RegisterPushNotificationHandler("invalidate", pushForwarder{c}, false)
			}
			p.tracked = p.tracked || p.tracking
		}
	case router.Is(name, "client"):
		if router.LookupClient(args[1]) == router.ClientPin && !router.Is(args[1], "trackinginfo") && !router.Is(args[1], "getredir") {
			p.sticky = p.sticky || ok
		}
	}
}

// countPin keeps the server's count of sessions in WATCH or MULTI.
func (c *session) countPin() {
	tx := c.pin != nil && (c.pin.multi || c.pin.watch)
	if tx != c.inTx {
		c.inTx = tx
		if tx {
			c.s.pinnedTx.Add(1)
		} else {
			c.s.pinnedTx.Add(-1)
		}
	}
}

// maybeUnpin returns the session to the shared path when its pinned
// connection holds no state any more.
func (c *session) maybeUnpin() {
	p := c.pin
	if p == nil || p.multi || p.watch || p.tracking || p.sticky || c.db != c.s.cfg.Upstream.DB {
		return
	}
	c.releasePin()
}

// blocking runs a command that may block (BLPOP, WAIT, XREAD BLOCK, ...) on
// a pinned connection with no read deadline, so "BLPOP q 0" waits as long
// as on Redis. If the client disconnects meanwhile, the upstream command is
// ended with CLIENT UNBLOCK, so an orphaned BLPOP cannot take an element
// nobody will read.
func (c *session) blocking(args [][]byte) {
	c.pinUp()
	ctx := context.Background()
	if c.pin.upID == 0 {
		id, err := c.pin.conn.ClientID(ctx).Result()
		if err != nil {
			c.sendError(upstreamError(err))
			c.unpin()
			return
		}
		c.pin.upID = id
	}
	done := make(chan struct{})
	if gc, ok := c.conn.NetConn().(*resp.Conn); ok && c.w == c.conn {
		stop := gc.WatchClose()
		defer stop()
		go c.unblockOnClose(gc.Closed(), done, c.pin.upID)
	}
	raw := redis.NewRawCmd(ctx, toArgs(args)...)
	c.s.blocked.Add(1)
	c.pin.conn.Process(ctx, raw)
	c.s.blocked.Add(-1)
	close(done)
	c.sendRaw(raw)
	if raw.Err() != nil {
		c.unpin()
		return
	}
	c.maybeUnpin()
}

// unblockOnClose sends CLIENT UNBLOCK for the upstream connection upID once
// closed fires, until the blocked command has returned (done).
func (c *session) unblockOnClose(closed <-chan struct{}, done <-chan struct{}, upID int64) {
	select {
	case <-done:
		return
	case <-closed:
	}
	shared := c.s.up.shared[0]
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		n, err := shared.ClientUnblock(ctx, upID).Result()
		cancel()
		if err == nil && n == 1 {
			return
		}
		select {
		case <-done:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// pushForwarder hands RESP3 invalidation pushes read on a pinned
// connection to the client, re-encoded as ">2 invalidate [keys]".
type pushForwarder struct{ c *session }

func (f pushForwarder) HandlePushNotification(_ context.Context, _ push.NotificationHandlerContext, n []interface{}) error {
	b := resp.AppendPush(nil, 2, 3)
	b = resp.AppendBulk(b, "invalidate")
	keys, _ := n[len(n)-1].([]interface{})
	if len(n) < 2 || keys == nil {
		b = resp.AppendNull(b, 3)
	} else {
		b = resp.AppendArray(b, len(keys))
		for _, k := range keys {
			s, _ := k.(string)
			b = resp.AppendBulk(b, s)
		}
	}
	f.c.w.WriteRaw(b) // pushes bypass CLIENT REPLY OFF, as in Redis
	return nil
}
