package server

import (
	"time"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// forwardShared sends cmds on the shared multiplexed upstream as one
// pipeline and writes the replies back in order.
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
	cl := c.call
	cl.Reset()
	for i := range cmds {
		cl.Add(cmds[i].Args)
	}
	c.s.up.Shared(c.proto).Do(cl, uint32(c.id))
	if c.reply == replyOn && !listsKeys(cmds) {
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
