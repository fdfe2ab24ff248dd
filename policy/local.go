package policy

import (
	"context"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/redis/go-redis/v9"
)

// InvalidationChannel is the Redis pub/sub channel on which every proxy
// instance announces writes to routed keys, so the others drop their
// in-process copies. A message is "<route>\x00<key>".
const InvalidationChannel = "respite:invalidate"

// localTier is the optional in-process cache in front of Redis for GET on
// json and value routes (golang-lru/v2 lru.Cache; the expiry lives in the
// entry, so each entry has its own). Entries live at most local_cache.ttl:
// that bounds how stale a copy can be if an invalidation message is lost.
type localTier struct {
	c   *lru.Cache[string, localEntry]
	ttl time.Duration
	// mu orders adds after a generation check against invalidations
	// (localAdd, localDrop): an add that checked the key's generation
	// before an invalidation bumped it cannot land after the removal.
	mu sync.Mutex
}

type localEntry struct {
	value   string
	expires time.Time
}

func newLocalTier(size int, ttl time.Duration) *localTier {
	c, _ := lru.New[string, localEntry](size) // size > 0 is checked by config
	return &localTier{c: c, ttl: ttl}
}

func (l *localTier) get(key string) (string, bool) {
	e, ok := l.c.Get(key)
	if !ok {
		return "", false
	}
	if time.Now().After(e.expires) {
		l.c.Remove(key)
		return "", false
	}
	return e.value, true
}

func (l *localTier) add(key, value string) {
	l.c.Add(key, localEntry{value: value, expires: time.Now().Add(l.ttl)})
}

// localAdd stores value for key in the in-process tier if key's
// generation is still gen (nothing invalidated it since the caller read
// the value).
func (r *Route) localAdd(key, value string, gen uint64) {
	l := r.local
	l.mu.Lock()
	if r.loads.slot(key).Load() == gen && r.localOK() {
		l.add(key, value)
	}
	l.mu.Unlock()
}

// localOK reports whether the in-process tier may serve and store: it
// exists and, once the server tracks Redis for it (tracking.go), the
// tracking connection is in place with no push waiting to be applied.
func (r *Route) localOK() bool {
	if r.local == nil {
		return false
	}
	if !r.sh.tracked.Load() {
		return true
	}
	q := r.sh.trackOn.Load()
	return q != nil && (*q)()
}

// localDrop bumps key's generation and removes its in-process copy: an
// add whose value was read before is refused (localAdd).
func (r *Route) localDrop(key string) {
	r.loads.slot(key).Add(1)
	if l := r.local; l != nil {
		l.mu.Lock()
		l.c.Remove(key)
		l.mu.Unlock()
	}
}

// localPurge empties the in-process tier and makes every add in flight
// fail its generation check.
func (r *Route) localPurge() {
	l := r.local
	if l == nil {
		return
	}
	l.mu.Lock()
	for i := range r.loads.gens {
		r.loads.gens[i].Add(1)
	}
	l.c.Purge()
	l.mu.Unlock()
	r.Stats.LocalPurges.Add(1)
}

// bulkValue returns the string inside a raw bulk reply.
func bulkValue(raw []byte) (string, bool) {
	if len(raw) < 4 || raw[0] != '$' {
		return "", false
	}
	i := strings.IndexByte(string(raw), '\n')
	if i < 0 || len(raw) < i+3 {
		return "", false
	}
	return string(raw[i+1 : len(raw)-2]), true
}

// announce tells every proxy instance that key changed.
func (r *Route) announce(key string) {
	if r.local == nil {
		return
	}
	r.localDrop(key)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := r.publish(ctx, key); err != nil {
		r.log.Warn("publishing an invalidation failed", "err", err)
	}
}

// publish sends the other instances an invalidation of keys on the
// route ("<route>\x00<key>\x00<key>..."); no key means the whole route.
func (r *Route) publish(ctx context.Context, keys ...string) error {
	msg := r.cfg.Name + "\x00" + strings.Join(keys, "\x00")
	return r.rdb.Publish(ctx, InvalidationChannel, msg).Err()
}

// ListenInvalidations drops in-process copies when any proxy instance
// writes a routed key, until ctx ends. After a reconnect, when messages
// may have been missed, it empties every local tier.
func ListenInvalidations(ctx context.Context, rdb redis.UniversalClient, routes []*Route) {
	byName := map[string]*Route{}
	any := false
	for _, r := range routes {
		if r.local != nil {
			byName[r.cfg.Name] = r
			any = true
		}
	}
	if !any {
		return
	}
	ps := rdb.Subscribe(ctx, InvalidationChannel)
	defer ps.Close()
	for {
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		switch m := msg.(type) {
		case *redis.Message:
			name, keys, ok := strings.Cut(m.Payload, "\x00")
			if r := byName[name]; ok && r != nil {
				if keys == "" {
					r.localPurge() // the whole route (capture.go: a flush)
					break
				}
				for _, key := range strings.Split(keys, "\x00") {
					r.localDrop(key) // an in-flight read must not store the old value
				}
			}
		case *redis.Subscription:
			for _, r := range byName { // (re)subscribed: anything missed is gone
				r.localPurge()
			}
		}
		if err != nil {
			for _, r := range byName {
				r.localPurge()
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}
