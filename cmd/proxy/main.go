// Command proxy runs Respite, a caching proxy that speaks the Redis
// protocol. Usage:
//
//	proxy [-config config.yaml] [-version]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	path := flag.String("config", "config.yaml", "path of the YAML configuration file")
	showVersion := flag.Bool("version", false, "print the version and exit")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile (go tool pprof) to this file until exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("respite", version)
		return
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "respite:", err)
		os.Exit(2)
	}
	if cfg.GOMAXPROCS > 0 {
		runtime.GOMAXPROCS(cfg.GOMAXPROCS)
	}
	lv := new(slog.LevelVar)
	lv.Set(level(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lv}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if cfg.LogFormat == "json" {
		handler = slog.NewJSONHandler(os.Stderr, opts)
	}
	log := slog.New(handler)
	srv, err := server.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "respite:", err)
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
	srv.ConfigFile, srv.LogLevel = *path, lv
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
		log.Info("shutting down: flushing write-back queues", "signal", s.String(), "timeout", time.Duration(cfg.ShutdownTimeout))
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.ShutdownTimeout))
		defer cancel()
		left, err := srv.Shutdown(ctx)
		if left > 0 || err != nil {
			log.Warn("write-back entries left in the durable queue (respite:wb:<route> streams); the next start flushes them", "left", left, "err", err)
			return
		}
		log.Info("shutdown complete: write-back queues flushed")
	}()
	log.Info("respite listening", "addr", cfg.Listen, "upstream", cfg.Upstream.Addr, "admin", cfg.Admin, "routes", len(cfg.Routes), "gomaxprocs", runtime.GOMAXPROCS(0), "version", version)
	if err := srv.ListenAndServe(); err != nil && !isClosed(err) {
		log.Error("serve", "err", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
	<-done
}

func level(s string) slog.Level {
	var l slog.Level
	l.UnmarshalText([]byte(s))
	return l
}

func isClosed(err error) bool {
	return err != nil && (err.Error() == "closed" || err.Error() == "use of closed network connection")
}
