// Package resp guards a RESP (Redis protocol) server from hostile or broken
// client byte streams.
//
// tidwall/redcon v1.6.4, the server library Respite is built on, has no
// request limits and several crashes on bad input (see
// /work/shared/spec/LIBRARIES.md): `*1\r\n$9223372036854775807\r\nabc\r\n`
// overflows `i+size+2` in (*redcon.Reader).readCommands and panics in redcon's
// own goroutine; readCommands recurses once per socket read, so a command
// delivered in ~1M tiny reads overflows the stack; its read buffer doubles
// until a command fits; `*0\r\n` is a protocol error in redcon while Redis
// ignores it.
//
// Rather than patching redcon, this package wraps the listener:
//
//	ln, _ := net.Listen("tcp", addr)
//	redcon.Serve(resp.NewListener(ln, resp.Limits{}), handler, accept, closed)
//
// Every accepted connection is a *Conn whose Read validates the client's bytes
// as a RESP request stream before redcon sees them, answers protocol errors the
// way Redis 7.0 does (networking.c processMultibulkBuffer and
// processInlineBuffer), and hands redcon only whole, well-formed commands.
// Inside a redcon handler the *Conn is reachable as conn.NetConn().(*resp.Conn).
package resp

import (
	"errors"
	"math"
	"net"
	"os"
	"sync"
	"time"
)

// Default limits, used for zero (or negative) Limits fields.
const (
	// DefaultMaxBulk is Redis' default proto-max-bulk-len (512 MiB).
	DefaultMaxBulk int64 = 512 << 20
	// DefaultMaxArgs is the default largest argument count (1<<20).
	DefaultMaxArgs = 1 << 20
	// DefaultMaxInline is Redis' PROTO_INLINE_MAX_SIZE (64 KiB).
	DefaultMaxInline = 64 << 10
	// DefaultMaxCommand is Redis' default client-query-buffer-limit (1 GiB).
	DefaultMaxCommand int64 = 1 << 30
)

// maxSize caps every limit so that redcon's index arithmetic (i+size+2 in
// readCommands, with i below the length of an in-memory buffer) cannot
// overflow an int, on 32-bit platforms too.
const maxSize = math.MaxInt / 4

// Limits bound one client's requests. A zero or negative field means the
// default (the Default* constants), never "no limit". Values above
// math.MaxInt/4 (and MaxArgs above math.MaxInt32, Redis' INT_MAX) are clamped.
type Limits struct {
	// MaxBulk is the largest bulk string (one argument of a multibulk
	// command) in bytes. Default 512 MiB, Redis' proto-max-bulk-len.
	// A larger `$N` header is answered with
	// "-ERR Protocol error: invalid bulk length", as Redis does.
	MaxBulk int64
	// MaxArgs is the largest argument count of one multibulk command.
	// Default 1<<20 (Redis allows up to INT_MAX). A larger `*N` header is
	// answered with "-ERR Protocol error: invalid multibulk length".
	MaxArgs int
	// MaxInline is the longest inline command line in bytes, counting every
	// byte before the terminating '\n' (a '\r' before it included). Default
	// 64 KiB, Redis' PROTO_INLINE_MAX_SIZE. A longer line is answered with
	// "-ERR Protocol error: too big inline request".
	MaxInline int
	// MaxCommand is the largest multibulk command in bytes as sent (all
	// headers, payloads and CRLFs). Default 1 GiB, Redis' default
	// client-query-buffer-limit. Like Redis (networking.c
	// readQueryFromClient, "closing client that reached max query buffer
	// length") the connection is closed without a reply. This bounds what
	// redcon buffers for one command: MaxBulk alone would allow MaxArgs
	// arguments of MaxBulk bytes each.
	MaxCommand int64
}

func (l Limits) normalized() Limits {
	if l.MaxBulk <= 0 {
		l.MaxBulk = DefaultMaxBulk
	}
	if l.MaxBulk > maxSize {
		l.MaxBulk = maxSize
	}
	if l.MaxArgs <= 0 {
		l.MaxArgs = DefaultMaxArgs
	}
	if l.MaxArgs > math.MaxInt32 {
		l.MaxArgs = math.MaxInt32
	}
	if l.MaxArgs > maxSize {
		l.MaxArgs = maxSize
	}
	if l.MaxInline <= 0 {
		l.MaxInline = DefaultMaxInline
	}
	if l.MaxInline > maxSize {
		l.MaxInline = maxSize
	}
	if l.MaxCommand <= 0 {
		l.MaxCommand = DefaultMaxCommand
	}
	if l.MaxCommand > maxSize {
		l.MaxCommand = maxSize
	}
	return l
}

// ErrProtocol is the sentinel that every *ProtocolError wraps:
// errors.Is(err, ErrProtocol) reports whether a Read failed because the
// client broke the protocol (as opposed to a network error or EOF).
var ErrProtocol = errors.New("protocol error")

// ProtocolError is returned by (*Conn).Read when the client's byte stream is
// not a valid RESP request stream or exceeds the Limits. The connection
// should then be closed (redcon does so).
type ProtocolError struct {
	// Msg is the Redis error text after "Protocol error: ", for example
	// "invalid bulk length".
	Msg string
	// Replied is true when "-ERR Protocol error: "+Msg+"\r\n" is (or will be,
	// at the Read that returns this error) written to the client. It is false
	// for MaxCommand, which Redis answers by closing without a reply.
	Replied bool
}

// Error returns "Protocol error: " + Msg, the text Redis sends after "-ERR ".
func (e *ProtocolError) Error() string { return "Protocol error: " + e.Msg }

// Unwrap returns ErrProtocol.
func (e *ProtocolError) Unwrap() error { return ErrProtocol }

func protoErr(msg string) *ProtocolError { return &ProtocolError{Msg: msg, Replied: true} }

// The messages of Redis 7.0 networking.c (processMultibulkBuffer,
// processInlineBuffer).
var (
	errMultibulkLen   = protoErr("invalid multibulk length")
	errBulkLen        = protoErr("invalid bulk length")
	errTooBigInline   = protoErr("too big inline request")
	errUnbalanced     = protoErr("unbalanced quotes in request")
	errCommandTooBig  = &ProtocolError{Msg: "query buffer limit exceeded", Replied: false}
	errExpectedDollar [256]*ProtocolError
)

func init() {
	for b := range errExpectedDollar {
		c := byte(b)
		// addReplyErrorFormat maps '\r' and '\n' to spaces so the error line
		// stays one line (Redis 7.0 networking.c addReplyErrorFormatInternal).
		if c == '\r' || c == '\n' {
			c = ' '
		}
		errExpectedDollar[b] = protoErr("expected '$', got '" + string([]byte{c}) + "'")
	}
}

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

// parser states
type state uint8

const (
	stStart   state = iota // at a command boundary
	stMBNum                // after '*': count digits (held, see Read)
	stMBLF                 // after the count's '\r' (held)
	stDollar               // expecting '$'
	stBulkNum              // after '$': length digits
	stBulkLF               // after the length's '\r'
	stPayload              // skipping payload bytes
	stPayCR                // expecting the payload's '\r'
	stPayLF                // expecting the payload's '\n'
	stBlank                // inline line with only spaces so far (held)
	stInline               // inline line with content
)

// minRead is the smallest p that Read fills directly; smaller reads go
// through an internal buffer. A held item (a multibulk header, at most 23
// bytes before it is invalid, or a compressed blank prefix of 2 bytes) always
// fits.
const minRead = 64

// maxWatchBuffer bounds what the WatchClose goroutine buffers.
const maxWatchBuffer = 64 << 10

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
	lineLen   int    // bytes of the current inline line so far
	lineCarry int    // lineLen of a line pushed back (compressed blank prefix)
	cr, sp    bool   // inline: '\r' seen but not processed; blank prefix had spaces
	quote     byte   // inline: open quote character, or 0
	esc       bool   // inline: after '\\' inside quotes
	closedQ   bool   // inline: right after a closing quote
	atStart   bool   // inline: at the start of a token
	item      int    // output offset in the current Read where the current item began

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
}

// NewConn wraps c with limits lim (zero fields mean the defaults). Read then
// returns only bytes that form a valid RESP request stream prefix; see Read.
func NewConn(c net.Conn, lim Limits) *Conn {
	return newConn(c, lim.normalized())
}

func newConn(c net.Conn, lim Limits) *Conn {
	return &Conn{Conn: c, lim: lim, closedCh: make(chan struct{})}
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
//     '\n' (a '\r' before it is stripped), split into arguments by spaces
//     with "double" and 'single' quotes. Lines holding only spaces get no
//     reply in Redis and are dropped. Quoting is checked by redcon's stricter
//     rules (a quote may only open a token), since redcon parses the line.
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
// buffers at most one p of held-back bytes.
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
//   - bad inline quoting: "unbalanced quotes in request"
//   - a command larger than MaxCommand: the connection is closed without a
//     reply (Redis' client-query-buffer-limit behaviour).
//
// Errors are reported at the first byte that cannot start or continue a valid
// request; Redis sometimes waits for the end of the line first.
//
// Read never returns 0, nil for len(p) > 0. Errors of the wrapped conn are
// returned after the valid bytes read before them; timeouts are not sticky,
// so a Read after a deadline is extended resumes the stream.
func (c *Conn) Read(p []byte) (int, error) {
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
			n, err = c.Conn.Read(p[w:])
			if err != nil && !isTimeout(err) {
				c.rerr = err
				c.markClosed()
			}
		}
		if n > 0 {
			var perr *ProtocolError
			w, perr = c.parse(p, w, w+n, &bnd)
			if perr == nil && c.st == stBlank {
				c.compress(p, &w)
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
					// than that is invalid and a blank prefix compresses to
					// at most 2 bytes. Fail closed.
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
// multibulk header (it may turn out to be `*0`, which is dropped) or a blank
// inline prefix (it may turn out to be an empty line, which is dropped).
func (c *Conn) held() bool {
	return c.st == stMBNum || c.st == stMBLF || c.st == stBlank
}

func (c *Conn) reset() {
	c.st = stStart
	c.lineCarry = 0
}

// compress shrinks a held blank inline prefix p[c.item:*w] (spaces and maybe
// a pending '\r') to its canonical form: one space if there were spaces, then
// the '\r'. Leading spaces mean the same to redcon whatever their number.
// lineLen keeps counting the original bytes for MaxInline. Read compresses
// after every parse step, so a blank prefix never takes more than 2 bytes
// of p.
func (c *Conn) compress(p []byte, w *int) bool {
	m := c.item
	if c.sp {
		p[m] = ' '
		m++
	}
	if c.cr {
		p[m] = '\r'
		m++
	}
	if m >= *w {
		return false
	}
	*w = m
	return true
}

// hold pushes the unfinished item p[from:w] back in front of the pending
// bytes and resets the parser to a command boundary, so the item is parsed
// again, from its start, by the next Read.
func (c *Conn) hold(p []byte, from, w int) {
	switch c.st {
	case stStart:
		return
	case stBlank:
		c.compress(p, &w)
		c.lineCarry = c.lineLen - (w - from)
	case stInline:
		c.lineCarry = c.lineLen - (w - from)
	}
	c.st = stStart
	b := p[from:w]
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

// parse validates the new input p[in:end] (p[:in] is output already) and
// compacts the kept bytes in place. It returns the new output length w; the
// output offset just past the last complete command is stored in *bnd.
// Dropped items are cut out lazily: p[keep:i] is the run of input kept since
// the last cut and belongs at output offset w, so input offset i maps to
// output offset w+i-keep.
func (c *Conn) parse(p []byte, in, end int, bnd *int) (int, *ProtocolError) {
	w, keep, i := in, in, in
	var perr *ProtocolError
loop:
	for i < end {
		switch c.st {
		case stStart:
			c.item = w + i - keep
			if p[i] == '*' {
				// fast path: a whole positive count in the buffer
				if v, next, ok := fastNum(p, i+1, end, uint64(c.lim.MaxArgs)); ok && v > 0 {
					c.args = int(v)
					c.cmdBytes = int64(next - i)
					i = next
					c.st = stDollar
					continue
				}
				c.st = stMBNum
				c.num, c.ndig, c.neg, c.zero = 0, 0, false, false
				c.hdrLen = 1
				i++
				continue
			}
			c.st = stBlank
			c.lineLen = c.lineCarry
			c.lineCarry = 0
			c.cr, c.sp = false, false

		case stMBNum, stBulkNum:
			limit := uint64(c.lim.MaxBulk)
			if c.st == stMBNum {
				limit = uint64(c.lim.MaxArgs)
				if c.neg {
					limit = 1 << 63
				}
			}
			for i < end {
				b := p[i]
				i++
				c.hdrLen++
				if d := b - '0'; d <= 9 {
					if c.zero || c.ndig >= 19 || (d == 0 && c.ndig == 0 && c.neg) {
						perr = c.numErr()
						break loop
					}
					if c.ndig == 0 && d == 0 {
						c.zero = true
					}
					c.num = c.num*10 + uint64(d)
					c.ndig++
					if c.num > limit {
						perr = c.numErr()
						break loop
					}
					continue
				}
				if b == '\r' && c.ndig > 0 {
					c.st++ // stMBLF or stBulkLF
					continue loop
				}
				if b == '-' && c.st == stMBNum && c.ndig == 0 && !c.neg {
					c.neg = true
					limit = 1 << 63
					continue
				}
				perr = c.numErr()
				break loop
			}

		case stMBLF:
			if p[i] != '\n' {
				perr = errMultibulkLen
				break loop
			}
			i++
			c.hdrLen++
			if c.neg || c.num == 0 {
				// `*0\r\n`, `*-1\r\n`: Redis ignores them
				// (processMultibulkBuffer: "if (ll <= 0) return C_OK").
				w, keep = c.drop(p, w, keep, i)
				c.st = stStart
				continue
			}
			c.args = int(c.num)
			c.cmdBytes = int64(c.hdrLen)
			c.st = stDollar

		case stDollar:
			// fast path: whole "$N\r\n" headers and payloads in the buffer
			for i < end && p[i] == '$' {
				v, next, ok := fastNum(p, i+1, end, uint64(c.lim.MaxBulk))
				if !ok {
					break
				}
				cb := c.cmdBytes + int64(next-i) + int64(v) + 2
				if cb > c.lim.MaxCommand {
					break
				}
				c.cmdBytes = cb
				i = next
				pe := next + int(v)
				if pe+1 >= end || p[pe] != '\r' || p[pe+1] != '\n' {
					c.remain = int64(v)
					c.st = stPayload
					continue loop
				}
				i = pe + 2
				if c.args--; c.args == 0 {
					*bnd = w + i - keep
					c.st = stStart
					continue loop
				}
			}
			if i == end {
				continue
			}
			if p[i] != '$' {
				perr = errExpectedDollar[p[i]]
				break loop
			}
			i++
			c.num, c.ndig, c.neg, c.zero = 0, 0, false, false
			c.hdrLen = 1
			c.st = stBulkNum

		case stBulkLF:
			if p[i] != '\n' {
				perr = errBulkLen
				break loop
			}
			i++
			c.hdrLen++
			c.cmdBytes += int64(c.hdrLen) + int64(c.num) + 2
			if c.cmdBytes > c.lim.MaxCommand {
				perr = errCommandTooBig
				break loop
			}
			c.remain = int64(c.num)
			c.st = stPayload

		case stPayload:
			if avail := int64(end - i); avail < c.remain {
				c.remain -= avail
				i = end
				continue
			}
			i += int(c.remain)
			c.remain = 0
			// fast path for the common "\r\n" + next header
			if i+1 < end && p[i] == '\r' && p[i+1] == '\n' {
				i += 2
				if c.args--; c.args == 0 {
					*bnd = w + i - keep
					c.st = stStart
				} else {
					c.st = stDollar
				}
				continue
			}
			c.st = stPayCR

		case stPayCR:
			if p[i] != '\r' {
				perr = errBulkLen
				break loop
			}
			i++
			c.st = stPayLF

		case stPayLF:
			if p[i] != '\n' {
				perr = errBulkLen
				break loop
			}
			i++
			if c.args--; c.args == 0 {
				*bnd = w + i - keep
				c.st = stStart
			} else {
				c.st = stDollar
			}

		case stBlank:
			b := p[i]
			i++
			if b == '\n' {
				// An empty or all-space line: no command, no reply in Redis
				// (processInlineBuffer: argc == 0) and in redcon, but redcon
				// recurses into another read after it, so drop it.
				w, keep = c.drop(p, w, keep, i)
				c.st = stStart
				c.lineLen = 0
				continue
			}
			c.lineLen++
			if c.lineLen > c.lim.MaxInline {
				perr = errTooBigInline
				break loop
			}
			if !c.cr && b == ' ' {
				c.sp = true
				continue
			}
			if !c.cr && b == '\r' {
				c.cr = true
				continue
			}
			// the line has content
			c.st = stInline
			c.quote, c.esc, c.closedQ, c.atStart = 0, false, false, true
			if !c.inlineByte(b) {
				perr = errUnbalanced
				break loop
			}

		case stInline:
			for i < end {
				b := p[i]
				i++
				if b == '\n' {
					if c.quote != 0 {
						perr = errUnbalanced
						break loop
					}
					*bnd = w + i - keep
					c.st = stStart
					c.lineLen = 0
					continue loop
				}
				c.lineLen++
				if c.lineLen > c.lim.MaxInline {
					perr = errTooBigInline
					break loop
				}
				if !c.inlineByte(b) {
					perr = errUnbalanced
					break loop
				}
			}
		}
	}
	if w != keep {
		copy(p[w:], p[keep:i])
	}
	return w + i - keep, perr
}

// drop cuts the item that began at output offset c.item and ends before
// input offset next out of the output, returning the new w and keep.
func (c *Conn) drop(p []byte, w, keep, next int) (int, int) {
	if s := c.item; s > w {
		if w != keep {
			copy(p[w:s], p[keep:keep+s-w])
		}
		w = s
	} else {
		w = s
	}
	return w, next
}

// fastNum parses a header number at p[i:end] that is complete ("\r\n"
// included), strictly valid, non-negative and at most limit. ok is false in
// every other case, which the byte-at-a-time states then handle.
func fastNum(p []byte, i, end int, limit uint64) (v uint64, next int, ok bool) {
	j := i
	for j < end && j-i < 19 {
		d := p[j] - '0'
		if d > 9 {
			break
		}
		v = v*10 + uint64(d)
		j++
	}
	if j == i || j+1 >= end || p[j] != '\r' || p[j+1] != '\n' ||
		(p[i] == '0' && j-i > 1) || v > limit {
		return 0, 0, false
	}
	return v, j + 2, true
}

func (c *Conn) numErr() *ProtocolError {
	if c.st == stMBNum {
		return errMultibulkLen
	}
	return errBulkLen
}

// inlineByte feeds one byte of an inline command line to the tokenizer. A
// CR is held back until the next byte shows it does not end the line;
// false means the quotes do not balance.
func (c *Conn) inlineByte(b byte) bool {
	if c.cr {
		c.cr = false
		if !c.token('\r') {
			return false
		}
	}
	if b == '\r' {
		c.cr = true
		return true
	}
	return c.token(b)
}

// token feeds one content byte of an inline line to a checker of redcon's
// inline syntax (redcon.go readCommands): arguments are separated by spaces;
// a "double" or 'single' quote may only open a token, a backslash inside
// quotes escapes the next byte, a closing quote must be followed by a space or
// the end of the line, and a quote must be closed by the end of the line.
// Redis' sdssplitargs also allows a quote inside a token (a"b" is ab); redcon
// rejects it with the same message Redis uses for bad quoting. It reports
// false on a violation.
func (c *Conn) token(b byte) bool {
	if c.closedQ {
		if b != ' ' {
			return false
		}
		c.closedQ = false
		c.atStart = true
		return true
	}
	if c.quote != 0 {
		switch {
		case c.esc:
			c.esc = false
		case b == '\\':
			c.esc = true
		case b == c.quote:
			c.quote = 0
			c.closedQ = true
		}
		return true
	}
	switch b {
	case ' ':
		c.atStart = true
	case '"', '\'':
		if !c.atStart {
			return false
		}
		c.quote = b
		c.atStart = false
	default:
		c.atStart = false
	}
	return true
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// SetReadDeadline sets the wrapped conn's read deadline and remembers it.
// While a WatchClose watcher runs, the deadline is only remembered and is
// applied when the watcher is stopped.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.rdl = t
	if c.watching {
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline sets both deadlines, with SetReadDeadline's rule for the read
// deadline while a watcher runs.
func (c *Conn) SetDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.rdl = t
	if c.watching {
		return c.Conn.SetWriteDeadline(t)
	}
	return c.Conn.SetDeadline(t)
}

// Closed returns a channel that is closed once a read of the wrapped conn
// (by Read or by the WatchClose watcher) fails with anything but a timeout:
// the peer closed or reset the connection, or it was closed locally. A
// half-close by the client (shutdown of its write side) counts, as it does in
// Redis, which frees a client whose read returns 0.
func (c *Conn) Closed() <-chan struct{} { return c.closedCh }

func (c *Conn) markClosed() { c.closeOnce.Do(func() { close(c.closedCh) }) }

func (c *Conn) isClosed() bool {
	select {
	case <-c.closedCh:
		return true
	default:
		return false
	}
}

// WatchClose lets a handler notice that its client went away while the
// handler blocks (a redcon handler runs on the connection's reading
// goroutine, so nobody reads the socket meanwhile). It starts a goroutine
// that reads the wrapped conn into the Conn's pending buffer; bytes read
// there are returned, validated, by later Reads. When that read fails (EOF,
// reset), Closed() is closed and the goroutine ends. The goroutine also ends,
// without detecting anything further, once 64 KiB are buffered: then TCP
// flow control pushes back on the client.
//
// stop interrupts the watcher (read deadline in the past, wait for the
// goroutine, then restore the read deadline last set through the Conn, none
// by default) and reports whether the peer closed. stop may be called more
// than once; later calls return the first result.
//
// Only one of Read or the watcher may run at a time: call Read only after
// stop has returned, and do not call WatchClose again before that (it
// panics). WatchClose clears the read deadline for the watch; deadlines set
// through the Conn during the watch take effect at stop. Typical use inside a
// redcon handler:
//
//	gc := conn.NetConn().(*resp.Conn)
//	stop := gc.WatchClose()
//	select {
//	case r := <-result:
//	case <-gc.Closed(): // client gone: cancel the upstream call
//	}
//	stop()
func (c *Conn) WatchClose() (stop func() bool) {
	c.wmu.Lock()
	if c.watching {
		c.wmu.Unlock()
		panic("resp: WatchClose called while a watch is active")
	}
	c.watching = true
	c.stopping = false
	c.Conn.SetReadDeadline(time.Time{})
	c.wmu.Unlock()

	done := make(chan struct{})
	if c.rerr != nil || c.perr != nil {
		close(done)
	} else {
		go c.watch(done)
	}
	var once sync.Once
	var closed bool
	return func() bool {
		once.Do(func() {
			c.wmu.Lock()
			c.stopping = true
			c.Conn.SetReadDeadline(time.Unix(1, 0))
			c.wmu.Unlock()
			<-done
			c.wmu.Lock()
			c.watching = false
			c.stopping = false
			c.Conn.SetReadDeadline(c.rdl)
			c.wmu.Unlock()
			closed = c.isClosed()
		})
		return closed
	}
}

func (c *Conn) watch(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 4096)
	for len(c.pbuf)-c.pend < maxWatchBuffer {
		n, err := c.Conn.Read(buf)
		if n > 0 {
			c.pbuf = append(c.pbuf, buf[:n]...)
		}
		if err != nil {
			if !isTimeout(err) {
				c.rerr = err
				c.markClosed()
			}
			// A timeout is stop's deadline (the watch cleared any other).
			return
		}
	}
}
