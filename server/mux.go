package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/tidwall/redcon"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// mux carries the shared path the way twemproxy does: many clients'
// commands travel on a few upstream connections, each one a single
// pipelined stream. A client's run of commands is written as one block
// (writes that arrive while another client's write is in flight are
// combined into the next one), and one reader goroutine per connection
// hands each reply, as the exact bytes Redis sent, to the call waiting for
// it. Replies arrive in the order requests were written, so per-client
// order is kept: a client waits for its replies before sending more.
//
// Only commands that leave no state on the connection may use it (see
// router): everything else runs on a pinned go-redis connection.
type mux struct {
	conns []*muxConn
}

func newMux(cfg config.Upstream, proto, n int, tc *tls.Config) *mux {
	m := &mux{conns: make([]*muxConn, n)}
	for i := range m.conns {
		m.conns[i] = &muxConn{cfg: cfg, proto: proto, tls: tc}
	}
	return m
}

// call is one client's run of commands in flight. A session reuses its
// call, so the steady state allocates nothing.
type call struct {
	want int           // replies expected
	got  int           // replies received
	out  []byte        // the replies' raw bytes, concatenated
	ends []int         // where each reply in out ends
	err  error         // set when the connection failed before all replies came
	done chan struct{} // receives once when got == want or err != nil
}

func newCall() *call { return &call{done: make(chan struct{}, 1)} }

// muxConn is one multiplexed upstream connection, dialled on first use and
// again after a failure.
type muxConn struct {
	cfg   config.Upstream
	proto int
	tls   *tls.Config // nil: plain TCP

	mu      sync.Mutex
	nc      net.Conn
	wbuf    []byte  // requests waiting to be written
	spare   []byte  // the other write buffer
	writing bool    // a goroutine is writing wbuf
	queue   []*call // calls awaiting replies, oldest first
	head    int     // index of the oldest call in queue
}

// do sends cmds and waits for all their replies in cl. On return either
// cl.got == len(cmds), or cl.err says why the rest never came.
func (c *muxConn) do(cl *call, cmds []redcon.Command) {
	cl.want, cl.got, cl.out, cl.ends, cl.err = len(cmds), 0, cl.out[:0], cl.ends[:0], nil
	c.mu.Lock()
	if c.nc == nil {
		if err := c.dialLocked(); err != nil {
			c.mu.Unlock()
			cl.err = err
			return
		}
	}
	for _, cmd := range cmds {
		c.wbuf = resp.AppendCommand(c.wbuf, cmd.Args)
	}
	if c.head == len(c.queue) {
		c.nc.SetReadDeadline(time.Now().Add(time.Duration(c.cfg.Timeout)))
	}
	c.queue = append(c.queue, cl)
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
	c.mu.Unlock()
	<-cl.done
}

// dialLocked connects and performs the handshake: AUTH (or HELLO 3 with
// AUTH) and SELECT, as go-redis does for its own connections.
func (c *muxConn) dialLocked() error {
	timeout := time.Duration(c.cfg.DialTimeout)
	var nc net.Conn
	var err error
	if c.tls != nil {
		nc, err = tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", c.cfg.Addr, c.tls)
	} else {
		nc, err = net.DialTimeout("tcp", c.cfg.Addr, timeout)
	}
	if err != nil {
		return err
	}
	var hs []byte
	n := 0
	user := c.cfg.Username
	if user == "" {
		user = "default"
	}
	switch {
	case c.proto == 3 && c.cfg.Password != "":
		hs = resp.AppendCommand(hs, strArgs("HELLO", "3", "AUTH", user, c.cfg.Password))
		n++
	case c.proto == 3:
		hs = resp.AppendCommand(hs, strArgs("HELLO", "3"))
		n++
	case c.cfg.Password != "":
		hs = resp.AppendCommand(hs, strArgs("AUTH", user, c.cfg.Password))
		n++
	}
	if c.cfg.DB != 0 {
		hs = resp.AppendCommand(hs, strArgs("SELECT", fmt.Sprint(c.cfg.DB)))
		n++
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	if n > 0 {
		nc.SetDeadline(time.Now().Add(timeout))
		if _, err := nc.Write(hs); err != nil {
			nc.Close()
			return err
		}
		for i := 0; i < n; i++ {
			reply, err := resp.AppendReply(nil, br)
			if err != nil {
				nc.Close()
				return err
			}
			if reply[0] == '-' {
				nc.Close()
				return errors.New("upstream handshake: " + string(reply[1:len(reply)-2]))
			}
		}
		nc.SetDeadline(time.Time{})
	}
	c.nc = nc
	go c.readLoop(nc, br)
	return nil
}

func strArgs(args ...string) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = []byte(a)
	}
	return out
}

// readLoop hands each reply on nc to the oldest waiting call.
func (c *muxConn) readLoop(nc net.Conn, br *bufio.Reader) {
	for {
		if _, err := br.Peek(1); err != nil {
			c.fail(nc, err)
			return
		}
		c.mu.Lock()
		if c.nc != nc || c.head == len(c.queue) {
			// An unsolicited reply (or a connection already failed):
			// the stream cannot be trusted any more.
			c.failLocked(nc, errors.New("unexpected reply from upstream"))
			c.mu.Unlock()
			return
		}
		cl := c.queue[c.head]
		c.mu.Unlock()
		out, err := resp.AppendReply(cl.out, br)
		if err != nil {
			c.fail(nc, err)
			return
		}
		cl.out = out
		cl.ends = append(cl.ends, len(out))
		cl.got++
		if cl.got < cl.want {
			continue
		}
		c.mu.Lock()
		c.queue[c.head] = nil
		c.head++
		if c.head == len(c.queue) {
			c.queue, c.head = c.queue[:0], 0
			nc.SetReadDeadline(time.Time{})
		} else {
			nc.SetReadDeadline(time.Now().Add(time.Duration(c.cfg.Timeout)))
		}
		c.mu.Unlock()
		cl.done <- struct{}{}
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
	nc.Close()
	c.nc = nil
	c.wbuf = c.wbuf[:0]
	for _, cl := range c.queue[c.head:] {
		cl.err = err
		cl.done <- struct{}{}
	}
	clear(c.queue)
	c.queue, c.head = c.queue[:0], 0
}

func (m *mux) close() {
	for _, c := range m.conns {
		c.mu.Lock()
		if c.nc != nil {
			c.failLocked(c.nc, context.Canceled)
		}
		c.mu.Unlock()
	}
}
