package server

import (
	"bytes"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// The proxy's own keys (router.ReservedPrefix: negative-cache markers,
// locks, write-back queues) are out of clients' reach: commands naming
// them are refused by Dispatch, and the commands that list keys without
// naming them (KEYS, SCAN, RANDOMKEY) leave them out here. DBSIZE and
// INFO keyspace still count them (docs/OPERATIONS.md says so).

// hideReserved removes the proxy's keys from a KEYS, SCAN or RANDOMKEY
// reply of the default database; other replies come back as they are.
func (c *session) hideReserved(cmd *router.Command, reply []byte) []byte {
	if c.db != c.s.cfg.Upstream.DB {
		return reply
	}
	switch cmd.ID {
	case router.CmdKeys:
		if out, ok := dropReserved(reply); ok {
			return out
		}
	case router.CmdScan:
		parts, ok := resp.Elements(reply)
		if !ok || len(parts) != 2 || !bytes.Contains(parts[1], []byte(router.ReservedPrefix)) {
			return reply
		}
		keys, ok := dropReserved(parts[1])
		if !ok {
			return reply
		}
		return append(append(resp.AppendArray(nil, 2), parts[0]...), keys...)
	case router.CmdRandomkey:
		// Another key, a few times; an empty keyspace but for the proxy's
		// own keys is an empty keyspace: nil.
		for try := 0; try < 16 && isReservedBulk(reply); try++ {
			next, ok := c.sharedReply([][]byte{[]byte("RANDOMKEY")})
			if !ok {
				return reply
			}
			reply = next
		}
		if isReservedBulk(reply) {
			return resp.AppendNull(nil, c.proto)
		}
	}
	return reply
}

// dropReserved removes the reserved keys from an array of bulk strings.
func dropReserved(arr []byte) ([]byte, bool) {
	if !bytes.Contains(arr, []byte(router.ReservedPrefix)) {
		return arr, true
	}
	elems, ok := resp.Elements(arr)
	if !ok {
		return nil, false
	}
	kept := elems[:0]
	for _, e := range elems {
		if !isReservedBulk(e) {
			kept = append(kept, e)
		}
	}
	out := resp.AppendArray(nil, len(kept))
	for _, e := range kept {
		out = append(out, e...)
	}
	return out, true
}

func isReservedBulk(b []byte) bool {
	i := bytes.IndexByte(b, '\n')
	return len(b) > 0 && b[0] == '$' && i > 0 && bytes.HasPrefix(b[i+1:], []byte(router.ReservedPrefix))
}

// sharedReply runs a stateless command of the proxy's own on the shared
// connections (for the default database, whatever the session's own
// connection is doing) and returns the reply (false: Redis could not be
// asked).
func (c *session) sharedReply(args [][]byte) ([]byte, bool) {
	cl := upstream.NewCall()
	cl.Add(args)
	c.s.up.Shared(c.proto).Do(cl, uint32(c.id))
	if cl.Err != nil {
		return nil, false
	}
	return append([]byte(nil), cl.Reply(0)...), true
}
