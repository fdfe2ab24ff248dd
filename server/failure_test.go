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
