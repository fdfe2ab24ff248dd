package server

import (
	"bytes"
	"time"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// blocking runs a command that may block (BLPOP, WAIT, XREAD BLOCK, ...) on
// the pinned connection, alone and with no read deadline, so "BLPOP q 0"
// waits as long as on Redis. The client's socket is watched meanwhile: a
// client that leaves (or shuts its write side, as Redis counts it) has the
// pinned connection closed, which makes Redis free that client, so the
// command ends without taking an element nobody will read, and nothing
// the client sent after it runs. On a cluster the connection is to the
// key's primary, and a redirect (the slot moved before or while the
// command blocked) sends it again where the redirect says, with what is
// left of its timeout (clusterpin.go: blockRedirect).
func (c *session) blocking(cmd *router.Command) {
	if !c.pinUpAt(1, c.clusterSlot(cmd)) {
		return
	}
	p := c.pin
	// Written first: a command another client sends after this one must
	// reach Redis after it, as it would have directly.
	p.req = resp.AppendCommand(p.req[:0], cmd.Args)
	c.s.conflicts.noteWrites([]router.Command{*cmd})
	c.blocked = true
	c.publish()
	c.s.counts.blocked.Add(1)
	defer c.s.counts.blocked.Add(-1)
	start := time.Now()
	for hops := 0; ; hops++ {
		left, err := c.blockOnce(p.req)
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
		if len(p.buf) > 0 && p.buf[0] == '-' {
			if req := c.blockRedirect(cmd, p.buf, start, hops); req != nil {
				p.req = append(p.req[:0], req...)
				c.blocked = true
				continue
			}
		}
		break
	}
	c.send(p.buf)
	c.maybeUnpin()
}

// blockOnce writes req on the pinned connection and reads the blocking
// command's reply into p.buf (after ASKING's +OK when req starts with
// one); left reports that the client went away meanwhile.
func (c *session) blockOnce(req []byte) (left bool, err error) {
	p := c.pin
	err = p.conn.Write(req)
	c.sent() // Redis has it: the next client's commands may follow
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
	if err == nil && bytes.HasPrefix(req, askingReq) {
		p.buf, err = p.conn.ReadReply(p.buf[:0])
	}
	if err == nil {
		p.buf, err = p.conn.ReadReply(p.buf[:0])
	}
	close(done)
	left = stop != nil && stop()
	return left, err
}

// askingReq is ASKING as it starts a request.
var askingReq = resp.AppendCommand(nil, [][]byte{[]byte("ASKING")})
