package server

import (
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

// Upstream Redis down: each command gets a clear error, the connection
// survives, and the proxy recovers by itself when Redis returns (brief §8).
func TestUpstreamDownAndBack(t *testing.T) {
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	proxy := startProxy(t, func(c *config.Config) {
		c.Upstream.Addr = r.Addr
		c.Upstream.DialTimeout = config.Duration(300 * time.Millisecond)
	})
	c := dialRaw(t, proxy)
	if got := c.do("SET", "k", "v"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	r.Kill()
	for _, cmd := range [][]string{{"GET", "k"}, {"MULTI"}, {"BLPOP", "q", "1"}} {
		if got := c.do(cmd...); !strings.HasPrefix(got, "-ERR upstream unavailable") {
			t.Errorf("%v with Redis down: %q", cmd, got)
		}
	}
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := c.do("SET", "k", "back")
		if got == "+OK\r\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy did not recover: %q", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := c.do("GET", "k"); got != "$4\r\nback\r\n" {
		t.Fatalf("after recovery: %q", got)
	}
}

// An idle pinned connection that Redis closed (CLIENT KILL, its timeout,
// a restart) is never handed out again: the next session's WATCH, MULTI
// and BLPOP run as on a fresh connection, and a pipelined MULTI/SET/INCR/
// DISCARD discards. Before, the first command got "ERR upstream
// unavailable: EOF" and, in the pipeline, MULTI failed while SET and INCR
// ran outside any transaction.
func TestStalePinnedConnectionIsNotReused(t *testing.T) {
	r, proxy := throwawayProxy(t)
	ctl := dialRaw(t, r.Addr)
	killAll := func(why string) {
		// Pin, then give back: the session's connection goes idle in
		// the pool. Then Redis closes every connection of the proxy's.
		c := dialRaw(t, proxy)
		for _, cmd := range [][]string{{"WATCH", "stale:k"}, {"UNWATCH"}, {"SELECT", "2"}, {"SELECT", "0"}} {
			c.do(cmd...)
		}
		c.c.Close()
		switch why {
		case "kill":
			if got := ctl.do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"); !strings.HasPrefix(got, ":") || got == ":0\r\n" {
				t.Fatalf("CLIENT KILL: %q", got)
			}
		case "timeout":
			ctl.do("CONFIG", "SET", "timeout", "1")
			time.Sleep(2500 * time.Millisecond)
			ctl = dialRaw(t, r.Addr) // the timeout closed it too
			ctl.do("CONFIG", "SET", "timeout", "0")
		}
	}
	for _, why := range []string{"kill", "timeout"} {
		killAll(why)
		c := dialRaw(t, proxy)
		for _, step := range []struct{ cmd, want []string }{
			{[]string{"WATCH", "stale:k"}, []string{"+OK\r\n"}},
			{[]string{"MULTI"}, []string{"+OK\r\n"}},
			{[]string{"SET", "stale:k", "1"}, []string{"+QUEUED\r\n"}},
			{[]string{"EXEC"}, []string{"*1\r\n+OK\r\n"}},
		} {
			if got := c.do(step.cmd...); got != step.want[0] {
				t.Fatalf("%s: %v after the idle connection died: %q, want %q", why, step.cmd, got, step.want[0])
			}
		}
		c.c.Close()

		killAll(why)
		p := dialRaw(t, proxy)
		p.send(append(append(append(encode("MULTI"), encode("SET", "stale:p", "x")...), encode("INCR", "stale:n")...), encode("DISCARD")...))
		var got string
		for range 4 {
			got += p.read()
		}
		if want := "+OK\r\n+QUEUED\r\n+QUEUED\r\n+OK\r\n"; got != want {
			t.Fatalf("%s: pipelined MULTI/SET/INCR/DISCARD: %q, want %q", why, got, want)
		}
		if got := ctl.do("EXISTS", "stale:p", "stale:n"); got != ":0\r\n" {
			t.Fatalf("%s: the discarded commands ran: EXISTS %q", why, got)
		}
		p.c.Close()

		killAll(why)
		b := dialRaw(t, proxy)
		b.send(encode("BLPOP", "stale:l", "5"))
		time.Sleep(50 * time.Millisecond)
		ctl.do("RPUSH", "stale:l", "v")
		if got := b.read(); got != "*2\r\n$7\r\nstale:l\r\n$1\r\nv\r\n" {
			t.Fatalf("%s: BLPOP after the idle connection died: %q", why, got)
		}
		b.c.Close()
	}
	// Lost inside MULTI: the transaction ends with the client's connection
	// (as a direct client's would end with Redis'), and nothing queued runs.
	m := dialRaw(t, proxy)
	m.do("MULTI")
	m.do("SET", "stale:m", "x")
	ctl.do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
	m.send(encode("EXEC"))
	m.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := readReply(m.br); err == nil && !strings.HasPrefix(got, "-") {
		t.Fatalf("EXEC after the upstream connection was lost in MULTI: %q, want an error or the connection closed", got)
	}
	if got := ctl.do("EXISTS", "stale:m"); got != ":0\r\n" {
		t.Fatalf("a command queued in MULTI ran after the connection was lost: EXISTS %q", got)
	}
}
