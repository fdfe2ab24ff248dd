package server

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// The scripts that poison the proxy's bookkeeping: a negative marker
// (user:2 would read as absent) and an entry of a write-back queue
// (which the flusher would write to PostgreSQL).
const (
	poisonNeg    = "return redis.call('SET','respite:neg:user:2','1')"
	poisonStream = "return redis.call('XADD','respite:wb:pv','*','k','pv:evil','v','999')"
	scriptDenied = "-ERR The user executing the script can't access at least one of the keys mentioned in the command arguments"
)

// startGuarded runs a proxy with routes in front of a Redis of the
// test's own, and returns the proxy's address and a direct connection to
// that Redis.
func startGuarded(t *testing.T, edit func(*config.Config)) (string, *rawConn, *testenv.Redis) {
	t.Helper()
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	proxy := startRouted(t, sharedPostgres(t), func(c *config.Config) {
		c.Upstream.Addr = r.Addr
		if edit != nil {
			edit(c)
		}
	})
	return proxy, dialRaw(t, r.Addr), r
}

// untouched checks, on Redis directly, that no script wrote the proxy's
// keys: no marker for user:2, the queue as long as before.
func untouched(t *testing.T, d *rawConn, queueLen string) {
	t.Helper()
	if got := d.do("EXISTS", "respite:neg:user:2"); got != ":0\r\n" {
		t.Errorf("a script wrote respite:neg:user:2: EXISTS %q", got)
	}
	if got := d.do("XLEN", "respite:wb:pv"); got != queueLen {
		t.Errorf("a script appended to respite:wb:pv: XLEN %q, want %q", got, queueLen)
	}
}

// With routes, a Lua script cannot write the proxy's keys, whatever it
// computes: EVAL, EVALSHA and FCALL, alone and inside MULTI, get Redis'
// own refusal and nothing changes in Redis; scripts on plain keys (the
// empty key too) and on the cached copies of routed keys still work, and
// ACL WHOAMI and CLIENT LIST still name the user Redis would.
func TestScriptsCannotWriteProxyKeys(t *testing.T) {
	proxy, d, _ := startGuarded(t, nil)
	c := dialRaw(t, proxy)
	if got := c.do("INCR", "pv:lua"); !strings.HasPrefix(got, ":") {
		t.Fatalf("INCR pv:lua: %q", got) // creates the queue
	}
	qlen := d.do("XLEN", "respite:wb:pv")
	for _, src := range []string{poisonNeg, poisonStream} {
		if got := c.do("EVAL", src, "0"); !strings.HasPrefix(got, scriptDenied) {
			t.Errorf("EVAL %s: %q, want %q...", src, got, scriptDenied)
		}
		sha := strings.TrimSuffix(strings.SplitN(c.do("SCRIPT", "LOAD", src), "\r\n", 3)[1], "\r\n")
		if got := c.do("EVALSHA", sha, "0"); !strings.HasPrefix(got, scriptDenied) {
			t.Errorf("EVALSHA of %s: %q", src, got)
		}
	}
	lib := "#!lua name=poison\nredis.register_function('poison_neg', function() " + poisonNeg + " end)\n" +
		"redis.register_function('poison_wb', function() " + poisonStream + " end)"
	if got := c.do("FUNCTION", "LOAD", lib); got != "$6\r\npoison\r\n" {
		t.Fatalf("FUNCTION LOAD: %q", got)
	}
	for _, f := range []string{"poison_neg", "poison_wb"} {
		if got := c.do("FCALL", f, "0"); !strings.HasPrefix(got, scriptDenied) {
			t.Errorf("FCALL %s: %q", f, got)
		}
	}
	// Declared, the key is refused by the proxy, as before.
	if got := c.do("EVAL", "return 1", "1", "respite:neg:user:2"); !strings.HasPrefix(got, "-NOPERM") {
		t.Errorf("EVAL with respite:neg:user:2 in KEYS: %q", got)
	}
	// Inside MULTI: the script's element of EXEC's reply is the refusal.
	c.do("MULTI")
	c.do("EVAL", poisonNeg, "0")
	c.do("FCALL", "poison_wb", "0")
	c.do("SET", "plain:tx", "1")
	if got := c.do("EXEC"); !strings.HasPrefix(got, "*3\r\n"+scriptDenied) || !strings.HasSuffix(got, "+OK\r\n") || strings.Count(got, scriptDenied) != 2 {
		t.Errorf("EXEC: %q", got)
	}
	untouched(t, d, qlen)

	// Plain keys, the empty key, and the cached copies of routed keys.
	if got := c.do("EVAL", "return redis.call('SET','plain:lua',ARGV[1])", "0", "v"); got != "+OK\r\n" {
		t.Errorf("EVAL on a plain key: %q", got)
	}
	if got := c.do("EVAL", "redis.call('SET','',ARGV[1]) return redis.call('GET','')", "0", "e"); got != "$1\r\ne\r\n" {
		t.Errorf("EVAL on the empty key: %q", got)
	}
	for _, k := range []string{"r", "respite", "respitex", "Respite:x", "re:x"} {
		if got := c.do("EVAL", "return redis.call('SET',KEYS[1],'1')", "1", k); got != "+OK\r\n" {
			t.Errorf("EVAL SET %q: %q", k, got)
		}
	}
	sharedPostgres(t).Exec("INSERT INTO users VALUES (41, 'Lua', NULL, 1) ON CONFLICT (id) DO NOTHING")
	if got := c.do("GET", "user:41"); !strings.Contains(got, `"Lua"`) {
		t.Fatalf("GET user:41: %q", got)
	}
	if got := c.do("EVAL", "return redis.call('GET','user:41')", "0"); !strings.Contains(got, `"Lua"`) {
		t.Errorf("EVAL reading the cached copy of user:41: %q", got)
	}
	if got := d.do("GET", "plain:lua"); got != "$1\r\nv\r\n" {
		t.Errorf("plain:lua in Redis: %q", got)
	}

	// The user clients see is the one Redis would name.
	if got := c.do("ACL", "WHOAMI"); got != "$7\r\ndefault\r\n" {
		t.Errorf("ACL WHOAMI: %q", got)
	}
	c.do("MULTI")
	c.do("ACL", "WHOAMI")
	if got := c.do("EXEC"); got != "*1\r\n$7\r\ndefault\r\n" {
		t.Errorf("ACL WHOAMI in MULTI: %q", got)
	}
	if got := c.do("CLIENT", "INFO"); !strings.Contains(got, " user=default ") {
		t.Errorf("CLIENT INFO: %q", got)
	}
	// On Redis, the clients' connections log in as the restricted user.
	if got := d.do("ACL", "DRYRUN", "respite-client", "SET", "respite:neg:x", "1"); !strings.HasPrefix(got, "$") || !strings.Contains(got, "no permissions") {
		t.Errorf("ACL DRYRUN respite-client SET respite:neg:x: %q", got)
	}
	if got := d.do("ACL", "DRYRUN", "respite-client", "SET", "user:1", "1"); got != "+OK\r\n" {
		t.Errorf("ACL DRYRUN respite-client SET user:1: %q", got)
	}
	if got := d.do("CLIENT", "LIST"); !strings.Contains(got, "user=respite-client") {
		t.Errorf("no connection of Redis logs in as respite-client: %q", got)
	}
	untouched(t, d, qlen)
}

// Write-back writes queued in a client's MULTI run as the operator's user
// (between two AUTHs the proxy queues and takes out of EXEC's reply): the
// reply is the one without the restriction, the queue gets the entry, and
// a script later in the same transaction, or after it, or after RESET, is
// still refused.
func TestWriteBackInMultiWithRestrictedUser(t *testing.T) {
	proxy, d, _ := startGuarded(t, nil)
	for _, proto := range []string{"2", "3"} {
		c := dialRaw(t, proxy)
		if proto == "3" {
			c.do("HELLO", "3")
		}
		c.do("SET", "pv:multi"+proto, "5") // cached, queued
		qlen := d.do("XLEN", "respite:wb:pv")
		c.do("MULTI")
		c.do("INCR", "pv:multi"+proto)
		c.do("SET", "plain:m", "x")
		c.do("EVAL", poisonNeg, "0")
		c.do("INCRBY", "pv:multi"+proto, "10")
		c.do("GET", "plain:m")
		got := c.do("EXEC")
		want := "*5\r\n:6\r\n+OK\r\n" + scriptDenied
		if !strings.HasPrefix(got, want) || !strings.HasSuffix(got, ":16\r\n$1\r\nx\r\n") {
			t.Errorf("RESP%s EXEC: %q, want %q ... :16 $1 x", proto, got, want)
		}
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(qlen, ":"), "\r\n"))
		if after := d.do("XLEN", "respite:wb:pv"); after != ":"+strconv.Itoa(n+2)+"\r\n" {
			t.Errorf("RESP%s: XLEN respite:wb:pv %q after %q, want two more entries", proto, after, qlen)
		}
		if got := c.do("EVAL", poisonNeg, "0"); !strings.HasPrefix(got, scriptDenied) {
			t.Errorf("RESP%s: EVAL after the EXEC: %q", proto, got)
		}
		if got := c.do("ACL", "WHOAMI"); !strings.Contains(got, "default") {
			t.Errorf("RESP%s: ACL WHOAMI after the EXEC: %q", proto, got)
		}
		// A WATCH pins the session; RESET gives the connection back,
		// logged in as the restricted user again.
		c.do("WATCH", "plain:m")
		if got := c.do("RESET"); got != "+RESET\r\n" {
			t.Fatalf("RESET: %q", got)
		}
		if got := c.do("EVAL", poisonNeg, "0"); !strings.HasPrefix(got, scriptDenied) {
			t.Errorf("RESP%s: EVAL after RESET: %q", proto, got)
		}
		c.do("SELECT", "0")
		c.do("WATCH", "plain:m")
		if got := c.do("EVAL", poisonStream, "0"); !strings.HasPrefix(got, scriptDenied) {
			t.Errorf("RESP%s: EVAL on a pinned connection: %q", proto, got)
		}
	}
	if got := d.do("EXISTS", "respite:neg:user:2"); got != ":0\r\n" {
		t.Errorf("a script wrote respite:neg:user:2: %q", got)
	}
}

// A client that logs in to Redis as a user of its own gets that user's
// rights, as before: here one with every key.
func TestOwnUserKeepsItsRights(t *testing.T) {
	proxy, d, _ := startGuarded(t, nil)
	d.do("ACL", "SETUSER", "app", "on", ">apppw", "~*", "&*", "+@all")
	c := dialRaw(t, proxy)
	if got := c.do("AUTH", "app", "apppw"); got != "+OK\r\n" {
		t.Fatalf("AUTH app: %q", got)
	}
	if got := c.do("ACL", "WHOAMI"); got != "$3\r\napp\r\n" {
		t.Errorf("ACL WHOAMI as app: %q", got)
	}
	if got := c.do("EVAL", "return redis.call('SET','respite:app','1')", "0"); got != "+OK\r\n" {
		t.Errorf("EVAL as app: %q", got)
	}
	h := dialRaw(t, proxy)
	if got := h.do("HELLO", "3", "AUTH", "app", "apppw"); !strings.HasPrefix(got, "%") {
		t.Fatalf("HELLO 3 AUTH app: %q", got)
	}
	if got := h.do("ACL", "WHOAMI"); got != "$3\r\napp\r\n" {
		t.Errorf("ACL WHOAMI after HELLO AUTH app: %q", got)
	}
	if got := h.do("RESET"); got != "+RESET\r\n" {
		t.Fatalf("RESET: %q", got)
	}
	if got := h.do("EVAL", poisonNeg, "0"); !strings.HasPrefix(got, scriptDenied) {
		t.Errorf("EVAL after RESET of app's session: %q", got)
	}
}

// Redis forgetting the restricted user (a restart without an ACL file, a
// failover to a replica, ACL DELUSER) is healed: the proxy creates it
// again on the next connection.
func TestClientUserCreatedAgain(t *testing.T) {
	proxy, d, _ := startGuarded(t, nil)
	c := dialRaw(t, proxy)
	if got := c.do("SET", "plain:h", "1"); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	if got := d.do("ACL", "DELUSER", "respite-client"); got != ":1\r\n" {
		t.Fatalf("ACL DELUSER: %q", got)
	}
	if got := doUntil(c, "$1\r\n1\r\n", 5*time.Second, "GET", "plain:h"); got != "$1\r\n1\r\n" {
		t.Fatalf("GET after ACL DELUSER: %q", got)
	}
	if got := c.do("EVAL", poisonNeg, "0"); !strings.HasPrefix(got, scriptDenied) {
		t.Errorf("EVAL after the user was created again: %q", got)
	}
	p := dialRaw(t, proxy)
	p.do("MULTI")
	if got := p.do("EVAL", poisonNeg, "0"); got != "+QUEUED\r\n" {
		t.Fatalf("EVAL in MULTI: %q", got)
	}
	if got := p.do("EXEC"); !strings.HasPrefix(got, "*1\r\n"+scriptDenied) {
		t.Errorf("EXEC on a new pinned connection: %q", got)
	}
}

// An operator-made user (upstream.client_user) is used when it passes
// the check; an operator's user that may not run ACL SETUSER, or a
// client_user that can reach respite:*, leaves the proxy working as
// before (with a warning).
func TestClientUserConfigured(t *testing.T) {
	t.Run("operator-made", func(t *testing.T) {
		r, err := testenv.StartRedis()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		d := dialRaw(t, r.Addr)
		args := append([]string{"ACL", "SETUSER", "apps", "on", ">appspw"}, patternsForTest()...)
		if got := d.do(append(args, "&*", "+@all")...); got != "+OK\r\n" {
			t.Fatalf("ACL SETUSER apps: %q", got)
		}
		proxy := startRouted(t, sharedPostgres(t), func(c *config.Config) {
			c.Upstream.Addr = r.Addr
			c.Upstream.ClientUser, c.Upstream.ClientPassword = "apps", "appspw"
		})
		c := dialRaw(t, proxy)
		if got := c.do("EVAL", poisonNeg, "0"); !strings.HasPrefix(got, scriptDenied) {
			t.Errorf("EVAL: %q", got)
		}
		if got := c.do("INCR", "pv:apps"); !strings.HasPrefix(got, ":") {
			t.Errorf("INCR pv:apps: %q", got)
		}
		if got := d.do("ACL", "GETUSER", "respite-client"); got != "*-1\r\n" && got != "$-1\r\n" {
			t.Errorf("the proxy created respite-client although client_user is set: %q", got)
		}
		if got := d.do("CLIENT", "LIST"); !strings.Contains(got, "user=apps") {
			t.Errorf("no connection logs in as apps: %q", got)
		}
	})
	for name, edit := range map[string]func(d *rawConn, c *config.Config){
		"operator without ACL SETUSER": func(d *rawConn, c *config.Config) {
			d.do("ACL", "SETUSER", "op", "on", ">oppw", "~*", "&*", "+@all", "-acl")
			c.Upstream.Username, c.Upstream.Password = "op", "oppw"
		},
		"client_user with every key": func(d *rawConn, c *config.Config) {
			d.do("ACL", "SETUSER", "wide", "on", ">widepw", "~*", "&*", "+@all")
			c.Upstream.ClientUser, c.Upstream.ClientPassword = "wide", "widepw"
		},
		"client_user that cannot log in": func(d *rawConn, c *config.Config) {
			c.Upstream.ClientUser, c.Upstream.ClientPassword = "nobody", "x"
		},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := testenv.StartRedis()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(r.Stop)
			d := dialRaw(t, r.Addr)
			proxy := startRouted(t, sharedPostgres(t), func(c *config.Config) {
				c.Upstream.Addr = r.Addr
				edit(d, c)
			})
			c := dialRaw(t, proxy)
			if got := c.do("SET", "plain:f", "1"); got != "+OK\r\n" {
				t.Errorf("SET: %q", got)
			}
			if got := c.do("INCR", "pv:fallback"); !strings.HasPrefix(got, ":") {
				t.Errorf("INCR pv:fallback: %q", got)
			}
			if got := c.do("ACL", "WHOAMI"); strings.Contains(got, "respite-client") {
				t.Errorf("ACL WHOAMI: %q", got)
			}
		})
	}
}

// patternsForTest are the key patterns of every key but respite:*, as an
// operator would write them for upstream.client_user.
func patternsForTest() []string {
	return []string{"~[^r]*", "~r[^e]*", "~re[^s]*", "~res[^p]*", "~resp[^i]*", "~respi[^t]*", "~respit[^e]*", "~respite[^:]*",
		"~", "~r", "~re", "~res", "~resp", "~respi", "~respit", "~respite"}
}

// SORT's BY and GET patterns, which Redis allows only a user with every
// key: through the proxy they work as before on plain keys (on the
// proxy's own connections), and a pattern that may name a key of the
// proxy's is refused.
func TestSortPatternsWithRestrictedUser(t *testing.T) {
	proxy, d, _ := startGuarded(t, nil)
	d.do("RPUSH", "sl", "2", "1", "3")
	d.do("MSET", "w_1", "30", "w_2", "20", "w_3", "10", "o:1", "one", "o:2", "two", "o:3", "three")
	d.do("SET", "respite:neg:1", "leak")
	c := dialRaw(t, proxy)
	want := d.do("SORT", "sl", "BY", "w_*", "GET", "o:*", "GET", "#")
	if got := c.do("SORT", "sl", "BY", "w_*", "GET", "o:*", "GET", "#"); got != want {
		t.Errorf("SORT BY GET: %q, want Redis' %q", got, want)
	}
	if got := c.do("SORT_RO", "sl", "BY", "w_*"); got != d.do("SORT_RO", "sl", "BY", "w_*") {
		t.Errorf("SORT_RO BY: %q", got)
	}
	for _, pat := range []string{"*", "respite:neg:*", "resp*"} {
		if got := c.do("SORT", "sl", "GET", pat); !strings.HasPrefix(got, "-NOPERM") {
			t.Errorf("SORT GET %s: %q, want NOPERM", pat, got)
		}
	}
	if got := c.do("SORT", "sl", "BY", "w_*", "STORE", "respite:neg:2"); !strings.HasPrefix(got, "-NOPERM") {
		t.Errorf("SORT STORE respite:neg:2: %q", got)
	}
}

// On a Sentinel upstream the restricted user follows the primary: ACL
// users are not replicated, so after SENTINEL FAILOVER the proxy creates
// it on the new primary when a client's connection finds it missing, and
// scripts are refused there too.
func TestClientUserFollowsFailover(t *testing.T) {
	p := sharedPostgres(t)
	s, err := testenv.StartSentinel()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	proxy := startRouted(t, p, func(c *config.Config) { sentinelUpstream(c, s) })
	c := dialRaw(t, proxy)
	if got := c.do("EVAL", poisonNeg, "0"); !strings.HasPrefix(got, scriptDenied) {
		t.Errorf("EVAL before the failover: %q", got)
	}
	replica, err := s.Replica()
	if err != nil {
		t.Fatal(err)
	}
	if got := dialRaw(t, replica.Addr).do("ACL", "GETUSER", "respite-client"); got != "$-1\r\n" && got != "*-1\r\n" {
		t.Fatalf("the replica knows respite-client before the failover: %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Failover(ctx); err != nil {
		t.Fatal(err)
	}
	if got := doUntil(c, "+OK\r\n", 10*time.Second, "SET", "plain:fo", "1"); got != "+OK\r\n" {
		t.Fatalf("SET after the failover: %q", got)
	}
	if got := c.do("EVAL", poisonNeg, "0"); !strings.HasPrefix(got, scriptDenied) {
		t.Errorf("EVAL after the failover: %q", got)
	}
	primary, err := s.PrimaryAddr()
	if err != nil {
		t.Fatal(err)
	}
	d := dialRaw(t, primary)
	if got := d.do("EXISTS", "respite:neg:user:2"); got != ":0\r\n" {
		t.Errorf("a script wrote respite:neg:user:2 on the new primary: %q", got)
	}
	if got := d.do("ACL", "DRYRUN", "respite-client", "SET", "user:1", "1"); got != "+OK\r\n" {
		t.Errorf("respite-client on the new primary: %q", got)
	}
}

// doUntil sends args until the reply is want, for at most d, and returns
// the last reply.
func doUntil(c *rawConn, want string, d time.Duration, args ...string) string {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := c.do(args...)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A script cannot flush or swap the proxy's database (a FLUSHALL in EVAL
// dropped acknowledged write-back writes still queued): the restricted
// user has no FLUSHALL, FLUSHDB or SWAPDB, so Redis refuses them inside
// EVAL, alone or in MULTI, and nothing is flushed. Sent as commands they
// still work, carried by the route layer on the proxy's own connections.
func TestScriptsCannotFlush(t *testing.T) {
	proxy, d, _ := startGuarded(t, nil)
	c := dialRaw(t, proxy)
	if got := c.do("INCR", "pv:flush"); !strings.HasPrefix(got, ":") {
		t.Fatalf("INCR pv:flush: %q", got)
	}
	d.do("SET", "plain:keep", "1")
	kept := func(what string) {
		t.Helper()
		if got := d.do("EXISTS", "plain:keep"); got != ":1\r\n" {
			t.Fatalf("%s flushed the database: EXISTS %q", what, got)
		}
		if got := d.do("EXISTS", "respite:wb:pv"); got != ":1\r\n" {
			t.Fatalf("%s dropped the write-back queue: EXISTS %q", what, got)
		}
	}
	for _, src := range []string{"return redis.call('flushall')", "return redis.call('flushdb', 'async')",
		"return redis.call('swapdb', '0', '1')", "return redis.call('swapdb', '1', '2')"} {
		if got := c.do("EVAL", src, "0"); !strings.HasPrefix(got, "-ERR The user executing the script can't run this command") {
			t.Errorf("EVAL %s: %q, want Redis' ACL refusal", src, got)
		}
		kept("EVAL " + src)
	}
	c.do("MULTI")
	c.do("EVAL", "return redis.call('flushall')", "0")
	if got := c.do("EXEC"); !strings.Contains(got, "can't run this command") {
		t.Errorf("EXEC of a flushing script: %q", got)
	}
	kept("a flushing script in MULTI")
	waitUntil(t, "the write-back queue drained", func() bool { return d.do("XLEN", "respite:wb:pv") == ":0\r\n" })
	if got := c.do("FLUSHDB"); got != "+OK\r\n" {
		t.Fatalf("FLUSHDB: %q", got)
	}
	if got := d.do("EXISTS", "plain:keep"); got != ":0\r\n" {
		t.Fatalf("FLUSHDB did not flush: EXISTS %q", got)
	}
	d.do("SET", "plain:keep", "1")
	if got := c.do("FLUSHALL", "SYNC"); got != "+OK\r\n" {
		t.Fatalf("FLUSHALL: %q", got)
	}
	if got := d.do("DBSIZE"); got != ":0\r\n" && !strings.HasPrefix(d.do("TYPE", "respite:wb:pv"), "+stream") {
		t.Fatalf("FLUSHALL left %q keys", got)
	}
}
