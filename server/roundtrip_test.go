package server

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// commandCalls reads INFO commandstats of the Redis at addr: calls per
// command, the INFO and CONFIG RESETSTAT themselves left out.
func commandCalls(t *testing.T, d *rawConn) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, line := range strings.Split(d.do("INFO", "commandstats"), "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok || name == "info" || name == "config|resetstat" {
			continue
		}
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		out[name] = n
	}
	return out
}

// TestRoutedRoundTrips counts the commands Redis runs for routed reads: a
// cache-aside miss is one read (MGET of the key and its "absent" marker)
// and the fill; a hit is the read alone; a routed MGET of 50 keys of one
// route is one command, hits or not-cached absent rows alike; EXISTS over
// them is one pipelined round trip.
func TestRoutedRoundTrips(t *testing.T) {
	pg := sharedPostgres(t)
	if err := pg.Exec("CREATE TABLE rt_users (id int PRIMARY KEY, name text); INSERT INTO rt_users SELECT g, 'n' || g FROM generate_series(1, 60) g"); err != nil {
		t.Fatal(err)
	}
	r, proxy := routedOwnRedis(t, pg, config.Route{Name: "rt", Prefix: "rt:", Policy: config.CacheAside, Table: "rt_users", KeyColumn: "id", Format: config.FormatJSON})
	d := dialRaw(t, r.Addr)
	c := dialRaw(t, proxy)
	c.do("PING") // the proxy's own set-up is done
	d.do("CONFIG", "RESETSTAT")

	// A miss: the read and the fill.
	if got := c.do("GET", "rt:1"); !strings.Contains(got, `"n1"`) {
		t.Fatalf("GET rt:1 = %q", got)
	}
	calls := commandCalls(t, d)
	if total(calls) > 2 || calls["mget"] != 1 || calls["set"] != 1 {
		t.Errorf("cache-aside miss: %v, want one MGET and one SET", calls)
	}
	// A hit: the read alone.
	d.do("CONFIG", "RESETSTAT")
	c.do("GET", "rt:1")
	if calls := commandCalls(t, d); total(calls) != 1 || calls["mget"] != 1 {
		t.Errorf("cache-aside hit: %v, want one MGET", calls)
	}

	// Fill 50 keys, then one MGET of all of them is one command.
	keys := []string{"MGET"}
	for i := 1; i <= 50; i++ {
		c.do("GET", fmt.Sprintf("rt:%d", i))
		keys = append(keys, fmt.Sprintf("rt:%d", i))
	}
	d.do("CONFIG", "RESETSTAT")
	got := c.do(keys...)
	if !strings.HasPrefix(got, "*50\r\n") || !strings.Contains(got, `"n50"`) {
		t.Fatalf("MGET of 50 routed keys: %q", got[:min(len(got), 200)])
	}
	if calls := commandCalls(t, d); total(calls) != 1 || calls["mget"] != 1 {
		t.Errorf("MGET of 50 routed keys: %v, want one MGET", calls)
	}
	// EXISTS of the 50 keys: two EXISTS per key, one round trip.
	keys[0] = "EXISTS"
	d.do("CONFIG", "RESETSTAT")
	if got := c.do(keys...); got != ":50\r\n" {
		t.Fatalf("EXISTS of 50 routed keys: %q", got)
	}
	if calls := commandCalls(t, d); total(calls) != 100 || calls["exists"] != 100 {
		t.Errorf("EXISTS of 50 routed keys: %v, want 100 EXISTS in one pipeline", calls)
	}
	// MONITOR would show it too; INFO commandstats counts commands, and
	// the proxy sends each routed read as one pipeline (Cache.Do).
}

// routedOwnRedis starts a Redis of the test's own and a proxy in front of
// it with routes to pg's tables.
func routedOwnRedis(t *testing.T, pg *testenv.Postgres, routes ...config.Route) (*testenv.Redis, string) {
	t.Helper()
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r, startProxy(t, func(c *config.Config) {
		c.Upstream.Addr = r.Addr
		c.Postgres.DSN = pg.DSN
		c.Routes = routes
		if err := fillDefaults(c); err != nil {
			t.Fatal(err)
		}
	})
}

func total(calls map[string]int) int {
	n := 0
	for _, v := range calls {
		n += v
	}
	return n
}

// TestRoutedMGetMissesLoadOnce: a routed MGET's misses load in one
// PostgreSQL query per route and fill in one round trip, on a cache-aside
// JSON route and on a write-through value route (whose fills are
// guarded scripts); a key twice in the MGET is loaded once and answered
// twice; a key the key column's type cannot hold answers nil without
// failing the others; concurrent MGETs of the same cold keys load each
// key once.
func TestRoutedMGetMissesLoadOnce(t *testing.T) {
	pg := sharedPostgres(t)
	if err := pg.Exec("CREATE TABLE mg_users (id int PRIMARY KEY, name text); INSERT INTO mg_users SELECT g, 'n' || g FROM generate_series(1, 40) g;" +
		"CREATE TABLE mg_vals (id int PRIMARY KEY, v text); INSERT INTO mg_vals SELECT g, 'v' || g FROM generate_series(1, 40) g"); err != nil {
		t.Fatal(err)
	}
	r, proxy := routedOwnRedis(t, pg,
		config.Route{Name: "mg", Prefix: "mg:", Policy: config.CacheAside, Table: "mg_users", KeyColumn: "id", Format: config.FormatJSON},
		config.Route{Name: "mv", Prefix: "mv:", Policy: config.WriteThrough, Table: "mg_vals", KeyColumn: "id", ValueColumn: "v", Format: config.FormatValue})
	d := dialRaw(t, r.Addr)
	c := dialRaw(t, proxy)
	c.do("PING")

	want := func(prefix string, i int) string {
		switch {
		case i > 40:
			return "$-1\r\n"
		case prefix == "mg:":
			v := fmt.Sprintf(`{"id":%d,"name":"n%d"}`, i, i)
			return fmt.Sprintf("$%d\r\n%s\r\n", len(v), v)
		}
		v := fmt.Sprintf("v%d", i)
		return fmt.Sprintf("$%d\r\n%s\r\n", len(v), v)
	}
	mget := func(prefix string, ids ...int) (args []string, reply string) {
		args = []string{"MGET"}
		reply = fmt.Sprintf("*%d\r\n", len(ids))
		for _, i := range ids {
			args = append(args, fmt.Sprintf("%s%d", prefix, i))
			reply += want(prefix, i)
		}
		return args, reply
	}
	var ids []int
	for i := 1; i <= 50; i++ {
		ids = append(ids, i)
	}
	ids = append(ids, 7) // twice: loaded once, answered twice

	for _, prefix := range []string{"mg:", "mv:"} {
		table := map[string]string{"mg:": "mg_users", "mv:": "mg_vals"}[prefix]
		args, reply := mget(prefix, ids...)
		resetStats(t, pg)
		d.do("CONFIG", "RESETSTAT")
		if got := c.do(args...); got != reply {
			t.Fatalf("%s MGET of 50 cold keys = %q, want %q", prefix, got[:min(len(got), 300)], reply[:min(len(reply), 300)])
		}
		if n := selects(t, pg, table); n != 1 {
			t.Errorf("%s MGET of 50 cold keys ran %d SELECTs, want 1", prefix, n)
		}
		calls := commandCalls(t, d)
		if prefix == "mg:" && (calls["mget"] != 1 || calls["set"] != 50 || total(calls) != 51) {
			t.Errorf("mg: MGET of 50 cold keys: Redis ran %v, want one MGET and 50 SETs (40 rows, 10 absent markers)", calls)
		}
		// Now every key is cached: one MGET, nothing loaded.
		resetStats(t, pg)
		d.do("CONFIG", "RESETSTAT")
		if got := c.do(args...); got != reply {
			t.Fatalf("%s MGET again = %q", prefix, got[:min(len(got), 300)])
		}
		if n := selects(t, pg, table); n != 0 {
			t.Errorf("%s MGET of 50 cached keys ran %d SELECTs, want 0", prefix, n)
		}
		if calls := commandCalls(t, d); total(calls) != 1 || calls["mget"] != 1 {
			t.Errorf("%s MGET of 50 cached keys: Redis ran %v, want one MGET", prefix, calls)
		}
	}

	// A key no int can hold beside keys that load: those still answer,
	// in the one query.
	d.do("FLUSHALL")
	resetStats(t, pg)
	args := []string{"MGET", "mg:1", "mg:99999999999", "mg:2"}
	if got, want := c.do(args...), "*3\r\n"+want("mg:", 1)+"$-1\r\n"+want("mg:", 2); got != want {
		t.Fatalf("MGET with a key out of int's range = %q, want %q", got, want)
	}
	if n := selects(t, pg, "mg_users"); n != 1 {
		t.Errorf("MGET with a key out of int's range ran %d SELECTs, want 1", n)
	}

	// 1,200 cold keys load 500 at a time (loadChunk): 3 SELECTs.
	d.do("FLUSHALL")
	resetStats(t, pg)
	var many []int
	for i := 1; i <= 1200; i++ {
		many = append(many, i)
	}
	args, reply := mget("mg:", many...)
	if got := c.do(args...); got != reply {
		t.Fatalf("MGET of 1,200 cold keys = %q", got[:min(len(got), 300)])
	}
	if n := selects(t, pg, "mg_users"); n != 3 {
		t.Errorf("MGET of 1,200 cold keys ran %d SELECTs, want 3", n)
	}

	// 100 clients MGET the same 20 cold keys at once: each key loads once
	// (at most 20 SELECTs, usually one or two), every reply is right.
	d.do("FLUSHALL")
	args, reply = mget("mg:", ids[:20]...)
	resetStats(t, pg)
	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := dialRaw(t, proxy)
			if got := cc.do(args...); got != reply {
				errs <- got
			}
		}()
	}
	wg.Wait()
	close(errs)
	for got := range errs {
		t.Fatalf("concurrent MGET = %q", got[:min(len(got), 300)])
	}
	if n := selects(t, pg, "mg_users"); n < 1 || n > 20 {
		t.Errorf("100 concurrent MGETs of 20 cold keys ran %d SELECTs, want 1 to 20", n)
	} else {
		t.Logf("100 concurrent MGETs of 20 cold keys: %d SELECTs", n)
	}
}
