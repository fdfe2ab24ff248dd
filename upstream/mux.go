package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Mux carries the shared path the way twemproxy does: many clients'
// commands travel on a few upstream connections, each one a single
// pipelined stream. A client's run of commands is written as one block
// (writes that arrive while another client's write is in flight are
// combined into the next one), and replies, the exact bytes Redis sent,
// are handed to the calls waiting for them in the order their requests
// were written, so per-client order is kept: a client waits for its
// replies before sending more.
//
// There is no reader goroutine: the first waiting call reads (the
// leader), handing each reply to the call it belongs to, until its own
// are in; then it passes the reading on to the oldest call still waiting.
// A lone client thus reads its own reply, with no goroutine in between.
//
// Only commands that leave no state on the connection may use it (the
// router decides): everything else runs on a pinned Conn.
type Mux struct {
	conns []*muxConn
}

func newMux(cfg config.Upstream, proto, n int, tc *tls.Config) *Mux {
	m := &Mux{conns: make([]*muxConn, n)}
	for i := range m.conns {
		m.conns[i] = &muxConn{cfg: cfg, proto: proto, tls: tc}
	}
	return m
}

// Call is one client's run of commands in flight: Req holds them encoded
// (resp.AppendCommand), Want how many there are. A session reuses its
// Call, so the steady state allocates nothing.
type Call struct {
	Req  []byte // the commands, encoded
	Want int    // replies expected
	Got  int    // replies received
	Out  []byte // the replies' raw bytes, concatenated
	Ends []int  // where each reply in Out ends
	Err  error  // set when the connection failed before all replies came
	Size int    // bytes of all replies received (Out plus what Stream took)
	// Limit, when > 0, bounds the reply bytes the call holds that its
	// owner has not taken: past it the rest of its replies are read and
	// dropped, Err is ErrOutputLimit and Overflow runs (once, on whichever
	// goroutine is reading: it must not block). Redis'
	// client-output-buffer-limit is the model.
	Limit    int
	Overflow func()
	// Stream, when set, takes the replies' bytes as they arrive, in
	// chunks of at least StreamChunk bytes, on the owner's goroutine while
	// it waits; Out then holds only the rest, and Ends and Reply are not
	// valid. Stream may block (writing to a slow client): the replies that
	// arrive meanwhile count against Limit, the other calls on the
	// connection are not held up.
	Stream func([]byte)
	// Queued, when set, runs once the commands are queued on the
	// connection (later calls' commands go after them), with the
	// connection's lock held: it must be quick and must not call the Mux.
	Queued func()
	// done receives when the call is finished, or when it is its turn to
	// read, or when a chunk is ready for Stream (finished, ready tell which;
	// all guarded by the connection's mu).
	done      chan struct{}
	finished  bool
	ready     []byte // a chunk for Stream, taken by the owner
	spare     []byte // the buffer Stream gave back
	streaming bool   // the owner is in Stream
	over      bool   // Limit passed
}

// StreamChunk is the smallest chunk a call's Stream is handed.
const StreamChunk = 256 << 10

// ErrOutputLimit is a call's Err when its replies passed its Limit.
var ErrOutputLimit = errors.New("client output buffer limit reached")

// wake tells a waiting call that its state changed (finished, or its turn
// to read); a wake already pending is enough, as the call looks again.
func (cl *Call) wake() {
	select {
	case cl.done <- struct{}{}:
	default:
	}
}

// NewCall returns an empty call.
func NewCall() *Call { return &Call{done: make(chan struct{}, 1)} }

// Reset empties cl for the next run of commands, keeping its buffers
// unless they grew large.
func (cl *Call) Reset() {
	cl.Req, cl.Want, cl.Got, cl.Out, cl.Ends, cl.Err = cl.Req[:0], 0, 0, cl.Out[:0], cl.Ends[:0], nil
	cl.Limit, cl.Overflow, cl.Stream, cl.Queued, cl.ready, cl.spare, cl.over = 0, nil, nil, nil, nil, nil, false
	if cap(cl.Out) > 1<<20 {
		cl.Out = nil // do not keep a large reply's buffer for the caller's life
	}
	if cap(cl.Req) > 1<<20 {
		cl.Req = nil
	}
}

// Add encodes one command onto cl.
func (cl *Call) Add(args [][]byte) {
	cl.Req = resp.AppendCommand(cl.Req, args)
	cl.Want++
}

// Reply returns reply i.
func (cl *Call) Reply(i int) []byte {
	start := 0
	if i > 0 {
		start = cl.Ends[i-1]
	}
	return cl.Out[start:cl.Ends[i]:cl.Ends[i]]
}

// Do sends cl's commands on the connection picked by key and waits for all
// their replies. On return either cl.Got == cl.Want, or cl.Err says why the
// rest never came.
func (m *Mux) Do(cl *Call, key uint32) {
	m.conns[key%uint32(len(m.conns))].do(cl)
}

// begin and finish are Do in two halves, for a caller with calls on
// several multiplexers (Cluster.Do): every call is written first, then
// each is waited for. Callers must finish their calls in one global order
// of connections (node.seq), so that a call handed the reading turn is
// never one whose caller waits for another connection's turn held by a
// caller waiting for this one.
func (m *Mux) begin(cl *Call, key uint32) (*muxConn, bool) {
	c := m.conns[key%uint32(len(m.conns))]
	return c, c.begin(cl)
}

// Conns is the number of multiplexed connections.
func (m *Mux) Conns() int { return len(m.conns) }

// muxConn is one multiplexed upstream connection, dialled on first use and
// again after a failure.
type muxConn struct {
	cfg   config.Upstream
	proto int
	tls   *tls.Config // nil: plain TCP
	// lost, when set (upstream.mode sentinel), is told of every failed
	// connection: the primary may have changed.
	lost func()
	// login, when set, says whom to log in as (the clients' user,
	// clientuser.go); heal is told of a failed dial and reports whether
	// to dial again once.
	login func() (user, password string)
	heal  func(error) bool

	mu      sync.Mutex
	nc      net.Conn
	br      *bufio.Reader
	wbuf    []byte // requests waiting to be written
	spare   []byte // the other write buffer
	writing bool   // a goroutine is writing wbuf
	reading bool   // a call is reading replies (the leader)
	// filling is the call whose replies the leader is reading into its
	// buffers without mu held: failLocked leaves it to the leader
	// (fillErr), which finishes it once it holds mu again, so its owner
	// never reuses a Call the leader still writes to.
	filling *Call
	fillErr error
	queue   []*Call // calls awaiting replies, oldest first
	head    int     // index of the oldest call in queue
}

func (c *muxConn) do(cl *Call) {
	if c.beginLocked(cl) {
		c.finishLocked(cl)
	}
}

// begin queues cl and writes its commands (with whatever other calls
// added meanwhile); false when cl is finished already (nothing to send,
// or the connection could not be had). finish waits for its replies.
func (c *muxConn) begin(cl *Call) bool {
	if !c.beginLocked(cl) {
		return false
	}
	c.mu.Unlock()
	return true
}

func (c *muxConn) finish(cl *Call) {
	c.mu.Lock()
	c.finishLocked(cl)
}

// beginLocked is begin, returning with c.mu held when it returns true.
func (c *muxConn) beginLocked(cl *Call) bool {
	cl.Got, cl.Size, cl.Out, cl.Ends, cl.Err, cl.finished, cl.over = 0, 0, cl.Out[:0], cl.Ends[:0], nil, false, false
	if cl.Want == 0 {
		return false
	}
	c.mu.Lock()
	if c.nc == nil {
		if c.cfg.Addr == "" {
			c.mu.Unlock()
			cl.Err = errNoPrimary
			c.lostConn()
			return false
		}
		user, pass := c.cfg.Username, c.cfg.Password
		if c.login != nil {
			user, pass = c.login()
		}
		nc, br, _, err := dial(c.cfg, c.tls, c.proto, user, pass)
		if err != nil && c.heal != nil && c.heal(err) {
			user, pass = c.login()
			nc, br, _, err = dial(c.cfg, c.tls, c.proto, user, pass)
		}
		if err != nil {
			c.mu.Unlock()
			cl.Err = err
			c.lostConn()
			return false
		}
		c.nc, c.br = nc, br
	}
	c.wbuf = append(c.wbuf, cl.Req...)
	if c.head == len(c.queue) {
		c.nc.SetReadDeadline(time.Now().Add(time.Duration(c.cfg.Timeout)))
	}
	c.queue = append(c.queue, cl)
	if cl.Queued != nil {
		cl.Queued()
	}
	if !c.writing {
		c.writing = true
		// Let other clients' goroutines that are ready append their
		// commands first, so one write (and one read on Redis' side)
		// carries many clients' commands: twemproxy's batching.
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
		for len(c.wbuf) > 0 && c.nc != nil {
			buf, nc := c.wbuf, c.nc
			c.wbuf = c.spare[:0]
			c.mu.Unlock()
			_, err := nc.Write(buf)
			c.mu.Lock()
			c.spare = buf[:0]
			if err != nil {
				c.failLocked(nc, err)
			}
		}
		c.writing = false
	}
	return true
}

// finishLocked waits, c.mu held, until cl has its replies, reading them
// (and other calls') when it is cl's turn, and handing its Stream the
// chunks ready; it returns with c.mu released.
func (c *muxConn) finishLocked(cl *Call) {
	for !cl.finished {
		if cl.ready != nil {
			c.stream(cl)
			continue
		}
		if !c.reading && c.nc != nil {
			c.reading = true
			nc, br := c.nc, c.br
			c.mu.Unlock()
			c.read(nc, br, cl) // until cl is finished, or has a chunk to stream
			c.mu.Lock()
			continue
		}
		c.mu.Unlock()
		<-cl.done
		c.mu.Lock()
	}
	if cl.ready != nil {
		c.stream(cl)
	}
	c.mu.Unlock()
	if cl.over {
		cl.Err = ErrOutputLimit
	}
}

// stream hands cl's ready chunk to cl.Stream, with mu released meanwhile.
func (c *muxConn) stream(cl *Call) {
	b := cl.ready
	cl.ready, cl.streaming = nil, true
	c.mu.Unlock()
	cl.Stream(b)
	c.mu.Lock()
	cl.streaming, cl.spare = false, b[:0]
}

// check is how many bytes of replies a call holds before the reader looks
// at its Stream and Limit (took): below it, there is nothing to do.
func (cl *Call) check() int {
	if cl.Limit > 0 && cl.Limit < StreamChunk {
		return cl.Limit
	}
	return StreamChunk
}

// took moves head's replies to its ready chunk when its owner streams and
// is not busy with the last one, and checks head's limit. It runs, with mu
// held, on the goroutine reading, after each reply of head's.
func (c *muxConn) took(head *Call) {
	if head.Stream != nil && !head.over && !head.streaming && head.ready == nil && len(head.Out) >= StreamChunk {
		head.ready, head.Out = head.Out, head.spare
		head.spare = nil
		head.wake()
		return
	}
	if head.Limit > 0 && !head.over && len(head.Out)+len(head.ready) > head.Limit {
		head.over = true
		if head.Overflow != nil {
			head.Overflow()
		}
	}
}

// read is the leader's loop: it hands each reply on nc to the oldest
// waiting call until cl has all of its own, then passes the reading on.
// When cl's own replies pile up for its Stream, a new goroutine (cl nil)
// reads on and read returns, so that cl's owner can hand them over while
// the others' replies keep coming.
func (c *muxConn) read(nc net.Conn, br *bufio.Reader, cl *Call) {
	for {
		c.mu.Lock()
		if f := c.filling; f != nil {
			c.endFillLocked(f) // the call read for before, still pending or failed meanwhile
		}
		if c.nc != nc || c.head == len(c.queue) {
			// The connection failed meanwhile (its calls are failed), or
			// nobody waits: nothing more to read.
			c.reading = false
			c.wakeNextLocked()
			c.mu.Unlock()
			return
		}
		head := c.queue[c.head]
		c.filling = head
		c.mu.Unlock()
		n := len(head.Out)
		out, err := resp.AppendReplyAfterPushes(head.Out, br)
		if err != nil {
			c.mu.Lock()
			c.endFillLocked(head)
			c.reading = false
			c.failLocked(nc, err)
			c.wakeNextLocked()
			c.mu.Unlock()
			return
		}
		if len(out)-n >= StreamChunk {
			// A large reply took a while: the deadline is for a stalled
			// upstream, not for a long stream of replies.
			nc.SetReadDeadline(time.Now().Add(time.Duration(c.cfg.Timeout)))
		}
		if head.over {
			out = out[:n] // dropped: the client is being closed
		}
		head.Size += len(out) - n
		head.Out = out
		head.Ends = append(head.Ends, len(out))
		head.Got++
		if head.Got < head.Want {
			if (head.Stream != nil || head.Limit > 0) && len(out) >= head.check() {
				c.mu.Lock()
				c.took(head)
				if head == cl && cl.ready != nil {
					// Our own chunk is ready: read on elsewhere.
					go c.read(nc, br, nil)
					c.mu.Unlock()
					return
				}
				c.mu.Unlock()
			}
			continue
		}
		c.mu.Lock()
		c.endFillLocked(head)
		if c.nc != nc {
			// The connection failed (or was retargeted) while the reply
			// was read: failLocked has emptied the queue, and
			// endFillLocked finished head.
			c.reading = false
			c.wakeNextLocked()
			c.mu.Unlock()
			return
		}
		if head.Limit > 0 {
			c.took(head)
		}
		c.queue[c.head] = nil
		c.head++
		if c.head == len(c.queue) {
			c.queue, c.head = c.queue[:0], 0
			nc.SetReadDeadline(time.Time{})
		} else {
			nc.SetReadDeadline(time.Now().Add(time.Duration(c.cfg.Timeout)))
		}
		head.finished = true
		if head != cl && cl != nil {
			head.wake()
			c.mu.Unlock()
			continue
		}
		// Our own replies are in (or, reading for nobody, the call we
		// read for is): the oldest call still waiting reads on.
		if head != cl {
			head.wake()
		}
		c.reading = false
		if c.head < len(c.queue) {
			c.queue[c.head].wake()
		}
		c.mu.Unlock()
		return
	}
}

// wakeNextLocked hands the reading to the oldest call waiting on the
// current connection, if any: a leader that stops because its connection
// failed (or was replaced, Mux.retarget) leaves the calls already queued
// on the next connection without a reader otherwise.
func (c *muxConn) wakeNextLocked() {
	if c.nc != nil && c.head < len(c.queue) {
		c.queue[c.head].wake()
	}
}

func (c *muxConn) fail(nc net.Conn, err error) {
	c.mu.Lock()
	c.failLocked(nc, err)
	c.mu.Unlock()
}

// failLocked closes nc and fails every call still waiting on it; the next
// do dials again.
func (c *muxConn) failLocked(nc net.Conn, err error) {
	if c.nc != nc {
		return
	}
	if err != errSwitched {
		c.lostConn()
	}
	nc.Close()
	c.nc, c.br = nil, nil
	c.wbuf = c.wbuf[:0]
	for _, cl := range c.queue[c.head:] {
		if cl == c.filling {
			c.fillErr = err // the leader finishes it (endFillLocked)
			continue
		}
		cl.Err = err
		cl.finished = true
		cl.wake()
	}
	clear(c.queue)
	c.queue, c.head = c.queue[:0], 0
}

// endFillLocked, on the leader with mu held again, ends its filling of
// head: if failLocked left head to it, head is finished now, complete if
// all its replies were read, else with the connection's error.
func (c *muxConn) endFillLocked(head *Call) {
	if c.filling != head {
		return
	}
	c.filling = nil
	if err := c.fillErr; err != nil {
		c.fillErr = nil
		if head.Got < head.Want {
			head.Err = err
		}
		head.finished = true
		head.wake()
	}
}

func (c *muxConn) lostConn() {
	if c.lost != nil {
		c.lost()
	}
}

func (m *Mux) close() {
	for _, c := range m.conns {
		c.mu.Lock()
		if c.nc != nil {
			c.failLocked(c.nc, context.Canceled)
		}
		c.mu.Unlock()
	}
}
