package server

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/respite/respite/resp"
)

// orderWait bounds how long a batch waits for batches that reached the
// proxy before it; subscribeWait how long a PUBLISH waits for a SUBSCRIBE
// sent before it, whose session may first dial its own connection to
// Redis (a dial that fails gives the ticket back at once).
const (
	orderWait     = time.Millisecond
	subscribeWait = 50 * time.Millisecond
)

// order keeps clients' commands in the order they reached the proxy when
// they go on to Redis. Redis runs commands in the order it reads them, and
// clients rely on it across connections: a test that sends BRPOPLPUSH on
// one connection, BRPOPLPUSH on a second, then LPUSH on a third, without
// waiting for replies, expects the first to be served first. Through the
// proxy each connection has its own goroutine, and those run in any order.
//
// So each batch takes a ticket stamped with when its bytes reached the
// proxy's socket (resp.Conn.Arrival: the kernel's receive stamp), yields
// once so that goroutines woken for earlier bytes take theirs, and waits,
// at most orderWait, until no batch that arrived before it and that it
// must follow still holds a ticket. A batch gives its ticket back
// (session.sent) as soon as its commands are queued for Redis, or when it
// needs Redis no more (answered by the proxy, routed), so only batches
// that really go to Redis wait, and only for each other.
//
// A yield is not enough to see every earlier batch: a goroutine woken for
// earlier bytes may still be parked in Go's netpoller (a yielding
// goroutine goes on the global run queue, which the scheduler serves
// before it polls the network), and under load a reader's thread may be
// descheduled inside recvmsg or its reply write. So a pinned batch (and a
// PUBLISH) also waits for the clients whose commands may have arrived but
// hold no ticket yet (unread.go): bytes unread in their socket, or read
// and not yet claimed.
//
// Which batches a batch must follow: a batch for a pinned connection
// (a transaction, a blocking command, a session on another database)
// follows every earlier one; a batch for the shared connections follows
// only earlier pinned ones. Two shared batches keep no order that waiting
// could give them: they may go on different multiplexed connections,
// which Redis reads in its own order. So traffic that never pins (most
// applications, every benchmark) only registers and yields, and never
// spins. A PUBLISH follows earlier pinned batches too, and an earlier
// SUBSCRIBE for up to subscribeWait: Redis delivers a message to a
// subscriber whose SUBSCRIBE it read before the PUBLISH, and through the
// proxy that SUBSCRIBE may first wait for a new upstream connection.
type order struct {
	mu      sync.Mutex
	pending []ticket
	wake    chan struct{} // closed by done and take when a batch waits, nil otherwise
	pinned  atomic.Int32  // pending tickets of pinned batches

	unread *unread // clients whose bytes may be on their way (nil: none looked for)
	// slow, when above 1, multiplies orderWait and subscribeWait: tests
	// built with the race detector, which slows every goroutine several
	// times, set it (server/race_test.go).
	slow time.Duration
}

type ticket struct {
	id int64 // session
	at int64 // arrival, ns
	turn
}

// turn is what a batch is to the order: whom it follows, who follows it.
type turn struct {
	pinned     bool // goes on a pinned connection: follows every earlier batch
	publishes  bool // PUBLISH, SPUBLISH: follows earlier pinned batches and unread clients
	subscribes bool // SUBSCRIBE and its forms: a PUBLISH after it waits subscribeWait
}

// take gives session id a ticket for a batch that arrived at at, then
// waits for its turn. gc, the client's connection (nil in tests), is
// claimed (resp.Conn.Claim) with the ticket. A pinned batch, or one that
// follows pinned ones (a PUBLISH, which must reach Redis after a
// SUBSCRIBE sent before it), also waits for the clients whose commands
// may have arrived before it but hold no ticket yet (unread.go): their
// bytes unread in the socket, or read and not yet claimed.
func (o *order) take(id, at int64, tn turn, gc *resp.Conn) {
	o.mu.Lock()
	o.pending = append(o.pending, ticket{id, at, tn})
	if tn.pinned {
		// Counted before the claim: a batch that finds gc claimed
		// (ReadBusy) must find its pinned ticket counted too.
		o.pinned.Add(1)
	}
	o.claimLocked(gc)
	o.mu.Unlock()
	runtime.Gosched() // let goroutines woken for earlier bytes take theirs
	if !tn.pinned && !tn.publishes && o.pinned.Load() == 0 {
		return
	}
	var buf [8]arriving
	var exp []arriving
	if o.unread != nil {
		exp = o.unread.of(id, buf[:0])
	}
	if !tn.pinned && len(exp) == 0 && o.pinned.Load() == 0 {
		return // a PUBLISH with nobody to wait for
	}
	// Wait parked, not spinning: the batch waited for may itself wait on
	// the network (a pinned connection being dialled), which a spinning
	// goroutine would keep the scheduler from polling.
	var timer *time.Timer
	start := time.Now()
	for {
		o.mu.Lock()
		first, behindSub := o.firstLocked(id, at, tn)
		done := settled(exp)
		if first && done {
			o.mu.Unlock()
			break
		}
		if o.wake == nil {
			o.wake = make(chan struct{})
		}
		wake := o.wake
		o.mu.Unlock()
		// A PUBLISH waits longer for a SUBSCRIBE, and for clients that
		// may have sent one.
		limit := orderWait
		if tn.publishes && (behindSub || !done) {
			limit = subscribeWait
		}
		if o.slow > 1 {
			limit *= o.slow
		}
		left := limit - time.Since(start)
		if left <= 0 {
			break
		}
		if timer == nil {
			timer = time.NewTimer(left)
		} else {
			timer.Reset(left)
		}
		select {
		case <-wake:
			continue
		case <-timer.C:
		}
		break
	}
	if timer != nil {
		timer.Stop()
	}
}

// claim claims gc for a batch that runs on a ticket it already holds
// (handed over by the batch that detached the session).
func (o *order) claim(gc *resp.Conn) {
	o.mu.Lock()
	o.claimLocked(gc)
	o.mu.Unlock()
}

// claimLocked claims gc and wakes the batches waiting for it. o.mu is
// held, so a waiter sees the claim and the ticket together.
func (o *order) claimLocked(gc *resp.Conn) {
	if gc == nil {
		return
	}
	gc.Claim()
	if o.wake != nil {
		close(o.wake)
		o.wake = nil
	}
}

// firstLocked reports whether no batch that arrived before at, and that
// a batch of turn tn must follow, holds a ticket, and whether one that
// does is a SUBSCRIBE that tn publishes after. o.mu is held.
func (o *order) firstLocked(id, at int64, tn turn) (first, behindSub bool) {
	first = true
	for _, t := range o.pending {
		if (tn.pinned || t.pinned) && (t.at < at || (t.at == at && t.id < id)) {
			first = false
			behindSub = behindSub || tn.publishes && t.subscribes
		}
	}
	return first, behindSub
}

// done gives session id's ticket back.
func (o *order) done(id int64) {
	o.mu.Lock()
	for i, t := range o.pending {
		if t.id == id {
			if t.pinned {
				o.pinned.Add(-1)
			}
			last := len(o.pending) - 1
			o.pending[i] = o.pending[last]
			o.pending = o.pending[:last]
			break
		}
	}
	if o.wake != nil {
		close(o.wake)
		o.wake = nil
	}
	o.mu.Unlock()
}

// sent gives the session's ticket back, if it holds one: its commands are
// queued for Redis, or need Redis no more.
func (c *session) sent() {
	if c.ticket {
		c.ticket = false
		c.s.order.done(c.id)
	}
}
