package server

import (
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
)

// RESPITE VERIFY samples the cached rows of a route and compares each
// with PostgreSQL: rows changed or deleted with SQL behind the proxy's
// back (json, hash and value routes) are reported with why, REPAIR
// deletes exactly those copies so the next read is right, the counters
// reach /metrics, and a write-back route with writes queued is refused
// until it is flushed.
func TestVerifyReportsAndRepairsDivergences(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec(`DELETE FROM users; DELETE FROM profiles; DELETE FROM products; DELETE FROM page_views;
INSERT INTO users VALUES (71, 'Ada', NULL, 36), (72, 'Bea', NULL, 40), (73, 'Cy', NULL, 50);
INSERT INTO profiles VALUES (71, 'Ada', 'Oslo'); INSERT INTO products VALUES ('fig', 5), ('yam', 6)`)
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, func(c *config.Config) { c.Admin = "127.0.0.1:0" })
	c := dialRaw(t, proxy)
	for _, cmd := range [][]string{{"GET", "user:71"}, {"GET", "user:72"}, {"GET", "user:73"}, {"HGETALL", "profile:71"}, {"GET", "stock:fig"}, {"GET", "stock:yam"}} {
		c.do(cmd...)
	}
	if got := c.do("RESPITE", "VERIFY", "users"); !strings.Contains(got, "$7\r\nchecked\r\n:3\r\n$9\r\ndivergent\r\n:0\r\n") {
		t.Fatalf("VERIFY users with nothing changed: %q", got)
	}
	// Behind the proxy's back.
	p.Exec(`UPDATE users SET age = 37 WHERE id = 71; DELETE FROM users WHERE id = 72;
UPDATE profiles SET city = 'Bergen' WHERE id = 71; UPDATE products SET stock = 9 WHERE sku = 'yam'`)
	got := c.do("RESPITE", "VERIFY", "users", "10")
	for _, want := range []string{"$9\r\ndivergent\r\n:2\r\n", "$8\r\nrepaired\r\n:0\r\n", "user:71", `"age":36`, `"age":37`, "user:72", "PostgreSQL has no such row"} {
		if !strings.Contains(got, want) {
			t.Errorf("VERIFY users: %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "user:73") {
		t.Errorf("VERIFY users reports user:73, which agrees: %q", got)
	}
	if got := c.do("RESPITE", "VERIFY", "profiles"); !strings.Contains(got, "$9\r\ndivergent\r\n:1\r\n") || !strings.Contains(got, "Bergen") {
		t.Errorf("VERIFY profiles: %q", got)
	}
	if got := c.do("RESPITE", "VERIFY", "stock", "REPAIR"); !strings.Contains(got, "$9\r\ndivergent\r\n:1\r\n$8\r\nrepaired\r\n:1\r\n") || !strings.Contains(got, `cached "6", PostgreSQL "9"`) {
		t.Errorf("VERIFY stock REPAIR: %q", got)
	}
	if got := c.do("GET", "stock:yam"); got != "$1\r\n9\r\n" {
		t.Errorf("GET stock:yam after REPAIR: %q", got)
	}
	if got := c.do("RESPITE", "VERIFY", "users", "REPAIR", "5"); !strings.Contains(got, "$8\r\nrepaired\r\n:2\r\n") {
		t.Errorf("VERIFY users REPAIR: %q", got)
	}
	if got := c.do("GET", "user:71"); !strings.Contains(got, `"age":37`) {
		t.Errorf("GET user:71 after REPAIR: %q", got)
	}
	if got := c.do("GET", "user:72"); got != "$-1\r\n" {
		t.Errorf("GET user:72 after REPAIR: %q", got)
	}
	if got := c.do("RESPITE", "VERIFY", "users"); !strings.Contains(got, "$9\r\ndivergent\r\n:0\r\n") {
		t.Errorf("VERIFY users after REPAIR: %q", got)
	}
	// Write-back: refused while writes are queued, checked once flushed.
	c.do("INCR", "pv:home")
	if got := c.do("RESPITE", "VERIFY", "pv"); !strings.HasPrefix(got, "-ERR verify: write-back route 'pv' has 1 queued writes") {
		t.Errorf("VERIFY pv with a queued write: %q", got)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := c.do("RESPITE", "VERIFY", "pv")
		if strings.Contains(got, "$7\r\nchecked\r\n:1\r\n$9\r\ndivergent\r\n:0\r\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VERIFY pv after the flush: %q", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, metrics := scrape(t, lastAdminAddr(t), "/metrics")
	for series, want := range map[string]string{
		`respite_route_verify_checked_total{route="users"}`:     "11",
		`respite_route_verify_divergences_total{route="users"}`: "4",
		`respite_route_verify_repaired_total{route="users"}`:    "2",
		`respite_route_verify_repaired_total{route="stock"}`:    "1",
	} {
		if got := metricValue(metrics, series); got != want {
			t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
	for _, tc := range [][]string{{"RESPITE", "VERIFY"}, {"RESPITE", "VERIFY", "nosuch"}, {"RESPITE", "VERIFY", "users", "0"}, {"RESPITE", "VERIFY", "users", "REPAIR", "REPAIR"}} {
		if got := c.do(tc...); !strings.HasPrefix(got, "-ERR") {
			t.Errorf("%v: %q, want an error", tc, got)
		}
	}
}
