package policy

// Tests that run the real binary (cmd/proxy, as cmd/proxy/main_test.go
// does): they SIGKILL it mid-load and start it with PostgreSQL or Redis
// down.

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/testenv"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// proxyBinary builds cmd/proxy once per test run.
func proxyBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "respite-policy-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "respite")
		if out, err := exec.Command("go", "build", "-o", binPath, "../cmd/proxy").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ../cmd/proxy: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// proc is one running proxy process.
type proc struct {
	cmd   *exec.Cmd
	addr  string
	admin string
	log   *syncBuffer
}

// startProxy runs the binary with cfg (a config file's text without
// listen and admin, which it adds) and returns once it answers PING.
func startProxy(t *testing.T, cfg string) *proc {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	aport, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{addr: "127.0.0.1:" + strconv.Itoa(port), admin: "127.0.0.1:" + strconv.Itoa(aport), log: &syncBuffer{}}
	path := filepath.Join(t.TempDir(), "config.yaml")
	text := fmt.Sprintf("listen: %s\nadmin: %s\nshutdown_timeout: 5s\n", p.addr, p.admin) + cfg
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(proxyBinary(t), "-config", path)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1})
	defer c.Close()
	// Any answer will do: with Redis down PING answers an error.
	for i := 0; c.Ping(context.Background()).Err() != nil && !isReply(c.Ping(context.Background()).Err()); i++ {
		if i > 200 || p.cmd.ProcessState != nil {
			t.Fatalf("proxy did not start:\n%s", p.log)
		}
		time.Sleep(25 * time.Millisecond)
	}
	return p
}

func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

// get fetches an admin endpoint: status and body.
func (p *proc) get(t *testing.T, path string) (int, string) {
	t.Helper()
	res, err := http.Get("http://" + p.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// A proxy SIGKILLed while 8 writers (INCRBY, SET, and the same in
// MULTI/EXEC) and 2 readers work on 20 write-through keys leaves cache and
// PostgreSQL agreeing for every key once it is restarted: the restarted
// proxy resolves the writes its earlier run left in flight before it
// serves (writethrough.go). Checked through the proxy and directly in
// Redis, three kills in a row.
func TestWriteThroughAgreesAfterSIGKILL(t *testing.T) {
	rs, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	table := uniqueName("wtkill")
	pgExec(t, nil, "CREATE TABLE "+table+" (k text PRIMARY KEY, v bigint NOT NULL)")
	cfg := fmt.Sprintf(`upstream:
  addr: %s
postgres:
  dsn: %s
  statement_timeout: 1s
write_back:
  consumer: crash-proxy
routes:
  - name: stock
    prefix: "stock:"
    policy: write-through
    table: %s
    key_column: k
    format: value
    value_column: v
`, rs.Addr, testPG.DSN, table)
	keys := make([]string, 20)
	for i := range keys {
		keys[i] = fmt.Sprintf("stock:%d", i)
	}
	direct := newRedisClient(t, rs.Addr, 2)
	ctx := testCtx(t)
	for round := 0; round < 3; round++ {
		p := startProxy(t, cfg)
		var wg sync.WaitGroup
		var ops atomic.Int64
		stop := make(chan struct{})
		for w := 0; w < 10; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1, PoolSize: 1})
				defer c.Close()
				n := 0
				for {
					select {
					case <-stop:
						return
					default:
					}
					k, k2 := keys[rand.N(len(keys))], keys[rand.N(len(keys))]
					var err error
					switch {
					case w >= 8: // readers: fills race the writes
						err = c.Get(ctx, k).Err()
						if err == redis.Nil {
							err = nil
						}
					case n%3 == 0:
						err = c.IncrBy(ctx, k, 1).Err()
					case n%3 == 1:
						err = c.Set(ctx, k, rand.N(1000), 0).Err()
					default:
						_, err = c.TxPipelined(ctx, func(tx redis.Pipeliner) error {
							tx.IncrBy(ctx, k, 1)
							tx.Set(ctx, k2, rand.N(1000), 0)
							return nil
						})
					}
					if err != nil {
						return // the proxy is gone
					}
					n++
					ops.Add(1)
				}
			}(w)
		}
		time.Sleep(time.Duration(800+rand.N(700)) * time.Millisecond)
		p.kill()
		close(stop)
		wg.Wait()
		total := ops.Load()
		stale := disagreements(t, direct, table, keys, false)
		restarted := time.Now()
		p = startProxy(t, cfg)
		up := time.Since(restarted)
		// Every key agrees (through the proxy, which fills, and then
		// directly in Redis) within the bound: intentMargin (the dead
		// proxy's last statements may still commit: statement_timeout 1s
		// + 2s) and one sweep.
		c := redis.NewClient(&redis.Options{Addr: p.addr})
		bound := 3*time.Second + intentSweep + time.Second
		var agreed time.Duration
		for {
			bad := 0
			for _, k := range keys {
				got, err := c.Get(ctx, k).Result()
				if err != nil && err != redis.Nil {
					t.Fatalf("GET %s after the restart: %v", k, err)
				}
				if got != pgValue(t, table, k) {
					bad++
				}
			}
			if bad == 0 && disagreements(t, direct, table, keys, true) == 0 {
				agreed = time.Since(restarted)
				break
			}
			if time.Since(restarted) > bound {
				t.Errorf("round %d: %d keys still disagree %v after the restart (through the proxy: %d)", round, disagreements(t, direct, table, keys, true), bound, bad)
				for _, k := range keys {
					t.Logf("%s: redis %q pg %q marker %v", k, direct.Get(ctx, k).Val(), pgValue(t, table, k), direct.HGetAll(ctx, markerKey(k)).Val())
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		// And they stay in agreement.
		time.Sleep(500 * time.Millisecond)
		for _, k := range keys {
			if got, want := c.Get(ctx, k).Val(), pgValue(t, table, k); got != want || direct.Get(ctx, k).Val() != want {
				t.Errorf("round %d: %s: proxy %q, Redis %q, PostgreSQL %q", round, k, got, direct.Get(ctx, k).Val(), want)
			}
		}
		c.Close()
		t.Logf("round %d: killed after %d operations; before the restart %d of 20 cached values disagreed with PostgreSQL; restarted in %v, every key agreed (through the proxy and in Redis) %v after the restart began",
			round, total, stale, up.Round(time.Millisecond), agreed.Round(time.Millisecond))
		if !strings.Contains(p.log.String(), "write-through writes of a proxy that died were resolved") && stale > 0 {
			t.Errorf("round %d: %d stale keys, no resolution logged:\n%s", round, stale, p.log)
		}
		p.kill()
	}
}

// pgValue is the row's value as text, "" when there is none.
func pgValue(t testing.TB, table, key string) string {
	return pgQuery(t, nil, "SELECT v FROM "+table+" WHERE k = '"+strings.TrimPrefix(key, "stock:")+"'")
}

// disagreements counts the keys whose cached copy in Redis differs from
// PostgreSQL (an absent copy agrees with anything unless want is set:
// then it must be there if the row is).
func disagreements(t testing.TB, rc *redis.Client, table string, keys []string, want bool) int {
	n := 0
	for _, k := range keys {
		got, err := rc.Get(context.Background(), k).Result()
		if err == redis.Nil && !want {
			continue
		}
		if got != pgValue(t, table, k) {
			n++
		}
	}
	return n
}

// PostgreSQL stopped when the proxy starts: it starts, plain commands
// work, a routed GET answers an error naming the route and the cause,
// /readyz says which route is not ready and why, INFO and /metrics count
// it; PostgreSQL started, the route is served within a bounded time
// without a restart. Redis stopped when the proxy starts: it starts, says
// so in one log line, and serves once Redis is back.
func TestProxyStartsWithoutPostgresOrRedis(t *testing.T) {
	pg, err := testenv.StartPostgres()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	pgExec(t, pg, "CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users VALUES (1, 'Ada')")
	pg.Halt()
	cfg := fmt.Sprintf(`upstream:
  addr: %s
postgres:
  dsn: %s
routes:
  - name: users
    prefix: "user:"
    policy: cache-aside
    table: users
    key_column: id
    format: json
`, testRedis.Addr, pg.DSN)
	proxyBinary(t) // built before the clock starts
	started := time.Now()
	p := startProxy(t, cfg)
	t.Logf("proxy answered PING %v after its start with PostgreSQL down", time.Since(started).Round(time.Millisecond))
	ctx := testCtx(t)
	c := redis.NewClient(&redis.Options{Addr: p.addr})
	defer c.Close()
	if err := c.Set(ctx, "plain:x", "1", 0).Err(); err != nil || c.Get(ctx, "plain:x").Val() != "1" {
		t.Fatalf("plain commands with PostgreSQL down: %v", err)
	}
	err = c.Get(ctx, "user:1").Err()
	if err == nil || !strings.HasPrefix(err.Error(), "ERR route 'users': not ready: PostgreSQL is unreachable (postgres: cannot connect: connection refused)") {
		t.Fatalf("routed GET with PostgreSQL down: %v", err)
	}
	code, body := p.get(t, "/readyz")
	if code != 503 || !strings.Contains(body, "route 'users' not ready: PostgreSQL is unreachable") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	// Neither a client nor the unauthenticated /readyz learns the DSN.
	u, perr := url.Parse(pg.DSN)
	if perr != nil {
		t.Fatal(perr)
	}
	for _, secret := range []string{u.User.Username() + "@", "user=", "password", "dbname=", "database=", u.Host, ":" + u.Port()} {
		for where, text := range map[string]string{"the client's error": err.Error(), "/readyz": body} {
			if strings.Contains(text, secret) {
				t.Errorf("%s reveals %q of the DSN: %q", where, secret, text)
			}
		}
	}
	if info := c.Info(ctx, "respite").Val(); !strings.Contains(info, "respite_routes_degraded:1\r\n") {
		t.Fatalf("INFO respite:\n%s", info)
	}
	if _, body := p.get(t, "/metrics"); !strings.Contains(body, "\nrespite_routes_degraded 1\n") {
		t.Fatalf("/metrics lacks respite_routes_degraded 1")
	}
	if !strings.Contains(p.log.String(), "PostgreSQL unreachable at start-up") {
		t.Fatalf("no start-up line:\n%s", p.log)
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for c.Get(ctx, "user:1").Val() == "" {
		if time.Since(back) > 15*time.Second {
			t.Fatalf("routed GET not served 15 s after PostgreSQL came back:\n%s", p.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("routed GET served %v after PostgreSQL accepted connections", time.Since(back).Round(time.Millisecond))
	if code, body := p.get(t, "/readyz"); code != 200 {
		t.Fatalf("/readyz after PostgreSQL came back: %d %q", code, body)
	}
	if info := c.Info(ctx, "respite").Val(); !strings.Contains(info, "respite_routes_degraded:0\r\n") {
		t.Fatalf("INFO respite after PostgreSQL came back:\n%s", info)
	}
	p.kill()

	// Redis down at start.
	rs, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Stop)
	rs.Kill()
	p = startProxy(t, strings.Replace(cfg, testRedis.Addr, rs.Addr, 1)+"  - {name: pv, prefix: 'pv:', policy: write-back, table: users, key_column: id, format: json}\n")
	if n := strings.Count(p.log.String(), "upstream Redis unreachable at start-up"); n != 1 {
		t.Fatalf("%d start-up lines about Redis:\n%s", n, p.log)
	}
	c2 := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1})
	defer c2.Close()
	if err := c2.Set(ctx, "pv:1", `{"name":"x"}`, 0).Err(); err == nil {
		t.Fatal("a write-back write was acknowledged with Redis down")
	}
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "write-back writes after Redis came back", func() bool { return c2.Set(ctx, "pv:1", `{"name":"x"}`, 0).Err() == nil })
	if !strings.Contains(p.log.String(), "write-back durability") {
		t.Fatalf("no durability line once Redis answered:\n%s", p.log)
	}
}

// A write-back route on a Redis Cluster upstream keeps every acknowledged
// INCR across SIGKILLs of the proxy: 8 writers INCR 20 counters until the
// proxy is killed mid-load, twice; once restarted, the flusher drains what
// the killed run queued and PostgreSQL holds, per counter, at least the
// INCRs acknowledged and at most one more per writer in flight; the
// proxy's GET agrees with PostgreSQL.
func TestWriteBackOnClusterSurvivesSIGKILL(t *testing.T) {
	cl, err := testenv.StartCluster()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)
	table := uniqueName("wbkill")
	pgExec(t, nil, "CREATE TABLE "+table+" (k text PRIMARY KEY, v bigint NOT NULL DEFAULT 0)")
	cfg := fmt.Sprintf(`upstream:
  mode: cluster
  addrs: [%s]
postgres:
  dsn: %s
write_back:
  consumer: crash-proxy
routes:
  - name: pv
    prefix: "pv:"
    policy: write-back
    table: %s
    key_column: k
    format: value
    value_column: v
    flush_interval: 100ms
`, strings.Join(cl.Addrs(), ", "), testPG.DSN, table)
	keys := make([]string, 20)
	for i := range keys {
		keys[i] = fmt.Sprintf("pv:%d", i)
	}
	ctx := testCtx(t)
	var acked, sent atomic.Int64
	sum := func() int64 {
		n, _ := strconv.ParseInt(pgQuery(t, nil, "SELECT coalesce(sum(v), 0) FROM "+table), 10, 64)
		return n
	}
	for round := 0; round < 2; round++ {
		p := startProxy(t, cfg)
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := redis.NewClient(&redis.Options{Addr: p.addr, MaxRetries: -1, PoolSize: 1})
				defer c.Close()
				for {
					select {
					case <-stop:
						return
					default:
					}
					sent.Add(1)
					if c.Incr(ctx, keys[rand.N(len(keys))]).Err() != nil {
						return // the proxy is gone
					}
					acked.Add(1)
				}
			}()
		}
		time.Sleep(time.Duration(800+rand.N(700)) * time.Millisecond)
		p.kill()
		close(stop)
		wg.Wait()
		t.Logf("round %d: killed with %d INCRs acknowledged, %d sent, %d in PostgreSQL", round, acked.Load(), sent.Load(), sum())
	}
	p := startProxy(t, cfg)
	deadline := time.Now().Add(30 * time.Second)
	for sum() < acked.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("PostgreSQL holds %d, %d INCRs were acknowledged", sum(), acked.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s := sum(); s > sent.Load() {
		t.Fatalf("PostgreSQL holds %d, only %d INCRs were sent", s, sent.Load())
	}
	c := redis.NewClient(&redis.Options{Addr: p.addr})
	defer c.Close()
	time.Sleep(500 * time.Millisecond) // the last flush of the drained queue
	for _, k := range keys {
		got, err := c.Get(ctx, k).Result()
		if err == redis.Nil {
			got, err = "", nil
		}
		want := pgQuery(t, nil, "SELECT v FROM "+table+" WHERE k = '"+strings.TrimPrefix(k, "pv:")+"'")
		if err != nil || got != want {
			t.Errorf("%s: proxy %q %v, PostgreSQL %q", k, got, err, want)
		}
	}
}
