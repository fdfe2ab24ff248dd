package server

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// TestArrivalOrderAcrossClients is Redis' "BRPOPLPUSH with multiple
// blocked clients" (tests/unit/type/list.tcl), 40 times: two clients send
// BRPOPLPUSH and a third LPUSH, each without waiting for a reply, and Redis
// must see them in that order, as it would directly. Every client is on
// its own pinned connection (SELECT), so only the arrival order the proxy
// keeps (order.go) makes it so. One thread makes a goroutine run order that
// differs from the arrival order likely.
func TestArrivalOrderAcrossClients(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	addr := startProxy(t, nil)
	r, rd1, rd2 := dialRaw(t, addr), dialRaw(t, addr), dialRaw(t, addr)
	for _, c := range []*rawConn{r, rd1, rd2} {
		if got := c.do("SELECT", "9"); got != "+OK\r\n" {
			t.Fatalf("SELECT: %q", got)
		}
	}
	wrong := 0
	for i := range 40 {
		blist, t1, t2 := fmt.Sprintf("order:bl:%d", i), fmt.Sprintf("order:t1:%d", i), fmt.Sprintf("order:t2:%d", i)
		r.do("SET", t1, "nolist")
		rd1.send(encode("BRPOPLPUSH", blist, t1, "1"))
		rd2.send(encode("BRPOPLPUSH", blist, t2, "1"))
		r.send(encode("LPUSH", blist, "foo"))
		got1, got2, got3 := rd1.read(), rd2.read(), r.read()
		if got3 != ":1\r\n" {
			t.Fatalf("LPUSH: %q", got3)
		}
		if !strings.HasPrefix(got1, "-WRONGTYPE") || got2 != "$3\r\nfoo\r\n" {
			wrong++
			t.Logf("round %d: first BRPOPLPUSH %q, second %q", i, got1, got2)
		}
	}
	if wrong > 0 {
		t.Fatalf("%d of 40 rounds reached Redis out of order", wrong)
	}
}

// Which earlier batches a batch waits for: a pinned one for all, a shared
// one only for pinned ones (order.go).
func TestOrderWhoFollowsWhom(t *testing.T) {
	var o order
	o.take(1, 100, turn{}, nil)
	if !o.first(2, 200, false) {
		t.Fatal("a shared batch waits for an earlier shared one")
	}
	if o.first(2, 200, true) {
		t.Fatal("a pinned batch does not wait for an earlier shared one")
	}
	o.take(3, 150, turn{pinned: true}, nil)
	if o.pinned.Load() != 1 {
		t.Fatalf("pending pinned tickets: %d, want 1", o.pinned.Load())
	}
	if o.first(2, 200, false) {
		t.Fatal("a shared batch does not wait for an earlier pinned one")
	}
	// A batch that arrived at 120: after the shared one (100), before the
	// pinned one (150).
	if !o.first(4, 120, false) {
		t.Fatal("a shared batch waits for a later pinned one")
	}
	if o.first(4, 120, true) {
		t.Fatal("a pinned batch does not wait for an earlier shared one")
	}
	// A PUBLISH behind an earlier SUBSCRIBE waits longer (subscribeWait).
	o.take(5, 110, turn{pinned: true, subscribes: true}, nil)
	o.mu.Lock()
	first, behindSub := o.firstLocked(6, 300, turn{publishes: true})
	_, plainBehind := o.firstLocked(6, 300, turn{})
	_, earlier := o.firstLocked(6, 100, turn{publishes: true})
	o.mu.Unlock()
	if first || !behindSub || plainBehind || earlier {
		t.Fatalf("PUBLISH after a SUBSCRIBE: first %v, behind it %v; a shared batch behind it %v; a PUBLISH before it behind it %v", first, behindSub, plainBehind, earlier)
	}
	o.done(5)
	o.done(3)
	o.done(1)
	if o.pinned.Load() != 0 || len(o.pending) != 0 {
		t.Fatalf("after done: %d pinned, %d pending", o.pinned.Load(), len(o.pending))
	}
	if !o.first(2, 200, true) {
		t.Fatal("a batch waits with no ticket pending")
	}
}

// first is firstLocked with o.mu taken.
func (o *order) first(id, at int64, pinned bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	first, _ := o.firstLocked(id, at, turn{pinned: pinned})
	return first
}
