package policy

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A burst of NOREPLICAS refusals logs one line when it starts and one,
// with the count, once it has been quiet; the next burst starts again.
func TestBurstLogOncePerBurst(t *testing.T) {
	var out syncBuffer
	b := newBurstLog(slog.New(slog.NewTextHandler(&out, nil)))
	b.quiet = 100 * time.Millisecond
	for range 50 {
		b.event("write-back writes refused with NOREPLICAS: too few", "route", "pv")
		time.Sleep(2 * time.Millisecond)
	}
	if n := strings.Count(out.String(), "\n"); n != 1 {
		t.Fatalf("during the burst %d lines, want 1:\n%s", n, out.String())
	}
	time.Sleep(300 * time.Millisecond)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "burst over") || !strings.Contains(lines[1], "refused=50") {
		t.Fatalf("after the burst:\n%s", out.String())
	}
	b.event("write-back writes refused with NOREPLICAS: too few", "route", "pv")
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Fatalf("a second burst: %d lines, want 3:\n%s", n, out.String())
	}
}
