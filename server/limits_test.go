package server

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
)

// TestOutputLimitClosesClientsThatDoNotRead is the durability issue's
// output-buffer case: clients that pipeline GETs of a 1 MB value and never
// read are closed once the replies held for them pass max_output_bytes
// (Redis' client-output-buffer-limit), other clients are served meanwhile
// without errors, and the proxy's memory comes back after they left.
func TestOutputLimitClosesClientsThatDoNotRead(t *testing.T) {
	addr := startProxy(t, func(c *config.Config) { c.Limits.MaxOutputBytes = 4 << 20 })
	srv := lastServer
	other := dialRaw(t, addr)
	value := strings.Repeat("v", 1<<20)
	if got := other.do("SET", "obuf:big", value); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	const slow = 8
	var pipeline []byte
	for range 200 {
		pipeline = append(pipeline, encode("GET", "obuf:big")...)
	}
	conns := make([]net.Conn, slow)
	for i := range conns {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		conns[i] = nc
		go nc.Write(pipeline) // blocks once the proxy stops reading; never read
	}

	// Unrelated clients keep being served while the slow ones pile up.
	deadline := time.Now().Add(20 * time.Second)
	for srv.counts.outputLimit.Load() < slow {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients closed for the output limit", srv.counts.outputLimit.Load(), slow)
		}
		start := time.Now()
		if got := other.do("INCR", "obuf:n"); !strings.HasPrefix(got, ":") {
			t.Fatalf("INCR while slow clients pile up: %q", got)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("INCR took %v while slow clients piled up", d)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Each slow client got at most what fits its limit, then EOF.
	for i, nc := range conns {
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := countReplies(bufio.NewReader(nc))
		if err == nil || n >= 200 {
			t.Fatalf("slow client %d: %d replies, err %v; want closed early", i, n, err)
		}
	}
	for i := range conns {
		conns[i].Close()
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		if grown < 16<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heap still %d MB above its level before the slow clients", grown>>20)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := other.do("GET", "obuf:n"); !strings.HasPrefix(got, "$") {
		t.Fatalf("GET after: %q", got)
	}
}

// TestLargePipelineStreamsToAReader: a client that reads gets every reply
// of a pipeline whose replies together are far above max_output_bytes.
func TestLargePipelineStreamsToAReader(t *testing.T) {
	addr := startProxy(t, func(c *config.Config) { c.Limits.MaxOutputBytes = 32 << 20 })
	r := dialRaw(t, addr)
	value := strings.Repeat("w", 1<<20)
	if got := r.do("SET", "obuf:stream", value); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	const n = 100 // 100 MB of replies through a 32 MB limit
	var pipeline []byte
	for range n {
		pipeline = append(pipeline, encode("GET", "obuf:stream")...)
	}
	pipeline = append(pipeline, encode("PING")...)
	r.send(pipeline)
	want := fmt.Sprintf("$%d\r\n%s\r\n", len(value), value)
	for i := range n {
		if got := r.read(); got != want {
			t.Fatalf("reply %d: %d bytes, want %d: %.80q", i, len(got), len(want), got)
		}
	}
	if got := r.read(); got != "+PONG\r\n" {
		t.Fatalf("PING: %q", got)
	}
	if c := lastServer.counts.outputLimit.Load(); c != 0 {
		t.Fatalf("%d clients closed for the output limit", c)
	}
}

// countReplies reads replies until an error.
func countReplies(br *bufio.Reader) (int, error) {
	for n := 0; ; n++ {
		if _, err := readReply(br); err != nil {
			return n, err
		}
	}
}

// TestSlowClientsWithoutOutputLimit: with no output limit (the default, as
// Redis' normal class), clients that pipeline large replies and never read
// stay connected, but what the proxy holds for them is bounded by their
// pipeline window, and other clients are served meanwhile.
func TestSlowClientsWithoutOutputLimit(t *testing.T) {
	addr := startProxy(t, nil)
	other := dialRaw(t, addr)
	value := strings.Repeat("u", 1<<20)
	if got := other.do("SET", "obuf:nolimit", value); got != "+OK\r\n" {
		t.Fatalf("SET: %q", got)
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var pipeline []byte
	for range 300 {
		pipeline = append(pipeline, encode("GET", "obuf:nolimit")...)
	}
	const slow = 8
	for range slow {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		go nc.Write(pipeline)
	}
	// 8 x 300 MB of replies asked for; the proxy holds a window's worth each.
	var peak int64
	for range 100 {
		if got := other.do("INCR", "obuf:nolimit:n"); !strings.HasPrefix(got, ":") {
			t.Fatalf("INCR while slow clients wait: %q", got)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, int64(ms.HeapAlloc)-int64(before.HeapAlloc))
		time.Sleep(10 * time.Millisecond)
	}
	if peak > 8*40<<20 {
		t.Fatalf("heap grew by %d MB for %d clients that do not read", peak>>20, slow)
	}
	t.Logf("heap growth with %d slow clients: %d MB", slow, peak>>20)
}

// TestClientTimeout: limits.client_timeout closes a client that completes
// no command for that long, an idle one as a slow one (a byte every 100
// ms), while subscribed and blocked clients stay, as in Redis' timeout.
func TestClientTimeout(t *testing.T) {
	addr := startProxy(t, func(c *config.Config) { c.Limits.ClientTimeout = config.Duration(400 * time.Millisecond) })
	srv := lastServer

	idle := dialRaw(t, addr)
	if got := idle.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("PING: %q", got)
	}
	slowloris := dialRaw(t, addr)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		slowloris.c.Write([]byte("*1\r\n$4\r\n"))
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := slowloris.c.Write([]byte("P")); err != nil {
					return
				}
			}
		}
	}()
	sub := dialRaw(t, addr)
	if got := sub.do("SUBSCRIBE", "timeout:ch"); !strings.Contains(got, "subscribe") {
		t.Fatalf("SUBSCRIBE: %q", got)
	}
	blocked := dialRaw(t, addr)
	blocked.send(encode("BLPOP", "timeout:list", "1.5"))
	busy := dialRaw(t, addr)

	start := time.Now()
	for time.Since(start) < 1200*time.Millisecond {
		if got := busy.do("PING"); got != "+PONG\r\n" {
			t.Fatalf("a client sending commands: %q", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	busy.c.Close() // before it is idle itself
	idle.expectClosed()
	slowloris.expectClosed()
	if got := blocked.read(); got != "*-1\r\n" {
		t.Fatalf("BLPOP after its own timeout: %q", got)
	}
	if got := dialRaw(t, addr).do("PUBLISH", "timeout:ch", "hi"); got != ":1\r\n" {
		t.Fatalf("PUBLISH to the subscriber: %q", got)
	}
	if got := sub.read(); !strings.Contains(got, "hi") {
		t.Fatalf("subscriber after the timeout: %q", got)
	}
	if n := srv.counts.idleClosed.Load(); n != 2 {
		t.Fatalf("idle closes: %d, want 2", n)
	}
}

// TestQueryBytesTotal: limits.max_query_bytes_total bounds the incomplete
// commands of all clients together: the client whose command would pass it
// is closed without a reply; the others, and later clients, are served.
func TestQueryBytesTotal(t *testing.T) {
	addr := startProxy(t, func(c *config.Config) { c.Limits.MaxQueryBytesTotal = 1 << 20 })
	srv := lastServer
	const size = 600 << 10
	header := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$9\r\nqbuf:big1\r\n$%d\r\n", size)
	value := strings.Repeat("q", size)

	first := dialRaw(t, addr)
	first.send([]byte(header + value[:size/2]))
	time.Sleep(200 * time.Millisecond) // let the proxy read it
	second := dialRaw(t, addr)
	second.send([]byte(strings.Replace(header, "big1", "big2", 1) + value[:size/2]))
	second.expectClosed()
	first.send([]byte(value[size/2:] + "\r\n"))
	if got := first.read(); got != "+OK\r\n" {
		t.Fatalf("first client's SET: %q", got)
	}
	third := dialRaw(t, addr)
	if got := third.do("SET", "qbuf:big3", value); got != "+OK\r\n" {
		t.Fatalf("a later client's SET: %q", got)
	}
	if n := srv.counts.queryLimit.Load(); n != 1 {
		t.Fatalf("query limit closes: %d, want 1", n)
	}
	if n := srv.queryBytes.Load(); n != 0 {
		t.Fatalf("incomplete bytes left counted: %d", n)
	}
}
