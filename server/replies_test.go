package server

import (
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
)

// Replies on routed keys are worded as Redis words them: the same
// commands on a plain key of a real redis-server and on a key of each
// policy's route give the same bytes (SET's and SETEX's expiry errors in
// Redis' order of checks, INCRBY's overflow without a script's sha, TYPE
// as the format presents the row, GETSET and SET ... GET on write-back
// too), outside and inside MULTI.
func TestRoutedRepliesAsRedis(t *testing.T) {
	p := sharedPostgres(t)
	if err := p.Exec(`DROP TABLE IF EXISTS counters, notes;
CREATE TABLE counters (k text PRIMARY KEY, v bigint NOT NULL);
CREATE TABLE notes (id int PRIMARY KEY, title text);
INSERT INTO notes VALUES (1, 'hello');`); err != nil {
		t.Fatal(err)
	}
	rds := dialRaw(t, redisAddr)
	rds.do("FLUSHALL")
	proxy := startRouted(t, p, func(c *config.Config) {
		c.Routes = append(c.Routes,
			config.Route{Name: "ca", Prefix: "ca:", Policy: config.CacheAside, Table: "counters", KeyColumn: "k", Format: config.FormatValue, ValueColumn: "v"},
			config.Route{Name: "wt", Prefix: "wt:", Policy: config.WriteThrough, Table: "counters", KeyColumn: "k", Format: config.FormatValue, ValueColumn: "v"},
			config.Route{Name: "wb", Prefix: "wb:", Policy: config.WriteBack, Table: "counters", KeyColumn: "k", Format: config.FormatValue, ValueColumn: "v"},
			config.Route{Name: "nh", Prefix: "nh:", Policy: config.WriteBack, Table: "notes", KeyColumn: "id", Format: config.FormatHash},
			config.Route{Name: "nj", Prefix: "nj:", Policy: config.WriteThrough, Table: "notes", KeyColumn: "id", Format: config.FormatJSON},
		)
	})
	c := dialRaw(t, proxy)
	const max = "9223372036854775807"
	script := [][]string{
		{"SET", "K", "10", "EX", "abc"},
		{"SET", "K", "10", "EX", "0"},
		{"SET", "K", "10", "PX", "-5"},
		{"SET", "K", "10", "EX", "99999999999999999"},
		{"SET", "K", "10", "EX", "abc", "NX", "XX"}, // options first: a syntax error
		{"SET", "K", "10", "EX", "10", "PX", "10"},
		{"SET", "K", "10", "KEEPTTL", "EX", "10"},
		{"SET", "K", "10", "EX"},
		{"SET", "K", "10", "BOGUS"},
		{"TYPE", "K"},
		{"SET", "K", max, "EX", "100", "EX", "200"},
		{"INCRBY", "K", "1"},
		{"INCR", "K"},
		{"DECRBY", "K", "-1"},
		{"INCRBY", "K", "abc"},
		{"TYPE", "K"},
		{"GETSET", "K", "5"},
		{"SET", "K", "6", "GET"},
		{"GET", "K"},
		{"GETSET", "K"},
	}
	for _, key := range []string{"ca:a", "wt:b", "wb:c"} {
		for _, cmd := range script {
			routed := replaceKey(cmd, key)
			plain := replaceKey(cmd, "plain:"+key)
			want, got := rds.do(plain...), c.do(routed...)
			if got != want {
				t.Errorf("%v: proxy %q, redis-server %q", routed, got, want)
			}
		}
	}
	// Inside MULTI: the overflow is EXEC's element as Redis words it.
	for _, prefix := range []string{"wt:", "wb:"} {
		for _, conn := range []struct {
			c   *rawConn
			key string
		}{{c, prefix + "m1"}, {rds, "plain:" + prefix + "m1"}} {
			conn.c.do("SET", conn.key, max)
		}
		var replies [2]string
		for i, conn := range []struct {
			c   *rawConn
			key string
		}{{c, prefix + "m1"}, {rds, "plain:" + prefix + "m1"}} {
			conn.c.do("MULTI")
			conn.c.do("TYPE", conn.key)
			conn.c.do("INCRBY", conn.key, "1")
			conn.c.do("GETSET", conn.key, "3")
			replies[i] = conn.c.do("EXEC")
		}
		if replies[0] != replies[1] {
			t.Errorf("%s MULTI TYPE, INCRBY overflow, GETSET: proxy %q, redis-server %q", prefix, replies[0], replies[1])
		}
	}
	// A read after a write of the same key in one MULTI sees the write.
	for _, key := range []string{"ca:ra", "wt:rb", "wb:rc"} {
		var replies [2]string
		for i, conn := range []struct {
			c   *rawConn
			key string
		}{{c, key}, {rds, "plain:" + key}} {
			conn.c.do("MULTI")
			conn.c.do("GET", conn.key)
			conn.c.do("SET", conn.key, "7")
			conn.c.do("GET", conn.key)
			conn.c.do("INCR", conn.key)
			conn.c.do("GET", conn.key)
			conn.c.do("TYPE", conn.key)
			replies[i] = conn.c.do("EXEC")
		}
		if replies[0] != replies[1] {
			t.Errorf("%s MULTI GET, SET, GET, INCR, GET, TYPE: proxy %q, redis-server %q", key, replies[0], replies[1])
		}
	}
	// The same on a hash route (cache-aside): the row as PostgreSQL has
	// it inside the transaction, key column included.
	p.Exec("DELETE FROM profiles WHERE id = 5")
	c.do("MULTI")
	c.do("HGET", "profile:5", "name")
	c.do("HSET", "profile:5", "name", "x")
	c.do("HGET", "profile:5", "name")
	c.do("HGETALL", "profile:5")
	c.do("EXISTS", "profile:5")
	if got, want := c.do("EXEC"), "*5\r\n$-1\r\n:1\r\n$1\r\nx\r\n*4\r\n$2\r\nid\r\n$1\r\n5\r\n$4\r\nname\r\n$1\r\nx\r\n:1\r\n"; got != want {
		t.Errorf("MULTI on a hash route: %q, want %q", got, want)
	}
	// SETEX's expiry (json routes serve it).
	for _, cmd := range [][]string{{"SETEX", "K", "abc", `{"title":"x"}`}, {"SETEX", "K", "0", `{"title":"x"}`}, {"SETEX", "K", "-3", `{"title":"x"}`}} {
		if got, want := c.do(replaceKey(cmd, "nj:5")...), rds.do(replaceKey(cmd, "plain:nj:5")...); got != want {
			t.Errorf("%v: proxy %q, redis-server %q", cmd, got, want)
		}
	}
	// TYPE as the format presents the row: a hash, a string (JSON), none.
	rds.do("HSET", "plain:h", "id", "1", "title", "hello")
	rds.do("SET", "plain:j", `{"id":1,"title":"hello"}`)
	for _, tc := range [][2]string{{"nh:1", "plain:h"}, {"nj:1", "plain:j"}, {"nh:2", "plain:none"}, {"nj:2", "plain:none"}} {
		if got, want := c.do("TYPE", tc[0]), rds.do("TYPE", tc[1]); got != want {
			t.Errorf("TYPE %s: proxy %q, redis-server %q", tc[0], got, want)
		}
	}
	// The value GETSET wrote on write-back reaches PostgreSQL.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := p.Query("SELECT v FROM counters WHERE k = 'c'")
		if err == nil && got == "6" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write-back row c: %q %v, want 6", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// replaceKey is cmd with its key (the argument "K") named key.
func replaceKey(cmd []string, key string) []string {
	out := append([]string(nil), cmd...)
	if len(out) > 1 && out[1] == "K" {
		out[1] = key
	}
	return out
}
