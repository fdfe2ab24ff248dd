package config

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultsFromEmptyFile(t *testing.T) {
	cfg, err := Parse("empty.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:6380" || cfg.Upstream.Addr != "127.0.0.1:6379" || cfg.Limits.MaxBulkBytes != 512<<20 {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	_, err := Parse("bad.yaml", []byte("listen: 127.0.0.1:1\nupstream:\n  adr: x\n"))
	if err == nil || !strings.Contains(err.Error(), "bad.yaml") || !strings.Contains(err.Error(), "adr") || !strings.Contains(err.Error(), "3") {
		t.Fatalf("unknown field: %v", err)
	}
	_, err = Parse("bad.yaml", []byte("upstream:\n  timeout: soon\n"))
	if err == nil || !strings.Contains(err.Error(), "invalid duration") {
		t.Fatalf("bad duration: %v", err)
	}
	_, err = Parse("bad.yaml", []byte("log_level: loud\n"))
	if err == nil || !strings.Contains(err.Error(), "log_level") {
		t.Fatalf("bad level: %v", err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"gomaxprocs: 1.5\n", "line 1: gomaxprocs: 1.5 is not an integer"},
		{"gomaxprocs: 0.9\n", "line 1: gomaxprocs: 0.9 is not an integer"},
		{"log_level: warn\nupstream:\n  addr: x:1\n  mux_conns: abc\n", "line 4: upstream.mux_conns: abc is not an integer"},
		{"upstream: {pool_size: 1.5}\n", "line 1: upstream.pool_size: 1.5 is not an integer"},
		{"limits:\n  max_bulk_bytes: '1024'\n", "line 2: limits.max_bulk_bytes: '1024' is not an integer"},
		{"postgres:\n  dsn: x\nroutes:\n  - name: a\n    batch_size: 2.5\n", "line 5: routes[0].batch_size: 2.5 is not an integer"},
		{"routes:\n  - name: a\n    local_cache: {size: 1e3}\n", "line 3: routes[0].local_cache.size: 1e3 is not an integer"},
		{"gomaxprocs: 100000\n", "gomaxprocs: 100000 must be between 0 (Go's default) and 1024"},
		{"upstream:\n  mux_conns: 5000\n", "upstream.mux_conns: 5000 must be between 0 (one per gomaxprocs) and 256"},
	} {
		_, err := Parse("bad.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.yaml, err, tc.want)
		}
	}
	// Whole numbers, durations and percentages still decode.
	cfg, err := Parse("ok.yaml", []byte("gomaxprocs: 2\nupstream: {mux_conns: 3, timeout: 1.5s}\nlimits:\n  max_bulk_bytes: 1024\n"))
	if err != nil || cfg.GOMAXPROCS != 2 || cfg.Upstream.MuxConns != 3 || cfg.Limits.MaxBulkBytes != 1024 || cfg.Upstream.Timeout != Duration(1500*time.Millisecond) {
		t.Fatalf("whole numbers: %+v %v", cfg, err)
	}
	_, err = Parse("bad.yaml", []byte("gomaxprocs: -1\n"))
	if err == nil || !strings.Contains(err.Error(), "gomaxprocs") {
		t.Fatalf("negative gomaxprocs: %v", err)
	}
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("RESPITE_TEST_PASS", "s3cret")
	cfg, err := Parse("env.yaml", []byte("upstream:\n  password: ${RESPITE_TEST_PASS}\n"))
	if err != nil || cfg.Upstream.Password != "s3cret" {
		t.Fatalf("got %q, %v", cfg.Upstream.Password, err)
	}
}

func TestRoutes(t *testing.T) {
	base := "postgres:\n  dsn: postgres://x@127.0.0.1/db\nroutes:\n"
	cfg, err := Parse("r.yaml", []byte(base+`  - name: users
    prefix: "user:"
    policy: cache-aside
    table: users
    key_column: id
    format: json
    ttl_jitter: 20%
    negative_ttl: 0s
  - name: stock
    prefix: "stock:"
    policy: write-back
    table: products
    key_column: sku
    format: value
    value_column: stock
`))
	if err != nil {
		t.Fatal(err)
	}
	u, s := cfg.Routes[0], cfg.Routes[1]
	if u.TTL != Duration(time.Hour) || u.TTLJitter != 0.2 || *u.NegativeTTL != 0 || u.EarlyRefreshBeta != 1 {
		t.Errorf("users defaults: %+v", u)
	}
	if s.BatchSize != 100 || s.MaxRetries != 5 || s.Priority != "low" || *s.NegativeTTL != Duration(30*time.Second) {
		t.Errorf("stock defaults: %+v", s)
	}
	for _, tc := range []struct{ route, want string }{
		{"  - {name: a, prefix: 'a:', policy: lazy, table: t, key_column: k, format: json}\n", "policy"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: value}\n", "value_column"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: xml}\n", "format"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, key_column: k, format: json}\n", "table"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json}\n  - {name: b, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json}\n", "prefix"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json, ttl_jitter: lots}\n", "percentage"},
	} {
		_, err := Parse("r.yaml", []byte(base+tc.route))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", tc.route, err, tc.want)
		}
	}
	if _, err := Parse("r.yaml", []byte("routes:\n  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json}\n")); err == nil || !strings.Contains(err.Error(), "postgres.dsn") {
		t.Errorf("routes without dsn: %v", err)
	}
}
