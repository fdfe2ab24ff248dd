package server

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// upstream.mode sentinel under write load: SENTINEL FAILOVER moves the
// primary, the proxy follows it (+switch-master, or the sentinels asked
// again when a connection fails), and writes succeed again within
// down-after-milliseconds (1 s here) + 2 s, with no acknowledged write
// lost; a session pinned to the old primary (WATCH) is ended.
func TestSentinelFailoverUnderWrites(t *testing.T) {
	s, err := testenv.StartSentinel()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	addr := startProxy(t, func(cfg *config.Config) {
		cfg.Upstream.Mode = config.ModeSentinel
		cfg.Upstream.Addrs = []string{s.SentinelAddr()}
		cfg.Upstream.MasterName = s.MasterName()
		cfg.Upstream.Timeout = config.Duration(2 * time.Second)
	})
	first, err := s.PrimaryAddr()
	if err != nil {
		t.Fatal(err)
	}
	c := dialRaw(t, addr)
	if got := c.do("SET", "before", "1"); got != "+OK\r\n" {
		t.Fatalf("SET through the proxy: %q", got)
	}
	watcher := dialRaw(t, addr)
	if got := watcher.do("WATCH", "before"); got != "+OK\r\n" {
		t.Fatal(got)
	}

	var stop atomic.Bool
	var mu sync.Mutex
	var maxGap time.Duration
	acked := map[string]bool{}
	var wg sync.WaitGroup
	var errs atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := dialRaw(t, addr)
			last := time.Now()
			for n := 0; !stop.Load(); n++ {
				k := "w:" + strconv.Itoa(g) + ":" + strconv.Itoa(n)
				got := w.do("SET", k, "v")
				now := time.Now()
				if got != "+OK\r\n" {
					errs.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				acked[k] = true
				if gap := now.Sub(last); gap > maxGap {
					maxGap = gap
				}
				mu.Unlock()
				last = now
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Failover(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()
	second, _ := s.PrimaryAddr()
	if second == first {
		t.Fatalf("the primary is still %s", first)
	}
	mu.Lock()
	gap := maxGap
	n := len(acked)
	mu.Unlock()
	lost := 0
	for k := range acked {
		if c.do("EXISTS", k) != ":1\r\n" {
			lost++
		}
	}
	t.Logf("failover %s -> %s: %d writes acknowledged, %d refused meanwhile, longest gap between two acknowledged writes of one client %v, %d acknowledged writes not on the new primary (asynchronous replication), %d switches seen",
		first, second, n, errs.Load(), gap.Round(time.Millisecond), lost, lastServer.up.SentinelSwitches())
	if gap > 3*time.Second {
		t.Fatalf("writes stopped for %v, more than down-after (1s) + 2s", gap)
	}
	// The proxy leaves the old primary when the sentinel starts promoting
	// the replica: at most the write each client had in flight then can
	// miss the replication.
	if lost > 4 {
		t.Fatalf("%d acknowledged writes lost in the failover", lost)
	}
	if lastServer.up.SentinelSwitches() < 1 {
		t.Fatal("the proxy did not see the switch")
	}
	// The session pinned to the old primary has ended.
	watcher.send(encode("MULTI"))
	watcher.expectClosed()
	if got := c.do("GET", "before"); got != "$1\r\n1\r\n" {
		t.Fatalf("GET after the failover: %q", got)
	}
}
