package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// redisDo sends one command as a RESP array and returns the first reply
// line (bulk replies: the payload line).
func redisDo(t *testing.T, addr string, args ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	if strings.HasPrefix(line, "$") && line != "$-1" {
		line, err = r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		line = strings.TrimSuffix(line, "\r\n")
	}
	return line
}

func TestFreePort(t *testing.T) {
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if p <= 0 || p > 65535 || reservedPorts[p] {
		t.Fatalf("FreePort() = %d", p)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("port %d not free: %v", p, err)
	}
	l.Close()
}

func TestRedis(t *testing.T) {
	start := time.Now()
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	t.Logf("redis-server on %s ready in %v", r.Addr, time.Since(start).Round(time.Millisecond))
	if r.Port == 6379 || r.Addr != fmt.Sprintf("127.0.0.1:%d", r.Port) {
		t.Fatalf("Addr %q Port %d", r.Addr, r.Port)
	}
	if got := redisDo(t, r.Addr, "PING"); got != "+PONG" {
		t.Fatalf("PING = %q", got)
	}
	if got := redisDo(t, r.Addr, "SET", "k", "v1"); got != "+OK" {
		t.Fatalf("SET = %q", got)
	}
	if got := redisDo(t, r.Addr, "GET", "k"); got != "v1" {
		t.Fatalf("GET = %q", got)
	}

	// Down, then up again on the same port, empty.
	r.Kill()
	if _, err := net.DialTimeout("tcp", r.Addr, 200*time.Millisecond); err == nil {
		t.Fatal("still accepting connections after Kill")
	}
	if _, err := os.Stat(r.Dir); err != nil {
		t.Fatalf("Kill removed Dir: %v", err)
	}
	start = time.Now()
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart in %v", time.Since(start).Round(time.Millisecond))
	if got := redisDo(t, r.Addr, "GET", "k"); got != "$-1" {
		t.Fatalf("GET after restart = %q, want nil", got)
	}
	// Restart of a running server works too.
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	if got := redisDo(t, r.Addr, "PING"); got != "+PONG" {
		t.Fatalf("PING = %q", got)
	}

	r.Stop()
	r.Stop() // idempotent
	if _, err := os.Stat(r.Dir); !os.IsNotExist(err) {
		t.Fatalf("Dir left behind: %v", err)
	}
	if err := r.Restart(); err == nil {
		t.Fatal("Restart after Stop succeeded")
	}
}

func TestRedisExtraArgs(t *testing.T) {
	r, err := StartRedis("--requirepass", "secret")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if got := redisDo(t, r.Addr, "PING"); !strings.HasPrefix(got, "-NOAUTH") {
		t.Fatalf("PING without AUTH = %q", got)
	}
}

func TestRedisStopAfterDeath(t *testing.T) {
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	// The server dies on its own; Stop must still work.
	c, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("SHUTDOWN NOSAVE\r\n"))
	c.Read(make([]byte, 64)) // EOF once the server is gone
	c.Close()
	r.Stop()
	if _, err := os.Stat(r.Dir); !os.IsNotExist(err) {
		t.Fatalf("Dir left behind: %v", err)
	}
}

func TestPostgres(t *testing.T) {
	start := time.Now()
	pg, err := StartPostgres()
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	t.Logf("postgres on port %d ready (db + extension) in %v", pg.Port, time.Since(start).Round(time.Millisecond))
	want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/respite?sslmode=disable", pg.Port)
	if pg.DSN != want || pg.Host != "127.0.0.1" || pg.Port == 5432 {
		t.Fatalf("DSN %q Host %q Port %d", pg.DSN, pg.Host, pg.Port)
	}
	if got, err := pg.Query("select 1"); err != nil || got != "1" {
		t.Fatalf("select 1 = %q, %v", got, err)
	}
	if err := pg.Exec("create table t (id int primary key, v text); insert into t values (1, 'a'), (2, null)"); err != nil {
		t.Fatal(err)
	}
	if got, err := pg.Query("select id, v from t order by id"); err != nil || got != "1|a\n2|" {
		t.Fatalf("rows = %q, %v", got, err)
	}
	if err := pg.Exec("select * from no_such_table"); err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Fatalf("bad SQL error = %v", err)
	}
	if got, err := pg.Query("show shared_preload_libraries"); err != nil || got != "pg_stat_statements" {
		t.Fatalf("shared_preload_libraries = %q, %v", got, err)
	}
	if got, err := pg.Query("select count(*) > 0 from pg_stat_statements where query like '%from t%'"); err != nil || got != "t" {
		t.Fatalf("pg_stat_statements = %q, %v", got, err)
	}

	// Down, then up again on the same port with the data.
	pg.Halt()
	if _, err := pg.Query("select 1"); err == nil {
		t.Fatal("query succeeded while halted")
	}
	if _, err := os.Stat(pg.dataDir()); err != nil {
		t.Fatalf("Halt removed the data: %v", err)
	}
	start = time.Now()
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	t.Logf("resume in %v", time.Since(start).Round(time.Millisecond))
	if err := pg.Resume(); err != nil { // already running: no-op
		t.Fatal(err)
	}
	if got, err := pg.Query("select v from t where id = 1"); err != nil || got != "a" {
		t.Fatalf("after resume = %q, %v", got, err)
	}

	start = time.Now()
	pg.Stop()
	t.Logf("stop in %v", time.Since(start).Round(time.Millisecond))
	pg.Stop() // idempotent
	if _, err := os.Stat(pg.Dir); !os.IsNotExist(err) {
		t.Fatalf("Dir left behind: %v", err)
	}
	if err := pg.Resume(); err == nil {
		t.Fatal("Resume after Stop succeeded")
	}
}
