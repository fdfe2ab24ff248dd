package server

import (
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// Brief §8, upstream Redis down: cache-aside reads are served from
// PostgreSQL, write-through refuses writes, write-back refuses new writes
// (its queue is unreachable), plain keys get a clear error; all recover.
func TestRedisDownWithRoutes(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM users; DELETE FROM products; INSERT INTO users VALUES (11, 'Leslie', NULL, 50); INSERT INTO products VALUES ('fig', 7)")
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	proxy := startRouted(t, p, func(c *config.Config) {
		c.Upstream.Addr = r.Addr
		c.Upstream.DialTimeout = config.Duration(300 * time.Millisecond)
		c.Upstream.Timeout = config.Duration(time.Second)
	})
	c := dialRaw(t, proxy)
	r.Kill()
	if got := c.do("GET", "user:11"); !strings.Contains(got, "Leslie") {
		t.Fatalf("cache-aside read with Redis down: %q", got)
	}
	if got := c.do("SET", "stock:fig", "6"); !strings.HasPrefix(got, "-ERR route 'stock': upstream redis unavailable: ") {
		t.Fatalf("write-through write with Redis down: %q, want the route and the server that failed", got)
	}
	if got, _ := p.Query("SELECT stock FROM products WHERE sku = 'fig'"); got != "7" {
		t.Fatalf("a refused write-through write reached PostgreSQL: %q", got)
	}
	if got := c.do("INCR", "pv:down"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("write-back write with Redis down: %q", got)
	}
	if got := c.do("GET", "plain"); !strings.HasPrefix(got, "-ERR upstream unavailable") {
		t.Fatalf("plain key with Redis down: %q", got)
	}
	// The queue's length cannot be read: an error, not length 0.
	if got := c.do("RESPITE", "QUEUE"); !strings.HasPrefix(got, "-ERR write-back queue of route 'pv' cannot be read") {
		t.Fatalf("RESPITE QUEUE with Redis down: %q", got)
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got := c.do("SET", "stock:fig", "6"); got == "+OK\r\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("write-through did not recover after Redis came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := c.do("RESPITE", "QUEUE"); !strings.Contains(got, "$6\r\nlength\r\n") {
		t.Fatalf("RESPITE QUEUE after Redis came back: %q", got)
	}
}

// Brief §8, PostgreSQL down: hits are served, misses get an error, the
// connection survives.
func TestPostgresDownHitsServedMissesError(t *testing.T) {
	p, err := testenv.StartPostgres()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if err := p.Exec(schema + "INSERT INTO users VALUES (12, 'Butler', NULL, 40), (13, 'Tony', NULL, 41);"); err != nil {
		t.Fatal(err)
	}
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	c := dialRaw(t, proxy)
	c.do("GET", "user:12")
	p.Halt()
	if got := c.do("GET", "user:12"); !strings.Contains(got, "Butler") {
		t.Fatalf("hit with PostgreSQL down: %q", got)
	}
	if got := c.do("GET", "user:13"); !strings.HasPrefix(got, "-ERR route 'users'") {
		t.Fatalf("miss with PostgreSQL down: %q", got)
	}
	if got := c.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("connection after a failed miss: %q", got)
	}
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got := c.do("GET", "user:13"); strings.Contains(got, "Tony") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("misses did not recover after PostgreSQL came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Brief §8, client disconnects while subscribed: the upstream subscriber
// connection is closed, nothing stays subscribed.
func TestDisconnectWhileSubscribed(t *testing.T) {
	proxy := startProxy(t, nil)
	d := dialRaw(t, redisAddr)
	before := d.do("PUBSUB", "NUMSUB", "gone-chan")
	c := dialRaw(t, proxy)
	c.do("SUBSCRIBE", "gone-chan")
	if got := d.do("PUBSUB", "NUMSUB", "gone-chan"); got == before {
		t.Fatalf("no upstream subscriber while subscribed: %q", got)
	}
	c.c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got := d.do("PUBSUB", "NUMSUB", "gone-chan"); got == "*2\r\n$9\r\ngone-chan\r\n:0\r\n" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream still subscribed after the client left: %q", d.do("PUBSUB", "NUMSUB", "gone-chan"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
