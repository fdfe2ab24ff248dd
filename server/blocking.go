package server

import (
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// blocking runs a command that may block (BLPOP, WAIT, XREAD BLOCK, ...) on
// the pinned connection, alone and with no read deadline, so "BLPOP q 0"
// waits as long as on Redis. The client's socket is watched meanwhile: a
// client that leaves (or shuts its write side, as Redis counts it) has the
// pinned connection closed, which makes Redis free that client, so the
// command ends without taking an element nobody will read, and nothing
// the client sent after it runs.
func (c *session) blocking(cmd *router.Command) {
	if !c.pinUp(1) {
		return
	}
	p := c.pin
	// Written first: a command another client sends after this one must
	// reach Redis after it, as it would have directly.
	p.req = resp.AppendCommand(p.req[:0], cmd.Args)
	err := p.conn.Write(p.req)
	c.sent()
	c.s.conflicts.noteWrites([]router.Command{*cmd})
	c.blocked = true
	c.publish()
	c.s.counts.blocked.Add(1)
	defer c.s.counts.blocked.Add(-1)

	var stop func() bool
	done := make(chan struct{})
	if gc, ok := c.conn.NetConn().(*resp.Conn); ok {
		stop = gc.WatchClose()
		conn := p.conn
		go func() {
			select {
			case <-gc.Closed():
				conn.Close()
			case <-done:
			}
		}()
	}
	if err == nil {
		p.buf, err = p.conn.ReadReply(p.buf[:0])
	}
	close(done)
	left := stop != nil && stop()
	c.blocked = false
	if left {
		c.discardPin()
		c.quit = true
		c.w.Close()
		return
	}
	if err != nil {
		c.pinLost(err)
		return
	}
	c.send(p.buf)
	c.maybeUnpin()
}
