package policy

import (
	"sync/atomic"
	"time"
)

// Live is the route set that serves: the request path loads it once per
// batch (one atomic load), and a reload replaces it whole, never in part.
// The zero Live serves no routes (Load returns nil; a nil *Set serves
// none).
type Live struct{ cur atomic.Pointer[Set] }

// Load returns the set that serves now.
func (l *Live) Load() *Set { return l.cur.Load() }

// Replace makes next the set that serves. The set it replaces stops at
// once (its flusher stops; next's flusher reads what it left pending from
// the durable queue) and closes after grace, when the commands that
// loaded it before the swap have finished.
func (l *Live) Replace(next *Set, grace time.Duration) {
	if prev := l.cur.Swap(next); prev != nil {
		prev.Stop()
		time.AfterFunc(grace, prev.Close)
	}
}
