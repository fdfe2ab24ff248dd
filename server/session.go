package server

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tidwall/redcon"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// writer is where a session's replies go: the redcon.Conn, or the
// redcon.DetachedConn once the client is detached for pub/sub or MONITOR.
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
// client touches it, except a detached session, whose fields are guarded
// by mu.
type session struct {
	s    *Server
	conn redcon.Conn
	w    writer
	id   int64

	proto   int // RESP version chosen with HELLO: 2 or 3
	authed  bool
	name    string
	libName string
	libVer  string
	reply   replyMode
	db      int // database selected with SELECT
	quit    bool

	pin *pin    // pinned upstream connection, nil on the shared path
	sub *pubsub // pub/sub or MONITOR state once detached

	batch    []redcon.Command
	futs     []redis.AutoFuture
	call     *call
	keys     []int  // key positions of the command being routed
	routedAt []int  // the same, kept while the command runs
	out      []byte // scratch for locally encoded replies

	keyset     string     // watched keys of the last optimistic transaction
	attempt    int        // consecutive WATCH aborts on keyset
	lastAbort  *abortInfo // retry metadata of the last abort (RESPITE LASTABORT)
	gated      []string   // keys whose contention gate this session holds
	idle       idleState  // transactions.idle_timeout
	inTx       bool       // counted in Server.pinnedTx
	adminOK    bool       // RESPITE AUTH given (admin_password)
	attributes bool       // RESPITE ATTRIBUTES ON: retry metadata as a RESP3 attribute

	mu    sync.Mutex // held while a detached session runs or writes
	ended bool
}

func newSession(s *Server, conn redcon.Conn) *session {
	return &session{
		s:      s,
		conn:   conn,
		w:      conn,
		id:     s.nextID.Add(1),
		proto:  2,
		authed: s.cfg.RequirePass == "",
		db:     s.cfg.Upstream.DB,
	}
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

// run carries a batch of commands in order. Runs of commands that need no
// special handling go upstream as one pipeline: on the shared multiplexed
// connections, or on the pinned connection when the session has one.
func (c *session) run(cmds []redcon.Command) {
	for i := 0; i < len(cmds); {
		if c.quit {
			return
		}
		if c.pin == nil {
			j := i
			for j < len(cmds) && c.shareable(cmds[j].Args) {
				j++
			}
			if j > i {
				c.forwardShared(cmds[i:j])
				i = j
				continue
			}
		} else {
			j, multi := i, c.pin.multi
			for j < len(cmds) && c.pinnable(cmds[j].Args, multi) {
				multi = predictMulti(cmds[j].Args, multi)
				j++
			}
			if j > i {
				c.forwardPinned(cmds[i:j])
				i = j
				continue
			}
		}
		if c.needsDetach(cmds[i].Args) {
			// Pub/sub and MONITOR write from another goroutine: the
			// client leaves redcon's loop and its own loop takes the rest.
			c.s.serveDetached(c, cmds[i:])
			return
		}
		c.special(cmds[i].Args)
		i++
	}
}

// needsDetach reports whether args must run on a detached client.
func (c *session) needsDetach(args [][]byte) bool {
	if c.sub != nil || !c.authed || len(args) == 0 {
		return false
	}
	class := router.Lookup(args[0])
	return class == router.PubSub || class == router.Monitor
}

// shareable reports whether args can ride the shared connections.
func (c *session) shareable(args [][]byte) bool {
	if !c.authed || len(args) == 0 || (c.sub != nil && c.sub.restricted(c.proto)) || c.routedKeys(args) {
		return false
	}
	switch router.Lookup(args[0]) {
	case router.Forward:
		return true
	case router.Transaction:
		// EXEC, DISCARD, UNWATCH outside a session just produce Redis'
		// own replies ("EXEC without MULTI", +OK) and leave no state.
		return !router.Is(args[0], "watch") && !router.Is(args[0], "multi")
	case router.Blocking:
		return !router.IsBlocking(args)
	case router.Client:
		return len(args) > 1 && router.LookupClient(args[1]) == router.ClientForward
	case router.Select:
		return len(args) == 2 && string(args[1]) == strconv.Itoa(c.s.cfg.Upstream.DB)
	}
	return false
}

// pinnable reports whether args go to the pinned connection as they are.
// Inside MULTI everything is queued by Redis itself, except what the proxy
// must see: QUIT and RESET.
func (c *session) pinnable(args [][]byte, multi bool) bool {
	if !c.authed || len(args) == 0 || (c.sub != nil && c.sub.restricted(c.proto)) || c.routedKeys(args) {
		return false
	}
	class := router.Lookup(args[0])
	if multi {
		return !router.Is(args[0], "quit") && !router.Is(args[0], "reset") && !router.Is(args[0], "exec")
	}
	switch class {
	case router.Transaction:
		return !router.Is(args[0], "watch") && !router.Is(args[0], "exec")
	case router.Forward, router.Select:
		return true
	case router.Blocking:
		return !router.IsBlocking(args)
	case router.Client:
		return len(args) > 1 && router.LookupClient(args[1]) != router.ClientLocal
	}
	return false
}

func predictMulti(args [][]byte, multi bool) bool {
	switch {
	case router.Is(args[0], "multi"):
		return true
	case router.Is(args[0], "exec"), router.Is(args[0], "discard"):
		return false
	}
	return multi
}

// forwardShared sends cmds on the shared upstream as one pipeline and
// writes the replies back in order.
func (c *session) forwardShared(cmds []redcon.Command) {
	if c.s.metrics != nil {
		defer c.observe(admin.ClassPassthrough, time.Now())
	}
	c.s.conflicts.noteWrites(cmds, &c.keys)
	if c.s.up.autopipeline {
		c.forwardAutoPipeline(cmds)
		return
	}
	if c.call == nil {
		c.call = newCall()
	}
	cl := c.call
	m := c.s.up.mux[index(c.proto)]
	m.conns[int(c.id)%len(m.conns)].do(cl, cmds)
	if c.reply == replyOn {
		c.w.WriteRaw(cl.out) // the common case: all replies in one write
	} else {
		start := 0
		for _, end := range cl.ends {
			c.send(cl.out[start:end])
			start = end
		}
	}
	for i := cl.got; i < len(cmds); i++ {
		c.s.upErrors.Add(1)
		c.sendError(upstreamError(cl.err))
	}
	if cap(cl.out) > 1<<20 {
		cl.out = nil // do not keep a large reply's buffer for the session's life
	}
}

// forwardAutoPipeline is forwardShared through go-redis' AutoPipeliner
// (upstream.multiplexer: go-redis), kept to compare the two.
func (c *session) forwardAutoPipeline(cmds []redcon.Command) {
	ap := c.s.up.ap[index(c.proto)]
	ctx := context.Background()
	futs := c.futs[:0]
	for _, cmd := range cmds {
		futs = append(futs, ap.Submit(ctx, redis.NewRawCmd(ctx, toArgs(cmd.Args)...)))
	}
	for i, f := range futs {
		f.Wait()
		c.sendRaw(f.Cmd().(*redis.RawCmd))
		futs[i] = redis.AutoFuture{}
	}
	c.futs = futs[:0]
}

// sendRaw writes an upstream reply, or a Redis-style error when the
// upstream could not be reached.
func (c *session) sendRaw(cmd *redis.RawCmd) {
	raw, err := cmd.Result()
	if err != nil || len(raw) == 0 {
		c.s.upErrors.Add(1)
		c.sendError(upstreamError(err))
		return
	}
	c.send(raw)
}

// upstreamError is the reply for a command the upstream did not answer.
func upstreamError(err error) string {
	if err == nil {
		return "ERR upstream returned an empty reply"
	}
	return "ERR upstream unavailable: " + err.Error()
}

// toArgs converts arguments for go-redis without copying them: go-redis
// writes []byte arguments as they are.
func toArgs(args [][]byte) []interface{} {
	out := make([]interface{}, len(args))
	for i, a := range args {
		out[i] = a
	}
	return out
}

// special handles one command that needs more than forwarding.
func (c *session) special(args [][]byte) {
	if len(args) == 0 {
		return
	}
	name := args[0]
	class := router.Lookup(name)
	if !c.authed && class != router.Local {
		c.sendError("NOAUTH Authentication required.")
		return
	}
	if c.sub != nil && c.sub.restricted(c.proto) && !allowedSubscribed(name) {
		c.sendError("ERR Can't execute '" + router.Name(name) + "': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
		return
	}
	if c.routedKeys(args) {
		c.routed(args)
		return
	}
	if c.s.metrics != nil {
		defer c.observe(admin.ClassLocal, time.Now())
	}
	switch class {
	case router.Local:
		c.local(args)
	case router.Transaction, router.Select:
		switch {
		case router.Is(name, "watch"):
			c.watch(args)
		case router.Is(name, "exec") && c.pin != nil:
			c.exec(args)
		case router.Is(name, "exec"):
			c.forwardShared([]redcon.Command{{Args: args}})
		default:
			// MULTI, or SELECT of another database: pin, then forward.
			c.pinUp()
			c.forwardPinned([]redcon.Command{{Args: args}})
		}
	case router.Client:
		if len(args) > 1 && router.LookupClient(args[1]) == router.ClientLocal {
			c.clientLocal(args)
		} else {
			c.pinUp()
			c.forwardPinned([]redcon.Command{{Args: args}})
		}
	case router.Blocking:
		c.blocking(args)
	case router.PubSub:
		c.subscribe(args)
	case router.Monitor:
		c.monitor()
	case router.Refused:
		c.sendError("ERR command '" + router.Name(name) + "' is not supported by the proxy")
	default:
		if router.Is(name, "ping") && c.sub != nil {
			c.subscribe(args)
			return
		}
		c.forwardShared([]redcon.Command{{Args: args}})
	}
}

// end releases everything the session holds upstream. It is idempotent.
func (c *session) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	if c.idle.timer != nil {
		c.idle.timer.Stop()
	}
	c.releasePin()
	if c.sub != nil {
		c.sub.close()
	}
}
