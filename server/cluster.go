package server

import (
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// clusterRun is what a session keeps to carry runs of commands to a Redis
// Cluster (upstream.mode cluster), reused from run to run.
type clusterRun struct {
	batch *upstream.Batch
	plans []clusterPlan
	slots []int // scratch: a command's slot positions
	parts []int // scratch: the slots of a split command's parts
}

// merge says how the parts of one client command become its reply.
type merge uint8

const (
	mergeOne    merge = iota // one part: its reply as it is
	mergeLocal               // no part: plan.local
	mergeArray               // MGET split by slot: elements in the client's order
	mergeOK                  // MSET split by slot: +OK unless a part failed
	mergeSum                 // integers summed (DEL, UNLINK, EXISTS, TOUCH, DBSIZE)
	mergeConcat              // arrays concatenated (KEYS)
	mergeFirst               // every primary: the first error, else the first reply
	mergeScan                // SCAN of one primary: the cursor re-encoded
	mergeAny                 // RANDOMKEY: the first part that is not null, from part start
)

// clusterPlan is one client command in a batch: its parts (batch entries
// first .. first+n-1) and how they merge.
type clusterPlan struct {
	merge merge
	first int
	n     int
	local string // mergeLocal: the error to send
	// order: for mergeArray, the part and element of each key in the
	// client's order (part<<32 | element).
	order []uint64
	// shard and shards: for mergeScan, the primary scanned and how many
	// there are; for mergeAny, the part to start from.
	shard, shards int
}

// scanShardBits is how many low bits of a cluster SCAN cursor name the
// primary (in slot order): the cursor a client sees is the primary's own
// cursor shifted left by them, plus the primary's number, so a full scan
// walks the primaries one after the other and ends with cursor 0 once.
const scanShardBits = 10

// forwardCluster is forwardShared on a cluster: each command goes to the
// primary of its keys' slot; MGET, MSET, DEL, UNLINK, EXISTS and TOUCH
// over several slots are split by slot and merged in the client's order;
// other commands over several slots get Redis' -CROSSSLOT; the keyless
// commands about the whole data set go to every primary (or, for SCAN, to
// the one its cursor names).
func (c *session) forwardCluster(cl *upstream.Cluster, cmds []router.Command) {
	if c.s.metrics != nil {
		defer c.observe(admin.ClassPassthrough, time.Now())
	}
	c.s.conflicts.noteWrites(cmds)
	if c.cluster == nil {
		c.cluster = &clusterRun{batch: upstream.NewBatch()}
	}
	cr := c.cluster
	b := cr.batch
	b.Reset()
	cr.plans = cr.plans[:0]
	for i := range cmds {
		cr.plans = append(cr.plans, c.planCluster(cl, cr, &cmds[i]))
	}
	cl.Do(c.proto, b, uint32(c.id))
	for i := range cmds {
		c.sendClusterReply(cr, &cr.plans[i], &cmds[i])
	}
}

// planCluster adds cmd's parts to the batch.
func (c *session) planCluster(cl *upstream.Cluster, cr *clusterRun, cmd *router.Command) clusterPlan {
	b := cr.batch
	p := clusterPlan{first: b.Len()}
	switch sp := cmd.ClusterSpread(); sp {
	case router.SpreadAll, router.SpreadSum, router.SpreadConcat:
		addrs, err := cl.Primaries()
		if err != nil {
			return clusterPlan{merge: mergeLocal, local: upstreamError(err)}
		}
		for _, a := range addrs {
			b.AddTo(cmd.Args, a, cl)
		}
		p.n = len(addrs)
		p.merge = map[router.Spread]merge{router.SpreadAll: mergeFirst, router.SpreadSum: mergeSum, router.SpreadConcat: mergeConcat}[sp]
		return p
	case router.SpreadScan:
		return c.planScan(cl, cr, cmd)
	case router.SpreadRandom:
		addrs, err := cl.Primaries()
		if err != nil {
			return clusterPlan{merge: mergeLocal, local: upstreamError(err)}
		}
		for _, a := range addrs {
			b.AddTo(cmd.Args, a, cl)
		}
		p.n, p.merge, p.shard = len(addrs), mergeAny, rand.IntN(len(addrs))
		return p
	}
	cr.slots = cmd.SlotArgs(cr.slots[:0])
	if len(cr.slots) == 0 {
		b.Add(cmd.Args, upstream.AnySlot)
		p.n = 1
		return p
	}
	slot := upstream.Slot(cmd.Args[cr.slots[0]])
	same := true
	for _, k := range cr.slots[1:] {
		if upstream.Slot(cmd.Args[k]) != slot {
			same = false
			break
		}
	}
	if same {
		b.Add(cmd.Args, slot)
		p.n = 1
		return p
	}
	switch cmd.Split {
	case router.SplitArray, router.SplitSum, router.SplitPairs:
	default:
		return clusterPlan{merge: mergeLocal, local: router.ErrCrossSlot}
	}
	// One part per slot, in the order the slots first appear; each part
	// keeps its keys in the client's order.
	cr.parts = cr.parts[:0]
	var partArgs [][][]byte
	for _, k := range cmd.Keys {
		s := upstream.Slot(cmd.Args[k])
		part := -1
		for j, ps := range cr.parts {
			if ps == s {
				part = j
				break
			}
		}
		if part < 0 {
			part = len(cr.parts)
			cr.parts = append(cr.parts, s)
			partArgs = append(partArgs, [][]byte{cmd.Args[0]})
		}
		if cmd.Split == router.SplitArray {
			p.order = append(p.order, uint64(part)<<32|uint64(len(partArgs[part])-1))
		}
		partArgs[part] = append(partArgs[part], cmd.Args[k])
		if cmd.Split == router.SplitPairs {
			partArgs[part] = append(partArgs[part], cmd.Args[k+1])
		}
	}
	for j, args := range partArgs {
		b.Add(args, cr.parts[j])
	}
	p.n = len(partArgs)
	p.merge = map[router.Split]merge{router.SplitArray: mergeArray, router.SplitSum: mergeSum, router.SplitPairs: mergeOK}[cmd.Split]
	return p
}

// planScan sends SCAN to the primary its cursor names, with that
// primary's own cursor.
func (c *session) planScan(cl *upstream.Cluster, cr *clusterRun, cmd *router.Command) clusterPlan {
	addrs, err := cl.Primaries()
	if err != nil {
		return clusterPlan{merge: mergeLocal, local: upstreamError(err)}
	}
	cursor, err := strconv.ParseUint(string(cmd.Args[1]), 10, 64)
	if err != nil {
		// Not a cursor: any primary refuses it with Redis' own error.
		cr.batch.Add(cmd.Args, upstream.AnySlot)
		return clusterPlan{first: cr.batch.Len() - 1, n: 1}
	}
	shard := int(cursor & (1<<scanShardBits - 1))
	if shard >= len(addrs) {
		return clusterPlan{merge: mergeLocal, local: "ERR invalid cursor"}
	}
	args := append([][]byte{cmd.Args[0], strconv.AppendUint(nil, cursor>>scanShardBits, 10)}, cmd.Args[2:]...)
	p := clusterPlan{merge: mergeScan, first: cr.batch.Len(), n: 1, shard: shard, shards: len(addrs)}
	cr.batch.AddTo(args, addrs[shard], cl)
	return p
}

// sendClusterReply merges a command's parts and sends the reply.
func (c *session) sendClusterReply(cr *clusterRun, p *clusterPlan, cmd *router.Command) {
	b := cr.batch
	if p.merge == mergeLocal {
		c.sendError(p.local)
		return
	}
	// An upstream that did not answer, then an error reply of a part,
	// are the command's reply.
	for i := p.first; i < p.first+p.n; i++ {
		reply, err := b.Reply(i)
		if err != nil {
			c.s.counts.upErrors.Add(1)
			c.sendError(upstreamError(err))
			return
		}
		if p.merge != mergeOne && p.merge != mergeScan && len(reply) > 0 && reply[0] == '-' {
			c.send(reply)
			return
		}
	}
	reply, _ := b.Reply(p.first)
	switch p.merge {
	case mergeOne, mergeOK, mergeFirst:
		c.send(c.hideReserved(cmd, reply))
	case mergeAny:
		for j := range p.n {
			r, _ := b.Reply(p.first + (p.shard+j)%p.n)
			if !resp.IsNull(r) {
				c.send(c.hideReserved(cmd, r))
				return
			}
		}
		c.send(reply) // every primary is empty: its null
	case mergeSum:
		var sum int64
		for i := p.first; i < p.first+p.n; i++ {
			r, _ := b.Reply(i)
			n, ok := resp.Raw(r).AsInt()
			if !ok {
				c.send(r) // not an integer: as Redis sent it
				return
			}
			sum += n
		}
		c.sendInt(sum)
	case mergeArray:
		parts := make([][][]byte, p.n)
		for j := range parts {
			r, _ := b.Reply(p.first + j)
			elems, ok := resp.Elements(r)
			if !ok {
				c.send(r)
				return
			}
			parts[j] = elems
		}
		out := resp.AppendArray(c.out[:0], len(p.order))
		for _, o := range p.order {
			part, el := int(o>>32), int(o&0xffffffff)
			if el >= len(parts[part]) {
				c.sendError("ERR upstream returned a short reply")
				return
			}
			out = append(out, parts[part][el]...)
		}
		c.out = out
		c.send(out)
	case mergeConcat:
		var all [][]byte
		for i := p.first; i < p.first+p.n; i++ {
			r, _ := b.Reply(i)
			elems, ok := resp.Elements(r)
			if !ok {
				c.send(r)
				return
			}
			all = append(all, elems...)
		}
		out := resp.AppendArray(nil, len(all))
		for _, e := range all {
			out = append(out, e...)
		}
		c.send(c.hideReserved(cmd, out))
	case mergeScan:
		parts, ok := resp.Elements(reply)
		if !ok || len(parts) != 2 {
			c.send(reply)
			return
		}
		cur, err := strconv.ParseUint(bulkText(parts[0]), 10, 64)
		if err != nil {
			c.send(reply)
			return
		}
		var next uint64
		switch {
		case cur != 0:
			next = cur<<scanShardBits | uint64(p.shard)
		case p.shard+1 < p.shards:
			next = uint64(p.shard + 1)
		}
		out := resp.AppendArray(nil, 2)
		out = resp.AppendBulk(out, strconv.FormatUint(next, 10))
		out = append(out, parts[1]...)
		c.send(c.hideReserved(cmd, out))
	}
}

// bulkText is the text of a raw bulk string, "" for anything else.
func bulkText(b []byte) string {
	if len(b) < 4 || b[0] != '$' {
		return ""
	}
	i := 1
	for i < len(b) && b[i] != '\n' {
		i++
	}
	if i+1 > len(b)-2 {
		return ""
	}
	return string(b[i+1 : len(b)-2])
}
