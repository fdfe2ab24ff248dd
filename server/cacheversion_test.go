package server

import (
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
	next := *cfg
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
