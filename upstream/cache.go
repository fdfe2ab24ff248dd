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
	pick  atomic.Uint32 // spreads calls over the multiplexed connections
}

// Cache returns the upstream's Cache.
func (u *Upstream) Cache() *Cache { return u.cache }

// Do sends cmds as one pipeline to clients of protocol proto and returns
// each raw reply; err is set when Redis could not be reached. The replies
// are the caller's (copied out of the reused call).
func (c *Cache) Do(_ context.Context, proto int, cmds ...[][]byte) ([][]byte, error) {
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
