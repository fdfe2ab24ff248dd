package server

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// WAIT counts the replicas that hold the client's own writes, as on Redis,
// although those went on the shared connections and WAIT goes on a pinned
// one that wrote nothing since it was dialled (blocking.go: waitMarkReq).
func TestWaitCountsTheClientsWrites(t *testing.T) {
	primary, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Stop()
	replica, err := testenv.StartRedis("--replicaof", "127.0.0.1", strconv.Itoa(primary.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Stop()
	r := dialRaw(t, replica.Addr)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(r.do("INFO", "replication"), "master_link_status:up"); {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not sync")
		}
		time.Sleep(20 * time.Millisecond)
	}
	addr := startProxy(t, func(cfg *config.Config) { cfg.Upstream.Addr = primary.Addr })
	c := dialRaw(t, addr)
	if got := c.do("SET", "k", "1"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	if got := c.do("WAIT", "1", "5000"); got != ":1\r\n" {
		t.Fatalf("WAIT with the replica up: %q", got)
	}
	// The pinned connection goes back to the free list (reset in the
	// background); the next WAIT takes it again, dialled before the write.
	time.Sleep(200 * time.Millisecond)
	thaw := replica.Freeze()
	defer thaw()
	if got := c.do("SET", "k", "2"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	start := time.Now()
	if got := c.do("WAIT", "1", "300"); got != ":0\r\n" {
		t.Fatalf("WAIT after a write the frozen replica does not have: %q, want :0 (after the timeout, as Redis answers)", got)
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Fatalf("WAIT answered after %v, before its 300 ms timeout", took)
	}
	thaw()
	if got := c.do("WAIT", "1", "5000"); got != ":1\r\n" {
		t.Fatalf("WAIT once the replica runs again: %q", got)
	}
	if got := dialRaw(t, replica.Addr).do("GET", "k"); got != "$1\r\n2\r\n" {
		t.Fatalf("the replica after WAIT answered 1: %q", got)
	}
}
