package server

import (
	"context"
	"fmt"
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
	for _, a := range cl.Addrs() {
		raw := dialRaw(t, a)
		raw.do("FLUSHALL")
		raw.c.Close()
	}
	return startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.Mode = config.ModeCluster
		cfg.Upstream.Addrs = cl.Addrs()
	})
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
	var to string
	for _, a := range cl.Addrs() {
		if a != from {
			to = a
			break
		}
	}
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
