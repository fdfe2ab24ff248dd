package policy

// The policy package's shared test harness: one throwaway Redis and one
// throwaway PostgreSQL (internal/testenv) for the whole package, started by
// TestMain, plus helpers to build routes over them. Tests never use the
// machine's own Redis or PostgreSQL and never mock either.
//
// Isolation: every test makes its own tables, prefixes and route names
// with uniqueName. Tests that stop a server (Halt, Kill) start their own
// instance (startPostgres, startRedis) instead of the shared one.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
	"github.com/respite/respite/router"
)

var (
	testRedis *testenv.Redis    // shared Redis
	testPG    *testenv.Postgres // shared PostgreSQL (database "respite", pg_stat_statements)
	testDB    *backend.DB       // pools over testPG, respite_versions created
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	testRedis, err = testenv.StartRedis()
	if err != nil {
		fmt.Fprintln(os.Stderr, "policy tests need redis-server:", err)
		return 1
	}
	defer testRedis.Stop()
	// wal_level logical for the change-capture tests (capture_test.go);
	// wal_writer_delay short so that commits of synchronous_commit=off
	// sessions reach the stream quickly.
	testPG, err = testenv.StartPostgres("wal_level=logical", "max_replication_slots=40", "max_wal_senders=40", "wal_writer_delay=10ms")
	if err != nil {
		fmt.Fprintln(os.Stderr, "policy tests need PostgreSQL:", err)
		return 1
	}
	defer testPG.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	testDB, err = openDB(ctx, testPG.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer testDB.Close()
	return m.Run()
}

// openDB opens pools on dsn and creates the write-back version table.
func openDB(ctx context.Context, dsn string) (*backend.DB, error) {
	db, err := backend.Open(ctx, dsn, 8, 2)
	if err != nil {
		return nil, err
	}
	if err := db.EnsureMeta(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// testCtx is a context for one test, cancelled when it ends.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testLogger discards logs, or prints them with go test -v.
func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var nameSeq atomic.Int64

// uniqueName returns prefix followed by a number unique in this test run:
// a table, route or key-prefix name no other test uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, nameSeq.Add(1))
}

// newRedisClient connects to addr with protocol proto (2 or 3); the
// client is closed when the test ends.
func newRedisClient(t testing.TB, addr string, proto int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: proto, DisableIdentity: true, PoolSize: 64})
	t.Cleanup(func() { c.Close() })
	return c
}

// pgExec runs sql on pg (the shared server when pg is nil) and fails the
// test on error.
func pgExec(t testing.TB, pg *testenv.Postgres, sql string) {
	t.Helper()
	if pg == nil {
		pg = testPG
	}
	if err := pg.Exec(sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// pgQuery runs sql on pg (nil: the shared server) and returns psql's
// unaligned output: one line per row, columns separated by "|".
func pgQuery(t testing.TB, pg *testenv.Postgres, sql string) string {
	t.Helper()
	if pg == nil {
		pg = testPG
	}
	out, err := pg.Query(sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// pgRows returns a two-column query's rows as a map from the first column
// to the second.
func pgRows(t testing.TB, pg *testenv.Postgres, sql string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(pgQuery(t, pg, sql), "\n") {
		if line == "" {
			continue
		}
		k, v, _ := strings.Cut(line, "|")
		out[k] = v
	}
	return out
}

// parseRoute reads one route from YAML (the fields of one element of
// routes:, one per line, unindented) through config.Parse, so that the
// configuration's defaults and validation apply.
func parseRoute(t testing.TB, yaml string) config.Route {
	t.Helper()
	var b strings.Builder
	b.WriteString("postgres:\n  dsn: postgres://unused\nroutes:\n")
	for i, line := range strings.Split(strings.TrimSpace(yaml), "\n") {
		if i == 0 {
			b.WriteString("  - " + strings.TrimSpace(line) + "\n")
		} else {
			b.WriteString("    " + strings.TrimSpace(line) + "\n")
		}
	}
	cfg, err := config.Parse("test.yaml", []byte(b.String()))
	if err != nil {
		t.Fatalf("route config: %v\n%s", err, b.String())
	}
	return cfg.Routes[0]
}

// routeEnv is where newRoute builds routes: a database and a Redis.
type routeEnv struct {
	db    *backend.DB
	redis string // address
}

// sharedEnv is the shared Redis and PostgreSQL.
func sharedEnv() routeEnv { return routeEnv{db: testDB, redis: testRedis.Addr} }

// newRoute builds a Route from YAML (see parseRoute) over env: the table
// must exist. The route's cache is a RedisCache over RESP2 and RESP3
// clients, and its go-redis client is the RESP2 one.
func (env routeEnv) newRoute(t testing.TB, yaml string) *Route {
	t.Helper()
	cfg := parseRoute(t, yaml)
	table, err := env.db.DescribeKey(testCtx(t), cfg.Table, backend.Key{Columns: cfg.Keys(), Separator: cfg.KeySeparator}, cfg.ValueColumn)
	if err != nil {
		t.Fatalf("Describe %s: %v", cfg.Table, err)
	}
	rc2 := newRedisClient(t, env.redis, 2)
	rc3 := newRedisClient(t, env.redis, 3)
	return New(cfg, env.db, table, RedisCache{rc2, rc3}, rc2, testLogger())
}

// do runs a command through route r as a RESP2 client and returns the
// raw reply; the test fails on an error reply.
func do(t testing.TB, ctx context.Context, r *Route, args ...string) string {
	t.Helper()
	out := doRaw(ctx, r, args...)
	if strings.HasPrefix(out, "-") {
		t.Fatalf("%v: %q", args, out)
	}
	return out
}

// doRaw runs a command through route r and returns the raw reply, errors
// included.
func doRaw(ctx context.Context, r *Route, args ...string) string {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	var cmd router.Command
	router.Classify(&cmd, bs, nil)
	return string(r.Do(ctx, Op{ID: cmd.ID, Args: bs, Proto: 2}).AppendTo(nil, 2))
}

// waitFor polls cond every 10ms until it holds, failing the test after
// timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A Redis Cluster redirect or migration error of a route's own command
// reaches the client as a retryable -TRYAGAIN naming the route, never as
// the redirect itself; other errors keep their text.
func TestSlotMovingErrors(t *testing.T) {
	r := &Route{cfg: config.Route{Name: "acct"}}
	for _, tc := range []struct{ err, want string }{
		{"ASK 10774 127.0.0.1:7101", "TRYAGAIN route 'acct': its hash slot is moving between nodes (ASK 10774 127.0.0.1:7101); retry"},
		{"MOVED 10774 127.0.0.1:7101", "TRYAGAIN route 'acct': its hash slot is moving between nodes (MOVED 10774 127.0.0.1:7101); retry"},
		{"TRYAGAIN Multiple keys request during rehashing of slot", "TRYAGAIN route 'acct': its hash slot is moving between nodes (TRYAGAIN Multiple keys request during rehashing of slot); retry"},
		{"WRONGTYPE Operation against a key holding the wrong kind of value", "WRONGTYPE Operation against a key holding the wrong kind of value"},
	} {
		if got := r.errorText(redisErr(tc.err)); got != tc.want {
			t.Errorf("errorText(%q) = %q, want %q", tc.err, got, tc.want)
		}
		want := tc.want // a go-redis error: the same, or named by the route
		if !strings.HasPrefix(want, "TRYAGAIN") {
			want = "ERR route 'acct': " + tc.err
		}
		if got := r.errorText(errors.New(tc.err)); got != want {
			t.Errorf("errorText(errors.New(%q)) = %q, want %q", tc.err, got, want)
		}
	}
}
