package server

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

func TestInfoSection(t *testing.T) {
	p := startProxy(t, nil)
	c := dialRaw(t, p)
	got := c.do("INFO")
	if !strings.Contains(got, "# Server") || !strings.Contains(got, "# Respite\r\nrespite_clients:1") {
		t.Fatalf("INFO: %q", got[len(got)-300:])
	}
	got = c.do("INFO", "respite")
	if !strings.HasPrefix(got, "$") || !strings.Contains(got, "respite_watch_aborts:0") ||
		!strings.Contains(got, fmt.Sprintf("respite_gomaxprocs:%d\r\n", runtime.GOMAXPROCS(0))) || strings.Contains(got, "# Server") {
		t.Fatalf("INFO respite: %q", got)
	}
	c.do("HELLO", "3")
	got = c.do("INFO")
	if !strings.HasPrefix(got, "=") || !strings.Contains(got, "# Respite") {
		t.Fatalf("RESP3 INFO: %q", got[:40])
	}
}
