package policy

import (
	"context"
	"fmt"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// The read path, the same for every policy (cache-aside lazy loading): a
// hit is answered by Redis, in one round trip that also tells a negative-
// cache hit from a miss; a miss loads the row from PostgreSQL once however
// many clients miss it together (stampede.go), caches it with the route's
// TTL ± jitter (or caches "absent" for negative_ttl) in a second round
// trip, and answers from the loaded row. With Redis down, reads are
// served from PostgreSQL.

var (
	cmdExists = []byte("EXISTS")
	cmdPTTL   = []byte("PTTL")
	cmdGetEx  = []byte("GETEX")
	cmdMGet   = []byte("MGET")
	cmdGet    = []byte("GET")
	cmdPX     = []byte("PX")
	cmdDel    = []byte("DEL")
	cmdPExp   = []byte("PEXPIRE")
)

// reader is the read half every policy embeds.
type reader struct{ r *Route }

// Read answers a read command: GET, EXISTS, or a hash read.
func (rd reader) Read(ctx context.Context, o Op) resp.Reply {
	r := rd.r
	switch o.ID {
	case router.CmdExists:
		found, err := r.ensure(ctx, o.key())
		if err != nil {
			return r.fail(err)
		}
		return resp.Bool(found)
	case router.CmdType:
		// The type the route's format presents (GUI key browsers ask
		// before they read), "none" when the row is absent.
		found, err := r.ensure(ctx, o.key())
		if err != nil {
			return r.fail(err)
		}
		return resp.Status(presentedType(r.cfg.Format, found))
	case router.CmdGet:
		return r.get(ctx, o)
	}
	return r.readHash(ctx, o)
}

// replyFromRow is read command o's reply for the row rw, as the cache
// would give it once filled; ok is false for reads only the cache answers
// (TTL, PTTL).
func (r *Route) replyFromRow(o Op, rw row) (resp.Reply, bool) {
	switch {
	case o.ID == router.CmdExists:
		return resp.Bool(rw.found), true
	case o.ID == router.CmdType:
		return resp.Status(presentedType(r.cfg.Format, rw.found)), true
	case o.ID == router.CmdGet:
		return r.rowReply(rw), true
	case r.cfg.Format != config.FormatHash:
		return resp.Reply{}, false
	case !rw.found:
		return absent(o), true
	}
	return hashReply(o, rw.fields), true
}

// presentedType is TYPE's answer for a key of a route of format.
func presentedType(f config.Format, found bool) string {
	switch {
	case !found:
		return "none"
	case f == config.FormatHash:
		return "hash"
	}
	return "string"
}

// negative reports whether the route caches absent rows.
func (r *Route) negative() bool { return *r.cfg.NegativeTTL > 0 }

// get answers GET on a json or value route.
func (r *Route) get(ctx context.Context, o Op) resp.Reply {
	key := o.key()
	if r.localOK() {
		if v, ok := r.local.get(key); ok {
			r.Stats.Hits.Add(1)
			r.Stats.LocalHits.Add(1)
			return resp.Bulk(v)
		}
	}
	gen, filled := r.loads.slot(key).Load(), r.loads.filled(key)
	// One round trip: the value, whether "absent" is cached, and the TTL
	// left when early refresh is on. MGET key marker gives the first two
	// in one command.
	var cmds [3][][]byte
	n := 0
	negAt := -1
	paired := false // cmds[0] is MGET key marker
	switch {
	case r.cfg.Sliding:
		cmds[n] = [][]byte{cmdGetEx, o.Args[1], cmdPX, itob(r.ttl())}
		n++
		if r.negative() {
			cmds[n], negAt = [][]byte{cmdExists, []byte(negKey(key))}, n
			n++
		}
	case r.negative() && r.slotTag == "":
		cmds[n], paired = [][]byte{cmdMGet, o.Args[1], []byte(negKey(key))}, true
		n++
	default:
		cmds[n] = [][]byte{cmdGet, o.Args[1]}
		n++
		if r.negative() {
			// On a cluster: two one-key commands in the round trip, so
			// that a migration of the route's slot, which refuses a
			// command over keys split between two nodes (-TRYAGAIN),
			// never refuses a read.
			cmds[n], negAt = [][]byte{cmdExists, []byte(negKey(key))}, n
			n++
		}
	}
	pttlAt := -1
	if r.cfg.EarlyRefresh {
		cmds[n], pttlAt = [][]byte{cmdPTTL, o.Args[1]}, n
		n++
	}
	out, err := r.cache.Do(ctx, o.Proto, cmds[:n]...)
	if err != nil {
		return r.degraded(ctx, o)
	}
	value, neg := out[0], false
	if value[0] == '-' {
		return resp.Raw(value) // WRONGTYPE and the like: Redis' own answer
	}
	if paired {
		elems, ok := resp.Elements(value)
		if !ok || len(elems) != 2 {
			return resp.Raw(value)
		}
		value, neg = elems[0], !resp.IsNull(elems[1])
	} else if negAt >= 0 {
		neg = string(out[negAt]) == ":1\r\n"
	}
	if !resp.IsNull(value) {
		r.Stats.Hits.Add(1)
		if pttlAt >= 0 && r.shouldRefresh(out[pttlAt]) {
			r.refresh(key)
		}
		if r.local != nil {
			if v, ok := bulkValue(value); ok {
				r.localAdd(key, v, gen)
			}
		}
		return resp.Raw(value)
	}
	if neg {
		r.Stats.NegativeHits.Add(1)
		return resp.Null()
	}
	r.Stats.Misses.Add(1)
	rw, err := r.fetch(ctx, key, filled)
	if err != nil {
		return r.fail(err)
	}
	if rw.cached {
		// Filled by another load meanwhile: Redis has it now.
		out, err := r.cache.Do(ctx, o.Proto, [][]byte{cmdGet, o.Args[1]})
		if err != nil {
			return r.fail(err)
		}
		return resp.Raw(out[0])
	}
	return r.rowReply(rw)
}

// readHash answers a read command on a hash route (HGET, HMGET, HGETALL,
// HEXISTS, HLEN, HKEYS, HVALS): on a hit, Redis' own reply to the command.
func (r *Route) readHash(ctx context.Context, o Op) resp.Reply {
	key := o.key()
	filled := r.loads.filled(key)
	cmds := [][][]byte{{cmdExists, o.Args[1]}, o.Args}
	negAt := -1
	if r.negative() {
		cmds, negAt = append(cmds, [][]byte{cmdExists, []byte(negKey(key))}), len(cmds)
	}
	if r.cfg.Sliding {
		cmds = append(cmds, [][]byte{cmdPExp, o.Args[1], itob(r.ttl())})
	}
	pttlAt := -1
	if r.cfg.EarlyRefresh {
		cmds, pttlAt = append(cmds, [][]byte{cmdPTTL, o.Args[1]}), len(cmds)
	}
	out, err := r.cache.Do(ctx, o.Proto, cmds...)
	if err != nil {
		return r.degraded(ctx, o)
	}
	if string(out[0]) == ":1\r\n" {
		r.Stats.Hits.Add(1)
		if pttlAt >= 0 && r.shouldRefresh(out[pttlAt]) {
			r.refresh(key)
		}
		return resp.Raw(out[1])
	}
	if negAt >= 0 && string(out[negAt]) == ":1\r\n" {
		r.Stats.NegativeHits.Add(1)
		return absent(o)
	}
	r.Stats.Misses.Add(1)
	rw, err := r.fetch(ctx, key, filled)
	if err != nil {
		return r.fail(err)
	}
	if rw.cached {
		out, err := r.cache.Do(ctx, o.Proto, o.Args)
		if err != nil {
			return r.fail(err)
		}
		return resp.Raw(out[0])
	}
	if !rw.found {
		return absent(o)
	}
	return hashReply(o, rw.fields)
}

// hashReply answers a hash read from a loaded row: the reply Redis gives
// for the hash the fill stores (fields in column order).
func hashReply(o Op, fields []backend.Field) resp.Reply {
	args := o.Args
	lookup := func(name []byte) (string, bool) {
		for _, f := range fields {
			if f.Name == string(name) {
				return f.Value, true
			}
		}
		return "", false
	}
	switch o.ID {
	case router.CmdHget:
		if v, ok := lookup(args[2]); ok {
			return resp.Bulk(v)
		}
		return resp.Null()
	case router.CmdHmget:
		elems := make([]resp.Reply, 0, len(args)-2)
		for _, name := range args[2:] {
			if v, ok := lookup(name); ok {
				elems = append(elems, resp.Bulk(v))
			} else {
				elems = append(elems, resp.Null())
			}
		}
		return resp.Array(elems...)
	case router.CmdHgetall:
		pairs := make([]resp.Reply, 0, 2*len(fields))
		for _, f := range fields {
			pairs = append(pairs, resp.Bulk(f.Name), resp.Bulk(f.Value))
		}
		return resp.Map(pairs...)
	case router.CmdHexists:
		_, ok := lookup(args[2])
		return resp.Bool(ok)
	case router.CmdHlen:
		return resp.Int(int64(len(fields)))
	case router.CmdHkeys, router.CmdHvals:
		elems := make([]resp.Reply, len(fields))
		for i, f := range fields {
			if o.ID == router.CmdHkeys {
				elems[i] = resp.Bulk(f.Name)
			} else {
				elems[i] = resp.Bulk(f.Value)
			}
		}
		return resp.Array(elems...)
	}
	return resp.Err("ERR '" + o.name() + "' cannot be answered from a loaded row")
}

// ensure reports whether key's row exists, loading it into the cache if
// needed (EXISTS, WATCH, and writes that need the current value cached).
func (r *Route) ensure(ctx context.Context, key string) (bool, error) {
	filled := r.loads.filled(key)
	cmds := [][][]byte{{cmdExists, []byte(key)}}
	if r.negative() {
		cmds = append(cmds, [][]byte{cmdExists, []byte(negKey(key))})
	}
	out, err := r.cache.Do(ctx, 2, cmds...)
	if err != nil {
		rw, err := r.loadRow(ctx, r.db.Pool(), key)
		return rw.found, err
	}
	if string(out[0]) == ":1\r\n" {
		r.Stats.Hits.Add(1)
		return true, nil
	}
	if len(out) > 1 && string(out[1]) == ":1\r\n" {
		r.Stats.NegativeHits.Add(1)
		return false, nil
	}
	r.Stats.Misses.Add(1)
	rw, err := r.fetch(ctx, key, filled)
	if err == nil && rw.cached {
		// Another load filled it meanwhile, with the row or "absent".
		out, err := r.cache.Do(ctx, 2, [][]byte{cmdExists, []byte(key)})
		if err != nil {
			return false, err
		}
		return string(out[0]) == ":1\r\n", nil
	}
	return rw.found, err
}

// Ensure loads key into the cache (or the negative cache) unless it is
// there already, so that a WATCH on it is not aborted by the proxy's own
// fill. A key that is not canonical is never cached: nothing to load.
func (r *Route) Ensure(ctx context.Context, key string) error {
	if err := r.Unready(); err != nil {
		return fmt.Errorf("route '%s' %w", r.cfg.Name, err)
	}
	if !r.canonical(key) {
		return nil
	}
	_, err := r.ensure(ctx, key)
	return err
}

// degraded serves a read from PostgreSQL while Redis is unreachable
// (GET and the hash reads; EXISTS reports whether the row exists).
func (r *Route) degraded(ctx context.Context, o Op) resp.Reply {
	r.Stats.Degraded.Add(1)
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	rw, err := r.loadRow(ctx, r.db.Pool(), o.key())
	r.Stats.Loads.Add(1)
	if err != nil {
		return r.fail(err)
	}
	switch {
	case o.ID == router.CmdGet:
		return r.rowReply(rw)
	case r.cfg.Format != config.FormatHash:
		return resp.Err("ERR upstream unavailable: '" + o.name() + "' cannot be served from PostgreSQL")
	case !rw.found:
		return absent(o)
	}
	return hashReply(o, rw.fields)
}

// bypass serves a read from PostgreSQL while the change capture is
// behind by more than max_lag (capture.go): the cache may be stale.
func (r *Route) bypass(ctx context.Context, o Op) resp.Reply {
	if o.ID != router.CmdExists {
		return r.degraded(ctx, o)
	}
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	rw, err := r.loadRow(ctx, r.db.Pool(), o.key())
	r.Stats.Loads.Add(1)
	if err != nil {
		return r.fail(err)
	}
	return resp.Bool(rw.found)
}

// invalidate drops key's cached copy and negative marker after a write
// (cache-aside), so the next read loads the new row. An error reply is an
// error: a Redis loading its AOF after a restart answers -LOADING and
// deletes nothing.
func (r *Route) invalidate(ctx context.Context, key string) error {
	r.invalidated(key)
	return r.cacheCmd(ctx, cmdDel, []byte(key), []byte(negKey(key)))
}

// rowReply encodes a loaded row as GET's reply.
func (r *Route) rowReply(rw row) resp.Reply {
	if !rw.found {
		return resp.Null()
	}
	if r.cfg.Format == config.FormatJSON {
		return resp.Bulk(string(rw.json))
	}
	return resp.Bulk(rw.value)
}
