package policy

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
	"github.com/respite/respite/upstream"
)

// trackedInstance opens a set over the Redis at addr whose in-process
// tiers follow Redis through a tracking connection of its own upstream,
// as the server runs them.
func trackedInstance(t *testing.T, cfg config.Config, addr string) *Set {
	t.Helper()
	s, err := openSet(t, cfg, addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ucfg := config.Default().Upstream
	ucfg.Addr = addr
	up, err := upstream.New(ucfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	s.Track(func(ctx context.Context, prefixes []string, h Invalidations) { up.Track(ctx, prefixes, h) })
	waitFor(t, 5*time.Second, "tracking in place", func() bool { return s.sh.trackOn.Load() != nil })
	return s
}

// holdsLocally reports whether s's route keeps key in its in-process tier.
func holdsLocally(s *Set, key string) bool {
	_, ok := s.List()[0].local.get(key)
	return ok
}

// Writes straight on Redis reach every in-process tier within one push:
// both instances serve the new value within 50 ms (p99 over 500); with
// the tracking connection killed (CLIENT KILL) the next GET is not
// stale; FLUSHALL purges every tier.
func TestTrackingFollowsRedis(t *testing.T) {
	rs, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Stop()
	table, prefix := uniqueName("trk"), uniqueName("trk")+":"
	pgExec(t, nil, fmt.Sprintf("CREATE TABLE %s (id integer PRIMARY KEY, name text)", table))
	pgExec(t, nil, fmt.Sprintf("INSERT INTO %s VALUES (1, 'row')", table))
	cfg := setConfig(t, nil, routeItem(uniqueName("trk"), prefix, "cache-aside", table, "id", "json", "", "ttl: 1h", "local_cache: {ttl: 1h}"))
	a, b := trackedInstance(t, cfg, rs.Addr), trackedInstance(t, cfg, rs.Addr)
	ctx := testCtx(t)
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr, DisableIdentity: true, Protocol: 2})
	defer rc.Close()
	key := prefix + "1"
	hold := func(want string) {
		t.Helper()
		for _, s := range []*Set{a, b} {
			waitFor(t, 2*time.Second, "the key held locally", func() bool {
				return setDo(ctx, s, "GET", key) == want && holdsLocally(s, key)
			})
		}
	}
	hold(bulk(`{"id":1,"name":"row"}`))
	var lat []time.Duration
	firstStale := 0 // the first GET after the SET's reply served the old value
	for i := 0; i < 500; i++ {
		v := fmt.Sprintf("direct%d", i)
		if err := rc.Set(ctx, key, v, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		if setDo(ctx, a, "GET", key) != bulk(v) {
			firstStale++
		}
		lat = append(lat, pollUntil(t, ctx, 2*time.Second, key, bulk(v), a, b))
		hold(bulk(v))
	}
	p50, p99 := percentile(lat, 0.5), percentile(lat, 0.99)
	t.Logf("SET on Redis served by both instances: p50 %v, p99 %v, max %v over %d; the first GET after the SET's reply was stale %d times", p50, p99, slices.Max(lat), len(lat), firstStale)
	if p99 > 50*time.Millisecond {
		t.Fatalf("p99 %v > 50ms", p99)
	}
	// The tracking connection killed: pushes may be lost, so the tiers
	// are purged and serve nothing until tracking is back.
	trackers := func() []int64 {
		var ids []int64
		for _, line := range strings.Split(rc.ClientList(ctx).Val(), "\n") {
			if strings.Contains(line, " name="+upstream.TrackingClientName+" ") {
				var id int64
				fmt.Sscanf(line[strings.Index(line, "id="):], "id=%d", &id)
				ids = append(ids, id)
			}
		}
		return ids
	}
	for i := 0; i < 20; i++ {
		v := fmt.Sprintf("afterkill%d", i)
		hold(setDo(ctx, a, "GET", key))
		ids := trackers()
		if len(ids) != 2 {
			t.Fatalf("round %d: %d tracking connections, want 2", i, len(ids))
		}
		for _, id := range ids {
			if err := rc.ClientKillByFilter(ctx, "ID", fmt.Sprint(id)).Err(); err != nil {
				t.Fatal(err)
			}
		}
		rc.Set(ctx, key, v, time.Hour)
		for _, s := range []*Set{a, b} {
			if got := setDo(ctx, s, "GET", key); got != bulk(v) {
				t.Fatalf("round %d: GET after the tracking connection was killed: %q, want %q", i, got, v)
			}
		}
		waitFor(t, 5*time.Second, "tracking back", func() bool {
			now := trackers()
			return len(now) == 2 && !slices.Contains(ids, now[0]) && !slices.Contains(ids, now[1]) &&
				a.sh.trackOn.Load() != nil && b.sh.trackOn.Load() != nil
		})
	}
	// FLUSHALL: a null invalidation; every tier is purged.
	hold(setDo(ctx, a, "GET", key))
	purges := a.List()[0].Stats.LocalPurges.Load() + b.List()[0].Stats.LocalPurges.Load()
	if err := rc.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Set{a, b} {
		waitFor(t, time.Second, "the tier purged", func() bool { return s.List()[0].local.c.Len() == 0 })
		if got := setDo(ctx, s, "GET", key); got != bulk(`{"id":1,"name":"row"}`) {
			t.Fatalf("GET after FLUSHALL: %q", got)
		}
	}
	if n := a.List()[0].Stats.LocalPurges.Load() + b.List()[0].Stats.LocalPurges.Load(); n < purges+2 {
		t.Fatalf("purges %d -> %d", purges, n)
	}
}

// A fill that read the row before a write on Redis, and stores after the
// write's push was applied, cannot put the old value in the in-process
// tier: the push bumped the key's generation.
func TestTrackingRefusesLateLocalFill(t *testing.T) {
	rs, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Stop()
	table, prefix := uniqueName("trk"), uniqueName("trk")+":"
	pgExec(t, nil, fmt.Sprintf("CREATE TABLE %s (id integer PRIMARY KEY, name text)", table))
	pgExec(t, nil, fmt.Sprintf("INSERT INTO %s VALUES (1, 'row')", table))
	cfg := setConfig(t, nil, routeItem(uniqueName("trk"), prefix, "cache-aside", table, "id", "json", "", "ttl: 1h", "local_cache: {ttl: 1h}"))
	s := trackedInstance(t, cfg, rs.Addr)
	ctx := testCtx(t)
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr, DisableIdentity: true, Protocol: 2})
	defer rc.Close()
	key := prefix + "1"
	r := s.List()[0]
	loaded, release := make(chan struct{}), make(chan struct{})
	r.hooks.afterLoad = func(string) { close(loaded); <-release }
	got := make(chan string, 1)
	go func() { got <- setDo(ctx, s, "GET", key) }()
	<-loaded
	invalidations := r.loads.slot(key).Load()
	rc.Set(ctx, key, "written", time.Hour)
	waitFor(t, 2*time.Second, "the push applied", func() bool { return r.loads.slot(key).Load() != invalidations })
	close(release)
	<-got
	if v, ok := r.local.get(key); ok {
		t.Fatalf("the late fill stored %q locally", v)
	}
	if g := setDo(ctx, s, "GET", key); g != bulk("written") {
		t.Fatalf("GET: %q", g)
	}
}
