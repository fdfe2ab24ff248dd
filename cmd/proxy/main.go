// Command proxy runs Respite, a caching proxy that speaks the Redis
// protocol. Usage:
//
//	proxy [-config config.yaml] [-version]
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

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
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level(cfg.LogLevel)}))
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
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		log.Info("shutting down", "signal", s.String())
		srv.Close()
	}()
	log.Info("respite listening", "addr", cfg.Listen, "upstream", cfg.Upstream.Addr, "version", version)
	if err := srv.ListenAndServe(); err != nil && !isClosed(err) {
		log.Error("serve", "err", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func level(s string) slog.Level {
	var l slog.Level
	l.UnmarshalText([]byte(s))
	return l
}

func isClosed(err error) bool {
	return err != nil && (err.Error() == "closed" || err.Error() == "use of closed network connection")
}
