package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
	"github.com/respite/respite/router"
)

// The cluster the cluster tests share: started by the first that needs
// it, stopped by TestMain.
var (
	clusterOnce sync.Once
	clusterEnv  *testenv.Cluster
	clusterErr  error
)

func testCluster(t testing.TB) *testenv.Cluster {
	t.Helper()
	clusterOnce.Do(func() { clusterEnv, clusterErr = testenv.StartCluster() })
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return clusterEnv
}

func stopTestCluster() {
	if clusterEnv != nil {
		clusterEnv.Stop()
	}
}

// startClusterProxy runs a proxy with upstream.mode cluster in front of
// the test cluster, which it empties first.
func startClusterProxy(t testing.TB, cl *testenv.Cluster) string {
	t.Helper()
	emptyCluster(t, cl)
	return startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.Mode = config.ModeCluster
		cfg.Upstream.Addrs = cl.Addrs()
	})
}

// emptyCluster runs FLUSHALL on every node of cl.
func emptyCluster(t testing.TB, cl *testenv.Cluster) {
	t.Helper()
	for _, a := range cl.Addrs() {
		raw := dialRaw(t, a)
		raw.do("FLUSHALL")
		raw.c.Close()
	}
}

// anotherNode returns the address of a node of cl other than addr.
func anotherNode(cl *testenv.Cluster, addr string) string {
	for _, a := range cl.Addrs() {
		if a != addr {
			return a
		}
	}
	return ""
}

// ownerOf returns the address of the primary serving slot.
func ownerOf(t testing.TB, cl *testenv.Cluster, slot int) string {
	t.Helper()
	nodes, err := cl.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if !n.Primary {
			continue
		}
		for _, r := range n.Slots {
			if r.Start <= slot && slot <= r.End {
				return n.Addr
			}
		}
	}
	t.Fatalf("no primary serves slot %d", slot)
	return ""
}

// 10,000 random SETs and GETs through the proxy: every reply equals, byte
// for byte, what a cluster-aware client (go-redis ClusterClient) gets for
// the same sequence, and every key is stored on the primary of the slot
// CLUSTER KEYSLOT names.
func TestClusterRandomSetGet(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	rng := rand.New(rand.NewSource(1))
	type op struct{ args []string }
	ops := make([]op, 10000)
	for i := range ops {
		k := "key:" + strconv.Itoa(rng.Intn(2000))
		if rng.Intn(2) == 0 {
			ops[i] = op{[]string{"SET", k, strconv.Itoa(rng.Int())}}
		} else {
			ops[i] = op{[]string{"GET", k}}
		}
	}
	// Through the proxy, pipelined 100 at a time.
	raw := dialRaw(t, addr)
	viaProxy := make([]string, len(ops))
	for i := 0; i < len(ops); i += 100 {
		var req []byte
		for _, o := range ops[i : i+100] {
			req = append(req, encode(o.args...)...)
		}
		raw.send(req)
		for j := i; j < i+100; j++ {
			viaProxy[j] = raw.read()
		}
	}
	// Every key is where CLUSTER KEYSLOT says, with the proxy's value.
	want := map[string]string{}
	for _, o := range ops {
		if o.args[0] == "SET" {
			want[o.args[1]] = o.args[2]
		}
	}
	conns := map[string]*rawConn{}
	for k, v := range want {
		slot, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(dialRawOnce(t, conns, cl.Addrs()[0]).do("CLUSTER", "KEYSLOT", k), ":")))
		if err != nil {
			t.Fatal(err)
		}
		if slot != testenv.KeySlot(k) {
			t.Fatalf("CLUSTER KEYSLOT %s = %d, testenv says %d", k, slot, testenv.KeySlot(k))
		}
		got := dialRawOnce(t, conns, ownerOf(t, cl, slot)).do("GET", k)
		if exp := fmt.Sprintf("$%d\r\n%s\r\n", len(v), v); got != exp {
			t.Fatalf("GET %s on the primary of slot %d: %q, want %q", k, slot, got, exp)
		}
	}
	// The same sequence on a cluster-aware client, from empty.
	for _, a := range cl.Addrs() {
		dialRawOnce(t, conns, a).do("FLUSHALL")
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), Protocol: 2, DisableIdentity: true})
	defer cc.Close()
	ctx := context.Background()
	for i, o := range ops {
		args := make([]any, len(o.args))
		for j, a := range o.args {
			args[j] = a
		}
		b, err := cc.DoRaw(ctx, args...).Result()
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != viaProxy[i] {
			t.Fatalf("op %d %v: proxy %q, cluster client %q", i, o.args, viaProxy[i], b)
		}
	}
}

func dialRawOnce(t testing.TB, conns map[string]*rawConn, addr string) *rawConn {
	if c := conns[addr]; c != nil {
		return c
	}
	c := dialRaw(t, addr)
	conns[addr] = c
	return c
}

// A slot resharded live (CLUSTER SETSLOT MIGRATING/IMPORTING, MIGRATE,
// SETSLOT NODE) while clients loop SET/GET on its keys: no client sees
// -MOVED or -ASK or a wrong value, and the proxy reads the topology a
// bounded number of times.
func TestClusterLiveReshard(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	const tag = "{reshard}"
	slot := testenv.KeySlot(tag)
	// Keys of the slot exist before the move, so MIGRATE has work to do.
	raw := dialRaw(t, addr)
	for i := range 500 {
		if got := raw.do("SET", tag+strconv.Itoa(i), "0"); got != "+OK\r\n" {
			t.Fatal(got)
		}
	}
	stats := func() int64 { return lastServer.up.Cluster().Stats().Refreshes }
	before := stats()
	var stop atomic.Bool
	var ops, redirects, wrong atomic.Int64
	var firstBad atomic.Value
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialRaw(t, addr)
			n := 0
			for !stop.Load() {
				k := tag + strconv.Itoa(g*100+n%100)
				v := strconv.Itoa(n)
				set := c.do("SET", k, v)
				get := c.do("GET", k)
				ops.Add(2)
				for _, r := range []string{set, get} {
					if strings.HasPrefix(r, "-MOVED") || strings.HasPrefix(r, "-ASK") || strings.HasPrefix(r, "-ERR") {
						redirects.Add(1)
						firstBad.CompareAndSwap(nil, r)
					}
				}
				if exp := fmt.Sprintf("$%d\r\n%s\r\n", len(v), v); get != exp {
					wrong.Add(1)
					firstBad.CompareAndSwap(nil, "GET "+k+": "+get+" want "+exp)
				}
				n++
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	from := ownerOf(t, cl, slot)
	to := anotherNode(cl, from)
	if err := cl.MigrateSlot(slot, from, to); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := cl.MigrateSlot(slot, to, from); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	st := lastServer.up.Cluster().Stats()
	t.Logf("%d commands, %d MOVED and %d ASK followed, %d TRYAGAIN, %d topology refreshes", ops.Load(), st.Moved, st.Asked, st.TryAgain, stats()-before)
	if redirects.Load() != 0 || wrong.Load() != 0 {
		t.Fatalf("%d redirect or error replies, %d wrong values; first: %v", redirects.Load(), wrong.Load(), firstBad.Load())
	}
	if st.Moved+st.Asked == 0 {
		t.Fatalf("no redirect was followed: the test did not exercise the reshard")
	}
	if n := stats() - before; n < 1 || n > 6 {
		t.Fatalf("%d topology refreshes for two moves of one slot, want 1 to 6", n)
	}
}

// keysOnPrimaries returns three keys "prefix<i>", each on another
// primary.
func keysOnPrimaries(t testing.TB, cl *testenv.Cluster, prefix string) []string {
	t.Helper()
	var keys []string
	seen := map[string]bool{}
	for i := 0; len(keys) < 3; i++ {
		k := prefix + strconv.Itoa(i)
		o := ownerOf(t, cl, testenv.KeySlot(k))
		if !seen[o] {
			seen[o] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// Multi-key commands over several slots are split by slot and merged in
// the client's order, byte for byte as per-key commands answer; those
// without a merge rule get Redis' own -CROSSSLOT.
func TestClusterMultiKey(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	c := dialRaw(t, addr)
	k := keysOnPrimaries(t, cl, "mk:")
	a, b, d := k[0], k[1], k[2]
	if got := c.do("MSET", a, "1", b, "", d, "three", a, "one"); got != "+OK\r\n" {
		t.Fatalf("MSET: %q", got)
	}
	for _, proto := range []string{"2", "3"} {
		c.do("HELLO", proto)
		args := []string{a, "missing:x", b, d, a, "{" + a + "}"}
		want := "*" + strconv.Itoa(len(args)) + "\r\n"
		for _, key := range args {
			want += c.do("GET", key)
		}
		if got := c.do(append([]string{"MGET"}, args...)...); got != want {
			t.Fatalf("RESP%s MGET across 3 primaries: %q, per-key GETs %q", proto, got, want)
		}
	}
	c.do("HELLO", "2")
	if got := c.do("EXISTS", a, b, d, "missing:x", a); got != ":4\r\n" {
		t.Fatalf("EXISTS: %q", got)
	}
	if got := c.do("TOUCH", a, b, "missing:x"); got != ":2\r\n" {
		t.Fatalf("TOUCH: %q", got)
	}
	if got := c.do("DEL", a, b, d); got != ":3\r\n" {
		t.Fatalf("DEL a b c: %q", got)
	}
	c.do("MSET", a, "1", b, "2")
	if got := c.do("UNLINK", a, b, d); got != ":2\r\n" {
		t.Fatalf("UNLINK: %q", got)
	}
	// As Redis words it: a node answers the same for keys of two slots.
	direct := dialRaw(t, cl.Addrs()[0])
	for _, args := range [][]string{
		{"MSETNX", a, "1", b, "2"},
		{"SUNION", a, b},
		{"RENAME", a, b},
		{"EVAL", "return 1", "2", a, b},
	} {
		want := direct.do(args...)
		if !strings.HasPrefix(want, "-CROSSSLOT") {
			t.Fatalf("direct %v: %q", args, want)
		}
		if got := c.do(args...); got != want {
			t.Fatalf("%v: %q, Redis says %q", args, got, want)
		}
	}
	// Same slot by hash tag: as one command.
	if got := c.do("MSETNX", "{t}a", "1", "{t}b", "2"); got != ":1\r\n" {
		t.Fatalf("MSETNX same slot: %q", got)
	}
	if got := c.do("SUNIONSTORE", "{t}c", "{t}x", "{t}y"); got != ":0\r\n" {
		t.Fatalf("SUNIONSTORE same slot: %q", got)
	}
}

// SCAN over 5,000 keys on three primaries, COUNT 10: the key set exactly,
// each key once, cursor 0 only at the end; DBSIZE sums, KEYS
// concatenates, FLUSHALL and SCRIPT LOAD reach every primary.
func TestClusterScanAndWholeDataset(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	c := dialRaw(t, addr)
	want := map[string]bool{}
	var req []byte
	for i := range 5000 {
		k := "scan:" + strconv.Itoa(i)
		want[k] = true
		req = append(req, encode("SET", k, "v")...)
	}
	c.send(req)
	for range 5000 {
		if got := c.read(); got != "+OK\r\n" {
			t.Fatal(got)
		}
	}
	got := map[string]int{}
	cursor, calls, zeros := "0", 0, 0
	for {
		calls++
		reply := c.do("SCAN", cursor, "COUNT", "10")
		parts := splitArray(t, reply)
		cursor = parts[0]
		for _, k := range parts[1:] {
			got[k]++
		}
		if cursor == "0" {
			zeros++
			break
		}
		if calls > 100000 {
			t.Fatal("SCAN does not end")
		}
	}
	if len(got) != len(want) {
		t.Fatalf("SCAN returned %d distinct keys, want %d", len(got), len(want))
	}
	for k, n := range got {
		if !want[k] || n != 1 {
			t.Fatalf("SCAN returned %q %d times", k, n)
		}
	}
	t.Logf("SCAN COUNT 10: %d calls for 5000 keys, cursor 0 once", calls)
	if got := c.do("DBSIZE"); got != ":5000\r\n" {
		t.Fatalf("DBSIZE: %q", got)
	}
	if keys := splitArray(t, "*2\r\n$1\r\n0\r\n"+c.do("KEYS", "scan:*")); len(keys)-1 != 5000 {
		t.Fatalf("KEYS: %d keys", len(keys)-1)
	}
	if got := c.do("SCAN", "1023"); got != "-ERR invalid cursor\r\n" {
		t.Fatalf("SCAN of a shard that does not exist: %q", got)
	}
	sha := c.do("SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])")
	if !strings.HasPrefix(sha, "$40\r\n") {
		t.Fatalf("SCRIPT LOAD: %q", sha)
	}
	sha = strings.TrimSuffix(strings.TrimPrefix(sha, "$40\r\n"), "\r\n")
	for _, k := range keysOnPrimaries(t, cl, "scan:") {
		if got := c.do("EVALSHA", sha, "1", k); got != "$1\r\nv\r\n" {
			t.Fatalf("EVALSHA on the primary of %s: %q", k, got)
		}
	}
	if got := c.do("FLUSHALL"); got != "+OK\r\n" {
		t.Fatalf("FLUSHALL: %q", got)
	}
	if got := c.do("DBSIZE"); got != ":0\r\n" {
		t.Fatalf("DBSIZE after FLUSHALL: %q", got)
	}
}

// splitArray reads a SCAN-shaped reply: the cursor, then the keys.
func splitArray(t testing.TB, reply string) []string {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(reply))
	var out []string
	var walk func() error
	walk = func() error {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		n, _ := strconv.Atoi(line[1 : len(line)-2])
		switch line[0] {
		case '*':
			for range n {
				if err := walk(); err != nil {
					return err
				}
			}
		case '$':
			buf := make([]byte, n+2)
			if _, err := io.ReadFull(br, buf); err != nil {
				return err
			}
			out = append(out, string(buf[:n]))
		default:
			return fmt.Errorf("unexpected %q", line)
		}
		return nil
	}
	for {
		if err := walk(); err != nil {
			if err == io.EOF {
				return out
			}
			t.Fatalf("%q: %v", reply, err)
		}
	}
}

// Transactions on a cluster: pinned to the primary of the first key's
// slot (also when MULTI came before any key); a key of another slot is
// refused with -CROSSSLOT and EXEC answers -EXECABORT; WATCH aborts as on
// Redis; a slot that moves under a transaction gives -TRYAGAIN, never a
// -MOVED.
func TestClusterTransactions(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	c := dialRaw(t, addr)
	other := dialRaw(t, addr)
	expect := func(c *rawConn, want string, args ...string) {
		t.Helper()
		if got := c.do(args...); got != want {
			t.Fatalf("%v: %q, want %q", args, got, want)
		}
	}
	// Same slot by hash tag, WATCH first.
	expect(c, "+OK\r\n", "WATCH", "{t}a")
	expect(c, "+OK\r\n", "MULTI")
	expect(c, "+QUEUED\r\n", "SET", "{t}a", "1")
	expect(c, "+QUEUED\r\n", "INCR", "{t}b")
	expect(c, "*2\r\n+OK\r\n:1\r\n", "EXEC")
	// MULTI before any key, then keys of each primary in turn: the
	// transaction moves to the key's primary with what it queued.
	for _, k := range keysOnPrimaries(t, cl, "tx:") {
		expect(c, "+OK\r\n", "MULTI")
		expect(c, "+QUEUED\r\n", "PING")
		expect(c, "+QUEUED\r\n", "SET", k, "v")
		expect(c, "+QUEUED\r\n", "GET", k)
		expect(c, "*3\r\n+PONG\r\n+OK\r\n$1\r\nv\r\n", "EXEC")
	}
	// Another slot inside MULTI: CROSSSLOT, then EXECABORT.
	k := keysOnPrimaries(t, cl, "x:")
	expect(c, "+OK\r\n", "MULTI")
	expect(c, "+QUEUED\r\n", "SET", k[0], "1")
	expect(c, "-"+"CROSSSLOT Keys in request don't hash to the same slot\r\n", "SET", k[1], "1")
	expect(c, "-EXECABORT Transaction discarded because of previous errors.\r\n", "EXEC")
	expect(c, "$-1\r\n", "GET", k[0])
	// The same slot, another key of the same node: CROSSSLOT too.
	expect(c, "+OK\r\n", "MULTI")
	expect(c, "+QUEUED\r\n", "SET", "{t}a", "1")
	expect(c, "-"+"CROSSSLOT Keys in request don't hash to the same slot\r\n", "SET", "{u}a", "1")
	expect(c, "-EXECABORT Transaction discarded because of previous errors.\r\n", "EXEC")
	// WATCH: another client's write aborts the transaction.
	expect(c, "+OK\r\n", "WATCH", k[0])
	expect(c, "$-1\r\n", "GET", k[1]) // another primary, outside MULTI: the shared path
	expect(other, "+OK\r\n", "SET", k[0], "changed")
	expect(c, "+OK\r\n", "MULTI")
	expect(c, "+QUEUED\r\n", "SET", k[0], "mine")
	expect(c, "*-1\r\n", "EXEC")
	expect(c, "$7\r\nchanged\r\n", "GET", k[0])
	// The slot of a WATCHed key moves: the queued command gets TRYAGAIN,
	// EXEC EXECABORT, and the retry succeeds on the new primary.
	slot := testenv.KeySlot(k[0])
	from := ownerOf(t, cl, slot)
	to := ownerOf(t, cl, testenv.KeySlot(k[1]))
	expect(c, "+OK\r\n", "WATCH", k[0])
	if err := cl.MigrateSlot(slot, from, to); err != nil {
		t.Fatal(err)
	}
	defer cl.MigrateSlot(slot, to, from)
	expect(c, "+OK\r\n", "MULTI")
	got := c.do("SET", k[0], "retried")
	if !strings.HasPrefix(got, "-TRYAGAIN ") {
		t.Fatalf("SET in a transaction whose slot moved: %q, want -TRYAGAIN", got)
	}
	expect(c, "-EXECABORT Transaction discarded because of previous errors.\r\n", "EXEC")
	expect(c, "+OK\r\n", "WATCH", k[0])
	expect(c, "+OK\r\n", "MULTI")
	expect(c, "+QUEUED\r\n", "SET", k[0], "retried")
	expect(c, "*1\r\n+OK\r\n", "EXEC")
	expect(other, "$7\r\nretried\r\n", "GET", k[0])
	// The sessions' node connections were reset and kept for reuse.
	deadline := time.Now().Add(5 * time.Second)
	for _, idle := lastServer.up.Pinned(); idle == 0; _, idle = lastServer.up.Pinned() {
		if time.Now().After(deadline) {
			t.Fatal("no pinned node connection was kept for reuse")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BLPOP on a cluster: pinned to the key's primary and woken by an LPUSH
// through the proxy while another slot is resharded; a BLPOP whose own
// slot moves while it blocks follows it and is woken there.
func TestClusterBlocking(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	waiter, pusher := dialRaw(t, addr), dialRaw(t, addr)
	other := "{reshard-other}"
	otherSlot := testenv.KeySlot(other)
	for _, moveOwn := range []bool{false, true} {
		q := "{q}list"
		if moveOwn {
			q = "{q2}list"
		}
		slot := testenv.KeySlot(q)
		moving := otherSlot
		if moveOwn {
			moving = slot
		}
		from := ownerOf(t, cl, moving)
		var to string
		for _, a := range cl.Addrs() {
			if a != from {
				to = a
				break
			}
		}
		waiter.send(encode("BLPOP", q, "5"))
		time.Sleep(200 * time.Millisecond) // blocked
		start := time.Now()
		if err := cl.MigrateSlot(moving, from, to); err != nil {
			t.Fatal(err)
		}
		if got := pusher.do("LPUSH", q, "woken"); got != ":1\r\n" {
			t.Fatalf("LPUSH: %q", got)
		}
		want := fmt.Sprintf("*2\r\n$%d\r\n%s\r\n$5\r\nwoken\r\n", len(q), q)
		if got := waiter.read(); got != want {
			t.Fatalf("BLPOP (own slot moved: %v): %q, want %q", moveOwn, got, want)
		}
		t.Logf("own slot moved %v: woken %v after the reshard began", moveOwn, time.Since(start).Round(time.Millisecond))
		if err := cl.MigrateSlot(moving, to, from); err != nil {
			t.Fatal(err)
		}
	}
}

// SSUBSCRIBE goes to the shard channel's primary: SPUBLISH through the
// proxy reaches it; SUBSCRIBE works on any node.
func TestClusterPubSub(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	sub, pub := dialRaw(t, addr), dialRaw(t, addr)
	for _, ch := range keysOnPrimaries(t, cl, "ch:") {
		if got := sub.do("SSUBSCRIBE", ch); got != fmt.Sprintf("*3\r\n$10\r\nssubscribe\r\n$%d\r\n%s\r\n:1\r\n", len(ch), ch) {
			t.Fatalf("SSUBSCRIBE %s: %q", ch, got)
		}
		if got := pub.do("SPUBLISH", ch, "hi"); got != ":1\r\n" {
			t.Fatalf("SPUBLISH %s: %q", ch, got)
		}
		if got := sub.read(); got != fmt.Sprintf("*3\r\n$8\r\nsmessage\r\n$%d\r\n%s\r\n$2\r\nhi\r\n", len(ch), ch) {
			t.Fatalf("smessage on %s: %q", ch, got)
		}
		if got := sub.do("SUNSUBSCRIBE", ch); !strings.HasPrefix(got, "*3\r\n$12\r\nsunsubscribe\r\n") {
			t.Fatalf("SUNSUBSCRIBE: %q", got)
		}
		sub.c.Close()
		sub = dialRaw(t, addr)
	}
	if got := sub.do("SUBSCRIBE", "news"); got != "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n" {
		t.Fatalf("SUBSCRIBE: %q", got)
	}
	// PUBLISH counts the receivers on the node it reached; the cluster
	// bus carries the message to the others.
	if got := pub.do("PUBLISH", "news", "x"); !strings.HasPrefix(got, ":") {
		t.Fatalf("PUBLISH: %q", got)
	}
	if got := sub.read(); got != "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$1\r\nx\r\n" {
		t.Fatalf("message: %q", got)
	}
}

// The transactions issue's reference cases (txCases) on a cluster: every
// key gets the hash tag {tx}, so each case's keys share a slot as a
// cluster client's must; the replies through the proxy equal a standalone
// Redis' byte for byte.
func TestClusterTransactionCases(t *testing.T) {
	cl := testCluster(t)
	proxy := startClusterProxy(t, cl)
	for _, tc := range txCases {
		t.Run(tc.name, func(t *testing.T) {
			steps := make([]string, len(tc.steps))
			for i, step := range tc.steps {
				steps[i] = tagKeys(step)
			}
			dialRaw(t, redisAddr).do("FLUSHALL")
			direct := runScript(t, redisAddr, steps)
			dialRaw(t, proxy).do("FLUSHALL")
			proxied := runScript(t, proxy, steps)
			for i, step := range steps {
				if direct[i] != proxied[i] {
					t.Errorf("step %q: Redis replied %q, proxy on a cluster %q", step, direct[i], proxied[i])
				}
			}
		})
	}
}

// tagKeys puts {tx} before every key of a txCases step.
func tagKeys(step string) string {
	who, rest, _ := strings.Cut(step, ": ")
	cmdText, want, hasWant := strings.Cut(rest, " => ")
	args := strings.Fields(cmdText)
	raw := make([][]byte, len(args))
	for i, a := range args {
		raw[i] = []byte(a)
	}
	var cmd router.Command
	router.Classify(&cmd, raw, nil)
	for _, k := range cmd.Keys {
		args[k] = "{tx}" + args[k]
	}
	out := who + ": " + strings.Join(args, " ")
	if hasWant {
		out += " => " + want
	}
	return out
}

// cluster_answers: a go-redis ClusterClient pointed at the proxy sees a
// one-node cluster and sends it everything; keys still land on the real
// cluster's primaries and no redirect reaches the client.
func TestClusterAnswers(t *testing.T) {
	cl := testCluster(t)
	for _, a := range cl.Addrs() {
		dialRaw(t, a).do("FLUSHALL")
	}
	addr := startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.Mode = config.ModeCluster
		cfg.Upstream.Addrs = cl.Addrs()
		cfg.ClusterAnswers.Enabled = true
	})
	raw := dialRaw(t, addr)
	host, port, _ := strings.Cut(addr, ":")
	slots := raw.do("CLUSTER", "SLOTS")
	if !strings.HasPrefix(slots, fmt.Sprintf("*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$%d\r\n%s\r\n:%s\r\n$40\r\n", len(host), host, port)) {
		t.Fatalf("CLUSTER SLOTS: %q", slots)
	}
	for _, c := range []string{"ASKING", "READONLY", "READWRITE"} {
		if got := raw.do(c); got != "+OK\r\n" {
			t.Fatalf("%s: %q", c, got)
		}
	}
	if got := raw.do("CLUSTER", "KEYSLOT", "foo"); got != ":12182\r\n" {
		t.Fatalf("CLUSTER KEYSLOT: %q", got)
	}
	for _, proto := range []int{2, 3} {
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}, Protocol: proto, DisableIdentity: true})
		ctx := context.Background()
		for i := range 300 {
			k := "ca:" + strconv.Itoa(i)
			if err := cc.Set(ctx, k, i, 0).Err(); err != nil {
				t.Fatalf("RESP%d SET %s: %v", proto, k, err)
			}
		}
		vals, err := cc.MGet(ctx, "ca:1", "ca:2", "ca:299", "ca:missing").Result()
		if err != nil || len(vals) != 4 || vals[0] != "1" || vals[2] != "299" || vals[3] != nil {
			t.Fatalf("RESP%d MGET across slots: %v %v", proto, vals, err)
		}
		if n, err := cc.DBSize(ctx).Result(); err != nil || n != 300 {
			t.Fatalf("RESP%d DBSIZE: %d %v", proto, n, err)
		}
		cc.Close()
	}
	// Every key is on the primary of its slot.
	for i := range 300 {
		k := "ca:" + strconv.Itoa(i)
		if got := dialRaw(t, ownerOf(t, cl, testenv.KeySlot(k))).do("GET", k); got != fmt.Sprintf("$%d\r\n%d\r\n", len(strconv.Itoa(i)), i) {
			t.Fatalf("%s on its primary: %q", k, got)
		}
	}
}

// A primary dies and its replica takes over (cluster-node-timeout 3 s):
// the proxy reads the slot map again and writes to its slots succeed
// again soon after the failover, without a restart.
func TestClusterPrimaryFailover(t *testing.T) {
	cl, err := testenv.StartCluster(testenv.ClusterReplicas(1), testenv.ClusterNodeTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Stop()
	addr := startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.Mode = config.ModeCluster
		cfg.Upstream.Addrs = cl.Addrs()
		cfg.Upstream.Timeout = config.Duration(2 * time.Second)
	})
	c := dialRaw(t, addr)
	victim := cl.Addrs()[0]
	var key string
	for i := 0; key == ""; i++ {
		if k := "fo:" + strconv.Itoa(i); ownerOf(t, cl, testenv.KeySlot(k)) == victim {
			key = k
		}
	}
	if got := c.do("SET", key, "before"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	time.Sleep(500 * time.Millisecond) // replicated
	nodes, err := cl.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	cl.Kill(nodes[0].Index)
	killed := time.Now()
	var resumed time.Duration
	for time.Since(killed) < 40*time.Second {
		if got := c.do("SET", key, "after"); got == "+OK\r\n" {
			resumed = time.Since(killed)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if resumed == 0 {
		t.Fatalf("writes to the dead primary's slots did not resume within 40s")
	}
	t.Logf("writes resumed %v after the primary was killed (node timeout 3s); %d slot maps read", resumed.Round(time.Millisecond), lastServer.up.Cluster().Stats().Refreshes)
	if got := c.do("GET", key); got != "$5\r\nafter\r\n" {
		t.Fatalf("GET after the failover: %q", got)
	}
	if resumed > 20*time.Second {
		t.Fatalf("writes resumed only after %v", resumed)
	}
}

// RANDOMKEY finds a key whichever primary holds it; a transaction left
// open past transactions.idle_timeout is ended on its own node.
func TestClusterRandomKeyAndIdleTimeout(t *testing.T) {
	cl := testCluster(t)
	for _, a := range cl.Addrs() {
		dialRaw(t, a).do("FLUSHALL")
	}
	addr := startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.Mode = config.ModeCluster
		cfg.Upstream.Addrs = cl.Addrs()
		cfg.Transactions.IdleTimeout = config.Duration(300 * time.Millisecond)
	})
	c := dialRaw(t, addr)
	if got := c.do("RANDOMKEY"); got != "$-1\r\n" {
		t.Fatalf("RANDOMKEY of an empty cluster: %q", got)
	}
	k := keysOnPrimaries(t, cl, "rk:")[2]
	c.do("SET", k, "1")
	for range 10 {
		if got := c.do("RANDOMKEY"); got != fmt.Sprintf("$%d\r\n%s\r\n", len(k), k) {
			t.Fatalf("RANDOMKEY with one key on one primary: %q", got)
		}
	}
	c.do("WATCH", k)
	c.do("MULTI")
	if got := c.do("SET", k, "2"); got != "+QUEUED\r\n" {
		t.Fatal(got)
	}
	time.Sleep(700 * time.Millisecond)
	if got := c.do("EXEC"); !strings.HasPrefix(got, "-ERR transaction ended by the proxy") {
		t.Fatalf("EXEC after idle timeout: %q", got)
	}
	if got := c.do("GET", k); got != "$1\r\n1\r\n" {
		t.Fatalf("the transaction ran: %q", got)
	}
}

// SSUBSCRIBE across a reshard of the channel's slot: the node that loses
// the slot unsubscribes the proxy's connection; the proxy subscribes again
// on the new primary, and the client keeps receiving SPUBLISH with no
// unsubscribe and a short gap.
func TestClusterShardSubscribeAcrossReshard(t *testing.T) {
	cl := testCluster(t)
	addr := startClusterProxy(t, cl)
	sub, pub := dialRaw(t, addr), dialRaw(t, addr)
	const ch = "{shardmove}news"
	slot := testenv.KeySlot(ch)
	if got := sub.do("SSUBSCRIBE", ch); !strings.HasPrefix(got, "*3\r\n$10\r\nssubscribe\r\n") {
		t.Fatalf("SSUBSCRIBE: %q", got)
	}
	var stop atomic.Bool
	var mu sync.Mutex
	var sent []time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; !stop.Load(); i++ {
			mu.Lock()
			sent = append(sent, time.Now())
			mu.Unlock()
			pub.do("SPUBLISH", ch, strconv.Itoa(i))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	from := ownerOf(t, cl, slot)
	to := anotherNode(cl, from)
	time.Sleep(200 * time.Millisecond)
	if err := cl.MigrateSlot(slot, from, to); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	<-done
	// Read what arrived: only smessages, in order; the longest gap.
	var last time.Time
	var gap time.Duration
	got := 0
	sub.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		line, err := readReply(sub.br)
		if err != nil {
			break
		}
		if !strings.HasPrefix(line, "*3\r\n$8\r\nsmessage\r\n") {
			t.Fatalf("the subscriber got %q", line)
		}
		parts := splitArray(t, line)
		n, _ := strconv.Atoi(parts[2])
		mu.Lock()
		at := sent[n]
		mu.Unlock()
		if !last.IsZero() && at.Sub(last) > gap {
			gap = at.Sub(last)
		}
		last = at
		got++
	}
	mu.Lock()
	total := len(sent)
	mu.Unlock()
	t.Logf("%d of %d messages received across the reshard; longest gap between two received (by publish time) %v", got, total, gap.Round(time.Millisecond))
	if got == 0 || gap > time.Second {
		t.Fatalf("%d messages, gap %v", got, gap)
	}
	if got < total-50 {
		t.Fatalf("only %d of %d messages", got, total)
	}
	if err := cl.MigrateSlot(slot, to, from); err != nil {
		t.Fatal(err)
	}
}
