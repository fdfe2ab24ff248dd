// Command demo runs Respite against real servers with one command:
//
//	go run ./internal/demo [-config config.yaml]
//
// It reads the config, uses the upstream Redis it names if that answers
// PING and otherwise starts a throwaway redis-server (see
// internal/testenv), locates or starts a PostgreSQL (RESPITE_PG_DSN if it
// answers, else a throwaway one; skipped with a note when PostgreSQL is not
// installed), builds ./cmd/proxy and runs it in the foreground on the
// config file itself, pointed at those servers with -set overrides
// (upstream.addr and its credentials for a throwaway Redis, postgres.dsn).
// The proxy re-applies the overrides on every reload, so editing the file
// and sending SIGHUP (to the demo or the proxy) or RESPITE RELOAD changes
// what the file says, and the throwaway servers stay. SIGHUP is passed on
// to the proxy; SIGINT and SIGTERM stop it, and when it exits the
// throwaway servers are stopped.
//
// The PostgreSQL DSN is also in the environment variable RESPITE_PG_DSN,
// which config.yaml uses (dsn: ${RESPITE_PG_DSN}). The demo schema
// (schema.sql: users, products, page_views) is created if missing, with a
// few rows.
package main

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
)

func main() {
	os.Exit(run())
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", args...)
}

func run() int {
	cfgPath := flag.String("config", "config.yaml", "Respite configuration file")
	flag.Parse()
	// A SIGHUP while the servers start must not end the demo; it is passed
	// on once the proxy runs. SIGINT and SIGTERM are caught from then on.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP)
	defer signal.Stop(sigs)

	freshDB := false // a throwaway PostgreSQL was started
	// PostgreSQL: RESPITE_PG_DSN if it answers, or a throwaway one.
	dsn := os.Getenv("RESPITE_PG_DSN")
	if dsn != "" && pgReachable(dsn) == nil {
		logf("using PostgreSQL at RESPITE_PG_DSN=%s", dsn)
	} else {
		if dsn != "" {
			logf("RESPITE_PG_DSN=%s unreachable (%v): starting a throwaway PostgreSQL", dsn, pgReachable(dsn))
		}
		pg, err := testenv.StartPostgres()
		if err != nil {
			logf("%v", err)
			return 1
		}
		defer pg.Stop()
		dsn = pg.DSN
		freshDB = true
		logf("throwaway PostgreSQL: %s (dir %s)", dsn, pg.Dir)
	}

	os.Setenv("RESPITE_PG_DSN", dsn)
	if err := seed(dsn); err != nil {
		logf("seeding the demo schema: %v", err)
		return 1
	}
	logf("demo tables users, products and page_views are ready: psql '%s'", dsn)

	cfg, err := config.Load(*cfgPath)
	if err != nil {
		logf("%v", err)
		return 1
	}

	// Redis: the configured upstream, or a throwaway one. A fresh database
	// gets a fresh Redis too: a cache left by an earlier run would serve
	// rows the new database does not have (and the routed keys would land
	// in your own Redis). Both go to the proxy as -set overrides, which it
	// applies over the file at start and on every reload: the file the
	// user edits is the one that is read.
	sets := []string{"-set", "postgres.dsn=" + strconv.Quote(dsn)}
	if freshDB {
		logf("fresh PostgreSQL: starting a throwaway redis-server as its cache")
	}
	if err := pingRedis(cfg.Upstream.Addr, cfg.Upstream.Username, cfg.Upstream.Password); err == nil && !freshDB {
		logf("using the upstream Redis at %s", cfg.Upstream.Addr)
	} else {
		if !freshDB {
			logf("upstream Redis at %s unusable (%v): starting a throwaway redis-server", cfg.Upstream.Addr, err)
		}
		r, err := testenv.StartRedis()
		if err != nil {
			logf("%v", err)
			return 1
		}
		defer r.Stop()
		logf("throwaway redis-server on %s (dir %s)", r.Addr, r.Dir)
		sets = append(sets, "-set", "upstream.addr="+r.Addr, "-set", "upstream.username=''", "-set", "upstream.password=''")
	}

	tmp, err := os.MkdirTemp("", "respite-demo-")
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	bin := filepath.Join(tmp, "respite")
	logf("building ./cmd/proxy")
	build := exec.Command(goTool(), "build", "-o", bin, "./cmd/proxy")
	build.Dir = moduleRoot()
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		logf("go build ./cmd/proxy: %v", err)
		return 1
	}

	proxy := exec.Command(bin, append([]string{"-config", *cfgPath}, sets...)...)
	proxy.Stdout, proxy.Stderr = os.Stdout, os.Stderr
	proxy.Env = os.Environ()
	// Its own process group: a Ctrl-C reaches it once, through us.
	proxy.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)

	if err := proxy.Start(); err != nil {
		logf("start proxy: %v", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- proxy.Wait() }()

	port := "6380"
	if _, p, err := net.SplitHostPort(cfg.Listen); err == nil {
		port = p
	}
	fmt.Printf("Respite is starting on %s: try  redis-cli -p %s PING   (Ctrl-C stops it)\n", cfg.Listen, port)
	fmt.Printf("Edit %s, then  redis-cli -p %s RESPITE RELOAD  (or kill -HUP %d) to apply it\n", *cfgPath, port, os.Getpid())

	var killTimer <-chan time.Time
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				logf("SIGHUP: the proxy reloads %s", *cfgPath)
				proxy.Process.Signal(sig)
				continue
			}
			logf("%v: stopping the proxy", sig)
			proxy.Process.Signal(sig)
			if killTimer == nil {
				killTimer = time.After(10 * time.Second)
			}
		case <-killTimer:
			logf("proxy still running 10s after the signal: killing it")
			proxy.Process.Kill()
		case err := <-done:
			var exit *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &exit):
				if killTimer != nil && exit.ExitCode() == -1 {
					return 0 // ended by the signal we forwarded
				}
				logf("proxy: %v", err)
				if exit.ExitCode() > 0 {
					return exit.ExitCode()
				}
				return 1
			default:
				logf("proxy: %v", err)
				return 1
			}
		}
	}
}

// pingRedis checks that a Redis at addr answers PING, authenticating first
// when a password is configured.
func pingRedis(addr, username, password string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	rd := bufio.NewReader(c)
	send := func(args ...string) (string, error) {
		var b strings.Builder
		fmt.Fprintf(&b, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
		if _, err := c.Write([]byte(b.String())); err != nil {
			return "", err
		}
		line, err := rd.ReadString('\n')
		return strings.TrimSpace(line), err
	}
	if password != "" {
		args := []string{"AUTH", password}
		if username != "" {
			args = []string{"AUTH", username, password}
		}
		if line, err := send(args...); err != nil {
			return err
		} else if line != "+OK" {
			return fmt.Errorf("AUTH answered %s", line)
		}
	}
	line, err := send("PING")
	if err != nil {
		return err
	}
	if line != "+PONG" {
		return fmt.Errorf("PING answered %s", line)
	}
	return nil
}

//go:embed schema.sql
var schemaSQL string

// seed creates the demo tables and rows if they are missing.
func seed(dsn string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, schemaSQL)
	return err
}

// pgReachable checks that something accepts TCP connections at the DSN's
// host and port (default 5432).
func pgReachable(dsn string) error {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return fmt.Errorf("not a postgres:// URL")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "5432"
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// goTool is the go command: from PATH, else the usual /usr/local/go.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// moduleRoot is the directory of the main module's go.mod, so the demo
// builds the right ./cmd/proxy from any working directory inside the repo.
func moduleRoot() string {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			return filepath.Dir(gomod)
		}
	}
	return "."
}
