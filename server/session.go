package server

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// writer is where a session's replies go: the redcon.Conn, or the
// redcon.DetachedConn once the client is detached.
type writer interface {
	WriteRaw(data []byte)
	Close() error
}

// replyMode is CLIENT REPLY's state.
type replyMode uint8

const (
	replyOn replyMode = iota
	replyOff
	replySkip
)

// session is one client's connection state. Only the goroutine serving the
// client touches it, except once it is detached: then the relay goroutine
// writes replies too, and both hold mu.
type session struct {
	s  *Server
	id int64 // CLIENT ID, HELLO's id

	// I/O.
	conn  redcon.Conn
	w     writer
	mu    sync.Mutex // held by whoever writes, once detached
	out   []byte     // scratch for locally encoded replies
	batch []redcon.Command
	cmds  []router.Command
	call  *upstream.Call
	// The call's hooks, made once (a method value allocates).
	onOverflow func()
	onStream   func([]byte)
	onQueued   func()
	window     int        // commands per round trip on the shared path (forwardShared)
	gc         *resp.Conn // the guarded client connection (nil in some tests)
	ticket     bool       // holds a ticket of the server's order
	// cluster: the batch and plans of forwardCluster (upstream.mode
	// cluster), made on first use.
	cluster *clusterRun

	// What the client told about itself, and CLIENT LIST's view of it.
	client clientInfo

	// Protocol state the proxy keeps.
	proto  int // RESP version chosen with HELLO: 2 or 3
	authed bool
	reply  replyMode
	db     int         // database selected with SELECT
	quit   atomic.Bool // the client's connection ends after this command (set by the relay's reader too)

	// pin is the session's own upstream connection and the state it holds;
	// nil on the shared path.
	pin *pinned

	// tx is the optimistic-transaction metadata of the session.
	tx txState

	// admin is RESPITE's per-connection state.
	admin struct {
		ok         bool // RESPITE AUTH given (admin_password)
		attributes bool // RESPITE ATTRIBUTES ON: retry metadata as a RESP3 attribute
	}

	blocked bool // inside a blocking command
	// authQueued: the MULTI queued a command that may change what Redis
	// asks of a new connection (noteAuth runs once the MULTI ends).
	authQueued bool

	// toDetach holds the commands left of the batch that detached the
	// session, for its own loop to run first.
	toDetach [][][]byte

	pubMu sync.Mutex
	pub   view

	// wantRelay: another client's CLIENT TRACKING REDIRECT names this one,
	// so Redis may push to it at any time: it is relayed from its next
	// command on, on its pinned connection, or on handoff, a connection
	// the other client took for it (guarded by pubMu).
	wantRelay atomic.Bool
	handoff   *upstream.Conn

	ended bool
}

// clientInfo is what the client told about itself and what CLIENT LIST
// shows of it; only the session's goroutine touches it.
type clientInfo struct {
	name, libName, libVer string
	user                  string // the upstream ACL user it authenticated as ("" for the proxy's own)
	upstreamAuthed        bool   // it logged in to Redis itself (AUTH, HELLO AUTH): Redis checks its rights
	addr, laddr           string
	fd                    int
	created, lastActive   time.Time
	lastCmd               router.ID
}

// view is a session's state as other sessions see it (CLIENT LIST, KILL,
// UNBLOCK, TRACKING REDIRECT): a copy the session publishes after each
// batch and whenever it blocks or pins.
type view struct {
	id                  int64
	name, user          string
	addr, laddr         string
	fd                  int
	created, lastActive time.Time
	lastCmd             router.ID
	db, proto           int
	multi               int // commands queued, -1 outside MULTI
	sub, psub, ssub     int
	tracking            bool
	redirect            int64 // CLIENT TRACKING REDIRECT, as a proxy client id
	blocked             bool
	upConn              *upstream.Conn // the pinned connection, nil without one
	relay               *relay         // its relay, whose counts view reads live
}

// publish copies the session's state into its view.
func (c *session) publish() {
	v := view{id: c.id, name: c.client.name, user: c.client.user, addr: c.client.addr, laddr: c.client.laddr,
		fd: c.client.fd, created: c.client.created, lastActive: c.client.lastActive, lastCmd: c.client.lastCmd,
		db: c.db, proto: c.proto, multi: -1, blocked: c.blocked}
	if v.user == "" {
		v.user = "default"
	}
	if p := c.pin; p != nil {
		v.upConn = p.conn
		if p.multi {
			v.multi = p.queued
		}
		v.tracking, v.redirect = p.tracking, p.redirect
		v.relay = p.relay
	}
	c.pubMu.Lock()
	c.pub = v
	c.pubMu.Unlock()
}

// view returns the state the session last published.
func (c *session) view() view {
	c.pubMu.Lock()
	v := c.pub
	c.pubMu.Unlock()
	if v.relay != nil {
		// The relay counts a (un)subscription when Redis confirms it,
		// which may be after the session last published.
		v.sub, v.psub, v.ssub = v.relay.counts()
	}
	return v
}

func newSession(s *Server, conn redcon.Conn) *session {
	c := &session{
		s:      s,
		conn:   conn,
		w:      newOutput(conn),
		id:     s.nextID.Add(1),
		proto:  2,
		authed: s.cfg.RequirePass == "" && !s.upNoAuth.Load(),
		db:     s.cfg.Upstream.DB,
	}
	now := time.Now()
	c.onOverflow, c.onStream, c.onQueued = c.kill, c.stream, c.sent
	c.gc, _ = conn.NetConn().(*resp.Conn)
	c.client.created, c.client.lastActive = now, now
	if nc := conn.NetConn(); nc != nil {
		c.client.addr, c.client.laddr = nc.RemoteAddr().String(), nc.LocalAddr().String()
		c.client.fd = socketFD(nc)
	}
	c.publish()
	return c
}

// flush writes the replies the session gathered (see output); a detached
// session's relay writes its own.
func (c *session) flush() {
	if o, ok := c.w.(*output); ok {
		o.flush()
	}
}

// state is what Dispatch needs to know about the session.
func (c *session) state() router.State {
	st := router.State{
		ProxyAuth: c.s.cfg.RequirePass != "",
		Authed:    c.authed,
		// Without requirepass, as Redis decides it (authRequired): the
		// client connected while Redis' default user needed a password
		// (the proxy does not hold) and has not logged in since, and the
		// default user still needs one.
		UpstreamNoAuth: c.s.cfg.RequirePass == "" && !c.authed && c.s.upNoAuth.Load(),
		Proto:          c.proto,
		OtherDB:        c.db != c.s.cfg.Upstream.DB,
		DefaultDB:      c.s.defaultDB,
		ReplyOff:       c.reply != replyOn,
		// A client never uses credentials the proxy holds for more than
		// data: administration needs rights of its own.
		AdminDenied:    c.s.up.HasCredentials() && !c.admin.ok && !c.client.upstreamAuthed,
		AdminAllowed:   c.s.adminAllowed,
		ClusterAnswers: c.s.cfg.ClusterAnswers.Enabled,
		Restricted:     c.client.user == "" && c.s.up.Restricted(),
	}
	if p := c.pin; p != nil {
		st.Pinned, st.Multi, st.Watching = true, p.multi, p.watch
		st.Subscribed = p.relay != nil && p.relay.subscribed()
	}
	return st
}

// send writes one complete reply, honouring CLIENT REPLY OFF/SKIP.
func (c *session) send(b []byte) {
	switch c.reply {
	case replyOff:
		return
	case replySkip:
		c.reply = replyOn
		return
	}
	c.w.WriteRaw(b)
}

func (c *session) sendError(msg string)  { c.send(resp.AppendError(c.out[:0], msg)) }
func (c *session) sendStatus(msg string) { c.send(resp.AppendStatus(c.out[:0], msg)) }
func (c *session) sendInt(n int64)       { c.send(resp.AppendInt(c.out[:0], n)) }
func (c *session) sendReply(r resp.Reply) {
	c.out = r.AppendTo(c.out[:0], c.proto)
	c.send(c.out)
}

// upstreamError is the reply for a command the upstream did not answer.
func upstreamError(err error) string {
	if err == nil {
		return "ERR upstream returned an empty reply"
	}
	return "ERR upstream unavailable: " + err.Error()
}

// end releases everything the session holds upstream. It is idempotent.
func (c *session) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	if c.tx.idle.timer != nil {
		c.tx.idle.timer.Stop()
	}
	c.discardPin() // closed, not reset: a client that left leaves no trace upstream
}

// adoptRelay, at the start of a batch, gives a session that another
// client's REDIRECT names its pinned connection (the one handed to it, if
// it had none) and reports whether it must now be relayed.
func (c *session) adoptRelay() bool {
	if !c.wantRelay.Load() {
		return false
	}
	c.wantRelay.Store(false)
	c.pubMu.Lock()
	h := c.handoff
	c.handoff = nil
	c.pubMu.Unlock()
	if c.pin == nil && h != nil {
		c.pin = &pinned{conn: h, sticky: true}
		c.s.counts.pinned.Add(1)
	} else if h != nil {
		h.Close()
	}
	if c.pin == nil {
		return false
	}
	c.pin.sticky = true
	return c.pin.relay == nil
}

// handOff gives the session a pinned connection taken for it by another
// session (a REDIRECT target); it is adopted at the session's next batch.
func (c *session) handOff(conn *upstream.Conn) {
	c.pubMu.Lock()
	old := c.handoff
	c.handoff = conn
	if c.pub.upConn == nil {
		c.pub.upConn = conn
	}
	c.pubMu.Unlock()
	if old != nil {
		old.Close()
	}
	c.wantRelay.Store(true)
}

// closeDetached closes the connection of a detached client (redcon closes
// the others).
func (c *session) closeDetached() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if dc, ok := c.w.(redcon.DetachedConn); ok {
		dc.Close()
	}
}

func formatInt(n int64) string { return strconv.FormatInt(n, 10) }
