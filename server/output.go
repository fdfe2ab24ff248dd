package server

import (
	"net"

	"github.com/tidwall/redcon"
)

// flushAt is how many reply bytes a session gathers before it writes them
// to the client without waiting for the rest of the batch, so that a large
// pipelined reply streams instead of piling up in the proxy.
const flushAt = 64 << 10

// output is a session's reply buffer in front of the client's socket
// (redcon's own writer stays empty): replies are gathered and written when
// the batch is answered (flush) or as soon as they pass flushAt bytes. A
// write blocks while the client does not read; what Redis sends for the
// client meanwhile waits in its upstream.Call, bounded by the output limit
// (forwardShared), never in the proxy's shared connections.
type output struct {
	conn redcon.Conn // Close goes through redcon, which then drops the client
	nc   net.Conn
	b    []byte
	err  error
}

func newOutput(conn redcon.Conn) writer {
	nc := conn.NetConn()
	if nc == nil {
		return conn
	}
	return &output{conn: conn, nc: nc}
}

// WriteRaw queues p for the client, writing once flushAt bytes are queued.
func (o *output) WriteRaw(p []byte) {
	if o.err != nil {
		return
	}
	if len(o.b)+len(p) < flushAt {
		o.b = append(o.b, p...)
		return
	}
	if len(p) < flushAt {
		o.b = append(o.b, p...)
		o.flush()
		return
	}
	// A large reply goes out as it is, after what was queued before it.
	if o.flush(); o.err == nil {
		_, o.err = o.nc.Write(p)
	}
}

// flush writes what is queued.
func (o *output) flush() {
	if len(o.b) == 0 || o.err != nil {
		return
	}
	_, o.err = o.nc.Write(o.b)
	if cap(o.b) > 1<<20 {
		o.b = nil // do not keep a large batch's buffer for the client's life
	} else {
		o.b = o.b[:0]
	}
}

// Close writes what is queued and closes the client's connection.
func (o *output) Close() error {
	o.flush()
	return o.conn.Close()
}

// stream is the shared path's upstream.Call.Stream: replies of a large
// pipelined batch go to the client as they come.
func (c *session) stream(b []byte) { c.w.WriteRaw(b) }
