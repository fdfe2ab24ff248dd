package server

import (
	"fmt"
	"strconv"
	"strings"
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
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	proxy := startProxy(t, func(c *config.Config) {
		c.Upstream.Addr = r.Addr
		c.Postgres.DSN = pg.DSN
		c.Routes = []config.Route{{Name: "rt", Prefix: "rt:", Policy: config.CacheAside, Table: "rt_users", KeyColumn: "id", Format: config.FormatJSON}}
		if err := fillDefaults(c); err != nil {
			t.Fatal(err)
		}
	})
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

func total(calls map[string]int) int {
	n := 0
	for _, v := range calls {
		n += v
	}
	return n
}
