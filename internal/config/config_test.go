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

// route is a valid route for the tables below, one field a line, so that
// the line of each field is known: name on line 4, ttl on line 10 after
// the two lines of postgres: and routes:.
const route = `postgres:
  dsn: postgres://x@127.0.0.1/db
routes:
  - name: users
    prefix: "user:"
    policy: cache-aside
    table: users
    key_column: id
    format: json
`

// Every kind of bad value is refused with file:line: field.path: what is
// wrong (what is accepted). The whole message is compared.
func TestErrorsNameFileLineAndField(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		// unknown fields
		{"listen: 127.0.0.1:1\nupstream:\n  adr: x\n", "bad.yaml:3: upstream.adr: unknown field; did you mean addr? (accepted: mode, addrs, master_name, addr, username, password, client_user, client_password, db, pool_size, multiplexer, mux_conns, tls, dial_timeout, timeout)"},
		{"log_levle: info\n", "bad.yaml:1: log_levle: unknown field; did you mean log_level? (accepted: listen, requirepass, log_level, log_format, admin, admin_password, admin_commands, tls, upstream, limits, postgres, transactions, write_back, shutdown_timeout, gomaxprocs, cluster_answers, routes)"},
		{route + "    local_cache: {sise: 5}\n", "bad.yaml:10: routes[0].local_cache.sise: unknown field; did you mean size? (accepted: size, ttl)"},
		{"transactions:\n  gate: {on: true}\n", "bad.yaml:2: transactions.gate.on: unknown field (accepted: enabled, threshold, min_attempts, max_wait)"},
		// durations
		{route + "    ttl: banana\n", `bad.yaml:10: routes[0].ttl: "banana" is not a duration (Go syntax such as 500ms, 30s, 1h)`},
		{route + "    ttl: -5s\n", "bad.yaml:10: routes[0].ttl: -5s is negative (0s or more)"},
		{route + "    ttl: 60\n", "bad.yaml:10: routes[0].ttl: 60 has no unit (add one, e.g. 60s)"},
		{route + "    ttl: '60'\n", "bad.yaml:10: routes[0].ttl: 60 has no unit (add one, e.g. 60s)"},
		{"shutdown_timeout: 1.5\n", "bad.yaml:1: shutdown_timeout: 1.5 has no unit (add one, e.g. 1.5s)"},
		{"upstream:\n  timeout: [1s]\n", "bad.yaml:2: upstream.timeout: a list is not a duration (Go syntax such as 500ms, 30s, 1h)"},
		{route + "    negative_ttl: never\n", `bad.yaml:10: routes[0].negative_ttl: "never" is not a duration (Go syntax such as 500ms, 30s, 1h)`},
		{route + "    local_cache:\n      ttl: 2\n", "bad.yaml:11: routes[0].local_cache.ttl: 2 has no unit (add one, e.g. 2s)"},
		// percentages
		{route + "    ttl_jitter: 150%\n", "bad.yaml:10: routes[0].ttl_jitter: 150% is out of range (0% to 100%)"},
		{route + "    ttl_jitter: lots\n", `bad.yaml:10: routes[0].ttl_jitter: "lots" is not a percentage (0% to 100%, e.g. 10%)`},
		{"transactions:\n  gate:\n    threshold: -1%\n", "bad.yaml:3: transactions.gate.threshold: -1% is out of range (0% to 100%)"},
		// booleans
		{route + "    early_refresh: maybe\n", "bad.yaml:10: routes[0].early_refresh: maybe is not a boolean (true or false)"},
		{route + "    contention_gate: 1\n", "bad.yaml:10: routes[0].contention_gate: 1 is not a boolean (true or false)"},
		{"upstream:\n  tls:\n    enabled: yes\n", "bad.yaml:3: upstream.tls.enabled: yes is not a boolean (true or false)"},
		// integers
		{"gomaxprocs: 1.5\n", "bad.yaml:1: gomaxprocs: 1.5 is not an integer (a whole number such as 10)"},
		{"gomaxprocs: 0.9\n", "bad.yaml:1: gomaxprocs: 0.9 is not an integer (a whole number such as 10)"},
		{"log_level: warn\nupstream:\n  addr: x:1\n  mux_conns: abc\n", "bad.yaml:4: upstream.mux_conns: abc is not an integer (a whole number such as 10)"},
		{"upstream: {pool_size: 1.5}\n", "bad.yaml:1: upstream.pool_size: 1.5 is not an integer (a whole number such as 10)"},
		{"limits:\n  max_bulk_bytes: '1024'\n", "bad.yaml:2: limits.max_bulk_bytes: '1024' is not an integer (a whole number such as 10)"},
		{route + "    batch_size: 2.5\n", "bad.yaml:10: routes[0].batch_size: 2.5 is not an integer (a whole number such as 10)"},
		{route + "    local_cache: {size: 1e3}\n", "bad.yaml:10: routes[0].local_cache.size: 1e3 is not an integer (a whole number such as 10)"},
		{"postgres:\n  max_conns: 99999999999\n", "bad.yaml:2: postgres.max_conns: 99999999999 is out of range (-2147483648 to 2147483647)"},
		{"postgres:\n  statement_timeout: 5\n", "bad.yaml:2: postgres.statement_timeout: 5 has no unit (add one, e.g. 5s)"},
		{"limits:\n  max_clients: 99999999999999999999999\n", "bad.yaml:2: limits.max_clients: 99999999999999999999999 is out of range (-9223372036854775808 to 9223372036854775807)"},
		// floats
		{route + "    early_refresh_beta: high\n", "bad.yaml:10: routes[0].early_refresh_beta: high is not a number (e.g. 1 or 0.5)"},
		// strings
		{"listen: [a, b]\n", "bad.yaml:1: listen: a list is not a string (one value; quote it if it starts with [ or {)"},
		{"upstream:\n  password: {a: b}\n", "bad.yaml:2: upstream.password: a section (key: value) is not a string (one value; quote it if it starts with [ or {)"},
		{"upstream:\n  client_password: x\n", "bad.yaml:2: upstream.client_password: set without upstream.client_user (the ACL user it is the password of)"},
		// sections and lists
		{"upstream: 5\n", "bad.yaml:1: upstream: 5 is not a section (its fields: mode, addrs, master_name, addr, username, password, client_user, client_password, db, pool_size, multiplexer, mux_conns, tls, dial_timeout, timeout)"},
		{route + "    local_cache: 5\n", "bad.yaml:10: routes[0].local_cache: 5 is not a section (its fields: size, ttl)"},
		{"routes: users\n", `bad.yaml:1: routes: users is not a list (one entry per line, each starting with "- ")`},
		{route + "  - users\n", "bad.yaml:10: routes[1]: users is not a section (its fields: name, prefix, policy, table, key_column, key_columns, key_separator, format, value_column, cache_version, audit, ttl, ttl_jitter, negative_ttl, sliding, early_refresh, early_refresh_beta, distributed_lock, lock_ttl, contention_gate, local_cache, batch_size, flush_interval, max_retries, priority, track_changes)"},
		{"- listen: x\n", "bad.yaml:1: a list is not a YAML mapping of settings (its fields: listen, requirepass, log_level, log_format, admin, admin_password, admin_commands, tls, upstream, limits, postgres, transactions, write_back, shutdown_timeout, gomaxprocs, cluster_answers, routes)"},
		// the document itself
		{"listen: a:1\nadmin: b:2\nlisten: c:3\n", "bad.yaml:3: listen: set twice (first on line 1; keep one)"},
		{"listen: a:1\n---\nlisten: b:2\n", "bad.yaml:3: a second YAML document (after ---) is not read (keep the whole configuration in one document)"},
		{"upstream:\n  addr: [x\n", "bad.yaml:2: sequence end token ']' not found"},
		// values that parse but are not accepted (validate)
		{"log_level: info\nlog_format: xml\n", `bad.yaml:2: log_format: "xml" is not a log format (text or json)`},
		{"\nlog_level: loud\n", `bad.yaml:2: log_level: "loud" is not a log level (debug, info, warn or error)`},
		{"gomaxprocs: 100000\n", "bad.yaml:1: gomaxprocs: 100000 is out of range (0, Go's default, to 1024)"},
		{"gomaxprocs: -1\n", "bad.yaml:1: gomaxprocs: -1 is out of range (0, Go's default, to 1024)"},
		{"listen: ''\n", "bad.yaml:1: listen: empty (an address such as 127.0.0.1:6380)"},
		{"tls:\n  cert_file: c.pem\n", "bad.yaml:2: tls.key_file: missing (cert_file and key_file go together)"},
		{"upstream:\n  mux_conns: 5000\n", "bad.yaml:2: upstream.mux_conns: 5000 is out of range (0, one per gomaxprocs, to 256)"},
		{"upstream:\n  db: -1\n", "bad.yaml:2: upstream.db: -1 is negative (0 or more)"},
		{"upstream:\n  multiplexer: fast\n", `bad.yaml:2: upstream.multiplexer: "fast" is not a multiplexer (builtin or go-redis)`},
		{"transactions:\n  gate:\n    min_attempts: -3\n", "bad.yaml:3: transactions.gate.min_attempts: must be positive (leave it out for the default)"},
		{"limits:\n  max_args: -1\n", "bad.yaml:2: limits.max_args: must be positive (leave it out for the default)"},
		{"routes:\n  - name: a\n", "bad.yaml:1: postgres.dsn: required when routes are configured (a postgres:// URL)"},
		{strings.Replace(route, "postgres:\n", "postgres:\n  statement_timeout: 1us\n", 1), "bad.yaml:2: postgres.statement_timeout: 1µs is below 1ms (PostgreSQL counts milliseconds; default 5s)"},
		{route + "  - prefix: 'x:'\n", "bad.yaml:10: routes[1].name: required (a name for the route, unique in the file)"},
		{route + "  - name: users\n", `bad.yaml:10: routes[1].name: "users" is also the name of routes[0] (names are unique)`},
		{route + "  - name: mine\n    prefix: 'respite:x:'\n", `bad.yaml:11: routes[1].prefix: "respite:x:" overlaps respite:, the proxy's own keys (choose another prefix)`},
		{route + "    policy: lazy\n", `bad.yaml:10: routes[0].policy: set twice (first on line 6; keep one)`},
		{strings.Replace(route, "cache-aside", "lazy", 1), `bad.yaml:6: routes[0].policy: "lazy" is not a policy (cache-aside, write-through or write-back)`},
		{strings.Replace(route, "json", "xml", 1), `bad.yaml:9: routes[0].format: "xml" is not a format (json, hash or value)`},
		{strings.Replace(route, "json", "value", 1), "bad.yaml:9: routes[0].value_column: required for format value (the column that holds the value)"},
		{route + "    value_column: v\n", "bad.yaml:10: routes[0].value_column: only for format value (remove it, or set format: value)"},
		{strings.Replace(route, "    table: users\n", "", 1), "bad.yaml:4: routes[0].table: required (the PostgreSQL table of the rows)"},
		{strings.Replace(route, "json", "hash", 1) + "    local_cache: {size: 5}\n", "bad.yaml:10: routes[0].local_cache: only for json and value routes (remove it, or change format)"},
		{route + "    local_cache: {size: -5}\n", "bad.yaml:10: routes[0].local_cache.size: -5 is negative (a number of entries, default 10000)"},
		{route + "    max_retries: -1\n", "bad.yaml:10: routes[0].max_retries: -1 is negative (attempts, default 5)"},
		{route + "    key_columns: [tenant_id, id]\n", "bad.yaml:10: routes[0].key_columns: set key_column or key_columns, not both"},
		{strings.Replace(route, "key_column: id", "key_columns: [tenant_id, tenant_id]", 1), `bad.yaml:8: routes[0].key_columns[1]: "tenant_id" is also key_columns[0] (each column once)`},
		{strings.Replace(route, "key_column: id", "key_columns: [a, b]\n    key_separator: 'x'", 1), `bad.yaml:9: routes[0].key_separator: "x" is not accepted (punctuation such as : | / #, not letters, digits, spaces, quotes, backslash, % or _)`},
		{route + "    cache_version: -1\n", "bad.yaml:10: routes[0].cache_version: -1 is negative (0, the default, or a version number to bump)"},
		{strings.Replace(route, "cache-aside", "write-back", 1) + "    cache_version: 2\n", "bad.yaml:10: routes[0].cache_version: only for cache-aside and write-through routes (a write-back route's cache holds writes PostgreSQL does not have yet; drain it with RESPITE FLUSH and delete the keys instead)"},
		{route + "    audit: sometimes\n", "bad.yaml:10: routes[0].audit: sometimes is not a boolean (true or false)"},
		{route + "    priority: urgent\n", `bad.yaml:10: routes[0].priority: "urgent" is not a priority (high or low)`},
		{route + "    early_refresh_beta: -2\n", "bad.yaml:10: routes[0].early_refresh_beta: -2 is negative (a positive number, default 1)"},
		{"write_back:\n  allow_evicting_policy: allkeys-lru2\n" + route, `bad.yaml:2: write_back.allow_evicting_policy: "allkeys-lru2" is not accepted (a policy that evicts keys without TTL: allkeys-lru, allkeys-lfu, allkeys-random, or unverified)`},
		{"write_back:\n  allow_evicting_policy: volatile-lru\n" + route, `bad.yaml:2: write_back.allow_evicting_policy: "volatile-lru" is not accepted (volatile-lru cannot evict the queues and needs no opt-in: remove the field)`},
		{"log_level: info\nadmin: nonsense\n", `bad.yaml:2: admin: "nonsense" is not host:port (an address such as 127.0.0.1:9121, or leave it out to turn the admin listener off)`},
		{"admin: 127.0.0.1:http\n", `bad.yaml:1: admin: "127.0.0.1:http": port "http" is not a number from 0 to 65535`},
		{"admin: 127.0.0.1:65536\n", `bad.yaml:1: admin: "127.0.0.1:65536": port "65536" is not a number from 0 to 65535`},
		{"admin: ::1:9121\n", `bad.yaml:1: admin: "::1:9121" is not host:port (an address such as 127.0.0.1:9121, or leave it out to turn the admin listener off)`},
		{"cluster_answers:\n  advertise: nowhere\n", `bad.yaml:2: cluster_answers.advertise: "nowhere" is not host:port (the address clients are told to connect to)`},
		// upstream.mode and its fields
		{"upstream:\n  mode: replicated\n", `bad.yaml:2: upstream.mode: "replicated" is not a mode (standalone, sentinel or cluster)`},
		{"upstream:\n  mode: cluster\n", "bad.yaml:2: upstream.addrs: required for mode cluster (the cluster's seed nodes, host:port each)"},
		{"upstream:\n  mode: sentinel\n  master_name: m\n", "bad.yaml:2: upstream.addrs: required for mode sentinel (the sentinels, host:port each)"},
		{"upstream:\n  mode: sentinel\n  addrs: [a:1]\n", "bad.yaml:2: upstream.master_name: required for mode sentinel (the name Sentinel monitors the primary by)"},
		{"upstream:\n  mode: cluster\n  addrs: [a:1, b]\n", `bad.yaml:3: upstream.addrs[1]: "b" is not host:port`},
		{"upstream:\n  mode: cluster\n  addrs: [a:1]\n  master_name: m\n", "bad.yaml:4: upstream.master_name: only for mode sentinel"},
		{"upstream:\n  mode: cluster\n  addrs: [a:1]\n  db: 2\n", "bad.yaml:4: upstream.db: 2: Redis Cluster has only database 0"},
		{"upstream:\n  addrs: [a:1]\n", "bad.yaml:2: upstream.addrs: only for mode sentinel or cluster (standalone uses upstream.addr)"},
		{"upstream:\n  master_name: m\n", "bad.yaml:2: upstream.master_name: only for mode sentinel"},
		{strings.Replace(route, "postgres:\n", "upstream: {mode: cluster, addrs: ['a:1']}\npostgres:\n", 1) + "    local_cache: {size: 5}\n", "bad.yaml:11: routes[0].local_cache: not supported with upstream.mode cluster yet (the in-process tier follows one Redis)"},
		{strings.Replace(strings.Replace(route, "postgres:\n", "upstream: {mode: cluster, addrs: ['a:1']}\npostgres:\n", 1), "name: users", "name: us{ers}", 1), `bad.yaml:5: routes[0].name: "us{ers}" holds a brace: with upstream.mode cluster a route's name makes the hash tag of its keys`},
		{"write_back:\n  require_aof: sure\n", "bad.yaml:2: write_back.require_aof: sure is not a boolean (true or false)"},
		{"write_back:\n  min_replicas: -1\n" + route, "bad.yaml:2: write_back.min_replicas: -1 is negative (0 turns it off; default 1 with upstream.mode sentinel, else 0)"},
		{"write_back:\n  min_replicas: 1\n  replica_timeout: 10s\n" + route, "bad.yaml:3: write_back.replica_timeout: 10s is not below upstream.timeout (10s), within which the WAIT's reply is read"},
		{"write_back:\n  replica_timeout: 1us\n" + route, "bad.yaml:2: write_back.replica_timeout: 1µs is below 1ms (WAIT counts milliseconds; default 1s)"},
	} {
		_, err := Parse("bad.yaml", []byte(tc.yaml))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\n got  %v\n want %s", tc.yaml, err, tc.want)
		}
	}
	// The write-back opt-ins by name.
	for _, p := range []string{"allkeys-lru", "allkeys-lfu", "allkeys-random", "unverified"} {
		cfg, err := Parse("ok.yaml", []byte("write_back:\n  allow_evicting_policy: "+p+"\n  require_aof: true\n"+route))
		if err != nil || cfg.WriteBack.AllowEvictingPolicy != p || !cfg.WriteBack.RequireAOF {
			t.Errorf("allow_evicting_policy %s: %+v %v", p, cfg.WriteBack, err)
		}
	}
	// write_back.min_replicas: 1 on a Sentinel upstream, 0 otherwise,
	// unless set (0 included); replica_timeout 1s.
	sentinel := strings.Replace(route, "postgres:\n", "upstream: {mode: sentinel, addrs: ['a:1'], master_name: m}\npostgres:\n", 1)
	for _, tc := range []struct {
		yaml string
		want int
		wait Duration
	}{
		{route, 0, Duration(time.Second)},
		{sentinel, 1, Duration(time.Second)},
		{"write_back: {min_replicas: 0}\n" + sentinel, 0, Duration(time.Second)},
		{"write_back: {min_replicas: 2, replica_timeout: 250ms}\n" + route, 2, Duration(250 * time.Millisecond)},
	} {
		cfg, err := Parse("ok.yaml", []byte(tc.yaml))
		if err != nil || cfg.WriteBack.MinReplicas == nil || *cfg.WriteBack.MinReplicas != tc.want || cfg.WriteBack.ReplicaTimeout != tc.wait {
			t.Errorf("%q: min_replicas %v, replica_timeout %v, %v; want %d, %v", tc.yaml, cfg.WriteBack.MinReplicas, cfg.WriteBack.ReplicaTimeout, err, tc.want, tc.wait)
		}
	}
	// Whole numbers, durations, percentages and <<: merges still decode.
	cfg, err := Parse("ok.yaml", []byte("gomaxprocs: 2\nupstream: {mux_conns: 3, timeout: 1.5s}\nlimits:\n  max_bulk_bytes: 1024\n"))
	if err != nil || cfg.GOMAXPROCS != 2 || cfg.Upstream.MuxConns != 3 || cfg.Limits.MaxBulkBytes != 1024 || cfg.Upstream.Timeout != Duration(1500*time.Millisecond) {
		t.Fatalf("whole numbers: %+v %v", cfg, err)
	}
	if cfg.Upstream.PoolSize != 64 || cfg.Upstream.DialTimeout != Duration(5*time.Second) {
		t.Errorf("a section with some fields keeps the defaults of the others: %+v", cfg.Upstream)
	}
	// admin takes what a TCP listener takes: any interface, IPv6, port 0.
	for _, a := range []string{"127.0.0.1:9121", ":9121", "0.0.0.0:0", "'[::1]:9121'", "localhost:9121"} {
		if cfg, err := Parse("ok.yaml", []byte("admin: "+a+"\n")); err != nil || cfg.Admin != strings.Trim(a, "'") {
			t.Errorf("admin: %s: %v", a, err)
		}
	}
	cfg, err = Parse("ok.yaml", []byte(route+"    ttl: 0\n    ttl_jitter: 5\n  - <<: *base\n    name: b\n    prefix: 'b:'\n"))
	if err == nil {
		t.Fatalf("an alias of a missing anchor must be refused")
	}
	cfg, err = Parse("ok.yaml", []byte(strings.Replace(route, "  - name", "  - &base\n    name", 1)+"    ttl: 0\n    ttl_jitter: 5\n  - <<: *base\n    name: b\n    prefix: 'b:'\n"))
	if err != nil || len(cfg.Routes) != 2 || cfg.Routes[1].Name != "b" || cfg.Routes[1].Table != "users" || cfg.Routes[0].TTL != Duration(time.Hour) || cfg.Routes[0].TTLJitter != 0.05 {
		t.Fatalf("merged route: %+v %v", cfg.Routes, err)
	}
}

// A value from the environment is checked like one written in the file.
func TestEnvValuesAreChecked(t *testing.T) {
	t.Setenv("RESPITE_TEST_TIMEOUT", "10")
	_, err := Parse("env.yaml", []byte("upstream:\n  timeout: ${RESPITE_TEST_TIMEOUT}\n"))
	if want := "env.yaml:2: upstream.timeout: 10 has no unit (add one, e.g. 10s)"; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

// -set overrides win over the file, are checked like it, and name
// themselves in errors.
func TestOverrides(t *testing.T) {
	overrides := []string{"upstream.addr=127.0.0.1:6390", "upstream.password=''", "upstream.tls.enabled=true", "limits.max_args=7"}
	cfg, err := Parse("o.yaml", []byte("upstream:\n  addr: 10.0.0.1:6379\n  password: secret\n  pool_size: 9\n"), overrides...)
	if err != nil {
		t.Fatal(err)
	}
	if u := cfg.Upstream; u.Addr != "127.0.0.1:6390" || u.Password != "" || !u.TLS.Enabled || u.PoolSize != 9 || cfg.Limits.MaxArgs != 7 || cfg.Limits.MaxClients != 10000 {
		t.Errorf("overridden: %+v %+v", cfg.Upstream, cfg.Limits)
	}
	for _, tc := range []struct{ set, want string }{
		{"upstream.pool_size=abc", "-set upstream.pool_size=abc: upstream.pool_size: abc is not an integer (a whole number such as 10)"},
		{"upstream.adr=x", "-set upstream.adr=x: upstream.adr: unknown field; did you mean addr? (accepted: mode, addrs, master_name, addr, username, password, client_user, client_password, db, pool_size, multiplexer, mux_conns, tls, dial_timeout, timeout)"},
		{"upstream", "-set upstream: not field=value (a field of the file by its path, e.g. upstream.addr=127.0.0.1:6390)"},
		{"routes[0].ttl=1s", "-set routes[0].ttl=1s: not field=value (a field of the file by its path, e.g. upstream.addr=127.0.0.1:6390)"},
		{"upstream.addr=''", "-set upstream.addr='': upstream.addr: empty (host:port of the Redis, e.g. 127.0.0.1:6379)"},
	} {
		_, err := Parse("o.yaml", []byte("listen: 127.0.0.1:1\nupstream:\n  addr: x:1\n"), tc.set)
		if err == nil || err.Error() != tc.want {
			t.Errorf("-set %s:\n got  %v\n want %s", tc.set, err, tc.want)
		}
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
	if cfg.Postgres.StatementTimeout != Duration(5*time.Second) || cfg.Postgres.MaxConns != 8 {
		t.Errorf("postgres defaults: %+v", cfg.Postgres)
	}
	cfg, err = Parse("r.yaml", []byte(strings.Replace(base, "postgres:\n", "postgres:\n  statement_timeout: 250ms\n", 1)+"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json}\n"))
	if err != nil || cfg.Postgres.StatementTimeout != Duration(250*time.Millisecond) {
		t.Errorf("statement_timeout: 250ms: %+v, %v", cfg.Postgres, err)
	}
	for _, tc := range []struct{ route, want string }{
		{"  - {name: a, prefix: 'a:', policy: lazy, table: t, key_column: k, format: json}\n", "policy"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: value}\n", "value_column"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: xml}\n", "format"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, key_column: k, format: json}\n", "table"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json}\n  - {name: b, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json}\n", "prefix"},
		{"  - {name: a, prefix: 'a:', policy: cache-aside, table: t, key_column: k, format: json, ttl_jitter: lots}\n", "r.yaml:4: routes[0].ttl_jitter"},
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

// upstream.mode defaults to standalone; sentinel and cluster take their
// addresses from upstream.addrs.
func TestUpstreamModes(t *testing.T) {
	cfg, err := Parse("ok.yaml", nil)
	if err != nil || cfg.Upstream.Mode != ModeStandalone {
		t.Fatalf("default mode: %q %v", cfg.Upstream.Mode, err)
	}
	cfg, err = Parse("ok.yaml", []byte("upstream:\n  mode: cluster\n  addrs:\n    - 10.0.0.1:7000\n    - 10.0.0.2:7000\n"))
	if err != nil || cfg.Upstream.Mode != ModeCluster || len(cfg.Upstream.Addrs) != 2 || cfg.Upstream.Addrs[1] != "10.0.0.2:7000" {
		t.Fatalf("cluster: %+v %v", cfg.Upstream, err)
	}
	cfg, err = Parse("ok.yaml", []byte("upstream:\n  mode: sentinel\n  master_name: mymaster\n  addrs: ['10.0.0.1:26379']\n"+route))
	if err != nil || cfg.Upstream.Mode != ModeSentinel || cfg.Upstream.MasterName != "mymaster" {
		t.Fatalf("sentinel: %+v %v", cfg.Upstream, err)
	}
}
