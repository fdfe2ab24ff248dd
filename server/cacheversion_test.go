package server

import (
	"strconv"
	"strings"
	"testing"

	"github.com/respite/respite/internal/config"
)

// cache_version: bumping it (a reload) makes every cached row of the
// route miss at once, without a FLUSH: a row changed with SQL behind the
// proxy's back is served fresh after the bump; the old version's copy
// keeps its TTL and expires; WATCH, MULTI and writes use the new
// version's copy.
func TestCacheVersionBumpMissesEveryRow(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; INSERT INTO users VALUES (31, 'Ann', NULL, 30), (32, 'Bob', NULL, 40)")
	rds := dialRaw(t, redisAddr)
	rds.do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	srv := lastServer
	c := dialRaw(t, proxy)
	for _, k := range []string{"user:31", "user:32"} {
		if got := c.do("GET", k); !strings.Contains(got, `"age":`) {
			t.Fatalf("GET %s: %q", k, got)
		}
	}
	// Changed behind the proxy's back: the cached copies are stale.
	p.Exec("UPDATE users SET age = age + 1")
	if got := c.do("GET", "user:31"); !strings.Contains(got, `"age":30`) {
		t.Fatalf("GET user:31 before the bump: %q (want the cached, stale age 30)", got)
	}
	cfg := srv.live.Load()
	next := srv.cfg.With(*cfg)
	next.Routes = append([]config.Route(nil), cfg.Routes...)
	for i := range next.Routes {
		if next.Routes[i].Name == "users" {
			next.Routes[i].CacheVersion = 2
		}
	}
	if _, err := srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	if got := c.do("GET", "user:31"); !strings.Contains(got, `"age":31`) {
		t.Fatalf("GET user:31 after the bump: %q (want the row as PostgreSQL has it)", got)
	}
	if got := c.do("MGET", "user:32", "user:31"); !strings.Contains(got, `"age":41`) || !strings.Contains(got, `"age":31`) {
		t.Fatalf("MGET after the bump: %q", got)
	}
	// VERIFY samples the current version's copies only (the stale version
	// 0 copies are no longer served).
	if got := c.do("RESPITE", "VERIFY", "users"); !strings.Contains(got, "$7\r\nchecked\r\n:2\r\n$9\r\ndivergent\r\n:0\r\n") {
		t.Errorf("VERIFY users after the bump: %q", got)
	}
	// The new copy is under the tagged key; the old one still has its TTL.
	if got := rds.do("EXISTS", "user:\x00v2\x0031"); got != ":1\r\n" {
		t.Errorf("version 2 copy of user:31: %q", got)
	}
	if got := rds.do("TTL", "user:31"); got == ":-1\r\n" || got == ":-2\r\n" {
		t.Errorf("version 0 copy of user:31 has TTL %q, want it to expire", got)
	}
	// WATCH watches the new version's copy: a write by another client
	// aborts the transaction.
	other := dialRaw(t, proxy)
	c.do("WATCH", "user:31")
	if got := other.do("SET", "user:31", `{"age": 50}`); got != "+OK\r\n" {
		t.Fatalf("SET by another client: %q", got)
	}
	c.do("MULTI")
	c.do("GET", "user:31")
	if got := c.do("EXEC"); got != "*-1\r\n" {
		t.Fatalf("EXEC after a write to the watched key: %q, want an abort", got)
	}
	c.do("MULTI")
	c.do("GET", "user:31")
	if got := c.do("EXEC"); !strings.Contains(got, `"age":50`) {
		t.Fatalf("GET in MULTI after the write: %q", got)
	}
	if got, _ := p.Query("SELECT age FROM users WHERE id = 31"); got != "50" {
		t.Fatalf("row after SET: %q", got)
	}
}

// A client's key that carries a version tag itself (\x00v<N>\x00 after
// the prefix) is not canonical, at version 0 and above, whatever the key
// column's type: reads answer no row, writes are refused naming the
// canonical key, as for "user:041". It used to be passed through: GET
// read the version's copy under a second spelling, a write wrote the row
// and cached it under a key the version would never read.
func TestCacheVersionTaggedClientKeyIsNotCanonical(t *testing.T) {
	p := sharedPostgres(t)
	if err := p.Exec(`DELETE FROM users WHERE id = 451; DELETE FROM profiles WHERE id = 451;
DELETE FROM products WHERE sku = 'tag451'; DELETE FROM accounts WHERE id = 'tag451';
INSERT INTO users VALUES (451, 'Tag', NULL, 30); INSERT INTO profiles VALUES (451, 'Tag', 'Oslo');
INSERT INTO products VALUES ('tag451', 7); INSERT INTO accounts VALUES ('tag451', 100)`); err != nil {
		t.Fatal(err)
	}
	rds := dialRaw(t, redisAddr)
	rds.do("FLUSHALL")
	proxy := startRouted(t, p, func(c *config.Config) {
		for i := range c.Routes {
			switch c.Routes[i].Name {
			case "users", "stock": // int and text keys at version 1
				c.Routes[i].CacheVersion = 1
			case "profiles":
				c.Routes[i].CacheVersion = 2
			} // accounts (text key) stays at version 0
		}
	})
	c := dialRaw(t, proxy)
	if got := c.do("GET", "user:451"); !strings.Contains(got, `"age":30`) {
		t.Fatalf("GET user:451: %q", got)
	}
	if got := rds.do("EXISTS", "user:\x00v1\x00451"); got != ":1\r\n" {
		t.Fatalf("version 1 copy of user:451: %q", got)
	}
	refused := func(route, key, canonical string) string {
		return "-ERR route '" + route + "': key " + strconv.Quote(key) + " is not in canonical form; use " + strconv.Quote(canonical) + "\r\n"
	}
	// The non-canonical key the tagged one must answer like.
	if got, want := c.do("SET", "user:0451", `{"age": 5}`), refused("users", "user:0451", "user:451"); got != want {
		t.Fatalf("SET user:0451: %q, want %q", got, want)
	}
	for _, tc := range [][]string{
		{"GET", "user:\x00v1\x00451", "$-1\r\n"},
		{"GET", "user:\x00v0\x00451", "$-1\r\n"},
		{"SET", "user:\x00v1\x00451", `{"age": 5}`, refused("users", "user:\x00v1\x00451", "user:451")},
		{"SET", "user:\x00v2\x00\x00v1\x00451", `{"age": 5}`, refused("users", "user:\x00v2\x00\x00v1\x00451", "user:451")},
		{"DEL", "user:\x00v1\x00451", refused("users", "user:\x00v1\x00451", "user:451")},
		{"MGET", "user:\x00v1\x00451", "user:451", "*2\r\n$-1\r\n" + bulk(`{"id":451,"name":"Tag","email":null,"age":30}`)},
		{"EXISTS", "user:\x00v1\x00451", ":0\r\n"},
		{"HGETALL", "profile:\x00v2\x00451", "*0\r\n"},
		{"HSET", "profile:\x00v1\x00451", "city", "Rome", refused("profiles", "profile:\x00v1\x00451", "profile:451")},
		{"GET", "stock:\x00v1\x00tag451", "$-1\r\n"},
		{"SET", "stock:\x00v1\x00tag451", "5", refused("stock", "stock:\x00v1\x00tag451", "stock:tag451")},
		{"GET", "acct:\x00v1\x00tag451", "$-1\r\n"},
		{"SET", "acct:\x00v1\x00tag451", "5", refused("accounts", "acct:\x00v1\x00tag451", "acct:tag451")},
		{"INCRBY", "acct:\x00v1\x00tag451", "5", refused("accounts", "acct:\x00v1\x00tag451", "acct:tag451")},
	} {
		if got := c.do(tc[:len(tc)-1]...); got != tc[len(tc)-1] {
			t.Errorf("%q: %q, want %q", tc[:len(tc)-1], got, tc[len(tc)-1])
		}
	}
	// Inside MULTI a refused write makes EXEC fail, as for user:0451.
	c.do("MULTI")
	if got := c.do("SET", "acct:\x00v1\x00tag451", "5"); got != refused("accounts", "acct:\x00v1\x00tag451", "acct:tag451") {
		t.Errorf("SET in MULTI: %q", got)
	}
	if got := c.do("EXEC"); !strings.HasPrefix(got, "-EXECABORT") {
		t.Errorf("EXEC: %q, want EXECABORT", got)
	}
	for q, want := range map[string]string{
		"SELECT age FROM users WHERE id = 451":             "30",
		"SELECT city FROM profiles WHERE id = 451":         "Oslo",
		"SELECT stock FROM products WHERE sku = 'tag451'":  "7",
		"SELECT balance FROM accounts WHERE id = 'tag451'": "100",
	} {
		if got, err := p.Query(q); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q (nothing written)", q, got, err, want)
		}
	}
	if n, err := p.Query("SELECT count(*) FROM accounts WHERE id LIKE '%v1%'"); err != nil || n != "0" {
		t.Errorf("accounts rows with a tag in the key: %q %v", n, err)
	}
	if got := rds.do("KEYS", "*tag451*"); got != "*0\r\n" {
		t.Errorf("Redis keys of the tagged spellings: %q, want none", got)
	}
}
