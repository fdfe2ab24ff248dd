package policy

import (
	"context"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Cache-aside (lazy loading, PRODUCT.md §5.1). Reads, shared by every
// policy: a hit is answered by Redis; a miss loads the row from PostgreSQL
// once (fetch), caches it with the route's TTL ± jitter, or caches "absent"
// for negative_ttl, and answers. With Redis down, reads are served from
// PostgreSQL. Writes go to PostgreSQL first and then invalidate the cached
// copy; a failed write leaves the cache untouched.

var (
	cmdExists = []byte("EXISTS")
	cmdPTTL   = []byte("PTTL")
	cmdGetEx  = []byte("GETEX")
	cmdPX     = []byte("PX")
	cmdDel    = []byte("DEL")
	cmdPExp   = []byte("PEXPIRE")
)

// read answers a read command on key.
func (r *Route) read(ctx context.Context, proto int, key string, args [][]byte) []byte {
	if r.cfg.Format != config.FormatHash {
		return r.get(ctx, proto, key, args)
	}
	cmds := [][][]byte{{cmdExists, args[1]}, args}
	if r.cfg.Sliding {
		cmds = append(cmds, [][]byte{cmdPExp, args[1], itob(r.ttl())})
	}
	if r.cfg.EarlyRefresh {
		cmds = append(cmds, [][]byte{cmdPTTL, args[1]})
	}
	out, err := r.cache.Do(ctx, proto, cmds...)
	if err != nil {
		return r.degraded(ctx, proto, key, args)
	}
	if string(out[0]) == ":1\r\n" {
		r.Stats.Hits.Add(1)
		if r.cfg.EarlyRefresh && r.shouldRefresh(out[len(out)-1]) {
			r.refresh(key)
		}
		return out[1]
	}
	if _, err := r.miss(ctx, key); err != nil {
		return r.fail(err)
	}
	// The row is cached now (or known absent): Redis answers exactly as it
	// would for the cached hash (or for a missing key).
	out, err = r.cache.Do(ctx, proto, args)
	if err != nil {
		return r.degraded(ctx, proto, key, args)
	}
	return out[0]
}

// get answers GET on a json or value route: a single command on a hit.
func (r *Route) get(ctx context.Context, proto int, key string, args [][]byte) []byte {
	if r.local != nil {
		if v, ok := r.local.get(key); ok {
			r.Stats.Hits.Add(1)
			r.Stats.LocalHits.Add(1)
			return resp.AppendBulk(nil, v)
		}
	}
	gen := r.loads.slot(key).Load()
	cmd := [][]byte{args[0], args[1]}
	if r.cfg.Sliding {
		cmd = [][]byte{cmdGetEx, args[1], cmdPX, itob(r.ttl())}
	}
	cmds := [][][]byte{cmd}
	if r.cfg.EarlyRefresh {
		cmds = append(cmds, [][]byte{cmdPTTL, args[1]})
	}
	out, err := r.cache.Do(ctx, proto, cmds...)
	if err != nil {
		return r.degraded(ctx, proto, key, args)
	}
	if !isNull(out[0]) && out[0][0] != '-' {
		r.Stats.Hits.Add(1)
		if r.cfg.EarlyRefresh && r.shouldRefresh(out[1]) {
			r.refresh(key)
		}
		if r.local != nil && r.loads.slot(key).Load() == gen {
			if v, ok := bulkValue(out[0]); ok {
				r.local.add(key, v)
			}
		}
		return out[0]
	}
	if out[0][0] == '-' {
		return out[0]
	}
	rw, err := r.miss(ctx, key)
	if err != nil {
		return r.fail(err)
	}
	if rw.cached {
		out, err := r.cache.Do(ctx, proto, cmd)
		if err != nil {
			return r.fail(err)
		}
		return out[0]
	}
	return r.rowReply(proto, rw)
}

// miss handles a read that found nothing cached: a negative-cache hit, or
// a (coalesced) load.
func (r *Route) miss(ctx context.Context, key string) (row, error) {
	if *r.cfg.NegativeTTL > 0 {
		out, err := r.cache.Do(ctx, 2, [][]byte{cmdExists, []byte(negKey(key))})
		if err == nil && string(out[0]) == ":1\r\n" {
			r.Stats.NegativeHits.Add(1)
			return row{}, nil
		}
	}
	r.Stats.Misses.Add(1)
	return r.fetch(ctx, key)
}

// ensure reports whether key's row exists, loading it into the cache if
// needed (EXISTS, and writes that need the current value cached).
func (r *Route) ensure(ctx context.Context, key string) (bool, error) {
	out, err := r.cache.Do(ctx, 2, [][]byte{cmdExists, []byte(key)})
	if err != nil {
		rw, err := r.loadRow(ctx, r.db.Pool(), key)
		return rw.found, err
	}
	if string(out[0]) == ":1\r\n" {
		r.Stats.Hits.Add(1)
		return true, nil
	}
	rw, err := r.miss(ctx, key)
	return rw.found, err
}

// degraded serves a read from PostgreSQL while Redis is unreachable
// (GET, HGET, HGETALL; other reads report the error).
func (r *Route) degraded(ctx context.Context, proto int, key string, args [][]byte) []byte {
	r.Stats.Degraded.Add(1)
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	rw, err := r.loadRow(ctx, r.db.Pool(), key)
	r.Stats.Loads.Add(1)
	if err != nil {
		return r.fail(err)
	}
	name := lower(args[0])
	switch {
	case name == "get":
		return r.rowReply(proto, rw)
	case name == "hgetall":
		b := resp.AppendMap(nil, len(rw.fields), proto)
		for _, f := range rw.fields {
			b = resp.AppendBulk(resp.AppendBulk(b, f.Name), f.Value)
		}
		return b
	case name == "hget" && len(args) == 3:
		for _, f := range rw.fields {
			if f.Name == string(args[2]) {
				return resp.AppendBulk(nil, f.Value)
			}
		}
		return resp.AppendNull(nil, proto)
	}
	return resp.AppendError(nil, "ERR upstream unavailable: '"+name+"' cannot be served from PostgreSQL")
}

// invalidate drops key's cached copy and negative marker after a write
// (cache-aside), so the next read loads the new row.
func (r *Route) invalidate(ctx context.Context, key string) error {
	r.invalidated(key)
	_, err := r.cache.Do(ctx, 2, [][]byte{cmdDel, []byte(key), []byte(negKey(key))})
	return err
}

func lower(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}

func itob(n int64) []byte { return []byte(formatInt(n)) }
