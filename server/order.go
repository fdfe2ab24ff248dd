package server

import (
	"runtime"
	"sync"
	"time"
)

// orderWait bounds how long a batch waits for batches that reached the
// proxy before it.
const orderWait = time.Millisecond

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
// at most orderWait, until no batch that arrived before it still holds a
// ticket. A batch gives its ticket back (session.sent) as soon as its
// commands are queued for Redis, or when it needs Redis no more (answered
// by the proxy, routed), so only batches that really go to Redis wait,
// and only for each other.
type order struct {
	mu      sync.Mutex
	pending []ticket
}

type ticket struct {
	id int64 // session
	at int64 // arrival, ns
}

// take gives session id a ticket for a batch that arrived at at, then
// waits for its turn.
func (o *order) take(id, at int64) {
	o.mu.Lock()
	o.pending = append(o.pending, ticket{id, at})
	o.mu.Unlock()
	runtime.Gosched() // let goroutines woken for earlier bytes take theirs
	deadline := time.Now().Add(orderWait)
	for !o.first(id, at) && time.Now().Before(deadline) {
		runtime.Gosched()
	}
}

// first reports whether no batch that arrived before at holds a ticket.
func (o *order) first(id, at int64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, t := range o.pending {
		if t.at < at || (t.at == at && t.id < id) {
			return false
		}
	}
	return true
}

// done gives session id's ticket back.
func (o *order) done(id int64) {
	o.mu.Lock()
	for i, t := range o.pending {
		if t.id == id {
			last := len(o.pending) - 1
			o.pending[i] = o.pending[last]
			o.pending = o.pending[:last]
			break
		}
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
