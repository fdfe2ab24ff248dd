package resp

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// NewListener wraps l so that every accepted conn is a guarded *Conn (see
// NewConn) with limits lim. Accept errors are passed through unchanged.
func NewListener(l net.Listener, lim Limits) net.Listener {
	return &listener{Listener: l, lim: lim.normalized()}
}

type listener struct {
	net.Listener
	lim Limits
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newConn(c, l.lim), nil
}

// minRead is the smallest p that Read fills directly; smaller reads go
// through an internal buffer. A held item (a multibulk header, at most 23
// bytes before it is invalid) always fits.
const minRead = 64

// Conn is a net.Conn whose Read returns only bytes that form a valid RESP
// request stream prefix, made of whole commands whenever possible. Writes and
// every other method pass through to the wrapped conn, except that read
// deadlines are tracked so WatchClose can restore them.
//
// Conn is not safe for concurrent Reads; see WatchClose for the one
// background reader it may run itself.
type Conn struct {
	net.Conn
	lim Limits

	// parser state, persists across Reads
	st        state
	neg, zero bool   // number: '-' seen; first digit was '0'
	ndig      int    // number: digits seen
	num       uint64 // number: value (magnitude)
	hdrLen    int    // bytes of the current header line so far
	args      int    // bulk arguments left in the current command
	remain    int64  // payload bytes left to skip
	cmdBytes  int64  // bytes of the current multibulk command so far
	item      int    // output offset in the current Read where the current item began

	// inline line state (inline.go), persists across Reads
	lineLen int      // bytes of the current line so far
	tk      tokState // tokenizer position
	hex     byte     // first hex digit of a \xHH escape
	line    []byte   // the arguments so far, decoded, back to back
	ends    []int    // end offset in line of every finished argument
	argv    [][]byte // scratch: the arguments as slices of line
	encBuf  []byte   // the multibulk form of the last complete line
	enc     []byte   // the part of encBuf not yet returned by Read

	pbuf  []byte // raw bytes not yet parsed: pbuf[pend:]
	pend  int
	out   []byte // validated bytes not yet returned (reads smaller than minRead)
	small []byte

	rerr    error          // sticky non-timeout read error of the wrapped conn
	perr    *ProtocolError // sticky protocol error
	replied bool

	wmu       sync.Mutex
	watching  bool
	stopping  bool
	rdl       time.Time // read deadline last set through this Conn
	closedCh  chan struct{}
	closeOnce sync.Once

	reads int // Read calls, for tests

	// Limits.Total and Limits.Idle (limits.go)
	counted    int64       // bytes of the current command added to lim.Total
	idleFrom   time.Time   // since when the client has completed no command
	idleArmed  bool        // the wrapped conn's read deadline is the idle one
	idleExempt atomic.Bool // SetIdleExempt

	stamps  *stamper  // kernel receive stamps (stamp_linux.go); nil: none
	arrival time.Time // when the bytes of the last read arrived

	claim claimState // ReadState and claims (claim.go)
}

// NewConn wraps c with limits lim (zero fields mean the defaults). Read then
// returns only bytes that form a valid RESP request stream prefix; see Read.
func NewConn(c net.Conn, lim Limits) *Conn {
	return newConn(c, lim.normalized())
}

func newConn(c net.Conn, lim Limits) *Conn {
	g := &Conn{Conn: c, lim: lim, closedCh: make(chan struct{}), stamps: newStamper(c)}
	if g.tracked() {
		g.claim.state.Store(int32(ReadWaiting)) // nothing read yet
	}
	return g
}

// Underlying returns the wrapped net.Conn.
func (c *Conn) Underlying() net.Conn { return c.Conn }

// Read reads the client's bytes into p and returns a prefix of a valid RESP
// request stream (Redis 7.0 networking.c processInputBuffer rules):
//
//   - A multibulk command `*N\r\n` followed by N bulk strings `$L\r\n` + L
//     bytes + `\r\n`. N and L are strict decimal integers (string2ll: no '+',
//     no leading zeros). N <= 0 commands (`*0\r\n`, `*-1\r\n`) are dropped
//     from the stream, as Redis ignores them. Payload bytes are skipped by
//     counting, never scanned.
//   - Anything not starting with '*' is an inline command: a line ending in
//     '\n' (a '\r' before it is stripped), split into arguments as Redis'
//     sdssplitargs does (blanks, "double" and 'single' quotes, \xHH and other
//     escapes: see inline.go). Read returns the arguments as a multibulk
//     command in place of the line, so redcon's own inline parser, which
//     differs from Redis', never sees one. Lines without arguments get no
//     reply in Redis and are dropped. A line with a NUL byte never ends, as
//     in Redis.
//
// Read keeps reading from the wrapped conn until p holds at least one
// complete command or p is full, and returns as soon as one command is
// complete. When a command completes, the bytes after the last complete
// command are held back for the next Read, so a Read returns whole commands
// unless a single command is larger than p. That keeps redcon's per-read
// recursion (readCommands calls itself after every read that yields no
// command) bounded by the logarithm of the command size, and keeps redcon's
// read buffer from doubling under a steady pipelined stream. Memory: redcon
// still grows its buffer (by doubling, kept while the connection lives) to
// hold the largest command, so each connection may use about 2×MaxCommand
// (1 GiB by default: lower MaxCommand/MaxBulk to bound it); the guard itself
// buffers at most one p of held-back bytes and, for an inline line, its
// decoded arguments and their multibulk form (at most MaxInline bytes and
// under 4×MaxInline bytes). An inline command ends the Read that returns it.
//
// On a protocol violation Read returns the complete commands before it, then
// (at once, or on the next call if commands were returned) writes the Redis
// error reply "-ERR Protocol error: <msg>\r\n" to the wrapped conn and returns
// a *ProtocolError (errors.Is(err, ErrProtocol)); every later Read returns
// the same error. Messages, as in networking.c processMultibulkBuffer and
// processInlineBuffer:
//
//   - bad, negative, overflowing or over-MaxArgs `*N`: "invalid multibulk length"
//   - bad, negative, overflowing or over-MaxBulk `$N`: "invalid bulk length"
//   - a bulk header not starting with '$': "expected '$', got 'x'"
//   - a payload not followed by "\r\n": "invalid bulk length" (Redis skips
//     the two bytes unchecked; redcon rejects them, so the guard does too)
//   - an inline line longer than MaxInline: "too big inline request"
//   - bad inline quoting: "unbalanced quotes in request", at the line's end
//   - a command larger than MaxCommand: the connection is closed without a
//     reply (Redis' client-query-buffer-limit behaviour).
//
// Multibulk errors are reported at the first byte that cannot continue a
// valid command; Redis sometimes waits for the end of the header line first.
// Inline quoting errors wait for the end of the line, as in Redis.
//
// Read never returns 0, nil for len(p) > 0. Errors of the wrapped conn are
// returned after the valid bytes read before them; timeouts are not sticky,
// so a Read after a deadline is extended resumes the stream.
//
// With Limits.Arriving set, Read keeps the Conn's ReadState (claim.go).
func (c *Conn) Read(p []byte) (int, error) {
	if !c.tracked() {
		return c.readStream(p)
	}
	if c.atBoundary() {
		c.setReadState(ReadWaiting)
	} else {
		c.setReadState(ReadReceiving) // bytes read before are on their way
	}
	n, err := c.readStream(p)
	if n > 0 && (c.st == stStart || c.st == stInline || c.st == stNul) {
		c.setReadState(ReadUnclaimed) // whole commands (more may be held)
	} else {
		// Closed, or part of a command: its arrival is that of a read
		// still to come, so nobody waits for it now.
		c.setReadState(ReadBusy)
	}
	return n, err
}

// readStream is Read.
func (c *Conn) readStream(p []byte) (int, error) {
	c.reads++
	if len(c.out) > 0 {
		n := copy(p, c.out)
		c.out = c.out[n:]
		return n, nil
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) < minRead {
		if c.small == nil {
			c.small = make([]byte, 4096)
		}
		n, err := c.read(c.small)
		if n == 0 {
			return 0, err
		}
		k := copy(p, c.small[:n])
		c.out = c.small[k:n]
		return k, nil
	}
	return c.read(p)
}

func (c *Conn) read(p []byte) (int, error) {
	if len(c.enc) > 0 {
		// the rest of an inline command larger than the last p
		return c.takeEnc(p), nil
	}
	if c.perr != nil {
		return 0, c.fail()
	}
	w, bnd := 0, 0
	for {
		var n int
		var err error
		if c.pend < len(c.pbuf) {
			n = copy(p[w:], c.pbuf[c.pend:])
			c.consumePending(n)
		} else if c.rerr != nil {
			err = c.rerr
		} else {
			if c.lim.Idle > 0 {
				c.armIdle(w)
			}
			n, err = c.readConn(p[w:], c)
			if err != nil && isTimeout(err) && c.idleArmed && !time.Now().Before(c.idleFrom.Add(c.lim.Idle)) {
				err = ErrIdle
			}
			if err != nil && !isTimeout(err) {
				c.rerr = err
				c.markClosed()
			}
		}
		if n > 0 {
			end := w + n
			var perr *ProtocolError
			var stop int
			w, stop, perr = c.parse(p, w, end, &bnd)
			if perr == nil && c.lim.Total != nil {
				perr = c.account()
			}
			if perr != nil {
				c.perr = perr
				c.reset()
				c.pbuf, c.pend = nil, 0
				if bnd > 0 {
					return bnd, nil
				}
				return 0, c.fail()
			}
			if len(c.enc) > 0 {
				// An inline line is complete; everything before it is
				// complete commands (w == bnd). Its multibulk form goes
				// in its place, the input after it back to pending.
				c.pushBack(p[stop:end])
				if w > 0 && len(c.enc) > len(p)-w {
					return w, nil // c.enc goes out next
				}
				w += c.takeEnc(p[w:])
				bnd = w
			}
		}
		if bnd > 0 {
			c.hold(p, bnd, w)
			return bnd, nil
		}
		if err != nil {
			if c.held() {
				c.hold(p, c.item, w)
				w = c.item
			}
			if w > 0 {
				return w, nil
			}
			return 0, err
		}
		if w == len(p) {
			if c.held() {
				if c.item == 0 {
					// Unreachable with len(p) >= minRead: a header longer
					// than that is invalid. Fail closed.
					c.perr = errMultibulkLen
					c.reset()
					return 0, c.fail()
				}
				c.hold(p, c.item, w)
				return c.item, nil
			}
			return w, nil
		}
	}
}

// fail writes the Redis error reply once and returns the sticky error.
func (c *Conn) fail() error {
	if !c.replied && c.perr.Replied {
		c.replied = true
		c.Conn.Write([]byte("-ERR " + c.perr.Error() + "\r\n"))
	}
	return c.perr
}

// held reports whether the current item must not be returned unfinished: a
// multibulk header (it may turn out to be `*0`, which is dropped).
func (c *Conn) held() bool {
	return c.st == stMBNum || c.st == stMBLF
}

func (c *Conn) reset() { c.st = stStart }

// hold pushes the unfinished multibulk item p[from:w] back in front of the
// pending bytes and resets the parser to a command boundary, so the item is
// parsed again, from its start, by the next Read. An inline line in progress
// has no bytes in p (its state lives in the Conn) and is left alone.
func (c *Conn) hold(p []byte, from, w int) {
	switch c.st {
	case stStart, stInline, stNul:
		return
	}
	c.st = stStart
	c.pushBack(p[from:w])
}

// pushBack puts b in front of the pending bytes.
func (c *Conn) pushBack(b []byte) {
	switch {
	case len(b) == 0:
	case c.pend >= len(b):
		c.pend -= len(b)
		copy(c.pbuf[c.pend:], b)
	case c.pend == len(c.pbuf):
		c.pbuf = append(c.pbuf[:0], b...)
		c.pend = 0
	default:
		nb := make([]byte, 0, len(b)+len(c.pbuf)-c.pend)
		nb = append(nb, b...)
		c.pbuf = append(nb, c.pbuf[c.pend:]...)
		c.pend = 0
	}
}

func (c *Conn) consumePending(n int) {
	c.pend += n
	if c.pend == len(c.pbuf) {
		c.pend = 0
		if cap(c.pbuf) > maxWatchBuffer {
			c.pbuf = nil
		} else {
			c.pbuf = c.pbuf[:0]
		}
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Write writes p to the client. An empty p makes no system call: redcon
// flushes its own writer after every batch, which stays empty when the
// replies are written another way.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return c.Conn.Write(p)
}

// account keeps the bytes of the current incomplete command in lim.Total,
// in steps of totalStep, and refuses the command past lim.MaxTotal.
func (c *Conn) account() *ProtocolError {
	var cur int64
	if c.st != stStart && c.cmdBytes >= totalStep {
		cur = c.cmdBytes
	}
	if d := cur - c.counted; d >= totalStep || (d < 0 && cur == 0) || d <= -totalStep {
		t := c.lim.Total.Add(d)
		c.counted = cur
		if d > 0 && c.lim.MaxTotal > 0 && t > c.lim.MaxTotal {
			c.lim.Total.Add(-cur)
			c.counted = 0
			return ErrQueryTotal
		}
	}
	return nil
}

// Close closes the wrapped conn and gives back what the Conn counted in
// Limits.Total.
func (c *Conn) Close() error {
	c.setReadState(ReadBusy)
	if c.lim.Total != nil {
		c.wmu.Lock()
		if n := c.counted; n != 0 {
			c.counted = 0
			c.lim.Total.Add(-n)
		}
		c.wmu.Unlock()
	}
	return c.Conn.Close()
}

// SetIdleExempt exempts the client from Limits.Idle (or not): Redis does
// not time out subscribed or monitoring clients.
func (c *Conn) SetIdleExempt(on bool) { c.idleExempt.Store(on) }

// armIdle sets the wrapped conn's read deadline for Limits.Idle before a
// read; w is what this Read holds already.
func (c *Conn) armIdle(w int) {
	if c.idleExempt.Load() {
		if c.idleArmed {
			c.idleArmed = false
			c.wmu.Lock()
			c.Conn.SetReadDeadline(c.rdl)
			c.wmu.Unlock()
		}
		return
	}
	if w == 0 && c.st == stStart && c.pend == len(c.pbuf) && c.lineLen == 0 {
		c.idleFrom = time.Now() // nothing of a command yet: idle from now
	}
	c.idleArmed = true
	c.Conn.SetReadDeadline(c.idleFrom.Add(c.lim.Idle))
}

// readConn reads the wrapped conn, noting when the bytes arrived; st, if
// not nil, keeps its ReadState while it does (stamper.read).
func (c *Conn) readConn(p []byte, st *Conn) (int, error) {
	if c.stamps == nil {
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.arrival = time.Now()
		}
		return n, err
	}
	n, at, err := c.stamps.read(p, st)
	if n > 0 {
		if at.IsZero() {
			at = time.Now()
		}
		c.arrival = at
	}
	return n, err
}

// Arrival returns when the kernel received the bytes of the last read of
// the client's socket (on Linux; elsewhere, when they were read). The
// server orders clients' commands by it (server/order.go).
func (c *Conn) Arrival() time.Time { return c.arrival }
