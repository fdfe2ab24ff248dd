package server

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// conflicts tracks every optimistic transaction (WATCH ... EXEC) that runs
// through the proxy: per key attempts and WATCH aborts over a sliding
// window, in a bounded LRU (golang-lru/v2) so memory stays fixed however
// many keys are watched; and which watched keys were written through the
// proxy, so an abort can name the key that changed.
type conflicts struct {
	mu   sync.Mutex
	keys *lru.Cache[string, *keyStat]

	watching  atomic.Int64 // number of distinct watched keys
	watchedMu sync.Mutex
	watched   map[string]int       // watched key → number of sessions watching it
	written   map[string]time.Time // watched key → last write seen through the proxy

	Commits, Aborts atomic.Int64
}

// window is the conflict-rate window: windowBuckets one-second buckets.
const windowBuckets = 10

type keyStat struct {
	attempts, aborts int64 // totals
	buckets          [windowBuckets]struct{ sec, attempts, aborts int64 }
}

func newConflicts(size int) *conflicts {
	c, _ := lru.New[string, *keyStat](size)
	return &conflicts{keys: c, watched: map[string]int{}, written: map[string]time.Time{}}
}

// record counts one EXEC of a transaction that watched keys.
func (t *conflicts) record(keys []string, aborted bool) {
	if aborted {
		t.Aborts.Add(1)
	} else {
		t.Commits.Add(1)
	}
	now := time.Now().Unix()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, k := range dedup(keys) {
		st, ok := t.keys.Get(k)
		if !ok {
			st = &keyStat{}
			t.keys.Add(k, st)
		}
		b := &st.buckets[now%windowBuckets]
		if b.sec != now {
			b.sec, b.attempts, b.aborts = now, 0, 0
		}
		b.attempts++
		st.attempts++
		if aborted {
			b.aborts++
			st.aborts++
		}
	}
}

// rate returns key's aborts/attempts over the window and the attempts.
func (t *conflicts) rate(key string) (float64, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.keys.Peek(key)
	if !ok {
		return 0, 0
	}
	return st.windowRate(time.Now().Unix())
}

func (st *keyStat) windowRate(now int64) (float64, int64) {
	var att, ab int64
	for _, b := range st.buckets {
		if now-b.sec < windowBuckets {
			att += b.attempts
			ab += b.aborts
		}
	}
	if att == 0 {
		return 0, 0
	}
	return float64(ab) / float64(att), att
}

// hotKey is one row of RESPITE CONFLICTS.
type hotKey struct {
	key              string
	attempts, aborts int64
	rate             float64 // over the window
}

// hottest returns up to n keys, most aborts first; rate is over the last
// windowBuckets seconds, the window the contention gate uses.
func (t *conflicts) hottest(n int) []hotKey {
	now := time.Now().Unix()
	t.mu.Lock()
	var out []hotKey
	for _, k := range t.keys.Keys() {
		st, _ := t.keys.Peek(k)
		r, _ := st.windowRate(now)
		out = append(out, hotKey{key: k, attempts: st.attempts, aborts: st.aborts, rate: r})
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b hotKey) int {
		if a.aborts != b.aborts {
			return int(b.aborts - a.aborts)
		}
		return strings.Compare(a.key, b.key)
	})
	return out[:min(n, len(out))]
}

// watch and unwatch keep the set of keys some session watches (counted
// once per WATCH argument).
func (t *conflicts) watch(keys []string) {
	t.watchedMu.Lock()
	for _, k := range keys {
		t.watched[k]++
	}
	t.watching.Store(int64(len(t.watched)))
	t.watchedMu.Unlock()
}

func (t *conflicts) unwatch(keys []string) {
	t.watchedMu.Lock()
	for _, k := range keys {
		if t.watched[k]--; t.watched[k] <= 0 {
			delete(t.watched, k)
			delete(t.written, k)
		}
	}
	t.watching.Store(int64(len(t.watched)))
	t.watchedMu.Unlock()
}

// noteWrites remembers writes to watched keys seen through the proxy. It
// costs nothing while no session watches anything.
func (t *conflicts) noteWrites(cmds []router.Command) {
	if t.watching.Load() == 0 {
		return
	}
	now := time.Now()
	t.watchedMu.Lock()
	defer t.watchedMu.Unlock()
	for i := range cmds {
		cmd := &cmds[i]
		if !cmd.Write() {
			continue
		}
		for _, k := range cmd.Keys {
			if t.watched[string(cmd.Args[k])] > 0 {
				t.written[string(cmd.Args[k])] = now
			}
		}
	}
}

// changedSince returns the keys of keys written through the proxy after t0.
func (t *conflicts) changedSince(keys []string, t0 time.Time) []string {
	t.watchedMu.Lock()
	defer t.watchedMu.Unlock()
	var out []string
	for _, k := range dedup(keys) {
		if w, ok := t.written[k]; ok && !w.Before(t0) {
			out = append(out, k)
		}
	}
	return out
}

func dedup(keys []string) []string {
	out := slices.Clone(keys)
	slices.Sort(out)
	return slices.Compact(out)
}

// abortInfo is the retry metadata of a transaction aborted by WATCH.
type abortInfo struct {
	attempt     int      // consecutive aborts of this client on this keyset
	keys        []string // watched keys known to have changed (all watched keys when unknown)
	known       bool     // keys were seen changing through the proxy
	retryAfter  int64    // suggested delay before retrying, in ms
	watchedKeys []string
}

// retryDelay is exponential backoff with full jitter: a random delay in
// [0, min(1000, 10·2^(attempt-1))] ms, as the optimistic-locking tutorial
// recommends.
func retryDelay(attempt int) int64 {
	ceil := int64(10) << min(attempt-1, 7)
	ceil = min(ceil, 1000)
	return rand.Int64N(ceil + 1)
}

// appendAbortInfo encodes the metadata as a map (RESP3) or flat array.
func appendAbortInfo(b []byte, a *abortInfo, proto int) []byte {
	b = resp.AppendMap(b, 4, proto)
	b = resp.AppendBulk(b, "attempt")
	b = resp.AppendInt(b, int64(a.attempt))
	b = resp.AppendBulk(b, "conflicting_keys")
	b = resp.AppendArray(b, len(a.keys))
	for _, k := range a.keys {
		b = resp.AppendBulk(b, k)
	}
	b = resp.AppendBulk(b, "conflict_known")
	b = resp.AppendInt(b, boolInt(a.known))
	b = resp.AppendBulk(b, "retry_after_ms")
	return resp.AppendInt(b, a.retryAfter)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
