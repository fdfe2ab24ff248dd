package server

import (
	"time"

	"github.com/tidwall/redcon"

	"github.com/respite/respite/policy"
	"github.com/respite/respite/router"
)

// serve runs one batch of commands read from the client: each is
// classified once against the current route snapshot (router.Classify),
// then run in order. A batch that detached the session starts its own
// loop last and hands it its ticket: the loop runs the rest of the batch
// (the SUBSCRIBE, MONITOR, ...) and gives the ticket back once that is
// written to Redis, so a PUBLISH another client sent after the SUBSCRIBE
// reaches Redis after it; from then on the loop takes the tickets.
func (c *session) serve(batch []redcon.Command) {
	c.serveBatch(batch)
	if c.gc != nil {
		// Bytes that arrive from now on wait in the socket. Called here,
		// on the goroutine that reads gc, before a detached loop takes
		// over the reading.
		c.gc.Answered()
	}
	if c.toDetach != nil {
		c.startDetached()
	}
}

// serveBatch is serve but for starting the detached loop.
func (c *session) serveBatch(batch []redcon.Command) {
	set := c.s.routes.Load()
	if cap(c.cmds) < len(batch) {
		c.cmds = append(c.cmds[:cap(c.cmds)], make([]router.Command, len(batch)-cap(c.cmds))...)
	}
	cmds := c.cmds[:len(batch)]
	rs := set.Routes()
	for i := range batch {
		router.Classify(&cmds[i], batch[i].Args, rs)
	}
	idle := c.s.live.Load().Transactions.IdleTimeout > 0
	if idle {
		c.checkIdle()
	}
	switch {
	case c.gc == nil:
	case c.ticket: // held: handed over by the batch that detached
		c.s.order.claim(c.gc)
	default:
		c.ticket = true
		c.s.order.take(c.id, c.gc.Arrival().UnixNano(), c.turnOf(cmds), c.gc)
	}
	defer func() {
		if c.toDetach == nil {
			c.sent()
		}
	}()
	if c.adoptRelay() && c.detach(cmds) {
		// Relayed from now on: the detached loop runs the batch.
	} else {
		c.run(set, cmds)
	}
	c.noteAuth(cmds)
	if idle {
		c.armIdle()
	}
	c.client.lastActive = time.Now()
	if n := len(cmds); n > 0 {
		c.client.lastCmd = cmds[n-1].ID
	}
	c.publish()
	for i := range cmds {
		cmds[i].Args = nil // do not keep redcon's buffer alive
	}
}

// turnOf is what the batch cmds is to the order (order.go): whether it
// starts on a pinned connection, publishes, or subscribes.
func (c *session) turnOf(cmds []router.Command) turn {
	t := turn{pinned: c.pinsFor(cmds)}
	if len(cmds) > 0 {
		t.publishes = cmds[0].Publishes()
		t.subscribes = cmds[0].Kind == router.KindSubscribe
	}
	return t
}

// pinsFor reports whether the batch cmds starts on a pinned connection:
// the session holds one, or its first command's path is not the shared
// connections or the proxy itself (order.go: which batches wait for
// which). Only the first run of the batch counts: the ticket is given
// back once that run is queued for Redis (or answered by the proxy).
func (c *session) pinsFor(cmds []router.Command) bool {
	if c.pin != nil || c.relayed() {
		return true
	}
	if len(cmds) == 0 {
		return false
	}
	switch router.Dispatch(c.state(), &cmds[0]).Path {
	case router.PathShared, router.PathLocal, router.PathRouted, router.PathOwn:
		return false
	}
	return true
}

// run carries cmds in order, each where router.Dispatch says. Runs of
// commands with the same upstream path go as one pipeline: on the shared
// multiplexed connections, or on the pinned connection.
func (c *session) run(set *policy.Set, cmds []router.Command) {
	for i := 0; i < len(cmds); {
		if c.quit.Load() {
			return
		}
		if c.tx.idle.lost != lostNone && c.idleRefusal(&cmds[i]) {
			i++
			continue
		}
		c.client.lastCmd = cmds[i].ID // CLIENT LIST's cmd=: the latest one started
		st := c.state()
		d := router.Dispatch(st, &cmds[i])
		if c.relayed() && d.Path != router.PathPinned && d.Path != router.PathDetach {
			// The proxy answers this one itself: replies Redis still owes
			// the client go first, and the state they change counts.
			c.pin.relay.waitIdle()
			st = c.state()
			d = router.Dispatch(st, &cmds[i])
		}
		switch d.Path {
		case router.PathShared:
			j := i + 1
			for j < len(cmds) && c.tx.idle.lost == lostNone && router.Dispatch(st, &cmds[j]).Path == router.PathShared {
				j++
			}
			c.forwardShared(cmds[i:j])
			i = j
		case router.PathPinned:
			j, next := i+1, st.Next(&cmds[i])
			next.Pinned = true
			for j < len(cmds) && c.tx.idle.lost == lostNone {
				if router.Dispatch(next, &cmds[j]).Path != router.PathPinned {
					break
				}
				next = next.Next(&cmds[j])
				j++
			}
			c.forwardPinned(cmds[i:j])
			i = j
		case router.PathWatch:
			c.watch(set, &cmds[i])
			i++
		case router.PathBlocking:
			if c.relayed() {
				c.forwardPinned(cmds[i : i+1])
			} else {
				c.blocking(&cmds[i])
			}
			i++
		case router.PathDetach:
			if c.relayed() {
				c.forwardPinned(cmds[i : i+1])
				i++
				continue
			}
			if c.detach(cmds[i:]) {
				return // the detached loop runs the rest
			}
			i++
		case router.PathLocal:
			c.sent() // answered by the proxy: no turn at Redis to keep
			c.local(set, &cmds[i])
			i++
		case router.PathRouted:
			c.sent()
			c.routed(set, &cmds[i])
			i++
		case router.PathOwn:
			c.forwardFullKeys(&cmds[i])
			i++
		case router.PathQueue:
			c.queueRouted(set, &cmds[i])
			i++
		case router.PathQueueLocal:
			c.queueLocal(&cmds[i])
			i++
		case router.PathExec:
			c.exec(set, &cmds[i])
			i++
			if c.tx.detach {
				// The transaction subscribed or turned tracking on: Redis
				// may send at any time from now on.
				c.tx.detach = false
				detached := !c.relayed() && c.pin != nil && c.detach(cmds[i:])
				if c.pin != nil && c.pin.relay != nil {
					for _, f := range c.tx.confirms {
						c.pin.relay.track(f)
					}
				}
				c.tx.confirms = nil
				if detached {
					return
				}
			}
		case router.PathRefused:
			if c.pin != nil && c.pin.multi {
				c.abortQueue(d.Err) // refused while queueing: EXEC fails, as on Redis
			} else {
				c.sendError(d.Err)
			}
			i++
		}
		if c.relayed() {
			c.pin.relay.release() // the command is answered: what Redis sent since may follow
		}
	}
}

// relayed reports whether the session's pinned connection is relayed (the
// session is detached).
func (c *session) relayed() bool { return c.pin != nil && c.pin.relay != nil }
