package server

import (
	"strconv"
	"time"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// Pinned sessions on a Redis Cluster (upstream.mode cluster). A session's
// own connection is to the primary of the slot of its first command with
// keys (WATCH's, or the first queued in MULTI); a MULTI that began before
// any key moves, with what it queued, to the right primary when its first
// key comes. Inside MULTI a key of another slot is refused with Redis'
// -CROSSSLOT and the transaction flagged (EXEC answers -EXECABORT); a
// redirect on the session's connection (its slot moved meanwhile) becomes
// a retryable -TRYAGAIN, never a bare -MOVED. Outside MULTI, a command
// about a slot of another primary takes the shared path.

// clusterSlot is the slot of cmd's keys (or shard channels); AnySlot
// without any, or outside upstream.mode cluster.
func (c *session) clusterSlot(cmd *router.Command) int {
	if c.s.up.Cluster() == nil {
		return upstream.AnySlot
	}
	slot, _ := c.slotOf(cmd)
	return slot
}

// slotOf is the slot of cmd's first key (or shard channel), and whether
// its keys span several slots.
func (c *session) slotOf(cmd *router.Command) (slot int, cross bool) {
	var buf [8]int
	pos := cmd.SlotArgs(buf[:0])
	if len(pos) == 0 {
		return upstream.AnySlot, false
	}
	slot = upstream.Slot(cmd.Args[pos[0]])
	for _, k := range pos[1:] {
		if upstream.Slot(cmd.Args[k]) != slot {
			return slot, true
		}
	}
	return slot, false
}

// What forwardPinnedCluster does with one command.
type pinAction uint8

const (
	actPinned    pinAction = iota // on the pinned connection, as it is
	actBind                       // the same, and the connection is bound to the command's slot
	actRehome                     // the connection moves to the slot's primary first
	actShared                     // on the shared path (another primary, outside MULTI)
	actCrossSlot                  // refused: -CROSSSLOT (and the MULTI flagged)
)

// pinAction decides for cmd on the session's pinned connection.
func (c *session) pinAction(cl *upstream.Cluster, cmd *router.Command) (pinAction, int) {
	slot, cross := c.slotOf(cmd)
	if slot == upstream.AnySlot || cross {
		return actPinned, slot // Redis answers a command over several slots itself
	}
	p := c.pin
	if p.relay != nil {
		return actPinned, slot
	}
	if p.bound && slot != p.slot && (p.multi || cmd.ID == router.CmdWatch) {
		return actCrossSlot, slot
	}
	addr, err := cl.NodeAddr(slot)
	if err != nil {
		return actPinned, slot
	}
	here := addr == p.conn.Addr()
	if p.bound && slot == p.slot {
		if !here && !p.multi && !p.watch && !p.sticky {
			return actRehome, slot // the slot moved and nothing holds the session here
		}
		return actPinned, slot
	}
	switch {
	case p.multi || cmd.ID == router.CmdWatch:
		if p.bound {
			return actCrossSlot, slot
		}
		if here {
			return actBind, slot
		}
		if p.watch || p.sticky {
			return actPinned, slot // cannot move; Redis redirects, the client retries
		}
		return actRehome, slot
	case here:
		return actPinned, slot
	}
	return actShared, slot
}

// forwardPinnedCluster is forwardPinned on a cluster: runs of commands
// that go as they are on the pinned connection are pipelined; the others
// are carried one by one as pinAction says.
func (c *session) forwardPinnedCluster(cl *upstream.Cluster, cmds []router.Command) {
	for i := 0; i < len(cmds); {
		if c.quit.Load() {
			return
		}
		if c.pin == nil {
			slot := upstream.AnySlot
			for j := i; j < len(cmds) && slot == upstream.AnySlot; j++ {
				slot, _ = c.slotOf(&cmds[j])
			}
			if !c.pinUpAt(len(cmds)-i, slot) {
				return
			}
		}
		j := i
		for j < len(cmds) {
			if act, _ := c.pinAction(cl, &cmds[j]); act != actPinned {
				break
			}
			j++
			if cmds[j-1].ID == router.CmdMulti {
				break // what follows is decided inside the MULTI
			}
		}
		if j > i {
			c.forwardPinnedRun(cmds[i:j])
			i = j
			continue
		}
		act, slot := c.pinAction(cl, &cmds[i])
		switch act {
		case actShared:
			c.forwardCluster(cl, cmds[i:i+1])
		case actCrossSlot:
			if c.pin.multi {
				c.abortQueue(router.ErrCrossSlot)
			} else {
				c.sendError(router.ErrCrossSlot)
			}
		case actRehome:
			if !c.rehome(cl, slot) {
				return
			}
			c.forwardPinnedRun(cmds[i : i+1])
		case actBind:
			p := c.pin
			p.slot, p.bound, p.replay, p.replayN = slot, true, nil, 0
			c.forwardPinnedRun(cmds[i : i+1])
		}
		i++
	}
}

// placeRouted readies the session's pinned connection, inside MULTI, for
// cmd, a command on routed keys whose Redis keys the route layer named
// (their slot is their route's: policy/clusterkeys.go): bound to another
// slot, or over several, it is refused with -CROSSSLOT and the MULTI
// flagged; unbound, the connection is bound to cmd's slot, moved to its
// primary first if it is elsewhere. False when cmd is answered already.
// Outside upstream.mode cluster it does nothing.
func (c *session) placeRouted(cmd *router.Command) bool {
	cl := c.s.up.Cluster()
	if cl == nil {
		return true
	}
	slot, cross := c.slotOf(cmd)
	p := c.pin
	switch {
	case slot == upstream.AnySlot:
		return true
	case cross || p.bound && slot != p.slot:
		c.abortQueue(router.ErrCrossSlot)
		return false
	case p.bound:
		return true
	}
	if addr, err := cl.NodeAddr(slot); err == nil && addr != p.conn.Addr() {
		if p.watch || p.sticky {
			c.abortQueue(router.ErrCrossSlot) // held on its node: cannot move
			return false
		}
		if !c.rehome(cl, slot) {
			return false
		}
	}
	p.slot, p.bound, p.replay, p.replayN = slot, true, nil, 0
	return true
}

// noteReplay keeps what an unbound pinned connection was sent (cluster
// only), for rehome.
func (c *session) noteReplay(req []byte, n int) {
	if p := c.pin; !p.bound && c.s.up.Cluster() != nil {
		p.replay = append(p.replay, req...)
		p.replayN += n
	}
}

// rehome moves the session's pinned connection, unbound so far, to the
// primary of slot: what it was sent is sent again there (the MULTI and
// what it queued), the replies (given to the client already) discarded,
// and the old connection closed. False, with an error sent and the
// session's connection closed, if that fails.
func (c *session) rehome(cl *upstream.Cluster, slot int) bool {
	p := c.pin
	addr, err := cl.NodeAddr(slot)
	var cn *upstream.Conn
	if err == nil {
		cn, err = c.s.up.TakeAt(p.conn.Proto(), addr)
	}
	if err == nil && len(p.replay) > 0 {
		cn.SetReadDeadline(time.Now().Add(cn.Timeout()))
		err = cn.Write(p.replay)
		var buf []byte
		for n := 0; err == nil && n < p.replayN; n++ {
			buf, err = cn.ReadReply(buf[:0])
		}
		cn.SetReadDeadline(time.Time{})
		if err != nil {
			cn.Close()
		}
	}
	if err != nil {
		c.s.counts.upErrors.Add(1)
		c.sendError(upstreamError(err))
		c.pinLost(err)
		return false
	}
	cn.SetProto(p.conn.Proto())
	p.conn.Close()
	p.conn = cn
	p.slot, p.bound, p.replay, p.replayN = slot, true, nil, 0
	return true
}

// pinnedRedirect turns a -MOVED or -ASK on a pinned connection into a
// retryable -TRYAGAIN (the session's slot moved: its transaction cannot
// follow it) and has the topology read again; other errors pass.
func (c *session) pinnedRedirect(cl *upstream.Cluster, reply []byte) []byte {
	from := ""
	if c.pin != nil {
		from = c.pin.conn.Addr()
	}
	ask, addr, ok := cl.Redirected(reply, from)
	if !ok {
		return reply
	}
	if !ask {
		cl.Refresh(addr) // so that the retry finds the slot's new primary
	}
	msg := "TRYAGAIN the slot of the session's keys moved to another node (" + string(reply[1:len(reply)-2]) + "); retry"
	if c.pin != nil && c.pin.multi {
		msg = "TRYAGAIN the slot of the transaction's keys moved to another node (" + string(reply[1:len(reply)-2]) + "); retry the transaction"
	}
	return []byte("-" + msg + "\r\n")
}

// blockRedirect handles a redirect of a blocking command on a cluster
// (the slot moved before or while it blocked): on a pinned connection that
// holds nothing else, the command is sent again to the node the redirect
// names, with what is left of its timeout. It returns the connection's new
// request, or nil when the reply stands.
func (c *session) blockRedirect(cmd *router.Command, reply []byte, start time.Time, hops int) []byte {
	cl := c.s.up.Cluster()
	p := c.pin
	if cl == nil || p == nil || hops >= 5 || p.multi || p.watch || p.sticky || p.relay != nil {
		return nil
	}
	ask, addr, ok := cl.Redirected(reply, p.conn.Addr())
	if !ok {
		return nil
	}
	cn, err := c.s.up.TakeAt(p.conn.Proto(), addr)
	if err != nil {
		return nil
	}
	p.conn.Close()
	p.conn = cn
	args := cmd.Args
	if pos, millis, ok := cmd.BlockTimeout(); ok {
		args = append([][]byte(nil), cmd.Args...)
		args[pos] = remainingTimeout(cmd.Args[pos], millis, time.Since(start))
	}
	var req []byte
	if ask {
		req = resp.AppendCommand(req, [][]byte{[]byte("ASKING")})
	}
	return resp.AppendCommand(req, args)
}

// remainingTimeout is a blocking command's timeout argument less elapsed
// (0, forever, stays 0; an expired one becomes the smallest Redis takes).
func remainingTimeout(arg []byte, millis bool, elapsed time.Duration) []byte {
	if millis {
		ms, err := strconv.ParseInt(string(arg), 10, 64)
		if err != nil || ms == 0 {
			return arg
		}
		return strconv.AppendInt(nil, max(1, ms-elapsed.Milliseconds()), 10)
	}
	s, err := strconv.ParseFloat(string(arg), 64)
	if err != nil || s == 0 {
		return arg
	}
	return strconv.AppendFloat(nil, max(0.001, s-elapsed.Seconds()), 'f', 3, 64)
}
