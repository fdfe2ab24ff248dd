// Package server is Respite's RESP front end: it accepts clients with
// redcon, keeps each client's connection state, and carries every command
// where router.Dispatch says: the shared multiplexed upstream, the
// session's own pinned connection, the route layer (policy), or an answer
// of its own. docs/ARCHITECTURE.md follows a request through the files.
//
// A request's path: redcon reads a batch of commands from a guarded
// connection (resp.NewConn bounds what a client may send) → handle takes
// the whole pipelined batch → session.run classifies each command once
// (router.Classify) and dispatches it (router.Dispatch) → runs of commands
// with the same path go upstream as one pipeline → replies are written
// back in order, as the exact bytes Redis sent wherever Redis answered.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// Server is one Respite RESP listener and its upstream clients.
type Server struct {
	// ConfigFile is the file ReloadFile (RESPITE RELOAD) reads again, and
	// ConfigOverrides the settings that win over it (config.Load).
	ConfigFile      string
	ConfigOverrides []string
	// LogLevel, if set, follows log_level on Reload.
	LogLevel *slog.LevelVar

	cfg       config.Config
	defaultDB string // cfg.Upstream.DB as SELECT spells it
	// listenAddr is the address Serve listens on (cluster_answers'
	// default advertise address).
	listenAddr atomic.Pointer[string]
	// adminAllowed are the admin commands every client may run (config
	// admin_commands), when the proxy holds upstream credentials.
	adminAllowed []router.ID
	log          *slog.Logger
	up           *upstream.Upstream
	rs           *redcon.Server
	routes       policy.Live                       // serves no routes without any; replaced by Reload
	live         atomic.Pointer[config.Reloadable] // the settings Reload can change

	conflicts *conflicts // optimistic-transaction metadata
	gate      *gate      // contention gate

	counts counts
	// queryBytes is the bytes of incomplete commands of every client
	// (limits.max_query_bytes_total).
	queryBytes atomic.Int64
	// order sends clients' commands to Redis in their arrival order.
	order order

	tls       *tls.Config    // the listener's, nil without TLS
	metrics   *admin.Metrics // nil without the admin listener
	adminSrv  *http.Server
	adminAddr string
	nextID    atomic.Int64 // CLIENT ID / HELLO id of the next client
	// upNoAuth: Redis' default user needs a password the proxy does not
	// hold (learnt after a client's CONFIG SET or ACL change, noteAuth):
	// clients that connect from now on must log in to Redis themselves.
	upNoAuth atomic.Bool

	mu       sync.Mutex
	sessions map[int64]*session // by id
}

// counts are the server's gauges and counters.
type counts struct {
	clients  atomic.Int64 // connected clients, for max_clients
	pinned   atomic.Int64 // sessions holding a pinned connection
	pinnedTx atomic.Int64 // of those, in WATCH or MULTI
	blocked  atomic.Int64 // sessions inside a blocking command
	detached atomic.Int64 // sessions relaying pub/sub, MONITOR or tracking
	upErrors atomic.Int64 // commands answered "upstream unavailable"
	// clients closed for passing a limit
	outputLimit, queryLimit, idleClosed atomic.Int64
	// panics recovered serving a client (tests fail on any)
	panics atomic.Int64
}

// New builds a server for cfg. Without routes it does not contact the
// upstream Redis yet: a Redis that is down at start-up is reported per
// command, like one that goes down later. With routes, it sets up the
// clients' restricted user (clientuser.go, within upstream.timeout),
// connects to PostgreSQL and checks every route's table and columns; the
// error names the route, table and column.
func New(cfg config.Config, log *slog.Logger) (_ *Server, err error) {
	// The admin listener first, as main opens listen first: a busy port is
	// reported before PostgreSQL is contacted or anything is logged.
	var adminL net.Listener
	if cfg.Admin != "" {
		if adminL, err = net.Listen("tcp", cfg.Admin); err != nil {
			return nil, &AdminListenError{Err: err}
		}
		defer func() {
			if err != nil {
				adminL.Close()
			}
		}()
	}
	up, err := upstream.New(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, defaultDB: strconv.Itoa(cfg.Upstream.DB), log: log, up: up, sessions: map[int64]*session{}}
	s.order.unread = newUnread()
	live := cfg.Reloadable()
	s.live.Store(&live)
	for _, name := range cfg.AdminCommands {
		cmd, sub, _ := strings.Cut(strings.ToLower(name), "|")
		args := [][]byte{[]byte(cmd)}
		if sub != "" {
			args = append(args, []byte(sub))
		}
		id := router.Lookup(args)
		if id == router.CmdUnknown || id.Name() != strings.ToLower(name) {
			up.Close()
			return nil, fmt.Errorf("admin_commands: %q is not a command Redis %s knows (write it as Redis does, e.g. config|get)", name, "7.0")
		}
		s.adminAllowed = append(s.adminAllowed, id)
	}
	if s.tls, err = listenerTLS(cfg.TLS); err != nil {
		up.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	s.conflicts = newConflicts(cfg.Transactions.TrackedKeys)
	s.gate = &gate{s: s, t: s.conflicts}
	s.restrictClients(cfg)
	set, err := policy.Open(cfg, up.Cache(), up.RouteRedis(), log)
	if err != nil {
		up.Close()
		return nil, err
	}
	s.track(set)
	s.routes.Replace(set, 0)
	if adminL != nil {
		s.startAdmin(adminL)
	}
	s.rs = redcon.NewServerNetwork("tcp", cfg.Listen, s.handle, s.accept, s.closed)
	return s, nil
}

// Serve accepts clients on l until Close. Every accepted connection is
// wrapped by resp.NewConn, which enforces the configured limits before
// redcon parses a byte.
func (s *Server) Serve(l net.Listener) error {
	if s.cfg.Upstream.Multiplexer == "go-redis" {
		s.log.Warn("upstream.multiplexer: go-redis was removed; the builtin multiplexer carries the shared path (remove the setting)")
	}
	resp.StampListener(l) // commands are ordered by arrival (order.go)
	// HELLO tells the upstream's version (local.go); asked now, before a
	// password a client may set on Redis keeps the proxy from asking.
	go s.up.Version()
	addr := l.Addr().String()
	s.listenAddr.Store(&addr)
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
	for _, sess := range s.snapshot() {
		sess.end()
		sess.closeDetached()
	}
	if s.adminSrv != nil {
		s.adminSrv.Close()
	}
	s.routes.Load().Close()
	s.up.Close()
	s.order.unread.close()
	return err
}

// Shutdown stops gracefully: it stops accepting and closes clients (each
// finishes the command it is running), then flushes the write-back queues
// until they are empty or ctx ends. It returns how many write-back entries
// are left; they stay in their durable queues (Redis Streams) for the next
// start.
func (s *Server) Shutdown(ctx context.Context) (left int64, err error) {
	s.rs.Close()
	for _, sess := range s.snapshot() {
		sess.closeDetached() // detached clients are not redcon's any more
	}
	left, err = s.routes.Load().Drain(ctx)
	if s.adminSrv != nil {
		s.adminSrv.Close()
	}
	s.routes.Load().Close()
	s.up.Close()
	return left, err
}

// snapshot returns the connected sessions.
func (s *Server) snapshot() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, c := range s.sessions {
		out = append(out, c)
	}
	return out
}

// session returns the connected session with id, or nil.
func (s *Server) session(id int64) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[id]
}

// accept admits a client unless max_clients are connected, answering like
// Redis: "-ERR max number of clients reached".
func (s *Server) accept(conn redcon.Conn) bool {
	if s.counts.clients.Add(1) > int64(s.live.Load().Limits.MaxClients) {
		s.counts.clients.Add(-1)
		conn.NetConn().Write([]byte("-ERR max number of clients reached\r\n"))
		return false
	}
	sess := newSession(s, conn)
	conn.SetContext(sess)
	s.mu.Lock()
	s.sessions[sess.id] = sess
	s.mu.Unlock()
	s.order.unread.add(sess.id, sess.gc, sess.client.fd)
	return true
}

// closed runs when redcon drops a client. A detached client is closed by
// its own loop instead.
func (s *Server) closed(conn redcon.Conn, err error) {
	if err != nil && err.Error() == "detached" {
		return
	}
	sess, ok := conn.Context().(*session)
	switch {
	case !ok:
	case err == resp.ErrQueryTotal:
		s.counts.queryLimit.Add(1)
		s.log.Warn("client closed: the total of incomplete commands passed limits.max_query_bytes_total",
			"client", sess.id, "addr", sess.client.addr, "limit", s.live.Load().Limits.MaxQueryBytesTotal)
	case errors.Is(err, resp.ErrIdle):
		s.counts.idleClosed.Add(1)
		s.log.Debug("closing idle client (limits.client_timeout)", "client", sess.id, "addr", sess.client.addr, "last", sess.client.lastCmd)
	}
	if ok {
		s.drop(sess)
	}
}

func (s *Server) drop(sess *session) {
	sess.end()
	s.mu.Lock()
	_, ok := s.sessions[sess.id]
	delete(s.sessions, sess.id)
	s.mu.Unlock()
	s.order.unread.remove(sess.id)
	if ok {
		s.counts.clients.Add(-1)
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
			s.counts.panics.Add(1)
			s.log.Error("panic serving client; connection closed", "panic", r, "client", sess.id, "stack", string(debug.Stack()))
			sess.sendError("ERR internal error in proxy")
			sess.w.Close()
		}
	}()
	cmds := append(sess.batch[:0], cmd)
	cmds = append(cmds, conn.ReadPipeline()...)
	sess.serve(cmds)
	sess.flush()
	clear(cmds)
	sess.batch = cmds[:0]
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
	return resp.NewConn(c, resp.Limits{
		MaxBulk: lim.MaxBulkBytes, MaxArgs: lim.MaxArgs, MaxInline: lim.MaxInlineBytes,
		Total: &l.s.queryBytes, MaxTotal: lim.MaxQueryBytesTotal, Idle: time.Duration(lim.ClientTimeout),
		Arriving: &l.s.order.unread.arriving,
	}), nil
}

// track keeps set's in-process tiers coherent with Redis through a
// tracking connection of the upstream's (policy/tracking.go,
// upstream/tracking.go), for as long as the set runs.
func (s *Server) track(set *policy.Set) {
	set.Track(func(ctx context.Context, prefixes []string, h policy.Invalidations) {
		s.up.Track(ctx, prefixes, h)
	})
}
