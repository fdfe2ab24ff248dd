package server

import (
	"fmt"
	"reflect"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/policy"
)

// Reload applies a new configuration without dropping a connection
// (SIGHUP and RESPITE RELOAD): the settings of config.Reloadable (routes
// with their TTLs and policies, limits, transaction settings, the log
// level) change live; new routes are checked against PostgreSQL first,
// and any error leaves the old configuration serving. Every other
// setting takes a restart: those that changed are returned by name
// (config.RestartChanges) so the caller can say so.
func (s *Server) Reload(cfg config.Config) (needRestart []string, err error) {
	needRestart = config.RestartChanges(s.cfg, cfg)
	next := cfg.Reloadable()
	if len(next.Routes) > 0 && len(s.cfg.Routes) == 0 && s.cfg.Upstream.Mode != config.ModeCluster {
		// The routes apply; the clients' restricted user (clientuser.go),
		// which keeps Lua scripts off respite:* keys, is set up at start.
		needRestart = append(needRestart, "routes (clients' restricted Redis user)")
	}
	if !reflect.DeepEqual(next.Routes, s.live.Load().Routes) {
		set, err := policy.Open(s.cfg.With(next), s.up.Cache(), s.up.RouteRedis(), s.log)
		if err != nil {
			return needRestart, fmt.Errorf("new routes refused, the old ones keep serving: %w", err)
		}
		s.track(set)
		s.routes.Replace(set, 30*time.Second)
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
