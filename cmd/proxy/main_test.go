package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/testenv"
)

// These tests run the real binary: they kill it, stop it and restart it.

var (
	bin string
	rds *testenv.Redis
	pg  *testenv.Postgres
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "respite-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin = filepath.Join(dir, "respite")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	if rds, err = testenv.StartRedis(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer rds.Stop()
	if pg, err = testenv.StartPostgres(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer pg.Stop()
	if err := pg.Exec("CREATE TABLE page_views (page_id text PRIMARY KEY, views bigint NOT NULL DEFAULT 0)"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// proxy is one running proxy process.
type proxy struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	log  *output
}

// output collects what a running child process writes, read while it
// runs (exec copies the child's output from a goroutine of its own).
type output struct {
	mu sync.Mutex
	b  strings.Builder
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// start runs the binary with a write-back route whose flush interval is
// flushEvery; extra lines are appended to its config file.
func start(t *testing.T, flushEvery string, extra ...string) *proxy {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cfg := fmt.Sprintf(`listen: %s
log_level: info
shutdown_timeout: 60s
upstream:
  addr: %s
postgres:
  dsn: %s
write_back:
  consumer: test-proxy
  claim_idle: 1s
routes:
  - name: pageviews
    prefix: "pv:"
    policy: write-back
    table: page_views
    key_column: page_id
    format: value
    value_column: views
    batch_size: 500
    flush_interval: %s
`, addr, rds.Addr, pg.DSN, flushEvery) + strings.Join(extra, "\n")
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, addr: addr, log: &output{}}
	p.cmd = exec.Command(bin, "-config", path)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for i := 0; ; i++ {
		if c.Ping(context.Background()).Err() == nil {
			return p
		}
		if i > 100 {
			t.Fatalf("proxy did not start: %s", p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// write sends n write-back SETs (pv:<prefix><i> = i) and returns once all
// were acknowledged.
func write(t *testing.T, addr, prefix string, n int) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx := context.Background()
	for from := 0; from < n; from += 1000 {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := from; i < min(from+1000, n); i++ {
				p.Set(ctx, fmt.Sprintf("pv:%s%d", prefix, i), i, 0)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("write-back SETs: %v", err)
		}
	}
}

// rows counts page_views rows whose page_id starts with prefix and whose
// views equal the number after the prefix.
func rows(t *testing.T, prefix string) int {
	t.Helper()
	out, err := pg.Query(fmt.Sprintf(`SELECT count(*) FROM page_views WHERE page_id LIKE '%s%%' AND views::text = substr(page_id, %d)`, prefix, len(prefix)+1))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

func waitRows(t *testing.T, prefix string, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := rows(t, prefix)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged writes reached PostgreSQL", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A proxy killed with SIGKILL right after acknowledging 10,000 writes loses
// none: the restarted proxy flushes them from the durable queue.
func TestKilledProxyLosesNoWrites(t *testing.T) {
	p := start(t, "1h") // nothing flushes before the kill
	write(t, p.addr, "kill", 10000)
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	if got := rows(t, "kill"); got != 0 {
		t.Logf("%d writes were flushed before the kill", got)
	}
	start(t, "100ms")
	waitRows(t, "kill", 10000, 30*time.Second)
}

// SIGTERM with 5,000 pending writes: the proxy flushes them all and exits 0.
func TestSigtermFlushesPendingWrites(t *testing.T) {
	p := start(t, "1h")
	write(t, p.addr, "term", 5000)
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.log)
	}
	if got := rows(t, "term"); got != 5000 {
		t.Fatalf("after SIGTERM %d of 5000 pending writes are in PostgreSQL\n%s", got, p.log)
	}
	if !strings.Contains(p.log.String(), "write-back queues flushed") {
		t.Errorf("no shutdown report in the log:\n%s", p.log)
	}
}

// PostgreSQL stopped for 10 s while clients write: nothing is lost once it
// is back.
func TestPostgresDownDuringWrites(t *testing.T) {
	p := start(t, "100ms")
	write(t, p.addr, "down-a", 2000)
	pg.Halt()
	write(t, p.addr, "down-b", 2000) // acknowledged while PostgreSQL is down
	time.Sleep(10 * time.Second)
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	waitRows(t, "down-a", 2000, 30*time.Second)
	waitRows(t, "down-b", 2000, 30*time.Second)
}

func TestVersionFlag(t *testing.T) {
	out, err := exec.Command(bin, "-version").Output()
	if err != nil || !strings.HasPrefix(string(out), "respite ") {
		t.Fatalf("-version: %q %v", out, err)
	}
}

func TestBadConfigIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("listen: 127.0.0.1:1\nupstream:\n  adress: x\n"), 0o600)
	out, err := exec.Command(bin, "-config", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "adress") || !strings.Contains(string(out), "bad.yaml") {
		t.Fatalf("bad config: %v %s", err, out)
	}
	path2 := filepath.Join(t.TempDir(), "missing-table.yaml")
	os.WriteFile(path2, []byte(fmt.Sprintf("listen: 127.0.0.1:0\nupstream: {addr: %s}\npostgres: {dsn: %q}\nroutes:\n  - {name: ghosts, prefix: 'g:', policy: cache-aside, table: ghosts, key_column: id, format: json}\n", rds.Addr, pg.DSN)), 0o600)
	out, err = exec.Command(bin, "-config", path2).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ghosts") {
		t.Fatalf("missing table: %v %s", err, out)
	}
}

// gomaxprocs in the config file is what the running proxy uses; without it
// the proxy keeps Go's default (the CPUs it may use).
func TestGOMAXPROCS(t *testing.T) {
	for _, tc := range []struct {
		extra []string
		want  int
	}{
		{[]string{"gomaxprocs: 1"}, 1},
		{[]string{"gomaxprocs: 3"}, 3},
		{nil, autoThreads()},
	} {
		p := start(t, "1s", tc.extra...)
		c := redis.NewClient(&redis.Options{Addr: p.addr})
		info, err := c.Info(context.Background(), "respite").Result()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("respite_gomaxprocs:%d\r\n", tc.want)
		if !strings.Contains(info, want) {
			t.Errorf("config %q: INFO respite lacks %q:\n%s", tc.extra, want, info)
		}
		// On one thread the proxy runs with sysmon kept awake
		// (sysmon_linux.go): it re-executed itself with schedtrace set.
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		if awake := strings.Contains(string(env), "schedtrace=2147483647"); awake != (tc.want == 1) {
			t.Errorf("config %q: schedtrace in the environment = %v, want %v", tc.extra, awake, tc.want == 1)
		}
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// autoThreads is what the proxy chooses without gomaxprocs: one thread on
// a host of up to two CPUs, else one per CPU.
func autoThreads() int {
	if n := runtime.GOMAXPROCS(0); n > 2 {
		return n
	}
	return 1
}

// writeConfig writes text to a config file in a temp folder.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// With log_format: json every line on stderr is one JSON object, go-redis'
// own lines (here: dialing a Redis that is not there) included.
func TestJSONLogStaysJSON(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	down, err := testenv.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	path := writeConfig(t, fmt.Sprintf("listen: %s\nlog_format: json\nupstream:\n  addr: 127.0.0.1:%d\n  multiplexer: go-redis\n  dial_timeout: 200ms\n", addr, down))
	var stderr output
	cmd := exec.Command(bin, "-config", path)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	// The proxy answers with the upstream's error; go-redis logs its failed
	// dial once it has given up retrying.
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.Get(context.Background(), "k").Err()
		if err != nil && strings.Contains(err.Error(), "upstream") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no upstream error from the proxy: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for !strings.Contains(stderr.String(), `"component":"go-redis"`) {
		if time.Now().After(deadline) {
			t.Fatalf("go-redis logged nothing through the proxy's logger:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	for _, l := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Errorf("not a JSON line: %q", l)
		}
	}
	if !strings.Contains(lines[0], `"msg":"respite listening"`) {
		t.Errorf("first line %q, want respite listening", lines[0])
	}
}

// A listener that cannot open is one line naming the address and the
// cause, exit status 1, and no "respite listening".
func TestListenFailures(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := fmt.Sprintf("127.0.0.1:%d", free)
	for _, tc := range []struct{ listen, admin, format, want string }{
		{busy.Addr().String(), "", "text", `err="bind: address already in use" fix="another process is listening on that port: stop it, or change listen in `},
		{"notaport", "", "text", `err="address notaport: missing port in address" fix="listen is host:port, e.g. 127.0.0.1:6380: change it in `},
		{busy.Addr().String(), "", "json", `"err":"bind: address already in use"`},
		// The admin listener's port busy: the same line, naming admin.
		{freeAddr, busy.Addr().String(), "text", `err="bind: address already in use" fix="another process is listening on that port: stop it, or change admin in `},
		{freeAddr, busy.Addr().String(), "json", `"err":"bind: address already in use","fix":"another process is listening on that port: stop it, or change admin in `},
	} {
		text := fmt.Sprintf("listen: %s\nlog_format: %s\nupstream: {addr: %s}\n", tc.listen, tc.format, rds.Addr)
		addr := tc.listen
		if tc.admin != "" {
			text += "admin: " + tc.admin + "\n"
			addr = tc.admin
		}
		path := writeConfig(t, text)
		var stdout, stderr strings.Builder
		cmd := exec.Command(bin, "-config", path)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("listen %s admin %s: %v, want exit status 1", tc.listen, tc.admin, err)
		}
		out := stderr.String()
		if strings.Count(out, "\n") != 1 || !strings.Contains(out, tc.want) || !strings.Contains(out, addr) || !strings.Contains(out, "cannot listen") || stdout.Len() != 0 {
			t.Errorf("listen %s admin %s: stderr %q, want one line with the address and %q", tc.listen, tc.admin, out, tc.want)
		}
		if strings.Contains(out, "respite listening") {
			t.Errorf("listen %s: %q says it is listening", tc.listen, out)
		}
	}
	// An admin that is no address is the configuration's error, file and
	// line, before anything binds (it used to pass and fail at bind).
	path := writeConfig(t, fmt.Sprintf("listen: %s\nadmin: nonsense\nupstream: {addr: %s}\n", freeAddr, rds.Addr))
	out, err := exec.Command(bin, "-config", path).CombinedOutput()
	var exit *exec.ExitError
	want := "respite: " + path + `:2: admin: "nonsense" is not host:port (an address such as 127.0.0.1:9121, or leave it out to turn the admin listener off)` + "\n"
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || string(out) != want {
		t.Errorf("admin: nonsense: %v %q, want exit status 2 and %q", err, out, want)
	}
}

// -set wins over the file, on a reload too: the proxy serves on the
// Redis -set names though the file names one that is down.
func TestSetOverridesTheFile(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	path := writeConfig(t, fmt.Sprintf("listen: %s\nupstream:\n  addr: 127.0.0.1:1\n", addr))
	var stderr output
	cmd := exec.Command(bin, "-config", path, "-set", "upstream.addr="+rds.Addr)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for i := 0; c.Ping(context.Background()).Err() != nil; i++ {
		if i > 100 {
			t.Fatalf("proxy did not start on the -set upstream: %s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got, err := c.Do(context.Background(), "RESPITE", "RELOAD").Result(); err != nil || got != "OK" {
		t.Fatalf("RESPITE RELOAD with -set: %v %v (want OK: upstream.addr is the same)", got, err)
	}
	if err := c.Set(context.Background(), "set-flag", "1", 0).Err(); err != nil {
		t.Fatalf("after the reload: %v", err)
	}
	out, err := exec.Command(bin, "-config", path, "-set", "upstream.pool_size=lots").CombinedOutput()
	if want := "respite: -set upstream.pool_size=lots: upstream.pool_size: lots is not an integer (a whole number such as 10)\n"; err == nil || string(out) != want {
		t.Errorf("bad -set: %v %q, want %q", err, out, want)
	}
}

// -setup-db creates respite_versions in postgres.dsn's database and exits
// 0 (again on a second run); without a DSN it says where to set one.
func TestSetupDB(t *testing.T) {
	db := fmt.Sprintf("setupdb%d", time.Now().UnixNano()%1e9)
	if err := pg.Exec("CREATE DATABASE " + db); err != nil {
		t.Fatal(err)
	}
	dsn := strings.Replace(pg.DSN, "/respite?", "/"+db+"?", 1)
	path := writeConfig(t, fmt.Sprintf("upstream: {addr: %s}\npostgres: {dsn: %q}\n", rds.Addr, dsn))
	for run := 1; run <= 2; run++ {
		out, err := exec.Command(bin, "-config", path, "-setup-db").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "respite_versions is ready") {
			t.Fatalf("-setup-db, run %d: %v\n%s", run, err, out)
		}
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var made bool
	if err := conn.QueryRow(context.Background(), "SELECT to_regclass('respite_versions') IS NOT NULL").Scan(&made); err != nil || !made {
		t.Fatalf("respite_versions in %s after -setup-db: %v, %v", db, made, err)
	}
	out, err := exec.Command(bin, "-config", writeConfig(t, fmt.Sprintf("upstream: {addr: %s}\n", rds.Addr)), "-setup-db").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "postgres.dsn is empty") {
		t.Fatalf("-setup-db without a DSN: %v\n%s", err, out)
	}
}
