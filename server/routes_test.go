package server

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// The schema every routed test uses (users: json cache-aside, profiles:
// hash cache-aside, products: value write-through, page_views: value
// write-back).
const schema = `
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE, age int CHECK (age >= 0));
CREATE TABLE profiles (id int PRIMARY KEY, name text, city text);
CREATE TABLE products (sku text PRIMARY KEY, stock int NOT NULL CHECK (stock >= 0));
CREATE TABLE page_views (page_id text PRIMARY KEY, views bigint NOT NULL DEFAULT 0);
CREATE TABLE orders (id text PRIMARY KEY, buyer text NOT NULL, sku text);
CREATE TABLE accounts (id text PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0));
`

var (
	pgOnce sync.Once
	pg     *testenv.Postgres
	pgErr  error
)

// sharedPostgres starts one throwaway PostgreSQL for the package, on first
// use, with the schema above.
func sharedPostgres(t testing.TB) *testenv.Postgres {
	t.Helper()
	pgOnce.Do(func() {
		pg, pgErr = testenv.StartPostgres()
		if pgErr == nil {
			pgErr = pg.Exec(schema)
		}
	})
	if pgErr != nil {
		t.Fatalf("PostgreSQL for routed tests: %v", pgErr)
	}
	return pg
}

func testRoutes() []config.Route {
	return []config.Route{
		{Name: "users", Prefix: "user:", Policy: config.CacheAside, Table: "users", KeyColumn: "id", Format: config.FormatJSON},
		{Name: "profiles", Prefix: "profile:", Policy: config.CacheAside, Table: "profiles", KeyColumn: "id", Format: config.FormatHash},
		{Name: "stock", Prefix: "stock:", Policy: config.WriteThrough, Table: "products", KeyColumn: "sku", Format: config.FormatValue, ValueColumn: "stock"},
		{Name: "orders", Prefix: "order:", Policy: config.WriteThrough, Table: "orders", KeyColumn: "id", Format: config.FormatJSON},
		{Name: "accounts", Prefix: "acct:", Policy: config.WriteThrough, Table: "accounts", KeyColumn: "id", Format: config.FormatValue, ValueColumn: "balance"},
		{Name: "pv", Prefix: "pv:", Policy: config.WriteBack, Table: "page_views", KeyColumn: "page_id", Format: config.FormatValue, ValueColumn: "views"},
	}
}

// startRouted runs a proxy with routes over p (and the package's Redis);
// edit may change the routes.
func startRouted(t *testing.T, p *testenv.Postgres, edit func(*config.Config)) string {
	t.Helper()
	return startProxy(t, func(c *config.Config) {
		c.Postgres.DSN = p.DSN
		c.Routes = testRoutes()
		if edit != nil {
			edit(c)
		}
		if err := fillDefaults(c); err != nil {
			t.Fatal(err)
		}
	})
}

// fillDefaults runs the config validation that fills route defaults.
func fillDefaults(c *config.Config) error {
	var b strings.Builder
	b.WriteString("postgres:\n  dsn: " + c.Postgres.DSN + "\nroutes:\n")
	for _, r := range c.Routes {
		key := "key_column: " + r.KeyColumn
		if len(r.KeyColumns) > 0 {
			key = "key_columns: [" + strings.Join(r.KeyColumns, ", ") + "]"
		}
		fmt.Fprintf(&b, "  - {name: %s, prefix: %q, policy: %s, table: %s, %s, format: %s", r.Name, r.Prefix, r.Policy, r.Table, key, r.Format)
		if r.KeySeparator != "" {
			fmt.Fprintf(&b, ", key_separator: %q", r.KeySeparator)
		}
		if r.CacheVersion != 0 {
			fmt.Fprintf(&b, ", cache_version: %d", r.CacheVersion)
		}
		if r.Audit {
			b.WriteString(", audit: true")
		}
		if r.ValueColumn != "" {
			fmt.Fprintf(&b, ", value_column: %s", r.ValueColumn)
		}
		if r.DistributedLock {
			b.WriteString(", distributed_lock: true")
		}
		if r.LocalCache != nil {
			b.WriteString(", local_cache: {size: 1000, ttl: 10s}")
		}
		if r.NegativeTTL != nil {
			fmt.Fprintf(&b, ", negative_ttl: %s", time.Duration(*r.NegativeTTL))
		}
		b.WriteString("}\n")
	}
	parsed, err := config.Parse("test", []byte(b.String()))
	if err != nil {
		return err
	}
	c.Postgres, c.Routes = parsed.Postgres, parsed.Routes
	return nil
}

// selects counts SELECT statements PostgreSQL ran on table.
func selects(t *testing.T, p *testenv.Postgres, table string) int {
	t.Helper()
	out, err := p.Query(fmt.Sprintf(`SELECT coalesce(sum(calls),0) FROM pg_stat_statements WHERE query ILIKE 'select%%' AND query ILIKE '%%%s%%'`, table))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

func resetStats(t *testing.T, p *testenv.Postgres) {
	t.Helper()
	if _, err := p.Query("SELECT pg_stat_statements_reset()"); err != nil {
		t.Fatal(err)
	}
}

func TestCacheAsideJSON(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (1, 'Ada', 'ada@example.com', 36)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	c := dialRaw(t, proxy)
	resetStats(t, p)
	want := `{"id":1,"name":"Ada","email":"ada@example.com","age":36}`
	if got := c.do("GET", "user:1"); got != fmt.Sprintf("$%d\r\n%s\r\n", len(want), want) {
		t.Fatalf("first GET user:1 = %q", got)
	}
	if n := selects(t, p, "users"); n != 1 {
		t.Fatalf("first GET ran %d SELECTs, want 1", n)
	}
	c.do("GET", "user:1")
	if n := selects(t, p, "users"); n != 1 {
		t.Fatalf("second GET ran a SELECT (total %d)", n)
	}
	if got := c.do("SET", "user:1", `{"name":"Ada L.","age":37}`); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	if got, _ := p.Query("SELECT name || '/' || age FROM users WHERE id = 1"); got != "Ada L./37" {
		t.Fatalf("row after SET: %q", got)
	}
	if got := c.do("GET", "user:1"); !strings.Contains(got, `"name":"Ada L."`) || !strings.Contains(got, `"email":"ada@example.com"`) {
		t.Fatalf("GET after SET: %q", got)
	}
	resetStats(t, p)
	if got := c.do("GET", "user:999"); got != "$-1\r\n" {
		t.Fatalf("absent row: %q", got)
	}
	c.do("GET", "user:999")
	if n := selects(t, p, "users"); n != 1 {
		t.Fatalf("two GETs of an absent row ran %d SELECTs, want 1 (negative cache)", n)
	}
	// The negative marker is invisible: the key itself does not exist.
	if got := c.do("EXISTS", "user:999"); got != ":0\r\n" {
		t.Fatalf("EXISTS absent: %q", got)
	}
}

func TestCacheAsideHash(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM profiles; INSERT INTO profiles VALUES (7, 'Grace', NULL)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	c := dialRaw(t, proxy)
	if got := c.do("HGETALL", "profile:7"); got != "*4\r\n$2\r\nid\r\n$1\r\n7\r\n$4\r\nname\r\n$5\r\nGrace\r\n" {
		t.Fatalf("HGETALL: %q", got)
	}
	if got := c.do("HSET", "profile:7", "city", "Arlington"); got != ":1\r\n" {
		t.Fatalf("HSET: %q", got)
	}
	if got, _ := p.Query("SELECT city FROM profiles WHERE id = 7"); got != "Arlington" {
		t.Fatalf("row after HSET: %q", got)
	}
	if got := c.do("HGET", "profile:7", "city"); got != "$9\r\nArlington\r\n" {
		t.Fatalf("HGET after HSET: %q", got)
	}
	if got := c.do("HLEN", "profile:7"); got != ":3\r\n" {
		t.Fatalf("HLEN: %q", got)
	}
}

func TestStampedeOneSelect(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (2, 'Linus', NULL, 50)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	resetStats(t, p)
	var wg sync.WaitGroup
	var bad sync.Map
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer c.Close()
			if v, err := c.Get(context.Background(), "user:2").Result(); err != nil || !strings.Contains(v, "Linus") {
				bad.Store(i, fmt.Sprint(v, err))
			}
		}(i)
	}
	wg.Wait()
	bad.Range(func(k, v any) bool { t.Errorf("client %v: %v", k, v); return false })
	if n := selects(t, p, "users"); n != 1 {
		t.Fatalf("1,000 concurrent GETs of a cold key ran %d SELECTs, want 1", n)
	}
}

func TestDistributedLockOneSelectAcrossProxies(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (3, 'Barbara', NULL, 40)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	lock := func(c *config.Config) {
		for i := range c.Routes {
			c.Routes[i].DistributedLock = true
		}
	}
	proxies := []string{startRouted(t, p, lock), startRouted(t, p, lock)}
	resetStats(t, p)
	var wg sync.WaitGroup
	for _, addr := range proxies {
		for i := 0; i < 500; i++ {
			wg.Add(1)
			go func(addr string) {
				defer wg.Done()
				c := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1})
				defer c.Close()
				if v, err := c.Get(context.Background(), "user:3").Result(); err != nil || !strings.Contains(v, "Barbara") {
					t.Errorf("GET: %q %v", v, err)
				}
			}(addr)
		}
	}
	wg.Wait()
	if n := selects(t, p, "users"); n != 1 {
		t.Fatalf("two proxies, 1,000 GETs ran %d SELECTs in total, want 1", n)
	}
}

func TestWriteThrough(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM products; INSERT INTO products VALUES ('apple', 10)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	c := dialRaw(t, proxy)
	if got := c.do("GET", "stock:apple"); got != "$2\r\n10\r\n" {
		t.Fatalf("GET: %q", got)
	}
	// A value violating the CHECK constraint: error, cache and DB unchanged.
	if got := c.do("SET", "stock:apple", "-5"); !strings.HasPrefix(got, "-ERR route 'stock'") || !strings.Contains(got, "check") {
		t.Fatalf("constraint violation: %q", got)
	}
	if got := dialRaw(t, redisAddr).do("GET", "stock:apple"); got != "$2\r\n10\r\n" {
		t.Fatalf("cache after failed write: %q", got)
	}
	if got, _ := p.Query("SELECT stock FROM products WHERE sku = 'apple'"); got != "10" {
		t.Fatalf("DB after failed write: %q", got)
	}
	if got := c.do("INCRBY", "stock:apple", "5"); got != ":15\r\n" {
		t.Fatalf("INCRBY: %q", got)
	}
	// 50 concurrent writers on one key: afterwards cache == DB.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer w.Close()
			if err := w.Set(context.Background(), "stock:apple", i, 0).Err(); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	db, _ := p.Query("SELECT stock FROM products WHERE sku = 'apple'")
	cached := dialRaw(t, redisAddr).do("GET", "stock:apple")
	if cached != fmt.Sprintf("$%d\r\n%s\r\n", len(db), db) {
		t.Fatalf("after 50 writers: cache %q, DB %q", cached, db)
	}
}

func TestWriteThroughWithPostgresDown(t *testing.T) {
	p, err := testenv.StartPostgres()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if err := p.Exec(schema + "INSERT INTO products VALUES ('pear', 3);"); err != nil {
		t.Fatal(err)
	}
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	c := dialRaw(t, proxy)
	if got := c.do("GET", "stock:pear"); got != "$1\r\n3\r\n" {
		t.Fatalf("GET: %q", got)
	}
	p.Halt()
	if got := c.do("SET", "stock:pear", "4"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("SET with PostgreSQL down: %q", got)
	}
	if got := c.do("GET", "stock:pear"); got != "$1\r\n3\r\n" {
		t.Fatalf("cached GET with PostgreSQL down: %q", got)
	}
}

func TestRoutedBadInput(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (4, 'Edsger', NULL, 70)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	c := dialRaw(t, proxy)
	for _, tc := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"SET", "user:4", "{not json"}, "-ERR route 'users'"},
		{[]string{"SET", "user:4", `{"nickname":"E"}`}, `nickname`},
		{[]string{"GET", "user:abc"}, "$-1\r\n"},
		{[]string{"SET", "user:abc", `{"name":"x"}`}, "-ERR route 'users'"},
		{[]string{"LPUSH", "user:4", "x"}, `-ERR command 'LPUSH' is not supported on route 'users' (cache-aside, prefix "user:")`},
	} {
		if got := c.do(tc.cmd...); !strings.Contains(got, tc.want) {
			t.Errorf("%v: %q, want it to contain %q", tc.cmd, got, tc.want)
		}
	}
	if got, _ := p.Query("SELECT name FROM users WHERE id = 4"); got != "Edsger" {
		t.Fatalf("a refused write changed the row: %q", got)
	}
	if got := c.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("connection closed by bad input: %q", got)
	}
}

func TestMixedMultiKeyCommands(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (5, 'Alan', NULL, 41)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	c := dialRaw(t, proxy)
	c.do("SET", "plain", "p")
	got := c.do("MGET", "plain", "user:5", "nokey", "user:404")
	if !strings.HasPrefix(got, "*4\r\n$1\r\np\r\n$") || !strings.Contains(got, "Alan") || !strings.HasSuffix(got, "$-1\r\n$-1\r\n") {
		t.Fatalf("MGET mixed: %q", got)
	}
	if got := c.do("EXISTS", "plain", "user:5", "user:404", "nokey"); got != ":2\r\n" {
		t.Fatalf("EXISTS mixed: %q", got)
	}
	if got := c.do("DEL", "plain", "user:5"); got != ":2\r\n" {
		t.Fatalf("DEL mixed: %q", got)
	}
	if got, _ := p.Query("SELECT count(*) FROM users WHERE id = 5"); got != "0" {
		t.Fatalf("DEL did not delete the row: %q", got)
	}
}

// The in-process tier answers repeated GETs without Redis or
// PostgreSQL; a write straight on Redis (tracking) and a write through
// another proxy instance invalidate it.
func TestLocalTierInvalidatedAcrossProxies(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (6, 'Niklaus', NULL, 80)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	local := func(c *config.Config) { c.Routes[0].LocalCache = &config.LocalCache{} }
	a := dialRaw(t, startRouted(t, p, local))
	b := dialRaw(t, startRouted(t, p, local))
	if got := a.do("GET", "user:6"); !strings.Contains(got, "Niklaus") {
		t.Fatalf("GET: %q", got)
	}
	// Served from the in-process tier: neither Redis nor PostgreSQL
	// reads (the fill's own write pushed an invalidation: the next GET
	// reads Redis, the ones after it are local).
	rd := dialRaw(t, redisAddr)
	// A routed GET reads Redis with MGET key marker; nothing else here
	// sends MGET (background work does not).
	mgets := func() int {
		for _, line := range strings.Split(rd.do("INFO", "commandstats"), "\r\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_mget:calls="); ok {
				n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
				return n
			}
		}
		return 0
	}
	// The fill's push may arrive after the next GET stored the row
	// locally again (on a loaded machine): GET until one is local.
	for i := 0; i < 100; i++ {
		n := mgets()
		a.do("GET", "user:6")
		if mgets() == n {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	resetStats(t, p)
	before := mgets()
	for i := 0; i < 5; i++ {
		if got := a.do("GET", "user:6"); !strings.Contains(got, "Niklaus") {
			t.Fatalf("local hit: %q", got)
		}
	}
	if n, m := selects(t, p, "users"), mgets(); n != 0 || m != before {
		t.Fatalf("local hits ran %d SELECTs and %d Redis reads", n, m-before)
	}
	// A write straight on Redis reaches the tier.
	rd.do("SET", "user:6", `{"id":6,"name":"Direct"}`)
	if got := a.do("GET", "user:6"); !strings.Contains(got, "Direct") {
		t.Fatalf("after a write on Redis: %q", got)
	}
	if got := b.do("SET", "user:6", `{"name":"Wirth"}`); got != "+OK\r\n" {
		t.Fatalf("SET via B: %q", got)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := a.do("GET", "user:6")
		if strings.Contains(got, "Wirth") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A still serves the old value after B's write: %q", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Write-back through the proxy: 100,000 INCRs over 100 keys from 50
// clients end exact in PostgreSQL, with at least 10× fewer statements than
// writes.
func TestWriteBackCountersExact(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM page_views")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	resetStats(t, p)
	var wg sync.WaitGroup
	for w := 0; w < 50; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer c.Close()
			ctx := context.Background()
			for from := 0; from < 2000; from += 200 {
				_, err := c.Pipelined(ctx, func(pp redis.Pipeliner) error {
					for i := from; i < from+200; i++ {
						pp.Incr(ctx, fmt.Sprintf("pv:page%d", (w*2000+i)%100))
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := p.Query("SELECT count(*) || '/' || coalesce(sum(views),0) || '/' || coalesce(min(views),0) FROM page_views")
		if out == "100/100000/1000" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PostgreSQL holds count/sum/min %s, want 100/100000/1000", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := p.Query(`SELECT coalesce(sum(calls),0) FROM pg_stat_statements WHERE query ILIKE '%page_views%' AND query NOT ILIKE 'select%'`)
	statements, _ := strconv.Atoi(strings.TrimSpace(out))
	t.Logf("100,000 INCRs flushed with %d statements (%.0f writes per statement)", statements, 100000/float64(max(statements, 1)))
	if statements == 0 || statements*10 > 100000 {
		t.Fatalf("%d flush statements for 100,000 writes: want at least 10x fewer", statements)
	}
}

// INCRBYFLOAT on a write-back integer column is refused: the cached value
// could never be flushed.
func TestWriteBackIncrByFloatOnIntegerColumn(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM page_views; INSERT INTO page_views VALUES ('f', 5)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	c := dialRaw(t, startRouted(t, p, nil))
	if got := c.do("INCRBYFLOAT", "pv:f", "1.5"); !strings.HasPrefix(got, "-ERR INCRBYFLOAT needs a floating-point value column") {
		t.Fatalf("INCRBYFLOAT on a bigint column: %q", got)
	}
	if got := c.do("GET", "pv:f"); got != "$1\r\n5\r\n" {
		t.Fatalf("value after a refused INCRBYFLOAT: %q", got)
	}
}

// "user:01" and "user:1" are one row: only the canonical key is served, so
// the row never has two cached copies.
func TestNonCanonicalKeys(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (14, 'Grace H', NULL, 85)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	c := dialRaw(t, startRouted(t, p, nil))
	if got := c.do("GET", "user:014"); got != "$-1\r\n" {
		t.Fatalf("GET of a non-canonical key: %q", got)
	}
	if got := c.do("SET", "user:+14", `{"age":1}`); !strings.Contains(got, `use "user:14"`) {
		t.Fatalf("SET of a non-canonical key: %q", got)
	}
	if got := c.do("DEL", "user:014"); !strings.HasPrefix(got, "-ERR route 'users': key") {
		t.Fatalf("DEL of a non-canonical key: %q", got)
	}
	if got, _ := p.Query("SELECT age FROM users WHERE id = 14"); got != "85" {
		t.Fatalf("the row changed: %q", got)
	}
	if got := c.do("GET", "user:14"); !strings.Contains(got, "Grace H") {
		t.Fatalf("canonical key: %q", got)
	}
}
