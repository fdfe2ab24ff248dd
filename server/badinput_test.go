package server

import (
	"strings"
	"testing"

	"github.com/respite/respite/internal/config"
)

// Malformed requests get Redis' protocol error and that connection closes;
// the proxy keeps serving everyone else.
func TestBadInputClosesOnlyThatConnection(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Limits.MaxBulkBytes = 1 << 20 })
	other := dialRaw(t, proxy)
	for _, tc := range []struct{ req, want string }{
		{"*1\r\n$9223372036854775807\r\nabc\r\n", "-ERR Protocol error: invalid bulk length\r\n"},
		{"*abc\r\n", "-ERR Protocol error: invalid multibulk length\r\n"},
		{"*1\r\nx\r\n", "-ERR Protocol error: expected '$', got 'x'\r\n"},
		{"*2\r\n$3\r\nSET\r\n$2000000\r\n", "-ERR Protocol error: invalid bulk length\r\n"},
	} {
		c := dialRaw(t, proxy)
		c.send([]byte(tc.req))
		if got := c.read(); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.req, got, tc.want)
		}
		c.expectClosed()
		if got := other.do("PING"); got != "+PONG\r\n" {
			t.Fatalf("proxy stopped serving after %q: %q", tc.req, got)
		}
	}
	// A value just under the limit still works.
	if got := other.do("SET", "big", strings.Repeat("x", 1<<19)); got != "+OK\r\n" {
		t.Fatalf("SET under the limit: %q", got)
	}
}

func TestMaxClients(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Limits.MaxClients = 2 })
	a, b := dialRaw(t, proxy), dialRaw(t, proxy)
	a.do("PING")
	b.do("PING")
	c := dialRaw(t, proxy)
	if got := c.read(); got != "-ERR max number of clients reached\r\n" {
		t.Fatalf("third client: %q", got)
	}
	c.expectClosed()
	a.c.Close()
	for i := 0; i < 50; i++ { // the slot frees once the proxy notices
		d := dialRaw(t, proxy)
		d.send(encode("PING"))
		if got := d.read(); got == "+PONG\r\n" {
			return
		}
	}
	t.Fatal("a freed client slot was never reused")
}
