package upstream

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Conn is an upstream connection of one session's own (a pinned
// connection): taken for WATCH/MULTI, SELECT of another database, AUTH as
// another user, blocking commands, pub/sub, MONITOR and CLIENT TRACKING,
// and carrying the client's commands and Redis' replies as they are, so
// every piece of connection state lives where Redis keeps it. It is not
// safe for concurrent use: one goroutine writes, one reads.
type Conn struct {
	nc    net.Conn
	br    *bufio.Reader
	proto int
	id    atomic.Int64 // Redis' CLIENT ID of the connection, 0 until known
	u     *Upstream
	// addr is the cluster node the connection is to (TakeAt); "" for the
	// upstream's own address.
	addr string
	// closed is set once Close ran.
	closed atomic.Bool
}

// errUnexpected: the upstream sent a reply nobody asked for.
var errUnexpected = errors.New("unexpected reply from upstream")

// dial connects to the upstream and sets the connection up in one round
// trip: HELLO proto [AUTH user password] (whose reply gives the
// connection's id), then SELECT db when it is not 0. A RESP2 connection
// without a password in database 0 needs none of it, and gets no command
// at all: a client's connection through the proxy shows in Redis' SLOWLOG
// and MONITOR exactly what the client sent. Its id is then learnt when
// needed (Conn.ID).
func dial(cfg config.Upstream, tc *tls.Config, proto int, user, password string) (net.Conn, *bufio.Reader, int64, error) {
	timeout := time.Duration(cfg.DialTimeout)
	var nc net.Conn
	var err error
	if tc != nil {
		nc, err = tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", cfg.Addr, tc)
	} else {
		nc, err = net.DialTimeout("tcp", cfg.Addr, timeout)
	}
	if err != nil {
		return nil, nil, 0, err
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	if proto == 2 && password == "" && cfg.DB == 0 {
		return nc, br, 0, nil
	}
	id, err := handshake(nc, br, cfg, proto, user, password, false)
	if err != nil {
		nc.Close()
		return nil, nil, 0, err
	}
	return nc, br, id, nil
}

// handshake sends [RESET] HELLO proto [AUTH user password] [SELECT db] and
// checks every reply; it returns the connection's id from HELLO's reply.
func handshake(nc net.Conn, br *bufio.Reader, cfg config.Upstream, proto int, user, password string, reset bool) (int64, error) {
	var req []byte
	if reset {
		req = resp.AppendCommand(req, strArgs("RESET"))
	}
	hello := strArgs("HELLO", strconv.Itoa(proto))
	if password != "" {
		if user == "" {
			user = "default"
		}
		hello = append(hello, strArgs("AUTH", user, password)...)
	}
	req = resp.AppendCommand(req, hello)
	if cfg.DB != 0 {
		req = resp.AppendCommand(req, strArgs("SELECT", strconv.Itoa(cfg.DB)))
	}
	timeout := time.Duration(cfg.DialTimeout)
	nc.SetDeadline(time.Now().Add(timeout))
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(req); err != nil {
		return 0, err
	}
	if reset {
		reply, err := resp.AppendReply(nil, br)
		if err != nil {
			return 0, err
		}
		if string(reply) != "+RESET\r\n" {
			return 0, errors.New("upstream RESET: " + oneLine(reply))
		}
	}
	reply, err := resp.AppendReply(nil, br)
	if err != nil {
		return 0, err
	}
	if reply[0] == '-' {
		return 0, errors.New("upstream handshake: " + oneLine(reply[1:]))
	}
	id := helloID(reply)
	if cfg.DB != 0 {
		reply, err := resp.AppendReply(nil, br)
		if err != nil {
			return 0, err
		}
		if string(reply) != "+OK\r\n" {
			return 0, errors.New("upstream SELECT: " + oneLine(reply))
		}
	}
	return id, nil
}

// helloID finds the "id" field's integer in a raw HELLO reply (a map in
// RESP3, a flat array in RESP2: "$2\r\nid\r\n:<n>\r\n").
func helloID(reply []byte) int64 {
	const field = "$2\r\nid\r\n:"
	i := bytes.Index(reply, []byte(field))
	if i < 0 {
		return 0
	}
	rest := reply[i+len(field):]
	j := bytes.IndexByte(rest, '\r')
	if j < 0 {
		return 0
	}
	n, _ := strconv.ParseInt(string(rest[:j]), 10, 64)
	return n
}

func oneLine(b []byte) string { return string(bytes.TrimRight(b, "\r\n")) }

func strArgs(args ...string) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = []byte(a)
	}
	return out
}

// ID is Redis' CLIENT ID of the connection. When the handshake did not
// tell it, it is looked up once in CLIENT LIST (on another connection, so
// it works while this one blocks or is subscribed), by the connection's
// address; 0 if Redis cannot be asked. Safe for concurrent use.
func (c *Conn) ID() int64 {
	if id := c.id.Load(); id != 0 {
		return id
	}
	var id int64
	if c.addr != "" {
		id = c.u.lookupIDAt(c.addr, c.nc.LocalAddr().String()) // ids are per cluster node
	} else {
		id = c.u.lookupID(c.nc.LocalAddr().String())
	}
	c.id.CompareAndSwap(0, id)
	return c.id.Load()
}

// Addr is the cluster node the connection is to, "" outside
// upstream.mode cluster.
func (c *Conn) Addr() string { return c.addr }

// Proto is the RESP version the connection speaks.
func (c *Conn) Proto() int { return c.proto }

// SetProto records that a HELLO sent on the connection switched its
// protocol.
func (c *Conn) SetProto(proto int) { c.proto = proto }

// Write sends b, a whole number of encoded commands.
func (c *Conn) Write(b []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(c.u.timeout))
	_, err := c.nc.Write(b)
	return err
}

// ReadReply appends the next complete reply (or push) to dst.
func (c *Conn) ReadReply(dst []byte) ([]byte, error) { return resp.AppendReply(dst, c.br) }

// Buffered reports whether a whole or partial reply is already read from
// the socket and waiting.
func (c *Conn) Buffered() bool { return c.br.Buffered() > 0 }

// SetReadDeadline bounds the next reads; the zero time waits forever (a
// blocking command, a subscriber).
func (c *Conn) SetReadDeadline(t time.Time) { c.nc.SetReadDeadline(t) }

// Timeout is the configured bound of one non-blocking round trip.
func (c *Conn) Timeout() time.Duration { return c.u.timeout }

// Close closes the connection; Redis drops its MULTI, WATCH,
// subscriptions and the rest of its state.
func (c *Conn) Close() {
	if c.closed.CompareAndSwap(false, true) {
		c.nc.Close()
		c.u.open.Add(-1)
		if c.u.sentinel != nil {
			c.u.sentinel.forget(c)
		}
	}
}
