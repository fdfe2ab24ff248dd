package policy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/testenv"
)

// A write PostgreSQL commits while Redis is down: its cache step (the
// write-through fill, the cache-aside invalidation) fails, the client
// has its OK, and reads meanwhile are served from PostgreSQL. Redis comes
// back from its AOF with the old cached copy: no read through the proxy
// may serve it (unsettled.go), and the sweep deletes it. Made
// deterministic by holding the rows locked until Redis is down: the
// proxy's UPDATEs wait, then commit. Found by internal/chaos.
func TestCacheStepFailedAfterCommit(t *testing.T) {
	rs, err := testenv.StartRedis("--appendonly", "yes", "--appendfsync", "always")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	ca, wt := uniqueName("unsettled_ca"), uniqueName("unsettled_wt")
	pgExec(t, nil, fmt.Sprintf("CREATE TABLE %s (k text PRIMARY KEY, v text NOT NULL); CREATE TABLE %s (k text PRIMARY KEY, v text NOT NULL)", ca, wt))
	p := startProxy(t, fmt.Sprintf(`upstream:
  addr: %s
  dial_timeout: 300ms
postgres:
  dsn: %s
  statement_timeout: 20s
write_back:
  consumer: unsettled-proxy
routes:
  - {name: ca, prefix: "ca:", policy: cache-aside, table: %s, key_column: k, format: value, value_column: v}
  - {name: wt, prefix: "wt:", policy: write-through, table: %s, key_column: k, format: value, value_column: v}
`, rs.Addr, testPG.DSN, ca, wt))
	ctx := testCtx(t)
	c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1, ReadTimeout: 30 * time.Second})
	defer c.Close()
	direct := newRedisClient(t, rs.Addr, 2)
	for _, k := range []string{"ca:a", "wt:a"} {
		if err := c.Set(ctx, k, "old", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if got := c.Get(ctx, k).Val(); got != "old" {
			t.Fatalf("GET %s = %q", k, got)
		}
		waitFor(t, 5*time.Second, k+" cached", func() bool { return direct.Get(ctx, k).Val() == "old" })
	}

	lock, err := pgx.Connect(ctx, testPG.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(context.Background())
	tx, err := lock.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("SELECT 1 FROM %s WHERE k = 'a' FOR UPDATE; SELECT 1 FROM %s WHERE k = 'a' FOR UPDATE", ca, wt)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	for _, k := range []string{"ca:a", "wt:a"} {
		go func() { done <- c.Set(ctx, k, "new", 0).Err() }()
	}
	waitFor(t, 10*time.Second, "both writes waiting for the row locks", func() bool {
		return pgQuery(t, nil, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == "2"
	})
	rs.Kill()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("a write PostgreSQL committed with Redis down: %v", err)
		}
	}
	for _, k := range []string{"ca:a", "wt:a"} {
		// Redis down: served from PostgreSQL.
		if got, err := c.Get(ctx, k).Result(); got != "new" {
			t.Fatalf("GET %s with Redis down: %q %v", k, got, err)
		}
	}
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	if got := direct.Get(ctx, "ca:a").Val(); got != "old" {
		t.Logf("ca:a in Redis after its restart: %q (the test wants the old copy back from the AOF)", got)
	}
	waitFor(t, 10*time.Second, "Redis answering after its restart", func() bool { return direct.Ping(ctx).Err() == nil })
	for _, k := range []string{"ca:a", "wt:a"} {
		if got, err := c.Get(ctx, k).Result(); got != "new" {
			t.Errorf("GET %s after Redis came back: %q %v, want \"new\" (PostgreSQL's row, acknowledged and read before)", k, got, err)
		}
	}
	// The sweep settles the keys: Redis holds no old copy either.
	for _, k := range []string{"ca:a", "wt:a"} {
		waitFor(t, 10*time.Second, k+": no old copy in Redis", func() bool { return direct.Get(ctx, k).Val() != "old" })
	}
}

// A proxy SIGKILLed while a cache-aside write waits in PostgreSQL (the row
// locked): PostgreSQL runs the statement to its end after the proxy died,
// so the row changes while the old copy stays cached. The restarted proxy
// must not serve that copy. Made deterministic by the row lock, as above.
func TestCacheAsideWriteOfAKilledProxy(t *testing.T) {
	ca := uniqueName("killed_ca")
	pgExec(t, nil, fmt.Sprintf("CREATE TABLE %s (k text PRIMARY KEY, v text NOT NULL)", ca))
	rs, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	cfg := fmt.Sprintf(`upstream:
  addr: %s
postgres:
  dsn: %s
  statement_timeout: 2s
write_back:
  consumer: killed-ca-proxy
routes:
  - {name: ca, prefix: "ca:", policy: cache-aside, table: %s, key_column: k, format: value, value_column: v}
`, rs.Addr, testPG.DSN, ca)
	p := startProxy(t, cfg)
	ctx := testCtx(t)
	c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1, ReadTimeout: 30 * time.Second})
	if err := c.Set(ctx, "ca:a", "old", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := c.Get(ctx, "ca:a").Val(); got != "old" {
		t.Fatalf("GET = %q", got)
	}
	lock, err := pgx.Connect(ctx, testPG.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(context.Background())
	tx, err := lock.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("SELECT 1 FROM %s WHERE k = 'a' FOR UPDATE", ca)); err != nil {
		t.Fatal(err)
	}
	go c.Set(ctx, "ca:a", "new", 0)
	waitFor(t, 10*time.Second, "the write waiting for the row lock", func() bool {
		return pgQuery(t, nil, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'") == "1"
	})
	p.kill()
	c.Close()
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dead proxy's UPDATE committed", func() bool {
		return pgQuery(t, nil, fmt.Sprintf("SELECT v FROM %s WHERE k = 'a'", ca)) == "new"
	})
	p = startProxy(t, cfg)
	c = redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1})
	defer c.Close()
	if got, err := c.Get(ctx, "ca:a").Result(); got != "new" {
		t.Fatalf("GET after the restart: %q %v, want PostgreSQL's \"new\"", got, err)
	}
}
