package policy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
	"github.com/respite/respite/router"
)

// syncBuffer is a log sink tests read while the code writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// captureLog is a logger whose lines the test can read (and print with
// go test -v).
func captureLog() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo})), buf
}

// setConfig is a configuration for Open: the routes (YAML list items,
// routeItem) over pg, plus settings of write_back (YAML lines, e.g.
// "require_aof: true").
func setConfig(t testing.TB, pg *testenv.Postgres, routes string, writeBack ...string) config.Config {
	t.Helper()
	if pg == nil {
		pg = testPG
	}
	extra := ""
	for _, l := range writeBack {
		extra += "  " + l + "\n"
	}
	text := fmt.Sprintf("postgres:\n  dsn: %s\nwrite_back:\n  consumer: %s\n%sroutes:\n%s", pg.DSN, uniqueName("c"), extra, routes)
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	return cfg
}

// routeItem is one routes: entry for setConfig.
func routeItem(name, prefix, policy, table, key, format, value string, extra ...string) string {
	s := fmt.Sprintf("  - name: %s\n    prefix: %q\n    policy: %s\n    table: %s\n    key_column: %s\n    format: %s\n", name, prefix, policy, table, key, format)
	if value != "" {
		s += "    value_column: " + value + "\n"
	}
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

// openSet opens a route set over the Redis at addr with opts for the
// client (nil: defaults); it is closed when the test ends.
func openSet(t testing.TB, cfg config.Config, addr string, log *slog.Logger, opts *redis.Options) (*Set, error) {
	t.Helper()
	if opts == nil {
		opts = &redis.Options{}
	}
	o2, o3 := *opts, *opts
	o2.Addr, o3.Addr = addr, addr
	o2.Protocol, o3.Protocol = 2, 3
	o2.DisableIdentity, o3.DisableIdentity = true, true
	rc2, rc3 := redis.NewClient(&o2), redis.NewClient(&o3)
	t.Cleanup(func() { rc2.Close(); rc3.Close() })
	if log == nil {
		log = testLogger()
	}
	s, err := Open(cfg, RedisCache{rc2, rc3}, rc2, log)
	if s != nil {
		t.Cleanup(s.Close)
	}
	return s, err
}

// setDo runs one command through the set as a RESP2 client and returns
// the raw reply.
func setDo(ctx context.Context, s *Set, args ...string) string {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	var cmd router.Command
	router.Classify(&cmd, bs, s.Routes())
	return string(s.Do(ctx, 2, &cmd).AppendTo(nil, 2))
}

// An evicting maxmemory-policy refuses write-back routes at Open (start-up
// and reload) with an error naming the policy and the opt-in; the opt-in
// by that name accepts it; volatile-* and noeviction need none, and
// routes without write-back do not care. A policy changed at run time
// (CONFIG SET) refuses write-back writes from the next check on, and a
// safe one accepts them again.
func TestOpenRefusesEvictingPolicy(t *testing.T) {
	rs, err := testenv.StartRedis("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	ctx := testCtx(t)
	name := wbTable(t, nil)
	wb := routeItem(name, name+":", "write-back", name, "page_id", "value", "views")
	_, err = openSet(t, setConfig(t, nil, wb), rs.Addr, nil, nil)
	for _, want := range []string{"write-back routes " + name + " refused", "maxmemory-policy is allkeys-lru", "maxmemory-policy noeviction", "write_back.allow_evicting_policy: allkeys-lru"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Open on allkeys-lru: %v, want it to say %q", err, want)
		}
	}
	if _, err := openSet(t, setConfig(t, nil, wb, "allow_evicting_policy: allkeys-lfu"), rs.Addr, nil, nil); err == nil {
		t.Fatal("an opt-in naming another policy accepted allkeys-lru")
	}
	ca := routeItem(uniqueName("ca"), uniqueName("ca")+":", "cache-aside", name, "page_id", "value", "views")
	if _, err := openSet(t, setConfig(t, nil, ca), rs.Addr, nil, nil); err != nil {
		t.Fatalf("a cache-aside route on allkeys-lru: %v", err)
	}
	cfg := setConfig(t, nil, wb)
	cfg.WriteBack.AllowEvictingPolicy = "allkeys-lru"
	s, err := openSet(t, cfg, rs.Addr, nil, nil)
	if err != nil {
		t.Fatalf("opted in by name: %v", err)
	}
	if d := s.Durability(); d.Policy != "allkeys-lru" || d.Refusal != nil || d.Mode != ModeNone {
		t.Fatalf("durability: %+v", d)
	}
	if got := setDo(ctx, s, "SET", name+":a", "1"); got != "+OK\r\n" {
		t.Fatalf("SET with the opt-in: %q", got)
	}
	rc := newRedisClient(t, rs.Addr, 2)
	for _, p := range []string{"volatile-lru", "volatile-ttl", "noeviction"} {
		rc.ConfigSet(ctx, "maxmemory-policy", p)
		if _, err := openSet(t, setConfig(t, nil, wb), rs.Addr, nil, nil); err != nil {
			t.Errorf("Open on %s: %v", p, err)
		}
	}
	// At run time: the set opted in to allkeys-lru sees allkeys-lfu.
	rc.ConfigSet(ctx, "maxmemory-policy", "allkeys-lfu")
	s.sh.guard.check(ctx, false)
	if got := setDo(ctx, s, "SET", name+":a", "2"); !strings.Contains(got, "maxmemory-policy is allkeys-lfu") {
		t.Fatalf("SET after CONFIG SET maxmemory-policy allkeys-lfu: %q", got)
	}
	if got := setDo(ctx, s, "MSET", name+":a", "2"); !strings.Contains(got, "allkeys-lfu") {
		t.Fatalf("MSET after CONFIG SET maxmemory-policy allkeys-lfu: %q", got)
	}
	rc.ConfigSet(ctx, "maxmemory-policy", "volatile-lfu")
	s.sh.guard.check(ctx, false)
	if got := setDo(ctx, s, "SET", name+":a", "3"); got != "+OK\r\n" {
		t.Fatalf("SET after going back to a safe policy: %q", got)
	}
}

// CONFIG renamed away: the policy and AOF come from INFO (the snapshot
// settings stay unknown, and Open says so); CONFIG and INFO both refused
// by ACL: nothing is known, write-back routes are refused unless the
// operator accepts unverified settings by name.
func TestDurabilityWhenConfigIsRefused(t *testing.T) {
	rs, err := testenv.StartRedis("--rename-command", "CONFIG", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	name := wbTable(t, nil)
	wb := routeItem(name, name+":", "write-back", name, "page_id", "value", "views")
	log, buf := captureLog()
	s, err := openSet(t, setConfig(t, nil, wb), rs.Addr, log, nil)
	if err != nil {
		t.Fatalf("CONFIG renamed, INFO allowed: %v", err)
	}
	if d := s.Durability(); d.Policy != "noeviction" || d.Mode != ModeNoAOF || d.Err == nil || !strings.Contains(d.Err.Error(), "CONFIG GET refused") {
		t.Fatalf("durability: %+v", d)
	}
	if !strings.Contains(buf.String(), "some upstream Redis settings cannot be read") || !strings.Contains(buf.String(), "persistence=no-aof") {
		t.Fatalf("start-up log:\n%s", buf)
	}
	// An ACL user without CONFIG and INFO.
	rs2, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs2.Stop)
	ctx := testCtx(t)
	admin := newRedisClient(t, rs2.Addr, 2)
	if err := admin.Do(ctx, "ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all", "-config", "-info").Err(); err != nil {
		t.Fatal(err)
	}
	opts := &redis.Options{Username: "limited", Password: "pw"}
	_, err = openSet(t, setConfig(t, nil, wb), rs2.Addr, nil, opts)
	if err == nil || !strings.Contains(err.Error(), "cannot read the upstream Redis' maxmemory-policy") || !strings.Contains(err.Error(), "allow_evicting_policy: unverified") {
		t.Fatalf("CONFIG and INFO refused: %v", err)
	}
	s, err = openSet(t, setConfig(t, nil, wb, "allow_evicting_policy: unverified"), rs2.Addr, nil, opts)
	if err != nil {
		t.Fatalf("unverified accepted by name: %v", err)
	}
	if d := s.Durability(); d.Known || d.Mode != ModeUnknown || d.Refusal != nil {
		t.Fatalf("durability: %+v", d)
	}
	if _, err := openSet(t, setConfig(t, nil, wb, "allow_evicting_policy: unverified", "require_aof: true"), rs2.Addr, nil, opts); err == nil ||
		!strings.Contains(err.Error(), "require_aof") {
		t.Fatalf("require_aof with AOF unknown: %v", err)
	}
}

// write_back.require_aof refuses write-back routes without AOF; with AOF
// appendfsync always the mode is aof-always and the start-up line says
// nothing acknowledged is lost.
func TestRequireAOF(t *testing.T) {
	name := wbTable(t, nil)
	wb := routeItem(name, name+":", "write-back", name, "page_id", "value", "views")
	log, buf := captureLog()
	s, err := openSet(t, setConfig(t, nil, wb), testRedis.Addr, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := s.Durability(); d.Mode != ModeNone {
		t.Fatalf("testenv's Redis has no persistence: %+v", d)
	}
	if !strings.Contains(buf.String(), `level=WARN msg="write-back durability" persistence=none`) || !strings.Contains(buf.String(), "a Redis restart loses the write-back queues") {
		t.Fatalf("start-up line:\n%s", buf)
	}
	_, err = openSet(t, setConfig(t, nil, wb, "require_aof: true"), testRedis.Addr, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "write_back.require_aof is set and the upstream Redis has AOF off") || !strings.Contains(err.Error(), "CONFIG SET appendonly yes") {
		t.Fatalf("require_aof without AOF: %v", err)
	}
	rs, err := testenv.StartRedis("--appendonly", "yes", "--appendfsync", "always")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	log, buf = captureLog()
	s, err = openSet(t, setConfig(t, nil, wb, "require_aof: true"), rs.Addr, log, nil)
	if err != nil {
		t.Fatalf("require_aof with AOF: %v", err)
	}
	if d := s.Durability(); d.Mode != ModeAOFAlways {
		t.Fatalf("durability: %+v", d)
	}
	if !strings.Contains(buf.String(), `level=INFO msg="write-back durability" persistence=aof-always maxmemory_policy=noeviction meaning="AOF with appendfsync always: nothing acknowledged is lost`) {
		t.Fatalf("start-up line:\n%s", buf)
	}
}

// lostCount is the flusher's lost counter for route name.
func lostCount(s *Set, name string) int64 {
	for _, q := range s.Flusher().Queues(context.Background()) {
		if q.Route == name {
			return q.Lost
		}
	}
	return -1
}

// A write-back queue that disappears under a running flusher (here DEL,
// which is what an eviction or FLUSHALL does to it) is an ERROR line and
// counts in QueueStats.Lost; so is a queue missing at start-up for a
// route that flushed before. What was flushed stays, and writes go on.
func TestLostQueueIsReported(t *testing.T) {
	ctx := testCtx(t)
	rs, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	name := wbTable(t, nil)
	wb := routeItem(name, name+":", "write-back", name, "page_id", "value", "views", "flush_interval: 20ms")
	cfg := setConfig(t, nil, wb)
	log, buf := captureLog()
	s, err := openSet(t, cfg, rs.Addr, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := setDo(ctx, s, "SET", name+":a", "1"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	waitFor(t, 10*time.Second, "the first flush", func() bool { return pgQuery(t, nil, "SELECT count(*) FROM "+name) == "1" })
	if n := lostCount(s, name); n != 0 {
		t.Fatalf("lost before anything happened: %d", n)
	}
	rc := newRedisClient(t, rs.Addr, 2)
	rc.Del(ctx, StreamKey(name))
	waitFor(t, 10*time.Second, "the loss to be counted", func() bool { return lostCount(s, name) == 1 })
	if !strings.Contains(buf.String(), "level=ERROR msg=\"write-back queue lost: acknowledged writes not yet in PostgreSQL may be gone\"") ||
		!strings.Contains(buf.String(), "route="+name+" stream="+StreamKey(name)) {
		t.Fatalf("no ERROR line:\n%s", buf)
	}
	if got := setDo(ctx, s, "SET", name+":b", "2"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	waitFor(t, 10*time.Second, "writes after the loss to flush", func() bool { return pgQuery(t, nil, "SELECT count(*) FROM "+name) == "2" })
	// The consumer group alone destroyed (the stream stays): reported alike.
	if err := rc.XGroupDestroy(ctx, StreamKey(name), ConsumerGroup).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the lost group to be counted", func() bool { return lostCount(s, name) == 2 })
	if got := setDo(ctx, s, "SET", name+":c", "3"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	waitFor(t, 10*time.Second, "writes after the lost group to flush", func() bool { return pgQuery(t, nil, "SELECT count(*) FROM "+name) == "3" })
	s.Close()
	// Missing at start-up, for a route that flushed before.
	rc.Del(ctx, StreamKey(name))
	log, buf = captureLog()
	s, err = openSet(t, cfg, rs.Addr, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the loss at start-up to be counted", func() bool { return lostCount(s, name) == 1 })
	if !strings.Contains(buf.String(), "it was missing at start-up although the route flushed writes before") {
		t.Fatalf("no ERROR line at start-up:\n%s", buf)
	}
	s.Close()
	// A fresh route (nothing flushed ever) starts without a stream: no loss.
	fresh := wbTable(t, nil)
	s, err = openSet(t, setConfig(t, nil, routeItem(fresh, fresh+":", "write-back", fresh, "page_id", "value", "views")), rs.Addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the fresh route's group", func() bool { return rc.Exists(ctx, StreamKey(fresh)).Val() == 1 })
	time.Sleep(200 * time.Millisecond)
	if n := lostCount(s, fresh); n != 0 {
		t.Fatalf("a fresh route counted %d losses", n)
	}
}

// The reported incident, reproduced with the opt-in: under allkeys-random
// and a small maxmemory, Redis evicts the write-back stream; the loss is
// an ERROR and a count, not a silent NOGROUP warning.
func TestEvictedQueueIsReported(t *testing.T) {
	ctx := testCtx(t)
	rs, err := testenv.StartRedis("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-random")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	name := wbTable(t, nil)
	cfg := setConfig(t, nil, routeItem(name, name+":", "write-back", name, "page_id", "value", "views", "flush_interval: 1h"),
		"allow_evicting_policy: allkeys-random")
	log, buf := captureLog()
	s, err := openSet(t, cfg, rs.Addr, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := setDo(ctx, s, "INCR", name+":a"); got == "" || got[0] == '-' {
		// a fresh key: its row is loaded (absent) first
		t.Fatalf("INCR: %q", got)
	}
	waitFor(t, 5*time.Second, "the stream", func() bool { return newRedisClient(t, rs.Addr, 2).Exists(ctx, StreamKey(name)).Val() == 1 })
	rc := newRedisClient(t, rs.Addr, 2)
	filler := strings.Repeat("x", 2048)
	for i := 0; rc.Exists(ctx, StreamKey(name)).Val() == 1; i++ {
		if i == 200000 {
			t.Fatal("Redis never evicted the stream")
		}
		p := rc.Pipeline()
		for j := 0; j < 100; j++ {
			p.Set(ctx, fmt.Sprintf("fill:%d:%d", i, j), filler, 0)
		}
		p.Exec(ctx)
	}
	waitFor(t, 10*time.Second, "the eviction to be counted", func() bool { return lostCount(s, name) >= 1 })
	if !strings.Contains(buf.String(), "level=ERROR msg=\"write-back queue lost") {
		t.Fatalf("no ERROR line:\n%s", buf)
	}
}

// With AOF appendfsync always, Redis shut down and restarted in the middle
// of a write-back load loses nothing: PostgreSQL's sum equals the INCRs
// acknowledged. Without persistence the same restart loses the queue, and
// that is reported (respite_writeback_queue_lost_total).
func TestWriteBackSurvivesRedisRestartWithAOF(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		lost bool
	}{
		{"aof-always", []string{"--appendonly", "yes", "--appendfsync", "always"}, false},
		{"none", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			rs, err := testenv.StartRedis(tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(rs.Stop)
			name := wbTable(t, nil)
			cfg := setConfig(t, nil, routeItem(name, name+":", "write-back", name, "page_id", "value", "views", "flush_interval: 50ms"))
			s, err := openSet(t, cfg, rs.Addr, nil, &redis.Options{MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Durability().Mode; got != tc.name {
				t.Fatalf("mode %s, want %s", got, tc.name)
			}
			var acked, failed atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := 0; w < 8; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						key := fmt.Sprintf("%s:k%d", name, (w*7+i)%20)
						if got := setDo(ctx, s, "INCR", key); strings.HasPrefix(got, ":") {
							acked.Add(1)
						} else {
							failed.Add(1) // may or may not have been applied
							time.Sleep(5 * time.Millisecond)
						}
					}
				}(w)
			}
			time.Sleep(time.Second)
			newRedisClient(t, rs.Addr, 2).Shutdown(ctx) // the connection closes: no reply
			time.Sleep(300 * time.Millisecond)
			if err := rs.Restart(); err != nil {
				t.Fatal(err)
			}
			before := acked.Load()
			time.Sleep(time.Second)
			close(stop)
			wg.Wait()
			if acked.Load() == before {
				t.Fatal("no INCR was acknowledged after the restart")
			}
			if !tc.lost {
				if n := lostCount(s, name); n != 0 {
					t.Fatalf("lost %d times with AOF", n)
				}
			} else {
				waitFor(t, 10*time.Second, "the loss to be reported", func() bool { return lostCount(s, name) >= 1 })
			}
			drainCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if left, err := s.Drain(drainCtx); left != 0 || err != nil {
				t.Fatalf("Drain: %d left, %v", left, err)
			}
			total, _ := strconv.ParseInt(pgQuery(t, nil, "SELECT coalesce(sum(views), 0) FROM "+name), 10, 64)
			t.Logf("%s: %d INCRs acknowledged (%d before the restart), %d failed (applied or not), PostgreSQL's sum %d",
				tc.name, acked.Load(), before, failed.Load(), total)
			if tc.lost {
				return
			}
			// Nothing acknowledged is lost; an INCR whose reply the
			// shutdown cut off may have been applied; and PostgreSQL holds
			// what Redis holds, key by key.
			if total < acked.Load() || total > acked.Load()+failed.Load() {
				t.Fatalf("PostgreSQL's sum %d is outside [%d acknowledged, %d acknowledged or failed]", total, acked.Load(), acked.Load()+failed.Load())
			}
			rc := newRedisClient(t, rs.Addr, 2)
			for k, v := range pgRows(t, nil, "SELECT page_id, views FROM "+name) {
				if got := rc.Get(ctx, name+":"+k).Val(); got != v {
					t.Errorf("%s: Redis %q, PostgreSQL %q", k, got, v)
				}
			}
		})
	}
}

// On a cluster the durability check reads every primary and reports the
// weakest: one primary with an evicting policy is the cluster's policy,
// and a restart of any primary changes RunID.
func TestDurabilityOfEveryClusterPrimary(t *testing.T) {
	cl, err := testenv.StartCluster()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	ctx := testCtx(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	defer rdb.Close()
	d := readDurabilityAll(ctx, rdb)
	if d.Unreachable || !d.Known || d.Policy != "noeviction" || strings.Count(d.RunID, "=") != 3 {
		t.Fatalf("before: %+v", d)
	}
	one := newRedisClient(t, cl.Addrs()[1], 2)
	if err := one.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	if d := readDurabilityAll(ctx, rdb); d.Policy != "allkeys-lru" {
		t.Fatalf("one primary evicting: policy %q, want allkeys-lru", d.Policy)
	}
}
