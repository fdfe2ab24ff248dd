package chaos

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// Defaults of the short run that `go test ./...` (and so CI) does: about
// a minute. `make chaos` sets CHAOS_DURATION and CHAOS_CYCLES for a longer
// one; CHAOS_SEED repeats a run's fault order and timing.
const (
	shortDuration = 33 * time.Second
	shortCycles   = 2
)

// TestChaos runs the whole system under faults (package doc) and fails on
// any broken promise. The report (operations, faults, violations) is
// logged; on a failure the logs of the proxy, Redis and PostgreSQL, and
// porcupine's visualization of a non-linearizable history, are kept in the
// directory it names.
func TestChaos(t *testing.T) {
	redis.SetLogger(quiet{}) // go-redis' own lines about dials refused while the proxy is down
	duration, cycles, seed := shortDuration, shortCycles, rand.Uint64()
	if s := os.Getenv("CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("CHAOS_DURATION=%q: %v", s, err)
		}
		duration = d
	}
	if s := os.Getenv("CHAOS_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("CHAOS_CYCLES=%q: want a whole number >= 1", s)
		}
		cycles = n
	}
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", s, err)
		}
		seed = n
	}
	dir, err := os.MkdirTemp("", "respite-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "respite")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/proxy").CombinedOutput(); err != nil {
		t.Fatalf("go build ../../cmd/proxy: %v\n%s", err, out)
	}
	t.Logf("chaos run: CHAOS_DURATION=%v CHAOS_CYCLES=%d CHAOS_SEED=%d, logs in %s", duration, cycles, seed, dir)
	rep, err := Run(Config{Binary: bin, Duration: duration, Cycles: cycles, Seed: seed, Dir: dir, Logf: t.Logf})
	if err != nil {
		t.Fatalf("harness: %v (logs kept in %s)", err, dir)
	}
	t.Logf("report:\n%s", rep.Summary())
	for _, f := range rep.Faults {
		t.Logf("fault at %s", f)
	}
	if len(rep.Violations) > 0 {
		t.Fatalf("%d violations (logs kept in %s; repeat with CHAOS_SEED=%d)", len(rep.Violations), dir, seed)
	}
	// The run must have exercised what it claims to.
	if rep.ProxyKills < cycles || rep.RedisRestarts < cycles || rep.PostgresOutages < cycles {
		t.Fatalf("faults injected: %d proxy kills, %d Redis restarts, %d PostgreSQL outages; want %d of each", rep.ProxyKills, rep.RedisRestarts, rep.PostgresOutages, cycles)
	}
	for name, c := range map[string]ClassCounts{"plain": rep.Plain, "cache-aside": rep.CacheAside, "write-through": rep.WriteThrough, "write-back": rep.WriteBack} {
		if c.Acked == 0 {
			t.Fatalf("no %s write was acknowledged: the load did not run", name)
		}
	}
	os.RemoveAll(dir)
}
