package policy

import (
	"context"
	"sync"
	"sync/atomic"
)

// Unsettled keys. A cache-aside or write-through write that PostgreSQL
// committed (or may have) and whose cache step then failed (Redis killed
// or unreachable between the commit and the invalidation or fill) leaves
// the cached copy as it was before the write, and Redis keeps that copy
// across a restart (AOF). The client has its reply, and reads served from
// PostgreSQL meanwhile (Redis down: degraded reads) may have shown the new
// row, so serving the old copy once Redis is back would go back in time
// (found by internal/chaos: a write-through history that was not
// linearizable; cache-aside keys left disagreeing with PostgreSQL for the
// TTL).
//
// Such a key is kept here until its cache step has been done again: every
// read of it first retries that step (settle) and, while Redis still
// refuses, is served from PostgreSQL without filling; the sweep
// (Set.sweep) retries every intentSweep. A proxy that dies with unsettled
// keys loses this list: the writes' intents are still in Redis and are
// resolved by its restart or another proxy's sweep (writethrough.go),
// except for a cache-aside write made while Redis was unreachable (it has
// no intent), which keeps the old copy until the TTL (docs/OPERATIONS.md,
// "Write-through after a crash"). Other proxy instances do not know the
// list either: they serve the old copy until the write's intent expires.
type unsettled struct {
	n    atomic.Int64 // len(keys), read without the lock on every read
	mu   sync.Mutex
	keys map[string]pendingStep
	seq  uint64 // numbers the adds, so a settle removes only what it did
}

// pendingStep is an unsettled key's: the write's intent (write-through;
// nil for cache-aside) and the add's number.
type pendingStep struct {
	in  *intent
	seq uint64
}

// add records key, whose cache step failed after a write that may have
// committed; in is the write's intent (nil for cache-aside).
func (u *unsettled) add(key string, in *intent) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.keys == nil {
		u.keys = map[string]pendingStep{}
	}
	if _, ok := u.keys[key]; !ok {
		u.n.Add(1)
	}
	u.seq++
	u.keys[key] = pendingStep{in, u.seq}
}

// unsettledKey reports whether key is unsettled.
func (r *Route) unsettledKey(key string) bool {
	if r.unsettled.n.Load() == 0 {
		return false
	}
	r.unsettled.mu.Lock()
	defer r.unsettled.mu.Unlock()
	_, ok := r.unsettled.keys[key]
	return ok
}

// afterFailedStep records a key whose cache step failed.
func (r *Route) afterFailedStep(key string, in *intent) { r.unsettled.add(key, in) }

// settle retries the cache step of key if it is unsettled and reports
// whether the key is settled now: its cached copy may then be served.
func (r *Route) settle(ctx context.Context, key string) bool {
	if r.unsettled.n.Load() == 0 {
		return true
	}
	u := &r.unsettled
	u.mu.Lock()
	p, ok := u.keys[key]
	u.mu.Unlock()
	if !ok {
		return true
	}
	// Not under the lock: with Redis down this waits for the dial, and
	// the reads of other keys must not. Two settles of one key at once
	// do the same thing twice.
	var err error
	if p.in != nil {
		// The write's intent ends as a write that may have committed:
		// the cached copy is deleted and the generation bumped, so no
		// fill loaded before can land.
		err = r.finishWrite(ctx, key, p.in, outcomeInvalidate)
	} else {
		err = r.invalidate(ctx, key)
	}
	if err != nil {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if cur, ok := u.keys[key]; ok && cur.seq == p.seq {
		delete(u.keys, key)
		u.n.Add(-1)
	}
	return true
}

// settleAll retries every unsettled key's cache step (the sweep).
func (r *Route) settleAll(ctx context.Context) {
	if r.unsettled.n.Load() == 0 {
		return
	}
	r.unsettled.mu.Lock()
	keys := make([]string, 0, len(r.unsettled.keys))
	for k := range r.unsettled.keys {
		keys = append(keys, k)
	}
	r.unsettled.mu.Unlock()
	for _, k := range keys {
		if !r.settle(ctx, k) {
			return // Redis still refuses: the next sweep tries again
		}
	}
}
