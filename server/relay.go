package server

import (
	"bytes"
	"errors"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/tidwall/redcon"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// Detached sessions. Once a client subscribes (SUBSCRIBE, PSUBSCRIBE,
// SSUBSCRIBE), runs MONITOR or turns CLIENT TRACKING on, Redis may send
// on its pinned connection at any time, not only in answer to a command.
// The client then leaves redcon's loop (redcon.Conn is not safe for
// writes from another goroutine): a loop of its own reads its commands,
// and a relay goroutine writes everything Redis sends on the pinned
// connection to the client as it arrives, in Redis' order. Confirmations
// are Redis' own, and a message published right after a SUBSCRIBE was
// confirmed cannot be missed, since the confirmation itself came from
// Redis. If Redis closes the pinned connection, the client's connection is
// closed, as it would be by Redis; nothing is re-subscribed behind its
// back.
//
// To keep replies in order, the relay knows what it expects: one frame per
// command, one per channel of a (P|S)SUBSCRIBE or (P|S)UNSUBSCRIBE with
// arguments, and for an UNSUBSCRIBE without arguments one per channel it
// was subscribed to (at least one). Pushes (messages, invalidations,
// MONITOR lines) are relayed between replies. A command the proxy answers
// itself waits until every reply Redis owes is written.

// relay relays a detached session's pinned connection.
type relay struct {
	c    *session
	conn *upstream.Conn
	dc   redcon.DetachedConn
	cond sync.Cond // on c.mu: pending emptied, a capture arrived, or the connection failed

	// Guarded by c.mu.
	pending  []expect
	captured []byte
	caught   bool
	// holding: the session has a captured reply to answer; nothing more
	// is written until it has (release), so what Redis sent after it
	// reaches the client after the session's answer.
	holding  bool
	err      error
	stopped  bool
	monitor  bool
	channels map[string]struct{}
	patterns map[string]struct{}
	shards   map[string]struct{}

	sub, psub, ssub atomic.Int32 // for CLIENT LIST, read without c.mu

	// moved: shard channels a cluster node unsubscribed because their
	// slot moved, to be subscribed again on the slot's new primary
	// (followShard).
	moved []string
}

// expect is what the relay expects next from Redis.
type expect struct {
	cmd     router.Command // ID, Kind and Args: follow needs them for stateful commands
	n       int            // frames still expected; 0: not known yet (UNSUBSCRIBE without arguments)
	set     byte           // UNSUBSCRIBE without arguments: 'c' channels, 'p' patterns, 's' shards
	confirm bool           // the frames are (un)subscribe confirmations
	send    bool           // write them to the client (CLIENT REPLY OFF and SKIP say no)
	capture bool           // the proxy's own command: hand the frame to the session
}

var errRelayStopped = errors.New("relay stopped")

// detach moves the session to its own loop with a relay on its pinned
// connection, where cmds (the rest of the batch, the first being the
// command that needs it) run. It returns false, with the errors sent, if
// no pinned connection could be had, and false too for a session that is
// detached already (its relay starts now, and the batch goes on). The
// goroutines start when the current batch is done (startDetached), so
// that nothing else touches the session meanwhile.
func (c *session) detach(cmds []router.Command) bool {
	slot := upstream.AnySlot // the rest of a batch that ended with EXEC may be empty
	if len(cmds) > 0 {
		slot = c.clusterSlot(&cmds[0])
	}
	if !c.pinUpAt(1, slot) {
		return false
	}
	if dc, ok := c.w.(redcon.DetachedConn); ok {
		r := newRelay(c, dc)
		c.pin.relay = r
		go r.read()
		return false
	}
	pending := make([][][]byte, len(cmds))
	for i := range cmds {
		pending[i] = cloneArgs(cmds[i].Args)
	}
	c.flush() // what the session answered goes before what the relay sends
	if gc, ok := c.conn.NetConn().(*resp.Conn); ok {
		gc.SetIdleExempt(true) // Redis' timeout spares subscribers and monitors
	}
	dc := c.conn.Detach()
	c.w = dc
	c.pin.relay = newRelay(c, dc)
	c.toDetach = pending
	return true
}

func newRelay(c *session, dc redcon.DetachedConn) *relay {
	r := &relay{c: c, conn: c.pin.conn, dc: dc, channels: map[string]struct{}{},
		patterns: map[string]struct{}{}, shards: map[string]struct{}{}}
	r.cond.L = &c.mu
	return r
}

// startDetached starts the relay and the detached loop of a session that
// detach moved out of redcon's loop during the batch just served.
func (c *session) startDetached() {
	pending := c.toDetach
	c.toDetach = nil
	c.s.counts.detached.Add(1)
	go c.pin.relay.read()
	go c.detachedLoop(c.w.(redcon.DetachedConn), pending)
}

// detachedLoop serves a detached client: first the commands left of the
// batch that detached it, then whatever it sends, until it leaves.
func (c *session) detachedLoop(dc redcon.DetachedConn, pending [][][]byte) {
	defer func() {
		c.mu.Lock()
		c.sent() // the ticket serve handed over, if no command took it back
		dc.Close()
		c.mu.Unlock()
		c.s.drop(c)
		c.s.counts.detached.Add(-1)
	}()
	for _, args := range pending {
		if c.quit.Load() || !c.serveOne(dc, args) {
			return
		}
	}
	c.mu.Lock()
	c.sent()
	c.mu.Unlock()
	for !c.quit.Load() {
		cmd, err := dc.ReadCommand()
		if err != nil {
			return
		}
		if !c.serveOne(dc, cmd.Args) {
			return
		}
	}
}

// serveOne runs one command of a detached client.
func (c *session) serveOne(dc redcon.DetachedConn, args [][]byte) (ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			c.s.counts.panics.Add(1)
			c.s.log.Error("panic serving client; connection closed", "panic", r, "client", c.id, "stack", string(debug.Stack()))
			ok = false
		}
	}()
	if c.ended {
		return false
	}
	c.serve([]redcon.Command{{Args: args}})
	return dc.Flush() == nil
}

func cloneArgs(args [][]byte) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = append([]byte(nil), a...)
	}
	return out
}

// send writes a run of the client's commands (encoded in req) to Redis,
// expecting their replies. The caller holds c.mu; it is released while
// writing, so the relay goes on delivering.
func (r *relay) send(cmds []router.Command, req []byte) {
	c := r.c
	stateful := false
	for i := range cmds {
		e := expect{cmd: cmds[i], n: 1, send: true}
		switch c.reply {
		case replyOff:
			e.send = false
		case replySkip:
			e.send, c.reply = false, replyOn
		}
		cmd := &cmds[i]
		if cmd.ArityOK() {
			switch cmd.Kind {
			case router.KindSubscribe:
				e.n, e.confirm = len(cmd.Args)-1, true
			case router.KindUnsubscribe:
				e.confirm = true
				if e.n = len(cmd.Args) - 1; e.n == 0 {
					e.set = map[router.ID]byte{router.CmdUnsubscribe: 'c', router.CmdPunsubscribe: 'p', router.CmdSunsubscribe: 's'}[cmd.ID]
				}
			}
		}
		switch cmd.Kind {
		case router.KindPlain, router.KindBlocking, router.KindSubscribe, router.KindUnsubscribe:
			e.cmd.Args = nil // follow needs nothing of it; redcon reuses the buffer
		default:
			stateful = true
		}
		r.pending = append(r.pending, e)
	}
	if err := r.write(req); err != nil {
		return
	}
	if stateful {
		// MULTI, WATCH, SELECT, ...: the next command's path depends on
		// the reply.
		r.waitIdle()
	}
}

// write sends req with c.mu released.
func (r *relay) write(req []byte) error {
	conn := r.conn // followShard may replace it once c.mu is released
	r.c.mu.Unlock()
	err := conn.Write(req)
	r.c.mu.Lock()
	if err != nil && r.err == nil {
		r.err = err
	}
	return err
}

// roundTrip sends one command of the proxy's own and returns the reply
// Redis sends for it, after every reply owed before it. The caller holds
// c.mu.
func (r *relay) roundTrip(req []byte) ([]byte, error) {
	r.release() // the session is done with an earlier capture
	r.waitIdle()
	if r.err != nil {
		return nil, r.err
	}
	r.pending = append(r.pending, expect{n: 1, capture: true})
	if err := r.write(req); err != nil {
		return nil, err
	}
	for !r.caught && r.err == nil {
		r.cond.Wait()
	}
	if !r.caught {
		return nil, r.err
	}
	b := r.captured
	r.captured, r.caught = nil, false
	return b, nil
}

// release lets the relay write again after the session answered a
// captured reply. The caller holds c.mu.
func (r *relay) release() {
	if r.holding {
		r.holding = false
		r.cond.Broadcast()
	}
}

// waitIdle waits until every reply Redis owes the client is written (or
// the connection failed). The caller holds c.mu.
func (r *relay) waitIdle() {
	for len(r.pending) > 0 && r.err == nil {
		r.cond.Wait()
	}
}

// subscribed reports whether the connection is subscribed to anything.
func (r *relay) subscribed() bool {
	return r.sub.Load()+r.psub.Load()+r.ssub.Load() > 0
}

// counts returns the subscriptions: channels, patterns, shard channels.
func (r *relay) counts() (sub, psub, ssub int) {
	return int(r.sub.Load()), int(r.psub.Load()), int(r.ssub.Load())
}

// stop ends the relay; the caller holds c.mu and closes the connection,
// which ends the goroutine's read.
func (r *relay) stop() {
	r.stopped = true
	r.conn.Close()
	r.cond.Broadcast()
}

// read relays everything Redis sends until the connection ends.
func (r *relay) read() {
	c := r.c
	var buf []byte
	for {
		// r.conn changes only on this goroutine (followShard, holding
		// c.mu): reading it here needs no lock.
		frame, err := r.conn.ReadReply(buf[:0])
		c.mu.Lock()
		for r.holding && err == nil && !r.stopped {
			r.cond.Wait()
		}
		if err != nil {
			if r.err == nil {
				r.err = err
			}
			r.cond.Broadcast()
			if !r.stopped {
				// Redis closed the connection (CLIENT KILL, restart): the
				// client's connection ends too, as it would on Redis.
				c.quit.Store(true)
				r.dc.Close()
			}
			c.mu.Unlock()
			return
		}
		buf = frame
		r.deliver(frame)
		c.mu.Unlock()
	}
}

// deliver accounts one frame to what is expected and writes it. The
// caller holds c.mu.
func (r *relay) deliver(frame []byte) {
	c := r.c
	kind, named := frameKind(frame, r.monitor)
	if kind == frameConfirm {
		r.track(frame)
	}
	if kind == frameConfirm && (len(r.pending) == 0 || !r.pending[0].confirm) && r.followShard(frame) {
		return // a cluster moved the shard channel's slot: followed, not the client's business
	}
	if len(r.pending) == 0 || kind == framePush || kind == frameConfirm && !r.pending[0].confirm {
		r.dc.WriteRaw(frame) // out of band: pushes bypass CLIENT REPLY OFF, as in Redis
		r.dc.Flush()
		return
	}
	e := &r.pending[0]
	if e.capture {
		r.captured, r.caught, r.holding = append([]byte(nil), frame...), true, true
		r.pop()
		return
	}
	if e.n == 0 { // UNSUBSCRIBE without arguments: one per subscription it had
		e.n = max(r.lenBefore(e.set, named), 1)
	}
	reply := frame
	if c.pin != nil && c.pin.relay == r && !e.confirm {
		reply = c.rewriteReply(&e.cmd, frame)
		c.follow(&e.cmd, reply)
		if e.cmd.ID == router.CmdMonitor && string(reply) == "+OK\r\n" {
			r.monitor = true
		}
	}
	if e.send || e.confirm { // confirmations bypass CLIENT REPLY OFF, as in Redis 7
		r.dc.WriteRaw(reply)
		r.dc.Flush()
	}
	if e.n--; e.n <= 0 {
		r.pop()
	}
}

func (r *relay) pop() {
	copy(r.pending, r.pending[1:])
	r.pending[len(r.pending)-1] = expect{}
	r.pending = r.pending[:len(r.pending)-1]
	r.cond.Broadcast()
}

// lenBefore is the number of subscriptions in set before the confirmation
// just tracked removed one (named: it named a channel; an UNSUBSCRIBE of
// nothing confirms a null).
func (r *relay) lenBefore(set byte, named bool) int {
	n := 0
	switch set {
	case 'c':
		n = len(r.channels)
	case 'p':
		n = len(r.patterns)
	case 's':
		n = len(r.shards)
	}
	if named {
		n++ // track already removed the one this frame confirms
	}
	return n
}

// Frame kinds the relay tells apart.
const (
	frameReply   = iota
	framePush    // a message, an invalidation, a MONITOR line
	frameConfirm // a (P|S)(UN)SUBSCRIBE confirmation
)

var confirmKinds = map[string]bool{"subscribe": true, "psubscribe": true, "ssubscribe": true,
	"unsubscribe": true, "punsubscribe": true, "sunsubscribe": true}

// frameKind classifies a frame Redis sent; for a confirmation, named
// reports whether it names a channel (an UNSUBSCRIBE of nothing confirms a
// null).
func frameKind(frame []byte, monitor bool) (kind int, named bool) {
	switch frame[0] {
	case '>', '*':
	case '+':
		if monitor && isMonitorLine(frame) {
			return framePush, false
		}
		return frameReply, false
	default:
		return frameReply, false
	}
	name, rest, ok := firstBulk(frame)
	if !ok {
		if frame[0] == '>' {
			return framePush, false
		}
		return frameReply, false
	}
	switch {
	case confirmKinds[name]:
		_, _, named = firstBulk2(rest)
		return frameConfirm, named
	case frame[0] == '>', name == "message" || name == "pmessage" || name == "smessage":
		return framePush, false
	}
	return frameReply, false
}

// isMonitorLine reports whether a status reply is a MONITOR line
// ("+1700000000.123456 [0 127.0.0.1:6379] ...").
func isMonitorLine(frame []byte) bool {
	i := bytes.IndexByte(frame, ' ')
	if i < 3 {
		return false
	}
	for _, ch := range frame[1:i] {
		if (ch < '0' || ch > '9') && ch != '.' {
			return false
		}
	}
	return i+1 < len(frame) && frame[i+1] == '['
}

// firstBulk parses the header of an aggregate frame and its first element,
// a bulk string; it returns that string and the bytes after it.
func firstBulk(frame []byte) (string, []byte, bool) {
	i := bytes.Index(frame, []byte("\r\n"))
	if i < 0 {
		return "", nil, false
	}
	return firstBulk2(frame[i+2:])
}

// firstBulk2 parses one bulk string at the start of b.
func firstBulk2(b []byte) (string, []byte, bool) {
	if len(b) < 4 || b[0] != '$' {
		return "", b, false
	}
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 {
		return "", b, false
	}
	n := 0
	for _, ch := range b[1:i] {
		if ch < '0' || ch > '9' {
			return "", b, false
		}
		n = n*10 + int(ch-'0')
	}
	start := i + 2
	if start+n+2 > len(b) {
		return "", b, false
	}
	return string(b[start : start+n]), b[start+n+2:], true
}

// track follows the subscription sets from a confirmation.
// confirmsIn returns the subscription confirmations among the elements
// of EXEC's reply.
func confirmsIn(execReply []byte) [][]byte {
	elems, ok := resp.Elements(execReply)
	if !ok {
		return nil
	}
	var out [][]byte
	for _, e := range elems {
		if len(e) > 0 {
			if kind, _ := frameKind(e, false); kind == frameConfirm {
				out = append(out, append([]byte(nil), e...))
			}
		}
	}
	return out
}

func (r *relay) track(frame []byte) {
	kind, rest, _ := firstBulk(frame)
	channel, _, _ := firstBulk2(rest)
	var set map[string]struct{}
	var count *atomic.Int32
	switch kind {
	case "subscribe", "unsubscribe":
		set, count = r.channels, &r.sub
	case "psubscribe", "punsubscribe":
		set, count = r.patterns, &r.psub
	default:
		set, count = r.shards, &r.ssub
	}
	switch kind {
	case "subscribe", "psubscribe", "ssubscribe":
		set[channel] = struct{}{}
	default:
		delete(set, channel)
	}
	count.Store(int32(len(set)))
}
