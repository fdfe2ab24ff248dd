// Command proxy runs Respite, a caching proxy that speaks the Redis
// protocol. Usage:
//
//	proxy [-config config.yaml] [-set field=value ...] [-setup-db] [-version]
//
// -setup-db creates the table respite_versions in the database of
// postgres.dsn and exits; run it once, as a role that may create tables
// (docs/OPERATIONS.md, "PostgreSQL roles").
// -set overrides a setting of the file (upstream.addr=127.0.0.1:6390), on
// every reload too; it may be repeated.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/policy"
	"github.com/respite/respite/server"
)

// threads is the number of threads to run Go code on (GOMAXPROCS):
// configured when it is set, else one on a host of two CPUs or fewer (what
// Go would use, cgroup limits included), where one event loop measured
// fastest: the proxy shares those CPUs with Redis and its clients, and
// each hand-off between threads costs a wake-up (docs/BENCHMARKS.md); on
// a bigger host Go's own choice.
func threads(configured, available int) (int, string) {
	switch {
	case configured > 0:
		return configured, "configured"
	case available <= 2:
		return 1, "auto: " + strconv.Itoa(available) + " CPUs, one event loop is fastest"
	}
	return available, "auto: Go's default, one per CPU"
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	path := flag.String("config", "config.yaml", "path of the YAML configuration file")
	showVersion := flag.Bool("version", false, "print the version and exit")
	setupDB := flag.Bool("setup-db", false, "create the table respite_versions in postgres.dsn's database and exit (once, as a role that may create tables)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file until exit")
	var overrides []string
	flag.Func("set", "override a setting of the file, on every reload too: field=value, e.g. upstream.addr=127.0.0.1:6390 (repeatable)", func(s string) error {
		if !strings.Contains(s, "=") {
			return errors.New("want field=value, e.g. upstream.addr=127.0.0.1:6390")
		}
		overrides = append(overrides, s)
		return nil
	})
	flag.Parse()
	if *showVersion {
		fmt.Println("respite", version)
		return
	}
	cfg, err := config.Load(*path, overrides...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "respite:", err)
		os.Exit(2)
	}
	if *setupDB {
		if cfg.Postgres.DSN == "" {
			fmt.Fprintln(os.Stderr, "respite: -setup-db: postgres.dsn is empty: set it in", *path, "or with -set postgres.dsn=postgres://owner@host/db")
			os.Exit(2)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := policy.SetupDB(ctx, cfg.Postgres.DSN); err != nil {
			fmt.Fprintln(os.Stderr, "respite: -setup-db:", policy.LogDetail(err))
			os.Exit(1)
		}
		fmt.Println("respite: respite_versions is ready; grant the proxy's role SELECT, INSERT, UPDATE on it (docs/OPERATIONS.md, \"PostgreSQL roles\")")
		return
	}
	procs, procsWhy := threads(cfg.GOMAXPROCS, runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(procs)
	if procs == 1 && !keepSysmonAwake() {
		procsWhy += " (could not keep the runtime's sysmon awake; see docs/UPSTREAM-BUGS.md)"
	}
	lv := new(slog.LevelVar)
	lv.Set(level(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lv}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if cfg.LogFormat == "json" {
		handler = slog.NewJSONHandler(os.Stderr, opts)
	}
	log := slog.New(handler)
	redis.SetLogger(redisLog{log})
	// The listener first: a busy port or a bad address is reported before
	// anything else starts, and "listening" is logged only once it is true.
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		cause, fix := listenError(err, "listen", *path)
		log.Error("cannot listen", "addr", cfg.Listen, "err", cause, "fix", fix)
		os.Exit(1)
	}
	srv, err := server.New(cfg, log)
	var adminErr *server.AdminListenError
	if errors.As(err, &adminErr) {
		cause, fix := listenError(adminErr.Err, "admin", *path)
		log.Error("cannot listen", "admin", cfg.Admin, "err", cause, "fix", fix)
		os.Exit(1)
	}
	if err != nil {
		log.Error("cannot start", "err", err)
		os.Exit(1)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "respite:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	srv.ConfigFile, srv.ConfigOverrides, srv.LogLevel = *path, overrides, lv
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			restart, err := srv.ReloadFile()
			switch {
			case err != nil:
				log.Error("SIGHUP: reload refused, the old configuration keeps serving", "err", err)
			case len(restart) > 0:
				log.Warn("SIGHUP: reloaded; these settings need a restart and were not applied", "settings", restart)
			}
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := <-sig
		log.Info("shutting down: flushing write-back queues", "signal", s.String(), "timeout", time.Duration(cfg.ShutdownTimeout).String())
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.ShutdownTimeout))
		defer cancel()
		left, err := srv.Shutdown(ctx)
		if left > 0 || err != nil {
			log.Warn("write-back entries left in the durable queue (respite:wb:<route> streams); the next start flushes them", "left", left, "err", err)
			return
		}
		log.Info("shutdown complete: write-back queues flushed")
	}()
	upstreamDesc := cfg.Upstream.Addr
	switch cfg.Upstream.Mode {
	case config.ModeCluster:
		upstreamDesc = "cluster " + strings.Join(cfg.Upstream.Addrs, ",")
	case config.ModeSentinel:
		upstreamDesc = "sentinel " + cfg.Upstream.MasterName + "@" + strings.Join(cfg.Upstream.Addrs, ",")
	}
	log.Info("respite listening", "addr", l.Addr().String(), "upstream", upstreamDesc, "admin", srv.AdminAddr(), "routes", len(cfg.Routes), "gomaxprocs", runtime.GOMAXPROCS(0), "gomaxprocs_reason", procsWhy, "version", version)
	if err := srv.Serve(l); err != nil && !isClosed(err) {
		log.Error("serve", "err", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	<-done
}

// listenError is why a listener did not open (the system's words,
// without Go's "listen tcp" prefix) and what to change: field is its
// setting in file (listen, admin).
func listenError(err error, field, file string) (cause, fix string) {
	cause = err.Error()
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		cause = op.Err.Error()
	}
	var addr *net.AddrError
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return cause, "another process is listening on that port: stop it, or change " + field + " in " + file
	case errors.Is(err, syscall.EACCES):
		return cause, "ports below 1024 need privileges: change " + field + " in " + file
	case errors.As(err, &addr):
		return cause, field + " is host:port, e.g. " + example[field] + ": change it in " + file
	}
	return cause, "change " + field + " in " + file
}

// example is an address for each listener's setting.
var example = map[string]string{"listen": "127.0.0.1:6380", "admin": "127.0.0.1:9121"}

// redisLog sends go-redis' own log lines (dial failures, pool warnings)
// to the proxy's logger, so that a log_format: json stream stays JSON.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "), "component", "go-redis")
}

func level(s string) slog.Level {
	var l slog.Level
	l.UnmarshalText([]byte(s))
	return l
}

func isClosed(err error) bool {
	return err != nil && (err.Error() == "closed" || err.Error() == "use of closed network connection")
}
