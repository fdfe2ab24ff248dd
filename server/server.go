// Package server is Respite's RESP front end: it accepts clients with
// redcon, keeps each client's connection state, and carries every command
// to the upstream Redis the way router says (shared and multiplexed, on a
// pinned connection, or answered locally).
//
// A request's path: redcon reads a batch of commands from a guarded
// connection (resp.NewListener bounds what a client may send) → handle
// takes the whole pipelined batch → session.run walks it, sending runs of
// stateless commands to the upstream as one pipeline → the upstream's exact
// reply bytes are written back in order.
package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Server is one Respite RESP listener and its upstream clients.
type Server struct {
	// ConfigFile is the file ReloadFile (RESPITE RELOAD) reads again.
	ConfigFile string
	// LogLevel, if set, follows log_level on Reload.
	LogLevel *slog.LevelVar

	cfg    config.Config
	log    *slog.Logger
	up     *upstream
	rs     *redcon.Server
	routes atomic.Pointer[routes]        // nil without routes; swapped by Reload
	live   atomic.Pointer[config.Config] // the settings Reload can change

	conflicts *conflicts // optimistic-transaction metadata
	gate      *gate      // contention gate, nil when off

	clients  atomic.Int64 // connected clients, for max_clients
	pinned   atomic.Int64 // sessions holding a pinned connection
	pinnedTx atomic.Int64 // of those, in WATCH or MULTI
	blocked  atomic.Int64 // sessions inside a blocking command
	detached atomic.Int64 // sessions in pub/sub or MONITOR mode
	upErrors atomic.Int64 // commands answered "upstream unavailable"

	tls       *tls.Config    // the listener's, nil without TLS
	metrics   *admin.Metrics // nil without the admin listener
	adminSrv  *http.Server
	adminAddr string
	nextID    atomic.Int64 // CLIENT ID / HELLO id of the next client

	mu       sync.Mutex
	version  string // upstream redis_version, for HELLO
	sessions map[*session]struct{}
}

// New builds a server for cfg. It does not contact the upstream Redis yet:
// a Redis that is down at start-up is reported per command, like one that
// goes down later. With routes, it connects to PostgreSQL and checks every
// route's table and columns; the error names the route, table and column.
func New(cfg config.Config, log *slog.Logger) (*Server, error) {
	up, err := newUpstream(cfg.Upstream, cfg.Limits.MaxClients)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, up: up, sessions: map[*session]struct{}{}}
	s.live.Store(&cfg)
	if s.tls, err = listenerTLS(cfg.TLS); err != nil {
		up.close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	s.conflicts = newConflicts(cfg.Transactions.TrackedKeys)
	s.gate = &gate{s: s, t: s.conflicts}
	rs, err := openRoutes(cfg, muxCache{up}, up.shared[0], log)
	if err != nil {
		up.close()
		return nil, err
	}
	s.routes.Store(rs)
	if cfg.Admin != "" {
		if err := s.startAdmin(); err != nil {
			rs.close()
			up.close()
			return nil, fmt.Errorf("admin listener: %w", err)
		}
	}
	s.rs = redcon.NewServerNetwork("tcp", cfg.Listen, s.handle, s.accept, s.closed)
	return s, nil
}

// Serve accepts clients on l until Close. Every accepted connection is
// wrapped by resp.NewConn, which enforces the configured limits before
// redcon parses a byte.
func (s *Server) Serve(l net.Listener) error {
	if s.tls != nil {
		l = tls.NewListener(l, s.tls)
	}
	return s.rs.Serve(guardedListener{l, s})
}

// ListenAndServe listens on the configured address (with TLS when tls
// has a certificate) and serves.
func (s *Server) ListenAndServe() error {
	l, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return err
	}
	return s.Serve(l)
}

// Close stops accepting, closes every client and the upstream clients.
func (s *Server) Close() error {
	err := s.rs.Close()
	s.mu.Lock()
	for sess := range s.sessions {
		sess.end()
	}
	s.mu.Unlock()
	if s.adminSrv != nil {
		s.adminSrv.Close()
	}
	s.routes.Load().close()
	s.up.close()
	return err
}

// Shutdown stops gracefully: it stops accepting and closes clients (each
// finishes the command it is running), then flushes the write-back queues
// until they are empty or ctx ends. It returns how many write-back entries
// are left; they stay in their durable queues (Redis Streams) for the next
// start.
func (s *Server) Shutdown(ctx context.Context) (left int64, err error) {
	s.rs.Close()
	s.mu.Lock()
	for sess := range s.sessions {
		if sess.w != sess.conn {
			sess.w.Close() // detached clients are not redcon's any more
		}
	}
	s.mu.Unlock()
	left, err = s.routes.Load().drain(ctx)
	if s.adminSrv != nil {
		s.adminSrv.Close()
	}
	s.routes.Load().close()
	s.up.close()
	return left, err
}

// accept admits a client unless max_clients are connected, answering like
// Redis: "-ERR max number of clients reached".
func (s *Server) accept(conn redcon.Conn) bool {
	if s.clients.Add(1) > int64(s.live.Load().Limits.MaxClients) {
		s.clients.Add(-1)
		conn.NetConn().Write([]byte("-ERR max number of clients reached\r\n"))
		return false
	}
	sess := newSession(s, conn)
	conn.SetContext(sess)
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
	return true
}

// closed runs when redcon drops a client. A detached client (pub/sub,
// MONITOR) is closed by its own loop instead.
func (s *Server) closed(conn redcon.Conn, err error) {
	if err != nil && err.Error() == "detached" {
		return
	}
	if sess, ok := conn.Context().(*session); ok {
		s.drop(sess)
	}
}

func (s *Server) drop(sess *session) {
	sess.end()
	s.mu.Lock()
	_, ok := s.sessions[sess]
	delete(s.sessions, sess)
	s.mu.Unlock()
	if ok {
		s.clients.Add(-1)
	}
}

// handle is redcon's handler: it takes the rest of the pipelined batch too,
// so the batch reaches the upstream as one pipeline.
func (s *Server) handle(conn redcon.Conn, cmd redcon.Command) {
	sess, ok := conn.Context().(*session)
	if !ok {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic serving client; connection closed", "panic", r, "client", sess.id)
			conn.WriteError("ERR internal error in proxy")
			conn.Close()
		}
	}()
	cmds := append(sess.batch[:0], cmd)
	cmds = append(cmds, conn.ReadPipeline()...)
	if s.live.Load().Transactions.IdleTimeout > 0 {
		sess.runIdle(cmds)
	} else {
		sess.run(cmds)
	}
	clear(cmds)
	sess.batch = cmds[:0]
}

// upstreamVersion returns the upstream's redis_version, asking once.
func (s *Server) upstreamVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.version == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if v, err := s.up.version(ctx); err == nil && v != "" {
			s.version = v
		}
	}
	if s.version == "" {
		return "7.0.0"
	}
	return s.version
}

// guardedListener wraps every accepted connection in resp.NewConn with the
// request limits in force at accept time (they change on Reload).
type guardedListener struct {
	net.Listener
	s *Server
}

func (l guardedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	lim := l.s.live.Load().Limits
	return resp.NewConn(c, resp.Limits{MaxBulk: lim.MaxBulkBytes, MaxArgs: lim.MaxArgs, MaxInline: lim.MaxInlineBytes}), nil
}
