package server

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/policy"
)

// Reload applies a new configuration without dropping a connection
// (SIGHUP and RESPITE RELOAD): routes (and their TTLs and policies),
// limits, transaction settings and the log level (the caller's) change
// live; the new routes are checked against PostgreSQL first, and any error
// leaves the old configuration serving. Settings that need a restart
// (listen, tls, upstream, postgres, admin, passwords, write_back,
// log_format, gomaxprocs, shutdown_timeout)
// are not applied; they are returned by name so the caller can say so.
func (s *Server) Reload(cfg config.Config) (needRestart []string, err error) {
	old := s.live.Load()
	needRestart = restartChanges(*old, cfg)
	next := *old
	next.Limits, next.Transactions, next.LogLevel = cfg.Limits, cfg.Transactions, cfg.LogLevel
	next.Routes = cfg.Routes
	if !reflect.DeepEqual(cfg.Routes, old.Routes) {
		set, err := policy.Open(next, s.up.Cache(), s.up.Redis(), s.log)
		if err != nil {
			return needRestart, fmt.Errorf("new routes refused, the old ones keep serving: %w", err)
		}
		s.track(set)
		prev := s.routes.Swap(set)
		if prev != nil {
			prev.Stop() // its flusher stops; the new one re-reads what it had pending
			time.AfterFunc(30*time.Second, prev.Close)
		}
	}
	s.live.Store(&next)
	if s.LogLevel != nil {
		s.LogLevel.UnmarshalText([]byte(next.LogLevel))
	}
	s.log.Info("configuration reloaded", "routes", len(next.Routes), "needs_restart", needRestart)
	return needRestart, nil
}

// ReloadFile reads ConfigFile again and applies it with Reload.
func (s *Server) ReloadFile() (needRestart []string, err error) {
	if s.ConfigFile == "" {
		return nil, fmt.Errorf("no configuration file to reload")
	}
	cfg, err := config.Load(s.ConfigFile, s.ConfigOverrides...)
	if err != nil {
		return nil, err
	}
	return s.Reload(cfg)
}

// restartOnly are the top-level settings read once at start.
var restartOnly = []string{"listen", "tls", "upstream", "postgres", "admin", "requirepass",
	"admin_password", "write_back", "log_format", "gomaxprocs", "shutdown_timeout"}

// restartChanges names the restart-only settings that differ between old
// and cfg, as paths of the file (upstream.mux_conns, tls.cert_file).
func restartChanges(old, cfg config.Config) []string {
	var out []string
	for _, path := range config.Changed(old, cfg) {
		top, _, _ := strings.Cut(path, ".")
		if slices.Contains(restartOnly, top) {
			out = append(out, path)
		}
	}
	return out
}
