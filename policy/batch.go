package policy

import (
	"context"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Reads over many keys of one route (the route's part of an MGET or an
// EXISTS): one pipelined round trip answers every hit and every cached
// "absent"; only the misses load, each once however many clients miss it.

// getMany answers GET for each of keys (canonical or not) in one round
// trip for the hits, as MGET's elements.
func (r *Route) getMany(ctx context.Context, proto int, keys [][]byte) []resp.Reply {
	out := make([]resp.Reply, len(keys))
	if r.cfg.Sliding || r.cfg.EarlyRefresh || r.stale.Load() {
		// Each hit renews or inspects its own TTL: one GET each.
		for i, k := range keys {
			out[i] = r.Do(ctx, Op{ID: router.CmdGet, Args: [][]byte{cmdGet, k}, Proto: proto})
		}
		return out
	}
	// MGET k1 marker1 k2 marker2 ...: values and negative markers at once.
	mget := [][]byte{cmdMGet}
	idx := make([]int, 0, len(keys)) // keys asked, by position in out
	filled := make([]uint64, len(keys))
	for i, k := range keys {
		key := string(k)
		if !r.canonical(key) {
			out[i] = resp.Null()
			continue
		}
		if r.unsettledKey(key) {
			out[i] = r.Do(ctx, Op{ID: router.CmdGet, Args: [][]byte{cmdGet, k}, Proto: proto}) // settles first
			continue
		}
		if r.localOK() {
			if v, ok := r.local.get(key); ok {
				r.Stats.Hits.Add(1)
				r.Stats.LocalHits.Add(1)
				out[i] = resp.Bulk(v)
				continue
			}
		}
		filled[i] = r.loads.filled(key)
		mget = append(mget, k, []byte(negKey(key)))
		idx = append(idx, i)
	}
	if len(idx) == 0 {
		return out
	}
	replies, err := r.cache.Do(ctx, proto, mget)
	var elems [][]byte
	if err == nil {
		var ok bool
		if elems, ok = resp.Elements(replies[0]); !ok || len(elems) != 2*len(idx) {
			err = errUnexpectedReply
		}
	}
	if err != nil {
		for _, i := range idx {
			out[i] = r.Do(ctx, Op{ID: router.CmdGet, Args: [][]byte{cmdGet, keys[i]}, Proto: proto})
		}
		return out
	}
	for j, i := range idx {
		value, marker := elems[2*j], elems[2*j+1]
		switch {
		case !resp.IsNull(value):
			r.Stats.Hits.Add(1)
			out[i] = resp.Raw(value)
		case !resp.IsNull(marker) && r.negative():
			r.Stats.NegativeHits.Add(1)
			out[i] = resp.Null()
		default:
			r.Stats.Misses.Add(1)
			key := string(keys[i])
			rw, err := r.fetch(ctx, key, filled[i])
			switch {
			case err != nil:
				out[i] = r.fail(err)
			case rw.cached:
				out[i] = r.Do(ctx, Op{ID: router.CmdGet, Args: [][]byte{cmdGet, keys[i]}, Proto: proto})
			default:
				out[i] = r.rowReply(rw)
			}
		}
	}
	return out
}

// existsMany counts the keys whose rows exist, in one round trip for the
// cached ones.
func (r *Route) existsMany(ctx context.Context, keys [][]byte) (int64, error) {
	if r.stale.Load() {
		// The cache may be stale (capture.go): each key from PostgreSQL.
		var n int64
		for _, k := range keys {
			if !r.canonical(string(k)) {
				continue
			}
			reply := r.bypass(ctx, Op{ID: router.CmdExists, Args: [][]byte{cmdExists, k}, Proto: 2})
			if reply.IsError() {
				return 0, redisErr(reply.ErrorText())
			}
			if v, _ := reply.AsInt(); v == 1 {
				n++
			}
		}
		return n, nil
	}
	cmds := make([][][]byte, 0, 2*len(keys))
	idx := make([]int, 0, len(keys))
	var n0 int64 // unsettled keys, answered from PostgreSQL
	filled := make([]uint64, len(keys))
	for i, k := range keys {
		key := string(k)
		if !r.canonical(key) {
			continue
		}
		if r.unsettledKey(key) && !r.settle(ctx, key) {
			rw, err := r.loadRow(ctx, r.db.Pool(), key)
			if err != nil {
				return 0, err
			}
			n0 += boolInt(rw.found)
			continue
		}
		filled[i] = r.loads.filled(key)
		cmds = append(cmds, [][]byte{cmdExists, k}, [][]byte{cmdExists, []byte(negKey(key))})
		idx = append(idx, i)
	}
	if len(idx) == 0 {
		return n0, nil
	}
	out, err := r.cache.Do(ctx, 2, cmds...)
	n := n0
	for j, i := range idx {
		key := string(keys[i])
		switch {
		case err != nil:
			found, err := r.ensure(ctx, key)
			if err != nil {
				return 0, err
			}
			n += boolInt(found)
		case string(out[2*j]) == ":1\r\n":
			r.Stats.Hits.Add(1)
			n++
		case string(out[2*j+1]) == ":1\r\n" && r.negative():
			r.Stats.NegativeHits.Add(1)
		default:
			r.Stats.Misses.Add(1)
			rw, err := r.fetch(ctx, key, filled[i])
			if err != nil {
				return 0, err
			}
			if rw.cached {
				found, err := r.ensure(ctx, key)
				if err != nil {
					return 0, err
				}
				n += boolInt(found)
				continue
			}
			n += boolInt(rw.found)
		}
	}
	return n, nil
}

// errUnexpectedReply: Redis answered a command of the proxy's own with
// something that is not its reply's shape.
var errUnexpectedReply = redisErr("ERR unexpected reply from upstream")
