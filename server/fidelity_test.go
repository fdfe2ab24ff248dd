package server

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// Focused regression tests for the fidelity defects of issue 10, each
// against a real redis-server, compared with what Redis answers directly
// where the bytes matter (docs/COMPATIBILITY.md lists which test covers
// which defect).

// throwawayProxy starts a redis-server of the test's own (so counts of its
// clients are the test's alone) and a proxy in front of it.
func throwawayProxy(t *testing.T, args ...string) (*testenv.Redis, string) {
	t.Helper()
	r, err := testenv.StartRedis(args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r, startProxy(t, func(c *config.Config) { c.Upstream.Addr = r.Addr })
}

// waitUntil polls cond every 10 ms for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// textOf is the text of a bulk or verbatim string reply.
func textOf(t *testing.T, reply string) string {
	t.Helper()
	_, body, ok := strings.Cut(reply, "\r\n")
	if !ok || (reply[0] != '$' && reply[0] != '=') {
		t.Fatalf("not a bulk string: %q", reply)
	}
	body = strings.TrimSuffix(body, "\r\n")
	if reply[0] == '=' {
		body = strings.TrimPrefix(body, "txt:")
	}
	return body
}

// clientLine is the CLIENT LIST line of client id, "" if none.
func clientLine(list string, id int64) string {
	for _, line := range strings.Split(list, "\n") {
		if strings.HasPrefix(line, "id="+strconv.FormatInt(id, 10)+" ") {
			return line
		}
	}
	return ""
}

func intReply(t *testing.T, reply string) int64 {
	t.Helper()
	if !strings.HasPrefix(reply, ":") {
		t.Fatalf("not an integer: %q", reply)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(reply[1:]), 10, 64)
	if err != nil {
		t.Fatalf("not an integer: %q", reply)
	}
	return n
}

// Defect 1. HELLO 3 on a session pinned by SELECT 9 (before or after the
// SELECT): the replies are RESP3 (null, ZRANGE WITHSCORES pairs of
// doubles, HRANDFIELD WITHVALUES pairs, maps, sets, doubles) byte for byte
// as Redis sends them directly, and the session stays in step afterwards
// (HELLO 2 back, then RESP2 again).
func TestHello3OnPinnedSessionMatchesRedis(t *testing.T) {
	proxy := startProxy(t, nil)
	script := [][]string{
		{"DEL", "fid1:z", "fid1:h", "fid1:s"},
		{"ZADD", "fid1:z", "1.5", "a", "2", "b", "-0.25", "c"},
		{"HSET", "fid1:h", "f", "v"},
		{"SADD", "fid1:s", "m"},
		{"GET", "fid1:none"},
		{"ZRANGE", "fid1:z", "0", "-1", "WITHSCORES"},
		{"ZSCORE", "fid1:z", "a"},
		{"ZINCRBY", "fid1:z", "0.5", "a"},
		{"HRANDFIELD", "fid1:h", "1", "WITHVALUES"},
		{"HRANDFIELD", "fid1:h", "-2", "WITHVALUES"},
		{"HGETALL", "fid1:h"},
		{"SMEMBERS", "fid1:s"},
		{"ZPOPMIN", "fid1:z"},
		{"HGET", "fid1:h", "nofield"},
		{"EXISTS", "fid1:s"},
		{"PING"},
	}
	for _, order := range []string{"SELECT 9, HELLO 3", "HELLO 3, SELECT 9"} {
		var got [2][]string
		for i, addr := range []string{redisAddr, proxy} {
			c := dialRaw(t, addr)
			steps := [][]string{{"SELECT", "9"}, {"HELLO", "3"}}
			if order == "HELLO 3, SELECT 9" {
				steps[0], steps[1] = steps[1], steps[0]
			}
			for _, cmd := range steps {
				reply := c.do(cmd...)
				if cmd[0] == "HELLO" && !strings.HasPrefix(reply, "%7\r\n") {
					t.Fatalf("%s: HELLO 3 = %q", order, reply)
				} else if cmd[0] == "SELECT" && reply != "+OK\r\n" {
					t.Fatalf("%s: SELECT 9 = %q", order, reply)
				}
			}
			for _, cmd := range script {
				got[i] = append(got[i], c.do(cmd...))
			}
			// Back to RESP2 on the same pinned connection.
			if reply := c.do("HELLO", "2"); !strings.HasPrefix(reply, "*14\r\n") {
				t.Fatalf("%s: HELLO 2 = %q", order, reply)
			}
			for _, cmd := range script[4:] {
				got[i] = append(got[i], c.do(cmd...))
			}
			c.do(script[0]...) // the next run starts from nothing
			c.c.Close()
		}
		for j := range got[0] {
			cmd := script[j%len(script)]
			if j >= len(script) {
				cmd = script[4+j-len(script)]
			}
			if got[0][j] != got[1][j] {
				t.Errorf("%s: %v: Redis %q, proxy %q", order, cmd, got[0][j], got[1][j])
			}
		}
		// RESP3 it is: the null and the pairs of a ZRANGE WITHSCORES.
		if got[1][4] != "_\r\n" || !strings.HasPrefix(got[1][5], "*3\r\n*2\r\n$1\r\nc\r\n,-0.25\r\n") {
			t.Errorf("%s: not RESP3 through the proxy: GET %q, ZRANGE WITHSCORES %q", order, got[1][4], got[1][5])
		}
	}
}

// Defect 2. CLIENT ID, LIST, INFO, SETNAME, KILL ID, UNBLOCK, TRACKING ...
// REDIRECT and GETREDIR give one view of the proxy's clients: the ids
// CLIENT LIST shows are the ones CLIENT ID gives, a name set with SETNAME
// shows in it, UNBLOCK of a client blocked in BLPOP unblocks it, REDIRECT
// to another client's id sends the invalidations there and GETREDIR gives
// that id back, and KILL ID closes exactly that client.
func TestClientIdsAreOneView(t *testing.T) {
	r, proxy := throwawayProxy(t)
	d := dialRaw(t, r.Addr)
	a, b, blocked, ctl := dialRaw(t, proxy), dialRaw(t, proxy), dialRaw(t, proxy), dialRaw(t, proxy)
	ida, idb, idBlocked := intReply(t, a.do("CLIENT", "ID")), intReply(t, b.do("CLIENT", "ID")), intReply(t, blocked.do("CLIENT", "ID"))
	if ida == idb || ida == idBlocked || idb == idBlocked {
		t.Fatalf("CLIENT ID not unique: %d %d %d", ida, idb, idBlocked)
	}
	if got := a.do("CLIENT", "SETNAME", "alice"); got != "+OK\r\n" {
		t.Fatalf("SETNAME: %q", got)
	}
	list := textOf(t, ctl.do("CLIENT", "LIST"))
	for _, id := range []int64{ida, idb, idBlocked} {
		if clientLine(list, id) == "" {
			t.Errorf("CLIENT LIST has no id=%d:\n%s", id, list)
		}
	}
	if line := clientLine(list, ida); !strings.Contains(line, " name=alice ") {
		t.Errorf("CLIENT LIST line of the client named alice: %q", line)
	}
	if info := textOf(t, b.do("CLIENT", "INFO")); !strings.HasPrefix(info, "id="+strconv.FormatInt(idb, 10)+" ") {
		t.Errorf("CLIENT INFO of client %d: %q", idb, info)
	}
	// LIST ID id: that client only.
	if got := textOf(t, ctl.do("CLIENT", "LIST", "ID", strconv.FormatInt(ida, 10))); strings.Count(got, "\n") != 1 || clientLine(got, ida) == "" {
		t.Errorf("CLIENT LIST ID %d: %q", ida, got)
	}

	// UNBLOCK a client blocked in BLPOP, once Redis has it blocked.
	blocked.send(encode("BLPOP", "fid2:list", "0"))
	waitUntil(t, "Redis has the BLPOP blocked", func() bool {
		return infoField(d.do("INFO", "clients"), "blocked_clients") == 1
	})
	waitUntil(t, "CLIENT LIST shows the blocked client's b flag", func() bool {
		return strings.Contains(clientLine(textOf(t, ctl.do("CLIENT", "LIST")), idBlocked), " flags=b ")
	})
	if got := ctl.do("CLIENT", "UNBLOCK", strconv.FormatInt(idBlocked, 10)); got != ":1\r\n" {
		t.Fatalf("CLIENT UNBLOCK %d: %q", idBlocked, got)
	}
	if got := blocked.read(); got != "*-1\r\n" {
		t.Fatalf("BLPOP after CLIENT UNBLOCK: %q", got)
	}
	if got := blocked.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("the unblocked client after: %q", got)
	}
	if got := ctl.do("CLIENT", "UNBLOCK", strconv.FormatInt(idBlocked, 10)); got != ":0\r\n" {
		t.Errorf("CLIENT UNBLOCK of a client not blocked: %q", got)
	}

	// TRACKING REDIRECT to a's id: the invalidation reaches a (RESP2: a
	// subscribes to __redis__:invalidate), and GETREDIR names a.
	if got := a.do("SUBSCRIBE", "__redis__:invalidate"); !strings.HasPrefix(got, "*3\r\n$9\r\nsubscribe\r\n") {
		t.Fatalf("SUBSCRIBE __redis__:invalidate: %q", got)
	}
	if got := b.do("CLIENT", "TRACKING", "on", "REDIRECT", strconv.FormatInt(ida, 10)); got != "+OK\r\n" {
		t.Fatalf("CLIENT TRACKING on REDIRECT %d: %q", ida, got)
	}
	if got := b.do("CLIENT", "GETREDIR"); got != ":"+strconv.FormatInt(ida, 10)+"\r\n" {
		t.Errorf("CLIENT GETREDIR = %q, want :%d", got, ida)
	}
	if line := clientLine(textOf(t, ctl.do("CLIENT", "LIST")), idb); !strings.Contains(line, " redir="+strconv.FormatInt(ida, 10)+" ") {
		t.Errorf("CLIENT LIST line of the tracking client: %q, want redir=%d", line, ida)
	}
	b.do("GET", "fid2:tracked")
	ctl.do("SET", "fid2:tracked", "changed")
	if got := a.read(); got != "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$12\r\nfid2:tracked\r\n" {
		t.Fatalf("invalidation at the REDIRECT target: %q", got)
	}

	// KILL ID of another proxy client closes that one, and only it.
	if got := ctl.do("CLIENT", "KILL", "ID", strconv.FormatInt(idb, 10)); got != ":1\r\n" {
		t.Fatalf("CLIENT KILL ID %d: %q", idb, got)
	}
	b.expectClosed()
	if got := blocked.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("another client after the KILL: %q", got)
	}
	waitUntil(t, "the killed client leaves CLIENT LIST", func() bool {
		return clientLine(textOf(t, ctl.do("CLIENT", "LIST")), idb) == ""
	})
	if got := ctl.do("CLIENT", "KILL", "ID", strconv.FormatInt(idb, 10)); got != ":0\r\n" {
		t.Errorf("CLIENT KILL ID of a client gone: %q", got)
	}
}

// Defect 3. Two clients with CLIENT TRACKING each get the invalidations of
// the keys they read, and none of the other's.
func TestTrackingClientsGetOnlyTheirOwnInvalidations(t *testing.T) {
	proxy := startProxy(t, nil)
	w := dialRaw(t, proxy)
	own := map[string][]string{"t1": {"fid3:a", "fid3:c"}, "t2": {"fid3:b"}}
	conns := map[string]*rawConn{}
	for _, name := range []string{"t1", "t2"} {
		c := dialRaw(t, proxy)
		c.do("HELLO", "3")
		if got := c.do("CLIENT", "TRACKING", "on"); got != "+OK\r\n" {
			t.Fatalf("%s CLIENT TRACKING on: %q", name, got)
		}
		for _, k := range own[name] {
			c.do("GET", k)
		}
		conns[name] = c
	}
	for round := 0; round < 3; round++ {
		for _, k := range []string{"fid3:a", "fid3:b", "fid3:c"} {
			if got := w.do("SET", k, strconv.Itoa(round)); got != "+OK\r\n" {
				t.Fatal(got)
			}
		}
		// Redis wrote each invalidation before it answered the SET, so
		// they precede the PONG on each client's connection.
		for name, c := range conns {
			c.send(encode("PING"))
			var pushes []string
			for {
				got := c.read()
				if got == "+PONG\r\n" {
					break
				}
				pushes = append(pushes, got)
			}
			var want []string
			for _, k := range own[name] {
				want = append(want, fmt.Sprintf(">2\r\n$10\r\ninvalidate\r\n*1\r\n$%d\r\n%s\r\n", len(k), k))
			}
			if strings.Join(pushes, "") != strings.Join(want, "") {
				t.Errorf("round %d, %s (read %v): pushes %q, want %q", round, name, own[name], pushes, want)
			}
			for _, k := range own[name] {
				c.do("GET", k) // tracked again for the next round
			}
		}
	}
}

// Defect 4. An ACL user made through the proxy logs in with AUTH and with
// HELLO 3 AUTH, gets Redis' own NOPERM outside its permissions and ACL
// WHOAMI names it; after a client's CONFIG SET requirepass, a new client
// gets -NOAUTH before it authenticates (PING included, as on Redis), AUTH
// with the new password works, and so do its commands on upstream
// connections the proxy dials after the change.
func TestAclUsersAndRequirepassAsRedis(t *testing.T) {
	r, proxy := throwawayProxy(t)
	admin := dialRaw(t, proxy)
	if got := admin.do("ACL", "SETUSER", "u", "on", ">p", "~k*", "+@all"); got != "+OK\r\n" {
		t.Fatalf("ACL SETUSER: %q", got)
	}
	for _, hello := range []bool{false, true} {
		var got [2][]string
		for i, addr := range []string{r.Addr, proxy} {
			c := dialRaw(t, addr)
			if hello {
				if reply := c.do("HELLO", "3", "AUTH", "u", "p"); !strings.HasPrefix(reply, "%7\r\n") {
					t.Fatalf("HELLO 3 AUTH u p via %s: %q", addr, reply)
				}
			} else {
				got[i] = append(got[i], c.do("AUTH", "u", "p"))
			}
			for _, cmd := range [][]string{{"ACL", "WHOAMI"}, {"SET", "k1", "v"}, {"GET", "k1"}, {"SET", "other", "v"},
				{"GET", "other"}, {"MULTI"}, {"GET", "other"}, {"EXEC"}, {"AUTH", "u", "wrong"}, {"ACL", "WHOAMI"}} {
				got[i] = append(got[i], c.do(cmd...))
			}
			c.c.Close()
		}
		for j := range got[0] {
			if got[0][j] != got[1][j] {
				t.Errorf("HELLO %v, reply %d: Redis %q, proxy %q", hello, j, got[0][j], got[1][j])
			}
		}
		if !strings.Contains(strings.Join(got[1], ""), "-NOPERM") || !strings.Contains(got[1][len(got[1])-1], "u\r\n") {
			t.Errorf("HELLO %v: no NOPERM or WHOAMI is not u: %q", hello, got[1])
		}
	}

	// CONFIG SET requirepass through the proxy.
	if got := admin.do("CONFIG", "SET", "requirepass", "x"); got != "+OK\r\n" {
		t.Fatalf("CONFIG SET requirepass: %q", got)
	}
	var got [2][]string
	for i, addr := range []string{r.Addr, proxy} {
		c := dialRaw(t, addr)
		for _, cmd := range [][]string{{"PING"}, {"GET", "k1"}, {"SET", "k1", "w"}, {"HELLO", "3"}, {"AUTH", "wrong"},
			{"AUTH", "x"}, {"PING"}, {"GET", "k1"}, {"SELECT", "1"}, {"SET", "fid4:db1", "1"}, {"SELECT", "0"},
			{"WATCH", "k1"}, {"MULTI"}, {"INCR", "fid4:n"}, {"EXEC"}, {"BLPOP", "fid4:none", "0.01"}, {"DEL", "fid4:n"}} {
			got[i] = append(got[i], c.do(cmd...))
		}
		c.c.Close()
	}
	for j := range got[0] {
		if got[0][j] != got[1][j] {
			t.Errorf("after CONFIG SET requirepass, reply %d: Redis %q, proxy %q", j, got[0][j], got[1][j])
		}
	}
	if got[1][0] != "-NOAUTH Authentication required.\r\n" {
		t.Errorf("PING before AUTH through the proxy: %q", got[1][0])
	}
	// HELLO 3 AUTH with the new password, and the proxy's own later
	// connections (the pinned ones it dials after the change).
	c := dialRaw(t, proxy)
	if reply := c.do("HELLO", "3", "AUTH", "default", "x"); !strings.HasPrefix(reply, "%7\r\n") {
		t.Fatalf("HELLO 3 AUTH default x: %q", reply)
	}
	for i := 0; i < 3; i++ {
		c.do("WATCH", "k1")
		c.do("MULTI")
		c.do("INCR", "fid4:n")
		if got := c.do("EXEC"); got != "*1\r\n:"+strconv.Itoa(1+i)+"\r\n" {
			t.Fatalf("transaction %d after AUTH with the new password: %q", i, got)
		}
	}
	// The password removed, new clients need none; set again inside
	// MULTI/EXEC, they do again.
	if got := c.do("CONFIG", "SET", "requirepass", ""); got != "+OK\r\n" {
		t.Fatalf("CONFIG SET requirepass '': %q", got)
	}
	if got := dialRaw(t, proxy).do("PING"); got != "+PONG\r\n" {
		t.Fatalf("PING of a new client once the password is removed: %q", got)
	}
	c.do("MULTI")
	c.do("CONFIG", "SET", "requirepass", "y")
	if got := c.do("EXEC"); got != "*1\r\n+OK\r\n" {
		t.Fatalf("CONFIG SET requirepass y in MULTI: %q", got)
	}
	n := dialRaw(t, proxy)
	for _, step := range [][2]string{{"PING", "-NOAUTH Authentication required.\r\n"}, {"AUTH y", "+OK\r\n"}, {"PING", "+PONG\r\n"}} {
		if got := n.do(strings.Fields(step[0])...); got != step[1] {
			t.Fatalf("new client after CONFIG SET requirepass y in MULTI: %s = %q, want %q", step[0], got, step[1])
		}
	}
	// Clients that connected while the password was set, once it is
	// removed: Redis runs their commands (the default user needs no
	// password) but refuses HELLO (they never authenticated).
	direct, proxied := dialRaw(t, r.Addr), dialRaw(t, proxy)
	direct.do("PING")
	proxied.do("PING")
	if got := c.do("CONFIG", "SET", "requirepass", ""); got != "+OK\r\n" {
		t.Fatalf("CONFIG SET requirepass '': %q", got)
	}
	for _, cmd := range [][]string{{"PING"}, {"GET", "k1"}, {"HELLO", "3"}, {"HELLO", "2"}} {
		if want, got := direct.do(cmd...), proxied.do(cmd...); got != want {
			t.Errorf("a client of the password's time, once it is removed: %v: Redis %q, proxy %q", cmd, want, got)
		}
	}
}

// Defect 5. MONITOR works after HELLO 3 and in RESP2; after 200 MONITOR
// sessions came and went, the idle proxy uses next to no CPU.
func TestMonitorResp2And3AndIdleAfterward(t *testing.T) {
	proxy := startProxy(t, nil)
	w := dialRaw(t, proxy)
	for _, proto := range []string{"2", "3"} {
		m := dialRaw(t, proxy)
		if proto == "3" {
			m.do("HELLO", "3")
		}
		if got := m.do("MONITOR"); got != "+OK\r\n" {
			t.Fatalf("RESP%s MONITOR: %q", proto, got)
		}
		key := "fid5:resp" + proto
		w.do("SET", key, "v")
		for {
			got := m.read()
			if !strings.HasPrefix(got, "+") {
				t.Fatalf("RESP%s MONITOR line: %q", proto, got)
			}
			if strings.Contains(got, `"SET" "`+key+`" "v"`) {
				break
			}
		}
		m.c.Close()
	}
	for i := 0; i < 200; i++ {
		m := dialRaw(t, proxy)
		if i%2 == 1 {
			m.do("HELLO", "3")
		}
		if got := m.do("MONITOR"); got != "+OK\r\n" {
			t.Fatalf("MONITOR %d: %q", i, got)
		}
		m.c.Close()
	}
	waitUntil(t, "the MONITOR sessions end", func() bool {
		return strings.Count(textOf(t, w.do("CLIENT", "LIST")), "\n") == 1
	})
	time.Sleep(200 * time.Millisecond)
	before, start := cpuTime(t), time.Now()
	time.Sleep(time.Second)
	used, wall := cpuTime(t)-before, time.Since(start)
	t.Logf("idle proxy after 200 MONITOR sessions: %v of CPU in %v", used, wall)
	if per := used.Seconds() / wall.Seconds(); per > 0.2 {
		t.Fatalf("idle proxy after 200 MONITOR sessions used %v of CPU in %v", used, wall)
	}
}

// cpuTime is the process' user and system CPU time (/proc/self/stat).
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}

// Defect 6, without waiting: a PUBLISH sent right after another client
// sent SUBSCRIBE, before its confirmation, reaches the subscriber, as on
// Redis (which reads the SUBSCRIBE first). Through the proxy the SUBSCRIBE
// may first dial the session's own upstream connection, and goes on
// another connection than the PUBLISH: order.go makes the PUBLISH wait
// for it (its bytes unread, its ticket, its confirmation). Patterns and
// shard channels, RESP2 and RESP3.
func TestPublishRightAfterSubscribeSentIsDelivered(t *testing.T) {
	r, proxy := throwawayProxy(t)
	for _, addr := range []string{r.Addr, proxy} {
		pub := dialRaw(t, addr)
		lost := 0
		for i := range 100 {
			sub := dialRaw(t, addr)
			if i%2 == 1 {
				sub.do("HELLO", "3")
			} else {
				sub.do("PING")
			}
			ch := "fid6s:" + strconv.Itoa(i)
			subscribe, channel, publish := "SUBSCRIBE", ch, "PUBLISH"
			switch i % 3 {
			case 1:
				subscribe, channel = "PSUBSCRIBE", ch+"*"
			case 2:
				subscribe, publish = "SSUBSCRIBE", "SPUBLISH"
			}
			sub.send(encode(subscribe, channel))
			if got := pub.do(publish, ch, "m"); got != ":1\r\n" {
				lost++
				t.Logf("%s %d right after %s was sent: %q receivers", publish, i, subscribe, got)
			}
			sub.c.Close()
		}
		if lost > 0 {
			t.Errorf("%s: %d of 100 messages published right after a SUBSCRIBE was sent found no subscriber (Redis: 0)", addr, lost)
		}
	}
}

// Defect 6. A PUBLISH sent right after the SUBSCRIBE's first confirmation
// arrived reaches the subscriber, 200 times out of 200 (channels,
// patterns and shard channels, RESP2 and RESP3); after UNSUBSCRIBE without
// arguments, a PUBLISH counts no receiver.
func TestPublishRightAfterSubscribeIsDelivered(t *testing.T) {
	proxy := startProxy(t, nil)
	pub := dialRaw(t, proxy)
	bulk := func(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }
	for i := 0; i < 200; i++ {
		sub := dialRaw(t, proxy)
		head := "*"
		if i%2 == 1 {
			sub.do("HELLO", "3")
			head = ">"
		}
		ch := "fid6:" + strconv.Itoa(i)
		subscribe, publish, channel, want := "SUBSCRIBE", "PUBLISH", ch, head+"3\r\n"+bulk("message")+bulk(ch)+bulk("m")
		switch i % 3 {
		case 1:
			subscribe, channel, want = "PSUBSCRIBE", ch+"*", head+"4\r\n"+bulk("pmessage")+bulk(ch+"*")+bulk(ch)+bulk("m")
		case 2:
			subscribe, publish, want = "SSUBSCRIBE", "SPUBLISH", head+"3\r\n"+bulk("smessage")+bulk(ch)+bulk("m")
		}
		if got := sub.do(subscribe, channel, channel+"b"); !strings.HasPrefix(got, head+"3\r\n"+bulk(strings.ToLower(subscribe))) {
			t.Fatalf("%s %d: %q", subscribe, i, got)
		}
		if got := pub.do(publish, ch, "m"); got != ":1\r\n" {
			t.Fatalf("%s %d right after the first confirmation of %s: %q receivers", publish, i, subscribe, got)
		}
		sub.read() // the second confirmation
		if got := sub.read(); got != want {
			t.Fatalf("message %d: %q, want %q", i, got, want)
		}
		if i%3 == 0 && i%20 < 3 {
			sub.send(encode("UNSUBSCRIBE"))
			sub.read()
			if got := sub.read(); !strings.HasSuffix(got, ":0\r\n") {
				t.Fatalf("last unsubscribe confirmation: %q", got)
			}
			for _, c := range []string{ch, ch + "b"} {
				if got := pub.do("PUBLISH", c, "m"); got != ":0\r\n" {
					t.Fatalf("PUBLISH %s after UNSUBSCRIBE without arguments: %q receivers", c, got)
				}
			}
		}
		sub.c.Close()
	}
}

// Defect 7. A client that sends BLPOP l 0 and SET foo 1, then shuts its
// write side, is closed with no reply, as Redis closes it, and the SET
// never runs (nor does the BLPOP take an element pushed later).
func TestHalfCloseDuringBlpopRunsNothingAfter(t *testing.T) {
	proxy := startProxy(t, nil)
	d := dialRaw(t, redisAddr)
	d.do("DEL", "fid7:l", "fid7:foo")
	for _, addr := range []string{redisAddr, proxy} {
		c := dialRaw(t, addr)
		c.send(append(encode("BLPOP", "fid7:l", "0"), encode("SET", "fid7:foo", "1")...))
		if err := c.c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.expectClosed()
		time.Sleep(50 * time.Millisecond)
		if got := d.do("EXISTS", "fid7:foo"); got != ":0\r\n" {
			t.Fatalf("via %s: the SET after the BLPOP ran: EXISTS = %q", addr, got)
		}
		d.do("RPUSH", "fid7:l", "x")
		if got := d.do("LLEN", "fid7:l"); got != ":1\r\n" {
			t.Fatalf("via %s: an element pushed later was taken: LLEN = %q", addr, got)
		}
		d.do("DEL", "fid7:l")
	}
}

// Defect 8. SUBSCRIBE c1 c2, UNSUBSCRIBE c1, UNSUBSCRIBE c2, PING get
// Redis' own replies, byte for byte, in RESP2 and RESP3, for channels,
// patterns and shard channels; and after 70 such clients left, Redis has
// as many clients as before.
func TestPartialUnsubscribeMatchesRedis(t *testing.T) {
	r, proxy := throwawayProxy(t)
	d := dialRaw(t, r.Addr)
	families := [][3]string{{"SUBSCRIBE", "UNSUBSCRIBE", "fid8:c"}, {"PSUBSCRIBE", "PUNSUBSCRIBE", "fid8:p*"}, {"SSUBSCRIBE", "SUNSUBSCRIBE", "fid8:s"}}
	script := func(f [3]string) []struct {
		cmd     []string
		replies int
	} {
		return []struct {
			cmd     []string
			replies int
		}{
			{[]string{f[0], f[2] + "1", f[2] + "2"}, 2},
			{[]string{f[1], f[2] + "1"}, 1},
			{[]string{"PING"}, 1},
			{[]string{f[1], f[2] + "2"}, 1},
			{[]string{"PING"}, 1},
			{[]string{f[1]}, 1},
			{[]string{"PING"}, 1},
		}
	}
	for _, proto := range []string{"2", "3"} {
		for _, f := range families {
			var got [2][]string
			for i, addr := range []string{r.Addr, proxy} {
				c := dialRaw(t, addr)
				if proto == "3" {
					c.do("HELLO", "3")
				}
				for _, step := range script(f) {
					c.send(encode(step.cmd...))
					var s string
					for k := 0; k < step.replies; k++ {
						s += c.read()
					}
					got[i] = append(got[i], s)
				}
				c.c.Close()
			}
			for j, step := range script(f) {
				if got[0][j] != got[1][j] {
					t.Errorf("RESP%s %v: Redis %q, proxy %q", proto, step.cmd, got[0][j], got[1][j])
				}
			}
		}
	}
	// The proxy's shared connections, all dialled (one per session id
	// modulo their number, in each protocol).
	for i := 0; i < 16; i++ {
		c := dialRaw(t, proxy)
		c.do("PING")
		c.do("HELLO", "3")
		c.do("PING")
		c.c.Close()
	}
	waitUntil(t, "no subscriber left upstream", func() bool {
		return !regexp.MustCompile(` (sub|psub|ssub)=[1-9]`).MatchString(textOf(t, d.do("CLIENT", "LIST")))
	})
	before := infoField(d.do("INFO", "clients"), "connected_clients")
	for i := 0; i < 70; i++ {
		c := dialRaw(t, proxy)
		f := families[i%3]
		if i%2 == 1 {
			c.do("HELLO", "3")
		}
		for _, step := range script(f)[:5] {
			c.send(encode(step.cmd...))
			for k := 0; k < step.replies; k++ {
				c.read()
			}
		}
		c.c.Close()
	}
	waitUntil(t, fmt.Sprintf("connected_clients back to %d", before), func() bool {
		return infoField(d.do("INFO", "clients"), "connected_clients") <= before
	})
}

// Defect 9. When Redis closes the upstream connection of a subscriber or
// of a blocked client (CLIENT KILL of its address, on Redis directly), the
// client's connection is closed, with nothing invented on it (no
// subscribe frame, no reply).
func TestUpstreamKillClosesSubscriberAndBlockedClient(t *testing.T) {
	r, proxy := throwawayProxy(t)
	d := dialRaw(t, r.Addr)
	addrOf := func(pattern string) string {
		var addr string
		re := regexp.MustCompile(pattern)
		waitUntil(t, "Redis lists a client matching "+pattern, func() bool {
			for _, line := range strings.Split(textOf(t, d.do("CLIENT", "LIST")), "\n") {
				if re.MatchString(line) {
					addr = strings.Fields(line)[1][len("addr="):]
					return true
				}
			}
			return false
		})
		return addr
	}
	for _, proto := range []string{"2", "3"} {
		sub := dialRaw(t, proxy)
		if proto == "3" {
			sub.do("HELLO", "3")
		}
		if got := sub.do("SUBSCRIBE", "fid9:c"); !strings.Contains(got, "subscribe\r\n$6\r\nfid9:c\r\n:1\r\n") {
			t.Fatalf("SUBSCRIBE: %q", got)
		}
		addr := addrOf(` sub=1 `)
		if got := d.do("CLIENT", "KILL", addr); got != "+OK\r\n" {
			t.Fatalf("CLIENT KILL %s: %q", addr, got)
		}
		sub.expectClosed()

		blocked := dialRaw(t, proxy)
		if proto == "3" {
			blocked.do("HELLO", "3")
		}
		blocked.send(encode("BLPOP", "fid9:l", "0"))
		addr = addrOf(` cmd=blpop `)
		if got := d.do("CLIENT", "KILL", addr); got != "+OK\r\n" {
			t.Fatalf("CLIENT KILL %s: %q", addr, got)
		}
		blocked.expectClosed()
	}
	if got := dialRaw(t, proxy).do("PING"); got != "+PONG\r\n" {
		t.Fatalf("the proxy after: %q", got)
	}
}

// HELLO's server version is the upstream's, also for a client that logs
// in with HELLO AUTH after another set a password on Redis (the proxy,
// without that password, can no longer ask Redis then).
func TestHelloVersionAfterRequirepass(t *testing.T) {
	r, addr := throwawayProxy(t)
	c := dialRaw(t, addr)
	if got := c.do("CONFIG", "SET", "requirepass", "x"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	d := dialRaw(t, r.Addr)
	d.do("AUTH", "x")
	defer d.do("CONFIG", "SET", "requirepass", "")
	info := d.do("INFO", "server")
	_, after, _ := strings.Cut(info, "redis_version:")
	version, _, _ := strings.Cut(after, "\r\n")
	n := dialRaw(t, addr)
	hello := n.do("HELLO", "2", "AUTH", "default", "x")
	if want := "$7\r\nversion\r\n$" + strconv.Itoa(len(version)) + "\r\n" + version + "\r\n"; !strings.Contains(hello, want) {
		t.Fatalf("HELLO AUTH after requirepass: %q, want the upstream's version %s", hello, version)
	}
}

// CLIENT LIST and CLIENT INFO as Redis fills them: cmd= is the command
// running (the caller's own CLIENT LIST/INFO, a blocked client's BLPOP),
// sub=/flags=P count a subscription as soon as it is confirmed, so CLIENT
// LIST TYPE pubsub and CLIENT KILL TYPE pubsub find the subscriber, and
// user= is the user a RESP2 AUTH logged in as, so CLIENT KILL USER finds
// it. Each is checked directly on Redis first, then through the proxy.
func TestClientListFieldsAsRedis(t *testing.T) {
	r, addr := throwawayProxy(t)
	admin := dialRaw(t, r.Addr)
	if got := admin.do("ACL", "SETUSER", "lister", "on", ">pw", "~*", "&*", "+@all"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	defer admin.do("ACL", "DELUSER", "lister")
	field := func(line, name string) string {
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, name+"="); ok {
				return v
			}
		}
		return "(none)"
	}
	for _, target := range []struct{ name, addr string }{{"redis", r.Addr}, {"proxy", addr}} {
		c := dialRaw(t, target.addr)
		if got := field(textOf(t, c.do("CLIENT", "INFO")), "cmd"); got != "client|info" {
			t.Fatalf("%s: own CLIENT INFO cmd=%s, want client|info", target.name, got)
		}
		// A blocked client shows the command it blocks in.
		b := dialRaw(t, target.addr)
		bid := intReply(t, b.do("CLIENT", "ID"))
		b.send(encode("BLPOP", "fields:list", "0"))
		waitUntil(t, target.name+": the client blocked", func() bool {
			return field(clientLine(textOf(t, c.do("CLIENT", "LIST")), bid), "flags") == "b"
		})
		if got := field(clientLine(textOf(t, c.do("CLIENT", "LIST")), bid), "cmd"); got != "blpop" {
			t.Fatalf("%s: blocked client's cmd=%s, want blpop", target.name, got)
		}
		if got := c.do("CLIENT", "UNBLOCK", strconv.FormatInt(bid, 10)); got != ":1\r\n" {
			t.Fatalf("%s: CLIENT UNBLOCK: %q", target.name, got)
		}
		b.read()
		// A subscriber counts as soon as its confirmation arrived.
		s := dialRaw(t, target.addr)
		sid := intReply(t, s.do("CLIENT", "ID"))
		s.send(encode("SUBSCRIBE", "fields:ch"))
		s.read()
		line := clientLine(textOf(t, c.do("CLIENT", "LIST", "TYPE", "pubsub")), sid)
		if field(line, "sub") != "1" || field(line, "flags") != "P" {
			t.Fatalf("%s: CLIENT LIST TYPE pubsub right after the confirmation: %q, want the subscriber with sub=1 flags=P", target.name, line)
		}
		if got := c.do("CLIENT", "KILL", "TYPE", "pubsub"); got != ":1\r\n" {
			t.Fatalf("%s: CLIENT KILL TYPE pubsub: %q, want :1", target.name, got)
		}
		s.expectClosed()
		// user= after a RESP2 AUTH user password.
		u := dialRaw(t, target.addr)
		if got := u.do("AUTH", "lister", "pw"); got != "+OK\r\n" {
			t.Fatalf("%s: AUTH: %q", target.name, got)
		}
		if got := field(textOf(t, u.do("CLIENT", "INFO")), "user"); got != "lister" {
			t.Fatalf("%s: CLIENT INFO after AUTH lister: user=%s", target.name, got)
		}
		if got := c.do("CLIENT", "KILL", "USER", "lister"); got != ":1\r\n" {
			t.Fatalf("%s: CLIENT KILL USER lister: %q, want :1", target.name, got)
		}
		u.expectClosed()
	}
}

// TestDetachInsideMultiMatchesRedis: SUBSCRIBE and CLIENT TRACKING ON
// queued in MULTI take effect at EXEC (MONITOR is refused there), the last command of its
// batch (a client that does not pipeline). The proxy detached the
// session with nothing left of the batch, and crashed on it: the client
// got "-ERR internal error in proxy" and a closed connection.
func TestDetachInsideMultiMatchesRedis(t *testing.T) {
	r, proxy := throwawayProxy(t)
	ctl := dialRaw(t, r.Addr)
	for _, proto := range []string{"2", "3"} {
		ch, key := "fiddm:ch:"+proto, "fiddm:k:"+proto
		var got [2][]string
		for i, addr := range []string{r.Addr, proxy} {
			a, b := dialRaw(t, addr), dialRaw(t, addr)
			if proto == "3" {
				a.do("HELLO", "3")
			}
			step := func(c *rawConn, args ...string) { got[i] = append(got[i], c.do(args...)) }
			step(a, "MULTI")
			step(a, "SUBSCRIBE", ch)
			step(a, "EXEC")
			step(b, "PUBLISH", ch, "m")
			got[i] = append(got[i], a.read()) // the message
			step(a, "PING")
			a.c.Close()
			waitUntil(t, "the subscriber gone", func() bool {
				return ctl.do("PUBSUB", "NUMSUB", ch) == "*2\r\n$"+strconv.Itoa(len(ch))+"\r\n"+ch+"\r\n:0\r\n"
			})
			if proto == "3" {
				ctl.do("DEL", key)
				c := dialRaw(t, addr)
				c.do("HELLO", "3")
				step(c, "MULTI")
				step(c, "CLIENT", "TRACKING", "ON")
				step(c, "EXEC")
				step(c, "GET", key)
				step(b, "SET", key, "v")
				got[i] = append(got[i], c.read()) // the invalidation
				step(c, "PING")
				c.c.Close()
			}
			m := dialRaw(t, addr)
			step(m, "MULTI")
			step(m, "MONITOR")
			step(m, "EXEC") // refused inside the transaction: a client denied blocking
			step(m, "PING")
			m.c.Close()
			b.c.Close()
		}
		if len(got[0]) != len(got[1]) {
			t.Fatalf("RESP%s: Redis %q, proxy %q", proto, got[0], got[1])
		}
		for j := range got[0] {
			if got[0][j] != got[1][j] {
				t.Errorf("RESP%s step %d: Redis %q, proxy %q", proto, j, got[0][j], got[1][j])
			}
		}
	}
}

// TestReplyOffInMultiAndBareClientMatchRedis: CLIENT REPLY OFF queued in
// MULTI (it once left the connection silent: MULTI's +OK lost, CLIENT
// REPLY ON unanswered), and a bare CLIENT (it once panicked the proxy),
// answered byte for byte as Redis answers them, the connection alive
// after, in RESP2 and RESP3.
func TestReplyOffInMultiAndBareClientMatchRedis(t *testing.T) {
	r, proxy := throwawayProxy(t)
	scripts := [][][]string{
		{{"MULTI"}, {"CLIENT", "REPLY", "OFF"}, {"SET", "fidro:k", "v"}, {"EXEC"}, {"CLIENT", "REPLY", "ON"}, {"GET", "fidro:k"}, {"PING"}},
		{{"CLIENT"}, {"PING"}},
		{{"MULTI"}, {"CLIENT"}, {"EXEC"}, {"PING"}},
	}
	for _, proto := range []string{"2", "3"} {
		for _, script := range scripts {
			var got [2]string
			for i, addr := range []string{r.Addr, proxy} {
				c := dialRaw(t, addr)
				if proto == "3" {
					c.do("HELLO", "3")
				}
				for _, cmd := range script {
					c.send(encode(cmd...))
				}
				// Replies up to PING's: the last command, answered in
				// every script.
				for {
					s := c.read()
					got[i] += s
					if s == "+PONG\r\n" {
						break
					}
				}
				c.c.Close()
			}
			if got[0] != got[1] {
				t.Errorf("RESP%s %v:\nRedis %q\nproxy %q", proto, script, got[0], got[1])
			}
		}
	}
}

// SUBSCRIBE of two channels inside MULTI: Redis' EXEC says one element
// but sends both confirmations, and the client is in the pub/sub context
// from then on (RESP2: only the pub/sub commands, PING, QUIT, RESET; a
// local answer such as CLIENT ID is refused too); UNSUBSCRIBE without
// channels then confirms each channel. Byte for byte as on Redis, in
// RESP2 and RESP3.
func TestSubscribeInsideMultiEntersPubSubContext(t *testing.T) {
	r, proxy := throwawayProxy(t)
	for _, proto := range []string{"2", "3"} {
		a, b := "fidsm:a:"+proto, "fidsm:b:"+proto
		cmds := [][]string{{"MULTI"}, {"SUBSCRIBE", a}, {"SUBSCRIBE", b}, {"EXEC"}, {"GET", "fidsm:k"}, {"PING"}}
		if proto == "2" {
			cmds = append(cmds, []string{"CLIENT", "ID"}, []string{"CLIENT", "INFO"})
		}
		cmds = append(cmds, []string{"UNSUBSCRIBE"})
		var got [2]string
		for i, addr := range []string{r.Addr, proxy} {
			c := dialRaw(t, addr)
			c.do("HELLO", proto)
			got[i] = c.exchange(cmds...)
			c.c.Close()
		}
		if got[0] != got[1] {
			t.Errorf("RESP%s:\nRedis %q\nproxy %q", proto, got[0], got[1])
		}
	}
}

// TestAbortedExecReleasesThePin: a MULTI that queued SUBSCRIBE and SELECT
// (state the proxy keeps on the pinned connection once they run) and
// whose EXEC aborted ran neither, so the session goes back to the shared
// path as after any transaction, with Redis' replies.
func TestAbortedExecReleasesThePin(t *testing.T) {
	r, proxy := throwawayProxy(t)
	cmds := [][]string{{"MULTI"}, {"SUBSCRIBE", "fidab"}, {"SELECT", "2"}, {"NOSUCHCOMMAND"}, {"EXEC"}, {"SET", "fidab:k", "1"}, {"GET", "fidab:k"}, {"PING"}}
	var got [2]string
	for i, addr := range []string{r.Addr, proxy} {
		c := dialRaw(t, addr)
		got[i] = c.exchange(cmds...)
		if i == 1 {
			if n := infoField(dialRaw(t, proxy).do("INFO", "respite"), "respite_pinned_sessions"); n != 0 {
				t.Errorf("after an aborted EXEC that queued SUBSCRIBE and SELECT: %d pinned sessions, want 0", n)
			}
		}
		c.c.Close()
	}
	if got[0] != got[1] {
		t.Errorf("Redis %q\nproxy %q", got[0], got[1])
	}
}
