package upstream

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
	"github.com/respite/respite/resp"
)

// recorder is an Invalidations that keeps what it was told.
type recorder struct {
	mu    sync.Mutex
	keys  []string
	on    bool
	purge int
}

func (r *recorder) Invalidate(keys []string) {
	r.mu.Lock()
	r.keys = append(r.keys, keys...)
	r.mu.Unlock()
}

func (r *recorder) Purge() {
	r.mu.Lock()
	r.purge++
	r.mu.Unlock()
}

func (r *recorder) Tracking(quiet func() bool) {
	r.mu.Lock()
	r.on = quiet != nil
	r.mu.Unlock()
}

func (r *recorder) state() (on bool, purges int, keys []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.on, r.purge, slices.Clone(r.keys)
}

// set sends SET key v straight to the Redis at addr.
func set(t *testing.T, addr, key string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(resp.AppendCommand(nil, strArgs("SET", key, "v"))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := nc.Read(buf)
	if err != nil || string(buf[:n]) != "+OK\r\n" {
		t.Fatalf("SET %s on %s: %q, %v", key, addr, buf[:n], err)
	}
}

// waitKey waits until r was told of key.
func waitKey(t *testing.T, r *recorder, key string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, keys := r.state(); slices.Contains(keys, key) {
			return
		}
		if time.Now().After(deadline) {
			on, _, keys := r.state()
			t.Fatalf("no invalidation of %s after 5s (tracking on %v, keys %q)", key, on, keys)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// In upstream.mode sentinel the tracking connection goes to the primary
// the sentinel names, not to upstream.addr (here another Redis, which
// never sees the writes), and after a failover it tracks the new
// primary. Before, it dialled upstream.addr (by default 127.0.0.1:6379):
// the in-process tiers heard of no write to the primary.
func TestTrackFollowsSentinelPrimary(t *testing.T) {
	s, err := testenv.StartSentinel()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	decoy, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer decoy.Stop()
	cfg := config.Default().Upstream
	cfg.Mode, cfg.Addrs, cfg.MasterName = config.ModeSentinel, []string{s.SentinelAddr()}, s.MasterName()
	cfg.Addr = decoy.Addr
	u, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	defer func() { cancel(); <-done }()
	r := &recorder{}
	go func() { defer close(done); u.Track(ctx, []string{"t:"}, r) }()

	for round := 0; round < 2; round++ {
		primary, err := s.PrimaryAddr()
		if err != nil {
			t.Fatal(err)
		}
		// Each SET until one is reported: tracking may not be on yet,
		// or (after the failover) still on the old primary.
		key := fmt.Sprintf("t:%d", round)
		deadline := time.Now().Add(10 * time.Second)
		for {
			set(t, primary, key)
			time.Sleep(20 * time.Millisecond)
			if _, _, keys := r.state(); slices.Contains(keys, key) {
				break
			}
			if time.Now().After(deadline) {
				on, _, keys := r.state()
				t.Fatalf("round %d: no invalidation of %s written on the primary %s after 10s (tracking on %v, keys %q)", round, key, primary, on, keys)
			}
		}
		// And once on, every write is reported.
		set(t, primary, key+"b")
		waitKey(t, r, key+"b")
		if round == 0 {
			_, purges, _ := r.state()
			if err := s.Failover(context.Background()); err != nil {
				t.Fatal(err)
			}
			// The connection to the old primary is closed: the tiers
			// are purged, and tracking starts on the new one.
			deadline := time.Now().Add(10 * time.Second)
			for {
				on, p, _ := r.state()
				if on && p >= purges+2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("tracking not restarted after the failover (on %v, purges %d then %d)", on, purges, p)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
}
