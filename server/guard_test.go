package server

import (
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// The proxy's own keys are out of clients' reach: refused by name (with
// Redis' NOPERM text, and EXEC failing when one was queued), left out of
// KEYS, SCAN and RANDOMKEY, and their channels refused.
func TestReservedKeysOutOfReach(t *testing.T) {
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	proxy := startProxy(t, func(c *config.Config) { c.Upstream.Addr = r.Addr })
	d := dialRaw(t, r.Addr)
	d.do("SET", "respite:neg:user:2", "1")
	d.do("SET", "respite:wb:pv", "x")
	d.do("SET", "plain", "1")
	c := dialRaw(t, proxy)
	const noKey = "-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"
	for _, cmd := range [][]string{
		{"GET", "respite:neg:user:2"}, {"SET", "respite:neg:user:2", "1"}, {"DEL", "respite:wb:pv"},
		{"XADD", "respite:wb:pv", "*", "k", "v"}, {"MGET", "plain", "respite:neg:user:2"},
		{"EVAL", "return 1", "1", "respite:lock:x"}, {"TYPE", "respite:wb:pv"},
	} {
		if got := c.do(cmd...); got != noKey {
			t.Errorf("%v: %q", cmd, got)
		}
	}
	if got := c.do("SUBSCRIBE", "respite:invalidate"); !strings.HasPrefix(got, "-NOPERM this user has no permissions to access one of the channels") {
		t.Errorf("SUBSCRIBE respite:invalidate: %q", got)
	}
	if got := c.do("PUBLISH", "respite:invalidate", "x"); !strings.HasPrefix(got, "-NOPERM this user has no permissions to access one of the channels") {
		t.Errorf("PUBLISH respite:invalidate: %q", got)
	}
	if got := c.do("KEYS", "*"); got != "*1\r\n$5\r\nplain\r\n" {
		t.Errorf("KEYS *: %q", got)
	}
	if got := c.do("SCAN", "0", "COUNT", "100"); got != "*2\r\n$1\r\n0\r\n*1\r\n$5\r\nplain\r\n" {
		t.Errorf("SCAN: %q", got)
	}
	for i := 0; i < 20; i++ {
		if got := c.do("RANDOMKEY"); got != "$5\r\nplain\r\n" {
			t.Fatalf("RANDOMKEY: %q", got)
		}
	}
	// Queued inside MULTI: refused, and the transaction fails at EXEC.
	c.do("MULTI")
	c.do("SET", "plain", "2")
	if got := c.do("GET", "respite:wb:pv"); got != noKey {
		t.Errorf("GET in MULTI: %q", got)
	}
	if got := c.do("EXEC"); !strings.HasPrefix(got, "-EXECABORT") {
		t.Errorf("EXEC: %q", got)
	}
	if got := d.do("GET", "plain"); got != "$1\r\n1\r\n" {
		t.Errorf("the aborted transaction ran: plain = %q", got)
	}
	// In another database the prefix is nobody's.
	c.do("SELECT", "3")
	if got := c.do("SET", "respite:x", "1"); got != "+OK\r\n" {
		t.Errorf("SET respite:x in db 3: %q", got)
	}
	if got := d.do("GET", "respite:neg:user:2"); got != "$1\r\n1\r\n" {
		t.Errorf("the marker changed: %q", got)
	}
}

// With upstream credentials the client does not have, administration is
// refused with Redis' NOPERM (so CONFIG GET requirepass cannot leak the
// password), except the operator's admin_commands, and for a client with
// RESPITE AUTH rights or logged in to Redis itself.
func TestAdminCommandsNeedRights(t *testing.T) {
	r, err := testenv.StartRedis("--requirepass", "upstream-secret")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	proxy := startProxy(t, func(c *config.Config) {
		c.Upstream.Addr = r.Addr
		c.Upstream.Password = "upstream-secret"
		c.AdminPassword = "admin-pw"
		c.AdminCommands = []string{"config|resetstat", "slowlog"}
	})
	c := dialRaw(t, proxy)
	if got := c.do("SET", "k", "v"); got != "+OK\r\n" {
		t.Fatalf("SET through the proxy's credentials: %q", got)
	}
	for _, tc := range []struct{ cmd []string }{
		{[]string{"CONFIG", "GET", "requirepass"}}, {[]string{"ACL", "LIST"}}, {[]string{"CONFIG", "SET", "maxmemory", "1"}},
		{[]string{"SHUTDOWN"}}, {[]string{"ACL", "GETUSER", "default"}}, {[]string{"MONITOR"}},
	} {
		want := "-NOPERM this user has no permissions to run the '" + strings.ToLower(strings.Join(tc.cmd[:min(2, len(tc.cmd))], "|")) + "' command\r\n"
		if len(tc.cmd) == 1 {
			want = "-NOPERM this user has no permissions to run the '" + strings.ToLower(tc.cmd[0]) + "' command\r\n"
		}
		if got := c.do(tc.cmd...); got != want || strings.Contains(got, "upstream-secret") {
			t.Errorf("%v: %q, want %q", tc.cmd, got, want)
		}
	}
	// The rest of Redis' administration, each as Redis names it in NOPERM.
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"debug", []string{"DEBUG", "SLEEP", "0"}}, {"module|list", []string{"MODULE", "LIST"}},
		{"replicaof", []string{"REPLICAOF", "NO", "ONE"}}, {"slaveof", []string{"SLAVEOF", "NO", "ONE"}},
		{"failover", []string{"FAILOVER"}}, {"save", []string{"SAVE"}}, {"bgsave", []string{"BGSAVE"}},
		{"bgrewriteaof", []string{"BGREWRITEAOF"}}, {"client|pause", []string{"CLIENT", "PAUSE", "1"}},
		{"acl|setuser", []string{"ACL", "SETUSER", "x", "on", ">p", "~*", "+@all"}},
	} {
		want := "-NOPERM this user has no permissions to run the '" + tc.name + "' command\r\n"
		if got := c.do(tc.cmd...); got != want {
			t.Errorf("%v: %q, want %q", tc.cmd, got, want)
		}
	}
	for _, cmd := range [][]string{{"CONFIG", "RESETSTAT"}, {"SLOWLOG", "LEN"}, {"ACL", "WHOAMI"}} {
		if got := c.do(cmd...); strings.HasPrefix(got, "-") {
			t.Errorf("%v (allowed): %q", cmd, got)
		}
	}
	// RESPITE AUTH gives admin rights; RESET takes them away.
	c.do("RESPITE", "AUTH", "admin-pw")
	if got := c.do("CONFIG", "GET", "maxclients"); !strings.HasPrefix(got, "*2\r\n") {
		t.Errorf("CONFIG GET after RESPITE AUTH: %q", got)
	}
	c.do("RESET")
	if got := c.do("CONFIG", "GET", "maxclients"); !strings.HasPrefix(got, "-NOPERM") {
		t.Errorf("CONFIG GET after RESET: %q", got)
	}
	// A client that logs in to Redis itself has that user's rights.
	u := dialRaw(t, proxy)
	if got := u.do("AUTH", "upstream-secret"); got != "+OK\r\n" {
		t.Fatalf("AUTH: %q", got)
	}
	if got := u.do("CONFIG", "GET", "requirepass"); got != "*2\r\n$11\r\nrequirepass\r\n$15\r\nupstream-secret\r\n" {
		t.Errorf("CONFIG GET as the upstream's default user: %q", got)
	}
	// Without upstream credentials, administration passes as on Redis.
	open := startProxy(t, nil)
	if got := dialRaw(t, open).do("CONFIG", "GET", "maxclients"); !strings.HasPrefix(got, "*2\r\n") {
		t.Errorf("CONFIG GET without upstream credentials: %q", got)
	}
}

// FLUSHALL while write-back routes queue writes: refused while a queue
// holds entries not yet in PostgreSQL (sent from any database), else the
// keyspace is flushed and the queues go on (their stream and consumer
// group are recreated).
func TestFlushallKeepsWriteBackQueue(t *testing.T) {
	pg := sharedPostgres(t)
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	proxy := startProxy(t, func(c *config.Config) {
		c.Upstream.Addr = r.Addr
		c.Postgres.DSN = pg.DSN
		c.Routes = []config.Route{{Name: "fpv", Prefix: "fpv:", Policy: config.WriteBack, Table: "page_views", KeyColumn: "page_id", Format: config.FormatValue, ValueColumn: "views", FlushInterval: config.Duration(time.Hour)}}
		if err := fillDefaults(c); err != nil {
			t.Fatal(err)
		}
	})
	c := dialRaw(t, proxy)
	c.do("SET", "plain", "1")
	if got := c.do("INCR", "fpv:flush-test"); got != ":1\r\n" {
		t.Fatalf("INCR: %q", got)
	}
	if got := c.do("FLUSHALL"); !strings.HasPrefix(got, "-ERR FLUSHALL refused: write-back queue respite:wb:fpv holds 1 entries") {
		t.Fatalf("FLUSHALL with a queued write: %q", got)
	}
	if got := dialRaw(t, r.Addr).do("EXISTS", "plain"); got != ":1\r\n" {
		t.Fatalf("the refused FLUSHALL flushed: %q", got)
	}
	// From another database FLUSHALL empties the proxy's too: refused
	// alike. MOVE and COPY into the proxy's keys from there are refused,
	// and SWAPDB of its database.
	o := dialRaw(t, proxy)
	o.do("SELECT", "3")
	if got := o.do("FLUSHALL"); !strings.HasPrefix(got, "-ERR FLUSHALL refused: write-back queue respite:wb:fpv holds 1 entries") {
		t.Fatalf("FLUSHALL from database 3 with a queued write: %q", got)
	}
	if got := dialRaw(t, r.Addr).do("XLEN", "respite:wb:fpv"); got != ":1\r\n" {
		t.Fatalf("FLUSHALL from database 3 dropped the queued write: XLEN %q", got)
	}
	o.do("SET", "respite:neg:fpv:9", "1")
	for _, cmd := range [][]string{{"MOVE", "respite:neg:fpv:9", "0"}, {"COPY", "respite:neg:fpv:9", "respite:neg:fpv:8", "DB", "0"}} {
		if got := o.do(cmd...); !strings.HasPrefix(got, "-NOPERM") {
			t.Errorf("%v from database 3: %q, want NOPERM", cmd, got)
		}
	}
	if got := dialRaw(t, r.Addr).do("EXISTS", "respite:neg:fpv:9", "respite:neg:fpv:8"); got != ":0\r\n" {
		t.Errorf("a client wrote the proxy's keys from database 3: EXISTS %q", got)
	}
	for _, c := range [][]string{{"SWAPDB", "3", "0"}} {
		if got := o.do(c...); !strings.HasPrefix(got, "-ERR SWAPDB of the proxy's database") {
			t.Errorf("%v: %q", c, got)
		}
	}
	if got := c.do("SWAPDB", "0", "3"); !strings.HasPrefix(got, "-ERR SWAPDB of the proxy's database") {
		t.Errorf("SWAPDB 0 3: %q", got)
	}
	if got := c.do("SWAPDB", "3", "4"); got != "+OK\r\n" {
		t.Errorf("SWAPDB 3 4: %q", got)
	}
	if got := c.do("RESPITE", "FLUSH"); got != "+OK\r\n" {
		t.Fatalf("RESPITE FLUSH: %q", got)
	}
	waitViews(t, pg, "flush-test", "1")
	if got := c.do("FLUSHALL"); got != "+OK\r\n" {
		t.Fatalf("FLUSHALL with empty queues: %q", got)
	}
	d := dialRaw(t, r.Addr)
	if got := d.do("EXISTS", "plain"); got != ":0\r\n" {
		t.Errorf("FLUSHALL did not flush: %q", got)
	}
	if got := d.do("XINFO", "GROUPS", "respite:wb:fpv"); !strings.Contains(got, "respite") {
		t.Errorf("the queue's consumer group is gone: %q", got)
	}
	// The queue works on: a new write is acknowledged and flushed.
	if got := c.do("INCR", "fpv:flush-test"); got != ":2\r\n" {
		t.Fatalf("INCR after FLUSHALL: %q", got)
	}
	if got := c.do("RESPITE", "FLUSH"); got != "+OK\r\n" {
		t.Fatalf("RESPITE FLUSH: %q", got)
	}
	waitViews(t, pg, "flush-test", "2")
}

// waitViews waits (5 s at most) until page_views holds views for page: a
// flush that another pass had in hand commits a moment later.
func waitViews(t *testing.T, pg *testenv.Postgres, page, views string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := pg.Query("SELECT views FROM page_views WHERE page_id = '" + page + "'")
		if strings.TrimSpace(got) == views {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("page_views[%s] = %q, want %s", page, got, views)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
