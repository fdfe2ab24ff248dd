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

// clusterRouted empties the test cluster, puts the routes' tables in a
// known state (user 2, product apple at 10, no page views) and starts a
// proxy with the test routes in front of the cluster.
func clusterRouted(t *testing.T, routes ...config.Route) (*testenv.Cluster, *testenv.Postgres, string) {
	t.Helper()
	cl := testCluster(t)
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (2, 'Linus', NULL, 50); DELETE FROM products; INSERT INTO products VALUES ('apple', 10); DELETE FROM page_views")
	emptyCluster(t, cl)
	return cl, p, startProxy(t, func(c *config.Config) {
		c.Upstream.Mode = config.ModeCluster
		c.Upstream.Addrs = cl.Addrs()
		c.Postgres.DSN = p.DSN
		c.Routes = append(testRoutes(), routes...)
		if err := fillDefaults(c); err != nil {
			t.Fatal(err)
		}
	})
}

// waitQuery waits until sql's result on p is want, at most within.
func waitQuery(t *testing.T, p *testenv.Postgres, within time.Duration, sql, want string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, _ := p.Query(sql)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("PostgreSQL answers %q to %s, want %q", got, sql, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRoutesOnCluster: the three policies with a Redis Cluster upstream.
// A route's keys carry its hash tag (policy/clusterkeys.go), so they
// live in one slot on one primary: 1,000 concurrent GETs of a cold key
// run one SELECT; a write-through write that PostgreSQL refuses leaves
// cache and row as they were, and 50 concurrent writers leave cache ==
// row; write-back counters are exact in PostgreSQL; an MGET over routes
// and plain keys in other slots equals the per-key GETs; FLUSHALL is
// refused while write-back routes exist.
func TestRoutesOnCluster(t *testing.T) {
	cl, p, proxy := clusterRouted(t)
	direct := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	defer direct.Close()
	ctx := context.Background()

	// cache-aside: one SELECT for 1,000 concurrent misses, the copy in
	// the route's slot.
	resetStats(t, p)
	var wg sync.WaitGroup
	var bad sync.Map
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer c.Close()
			if v, err := c.Get(ctx, "user:2").Result(); err != nil || !strings.Contains(v, "Linus") {
				bad.Store(i, fmt.Sprint(v, err))
			}
		}(i)
	}
	wg.Wait()
	bad.Range(func(k, v any) bool { t.Errorf("client %v: %v", k, v); return false })
	if n := selects(t, p, "users"); n != 1 {
		t.Errorf("1,000 concurrent GETs of a cold key on a cluster ran %d SELECTs, want 1", n)
	}
	if v, err := direct.Get(ctx, "user:{respite:users}2").Result(); err != nil || !strings.Contains(v, "Linus") {
		t.Errorf("the cached copy in the route's slot: %q %v", v, err)
	}
	slot, _ := direct.ClusterKeySlot(ctx, "user:{respite:users}2").Result()
	want, _ := direct.ClusterKeySlot(ctx, "respite:users").Result()
	if slot != want {
		t.Errorf("cached copy in slot %d, want the route's slot %d", slot, want)
	}

	// RESPITE VERIFY finds the route's copies on the route's primary.
	if got := dialRaw(t, proxy).do("RESPITE", "VERIFY", "users"); !strings.Contains(got, "$7\r\nchecked\r\n:1\r\n$9\r\ndivergent\r\n:0\r\n") {
		t.Errorf("RESPITE VERIFY users on a cluster: %q", got)
	}

	// write-through: a refused write changes nothing; concurrent writers
	// leave cache == row.
	c := dialRaw(t, proxy)
	if got := c.do("GET", "stock:apple"); got != "$2\r\n10\r\n" {
		t.Fatalf("GET stock:apple: %q", got)
	}
	if got := c.do("SET", "stock:apple", "-5"); !strings.HasPrefix(got, "-ERR route 'stock'") || !strings.Contains(got, "check") {
		t.Fatalf("constraint violation: %q", got)
	}
	if v, _ := direct.Get(ctx, "stock:{respite:stock}apple").Result(); v != "10" {
		t.Fatalf("cache after the refused write: %q", v)
	}
	if got, _ := p.Query("SELECT stock FROM products WHERE sku = 'apple'"); got != "10" {
		t.Fatalf("row after the refused write: %q", got)
	}
	if got := c.do("INCRBY", "stock:apple", "5"); got != ":15\r\n" {
		t.Fatalf("INCRBY: %q", got)
	}
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer w.Close()
			if err := w.Set(ctx, "stock:apple", i, 0).Err(); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	db, _ := p.Query("SELECT stock FROM products WHERE sku = 'apple'")
	if v, _ := direct.Get(ctx, "stock:{respite:stock}apple").Result(); v != db {
		t.Fatalf("after 50 writers: cache %q, row %q", v, db)
	}

	// write-back: 20 clients x 500 INCRs over 50 counters.
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer c.Close()
			_, err := c.Pipelined(ctx, func(pp redis.Pipeliner) error {
				for i := 0; i < 500; i++ {
					pp.Incr(ctx, fmt.Sprintf("pv:page%d", (w*500+i)%50))
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}(w)
	}
	wg.Wait()
	waitQuery(t, p, 30*time.Second, "SELECT count(*) || '/' || coalesce(sum(views),0) || '/' || coalesce(min(views),0) FROM page_views", "50/10000/200")

	// MGET over three routes and plain keys of other slots.
	c.do("SET", "plain:a", "A")
	c.do("SET", "plain:b", "B")
	args := []string{"MGET", "user:2", "plain:a", "stock:apple", "nosuch", "pv:page3", "plain:b"}
	var parts []string
	for _, k := range args[1:] {
		parts = append(parts, c.do("GET", k))
	}
	if got, want := c.do(args...), fmt.Sprintf("*%d\r\n%s", len(parts), strings.Join(parts, "")); got != want {
		t.Errorf("MGET across routes and slots = %q, want %q", got, want)
	}
	if got := c.do("FLUSHALL"); !strings.HasPrefix(got, "-ERR FLUSHALL is refused with write-back routes") {
		t.Errorf("FLUSHALL on a cluster with a write-back route: %q", got)
	}
}

// TestRoutedTransactionsOnCluster: MULTI/EXEC and WATCH over routed keys
// on a cluster. A route's keys share its slot, so a transaction over one
// route's keys runs (write-back and write-through writes, reads), and
// one that adds a key of another slot (another route's, a plain key) gets
// Redis Cluster's -CROSSSLOT when it is queued and -EXECABORT, never a
// -MOVED; WATCH of a routed key then a write of it runs, and an EXEC
// that WATCH aborts rolls the routed write back in PostgreSQL.
func TestRoutedTransactionsOnCluster(t *testing.T) {
	_, p, proxy := clusterRouted(t)
	linus := "$45\r\n{\"id\":2,\"name\":\"Linus\",\"email\":null,\"age\":50}\r\n"
	cross := "-CROSSSLOT Keys in request don't hash to the same slot\r\n"
	abort := "-EXECABORT Transaction discarded because of previous errors.\r\n"
	c := dialRaw(t, proxy)
	for _, step := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"MULTI"}, "+OK\r\n"}, {[]string{"INCR", "pv:p1"}, "+QUEUED\r\n"}, {[]string{"INCR", "pv:p2"}, "+QUEUED\r\n"}, {[]string{"EXEC"}, "*2\r\n:1\r\n:1\r\n"},
		{[]string{"MULTI"}, "+OK\r\n"}, {[]string{"SET", "stock:apple", "3"}, "+QUEUED\r\n"}, {[]string{"GET", "stock:apple"}, "+QUEUED\r\n"}, {[]string{"EXEC"}, "*2\r\n+OK\r\n$1\r\n3\r\n"},
		{[]string{"MULTI"}, "+OK\r\n"}, {[]string{"SET", "stock:apple", "4"}, "+QUEUED\r\n"}, {[]string{"INCR", "pv:p1"}, cross}, {[]string{"EXEC"}, abort},
		{[]string{"MULTI"}, "+OK\r\n"}, {[]string{"SET", "stock:apple", "5"}, "+QUEUED\r\n"}, {[]string{"SET", "plainx", "1"}, cross}, {[]string{"EXEC"}, abort},
		{[]string{"MULTI"}, "+OK\r\n"}, {[]string{"SET", "plainx", "1"}, "+QUEUED\r\n"}, {[]string{"SET", "stock:apple", "5"}, cross}, {[]string{"EXEC"}, abort},
		{[]string{"WATCH", "user:2"}, "+OK\r\n"}, {[]string{"GET", "user:2"}, linus}, {[]string{"MULTI"}, "+OK\r\n"}, {[]string{"GET", "user:2"}, "+QUEUED\r\n"}, {[]string{"EXEC"}, "*1\r\n" + linus},
		{[]string{"WATCH", "stock:apple"}, "+OK\r\n"}, {[]string{"MULTI"}, "+OK\r\n"}, {[]string{"INCRBY", "stock:apple", "1"}, "+QUEUED\r\n"}, {[]string{"EXEC"}, "*1\r\n:4\r\n"},
		{[]string{"GET", "stock:apple"}, "$1\r\n4\r\n"}, {[]string{"GET", "pv:p1"}, "$1\r\n1\r\n"}, {[]string{"GET", "plainx"}, "$-1\r\n"},
	} {
		if got := c.do(step.cmd...); got != step.want {
			t.Fatalf("%q = %q, want %q", step.cmd, got, step.want)
		}
	}
	if got, _ := p.Query("SELECT stock FROM products WHERE sku = 'apple'"); got != "4" {
		t.Fatalf("row after the transactions: %q, want 4", got)
	}
	// An EXEC aborted by WATCH rolls the routed write back in PostgreSQL.
	b := dialRaw(t, proxy)
	c.do("WATCH", "stock:apple")
	b.do("SET", "stock:apple", "7")
	c.do("MULTI")
	if got := c.do("SET", "stock:apple", "1"); got != "+QUEUED\r\n" {
		t.Fatalf("queued routed write: %q", got)
	}
	if got := c.do("EXEC"); got != "*-1\r\n" {
		t.Fatalf("EXEC after another client's write of the watched key: %q", got)
	}
	if got, _ := p.Query("SELECT stock FROM products WHERE sku = 'apple'"); got != "7" {
		t.Fatalf("row after an aborted EXEC: %q, want 7 (the other client's write)", got)
	}
	if got := c.do("GET", "stock:apple"); got != "$1\r\n7\r\n" {
		t.Fatalf("GET after an aborted EXEC: %q", got)
	}
}

// With routes on a cluster, clients' connections log in, on every node,
// as the restricted user: a script cannot write the proxy's keys (here a
// write-back queue entry, in a script whose declared key is in the
// queue's slot), while the route layer, write-back writes queued in MULTI
// and scripts on plain keys still work.
func TestScriptsCannotWriteProxyKeysOnCluster(t *testing.T) {
	cl, _, proxy := clusterRouted(t)
	direct := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	defer direct.Close()
	ctx := context.Background()
	c := dialRaw(t, proxy)
	if got := c.do("INCR", "pv:lua"); got != ":1\r\n" {
		t.Fatalf("INCR pv:lua: %q", got)
	}
	stream := "respite:wb:pv{respite:pv}"
	before := direct.XLen(ctx, stream).Val()
	poison := "redis.call('SET', KEYS[1], 'x') return redis.call('XADD', '" + stream + "', '*', 'k', 'pv:evil', 'v', '999')"
	if got := c.do("EVAL", poison, "1", "plain{respite:pv}"); !strings.HasPrefix(got, scriptDenied) {
		t.Errorf("EVAL appending to the write-back queue: %q, want %q...", got, scriptDenied)
	}
	c.do("MULTI")
	c.do("INCR", "pv:lua")
	c.do("EVAL", poison, "1", "plain{respite:pv}")
	if got := c.do("EXEC"); !strings.HasPrefix(got, "*2\r\n:2\r\n"+scriptDenied) {
		t.Errorf("EXEC of a write-back INCR and the poisoning script: %q", got)
	}
	if n := direct.XLen(ctx, stream).Val(); n > before+1 {
		t.Errorf("the queue grew by %d entries, want at most the INCR's one", n-before)
	}
	if got := c.do("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", "1", "plain:lua", "v"); got != "+OK\r\n" {
		t.Errorf("EVAL on a plain key: %q", got)
	}
	if got := c.do("GET", "pv:lua"); got != "$1\r\n2\r\n" {
		t.Errorf("GET pv:lua: %q", got)
	}
	err := direct.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
		got, _ := n.Do(ctx, "ACL", "DRYRUN", "respite-client", "SET", "respite:neg:x", "1").Text()
		if !strings.Contains(got, "no permissions") {
			t.Errorf("%s: ACL DRYRUN respite-client SET respite:neg:x: %q", n.Options().Addr, got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// More on a cluster: with two write-back routes (two streams in two
// slots) the flusher writes both to PostgreSQL on its own; a DEL, EXISTS
// or UNLINK over routed keys and plain keys of other slots answers as on
// one Redis.
func TestRoutesOnClusterAcrossSlots(t *testing.T) {
	_, p, proxy := clusterRouted(t, config.Route{Name: "pv2", Prefix: "pv2:", Policy: config.WriteBack, Table: "page_views", KeyColumn: "page_id", Format: config.FormatValue, ValueColumn: "views"})
	c := dialRaw(t, proxy)
	c.do("INCR", "pv:one")
	c.do("INCRBY", "pv2:two", "2")
	// The flusher flushes both routes' streams on its own.
	waitQuery(t, p, 15*time.Second, "SELECT string_agg(page_id || '=' || views, ',' ORDER BY page_id) FROM page_views", "one=1,two=2")
	for _, k := range []string{"a", "b", "c"} {
		c.do("SET", k, "1")
	}
	if got := c.do("EXISTS", "user:2", "a", "b", "nosuch", "user:404"); got != ":3\r\n" {
		t.Errorf("EXISTS over a route and plain keys of other slots: %q, want :3", got)
	}
	if got := c.do("DEL", "user:2", "a", "b"); got != ":3\r\n" {
		t.Errorf("DEL over a route and plain keys of other slots: %q, want :3", got)
	}
	if got := c.do("UNLINK", "c", "pv:one"); got != ":2\r\n" {
		t.Errorf("UNLINK over a plain key and a write-back key: %q, want :2", got)
	}
	if got := c.do("MGET", "a", "b", "c", "user:2"); got != "*4\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n" {
		t.Errorf("after DEL and UNLINK: %q", got)
	}
	if got, _ := p.Query("SELECT count(*) FROM users WHERE id = 2"); got != "0" {
		t.Errorf("user 2's row after DEL: count %q, want 0", got)
	}
}

// While the slot of a route moves between primaries, its reads keep
// answering: cached keys still on the source, keys already moved, absent
// rows (their markers on either node), and after the move.
func TestRoutedReadsWhileTheRoutesSlotMigrates(t *testing.T) {
	cl, p, proxy := clusterRouted(t)
	p.Exec("INSERT INTO users VALUES (3, 'Grace', NULL, 40)")
	c := dialRaw(t, proxy)
	linus, grace := c.do("GET", "user:2"), c.do("GET", "user:3")
	if !strings.Contains(linus, "Linus") || !strings.Contains(grace, "Grace") || c.do("GET", "user:404") != "$-1\r\n" {
		t.Fatalf("before the move: %q %q", linus, grace)
	}
	direct := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
	defer direct.Close()
	ctx := context.Background()
	slot := int(direct.ClusterKeySlot(ctx, "respite:users").Val())
	from := ownerOf(t, cl, slot)
	to := anotherNode(cl, from)
	src, dst := dialRaw(t, from), dialRaw(t, to)
	srcID, dstID := strings.TrimSpace(strings.Split(src.do("CLUSTER", "MYID"), "\r\n")[1]), strings.TrimSpace(strings.Split(dst.do("CLUSTER", "MYID"), "\r\n")[1])
	s := strconv.Itoa(slot)
	dst.do("CLUSTER", "SETSLOT", s, "IMPORTING", srcID)
	src.do("CLUSTER", "SETSLOT", s, "MIGRATING", dstID)
	host, port, _ := strings.Cut(to, ":")
	if got := src.do("MIGRATE", host, port, "", "0", "5000", "KEYS", "user:{respite:users}2", "respite:neg:user:{respite:users}404"); got != "+OK\r\n" {
		t.Fatalf("MIGRATE: %q", got)
	}
	for i := 0; i < 3; i++ {
		for k, want := range map[string]string{"user:2": linus, "user:3": grace, "user:404": "$-1\r\n", "user:405": "$-1\r\n"} {
			if got := c.do("GET", k); got != want {
				t.Errorf("GET %s while the slot migrates: %q, want %q", k, got, want)
			}
		}
		if got, want := c.do("MGET", "user:2", "user:3", "user:404"), "*3\r\n"+linus+grace+"$-1\r\n"; got != want {
			t.Errorf("MGET while the slot migrates: %q, want %q", got, want)
		}
	}
	// The rest of the keys, then the slot's new owner, target first.
	for {
		keys := splitArray(t, src.do("CLUSTER", "GETKEYSINSLOT", s, "100"))
		if len(keys) == 0 {
			break
		}
		args := append([]string{"MIGRATE", host, port, "", "0", "5000", "KEYS"}, keys...)
		if got := src.do(args...); got != "+OK\r\n" {
			t.Fatalf("MIGRATE %v: %q", keys, got)
		}
	}
	dst.do("CLUSTER", "SETSLOT", s, "NODE", dstID)
	src.do("CLUSTER", "SETSLOT", s, "NODE", dstID)
	for _, a := range cl.Addrs() {
		if a != from && a != to {
			dialRaw(t, a).do("CLUSTER", "SETSLOT", s, "NODE", dstID)
		}
	}
	// Once the nodes agree on the new owner (the proxy follows their
	// redirects meanwhile), the route reads from it.
	deadline := time.Now().Add(10 * time.Second)
	for got := c.do("GET", "user:3"); got != grace; got = c.do("GET", "user:3") {
		if time.Now().After(deadline) {
			t.Fatalf("GET user:3 after the move: %q", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := c.do("GET", "user:2"); got != linus {
		t.Errorf("GET user:2 after the move: %q", got)
	}
}
