package upstream

import (
	"context"
	"sync"
	"sync/atomic"
)

// Cache runs the route layer's commands on the shared multiplexed
// connections: a cache hit costs what a plain GET through the proxy costs.
// While clients' connections log in as the restricted user
// (clientuser.go), they run on multiplexed connections of their own,
// logged in as the operator's user, as they write the proxy's keys.
// It satisfies policy.Cache.
type Cache struct {
	u     *Upstream
	calls sync.Pool     // *Call, each with its channel
	batch sync.Pool     // *Batch, upstream.mode cluster
	pick  atomic.Uint32 // spreads calls over the multiplexed connections
}

// Cache returns the upstream's Cache.
func (u *Upstream) Cache() *Cache { return u.cache }

// Do sends cmds as one pipeline to clients of protocol proto and returns
// each raw reply; err is set when Redis could not be reached. The replies
// are the caller's (copied out of the reused call).
func (c *Cache) Do(_ context.Context, proto int, cmds ...[][]byte) ([][]byte, error) {
	if c.u.cluster != nil {
		return c.doCluster(proto, cmds)
	}
	cl, _ := c.calls.Get().(*Call)
	if cl == nil {
		cl = NewCall()
	}
	defer c.calls.Put(cl)
	cl.Reset()
	for _, cmd := range cmds {
		cl.Add(cmd)
	}
	c.u.ownShared(proto).Do(cl, c.pick.Add(1))
	if cl.Err != nil {
		return nil, cl.Err
	}
	buf := append([]byte(nil), cl.Out...)
	out := make([][]byte, len(cl.Ends))
	start := 0
	for i, end := range cl.Ends {
		out[i] = buf[start:end:end]
		start = end
	}
	return out, nil
}

// doCluster is Do in upstream.mode cluster: each command goes to the
// primary of its first key's slot (the route layer's commands name their
// keys first, and a route's keys share a slot: policy/clusterkeys.go),
// with the cluster's redirects followed.
func (c *Cache) doCluster(proto int, cmds [][][]byte) ([][]byte, error) {
	b, _ := c.batch.Get().(*Batch)
	if b == nil {
		b = NewBatch()
		b.Own = true
	}
	defer c.batch.Put(b)
	b.Reset()
	for _, cmd := range cmds {
		slot := AnySlot
		if len(cmd) > 1 {
			slot = Slot(cmd[1])
		}
		b.Add(cmd, slot)
	}
	c.u.cluster.Do(proto, b, c.pick.Add(1))
	out := make([][]byte, b.Len())
	for i := range out {
		reply, err := b.Reply(i)
		if err != nil {
			return nil, err
		}
		if _, _, _, moved := redirect(reply); moved {
			// Still redirected after the hops Cluster.Do follows: the
			// slot is moving; the route layer's caller retries.
			reply = tryAgain
		}
		out[i] = append([]byte(nil), reply...)
	}
	return out, nil
}

var tryAgain = []byte("-TRYAGAIN the slot of the proxy's keys is moving between nodes; retry\r\n")
