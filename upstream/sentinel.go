package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// sentinel follows the primary that Redis Sentinel names (upstream.mode
// sentinel): it asks the sentinels for the address
// (SENTINEL get-master-addr-by-name), stays subscribed to +switch-master
// and +promoted-slave (the earlier of the two) on one of them, and asks again every pollEvery and whenever it loses
// that subscription, so a missed message or a sentinel that went away
// costs at most that long. On a new address the multiplexers drain (the
// calls in flight fail, the next ones dial the new primary) and every
// pinned connection to the old primary is closed, which ends its
// session with the error its client sees when the proxy closes it.
//
// The route layer's go-redis client dials through dialPrimary, so it
// follows the same primary at the same moment (go-redis' FailoverClient
// would follow +switch-master only, seconds after the promotion, and
// write to the old primary meanwhile).
type sentinel struct {
	u    *Upstream
	cfg  config.Upstream
	stop chan struct{}
	done chan struct{}

	asking atomic.Bool // lost is asking the sentinels

	mu   sync.Mutex
	addr string // the current primary, "" until known
	// held is the primary a failover under way replaces: polls that still
	// name it are ignored until +switch-master or holdUntil.
	held      string
	holdUntil time.Time
	pins      map[*Conn]bool        // pinned connections open to it
	nets      map[*primaryConn]bool // go-redis' connections to it
	tracks    map[net.Conn]bool     // tracking connections to it (Track)
	changes   int64                 // switches seen
}

// failoverHold bounds how long polls naming the old primary are ignored
// after a failover began (until +switch-master, normally a few seconds;
// a failover that never completes lets the polls decide again).
const failoverHold = 60 * time.Second

// pollEvery is how often the sentinels are asked even without a message.
const pollEvery = 500 * time.Millisecond

func newSentinel(u *Upstream, cfg config.Upstream) *sentinel {
	s := &sentinel{u: u, cfg: cfg, stop: make(chan struct{}), done: make(chan struct{}), pins: map[*Conn]bool{}, nets: map[*primaryConn]bool{}, tracks: map[net.Conn]bool{}}
	if addr, err := s.ask(); err == nil {
		s.addr = addr
	}
	return s
}

// primary is the current primary's address ("" while unknown).
func (s *sentinel) primary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// errNoPrimary: no sentinel has named the primary yet.
var errNoPrimary = errors.New("upstream sentinel: no sentinel named the primary yet")

// errSwitched fails the calls in flight to a primary Sentinel replaced.
var errSwitched = errors.New("upstream sentinel: the primary changed (failover); retry")

// ask asks each sentinel in turn for the primary's address.
func (s *sentinel) ask() (string, error) {
	var lastErr error = errNoPrimary
	for _, a := range s.cfg.Addrs {
		nc, br, err := s.dialSentinel(a)
		if err != nil {
			lastErr = err
			continue
		}
		nc.SetDeadline(time.Now().Add(time.Duration(s.cfg.DialTimeout)))
		_, err = nc.Write(resp.AppendCommand(nil, strArgs("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.cfg.MasterName)))
		var reply []byte
		if err == nil {
			reply, err = resp.AppendReply(nil, br)
		}
		nc.Close()
		if err != nil {
			lastErr = err
			continue
		}
		parts, ok := resp.Elements(reply)
		if !ok || len(parts) != 2 {
			lastErr = errors.New("upstream sentinel: " + a + " does not know master " + s.cfg.MasterName + ": " + oneLine(reply))
			continue
		}
		return net.JoinHostPort(scalar(parts[0]), scalar(parts[1])), nil
	}
	return "", lastErr
}

func (s *sentinel) dialSentinel(addr string) (net.Conn, *bufio.Reader, error) {
	nc, err := net.DialTimeout("tcp", addr, time.Duration(s.cfg.DialTimeout))
	if err != nil {
		return nil, nil, err
	}
	return nc, bufio.NewReader(nc), nil
}

// run follows the primary until close.
func (s *sentinel) run() {
	defer close(s.done)
	for i := 0; ; i++ {
		select {
		case <-s.stop:
			return
		default:
		}
		s.watch(s.cfg.Addrs[i%len(s.cfg.Addrs)])
		select {
		case <-s.stop:
			return
		case <-time.After(pollEvery):
		}
	}
}

// watch subscribes to +switch-master on the sentinel at addr and follows
// what it says (and what polling the sentinels says) until the
// subscription breaks.
func (s *sentinel) watch(addr string) {
	s.check()
	nc, br, err := s.dialSentinel(addr)
	if err != nil {
		return
	}
	defer nc.Close()
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		select {
		case <-s.stop:
			nc.Close()
		case <-quit:
		}
	}()
	nc.SetDeadline(time.Now().Add(time.Duration(s.cfg.DialTimeout)))
	if _, err := nc.Write(resp.AppendCommand(nil, strArgs("SUBSCRIBE", "+switch-master", "+promoted-slave", "+failover-state-send-slaveof-noone"))); err != nil {
		return
	}
	for range 3 {
		if _, err := resp.AppendReply(nil, br); err != nil {
			return
		}
	}
	for {
		nc.SetReadDeadline(time.Now().Add(pollEvery))
		msg, err := resp.AppendReply(nil, br)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && br.Buffered() == 0 {
				s.check()
				continue
			}
			return
		}
		parts, ok := resp.Elements(msg)
		if !ok || len(parts) != 3 || scalar(parts[0]) != "message" {
			continue
		}
		f := strings.Fields(scalar(parts[2]))
		switch scalar(parts[1]) {
		case "+switch-master":
			// "<name> <old-ip> <old-port> <new-ip> <new-port>": the
			// failover is over.
			if len(f) == 5 && f[0] == s.cfg.MasterName {
				s.mu.Lock()
				s.held = "" // polls name the new primary from now on
				s.mu.Unlock()
				s.switchTo(net.JoinHostPort(f[3], f[4]))
			}
		case "+failover-state-send-slaveof-noone", "+promoted-slave":
			// "slave <ip:port> <ip> <port> @ <name> <old-ip> <old-port>":
			// the sentinel is about to promote the replica (REPLICAOF NO
			// ONE), or sees it promoted. Writes go to it from now on, not
			// to the old primary, whose writes after the promotion the
			// new one never gets (asynchronous replication): a write the
			// replica refuses for a few milliseconds (-READONLY) is not
			// acknowledged, one the old primary took would be lost. The
			// sentinels go on naming the old primary until the promotion
			// is seen; polls do not switch back meanwhile.
			if len(f) == 8 && f[0] == "slave" && f[5] == s.cfg.MasterName {
				s.mu.Lock()
				s.holdUntil = time.Now().Add(failoverHold)
				s.held = net.JoinHostPort(f[6], f[7])
				s.mu.Unlock()
				s.switchTo(net.JoinHostPort(f[2], f[3]))
			}
		}
	}
}

// check asks the sentinels and switches if they name another primary
// (unless they still name the one a failover under way replaces).
func (s *sentinel) check() {
	addr, err := s.ask()
	if err != nil {
		return
	}
	s.mu.Lock()
	hold := addr == s.held && time.Now().Before(s.holdUntil)
	s.mu.Unlock()
	if !hold {
		s.switchTo(addr)
	}
}

// lost is called when a connection to the primary failed: the sentinels
// are asked at once rather than at the next poll (one asking at a time).
func (s *sentinel) lost() {
	if s.asking.CompareAndSwap(false, true) {
		go func() {
			defer s.asking.Store(false)
			s.check()
		}()
	}
}

// switchTo makes addr the primary: the multiplexers redial there, the
// pinned connections to the old one are closed.
func (s *sentinel) switchTo(addr string) {
	s.mu.Lock()
	if addr == s.addr {
		s.mu.Unlock()
		return
	}
	s.addr = addr
	s.changes++
	pins, nets, tracks := s.pins, s.nets, s.tracks
	s.pins, s.nets, s.tracks = map[*Conn]bool{}, map[*primaryConn]bool{}, map[net.Conn]bool{}
	s.mu.Unlock()
	for c := range nets {
		c.Conn.Close() // go-redis finds it broken and dials the new primary
	}
	for nc := range tracks {
		nc.Close() // Track purges the tiers and tracks on the new primary
	}
	for i := range s.u.mux {
		s.u.mux[i].retarget(addr)
		s.u.own[i].retarget(addr)
	}
	for c := range pins {
		c.Close()
	}
}

// track notes a pinned connection to the current primary; false when
// addr is no longer it (the caller closes the connection).
func (s *sentinel) track(c *Conn, addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if addr != s.addr {
		return false
	}
	s.pins[c] = true
	return true
}

// follow notes the tracking connection nc to addr, closed when the
// primary changes (the old one no longer sees the writes); false when
// addr is no longer the primary (the caller closes nc).
func (s *sentinel) follow(nc net.Conn, addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if addr != s.addr {
		return false
	}
	s.tracks[nc] = true
	return true
}

func (s *sentinel) unfollow(nc net.Conn) {
	s.mu.Lock()
	delete(s.tracks, nc)
	s.mu.Unlock()
}

func (s *sentinel) forget(c *Conn) {
	s.mu.Lock()
	delete(s.pins, c)
	s.mu.Unlock()
}

// dialPrimary is the go-redis client's Dialer: a connection to the
// current primary, closed when the primary changes (switchTo), so that
// the route layer's fills, scripts and streams never write to a primary
// Sentinel is replacing (writes it acknowledged after the promotion would
// be lost with it).
func (s *sentinel) dialPrimary(ctx context.Context, _, _ string) (net.Conn, error) {
	s.mu.Lock()
	addr, gen := s.addr, s.changes
	s.mu.Unlock()
	if addr == "" {
		s.lost()
		return nil, errNoPrimary
	}
	d := net.Dialer{Timeout: time.Duration(s.cfg.DialTimeout)}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		s.lost()
		return nil, err
	}
	if s.u.tls != nil {
		tc := tls.Client(nc, s.u.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	gc := &primaryConn{Conn: nc, s: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.changes {
		nc.Close()
		return nil, errSwitched
	}
	s.nets[gc] = true
	return gc, nil
}

// primaryConn is a go-redis connection to the primary (dialPrimary).
type primaryConn struct {
	net.Conn
	s *sentinel
}

func (c *primaryConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.nets, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// Switches is how many times Sentinel's primary changed since start.
func (s *sentinel) switches() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changes
}

func (s *sentinel) close() {
	close(s.stop)
	<-s.done
}

// retarget points every connection of m at addr: each open one is closed
// (its calls in flight fail with errSwitched) and the next call dials
// addr.
func (m *Mux) retarget(addr string) {
	for _, c := range m.conns {
		c.mu.Lock()
		c.cfg.Addr = addr
		if c.nc != nil {
			c.failLocked(c.nc, errSwitched)
		}
		c.mu.Unlock()
	}
}
