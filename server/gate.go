package server

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// gate is the contention gate: when a key's WATCH conflict
// rate over the window passes the threshold, new WATCH sessions on it wait
// in FIFO order behind the current one, until it ends (EXEC, DISCARD,
// UNWATCH, disconnect) or maxWait passes, then proceed anyway. Retries stop
// storming; client code is unchanged. It turns itself off when the rate
// drops below the threshold.
type gate struct {
	s *Server // its transactions.gate settings, which Reload may change
	t *conflicts

	mu    sync.Mutex
	lines map[string]*line // keys with a holder or waiters

	Waits atomic.Int64 // sessions that waited
}

// line is one gated key: the session holding it and those waiting, oldest
// first.
type line struct {
	holder  *session
	waiting []*waiter
}

type waiter struct {
	c     *session
	ready chan struct{}
}

// enter takes the gate for every hot key among keys, in sorted order, and
// records what the session holds.
func (g *gate) enter(c *session, keys [][]byte) {
	set := g.s.live.Load().Transactions.Gate
	var hot []string
	for _, k := range keys {
		if !g.enabledFor(set.Enabled, k) {
			continue
		}
		if r, n := g.t.rate(string(k)); n >= int64(set.MinAttempts) && r >= float64(set.Threshold) {
			hot = append(hot, string(k))
		}
	}
	slices.Sort(hot)
	for _, k := range slices.Compact(hot) {
		if slices.Contains(c.tx.gated, k) {
			continue
		}
		if g.acquire(c, k, time.Duration(set.MaxWait)) {
			c.tx.gated = append(c.tx.gated, k)
		}
	}
}

// enabledFor applies a route's contention_gate over the global switch.
func (g *gate) enabledFor(global bool, key []byte) bool {
	if r := g.s.routes.Load().RouteFor(key); r != nil {
		if on := r.Config().ContentionGate; on != nil {
			return *on
		}
	}
	return global
}

// acquire waits for k's turn; false means it gave up after maxWait.
func (g *gate) acquire(c *session, k string, maxWait time.Duration) bool {
	g.mu.Lock()
	if g.lines == nil {
		g.lines = map[string]*line{}
	}
	l := g.lines[k]
	if l == nil {
		g.lines[k] = &line{holder: c}
		g.mu.Unlock()
		return true
	}
	w := &waiter{c: c, ready: make(chan struct{})}
	l.waiting = append(l.waiting, w)
	g.mu.Unlock()
	g.Waits.Add(1)
	select {
	case <-w.ready:
		return true
	case <-time.After(maxWait):
		g.mu.Lock()
		defer g.mu.Unlock()
		select {
		case <-w.ready: // handed over just now
			return true
		default:
		}
		l.waiting = slices.DeleteFunc(l.waiting, func(x *waiter) bool { return x == w })
		return false
	}
}

// leave hands every key the session holds to the next waiter.
func (g *gate) leave(c *session) {
	if len(c.tx.gated) == 0 {
		return
	}
	g.mu.Lock()
	for _, k := range c.tx.gated {
		l := g.lines[k]
		if l == nil || l.holder != c {
			continue
		}
		if len(l.waiting) == 0 {
			delete(g.lines, k)
			continue
		}
		next := l.waiting[0]
		l.waiting = l.waiting[1:]
		l.holder = next.c
		close(next.ready)
	}
	g.mu.Unlock()
	c.tx.gated = c.tx.gated[:0]
}
