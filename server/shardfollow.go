package server

import (
	"time"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/upstream"
)

// followShard handles a sunsubscribe that Redis Cluster sent on its own:
// a node that loses a slot unsubscribes its clients from the slot's
// shard channels. When the relayed connection holds nothing but shard
// channels of that slot, the proxy moves it: it subscribes the channels
// on the slot's new primary (a connection of its own, following a
// -MOVED), swallowing both the unsubscribe and the new confirmations, so
// the client goes on receiving SPUBLISH with no gap but the move. It
// reports whether it took the frame; false (the client sees the
// unsubscribe, as Redis sent it) when the connection holds other
// subscriptions or the move fails. The caller holds c.mu, on the relay's
// reading goroutine.
func (r *relay) followShard(frame []byte) bool {
	c := r.c
	cl := c.s.up.Cluster()
	if cl == nil || r.monitor || c.pin == nil || c.pin.relay != r {
		return false
	}
	kind, rest, _ := firstBulk(frame)
	channel, _, ok := firstBulk2(rest)
	if kind != "sunsubscribe" || !ok || r.sub.Load() > 0 || r.psub.Load() > 0 {
		return false
	}
	slot := upstream.Slot([]byte(channel))
	for ch := range r.shards {
		if upstream.Slot([]byte(ch)) != slot {
			return false // the connection serves other slots' channels: it cannot move
		}
	}
	r.moved = append(r.moved, channel)
	if len(r.shards) > 0 {
		return true // more of the slot's unsubscribes follow
	}
	channels := r.moved
	r.moved = nil
	if !r.resubscribe(cl, slot, channels) {
		return false
	}
	return true
}

// resubscribe subscribes channels (all of slot) on slot's new primary and
// makes that connection the relay's.
func (r *relay) resubscribe(cl *upstream.Cluster, slot int, channels []string) bool {
	c := r.c
	cl.Refresh("")
	addr, err := cl.NodeAddr(slot)
	if err != nil {
		return false
	}
	args := [][]byte{[]byte("SSUBSCRIBE")}
	for _, ch := range channels {
		args = append(args, []byte(ch))
	}
	req := resp.AppendCommand(nil, args)
	for hop := 0; hop < 5; hop++ {
		conn, err := c.s.up.TakeAt(r.conn.Proto(), addr)
		if err != nil {
			return false
		}
		conn.SetReadDeadline(time.Now().Add(conn.Timeout()))
		err = conn.Write(req)
		var reply []byte
		if err == nil {
			reply, err = conn.ReadReply(nil)
		}
		if err != nil {
			conn.Close()
			return false
		}
		if reply[0] == '-' {
			conn.Close()
			if _, to, ok := cl.Redirected(reply, addr); ok {
				addr = to // the node asked did not know yet
				continue
			}
			return false
		}
		for i := 1; i < len(channels) && err == nil; i++ {
			reply, err = conn.ReadReply(reply[:0])
		}
		conn.SetReadDeadline(time.Time{})
		if err != nil {
			conn.Close()
			return false
		}
		for _, ch := range channels {
			r.shards[ch] = struct{}{}
		}
		r.ssub.Store(int32(len(r.shards)))
		old := r.conn
		r.conn, c.pin.conn = conn, conn
		old.Close()
		return true
	}
	return false
}
