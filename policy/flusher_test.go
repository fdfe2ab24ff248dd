package policy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/testenv"
)

// wbTable creates a page-views table on pg (nil: shared) and returns its
// name, which is also the route's name; the prefix is name + ":".
func wbTable(t testing.TB, pg *testenv.Postgres) string {
	t.Helper()
	name := uniqueName("wb")
	pgExec(t, pg, "CREATE TABLE "+name+" (page_id text PRIMARY KEY, views bigint NOT NULL DEFAULT 0 CONSTRAINT "+
		name+"_views_check CHECK (views >= 0))")
	return name
}

// wbRouteYAML is a write-back value route over table name with extra
// settings (lines of YAML).
func wbRouteYAML(name, extra string) string {
	return fmt.Sprintf("name: %s\nprefix: \"%s:\"\npolicy: write-back\ntable: %s\nkey_column: page_id\nformat: value\nvalue_column: views\n%s",
		name, name, name, extra)
}

// newTestFlusher builds a flusher with test timings: claims after 200ms,
// retries from 10ms up to 200ms.
func newTestFlusher(t testing.TB, addr string, consumer string, routes ...*Route) *Flusher {
	f := NewFlusher(routes, newRedisClient(t, addr, 2), consumer, testLogger())
	f.ClaimIdle = 200 * time.Millisecond
	f.RetryBase = 10 * time.Millisecond
	f.RetryMax = 200 * time.Millisecond
	f.Block = 20 * time.Millisecond
	return f
}

// runFlusher starts f.Run and returns a function that stops it and waits
// for it to return (like a process whose main loop was cancelled, without
// Drain).
func runFlusher(f *Flusher) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

func drain(t testing.TB, f *Flusher, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	left, err := f.Drain(ctx)
	if err != nil || left != 0 {
		t.Fatalf("Drain: left %d, err %v", left, err)
	}
}

func statementCount(t testing.TB) int64 {
	t.Helper()
	out := pgQuery(t, nil, "SELECT coalesce(sum(calls),0) FROM pg_stat_statements WHERE query ILIKE 'with respite_in%'")
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatalf("pg_stat_statements: %q", out)
	}
	return n
}

// 100,000 INCRs over 100 keys from 50 goroutines, flushed while they run:
// every PostgreSQL value is exact, with far fewer statements than writes.
func TestFlusherCountersExactWithCoalescing(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, "batch_size: 100\nflush_interval: 100ms"))
	f := newTestFlusher(t, env.redis, "c1", r)
	pgQuery(t, nil, "SELECT pg_stat_statements_reset()")

	stop := runFlusher(f)
	defer stop()
	const goroutines, perG, keys = 50, 2000, 100
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perG {
				key := fmt.Sprintf("%s:p%d", name, (g*perG+i)%keys)
				if out := doRaw(ctx, r, "INCR", key); !strings.HasPrefix(out, ":") {
					if failed.Add(1) == 1 {
						t.Errorf("INCR %s: %q", key, out)
					}
				}
			}
		}()
	}
	wg.Wait()
	writeTime := time.Since(start)
	stop()
	drain(t, f, 30*time.Second)

	rows := pgRows(t, nil, "SELECT page_id, views FROM "+name)
	if len(rows) != keys {
		t.Fatalf("%d rows, want %d", len(rows), keys)
	}
	for k, v := range rows {
		if v != strconv.Itoa(goroutines*perG/keys) {
			t.Errorf("%s = %s, want %d", k, v, goroutines*perG/keys)
		}
	}
	stmts := statementCount(t)
	writes := int64(goroutines * perG)
	t.Logf("%d INCRs in %v; %d flush statements (pg_stat_statements; flusher counted %d) in %d batches: %.0f writes per statement; %d entries coalesced away; %d rows",
		writes, writeTime.Round(time.Millisecond), stmts, f.Stats.Statements.Load(), f.Stats.Batches.Load(),
		float64(writes)/float64(stmts), f.Stats.Coalesced.Load(), len(rows))
	if stmts == 0 || writes/stmts < 10 {
		t.Errorf("%d statements for %d writes: want at least 10x fewer", stmts, writes)
	}
	if got := f.Stats.Entries.Load(); got != writes {
		t.Errorf("Stats.Entries = %d, want %d", got, writes)
	}
	if f.Stats.Coalesced.Load() == 0 {
		t.Error("Stats.Coalesced = 0: 100 keys in batches of 100 entries must repeat keys")
	}
}

// SET, DEL, SET of one key queued before a flush: one statement, and
// PostgreSQL has the last SET; SET then DEL of a stored row deletes it.
func TestFlusherSetDelSetKeepsLastWrite(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	pgExec(t, nil, "INSERT INTO "+name+" VALUES ('a', 100), ('b', 200)")
	r := env.newRoute(t, wbRouteYAML(name, ""))
	do(t, ctx, r, "SET", name+":a", "1")
	do(t, ctx, r, "DEL", name+":a")
	do(t, ctx, r, "SET", name+":a", "3")
	do(t, ctx, r, "SET", name+":b", "5")
	do(t, ctx, r, "DEL", name+":b")
	do(t, ctx, r, "SET", name+":c", "7")
	do(t, ctx, r, "DEL", name+":c")
	do(t, ctx, r, "SET", name+":c", "9")

	f := newTestFlusher(t, env.redis, "c1", r)
	if err := f.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	got := pgRows(t, nil, "SELECT page_id, views FROM "+name+" ORDER BY 1")
	want := map[string]string{"a": "3", "c": "9"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	if s, b, c := f.Stats.Statements.Load(), f.Stats.Batches.Load(), f.Stats.Coalesced.Load(); s != 1 || b != 1 || c != 5 {
		t.Errorf("statements %d, batches %d, coalesced %d; want 1, 1, 5", s, b, c)
	}
	if n := testRedisLen(t, StreamKey(name)); n != 0 {
		t.Errorf("stream still has %d entries", n)
	}
}

func testRedisLen(t testing.TB, stream string) int64 {
	t.Helper()
	n, err := newRedisClient(t, testRedis.Addr, 2).XLen(context.Background(), stream).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A value that passes CheckValue but violates a CHECK constraint: the
// batch is split so the other entries commit at once, and the poison entry
// lands in the dead-letter queue after max_retries attempts.
func TestFlusherPoisonEntryGoesToDLQ(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, "max_retries: 3"))
	for i := range 40 {
		do(t, ctx, r, "SET", fmt.Sprintf("%s:good%d", name, i), strconv.Itoa(i))
		if i == 17 {
			do(t, ctx, r, "SET", name+":bad", "-5")
		}
	}
	f := newTestFlusher(t, env.redis, "c1", r)
	f.RetryBase = 50 * time.Millisecond
	if err := f.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	// The good entries are in; the poison one waits for its next attempt.
	if n := pgQuery(t, nil, "SELECT count(*) FROM "+name); n != "40" {
		t.Fatalf("%s rows after the first pass, want 40", n)
	}
	q := f.Queues(ctx)[0]
	if q.Length != 1 || q.InFlight != 1 || q.DeadLetters != 0 {
		t.Fatalf("queue after the first pass: %+v", q)
	}
	// New writes are not blocked by the poison entry.
	do(t, ctx, r, "SET", name+":later", "1")
	if err := f.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	if n := pgQuery(t, nil, "SELECT count(*) FROM "+name+" WHERE page_id = 'later'"); n != "1" {
		t.Fatal("a write after the poison entry was not flushed")
	}

	drain(t, f, 10*time.Second)
	if n := pgQuery(t, nil, "SELECT count(*) FROM "+name); n != "41" {
		t.Errorf("%s rows, want 41", n)
	}
	dl, err := f.DeadLetters(ctx, name, 0)
	if err != nil || len(dl) != 1 {
		t.Fatalf("DeadLetters: %v, %v", dl, err)
	}
	v := dl[0].Values
	if v["k"] != name+":bad" || v["v"] != "-5" || v["route"] != name || v["attempts"] != "3" ||
		!strings.Contains(v["error"].(string), "23514") || v["id"] == "" {
		t.Errorf("dead letter %v", v)
	}
	if f.Stats.DeadLettered.Load() != 1 {
		t.Errorf("DeadLettered = %d", f.Stats.DeadLettered.Load())
	}
	q = f.Queues(ctx)[0]
	if q.Length != 0 || q.InFlight != 0 || q.DeadLetters != 1 {
		t.Errorf("queue at the end: %+v", q)
	}
	t.Logf("41 good + 1 poison entries: %d statements, %d retries", f.Stats.Statements.Load(), f.Stats.Retries.Load())
}

// PostgreSQL halted for a few seconds while writes go on: the flusher
// keeps retrying (nothing dead-lettered) and nothing is lost after
// Resume.
func TestFlusherPostgresDownNothingLost(t *testing.T) {
	pg, err := testenv.StartPostgres() // our own: it is halted
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	ctx := testCtx(t)
	db, err := openDB(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	env := routeEnv{db: db, redis: testRedis.Addr}
	name := wbTable(t, pg)
	r := env.newRoute(t, wbRouteYAML(name, "batch_size: 50\nflush_interval: 50ms\nmax_retries: 2"))
	const keys = 20
	for i := range keys {
		do(t, ctx, r, "SET", fmt.Sprintf("%s:k%d", name, i), "0")
	}
	f := newTestFlusher(t, env.redis, "c1", r)
	stop := runFlusher(f)
	defer stop()

	var counts [keys]atomic.Int64
	var writing atomic.Bool
	writing.Store(true)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; writing.Load(); i++ {
				k := i % keys
				if out := doRaw(ctx, r, "INCR", fmt.Sprintf("%s:k%d", name, k)); strings.HasPrefix(out, ":") {
					counts[k].Add(1)
				} else {
					t.Errorf("INCR during the outage: %q", out)
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	pg.Halt()
	haltedAt := f.Stats.Entries.Load()
	time.Sleep(2 * time.Second)
	if got := f.Stats.Entries.Load(); got != haltedAt {
		t.Errorf("entries flushed while PostgreSQL was down: %d", got-haltedAt)
	}
	if q := f.Queues(ctx)[0]; q.Length == 0 || q.OldestAge < time.Second {
		t.Errorf("queue while PostgreSQL is down: %+v", q)
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	writing.Store(false)
	wg.Wait()
	stop()
	drain(t, f, 20*time.Second)

	rows := pgRows(t, pg, "SELECT page_id, views FROM "+name)
	var total int64
	for i := range keys {
		want := counts[i].Load()
		total += want
		if got := rows[fmt.Sprintf("k%d", i)]; got != strconv.FormatInt(want, 10) {
			t.Errorf("k%d = %s, want %d", i, got, want)
		}
	}
	if f.Stats.DeadLettered.Load() != 0 {
		t.Errorf("%d entries dead-lettered during the outage", f.Stats.DeadLettered.Load())
	}
	if f.Stats.Errors.Load() == 0 {
		t.Error("no errors counted: was PostgreSQL really down?")
	}
	t.Logf("%d INCRs, %d flush errors during the outage, %d retries, %d statements", total,
		f.Stats.Errors.Load(), f.Stats.Retries.Load(), f.Stats.Statements.Load())
}

// A flusher that read entries and stopped without acknowledging them (a
// crash): a new flusher with the same consumer name flushes them all.
func TestFlusherRestartFlushesOwnPending(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	// A batch never fills and the interval never passes: entries are read
	// and held.
	r := env.newRoute(t, wbRouteYAML(name, "batch_size: 1000\nflush_interval: 1h"))
	for i := range 500 {
		do(t, ctx, r, "SET", fmt.Sprintf("%s:k%d", name, i), strconv.Itoa(i))
	}
	a := newTestFlusher(t, env.redis, "proxy-1", r)
	a.ClaimIdle = time.Hour
	stopA := runFlusher(a)
	rdb := newRedisClient(t, env.redis, 2)
	waitFor(t, 5*time.Second, "500 pending entries", func() bool {
		p, err := rdb.XPending(ctx, StreamKey(name), ConsumerGroup).Result()
		return err == nil && p.Count == 500 && p.Consumers["proxy-1"] == 500
	})
	stopA() // "crash": no Drain, nothing acknowledged
	if n := pgQuery(t, nil, "SELECT count(*) FROM "+name); n != "0" {
		t.Fatalf("%s rows flushed before the crash", n)
	}

	b := newTestFlusher(t, env.redis, "proxy-1", r)
	b.ClaimIdle = time.Hour // only its own pending entries can be found
	drain(t, b, 10*time.Second)
	if n := pgQuery(t, nil, "SELECT count(*) FROM "+name+" WHERE views::text = substr(page_id, 2)"); n != "500" {
		t.Errorf("%s rows after the restart, want 500", n)
	}
	if p, _ := rdb.XPending(ctx, StreamKey(name), ConsumerGroup).Result(); p == nil || p.Count != 0 {
		t.Errorf("still pending: %+v", p)
	}
}

// Entries read by a consumer that never comes back are claimed by another
// after ClaimIdle and flushed by Run.
func TestFlusherClaimsFromDeadConsumer(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, "flush_interval: 50ms"))
	rdb := newRedisClient(t, env.redis, 2)
	if err := rdb.XGroupCreateMkStream(ctx, StreamKey(name), ConsumerGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		do(t, ctx, r, "SET", fmt.Sprintf("%s:k%d", name, i), "1")
	}
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: ConsumerGroup, Consumer: "dead",
		Streams: []string{StreamKey(name), ">"}, Count: 1000, Block: -1}).Result()
	if err != nil || len(res[0].Messages) != 300 {
		t.Fatalf("XREADGROUP: %v", err)
	}
	readAt := time.Now()
	f := newTestFlusher(t, env.redis, "alive", r)
	stop := runFlusher(f)
	defer stop()
	waitFor(t, 10*time.Second, "300 rows", func() bool {
		return pgQuery(t, nil, "SELECT count(*) FROM "+name) == "300"
	})
	if d := time.Since(readAt); d < f.ClaimIdle {
		t.Errorf("claimed after %v, before ClaimIdle %v", d, f.ClaimIdle)
	}
	waitFor(t, 5*time.Second, "an empty queue", func() bool {
		q := f.Queues(ctx)[0]
		return q.Length == 0 && q.InFlight == 0
	})
}

// Drain with 5,000 entries pending (2,000 already read by this consumer,
// 3,000 unread) flushes them all and reports 0 left.
func TestFlusherDrainFlushesEverything(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, "flush_interval: 1h"))
	rc := newRedisClient(t, env.redis, 2)
	// Queue through the route's own script in a pipeline, for speed.
	p := rc.Pipeline()
	for i := range 5000 {
		key := fmt.Sprintf("%s:k%d", name, i)
		wbSet.Run(ctx, p, []string{key, negKey(key), StreamKey(name)}, strconv.Itoa(i))
	}
	if _, err := p.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	rc.XGroupCreateMkStream(ctx, StreamKey(name), ConsumerGroup, "0")
	if err := rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: ConsumerGroup, Consumer: "me",
		Streams: []string{StreamKey(name), ">"}, Count: 2000, Block: -1}).Err(); err != nil {
		t.Fatal(err)
	}
	f := newTestFlusher(t, env.redis, "me", r)
	start := time.Now()
	drain(t, f, 30*time.Second)
	if n := pgQuery(t, nil, "SELECT count(*) FROM "+name+" WHERE views::text = substr(page_id, 2)"); n != "5000" {
		t.Errorf("%s rows, want 5000", n)
	}
	if f.Stats.Entries.Load() != 5000 || f.Stats.Batches.Load() != 50 {
		t.Errorf("entries %d, batches %d", f.Stats.Entries.Load(), f.Stats.Batches.Load())
	}
	t.Logf("Drain of 5000 entries: %v", time.Since(start).Round(time.Millisecond))
}

// A Drain that cannot finish before its context ends (every flush waits
// on a table lock and times out) reports how many entries are left, keeps
// them queued, and counts no attempt against max_retries.
func TestFlusherDrainTimeoutReportsLeft(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, "max_retries: 1000"))
	for i := range 10 {
		do(t, ctx, r, "SET", fmt.Sprintf("%s:k%d", name, i), "1")
	}
	// Lock the table so every flush waits, then time out.
	f := newTestFlusher(t, env.redis, "me", r)
	f.StatementTimeout = 100 * time.Millisecond
	lockCtx, unlock := context.WithCancel(ctx)
	locked := make(chan struct{})
	go func() {
		tx, err := testDB.Begin(lockCtx)
		if err != nil {
			t.Error(err)
			close(locked)
			return
		}
		defer tx.Rollback(context.Background())
		if _, err := tx.Exec(lockCtx, "LOCK TABLE "+name+" IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Error(err)
		}
		close(locked)
		<-lockCtx.Done()
	}()
	<-locked
	dctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	left, err := f.Drain(dctx)
	cancel()
	if left != 10 || err == nil {
		t.Errorf("Drain under a lock: left %d, err %v; want 10 and an error", left, err)
	} else {
		t.Logf("Drain under a lock: left %d, err %v", left, err)
	}
	if f.Stats.DeadLettered.Load() != 0 {
		t.Error("timeouts dead-lettered entries")
	}
	unlock()
	drain(t, f, 10*time.Second)
	if n := pgQuery(t, nil, "SELECT count(*) FROM "+name); n != "10" {
		t.Errorf("%s rows", n)
	}
}

// Dead letters can be listed, replayed (keeping their version) and
// dropped.
func TestFlusherDeadLetterAdmin(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, "max_retries: 1"))
	f := newTestFlusher(t, env.redis, "me", r)
	for i := 1; i <= 3; i++ {
		do(t, ctx, r, "SET", fmt.Sprintf("%s:bad%d", name, i), strconv.Itoa(-i))
	}
	do(t, ctx, r, "SET", name+":good", "1")
	drain(t, f, 10*time.Second)
	all, err := f.DeadLetters(ctx, name, 0)
	if err != nil || len(all) != 3 {
		t.Fatalf("DeadLetters: %d, %v", len(all), err)
	}
	if two, _ := f.DeadLetters(ctx, name, 2); len(two) != 2 || two[0].ID != all[0].ID {
		t.Errorf("DeadLetters(2) = %v", two)
	}
	if _, err := f.DeadLetters(ctx, "nope", 0); err == nil {
		t.Error("DeadLetters of an unknown route: no error")
	}
	id := map[string]string{}
	for _, m := range all {
		id[strings.TrimPrefix(m.Values["k"].(string), name+":")] = m.ID
	}

	// Drop one.
	if n, err := f.Drop(ctx, name, id["bad3"]); n != 1 || err != nil {
		t.Errorf("Drop(bad3) = %d, %v", n, err)
	}
	// bad1 is written again meanwhile: its replay must not undo that.
	do(t, ctx, r, "SET", name+":bad1", "10")
	if err := f.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	pgExec(t, nil, "ALTER TABLE "+name+" DROP CONSTRAINT "+name+"_views_check")
	if n, err := f.Replay(ctx, name, id["bad1"], "1-1"); n != 1 || err != nil {
		t.Errorf("Replay(bad1, unknown) = %d, %v", n, err)
	}
	if n, err := f.Replay(ctx, name); n != 1 || err != nil { // all: bad2
		t.Errorf("Replay() = %d, %v", n, err)
	}
	if n := testRedisLen(t, DeadLetterKey(name)); n != 0 {
		t.Errorf("DLQ has %d entries after replaying all", n)
	}
	drain(t, f, 10*time.Second)
	got := pgRows(t, nil, "SELECT page_id, views FROM "+name)
	want := map[string]string{"good": "1", "bad1": "10", "bad2": "-2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rows %v, want %v", got, want)
	}

	// Drop all.
	pgExec(t, nil, "ALTER TABLE "+name+" ADD CONSTRAINT c CHECK (views >= 0) NOT VALID")
	do(t, ctx, r, "SET", name+":bad4", "-4")
	do(t, ctx, r, "SET", name+":bad5", "-5")
	drain(t, f, 10*time.Second)
	if n, err := f.Drop(ctx, name); n != 2 || err != nil {
		t.Errorf("Drop() = %d, %v", n, err)
	}
	if q := f.Queues(ctx)[0]; q.DeadLetters != 0 || q.Length != 0 {
		t.Errorf("queue at the end: %+v", q)
	}
}

// Queues reports length, age, in-flight and dead letters as they move.
func TestFlusherQueues(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, ""))
	f := newTestFlusher(t, env.redis, "me", r)
	if q := f.Queues(ctx); len(q) != 1 || q[0] != (QueueStats{Route: name, Priority: "low"}) {
		t.Fatalf("empty queue: %+v", q)
	}
	for i := range 10 {
		do(t, ctx, r, "SET", fmt.Sprintf("%s:k%d", name, i), "1")
	}
	time.Sleep(50 * time.Millisecond)
	q := f.Queues(ctx)[0]
	if q.Length != 10 || q.InFlight != 0 || q.OldestAge < 50*time.Millisecond || q.OldestAge > 5*time.Second || q.Err != nil {
		t.Errorf("10 queued: %+v", q)
	}
	// Another instance reads 4 of them.
	rdb := newRedisClient(t, env.redis, 2)
	rdb.XGroupCreateMkStream(ctx, StreamKey(name), ConsumerGroup, "0")
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: ConsumerGroup, Consumer: "other",
		Streams: []string{StreamKey(name), ">"}, Count: 4, Block: -1}).Err(); err != nil {
		t.Fatal(err)
	}
	if q := f.Queues(ctx)[0]; q.Length != 10 || q.InFlight != 4 {
		t.Errorf("4 read by another: %+v", q)
	}
	if err := f.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	if q := f.Queues(ctx)[0]; q.Length != 4 || q.InFlight != 4 {
		t.Errorf("after FlushNow: %+v", q)
	}
	time.Sleep(f.ClaimIdle)
	drain(t, f, 10*time.Second) // claims the other's entries
	if q := f.Queues(ctx)[0]; q.Length != 0 || q.InFlight != 0 || q.OldestAge != 0 {
		t.Errorf("after Drain: %+v", q)
	}
}

// High-priority routes are flushed before low-priority ones.
func TestFlusherPriority(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	low, high := wbTable(t, nil), wbTable(t, nil)
	rl := env.newRoute(t, wbRouteYAML(low, "batch_size: 10\npriority: low"))
	rh := env.newRoute(t, wbRouteYAML(high, "batch_size: 10\npriority: high"))
	write := func() {
		for i := range 30 {
			do(t, ctx, rl, "SET", fmt.Sprintf("%s:k%d", low, i), "1")
			do(t, ctx, rh, "SET", fmt.Sprintf("%s:k%d", high, i), "1")
		}
	}
	write()
	var mu sync.Mutex
	var order []string
	f := newTestFlusher(t, env.redis, "me", rl, rh) // low first in the list
	f.afterFlush = func(route string, n int) {
		mu.Lock()
		order = append(order, route)
		mu.Unlock()
	}
	if q := f.Queues(ctx); q[0].Route != high || q[0].Priority != "high" || q[1].Route != low {
		t.Errorf("Queues order: %+v", q)
	}
	if err := f.FlushNow(ctx); err != nil {
		t.Fatal(err)
	}
	want := strings.Repeat(high+" ", 3) + strings.Repeat(low+" ", 3)
	if got := strings.Join(order, " ") + " "; got != want {
		t.Errorf("FlushNow order %q, want %q", got, want)
	}

	// Run: in every pass the high route goes first.
	order = nil
	write()
	stop := runFlusher(f)
	waitFor(t, 5*time.Second, "6 batches", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 6
	})
	stop()
	mu.Lock()
	defer mu.Unlock()
	nh, nl := 0, 0
	for _, o := range order {
		if o == high {
			nh++
		} else {
			nl++
		}
		if nl > nh {
			t.Fatalf("Run order %v: a low batch before the high one of its pass", order)
		}
	}
}

// Hash and json routes go through the same queue (FlushFields, FlushJSON).
func TestFlusherHashAndJSONRoutes(t *testing.T) {
	ctx := testCtx(t)
	env := sharedEnv()
	h, j := uniqueName("wbh"), uniqueName("wbj")
	pgExec(t, nil, "CREATE TABLE "+h+" (id int PRIMARY KEY, name text, qty int DEFAULT 0)")
	pgExec(t, nil, "CREATE TABLE "+j+" (id int PRIMARY KEY, name text, qty int DEFAULT 0)")
	rh := env.newRoute(t, fmt.Sprintf("name: %s\nprefix: \"%s:\"\npolicy: write-back\ntable: %s\nkey_column: id\nformat: hash", h, h, h))
	rj := env.newRoute(t, fmt.Sprintf("name: %s\nprefix: \"%s:\"\npolicy: write-back\ntable: %s\nkey_column: id\nformat: json", j, j, j))
	do(t, ctx, rh, "HSET", h+":1", "name", "a", "qty", "2")
	do(t, ctx, rh, "HINCRBY", h+":1", "qty", "5")
	do(t, ctx, rh, "HSET", h+":2", "name", "b")
	do(t, ctx, rh, "DEL", h+":2")
	do(t, ctx, rj, "SET", j+":1", `{"name":"x","qty":3}`)
	do(t, ctx, rj, "SET", j+":2", `{"name":"y"}`)
	f := newTestFlusher(t, env.redis, "me", rh, rj)
	drain(t, f, 10*time.Second)
	if got := pgQuery(t, nil, "SELECT id, name, qty FROM "+h+" ORDER BY id"); got != "1|a|7" {
		t.Errorf("hash rows %q", got)
	}
	if got := pgQuery(t, nil, "SELECT id, name, qty FROM "+j+" ORDER BY id"); got != "1|x|3\n2|y|0" {
		t.Errorf("json rows %q", got)
	}
}

// Redis killed and restarted empty (no persistence): Run recreates the
// consumer group by itself and flushes the writes queued afterwards.
func TestFlusherRecoversFromRedisRestart(t *testing.T) {
	rs, err := testenv.StartRedis() // our own: it is killed
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	ctx := testCtx(t)
	env := routeEnv{db: testDB, redis: rs.Addr}
	name := wbTable(t, nil)
	r := env.newRoute(t, wbRouteYAML(name, "flush_interval: 20ms"))
	f := newTestFlusher(t, rs.Addr, "me", r)
	stop := runFlusher(f)
	defer stop()
	set := func(from, to int) {
		for i := from; i < to; i++ {
			key := fmt.Sprintf("%s:k%d", name, i)
			waitFor(t, 5*time.Second, "SET "+key, func() bool { return doRaw(ctx, r, "SET", key, "1") == "+OK\r\n" })
		}
	}
	rows := func(n string) func() bool {
		return func() bool { return pgQuery(t, nil, "SELECT count(*) FROM "+name) == n }
	}
	set(0, 50)
	waitFor(t, 5*time.Second, "50 rows", rows("50"))
	rs.Kill()
	time.Sleep(300 * time.Millisecond)
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	set(50, 100)
	waitFor(t, 5*time.Second, "100 rows", rows("100"))
}

// Versions follow stream ids.
func TestFlusherVersionOrder(t *testing.T) {
	ids := []string{"0-0", "0-1", "1-0", "1-5", "1712345678901-0", "1712345678901-1", "1712345678902-0", "8796093022207-1048575"}
	var prev int64 = -1
	for _, id := range ids {
		v, ok := Version(id)
		if !ok || v <= prev {
			t.Errorf("Version(%q) = %d, %v (previous %d)", id, v, ok, prev)
		}
		prev = v
	}
	for _, bad := range []string{"", "x-1", "1-x", "-1-0", "8796093022208-0"} {
		if _, ok := Version(bad); ok {
			t.Errorf("Version(%q) ok", bad)
		}
	}
}

// Which failures count against max_retries, split a batch, or are retried
// forever.
func TestFlusherClassifiesErrors(t *testing.T) {
	pgErr := func(code string) error { return &backend.DBError{Err: &pgconn.PgError{Code: code}} }
	cases := []struct {
		err  error
		want int
	}{
		{pgErr("23514"), errData},        // check violation
		{pgErr("23505"), errData},        // unique violation
		{pgErr("22P02"), errData},        // invalid text representation
		{pgErr("22003"), errData},        // out of range
		{pgErr("P0001"), errData},        // raised by a trigger
		{pgErr("57P01"), errUnavailable}, // admin shutdown
		{pgErr("57P03"), errUnavailable}, // cannot connect now
		{pgErr("08006"), errUnavailable}, // connection failure
		{pgErr("53300"), errUnavailable}, // too many connections
		{pgErr("40P01"), errUnavailable}, // deadlock
		{pgErr("57014"), errUnavailable}, // statement timeout
		{pgErr("28P01"), errUnavailable}, // password
		{pgErr("42P01"), errOther},       // undefined table
		{pgErr("42501"), errOther},       // permission
		{fmt.Errorf("postgres: %w", &net.OpError{Op: "dial", Err: errors.New("connection refused")}), errUnavailable},
		{fmt.Errorf("postgres: %w", context.DeadlineExceeded), errUnavailable},
		{fmt.Errorf("key: %w", backend.ErrInvalidJSON), errData},
		{&backend.FieldError{Table: "t", Field: "f"}, errData},
		{&entryError{"bad"}, errData},
		{backend.ErrNoValueColumn, errOther},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
