package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// captureEnv is one test's tracked table and the configuration of the
// instances over it: a json cache-aside route with an in-process tier,
// long TTLs (only an invalidation can make a change visible in time), and
// a slot and publication of its own.
type captureEnv struct {
	pg     *testenv.Postgres
	table  string
	prefix string
	slot   string
	text   string // the configuration file
}

func newCaptureEnv(t *testing.T, pg *testenv.Postgres, local bool, routeExtra ...string) *captureEnv {
	t.Helper()
	if pg == nil {
		pg = testPG
	}
	e := &captureEnv{pg: pg, table: uniqueName("cdc_users"), prefix: uniqueName("cdc") + ":", slot: uniqueName("slot")}
	pgExec(t, pg, fmt.Sprintf("CREATE TABLE %s (id integer PRIMARY KEY, name text)", e.table))
	extra := append([]string{"ttl: 1h", "negative_ttl: 1h", "track_changes: true"}, routeExtra...)
	if local {
		extra = append(extra, "local_cache: {ttl: 1h}")
	}
	e.text = fmt.Sprintf(`postgres:
  dsn: %s
  invalidation:
    mode: logical
    slot: %s
    publication: %s
    status_interval: 100ms
    lease: 1s
    max_lag: 3s
routes:
%s`, pg.DSN, e.slot, "pub_"+e.slot, routeItem(uniqueName("cdc"), e.prefix, "cache-aside", e.table, "id", "json", "", extra...))
	t.Cleanup(func() {
		// The slot would pin WAL for the rest of the run.
		pg.Exec(fmt.Sprintf("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '%s' AND NOT active", e.slot))
	})
	return e
}

// open starts one instance (a Set with its own consumer name).
func (e *captureEnv) open(t *testing.T) *Set {
	t.Helper()
	text := strings.Replace(e.text, "routes:\n", "write_back:\n  consumer: "+uniqueName("inst")+"\nroutes:\n", 1)
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	s, err := openSet(t, cfg, testRedis.Addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writer is a plain pgx connection, as psql or a batch job would write.
func (e *captureEnv) writer(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), e.pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	// Commits reach the WAL (and the stream) at once, as on a server
	// with the default synchronous_commit.
	mustExec(t, conn, "SET synchronous_commit = on")
	return conn
}

func mustExec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// waitLeader waits until exactly one of sets consumes the slot and none
// is stale (a first heartbeat was read), and returns the leader.
func waitLeader(t *testing.T, sets ...*Set) *Set {
	t.Helper()
	var leader *Set
	waitFor(t, 20*time.Second, "a change-capture leader", func() bool {
		leader = nil
		n := 0
		for _, s := range sets {
			if s.Capture().Leader.Load() {
				leader, n = s, n+1
			}
			if s.Capture().Stale.Load() {
				return false
			}
		}
		return n == 1
	})
	return leader
}

// pollUntil reads key through every set until each answers want (a raw
// RESP reply), and returns how long that took; it fails after limit.
func pollUntil(t *testing.T, ctx context.Context, limit time.Duration, key, want string, sets ...*Set) time.Duration {
	t.Helper()
	start := time.Now()
	done := make([]bool, len(sets))
	for {
		all := true
		for i, s := range sets {
			if !done[i] {
				done[i] = setDo(ctx, s, "GET", key) == want
			}
			all = all && done[i]
		}
		if all {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			got := []string{}
			for _, s := range sets {
				got = append(got, setDo(ctx, s, "GET", key))
			}
			t.Fatalf("%s: not %q through every instance after %v: %q", key, want, limit, got)
		}
		time.Sleep(time.Millisecond)
	}
}

func bulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// An UPDATE by another connection is visible through each of two
// instances (in-process tier on, TTLs of an hour) within 1 s, p99 over
// 200 trials.
func TestCaptureUpdateVisibleThroughTwoInstances(t *testing.T) {
	e := newCaptureEnv(t, nil, true)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'v0')", e.table))
	a, b := e.open(t), e.open(t)
	waitLeader(t, a, b)
	key := e.prefix + "1"
	var lat []time.Duration
	for i := 1; i <= 200; i++ {
		old := bulk(fmt.Sprintf(`{"id":1,"name":"v%d"}`, i-1))
		for _, s := range []*Set{a, b} {
			// Held in both tiers: Redis and the instance's own.
			if got := setDo(ctx, s, "GET", key); got != old {
				t.Fatalf("trial %d: GET %q, want %q", i, got, old)
			}
		}
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = $1 WHERE id = 1", e.table), fmt.Sprintf("v%d", i))
		lat = append(lat, pollUntil(t, ctx, 5*time.Second, key, bulk(fmt.Sprintf(`{"id":1,"name":"v%d"}`, i)), a, b))
	}
	p50, p99 := percentile(lat, 0.5), percentile(lat, 0.99)
	t.Logf("UPDATE visible through both instances: p50 %v, p99 %v, max %v over %d trials", p50, p99, slices.Max(lat), len(lat))
	if p99 > time.Second {
		t.Fatalf("p99 %v > 1s", p99)
	}
	for _, s := range []*Set{a, b} {
		if st := &s.List()[0].Stats; st.LocalHits.Load() == 0 || st.Degraded.Load() != 0 {
			t.Fatalf("local hits %d, reads from PostgreSQL %d: the test would not test the tiers", st.LocalHits.Load(), st.Degraded.Load())
		}
	}
}

// The capture invalidates a commit only once new snapshots see it.
// Decoding sends a commit when its WAL is flushed; with a synchronous
// standby the committer then waits for the standby before its commit
// becomes visible. Here the standby named never comes ('ghost'), so the
// UPDATE stays invisible until its wait is cancelled: reads meanwhile get
// the old row, as they would straight from PostgreSQL, and once the
// commit is visible the new one shows. Invalidated at decoding time, the
// read in between re-cached the old row, served for the route's hour.
func TestCaptureInvalidatesOnceTheCommitIsVisible(t *testing.T) {
	pg, err := testenv.StartPostgres("wal_level=logical")
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	e := newCaptureEnv(t, pg, true)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'before')", e.table))
	a := e.open(t)
	waitLeader(t, a)
	key := e.prefix + "1"
	before, after := bulk(`{"id":1,"name":"before"}`), bulk(`{"id":1,"name":"after"}`)
	if got := setDo(ctx, a, "GET", key); got != before {
		t.Fatalf("GET %q, want %q", got, before)
	}
	pgExec(t, pg, "ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
	pgExec(t, pg, "SELECT pg_reload_conf()")
	reset := func() {
		pg.Exec("ALTER SYSTEM RESET synchronous_standby_names")
		pg.Exec("SELECT pg_reload_conf()")
	}
	defer reset()
	waitSyncRep(t, pg, e.writer(t))
	done := make(chan error, 1)
	go func() {
		_, err := w.Exec(context.Background(), fmt.Sprintf("UPDATE %s SET name = 'after' WHERE id = 1", e.table))
		done <- err
	}()
	// The commit is in the WAL once its backend waits for the standby.
	waitFor(t, 10*time.Second, "the UPDATE waiting for the synchronous standby", func() bool {
		n, err := pg.Query("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
		return err == nil && strings.TrimSpace(n) == "1"
	})
	// Time for the capture to receive it; reads meanwhile see the old row.
	for range 10 {
		if got := setDo(ctx, a, "GET", key); got != before {
			t.Fatalf("GET while the commit is invisible: %q, want %q", got, before)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pgExec(t, pg, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
	select {
	case <-done: // committed locally; the cancelled wait only warns
	case <-time.After(10 * time.Second):
		t.Fatal("the UPDATE still waits after pg_cancel_backend")
	}
	reset()
	took := pollUntil(t, ctx, 3*time.Second, key, after, a)
	t.Logf("the new row through the proxy %v after the commit became visible", took)
}

// waitSyncRep waits until commits wait for the synchronous standby:
// pg_reload_conf only signals, and the checkpointer turns synchronous
// replication on once it has read the file, later under load. A probe
// commit on conn (an xid assigned, so a commit record) that waits for the
// standby shows it; the probe's wait is then cancelled.
func waitSyncRep(t *testing.T, pg *testenv.Postgres, conn *pgx.Conn) {
	t.Helper()
	waiting := func() bool {
		n, err := pg.Query("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
		return err == nil && strings.TrimSpace(n) == "1"
	}
	deadline := time.Now().Add(30 * time.Second)
	for try := 1; ; try++ {
		res := make(chan error, 1)
		go func() {
			_, err := conn.Exec(context.Background(), "SELECT pg_current_xact_id()")
			res <- err
		}()
		for {
			select {
			case err := <-res:
				if err != nil {
					t.Fatalf("probe commit: %v", err)
				}
				if time.Now().After(deadline) {
					t.Fatalf("synchronous_standby_names not in effect after %d probe commits", try)
				}
			case <-time.After(10 * time.Millisecond):
				if !waiting() {
					continue
				}
				pgExec(t, pg, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
				<-res
				return
			}
			break
		}
	}
}

// An INSERT of a row whose absence is cached (negative marker), a DELETE
// and a TRUNCATE are visible through both instances within 1 s.
func TestCaptureInsertDeleteTruncate(t *testing.T) {
	e := newCaptureEnv(t, nil, true)
	ctx := testCtx(t)
	w := e.writer(t)
	a, b := e.open(t), e.open(t)
	waitLeader(t, a, b)
	var lat []time.Duration
	for i := 1; i <= 30; i++ {
		key := fmt.Sprintf("%s%d", e.prefix, i)
		for _, s := range []*Set{a, b} {
			if got := setDo(ctx, s, "GET", key); got != "$-1\r\n" {
				t.Fatalf("GET %s before the insert: %q", key, got)
			}
		}
		if n := testRedisClient(t).Exists(ctx, negKey(key)).Val(); n != 1 {
			t.Fatal("no negative marker cached")
		}
		mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES ($1, 'new')", e.table), i)
		lat = append(lat, pollUntil(t, ctx, time.Second, key, bulk(fmt.Sprintf(`{"id":%d,"name":"new"}`, i)), a, b))
		mustExec(t, w, fmt.Sprintf("DELETE FROM %s WHERE id = $1", e.table), i)
		lat = append(lat, pollUntil(t, ctx, time.Second, key, "$-1\r\n", a, b))
	}
	// TRUNCATE flushes the route: every cached row goes.
	for round := 0; round < 3; round++ {
		mustExec(t, w, fmt.Sprintf("INSERT INTO %s SELECT g, 'r' FROM generate_series(100, 119) g", e.table))
		for i := 100; i < 120; i++ {
			pollUntil(t, ctx, time.Second, fmt.Sprintf("%s%d", e.prefix, i), bulk(fmt.Sprintf(`{"id":%d,"name":"r"}`, i)), a, b)
		}
		mustExec(t, w, "TRUNCATE "+e.table)
		start := time.Now()
		for i := 100; i < 120; i++ {
			pollUntil(t, ctx, time.Second, fmt.Sprintf("%s%d", e.prefix, i), "$-1\r\n", a, b)
		}
		lat = append(lat, time.Since(start))
	}
	for _, s := range []*Set{a, b} {
		if st := &s.List()[0].Stats; st.Degraded.Load() != 0 {
			t.Fatalf("%d reads from PostgreSQL: the test would not test the cache", st.Degraded.Load())
		}
	}
	t.Logf("INSERT/DELETE/TRUNCATE visible through both instances: p50 %v, p99 %v, max %v over %d changes", percentile(lat, 0.5), percentile(lat, 0.99), slices.Max(lat), len(lat))
}

// A route keyed by a unique column that is not the primary key (the
// table's default replica identity): pgoutput sends no old tuple for an
// UPDATE that leaves the primary key alone, so a change of the key
// column cannot name the old key. The route is flushed: the old key is
// no longer served within 1 s, the new one is. Before, only the new key
// was invalidated and the old one served the row for the route's hour.
func TestCaptureUniqueKeyNotInReplicaIdentity(t *testing.T) {
	e := newCaptureEnv(t, nil, true)
	pgExec(t, nil, fmt.Sprintf("ALTER TABLE %s ADD COLUMN email text UNIQUE", e.table))
	e.text = strings.Replace(e.text, "key_column: id", "key_column: email", 1)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'n', 'a@x'), (2, 'other', 'c@x')", e.table))
	a, b := e.open(t), e.open(t)
	waitLeader(t, a, b)
	row := func(id int, name, email string) string {
		return bulk(fmt.Sprintf(`{"id":%d,"name":%q,"email":%q}`, id, name, email))
	}
	for round := 0; round < 5; round++ {
		from, to := fmt.Sprintf("a%d@x", round), fmt.Sprintf("a%d@x", round+1)
		if round == 0 {
			from = "a@x"
		}
		for _, s := range []*Set{a, b} {
			if got := setDo(ctx, s, "GET", e.prefix+from); got != row(1, "n", from) {
				t.Fatalf("round %d: GET %s: %q", round, from, got)
			}
			if got := setDo(ctx, s, "GET", e.prefix+to); got != "$-1\r\n" {
				t.Fatalf("round %d: GET %s before the UPDATE: %q", round, to, got)
			}
		}
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET email = $1 WHERE id = 1", e.table), to)
		pollUntil(t, ctx, time.Second, e.prefix+from, "$-1\r\n", a, b)
		pollUntil(t, ctx, time.Second, e.prefix+to, row(1, "n", to), a, b)
	}
	// A key column in the replica identity (here FULL) needs no flush:
	// the old key is in the stream, and the other row stays cached.
	pgExec(t, nil, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", e.table))
	flushes := a.Capture().Flushes.Load() + b.Capture().Flushes.Load()
	from, to := "a5@x", "z@x"
	if got := setDo(ctx, a, "GET", e.prefix+"c@x"); got != row(2, "other", "c@x") {
		t.Fatalf("GET c@x: %q", got)
	}
	if got := setDo(ctx, a, "GET", e.prefix+from); got != row(1, "n", from) {
		t.Fatalf("GET %s: %q", from, got)
	}
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET email = $1 WHERE id = 1", e.table), to)
	pollUntil(t, ctx, time.Second, e.prefix+from, "$-1\r\n", a, b)
	pollUntil(t, ctx, time.Second, e.prefix+to, row(1, "n", to), a, b)
	if n := a.Capture().Flushes.Load() + b.Capture().Flushes.Load(); n != flushes {
		t.Fatalf("%d flushes with REPLICA IDENTITY FULL, want none", n-flushes)
	}
	if n := testRedisClient(t).Exists(ctx, e.prefix+"c@x").Val(); n != 1 {
		t.Fatal("the other row's copy was dropped with REPLICA IDENTITY FULL")
	}
}

// An UPDATE of the primary key (the key column) carries the old key:
// the old key is not served within 1 s, the new one is.
func TestCapturePrimaryKeyChange(t *testing.T) {
	e := newCaptureEnv(t, nil, true)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'n')", e.table))
	a, b := e.open(t), e.open(t)
	waitLeader(t, a, b)
	flushes := a.Capture().Flushes.Load() + b.Capture().Flushes.Load()
	for i := 1; i <= 5; i++ {
		from, to := e.prefix+fmt.Sprint(i), e.prefix+fmt.Sprint(i+1)
		for _, s := range []*Set{a, b} {
			if got := setDo(ctx, s, "GET", from); got != bulk(fmt.Sprintf(`{"id":%d,"name":"n"}`, i)) {
				t.Fatalf("GET %s: %q", from, got)
			}
			if got := setDo(ctx, s, "GET", to); got != "$-1\r\n" {
				t.Fatalf("GET %s before the UPDATE: %q", to, got)
			}
		}
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET id = id + 1 WHERE id = $1", e.table), i)
		pollUntil(t, ctx, time.Second, from, "$-1\r\n", a, b)
		pollUntil(t, ctx, time.Second, to, bulk(fmt.Sprintf(`{"id":%d,"name":"n"}`, i+1)), a, b)
	}
	if n := a.Capture().Flushes.Load() + b.Capture().Flushes.Load(); n != flushes {
		t.Fatalf("%d flushes: a change of the primary key flushed the route", n-flushes)
	}
}

// A route with a composite key (key_columns) tracks changes: the stream's
// key is every key column joined by the route's separator, as the route
// names the row. An UPDATE, a change of one key column and a DELETE are
// each visible within 1 s, without flushing the route. Before, the
// stream carried the first column alone, which names no row of the
// route, and nothing was invalidated.
func TestCaptureCompositeKey(t *testing.T) {
	e := newCaptureEnv(t, nil, true, "key_separator: '|'")
	pgExec(t, nil, fmt.Sprintf("DROP TABLE %[1]s; CREATE TABLE %[1]s (tenant integer, id integer, name text, PRIMARY KEY (tenant, id))", e.table))
	e.text = strings.Replace(e.text, "key_column: id", "key_columns: [tenant, id]", 1)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 1, 'v0'), (2, 1, 'other')", e.table))
	a, b := e.open(t), e.open(t)
	waitLeader(t, a, b)
	flushes := a.Capture().Flushes.Load() + b.Capture().Flushes.Load()
	row := func(tenant, id int, name string) string {
		return bulk(fmt.Sprintf(`{"tenant":%d,"id":%d,"name":%q}`, tenant, id, name))
	}
	get := func(key, want string) {
		t.Helper()
		for _, s := range []*Set{a, b} {
			if got := setDo(ctx, s, "GET", e.prefix+key); got != want {
				t.Fatalf("GET %s: %q, want %q", key, got, want)
			}
		}
	}
	get("2|1", row(2, 1, "other"))
	for i := 1; i <= 5; i++ {
		get("1|1", row(1, 1, fmt.Sprintf("v%d", i-1)))
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = $1 WHERE tenant = 1 AND id = 1", e.table), fmt.Sprintf("v%d", i))
		pollUntil(t, ctx, time.Second, e.prefix+"1|1", row(1, 1, fmt.Sprintf("v%d", i)), a, b)
	}
	// A change of the second key column: the old key goes, the new one is served.
	get("1|2", "$-1\r\n")
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET id = 2 WHERE tenant = 1 AND id = 1", e.table))
	pollUntil(t, ctx, time.Second, e.prefix+"1|1", "$-1\r\n", a, b)
	pollUntil(t, ctx, time.Second, e.prefix+"1|2", row(1, 2, "v5"), a, b)
	mustExec(t, w, fmt.Sprintf("DELETE FROM %s WHERE tenant = 1 AND id = 2", e.table))
	pollUntil(t, ctx, time.Second, e.prefix+"1|2", "$-1\r\n", a, b)
	if n := a.Capture().Flushes.Load() + b.Capture().Flushes.Load(); n != flushes {
		t.Fatalf("%d flushes: the composite key was not read from the stream", n-flushes)
	}
	if n := testRedisClient(t).Exists(ctx, e.prefix+"2|1").Val(); n != 1 {
		t.Fatal("the other row's copy was dropped")
	}
}

// testRedisClient is a plain client of the shared Redis.
func testRedisClient(t testing.TB) *redis.Client { return newRedisClient(t, testRedis.Addr, 2) }

// waitFast polls cond every 200µs until it holds, failing after limit.
func waitFast(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// The fill race: a read misses and SELECTs the old row; an external UPDATE
// commits and its invalidation is applied; only then does the read's fill
// try to store what it read. The fill's lease is gone with the
// invalidation: refused. The read runs on the instance that does not
// consume the stream and has no in-process tier, so nothing but the lease
// in Redis can tell it. 1,000 iterations with random delays: the old
// value is never in Redis, nor served, once the fill is done.
func TestCaptureRefusesRacingFills(t *testing.T) {
	e := newCaptureEnv(t, nil, false)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'v0')", e.table))
	a, b := e.open(t), e.open(t)
	leader := waitLeader(t, a, b)
	s := a
	if leader == a {
		s = b
	}
	r, c := s.List()[0], leader.capture
	key := e.prefix + "1"
	var pause atomic.Pointer[chan struct{}]
	loaded := make(chan struct{}, 1)
	r.hooks.afterLoad = func(k string) {
		if ch := pause.Load(); ch != nil && k == key {
			loaded <- struct{}{}
			<-*ch
		}
	}
	rc := testRedisClient(t)
	update := func(v string) {
		n := c.Stats.Txns.Load()
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = $1 WHERE id = 1", e.table), v)
		waitFast(t, 5*time.Second, "the update's invalidation", func() bool { return c.Stats.Txns.Load() > n })
	}
	refused0 := r.Stats.FillsRefused.Load()
	const iterations = 1000
	stale, start := 0, time.Now()
	for i := 0; i < iterations; i++ {
		oldV, newV := fmt.Sprintf(`"old%d"`, i), fmt.Sprintf(`"new%d"`, i)
		update(oldV[1 : len(oldV)-1]) // applied: the key is not cached
		release := make(chan struct{})
		pause.Store(&release)
		got := make(chan string, 1)
		go func() { got <- setDo(ctx, s, "GET", key) }()
		select {
		case <-loaded:
		case <-time.After(5 * time.Second):
			t.Fatalf("iteration %d: the read did not load", i)
		}
		pause.Store(nil)
		time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
		update(newV[1 : len(newV)-1])
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		close(release)
		if g := <-got; !strings.Contains(g, oldV) {
			t.Fatalf("iteration %d: the paused read answered %q, not what it loaded", i, g)
		}
		if v := rc.Get(ctx, key).Val(); strings.Contains(v, oldV) {
			stale++
		}
		if g := setDo(ctx, s, "GET", key); !strings.Contains(g, newV) {
			stale++
		}
	}
	refused := r.Stats.FillsRefused.Load() - refused0
	t.Logf("%d iterations in %v: %d stale reads after the invalidation, %d fills refused", iterations, time.Since(start).Round(time.Millisecond), stale, refused)
	if stale != 0 {
		t.Fatalf("%d stale reads after the invalidation", stale)
	}
	if refused < iterations {
		t.Fatalf("only %d fills refused: the race was not exercised", refused)
	}
}

// slotState reads the test slot's confirmed_flush_lsn and how many slots
// of that name exist.
func slotState(t *testing.T, pg *testenv.Postgres, slot string) (confirmed backend.LSN, n int) {
	t.Helper()
	out := pgQuery(t, pg, fmt.Sprintf("SELECT count(*)::text || ' ' || coalesce(max(confirmed_flush_lsn)::text, '0/0') FROM pg_replication_slots WHERE slot_name = '%s'", slot))
	count, lsn, _ := strings.Cut(strings.TrimSpace(out), " ")
	fmt.Sscan(count, &n)
	confirmed, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	return confirmed, n
}

// The consumer is killed between applying a commit and acknowledging it:
// confirmed_flush_lsn never passed a commit before it was applied, and
// the restarted instance gets the commit again and applies it (the stale
// copy cached meanwhile is gone).
func TestCaptureKilledBeforeAckReapplies(t *testing.T) {
	e := newCaptureEnv(t, nil, false)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s SELECT g, 'v0' FROM generate_series(1, 20) g", e.table))
	first := e.open(t)
	waitLeader(t, first)
	rc := testRedisClient(t)
	var passed atomic.Int64 // acks that came before their commit was applied
	var checked atomic.Int64
	check := func(txn *backend.Txn) {
		if c, _ := slotState(t, e.pg, e.slot); c >= txn.End {
			passed.Add(1)
		}
		checked.Add(1)
	}
	var killedAt atomic.Uint64
	hook := func(txn *backend.Txn) bool {
		check(txn)
		if len(txn.Changes) == 1 && slices.Equal(txn.Changes[0].Keys, []string{"13"}) && killedAt.Load() == 0 {
			// Applied, not acked. Old copies of the rows whose commits
			// are not acked are cached meanwhile, so that their
			// (second) application shows.
			for i := 13; i <= 20; i++ {
				rc.Set(ctx, fmt.Sprintf("%s%d", e.prefix, i), "stale", 0)
			}
			killedAt.Store(uint64(txn.End))
			return false
		}
		return true
	}
	first.capture.hooks.beforeAck.Store(&hook)
	for i := 1; i <= 20; i++ {
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'v1' WHERE id = $1", e.table), i)
	}
	waitFor(t, 10*time.Second, "the kill", func() bool { return killedAt.Load() != 0 })
	first.Stop() // what is left of the killed process
	if c, n := slotState(t, e.pg, e.slot); c >= backend.LSN(killedAt.Load()) || n != 1 {
		t.Fatalf("after the kill: confirmed_flush_lsn %v, the unacked commit ends at %v; %d slots", c, backend.LSN(killedAt.Load()), n)
	}
	var again atomic.Bool
	second := e.open(t)
	hook2 := func(txn *backend.Txn) bool {
		check(txn)
		if uint64(txn.End) == killedAt.Load() {
			again.Store(true)
		}
		return true
	}
	second.capture.hooks.beforeAck.Store(&hook2)
	waitFor(t, 10*time.Second, "the commit applied again", func() bool { return again.Load() })
	for i := 13; i <= 20; i++ {
		key := fmt.Sprintf("%s%d", e.prefix, i)
		waitFor(t, 5*time.Second, "the stale copy of "+key+" invalidated", func() bool { return rc.Exists(ctx, key).Val() == 0 })
	}
	for i := 1; i <= 20; i++ {
		if got := setDo(ctx, second, "GET", fmt.Sprintf("%s%d", e.prefix, i)); got != bulk(fmt.Sprintf(`{"id":%d,"name":"v1"}`, i)) {
			t.Fatalf("row %d after the restart: %q", i, got)
		}
	}
	waitFor(t, 5*time.Second, "the ack", func() bool { c, _ := slotState(t, e.pg, e.slot); return c >= backend.LSN(killedAt.Load()) })
	if _, n := slotState(t, e.pg, e.slot); n != 1 {
		t.Fatalf("%d slots", n)
	}
	t.Logf("%d commits checked before their ack, %d had confirmed_flush_lsn past them", checked.Load(), passed.Load())
	if passed.Load() != 0 {
		t.Fatalf("confirmed_flush_lsn passed %d commits before they were applied", passed.Load())
	}
}

// Kill the leader of two: the other takes the slot over within two
// leases, and every commit made meanwhile is applied; still one slot.
func TestCaptureLeaderFailover(t *testing.T) {
	e := newCaptureEnv(t, nil, true)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s SELECT g, 'v0' FROM generate_series(1, 10) g", e.table))
	a, b := e.open(t), e.open(t)
	leader := waitLeader(t, a, b)
	other := a
	if leader == a {
		other = b
	}
	for i := 1; i <= 10; i++ {
		setDo(ctx, other, "GET", fmt.Sprintf("%s%d", e.prefix, i)) // cached in both tiers
	}
	leader.capture.hooks.crashed.Store(true)
	leader.Stop()
	killed := time.Now()
	for i := 1; i <= 10; i++ {
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'v1' WHERE id = $1", e.table), i)
	}
	waitFor(t, 10*time.Second, "the takeover", func() bool { return other.Capture().Leader.Load() })
	took := time.Since(killed)
	for i := 1; i <= 10; i++ {
		pollUntil(t, ctx, 5*time.Second, fmt.Sprintf("%s%d", e.prefix, i), bulk(fmt.Sprintf(`{"id":%d,"name":"v1"}`, i)), other)
	}
	lease := time.Second // the env's postgres.invalidation.lease
	t.Logf("the other instance took over %v after the leader died (lease %v)", took.Round(time.Millisecond), lease)
	if took > 2*lease {
		t.Fatalf("takeover after %v, more than two leases", took)
	}
	if _, n := slotState(t, e.pg, e.slot); n != 1 {
		t.Fatalf("%d slots", n)
	}
	if n := pgQuery(t, e.pg, "SELECT count(*) FROM pg_replication_slots"); strings.TrimSpace(n) == "" {
		t.Fatal("no slots")
	}
}

// The consumer is stopped and WAL is generated, with
// max_slot_wal_keep_size small, until PostgreSQL loses the slot; an
// UPDATE made meanwhile is gone with it. On restart the proxy recreates
// the slot and flushes the tracked route: the stale copy is not served.
func TestCaptureLostSlotFlushes(t *testing.T) {
	pg, err := testenv.StartPostgres("wal_level=logical", "max_slot_wal_keep_size=1MB", "min_wal_size=32MB", "max_wal_size=32MB", "wal_writer_delay=10ms")
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	e := newCaptureEnv(t, pg, false)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'v0')", e.table))
	first := e.open(t)
	waitLeader(t, first)
	key := e.prefix + "1"
	if got := setDo(ctx, first, "GET", key); got != bulk(`{"id":1,"name":"v0"}`) {
		t.Fatal(got)
	}
	first.Close()
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'v1' WHERE id = 1", e.table))
	mustExec(t, w, "CREATE TABLE filler (id serial, pad text)")
	start := time.Now()
	for status := ""; status != "lost"; status = strings.TrimSpace(pgQuery(t, pg, fmt.Sprintf("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '%s'", e.slot))) {
		if time.Since(start) > 40*time.Second {
			t.Fatalf("the slot is still %q", status)
		}
		mustExec(t, w, "INSERT INTO filler (pad) SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
		mustExec(t, w, "SELECT pg_switch_wal()")
		mustExec(t, w, "CHECKPOINT")
	}
	t.Logf("slot lost after %v", time.Since(start).Round(time.Millisecond))
	if v := testRedisClient(t).Get(ctx, key).Val(); !strings.Contains(v, "v0") {
		t.Fatalf("the stale copy is not cached (%q): the test would not test the flush", v)
	}
	second := e.open(t)
	waitLeader(t, second)
	if got := setDo(ctx, second, "GET", key); got != bulk(`{"id":1,"name":"v1"}`) {
		t.Fatalf("after the lost slot: %q", got)
	}
	if n := second.Capture().SlotsCreated.Load(); n != 1 {
		t.Fatalf("slots created: %d", n)
	}
	if status := strings.TrimSpace(pgQuery(t, pg, fmt.Sprintf("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '%s'", e.slot))); status == "lost" || status == "" {
		t.Fatalf("the slot is %q", status)
	}
	// And the new slot works.
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'v2' WHERE id = 1", e.table))
	pollUntil(t, ctx, 2*time.Second, key, bulk(`{"id":1,"name":"v2"}`), second)
}

// Writes to a table in another database, which the publication does not
// cover, never reach the proxy, yet the idle consumer acknowledges the
// WAL end from keepalives: the slot's lag stays under 16 MB.
func TestCaptureIdleSlotDoesNotPinWAL(t *testing.T) {
	e := newCaptureEnv(t, nil, false)
	s := e.open(t)
	waitLeader(t, s)
	pgExec(t, nil, "CREATE DATABASE "+e.slot)
	t.Cleanup(func() { testPG.Exec("DROP DATABASE " + e.slot) })
	conn, err := pgx.Connect(testCtx(t), strings.Replace(testPG.DSN, "/respite?", "/"+e.slot+"?", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	mustExec(t, conn, "CREATE TABLE other (id serial, pad text)")
	before := pgQuery(t, nil, "SELECT pg_current_wal_lsn()")
	for i := 0; i < 10; i++ {
		mustExec(t, conn, "INSERT INTO other (pad) SELECT repeat('x', 1000) FROM generate_series(1, 5000)")
	}
	written := pgQuery(t, nil, fmt.Sprintf("SELECT pg_current_wal_lsn() - '%s'", before))
	var lag int64
	waitFor(t, 10*time.Second, "the slot's lag under 16 MB", func() bool {
		lag, _ = s.db.SlotLag(context.Background(), e.slot)
		return lag < 16<<20
	})
	t.Logf("%s bytes of WAL written elsewhere; the slot's lag is %d bytes", written, lag)
	var w int64
	fmt.Sscan(written, &w)
	if w < 32<<20 {
		t.Fatalf("only %d bytes of WAL written: the test would not test the lag", w)
	}
}

// A write-through write through the proxy tags its transaction: when its
// commit arrives in the stream, the row it stored in the cache stays
// (no needless miss); an external write of the same row is applied.
func TestCaptureSkipsOwnWriteThrough(t *testing.T) {
	e := newCaptureEnv(t, nil, false)
	e.text = strings.Replace(e.text, "policy: cache-aside", "policy: write-through", 1)
	ctx := testCtx(t)
	w := e.writer(t)
	s := e.open(t)
	waitLeader(t, s)
	c := s.capture
	if !s.sh.tag.Load() {
		t.Fatal("the role may not tag: the test would not test it")
	}
	rc := testRedisClient(t)
	for i := 1; i <= 20; i++ {
		key := fmt.Sprintf("%s%d", e.prefix, i)
		n := c.Stats.Txns.Load()
		val := fmt.Sprintf(`{"id":%d,"name":"own%d"}`, i, i)
		if got := setDo(ctx, s, "SET", key, val); got != "+OK\r\n" {
			t.Fatalf("SET: %q", got)
		}
		waitFor(t, 5*time.Second, "the write in the stream", func() bool { return c.Stats.Txns.Load() > n })
		if got := rc.Get(ctx, key).Val(); got != val {
			t.Fatalf("the proxy's own write was evicted by its own commit: cached %q", got)
		}
	}
	if n := c.Stats.Skipped.Load(); n != 20 {
		t.Fatalf("%d own writes skipped, want 20", n)
	}
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'ext' WHERE id = 3", e.table))
	pollUntil(t, ctx, time.Second, e.prefix+"3", bulk(`{"id":3,"name":"ext"}`), s)
}

// Notify mode, with the documented trigger: an UPDATE, an INSERT under a
// negative marker, a DELETE and a TRUNCATE by another connection are
// visible through two instances within 1 s; an UPDATE while the listener
// is disconnected (its NOTIFY lost) is visible once it is back, since
// the routes are flushed after every reconnect.
func TestNotifyMode(t *testing.T) {
	e := newCaptureEnv(t, nil, true)
	e.text = strings.Replace(e.text, "mode: logical", "mode: notify\n    channel: "+e.slot, 1)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, backend.NotifyFunctionSQL)
	mustExec(t, w, backend.NotifyTriggerSQL(e.table, e.slot, backend.Key{Columns: []string{"id"}}))
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'v0')", e.table))
	a, b := e.open(t), e.open(t)
	waitLeader(t, a, b)
	key := e.prefix + "1"
	var lat []time.Duration
	for i := 1; i <= 50; i++ {
		for _, s := range []*Set{a, b} {
			setDo(ctx, s, "GET", key)
		}
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = $1 WHERE id = 1", e.table), fmt.Sprintf("v%d", i))
		lat = append(lat, pollUntil(t, ctx, time.Second, key, bulk(fmt.Sprintf(`{"id":1,"name":"v%d"}`, i)), a, b))
	}
	t.Logf("notify: UPDATE visible through both instances: p50 %v, p99 %v", percentile(lat, 0.5), percentile(lat, 0.99))
	k2 := e.prefix + "2"
	pollUntil(t, ctx, time.Second, k2, "$-1\r\n", a, b) // absence cached
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (2, 'new')", e.table))
	pollUntil(t, ctx, time.Second, k2, bulk(`{"id":2,"name":"new"}`), a, b)
	mustExec(t, w, fmt.Sprintf("DELETE FROM %s WHERE id = 2", e.table))
	pollUntil(t, ctx, time.Second, k2, "$-1\r\n", a, b)
	mustExec(t, w, "TRUNCATE "+e.table)
	pollUntil(t, ctx, time.Second, key, "$-1\r\n", a, b)
	// The listener's connection ends; an UPDATE meanwhile sends its
	// NOTIFY to nobody.
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'before')", e.table))
	pollUntil(t, ctx, time.Second, key, bulk(`{"id":1,"name":"before"}`), a, b)
	flushes := a.Capture().Flushes.Load() + b.Capture().Flushes.Load()
	mustExec(t, w, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'respite-notify' AND datname = current_database()")
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'during' WHERE id = 1", e.table))
	pollUntil(t, ctx, 5*time.Second, key, bulk(`{"id":1,"name":"during"}`), a, b)
	if a.Capture().Flushes.Load()+b.Capture().Flushes.Load() == flushes {
		t.Fatal("no flush after the reconnect")
	}
}

// Notify mode with a composite key: the trigger joins the key columns
// with the route's separator (its further arguments), and an UPDATE, a
// change of one key column and a DELETE are each visible within 1 s.
func TestNotifyModeCompositeKey(t *testing.T) {
	e := newCaptureEnv(t, nil, true, "key_separator: '|'")
	pgExec(t, nil, fmt.Sprintf("DROP TABLE %[1]s; CREATE TABLE %[1]s (tenant integer, id integer, name text, PRIMARY KEY (tenant, id))", e.table))
	e.text = strings.Replace(e.text, "key_column: id", "key_columns: [tenant, id]", 1)
	e.text = strings.Replace(e.text, "mode: logical", "mode: notify\n    channel: "+e.slot, 1)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, backend.NotifyFunctionSQL)
	mustExec(t, w, backend.NotifyTriggerSQL(e.table, e.slot, backend.Key{Columns: []string{"tenant", "id"}, Separator: "|"}))
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 1, 'v0')", e.table))
	a, b := e.open(t), e.open(t)
	waitLeader(t, a, b)
	flushes := a.Capture().Flushes.Load() + b.Capture().Flushes.Load()
	row := func(tenant, id int, name string) string {
		return bulk(fmt.Sprintf(`{"tenant":%d,"id":%d,"name":%q}`, tenant, id, name))
	}
	for i := 1; i <= 5; i++ {
		pollUntil(t, ctx, time.Second, e.prefix+"1|1", row(1, 1, fmt.Sprintf("v%d", i-1)), a, b)
		mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = $1 WHERE tenant = 1 AND id = 1", e.table), fmt.Sprintf("v%d", i))
		pollUntil(t, ctx, time.Second, e.prefix+"1|1", row(1, 1, fmt.Sprintf("v%d", i)), a, b)
	}
	pollUntil(t, ctx, time.Second, e.prefix+"1|2", "$-1\r\n", a, b)
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET id = 2 WHERE tenant = 1 AND id = 1", e.table))
	pollUntil(t, ctx, time.Second, e.prefix+"1|1", "$-1\r\n", a, b)
	pollUntil(t, ctx, time.Second, e.prefix+"1|2", row(1, 2, "v5"), a, b)
	mustExec(t, w, fmt.Sprintf("DELETE FROM %s WHERE tenant = 1 AND id = 2", e.table))
	pollUntil(t, ctx, time.Second, e.prefix+"1|2", "$-1\r\n", a, b)
	if n := a.Capture().Flushes.Load() + b.Capture().Flushes.Load(); n != flushes {
		t.Fatalf("%d flushes during the test: the changes were not applied key by key", n-flushes)
	}
}

// metricValue reads one unlabelled metric from the proxy's /metrics.
func (p *proc) metricValue(t *testing.T, name string) float64 {
	t.Helper()
	_, body := p.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// The binary consuming the stream is SIGKILLed while another connection
// updates the tracked rows and clients read them (so stale copies would
// be cached if an invalidation were lost): after each restart, every
// commit is applied: every key agrees with PostgreSQL, through the proxy
// and in Redis. Two kills.
func TestCaptureSurvivesSIGKILL(t *testing.T) {
	rs, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Stop()
	e := newCaptureEnv(t, nil, false)
	w := e.writer(t)
	const rows = 20
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s SELECT g, 'v0' FROM generate_series(1, %d) g", e.table, rows))
	cfg := "upstream:\n  addr: " + rs.Addr + "\nwrite_back:\n  consumer: " + uniqueName("inst") + "\n" + e.text
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr, DisableIdentity: true})
	defer rc.Close()
	ctx := testCtx(t)
	want := map[int]string{}
	for i := 1; i <= rows; i++ {
		want[i] = "v0"
	}
	n := 0
	for round := 1; round <= 2; round++ {
		p := startProxy(t, cfg)
		waitFor(t, 20*time.Second, "the leader applying the stream", func() bool {
			return p.metricValue(t, "respite_invalidation_leader") == 1 && p.metricValue(t, "respite_invalidation_stale") == 0
		})
		c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1})
		stop := make(chan struct{})
		var readers sync.WaitGroup
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.Get(ctx, fmt.Sprintf("%s%d", e.prefix, 1+rand.IntN(rows)))
			}
		}()
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			id := 1 + rand.IntN(rows)
			n++
			v := fmt.Sprintf("r%d_%d", round, n)
			mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = $1 WHERE id = $2", e.table), v, id)
			want[id] = v
		}
		p.kill()
		close(stop)
		readers.Wait()
		c.Close()
		// While no consumer runs, more commits.
		for i := 0; i < 20; i++ {
			id := 1 + rand.IntN(rows)
			n++
			v := fmt.Sprintf("down%d_%d", round, n)
			mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = $1 WHERE id = $2", e.table), v, id)
			want[id] = v
		}
		p = startProxy(t, cfg)
		c = redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1})
		start := time.Now()
		waitFor(t, 20*time.Second, "every key agreeing with PostgreSQL", func() bool {
			for id, v := range want {
				key := fmt.Sprintf("%s%d", e.prefix, id)
				row := fmt.Sprintf(`{"id":%d,"name":"%s"}`, id, v)
				if got, err := c.Get(ctx, key).Result(); err != nil || got != row {
					return false
				}
				if got, err := rc.Get(ctx, key).Result(); err != redis.Nil && got != row {
					return false
				}
			}
			return true
		})
		t.Logf("round %d: killed after %d commits; every key agreed %v after the restart", round, n, time.Since(start).Round(time.Millisecond))
		c.Close()
		p.kill()
	}
	if _, count := slotState(t, e.pg, e.slot); count != 1 {
		t.Fatalf("%d slots", count)
	}
}

// With no instance applying the stream for longer than max_lag, reads of
// tracked routes go to PostgreSQL (GET, MGET, EXISTS): a change nobody
// applied is still seen. Once a consumer applies the stream again, the
// cache serves again.
func TestCaptureMaxLagReadsFromPostgres(t *testing.T) {
	e := newCaptureEnv(t, nil, false)
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'v0')", e.table))
	a, b := e.open(t), e.open(t)
	leader := waitLeader(t, a, b)
	other := a
	if leader == a {
		other = b
	}
	key := e.prefix + "1"
	pollUntil(t, ctx, time.Second, key, bulk(`{"id":1,"name":"v0"}`), other)
	leader.capture.hooks.crashed.Store(true)
	leader.Stop()
	// The survivor would take over within a lease: keep it from leading
	// by holding the lease as a dead leader would.
	rc := testRedisClient(t)
	rc.Set(ctx, leaderKey(e.slot), "dead", time.Minute)
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'unapplied' WHERE id = 1", e.table))
	start := time.Now()
	waitFor(t, 10*time.Second, "reads from PostgreSQL", func() bool { return other.Capture().Stale.Load() })
	t.Logf("stale after %v (max_lag 3s)", time.Since(start).Round(time.Millisecond))
	if got := setDo(ctx, other, "GET", key); got != bulk(`{"id":1,"name":"unapplied"}`) {
		t.Fatalf("GET while stale: %q", got)
	}
	if got := setDo(ctx, other, "MGET", key, e.prefix+"2"); got != "*2\r\n"+bulk(`{"id":1,"name":"unapplied"}`)+"$-1\r\n" {
		t.Fatalf("MGET while stale: %q", got)
	}
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (2, 'new')", e.table))
	if got := setDo(ctx, other, "EXISTS", e.prefix+"2"); got != ":1\r\n" {
		t.Fatalf("EXISTS while stale: %q", got)
	}
	if v := rc.Get(ctx, key).Val(); !strings.Contains(v, "v0") {
		t.Fatalf("the stale copy is not cached (%q): the test would not test the bypass", v)
	}
	rc.Del(ctx, leaderKey(e.slot))
	waitFor(t, 10*time.Second, "the stream applied again", func() bool { return !other.Capture().Stale.Load() })
	if got := setDo(ctx, other, "GET", key); got != bulk(`{"id":1,"name":"unapplied"}`) {
		t.Fatalf("GET after the catch-up: %q", got)
	}
	if v := rc.Get(ctx, key).Val(); v != `{"id":1,"name":"unapplied"}` {
		t.Fatalf("cached after the catch-up: %q", v)
	}
}

// A route with cache_version caches its rows under tagged keys
// (cacheversion.go): the change capture invalidates those, so an UPDATE
// and an INSERT over a cached "absent" are seen within 2 s. Before, it
// deleted the untagged key and the old copies stayed for their TTL.
func TestCaptureWithCacheVersion(t *testing.T) {
	e := newCaptureEnv(t, nil, false, "cache_version: 3")
	ctx := testCtx(t)
	w := e.writer(t)
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (1, 'old')", e.table))
	a := e.open(t)
	waitLeader(t, a)
	one, two := e.prefix+"1", e.prefix+"2"
	if got := setDo(ctx, a, "GET", one); got != bulk(`{"id":1,"name":"old"}`) {
		t.Fatalf("GET %s: %q", one, got)
	}
	if got := setDo(ctx, a, "GET", two); got != "$-1\r\n" {
		t.Fatalf("GET %s: %q", two, got)
	}
	mustExec(t, w, fmt.Sprintf("UPDATE %s SET name = 'new' WHERE id = 1", e.table))
	mustExec(t, w, fmt.Sprintf("INSERT INTO %s VALUES (2, 'two')", e.table))
	pollUntil(t, ctx, 2*time.Second, one, bulk(`{"id":1,"name":"new"}`), a)
	pollUntil(t, ctx, 2*time.Second, two, bulk(`{"id":2,"name":"two"}`), a)
}
