package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/respite/respite/internal/config"
)

// lockedBuffer is a log sink the test reads while the proxy writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The audit log: with audit: true a route logs one structured line per
// routed write (route, key, command, outcome, duration; an error's text;
// multi for writes decided by EXEC, aborted when EXEC did not run), reads
// log nothing, values are never logged, and a route without audit (the
// default) logs no audit line at all.
func TestAuditLogOfRoutedWrites(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; DELETE FROM products; INSERT INTO users VALUES (61, 'Eve', NULL, 20); INSERT INTO products VALUES ('kiwi', 3)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	cfg := config.Default()
	cfg.Listen, cfg.Upstream.Addr, cfg.Postgres.DSN = "127.0.0.1:0", redisAddr, p.DSN
	cfg.Routes = testRoutes()
	for i := range cfg.Routes {
		cfg.Routes[i].Audit = cfg.Routes[i].Name == "users" || cfg.Routes[i].Name == "stock"
	}
	if err := fillDefaults(&cfg); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	srv, err := New(cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c := dialRaw(t, l.Addr().String())
	c.do("GET", "user:61")                           // a read: not logged
	c.do("SET", "user:61", `{"name":"secret-name"}`) // ok
	c.do("SET", "user:61", `{"nope":1}`)             // error: not a column
	c.do("INCRBY", "stock:kiwi", "-10")              // error: CHECK (stock >= 0)
	c.do("INCR", "pv:home")                          // route without audit
	c.do("MULTI")
	c.do("INCRBY", "stock:kiwi", "2")
	c.do("DEL", "user:61")
	if got := c.do("EXEC"); got != "*2\r\n:5\r\n:1\r\n" {
		t.Fatalf("EXEC: %q", got)
	}
	other := dialRaw(t, l.Addr().String())
	c.do("WATCH", "stock:kiwi")
	other.do("SET", "stock:kiwi", "9")
	c.do("MULTI")
	c.do("SET", "stock:kiwi", "1")
	if got := c.do("EXEC"); got != "*-1\r\n" {
		t.Fatalf("EXEC after a conflicting write: %q", got)
	}
	want := []map[string]any{
		{"route": "users", "key": "user:61", "command": "set", "outcome": "ok"},
		{"route": "users", "key": "user:61", "command": "set", "outcome": "error"},
		{"route": "stock", "key": "stock:kiwi", "command": "incrby", "outcome": "error"},
		{"route": "stock", "key": "stock:kiwi", "command": "incrby", "outcome": "ok", "multi": true},
		{"route": "users", "key": "user:61", "command": "del", "outcome": "ok", "multi": true},
		{"route": "stock", "key": "stock:kiwi", "command": "set", "outcome": "ok"},
		{"route": "stock", "key": "stock:kiwi", "command": "set", "outcome": "aborted", "multi": true},
	}
	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		if m["msg"] == "audit" {
			got = append(got, m)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d audit lines, want %d:\n%s", len(got), len(want), logs)
	}
	for i, w := range want {
		for k, v := range w {
			if got[i][k] != v {
				t.Errorf("audit line %d: %s = %v, want %v (%v)", i, k, got[i][k], v, got[i])
			}
		}
		if _, ok := got[i]["duration"]; !ok {
			t.Errorf("audit line %d has no duration: %v", i, got[i])
		}
		if (w["outcome"] == "error") != (got[i]["error"] != nil) {
			t.Errorf("audit line %d: error %v for outcome %v", i, got[i]["error"], w["outcome"])
		}
	}
	if strings.Contains(logs.String(), "secret-name") {
		t.Error("a written value reached the log")
	}
}
