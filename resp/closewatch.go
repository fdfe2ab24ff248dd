package resp

import (
	"sync"
	"time"
)

// maxWatchBuffer bounds what the WatchClose goroutine buffers.
const maxWatchBuffer = 64 << 10

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
		n, err := c.readConn(buf, nil) // not the reader: ReadState stays
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
