package testenv

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestSentinel(t *testing.T) {
	start := time.Now()
	s, err := StartSentinel()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	t.Logf("sentinel on %s ready in %v", s.SentinelAddr(), time.Since(start).Round(time.Millisecond))
	if s.MasterName() != "respite" {
		t.Fatalf("MasterName = %q", s.MasterName())
	}
	first, err := s.PrimaryAddr()
	if err != nil {
		t.Fatal(err)
	}
	if first != s.servers[0].Addr {
		t.Fatalf("PrimaryAddr = %s, want %s", first, s.servers[0].Addr)
	}
	v, _ := call(t, s.SentinelAddr(), "SENTINEL", "REPLICAS", s.MasterName())
	if list, _ := v.([]any); len(list) != 1 || pairs(list[0])["port"] != strconv.Itoa(s.servers[1].Port) {
		t.Fatalf("SENTINEL REPLICAS = %v", v)
	}
	if err := linkUp(s.servers[1].Addr); err != nil {
		t.Fatal(err)
	}
	setReplicated(t, first, "k", "before")

	// Twice: over to the replica and back.
	for round, want := range []string{s.servers[1].Addr, first} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start = time.Now()
		err := s.Failover(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("failover %d in %v", round+1, time.Since(start).Round(time.Millisecond))
		got, err := s.PrimaryAddr()
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("after failover %d the sentinel names %s, want %s", round+1, got, want)
		}
		info, _ := call(t, got, "INFO", "replication")
		if role := infoField(info.(string), "role"); role != "master" {
			t.Fatalf("new primary %s has role:%s", got, role)
		}
		if v, err := call(t, got, "GET", "k"); v != "before" {
			t.Fatalf("GET k on the new primary = %v, %v", v, err)
		}
		if v, err := call(t, got, "SET", "k2", "after"); v != "OK" {
			t.Fatalf("SET on the new primary = %v, %v", v, err)
		}
		other := s.servers[0].Addr
		if other == got {
			other = s.servers[1].Addr
		}
		if _, err := call(t, other, "SET", "k3", "x"); err == nil || !strings.HasPrefix(err.Error(), "READONLY") {
			t.Fatalf("SET on the former primary: %v, want -READONLY", err)
		}
	}

	servers := []*Redis{s.sentinel, s.servers[0], s.servers[1]}
	pids := pidsOf(t, servers)
	s.Stop()
	s.Stop() // idempotent
	checkGone(t, pids, servers)
}
