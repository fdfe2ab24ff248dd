package policy

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Reads over many keys of one route (the route's part of an MGET or an
// EXISTS): one pipelined round trip answers every hit and every cached
// "absent"; only the misses load, each once however many clients miss it,
// together in one query and filled in one round trip (fetchMany).

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
	var elems [][]byte
	var err error
	if r.slotTag != "" {
		// On a cluster, one-key commands (see Route.get): GET and EXISTS
		// of the marker per key, whose replies stand for MGET's pairs.
		elems, err = r.getPairs(ctx, proto, mget[1:])
	} else {
		var replies [][]byte
		replies, err = r.cache.Do(ctx, proto, mget)
		if err == nil {
			var ok bool
			if elems, ok = resp.Elements(replies[0]); !ok || len(elems) != 2*len(idx) {
				err = errUnexpectedReply
			}
		}
	}
	if err != nil {
		for _, i := range idx {
			out[i] = r.Do(ctx, Op{ID: router.CmdGet, Args: [][]byte{cmdGet, keys[i]}, Proto: proto})
		}
		return out
	}
	var ms misses
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
			ms.add(i, string(keys[i]), filled[i])
		}
	}
	rows, errs := ms.fetch(ctx, r)
	for j, i := range ms.at {
		rw, err := rows[j], errs[j]
		switch {
		case err != nil:
			out[i] = r.fail(err)
		case rw.cached:
			out[i] = r.Do(ctx, Op{ID: router.CmdGet, Args: [][]byte{cmdGet, keys[i]}, Proto: proto})
		default:
			out[i] = r.rowReply(rw)
		}
	}
	return out
}

// getPairs is MGET k1 m1 k2 m2 ... (keys and their negative markers) as
// one round trip of one-key commands, GET ki and EXISTS mi: the values as
// GET gave them, a marker as a null or not.
func (r *Route) getPairs(ctx context.Context, proto int, pairs [][]byte) ([][]byte, error) {
	cmds := make([][][]byte, len(pairs))
	for i := 0; i+1 < len(pairs); i += 2 {
		cmds[i], cmds[i+1] = [][]byte{cmdGet, pairs[i]}, [][]byte{cmdExists, pairs[i+1]}
	}
	out, err := r.cache.Do(ctx, proto, cmds...)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(out); i += 2 {
		if len(out[i]) > 9 && string(out[i][:10]) == "-WRONGTYPE" {
			out[i] = markerNull // MGET's nil for a key of another type
		} else if err := replyErr(out[i]); err != nil {
			return nil, err
		}
		if string(out[i+1]) == ":1\r\n" {
			out[i+1] = markerSet
		} else {
			out[i+1] = markerNull
		}
	}
	return out, nil
}

var markerNull, markerSet = []byte("$-1\r\n"), []byte("$1\r\n1\r\n")

// misses are the keys one read over many keys missed, in the order
// missed (at: their positions in the read), loaded together (fetchMany)
// with each distinct key once.
type misses struct {
	at     []int
	of     []int // index in keys, per miss
	keys   []string
	filled []uint64
	seen   map[string]int
}

func (m *misses) add(at int, key string, filled uint64) {
	if m.seen == nil {
		m.seen = map[string]int{}
	}
	k, ok := m.seen[key]
	if !ok {
		k = len(m.keys)
		m.seen[key] = k
		m.keys, m.filled = append(m.keys, key), append(m.filled, filled)
	}
	m.at, m.of = append(m.at, at), append(m.of, k)
}

// fetch loads the misses and returns each one's row, in the order added.
func (m *misses) fetch(ctx context.Context, r *Route) ([]row, []error) {
	if len(m.keys) == 0 {
		return nil, nil
	}
	rows, errs := r.fetchMany(ctx, m.keys, m.filled)
	outRows, outErrs := make([]row, len(m.at)), make([]error, len(m.at))
	for j, k := range m.of {
		outRows[j], outErrs[j] = rows[k], errs[k]
	}
	return outRows, outErrs
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
	var ms misses
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
			ms.add(i, key, filled[i])
		}
	}
	rows, errs := ms.fetch(ctx, r)
	for j, i := range ms.at {
		if errs[j] != nil {
			return 0, errs[j]
		}
		if rows[j].cached {
			found, err := r.ensure(ctx, string(keys[i]))
			if err != nil {
				return 0, err
			}
			n += boolInt(found)
			continue
		}
		n += boolInt(rows[j].found)
	}
	return n, nil
}

// errUnexpectedReply: Redis answered a command of the proxy's own with
// something that is not its reply's shape.
var errUnexpectedReply = redisErr("ERR unexpected reply from upstream")

// fetchMany is fetch for the misses of one read over many keys: of keys
// (distinct), those whose flights no other read leads load in one
// PostgreSQL query and fill in one round trip (loadManyAndFill); the
// others wait for the flight that loads them. filled[i] is keys[i]'s fill
// count from before the read (see fetch).
func (r *Route) fetchMany(ctx context.Context, keys []string, filled []uint64) ([]row, []error) {
	fls := make([]*flight, len(keys))
	var led []int
	for i, k := range keys {
		fl, lead := r.loads.flights.join(k)
		fls[i] = fl
		switch {
		case !lead:
			r.Stats.Coalesced.Add(1)
		case r.cfg.DistributedLock || r.loads.filled(k) != filled[i]:
			go r.fly(ctx, k, fl, filled[i]) // a lease per key across proxies
		default:
			led = append(led, i)
		}
	}
	if len(led) > 0 {
		go r.flyMany(ctx, keys, fls, led)
	}
	rows, errs := make([]row, len(keys)), make([]error, len(keys))
	for i, fl := range fls {
		rows[i], errs[i] = r.await(ctx, fl)
	}
	return rows, errs
}

// loadChunk is how many keys one batched load reads and fills at most:
// each chunk's flights land once it is stored, a fill's round trip stays
// short (a write to one of its keys waits for it: loader.quiesce), and a
// key whose cast fails costs at most a chunk of one-key retries.
const loadChunk = 500

// flyMany runs the flights fls[i] of keys[i], i in led, loadChunk keys at
// a time, and lands them.
func (r *Route) flyMany(ctx context.Context, keys []string, fls []*flight, led []int) {
	for len(led) > 0 {
		n := min(len(led), loadChunk)
		r.flyChunk(ctx, keys, fls, led[:n])
		led = led[n:]
	}
}

// flyChunk runs the flights fls[i] of keys[i], i in led, in one load, and
// lands them.
func (r *Route) flyChunk(ctx context.Context, keys []string, fls []*flight, led []int) {
	var rows []row
	var err error
	defer func() {
		if p := recover(); p != nil {
			rows, err = nil, fmt.Errorf("panic while loading: %v", p)
		}
		for j, i := range led {
			var rw row
			if rows != nil {
				rw = rows[j]
			}
			r.loads.flights.land(keys[i], fls[i], rw, err)
		}
	}()
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
	defer cancel()
	ask := make([]string, len(led))
	for j, i := range led {
		ask[j] = keys[i]
	}
	rows, err = r.loadManyAndFill(lctx, ask)
}

// loadManyAndFill is loadAndFill for many keys: what each fill must know
// from before the load in one round trip (beforeLoadMany), the rows in
// one query, the fills in one round trip (runFills), each under the same
// checks as loadAndFill's.
func (r *Route) loadManyAndFill(ctx context.Context, keys []string) ([]row, error) {
	gens := make([]uint64, len(keys))
	for i, k := range keys {
		gens[i] = r.loads.slot(k).Load()
	}
	guards, leases, fillable := r.beforeLoadMany(ctx, keys)
	start := time.Now()
	rows, err := r.loadRows(ctx, keys)
	r.Stats.Loads.Add(1)
	r.observeLoad(time.Since(start))
	if err != nil {
		return nil, err
	}
	var ops []fillOp
	var at []int
	for i, k := range keys {
		if h := r.hooks.afterLoad; h != nil {
			h(k)
		}
		if fillable[i] && r.loads.storeBegin(k, gens[i]) {
			if h := r.hooks.beforeStore; h != nil {
				h(k)
			}
			ops, at = append(ops, r.fillOpAfterLoad(k, rows[i], false, guards[i], leases[i])), append(at, i)
		}
	}
	stored, errs := r.runFills(ctx, ops)
	for j, i := range at {
		r.stored(keys[i], rows[i], gens[i], leases[i], stored[j], errs[j])
	}
	return rows, nil
}

// beforeLoadMany is beforeLoad and takeLease for each of keys, in one
// pipeline: fillable[i] is false when keys[i]'s load must not be cached.
func (r *Route) beforeLoadMany(ctx context.Context, keys []string) (guards []string, leases []*fillLease, fillable []bool) {
	guards, leases, fillable = make([]string, len(keys)), make([]*fillLease, len(keys)), make([]bool, len(keys))
	for i := range fillable {
		fillable[i] = true
	}
	if !r.stores && !r.cfg.TrackChanges {
		return guards, leases, fillable
	}
	pipe := r.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(keys))
	takes := make([]*redis.Cmd, len(keys))
	tokens := make([]string, len(keys))
	for i, k := range keys {
		if r.stores {
			gets[i] = pipe.HGet(ctx, markerKey(k), "g")
		}
		if r.cfg.TrackChanges {
			tokens[i] = newToken()
			takes[i] = leaseTake.EvalSha(ctx, pipe, []string{leaseKey(k), epochKey(r.rkey())}, tokens[i], leaseTTL.Milliseconds())
		}
	}
	pipe.Exec(ctx)
	for i, k := range keys {
		if g := gets[i]; g != nil {
			v, err := g.Result()
			switch {
			case err == redis.Nil:
			case err != nil:
				fillable[i] = false
			default:
				guards[i] = v
			}
		}
		if t := takes[i]; t != nil {
			ep, err := t.Text()
			if redis.HasErrorPrefix(err, "NOSCRIPT") {
				var ok bool
				leases[i], ok = r.takeLease(ctx, k) // loads the script
				fillable[i] = fillable[i] && ok
				continue
			}
			if err != nil {
				fillable[i] = false
				continue
			}
			leases[i] = &fillLease{token: tokens[i], epoch: ep}
		}
	}
	return guards, leases, fillable
}

// loadRows reads the rows of keys in one query.
func (r *Route) loadRows(ctx context.Context, keys []string) ([]row, error) {
	f := backend.AsValue
	switch r.cfg.Format {
	case config.FormatJSON:
		f = backend.AsJSON
	case config.FormatHash:
		f = backend.AsFields
	}
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = r.id(k)
	}
	got, err := r.table.LoadMany(ctx, r.db.Pool(), f, ids)
	if err != nil {
		return nil, err
	}
	rows := make([]row, len(keys))
	for i, id := range ids {
		if l, ok := got[id]; ok {
			rows[i] = row{found: true, json: l.JSON, fields: l.Fields, value: l.Value}
		}
	}
	return rows, nil
}
