// Package chaos is the whole-system chaos test of Respite: real
// redis-server (AOF, appendfsync always) and PostgreSQL started by
// internal/testenv on free loopback ports, the real proxy binary, clients
// on plain, cache-aside, write-through and write-back keys, and a harness
// that meanwhile SIGKILLs the proxy, kills and restarts Redis, and stops
// PostgreSQL for 10 s, several times. Afterwards it checks:
//
//   - plain keys: every acknowledged SET is readable (Redis' AOF);
//   - write-back: once the proxy drained its queues, PostgreSQL holds every
//     acknowledged INCR of every key, exactly (at least the acknowledged
//     ones, at most those plus the ones whose outcome is unknown), no two
//     acknowledged INCRs of a key returned the same value, the cache equals
//     PostgreSQL and nothing is dead-lettered;
//   - cache-aside: PostgreSQL holds each key's last acknowledged write (or a
//     write whose outcome is unknown), and the cached copy, through the
//     proxy and directly in Redis, equals PostgreSQL's row;
//   - write-through: the per-key histories of SET and GET, with call and
//     return times, are linearizable as registers (porcupine), a final
//     read of every key included, and the cache equals PostgreSQL;
//   - the proxy never exited on its own.
//
// A client operation that failed (an error reply or a broken connection)
// is of unknown outcome: it may have taken effect or not. Such a SET is
// given porcupine a return time after the end of the history (it may take
// effect any time after its call); a failed GET is dropped (it changed
// nothing). Run runs it all and returns a Report; chaos_test.go is the Go
// test (a short run in `go test ./...`, a longer one with `make chaos`).
package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/testenv"
)

// Config is one chaos run.
type Config struct {
	// Binary is the proxy binary (built from ./cmd/proxy).
	Binary string
	// Duration is the client load time, over which the fault cycles are
	// spread (a cycle never takes less than its 10 s PostgreSQL outage and
	// three short gaps, so few seconds per cycle lengthen the run).
	Duration time.Duration
	// Cycles is how many fault cycles run: each SIGKILLs the proxy,
	// restarts Redis and stops PostgreSQL for PostgresOutage, in a random
	// order, with load between the faults.
	Cycles int
	// Seed makes the fault order and timing repeatable.
	Seed uint64
	// Dir holds the servers' and the proxy's logs and, on a
	// linearizability violation, porcupine's visualization.
	Dir string
	// Logf reports progress (testing.T.Logf).
	Logf func(format string, args ...any)
}

// PostgresOutage is how long each cycle keeps PostgreSQL stopped.
const PostgresOutage = 10 * time.Second

// Bounds for the waits of the harness: generous, for a loaded 2-core
// machine. They bound polls; nothing is asserted on timing.
const (
	readyTimeout = 60 * time.Second // a (re)started proxy answers PING
	drainTimeout = 90 * time.Second // write-back queues flushed, caches agree
	callTimeout  = 15 * time.Second // one client command
)

// Report is what a run did and found.
type Report struct {
	Seed     uint64
	Cycles   int
	Elapsed  time.Duration // the whole run, set-up and checks included
	LoadTime time.Duration // clients running

	ProxyKills, RedisRestarts, PostgresOutages int
	// KillsDuringOutage counts proxy kills while PostgreSQL was down
	// (included in ProxyKills).
	KillsDuringOutage int
	Faults            []string // one line per fault, with its time

	Plain, CacheAside, WriteThrough, WriteBack ClassCounts
	CacheAsideReads                            ClassCounts
	WriteThroughReads                          ClassCounts

	// WriteBackSum is PostgreSQL's total of the write-back counters.
	WriteBackSum int64
	// WTHistory is the number of write-through operations given to the
	// checker (acknowledged ones, writes of unknown outcome, final reads);
	// WTCheck is how long porcupine took.
	WTHistory int
	WTCheck   time.Duration
	// WTObserved counts the failed write-through SETs whose value a GET
	// returned (they took effect: in the history, with an open end);
	// WTUnobserved the others (left out, see checkWriteThrough).
	WTObserved, WTUnobserved int

	// Errors counts the failed commands per class and error text.
	Errors map[string]map[string]int

	Violations []string
}

// ClassCounts counts one class of client operations.
type ClassCounts struct {
	Acked  int64 // answered without an error
	Failed int64 // an error or a broken connection: outcome unknown
}

func (c ClassCounts) String() string {
	return fmt.Sprintf("%d acknowledged, %d failed", c.Acked, c.Failed)
}

// Summary is the report as a few lines of text.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %d cycles, load %v, run %v\n", r.Seed, r.Cycles, r.LoadTime.Round(time.Second), r.Elapsed.Round(time.Second))
	fmt.Fprintf(&b, "faults: %d proxy SIGKILLs (%d during a PostgreSQL outage), %d Redis kill+restarts, %d PostgreSQL outages of %v\n",
		r.ProxyKills, r.KillsDuringOutage, r.RedisRestarts, r.PostgresOutages, PostgresOutage)
	fmt.Fprintf(&b, "plain SET: %v\n", r.Plain)
	fmt.Fprintf(&b, "cache-aside SET: %v; GET: %v\n", r.CacheAside, r.CacheAsideReads)
	fmt.Fprintf(&b, "write-through SET: %v; GET: %v; %d operations checked for linearizability in %v (failed SETs: %d seen to take effect, %d never read)\n",
		r.WriteThrough, r.WriteThroughReads, r.WTHistory, r.WTCheck.Round(time.Millisecond), r.WTObserved, r.WTUnobserved)
	fmt.Fprintf(&b, "write-back INCR: %v; sum in PostgreSQL %d\n", r.WriteBack, r.WriteBackSum)
	var classes []string
	for c := range r.Errors {
		classes = append(classes, c)
	}
	sort.Strings(classes)
	for _, c := range classes {
		type kv struct {
			msg string
			n   int
		}
		var all []kv
		for m, n := range r.Errors[c] {
			all = append(all, kv{m, n})
		}
		sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].msg < all[j].msg })
		fmt.Fprintf(&b, "%s errors:\n", c)
		for i, x := range all {
			if i == 6 {
				fmt.Fprintf(&b, "    ... %d more kinds\n", len(all)-i)
				break
			}
			fmt.Fprintf(&b, "    %6d %s\n", x.n, x.msg)
		}
	}
	fmt.Fprintf(&b, "violations: %d", len(r.Violations))
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "\n  - %s", v)
	}
	return b.String()
}

// env is a running system: the servers, the proxy, the harness' own
// clients.
type env struct {
	cfg   Config
	rng   *rand.Rand
	start time.Time

	redis *testenv.Redis
	pg    *testenv.Postgres

	addr, admin string
	cfgPath     string
	proxyLog    *os.File
	proxy       *proxyProc
	starts      int

	direct *redis.Client // straight to Redis, for checks

	mu     sync.Mutex
	report *Report
}

// violation records a broken promise.
func (e *env) violation(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.report.Violations = append(e.report.Violations, fmt.Sprintf(format, args...))
}

func (e *env) logf(format string, args ...any) {
	e.cfg.Logf("[%6.1fs] "+format, append([]any{time.Since(e.start).Seconds()}, args...)...)
}

// fault records one fault.
func (e *env) fault(format string, args ...any) {
	line := fmt.Sprintf("%6.1fs ", time.Since(e.start).Seconds()) + fmt.Sprintf(format, args...)
	e.mu.Lock()
	e.report.Faults = append(e.report.Faults, line)
	e.mu.Unlock()
	e.logf(format, args...)
}

// Run starts the servers and the proxy, runs the load and the fault
// cycles, checks, and returns the report. An error means the harness could
// not do its job (a server did not start); broken promises are the
// report's Violations.
func Run(cfg Config) (*Report, error) {
	if cfg.Cycles < 1 {
		cfg.Cycles = 1
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	e := &env{
		cfg:    cfg,
		rng:    rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		start:  time.Now(),
		report: &Report{Seed: cfg.Seed, Cycles: cfg.Cycles},
	}
	defer func() { e.report.Elapsed = time.Since(e.start) }()
	if err := e.setUp(); err != nil {
		e.tearDown()
		return nil, err
	}
	defer e.tearDown()

	w := newWorkload(e)
	w.begin()
	loadStart := time.Now()
	if err := e.faults(); err != nil {
		w.end()
		return nil, err
	}
	w.end()
	e.report.LoadTime = time.Since(loadStart)
	e.logf("load stopped; checking")
	if err := w.check(); err != nil {
		return nil, err
	}
	if e.proxy.exitedOnItsOwn() {
		e.violation("the proxy exited on its own: %v", e.proxy.err)
	}
	return e.report, nil
}

// setUp starts Redis, PostgreSQL (with the routes' tables) and the proxy.
func (e *env) setUp() error {
	var err error
	// AOF rewrites early and often, as a production Redis does on its
	// own (defaults: at 64 MB and double the last size): the AOF then
	// loads in well under testenv's 10 s start bound after each kill,
	// however long the run.
	e.redis, err = testenv.StartRedis("--appendonly", "yes", "--appendfsync", "always",
		"--auto-aof-rewrite-min-size", "4mb", "--auto-aof-rewrite-percentage", "50")
	if err != nil {
		return err
	}
	e.pg, err = testenv.StartPostgres()
	if err != nil {
		return err
	}
	if err := e.pg.Exec(schema); err != nil {
		return err
	}
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	aport, err := testenv.FreePort()
	if err != nil {
		return err
	}
	e.addr = "127.0.0.1:" + strconv.Itoa(port)
	e.admin = "127.0.0.1:" + strconv.Itoa(aport)
	e.cfgPath = filepath.Join(e.cfg.Dir, "config.yaml")
	text := fmt.Sprintf(proxyConfig, e.addr, e.admin, e.redis.Addr, e.pg.DSN)
	if err := os.WriteFile(e.cfgPath, []byte(text), 0o600); err != nil {
		return err
	}
	e.proxyLog, err = os.OpenFile(filepath.Join(e.cfg.Dir, "proxy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	e.direct = redis.NewClient(&redis.Options{Addr: e.redis.Addr, Protocol: 2, DisableIdentity: true,
		MaxRetries: -1, ReadTimeout: callTimeout, WriteTimeout: callTimeout})
	return e.startProxy()
}

func (e *env) tearDown() {
	if e.proxy != nil {
		e.proxy.kill()
	}
	if e.direct != nil {
		e.direct.Close()
	}
	if e.proxyLog != nil {
		e.proxyLog.Close()
	}
	// The servers' logs are copied next to the proxy's before they go.
	if e.redis != nil {
		copyFile(filepath.Join(e.redis.Dir, "redis.log"), filepath.Join(e.cfg.Dir, "redis.log"))
		e.redis.Stop()
	}
	if e.pg != nil {
		copyFile(filepath.Join(e.pg.Dir, "postgres.log"), filepath.Join(e.cfg.Dir, "postgres.log"))
		e.pg.Stop()
	}
}

func copyFile(from, to string) {
	if b, err := os.ReadFile(from); err == nil {
		os.WriteFile(to, b, 0o644)
	}
}

// schema holds the routes' tables: cache-aside and write-through values
// as text (each write a distinct value), write-back counters.
const schema = `
CREATE TABLE chaos_ca (k text PRIMARY KEY, v text NOT NULL);
CREATE TABLE chaos_wt (k text PRIMARY KEY, v text NOT NULL);
CREATE TABLE chaos_wb (k text PRIMARY KEY, v bigint NOT NULL);
`

// proxyConfig: listen, admin, upstream, dsn. Short timeouts so that
// outages are noticed quickly; a stable write_back.consumer so that a
// restarted proxy flushes its own pending entries and resolves its own
// write-through intents at once; require_aof as the durability promise
// assumes it.
const proxyConfig = `listen: %s
admin: %s
log_level: info
shutdown_timeout: 10s
upstream:
  addr: %s
  dial_timeout: 500ms
  timeout: 5s
postgres:
  dsn: %s
  statement_timeout: 2s
write_back:
  consumer: chaos
  claim_idle: 2s
  require_aof: true
routes:
  - name: ca
    prefix: "ca:"
    policy: cache-aside
    table: chaos_ca
    key_column: k
    format: value
    value_column: v
  - name: wt
    prefix: "wt:"
    policy: write-through
    table: chaos_wt
    key_column: k
    format: value
    value_column: v
  - name: wb
    prefix: "wb:"
    policy: write-back
    table: chaos_wb
    key_column: k
    format: value
    value_column: v
    batch_size: 200
    flush_interval: 200ms
`

// proxyProc is one run of the proxy binary.
type proxyProc struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error       // cmd.Wait's, once done is closed
	killed atomic.Bool // the harness killed it
}

func (p *proxyProc) kill() {
	p.killed.Store(true)
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proxyProc) exitedOnItsOwn() bool {
	select {
	case <-p.done:
		return !p.killed.Load()
	default:
		return false
	}
}

// startProxy runs the binary and waits until it answers PING (any reply:
// with Redis down the reply is an error).
func (e *env) startProxy() error {
	e.starts++
	fmt.Fprintf(e.proxyLog, "=== proxy start %d at %.1fs\n", e.starts, time.Since(e.start).Seconds())
	cmd := exec.Command(e.cfg.Binary, "-config", e.cfgPath)
	cmd.Stdout, cmd.Stderr = e.proxyLog, e.proxyLog
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the proxy: %w", err)
	}
	p := &proxyProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	e.proxy = p
	c := redis.NewClient(&redis.Options{Addr: e.addr, Protocol: 2, DisableIdentity: true, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 5 * time.Second})
	defer c.Close()
	deadline := time.Now().Add(readyTimeout)
	for {
		err := c.Ping(context.Background()).Err()
		var rerr redis.Error
		if err == nil || errors.As(err, &rerr) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("the proxy exited at start (%v); see %s", p.err, e.proxyLog.Name())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the proxy did not answer PING within %v: %v; see %s", readyTimeout, err, e.proxyLog.Name())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restartProxy SIGKILLs the proxy and starts it again after a short
// pause.
func (e *env) restartProxy(why string) error {
	if e.proxy.exitedOnItsOwn() {
		e.violation("the proxy exited on its own: %v", e.proxy.err)
	}
	e.proxy.kill()
	e.fault("SIGKILL proxy%s", why)
	e.pause(100*time.Millisecond, 600*time.Millisecond)
	t := time.Now()
	if err := e.startProxy(); err != nil {
		return err
	}
	e.logf("proxy restarted, answering after %v", time.Since(t).Round(time.Millisecond))
	e.mu.Lock()
	e.report.ProxyKills++
	e.mu.Unlock()
	return nil
}

// restartRedis kills Redis (SIGKILL) and starts it again from its AOF.
func (e *env) restartRedis() error {
	e.redis.Kill()
	e.fault("SIGKILL Redis")
	e.pause(200*time.Millisecond, time.Second)
	if err := e.redis.Restart(); err != nil {
		return err
	}
	e.logf("Redis restarted from its AOF")
	e.mu.Lock()
	e.report.RedisRestarts++
	e.mu.Unlock()
	return nil
}

// stopPostgres stops PostgreSQL (fast shutdown) for PostgresOutage; in
// about half the cycles the proxy is also SIGKILLed and restarted while it
// is down.
func (e *env) stopPostgres() error {
	e.pg.Halt()
	e.fault("PostgreSQL stopped for %v", PostgresOutage)
	began := time.Now()
	if e.rng.IntN(2) == 0 {
		e.pause(2*time.Second, 6*time.Second)
		if err := e.restartProxy(" (PostgreSQL down)"); err != nil {
			return err
		}
		e.mu.Lock()
		e.report.KillsDuringOutage++
		e.mu.Unlock()
	}
	time.Sleep(time.Until(began.Add(PostgresOutage)))
	if err := e.pg.Resume(); err != nil {
		return err
	}
	e.logf("PostgreSQL back")
	e.mu.Lock()
	e.report.PostgresOutages++
	e.mu.Unlock()
	return nil
}

// pause sleeps a random time in [lo, hi): the harness' pacing, never an
// assertion.
func (e *env) pause(lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(e.rng.Int64N(int64(hi-lo))))
}

// faults runs the cycles: in each, the three faults in a random order,
// with load before each, and a last stretch of load after the last cycle.
func (e *env) faults() error {
	perCycle := e.cfg.Duration / time.Duration(e.cfg.Cycles)
	gap := max(time.Second, (perCycle-PostgresOutage)/3) // three gaps a cycle
	for i := 0; i < e.cfg.Cycles; i++ {
		steps := []func() error{
			func() error { return e.restartProxy("") },
			e.restartRedis,
			e.stopPostgres,
		}
		e.rng.Shuffle(len(steps), func(a, b int) { steps[a], steps[b] = steps[b], steps[a] })
		e.logf("cycle %d of %d", i+1, e.cfg.Cycles)
		for _, step := range steps {
			e.pause(gap/2, gap*3/2)
			if err := step(); err != nil {
				return err
			}
		}
	}
	e.pause(gap/2, gap*3/2)
	return nil
}
