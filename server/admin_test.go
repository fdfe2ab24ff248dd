package server

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/internal/config"
)

func scrape(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func metricValue(body, series string) string {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimPrefix(line, series+" ")
		}
	}
	return ""
}

// /metrics is scraped and parsed, counters move after traffic, and every
// metric the Grafana dashboard and the alert rules use is exported live.
func TestAdminHTTP(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (8, 'Frances', NULL, 60)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startProxy(t, func(c *config.Config) {
		c.Admin = "127.0.0.1:0"
		c.Postgres.DSN = p.DSN
		c.Routes = testRoutes()
		if err := fillDefaults(c); err != nil {
			t.Fatal(err)
		}
	})
	adminAddr := lastAdminAddr(t)
	if code, body := scrape(t, adminAddr, "/healthz"); code != 200 || body != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, _ := scrape(t, adminAddr, "/readyz"); code != 200 {
		t.Fatalf("/readyz: %d", code)
	}
	_, before := scrape(t, adminAddr, "/metrics")
	c := dialRaw(t, proxy)
	c.do("GET", "user:8")
	c.do("GET", "user:8")
	c.do("SET", "plain", "1")
	_, after := scrape(t, adminAddr, "/metrics")
	if metricValue(before, `respite_route_hits_total{route="users"}`) != "0" || metricValue(after, `respite_route_hits_total{route="users"}`) != "1" {
		t.Fatalf("hits did not move: before %q after %q", metricValue(before, `respite_route_hits_total{route="users"}`), metricValue(after, `respite_route_hits_total{route="users"}`))
	}
	if metricValue(after, `respite_route_db_loads_total{route="users"}`) != "1" || metricValue(after, "respite_clients") != "1" {
		t.Fatalf("loads/clients: %q %q", metricValue(after, `respite_route_db_loads_total{route="users"}`), metricValue(after, "respite_clients"))
	}
	if !strings.Contains(after, `respite_command_duration_seconds_count{class="passthrough"}`) {
		t.Fatal("no latency histogram for passthrough commands")
	}
	live := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^(respite_[a-z_]+)`).FindAllStringSubmatch(after, -1) {
		live[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m[1], "_bucket"), "_sum"), "_count")] = true
	}
	for _, name := range admin.MetricNames() {
		if !live[name] {
			t.Errorf("metric %s is not exported by a live proxy", name)
		}
	}
	for _, file := range []string{"../deploy/grafana-dashboard.json", "../deploy/alerts.yml"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(file, ".json") && !json.Valid(b) {
			t.Fatalf("%s is not valid JSON", file)
		}
		for _, m := range regexp.MustCompile(`respite_[a-z_]+`).FindAllString(string(b), -1) {
			name := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
			if !live[name] {
				t.Errorf("%s uses %s, which the live proxy does not export", file, m)
			}
		}
	}
}

func TestAdminCommands(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; DELETE FROM page_views; INSERT INTO users VALUES (9, 'Dennis', NULL, 70)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, func(c *config.Config) { c.AdminPassword = "adm1n" })
	c := dialRaw(t, proxy)
	if got := c.do("RESPITE", "STATS"); !strings.HasPrefix(got, "-NOPERM") {
		t.Fatalf("without RESPITE AUTH: %q", got)
	}
	if got := c.do("RESPITE", "AUTH", "nope"); !strings.HasPrefix(got, "-WRONGPASS") {
		t.Fatalf("wrong admin password: %q", got)
	}
	if got := c.do("RESPITE", "AUTH", "adm1n"); got != "+OK\r\n" {
		t.Fatalf("RESPITE AUTH: %q", got)
	}
	c.do("GET", "user:9")
	c.do("GET", "user:9")
	if got := c.do("RESPITE", "STATS"); !strings.Contains(got, "$5\r\nusers\r\n") || !strings.Contains(got, "$8\r\nhit_rate\r\n$6\r\n0.5000\r\n") {
		t.Fatalf("RESPITE STATS: %q", got)
	}
	if got := c.do("RESPITE", "ROUTES"); !strings.Contains(got, "$6\r\nprefix\r\n$5\r\nuser:\r\n") || !strings.Contains(got, "write-back") {
		t.Fatalf("RESPITE ROUTES: %q", got)
	}
	if got := c.do("RESPITE", "CONFLICTS"); got != "*0\r\n" {
		t.Fatalf("RESPITE CONFLICTS with no transactions: %q", got)
	}
	if got := c.do("RESPITE", "LASTABORT"); got != "$-1\r\n" {
		t.Fatalf("RESPITE LASTABORT with no abort: %q", got)
	}
	c.do("INCR", "pv:home")
	if got := c.do("RESPITE", "QUEUE"); !strings.Contains(got, "$5\r\nroute\r\n$2\r\npv\r\n") {
		t.Fatalf("RESPITE QUEUE: %q", got)
	}
	if got := c.do("RESPITE", "FLUSH"); got != "+OK\r\n" {
		t.Fatalf("RESPITE FLUSH: %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if out, _ := p.Query("SELECT views FROM page_views WHERE page_id = 'home'"); out == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("RESPITE FLUSH did not write the pending INCR")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A poison entry in the dead-letter stream: list, replay, drop.
	rc := dialRaw(t, redisAddr)
	rc.do("XADD", "respite:dlq:pv", "*", "k", "pv:x", "v", "7", "error", "test")
	if got := c.do("RESPITE", "DLQ", "LIST", "pv"); !strings.HasPrefix(got, "*1\r\n") || !strings.Contains(got, "pv:x") {
		t.Fatalf("RESPITE DLQ LIST: %q", got)
	}
	if got := c.do("RESPITE", "DLQ", "REPLAY", "pv"); got != ":1\r\n" {
		t.Fatalf("RESPITE DLQ REPLAY: %q", got)
	}
	rc.do("XADD", "respite:dlq:pv", "*", "k", "pv:y", "v", "8", "error", "test")
	if got := c.do("RESPITE", "DLQ", "DROP", "pv"); got != ":1\r\n" {
		t.Fatalf("RESPITE DLQ DROP: %q", got)
	}
	if got := c.do("RESPITE", "NOPE"); !strings.HasPrefix(got, "-ERR unknown subcommand") {
		t.Fatalf("unknown subcommand: %q", got)
	}
}
