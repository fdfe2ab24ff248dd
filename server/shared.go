package server

import (
	"time"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// forwardShared sends cmds on the shared multiplexed upstream as one
// pipeline and writes the replies back in order. A long pipeline goes in
// windows (see window), so that a client whose replies are large cannot
// put more of them on the shared connections than it reads.
func (c *session) forwardShared(cmds []router.Command) {
	if cl := c.s.up.Cluster(); cl != nil {
		c.forwardCluster(cl, cmds)
		return
	}
	if c.s.metrics != nil {
		defer c.observe(admin.ClassPassthrough, time.Now())
	}
	c.s.conflicts.noteWrites(cmds)
	if c.call == nil {
		c.call = upstream.NewCall()
	}
	if c.window == 0 {
		c.window = windowStart
	}
	for len(cmds) > 0 && !c.quit.Load() {
		n := min(len(cmds), c.window)
		c.forwardWindow(cmds[:n])
		cmds = cmds[n:]
	}
}

// Pipeline windows on the shared path: a session starts at windowStart
// commands per round trip; a window whose replies average under
// windowSmall bytes doubles it (up to windowMax), a larger average shrinks
// it to about windowBytes of replies. Small replies thus go as one
// pipeline, as the client sent them.
const (
	windowStart = 16
	windowMax   = 1 << 14
	windowSmall = 4 << 10
	windowBytes = 1 << 20
)

// forwardWindow carries one window of forwardShared.
func (c *session) forwardWindow(cmds []router.Command) {
	cl := c.call
	cl.Reset()
	for i := range cmds {
		cl.Add(cmds[i].Args)
	}
	raw := c.reply == replyOn && !listsKeys(cmds)
	if lim := c.s.live.Load().Limits.MaxOutputBytes; lim > 0 {
		cl.Limit, cl.Overflow = int(lim), c.onOverflow
	}
	if raw && len(cmds) > 1 {
		cl.Stream = c.onStream // a large pipelined reply streams
	}
	if c.ticket {
		cl.Queued = c.onQueued // the next client's commands may follow
	}
	c.s.up.Shared(c.proto).Do(cl, uint32(c.id))
	if cl.Err == upstream.ErrOutputLimit {
		c.outputLimit()
		return
	}
	if len(cmds) == c.window && cl.Got == len(cmds) {
		if avg := cl.Size / len(cmds); avg < windowSmall {
			c.window = min(2*c.window, windowMax)
		} else {
			c.window = max(1, windowBytes/avg)
		}
	} else if cl.Got > 0 && cl.Size/cl.Got >= windowSmall {
		c.window = max(1, min(c.window, windowBytes/(cl.Size/cl.Got)))
	}
	if raw {
		c.w.WriteRaw(cl.Out) // the common case: all replies in one write
	} else {
		for i := range cl.Got {
			c.send(c.hideReserved(&cmds[i], cl.Reply(i)))
		}
	}
	for i := cl.Got; i < len(cmds); i++ {
		c.s.counts.upErrors.Add(1)
		c.sendError(upstreamError(cl.Err))
	}
}

// outputLimit closes the client: the replies it did not read passed
// limits.max_output_bytes. Redis logs the same event as "scheduled to be
// closed ASAP for overcoming of output buffer limits".
func (c *session) outputLimit() {
	c.s.counts.outputLimit.Add(1)
	c.s.log.Warn("client closed for overcoming of output buffer limits (limits.max_output_bytes)",
		"client", c.id, "addr", c.client.addr, "limit", c.s.live.Load().Limits.MaxOutputBytes)
	c.quit.Store(true)
	c.w.Close()
}

// listsKeys reports whether a command of cmds lists keys it does not name
// (KEYS, SCAN, RANDOMKEY), whose reply may need the proxy's own keys
// hidden.
func listsKeys(cmds []router.Command) bool {
	for i := range cmds {
		switch cmds[i].ID {
		case router.CmdKeys, router.CmdScan, router.CmdRandomkey:
			return true
		}
	}
	return false
}

// forwardOwn sends a command the proxy built (args) where the session's
// commands go, and its reply to the client.
func (c *session) forwardOwn(args [][]byte) {
	var cmd router.Command
	router.Classify(&cmd, args, nil)
	if c.pin != nil {
		c.forwardPinned([]router.Command{cmd})
		return
	}
	c.forwardShared([]router.Command{cmd})
}
