package server

import (
	"strconv"
	"time"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// pinned is a session's own upstream connection and the state it holds
// there: taken for WATCH/MULTI, SELECT of another database, AUTH as an
// upstream user, CLIENT TRACKING and the like, blocking commands, pub/sub
// and MONITOR. Commands go to it as the client sent them and Redis' replies
// come back as they are, so every piece of connection state lives where
// Redis keeps it; the proxy only follows what it must know (MULTI, WATCH,
// the database) from the replies.
type pinned struct {
	conn  *upstream.Conn
	multi bool // inside MULTI
	watch bool // WATCH armed
	// sticky: state the proxy does not undo by releasing the connection
	// (AUTH as another user, CLIENT TRACKING, NO-EVICT, anything run at
	// EXEC that changes the connection): kept until the client leaves or
	// RESETs.
	sticky bool
	// stickyAtExec: this MULTI queued such a command; EXEC makes the
	// connection sticky if it runs them (not when it aborts).
	stickyAtExec bool
	// tracking: CLIENT TRACKING is on; redirect is the proxy client id its
	// REDIRECT option named.
	tracking bool
	redirect int64

	queued          int              // commands queued since MULTI: the next one's place in EXEC's array
	ops             []*policy.Queued // routed writes queued in this MULTI
	locals          []queuedLocal    // commands the proxy answers itself, queued in this MULTI
	hidden          []int            // places in EXEC's array of the AUTHs queueOwn (tx.go) queued in this MULTI, ascending
	detachAfterExec bool             // the MULTI queued SUBSCRIBE, MONITOR or CLIENT TRACKING ON
	watched         []string         // keys WATCHed (retry metadata)
	watchedAt       time.Time        // when the first WATCH was armed

	// relay, once the session is detached, relays everything Redis sends
	// on conn to the client as it arrives.
	relay *relay

	// upstream.mode cluster: slot is the hash slot the connection's
	// commands are about (its node is the slot's primary), once bound
	// (the first command with keys); until then replay holds what was
	// sent on it (replayN commands), to be sent again on the right node
	// if a MULTI turns out to be about a slot of another node.
	slot    int
	bound   bool
	replay  []byte
	replayN int

	req, buf []byte // scratch: the encoded run, one reply
}

// pinUp gives the session a pinned connection if it has none, speaking the
// client's protocol; false (with an error reply sent for n commands) when
// Redis cannot be reached.
func (c *session) pinUp(n int) bool { return c.pinUpAt(n, upstream.AnySlot) }

// pinUpAt is pinUp for commands about slot (upstream.mode cluster: the
// connection is to its primary; AnySlot for none).
func (c *session) pinUpAt(n, slot int) bool {
	if c.pin != nil {
		return true
	}
	cn, err := c.s.up.TakeSlot(c.proto, slot)
	if err != nil {
		for range n {
			c.s.counts.upErrors.Add(1)
			c.sendError(upstreamError(err))
		}
		return false
	}
	c.pin = &pinned{conn: cn, slot: slot, bound: slot != upstream.AnySlot}
	c.s.counts.pinned.Add(1)
	return true
}

// releasePin ends the session's use of its pinned connection: reset and
// reused by a later session, or closed when it relayed pushes.
func (c *session) releasePin() { c.dropPin(true) }

// discardPin closes the pinned connection: Redis drops its MULTI, WATCH
// and the rest of its state.
func (c *session) discardPin() { c.dropPin(false) }

func (c *session) dropPin(reuse bool) {
	p := c.pin
	if p == nil {
		return
	}
	c.endWatch()
	if p.relay != nil {
		p.relay.stop()
		reuse = false
	}
	if reuse {
		c.s.up.Put(p.conn)
	} else {
		p.conn.Close()
	}
	c.pin = nil
	c.s.counts.pinned.Add(-1)
	c.countPin()
}

// pinLost handles the loss of the pinned connection (Redis closed it, was
// restarted, or the network failed): the client's connection is closed, as
// it would have been by Redis, so nothing the client queued or watched
// there can run outside its transaction.
func (c *session) pinLost(err error) {
	c.s.log.Debug("pinned upstream connection lost; closing the client", "client", c.id, "err", err)
	c.discardPin()
	c.quit.Store(true)
	c.w.Close()
}

// endWatch forgets the session's watched keys and leaves the gate.
func (c *session) endWatch() {
	p := c.pin
	if p == nil {
		return
	}
	if len(p.watched) > 0 {
		c.s.conflicts.unwatch(p.watched)
	}
	p.watched, p.watchedAt = nil, time.Time{}
	c.s.gate.leave(c)
}

// forwardPinned sends cmds on the pinned connection as one pipeline, writes
// the replies in order, follows the connection state they reveal, and
// releases the pin once no state is left.
func (c *session) forwardPinned(cmds []router.Command) {
	if cl := c.s.up.Cluster(); cl != nil {
		c.forwardPinnedCluster(cl, cmds)
		return
	}
	c.forwardPinnedRun(cmds)
}

// forwardPinnedRun is forwardPinned: cmds as one pipeline on the pinned
// connection.
func (c *session) forwardPinnedRun(cmds []router.Command) {
	if c.s.metrics != nil {
		defer c.observe(admin.ClassPinned, time.Now())
	}
	if !c.pinUp(len(cmds)) {
		return
	}
	p := c.pin
	if !p.multi {
		c.s.conflicts.noteWrites(cmds)
	}
	p.req = p.req[:0]
	for i := range cmds {
		p.req = resp.AppendCommand(p.req, c.upstreamArgs(&cmds[i]))
	}
	if p.relay != nil {
		p.relay.send(cmds, p.req)
		if c.ticket && cmds[0].Kind == router.KindSubscribe {
			// A PUBLISH sent after the SUBSCRIBE waits for this ticket
			// (order.go). Written is not enough: the PUBLISH goes on
			// another connection, which Redis may read first. Confirmed
			// is.
			p.relay.waitIdle()
		}
		c.sent()
		return
	}
	defer c.countPin()
	c.noteReplay(p.req, len(cmds))
	err := p.conn.Write(p.req)
	c.sent() // Redis has them: the next client's commands may follow
	for i := range cmds {
		if err == nil {
			p.buf, err = c.readReply(p.buf[:0])
		}
		if err != nil {
			c.pinLost(err)
			return
		}
		reply := c.rewriteReply(&cmds[i], p.buf)
		c.follow(&cmds[i], reply)
		c.send(reply)
	}
	c.maybeUnpin()
}

// readReply reads the next reply on the pinned connection of a session
// that is not relayed. A push that arrives meanwhile (an invalidation for a
// client that another client's CLIENT TRACKING REDIRECT names) goes to the
// client as it is, and the session is relayed from its next command on.
func (c *session) readReply(dst []byte) ([]byte, error) {
	for {
		b, err := c.pin.conn.ReadReply(dst)
		if err != nil || len(b) == 0 {
			return b, err
		}
		if kind, _ := frameKind(b, false); b[0] != '>' && kind != framePush {
			return b, nil
		}
		c.w.WriteRaw(b)
		c.wantRelay.Store(true)
		dst = b[:0]
	}
}

// roundTrip sends one command of the proxy's own on the pinned connection
// and returns Redis' reply, without sending it to the client.
func (c *session) roundTrip(args [][]byte) ([]byte, error) {
	p := c.pin
	p.req = resp.AppendCommand(p.req[:0], args)
	if p.relay != nil {
		return p.relay.roundTrip(p.req)
	}
	c.noteReplay(p.req, 1)
	if err := p.conn.Write(p.req); err != nil {
		return nil, err
	}
	return c.readReply(nil)
}

// follow updates the pin's state from one command and its raw reply.
func (c *session) follow(cmd *router.Command, reply []byte) {
	p := c.pin
	ok := len(reply) > 0 && reply[0] == '+'
	if p.multi {
		switch cmd.ID {
		case router.CmdExec, router.CmdDiscard:
			if !cmd.ArityOK() {
				return // refused, and the transaction flagged
			}
			if cmd.ID == router.CmdExec && p.stickyAtExec && execRan(reply) {
				p.sticky = true
			}
			p.multi, p.watch = false, false
			p.ops, p.locals, p.hidden, p.detachAfterExec, p.stickyAtExec = nil, nil, nil, false, false
			c.endWatch()
			return
		case router.CmdMulti, router.CmdWatch:
			return // refused inside MULTI; the transaction goes on
		}
		if string(reply) == "+QUEUED\r\n" {
			p.queued++
			switch cmd.Kind {
			case router.KindSubscribe, router.KindMonitor:
				p.detachAfterExec, p.stickyAtExec = true, true
			case router.KindSelect, router.KindConnState:
				// Runs at EXEC on the pinned connection: the proxy keeps the
				// connection rather than follow it.
				p.stickyAtExec = true
				if cmd.ID == router.CmdClientTracking && cmd.Arg(2, "on") {
					p.detachAfterExec = true
				}
			}
			if cmd.ID == router.CmdAuth {
				p.stickyAtExec = true
			}
			c.authQueued = c.authQueued || c.changesAuth(cmd)
		}
		return
	}
	switch cmd.ID {
	case router.CmdMulti:
		if ok {
			p.multi, p.queued, p.ops, p.locals, p.hidden, p.stickyAtExec = true, 0, nil, nil, nil, false
		}
	case router.CmdWatch:
		if ok {
			p.watch = true
			keys := make([]string, len(cmd.Args)-1)
			for i, k := range cmd.Args[1:] {
				keys[i] = string(k)
			}
			c.s.conflicts.watch(keys)
			p.watched = append(p.watched, keys...)
			if p.watchedAt.IsZero() {
				p.watchedAt = time.Now()
			}
		}
	case router.CmdUnwatch:
		if ok {
			p.watch = false
			c.endWatch()
		}
	case router.CmdSelect:
		if ok {
			c.db, _ = strconv.Atoi(string(cmd.Args[1]))
		}
	case router.CmdAuth:
		if ok {
			c.client.upstreamAuthed, c.authed = true, true
			c.noteUser(cmd)
			if !c.sameUser(cmd) || c.s.upNoAuth.Load() {
				// The connection runs as another user now, or is logged
				// in with a password the proxy's own connections lack.
				p.sticky = true
			}
		}
	case router.CmdClientTracking:
		if ok {
			p.tracking = cmd.Arg(2, "on")
			p.sticky = true
		}
	case router.CmdClientCaching, router.CmdClientNoEvict, router.CmdClientNoTouch:
		if ok {
			p.sticky = true
		}
	}
}

// execRan reports whether EXEC's reply says the queued commands ran: an
// array, not -EXECABORT or the null of a transaction WATCH aborted.
func execRan(reply []byte) bool {
	return len(reply) > 0 && reply[0] == '*' && string(reply) != "*-1\r\n"
}

// sameUser reports whether a successful AUTH logged in as the user the
// proxy's own connections use, so the shared path has the same rights.
func (c *session) sameUser(cmd *router.Command) bool {
	if c.s.up.Restricted() {
		return false // the shared path logs in as the restricted user
	}
	user := "default"
	if len(cmd.Args) == 3 {
		user = string(cmd.Args[1])
	}
	want := c.s.cfg.Upstream.Username
	if want == "" {
		want = "default"
	}
	return user == want
}

// countPin keeps the server's count of sessions in WATCH or MULTI.
func (c *session) countPin() {
	tx := c.pin != nil && (c.pin.multi || c.pin.watch)
	if tx != c.tx.inTx {
		c.tx.inTx = tx
		if tx {
			c.s.counts.pinnedTx.Add(1)
		} else {
			c.s.counts.pinnedTx.Add(-1)
		}
	}
}

// maybeUnpin returns the session to the shared path when its pinned
// connection holds no state any more.
func (c *session) maybeUnpin() {
	p := c.pin
	if p == nil || p.multi || p.watch || p.sticky || p.relay != nil || c.db != c.s.cfg.Upstream.DB {
		return
	}
	c.releasePin()
}
