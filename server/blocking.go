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
	p.req = p.req[:0]
	if (cmd.ID == router.CmdWait || cmd.ID == router.CmdWaitaof) && c.s.up.Cluster() == nil {
		p.req = append(p.req, waitMarkReq...)
	}
	p.req = resp.AppendCommand(p.req, cmd.Args)
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
			c.quit.Store(true)
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
// command's reply into p.buf (after ASKING's +OK or waitMarkReq's reply
// when req starts with one); left reports that the client went away
// meanwhile.
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
	if err == nil && (bytes.HasPrefix(req, askingReq) || bytes.HasPrefix(req, waitMarkReq)) {
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

// waitMarkReq goes before a WAIT or WAITAOF on the pinned connection.
// Redis counts the replicas (or fsyncs) that have the connection's own
// last write, and the client's writes went on other connections (the
// shared ones, a policy's, an earlier pin): a pinned connection that has
// written nothing, or less recently, answers at once with replicas that
// do not hold them. SPUBLISH is a write as WAIT counts them (Redis
// propagates it to replicas outside a cluster) and changes no key; its
// shard channel reaches only a client that SSUBSCRIBEs to this very
// name, never a pattern. Its reply (or error, as on a Redis before 7.0
// or for an upstream user without the channel) is read and dropped.
var waitMarkReq = resp.AppendCommand(nil, [][]byte{[]byte("SPUBLISH"), []byte(router.ReservedPrefix + "wait"), nil})
