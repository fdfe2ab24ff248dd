package policy

import (
	"context"
	"strings"
)

// In-process tiers coherent with Redis: the server keeps one dedicated
// RESP3 connection with CLIENT TRACKING ON BCAST PREFIX for the prefixes
// of the routes that have an in-process tier (upstream.Track), and Redis
// pushes the name of every key written under them, by anyone (a client
// writing Redis behind the proxy's back, another instance, the change
// capture's invalidations). A push removes the key's local copy and
// bumps its generation, so a fill or hit that read the old value cannot
// store it afterwards (localAdd); a null push (FLUSHALL, FLUSHDB) purges
// every tier; while the tracking connection is not in place, nothing is
// served or stored locally, and every tier is purged when it is lost and
// again when it is back. The pub/sub channel (local.go) stays for the
// proxy's own writes and the capture's invalidations of keys Redis no
// longer holds (a DEL of a missing key pushes nothing).

// Invalidations is what a tracking connection reports; upstream.Track
// takes it.
type Invalidations interface {
	Invalidate(keys []string)
	Purge()
	Tracking(quiet func() bool)
}

// TrackPrefixes are the prefixes of the routes with an in-process tier.
func (s *Set) TrackPrefixes() []string {
	var out []string
	for _, r := range s.List() {
		if r.local != nil {
			out = append(out, r.cfg.Prefix)
		}
	}
	return out
}

// Track makes the in-process tiers follow Redis: run (upstream.Track
// with this set's prefixes and handler) runs until the set stops. From
// now on the tiers serve only while the tracking connection is in place.
// Without tiers it does nothing.
func (s *Set) Track(run func(ctx context.Context, prefixes []string, h Invalidations)) {
	prefixes := s.TrackPrefixes()
	if len(prefixes) == 0 {
		return
	}
	s.sh.tracked.Store(true)
	h := &tierTracker{s: s}
	for _, r := range s.list {
		if r.local != nil {
			r.localPurge()
			h.routes = append(h.routes, r)
		}
	}
	go run(s.bg, prefixes, h)
}

// tierTracker applies a tracking connection's reports to the tiers.
type tierTracker struct {
	s      *Set
	routes []*Route // with an in-process tier
}

// route is the route of key among those with a tier: the longest prefix.
func (t *tierTracker) route(key string) *Route {
	var best *Route
	for _, r := range t.routes {
		if strings.HasPrefix(key, r.cfg.Prefix) && (best == nil || len(r.cfg.Prefix) > len(best.cfg.Prefix)) {
			best = r
		}
	}
	return best
}

func (t *tierTracker) Invalidate(keys []string) {
	for _, k := range keys {
		if r := t.route(k); r != nil {
			r.localDrop(k)
		}
	}
}

func (t *tierTracker) Purge() {
	for _, r := range t.routes {
		r.localPurge()
	}
}

// Tracking installs the connection's probe (nil: not in place); the
// tiers serve only while it says the connection is quiet.
func (t *tierTracker) Tracking(quiet func() bool) {
	if quiet == nil {
		t.s.sh.trackOn.Store(nil)
		return
	}
	t.s.sh.trackOn.Store(&quiet)
}
