package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"math"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
)

// loadTimeout bounds one PostgreSQL load, whoever waits for it.
const loadTimeout = 10 * time.Second

// loader coalesces concurrent loads of one key (flight.go) and keeps
// per-key generations, so that a write during a load keeps the stale
// result out of the cache: a write bumps the key's generation and forgets
// the load in flight, and a load stores its result only if the generation
// is unchanged. It also counts fills per key, so a read that missed
// before another load filled the key reads the cache again instead of
// loading a second time.
//
// The generation check and the fill's write to Redis are two steps: a
// write that bumps the generation between them would delete the cached
// copy before the stale fill lands. So a fill counts itself in storing
// before it checks (storeBegin), and invalidated waits for the fills
// counted in the key's stripe before the write goes on to delete: a fill
// either saw the new generation and stores nothing, or finished storing
// before the delete.
type loader struct {
	flights flights
	seed    maphash.Seed
	gens    [4096]atomic.Uint64 // striped by key hash; a collision only skips a fill
	fills   [4096]atomic.Uint64 // fills done, striped the same way
	storing [4096]atomic.Int32  // fills past their generation check, not yet stored
}

func (l *loader) init() { l.seed = maphash.MakeSeed() }

func (l *loader) index(key string) uint64 { return maphash.String(l.seed, key) % uint64(len(l.gens)) }

func (l *loader) slot(key string) *atomic.Uint64 { return &l.gens[l.index(key)] }

// filled returns key's fill count, to pass to fetch.
func (l *loader) filled(key string) uint64 { return l.fills[l.index(key)].Load() }

// storeBegin reports whether a fill of key loaded at generation gen may
// store; if so the caller stores, then calls storeEnd.
func (l *loader) storeBegin(key string, gen uint64) bool {
	i := l.index(key)
	l.storing[i].Add(1)
	if l.gens[i].Load() != gen {
		l.storing[i].Add(-1)
		return false
	}
	return true
}

func (l *loader) storeEnd(key string) { l.storing[l.index(key)].Add(-1) }

// storeWait is how long invalidated waits for fills that passed their
// generation check: a fill's write to Redis, which a Redis that is slow
// to answer may hold longer (that fill's copy may then outlive the write
// that invalidated it, until its TTL).
const storeWait = time.Second

// quiesce waits until no fill of key's stripe that passed its generation
// check is still storing, at most storeWait.
func (l *loader) quiesce(key string) {
	i := l.index(key)
	if l.storing[i].Load() == 0 {
		return
	}
	deadline := time.Now().Add(storeWait)
	for l.storing[i].Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Microsecond)
	}
}

// invalidated bumps key's generation and forgets an in-flight load, so
// the next read loads again.
func (r *Route) invalidated(key string) {
	r.loads.slot(key).Add(1)
	r.loads.flights.forget(key)
	r.loads.quiesce(key)
	r.announce(key)
}

// keyLocks serializes writers of one key within the process.
type keyLocks struct {
	seed  maphash.Seed
	once  sync.Once
	locks [256]sync.Mutex
}

func (k *keyLocks) lock(key string) func() {
	k.once.Do(func() { k.seed = maphash.MakeSeed() })
	m := &k.locks[maphash.String(k.seed, key)%uint64(len(k.locks))]
	m.Lock()
	return m.Unlock
}

// row is what a load found.
type row struct {
	found  bool
	json   []byte          // format json
	fields []backend.Field // format hash
	value  string          // format value
	cached bool            // another instance filled the cache: read it there
}

// loadRow reads key's row from PostgreSQL.
func (r *Route) loadRow(ctx context.Context, q backend.Querier, key string) (row, error) {
	var rw row
	var err error
	key = r.id(key)
	switch r.cfg.Format {
	case config.FormatJSON:
		rw.json, rw.found, err = r.table.LoadJSON(ctx, q, key)
	case config.FormatHash:
		rw.fields, rw.found, err = r.table.LoadFields(ctx, q, key)
	default:
		rw.value, rw.found, err = r.table.LoadValue(ctx, q, key)
	}
	return rw, err
}

// fetch loads key once however many callers miss it together, fills the
// cache (or the negative cache) and returns the row. filled is the key's
// fill count from before the caller read the cache: if a fill happened
// since, the cache has the key and nothing is loaded (row.cached, or an
// absent row). A caller whose ctx ends stops waiting; the load goes on for
// the others.
func (r *Route) fetch(ctx context.Context, key string, filled uint64) (row, error) {
	fl, lead := r.loads.flights.join(key)
	if lead {
		go r.fly(ctx, key, fl, filled)
	} else {
		r.Stats.Coalesced.Add(1)
	}
	return r.await(ctx, fl)
}

// await waits for fl to land, or for ctx to end.
func (r *Route) await(ctx context.Context, fl *flight) (row, error) {
	select {
	case <-fl.done:
		return fl.rw, fl.err
	case <-ctx.Done():
		return row{}, ctx.Err()
	}
}

// fly runs the flight fl of key that its caller leads, and lands it.
func (r *Route) fly(ctx context.Context, key string, fl *flight, filled uint64) {
	var rw row
	var err error
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic while loading: %v", p)
		}
		r.loads.flights.land(key, fl, rw, err)
	}()
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
	defer cancel()
	switch {
	case r.loads.filled(key) != filled:
		// A load that finished just before this one started has filled
		// the cache already: its late arrivals must not load again.
		rw = row{found: true, cached: true}
	case r.cfg.DistributedLock:
		rw, err = r.fetchLocked(lctx, key)
	default:
		rw, err = r.loadAndFill(lctx, key)
	}
}

// loadAndFill loads key from PostgreSQL and caches the result unless the
// key was written meanwhile (in this process: its generation; on a
// write-through route in any process: the key's write generation in
// Redis, writethrough.go) or, on a route that tracks changes, an
// invalidation took the fill's lease (lease.go).
func (r *Route) loadAndFill(ctx context.Context, key string) (row, error) {
	gen := r.loads.slot(key).Load()
	guard, fillable := r.beforeLoad(ctx, key)
	ls, ok := r.takeLease(ctx, key)
	fillable = fillable && ok
	start := time.Now()
	rw, err := r.loadRow(ctx, r.db.Pool(), key)
	r.Stats.Loads.Add(1)
	r.observeLoad(time.Since(start))
	if err != nil {
		return row{}, err
	}
	if h := r.hooks.afterLoad; h != nil {
		h(key)
	}
	if fillable && r.loads.storeBegin(key, gen) {
		if h := r.hooks.beforeStore; h != nil {
			h(key)
		}
		stored, err := r.fillAfterLoad(ctx, key, rw, false, guard, ls)
		r.stored(key, rw, gen, ls, stored, err)
	}
	return rw, nil
}

// stored ends a fill of key that storeBegin let go on, loaded at
// generation gen: it counts the fill and offers the row to the in-process
// tier.
func (r *Route) stored(key string, rw row, gen uint64, ls *fillLease, stored bool, err error) {
	r.loads.storeEnd(key)
	if err != nil {
		r.log.Warn("cache fill failed", "err", err)
	} else if stored {
		r.loads.fills[r.loads.index(key)].Add(1)
	} else if ls != nil {
		r.Stats.FillsRefused.Add(1)
	}
	if r.local != nil && rw.found && (stored || ls == nil) {
		v := rw.value
		if r.cfg.Format == config.FormatJSON {
			v = string(rw.json)
		}
		r.localAdd(key, v, gen)
	}
}

// beforeLoad is what a fill must know from before its load: on a
// write-through route the key's write generation (observe). fillable is
// false when it could not be read: the load's result is then not cached.
func (r *Route) beforeLoad(ctx context.Context, key string) (guard string, fillable bool) {
	if !r.stores {
		return "", true
	}
	g, err := r.observe(ctx, key)
	return g, err == nil
}

// fillAfterLoad caches a row loaded after beforeLoad returned guard (and
// after ls was taken, on a route that tracks changes), and reports
// whether it did.
func (r *Route) fillAfterLoad(ctx context.Context, key string, rw row, overwrite bool, guard string, ls *fillLease) (bool, error) {
	return r.runFill(ctx, r.fillOpAfterLoad(key, rw, overwrite, guard, ls))
}

// fillOpAfterLoad is fillAfterLoad's op.
func (r *Route) fillOpAfterLoad(key string, rw row, overwrite bool, guard string, ls *fillLease) fillOp {
	if r.stores {
		return r.guardedFillOp(key, rw, overwrite, guard, ls)
	}
	return r.fillOp(key, rw, overwrite, ls)
}

// observeLoad keeps an exponentially weighted mean of load times: the
// delta of XFetch.
func (r *Route) observeLoad(d time.Duration) {
	old := r.loadDur.Load()
	if old == 0 {
		r.loadDur.Store(int64(d))
		return
	}
	r.loadDur.Store(old + (int64(d)-old)/8)
}

// fillHashSrc (KEYS: key; ARGV: ttl ms, overwrite 0/1, the field/value
// pairs) stores a hash only if the key is absent (or overwrite), with a
// TTL; returns 1 if it stored.
const fillHashSrc = `
if redis.call('EXISTS', KEYS[1]) == 1 and ARGV[2] == '0' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1`

var fillHash = redis.NewScript(fillHashSrc)

// fillOp is one fill as the command that stores it: a command on the
// cache tier (cmd), stored once it succeeds, or a script run (script,
// keys, args) that answers 1 when it stored (any: whatever it answers);
// neither: there is nothing to store. Ops are built first and sent after,
// one at a time (runFill) or many in one round trip (runFills).
type fillOp struct {
	cmd    [][]byte
	script *redis.Script
	keys   []string
	args   []any
	any    bool
}

// fillOp is the fill of a loaded row with the route's TTL (± jitter), or
// of the negative marker for an absent row. A fill never overwrites a key
// that a write created meanwhile (NX), unless overwrite is set (early
// refresh). With a lease (a route that tracks changes) it stores only
// while the lease holds.
func (r *Route) fillOp(key string, rw row, overwrite bool, ls *fillLease) fillOp {
	ttl := r.ttl()
	if !rw.found {
		neg := time.Duration(*r.cfg.NegativeTTL)
		if neg <= 0 {
			return fillOp{}
		}
		if ls != nil {
			keys, args := ls.wrap(r, key, []string{negKey(key)}, []any{"1", neg.Milliseconds(), "0"})
			return fillOp{script: leasedPlainFill, keys: keys, args: args}
		}
		return fillOp{cmd: [][]byte{[]byte("SET"), []byte(negKey(key)), []byte("1"), cmdPX, itob(neg.Milliseconds())}}
	}
	switch r.cfg.Format {
	case config.FormatHash:
		args := []any{ttl, boolInt(overwrite)}
		for _, f := range rw.fields {
			args = append(args, f.Name, f.Value)
		}
		if ls != nil {
			keys, args := ls.wrap(r, key, []string{key}, args)
			return fillOp{script: leasedHashFill, keys: keys, args: args}
		}
		return fillOp{script: fillHash, keys: []string{key}, args: args, any: true}
	default:
		v := rw.value
		if r.cfg.Format == config.FormatJSON {
			v = string(rw.json)
		}
		if ls != nil {
			keys, args := ls.wrap(r, key, []string{key}, []any{v, ttl, boolInt(!overwrite)})
			return fillOp{script: leasedPlainFill, keys: keys, args: args}
		}
		cmd := [][]byte{[]byte("SET"), []byte(key), []byte(v), cmdPX, itob(ttl)}
		if !overwrite {
			cmd = append(cmd, []byte("NX"))
		}
		return fillOp{cmd: cmd}
	}
}

// runFill sends op and reports whether it stored.
func (r *Route) runFill(ctx context.Context, op fillOp) (bool, error) {
	switch {
	case op.cmd != nil:
		return true, r.cacheCmd(ctx, op.cmd...)
	case op.script != nil:
		n, err := op.script.Run(ctx, r.rdb, op.keys, op.args...).Int()
		return n == 1 || op.any && err == nil, err
	}
	return false, nil
}

// runFills sends ops, the commands in one round trip on the cache tier
// and the scripts in one pipeline, and reports for each whether it
// stored.
func (r *Route) runFills(ctx context.Context, ops []fillOp) ([]bool, []error) {
	stored, errs := make([]bool, len(ops)), make([]error, len(ops))
	var cmds [][][]byte
	var cmdAt []int
	pipe := r.rdb.Pipeline()
	scripts := make([]*redis.Cmd, len(ops))
	for i, op := range ops {
		switch {
		case op.cmd != nil:
			cmds, cmdAt = append(cmds, op.cmd), append(cmdAt, i)
		case op.script != nil:
			scripts[i] = op.script.EvalSha(ctx, pipe, op.keys, op.args...)
		}
	}
	if len(cmds) > 0 {
		out, err := r.cache.Do(ctx, 2, cmds...)
		for j, i := range cmdAt {
			if errs[i] = err; err == nil {
				errs[i] = replyErr(out[j])
			}
			stored[i] = errs[i] == nil
		}
	}
	if pipe.Len() > 0 {
		pipe.Exec(ctx)
		for i, c := range scripts {
			if c == nil {
				continue
			}
			if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				// Not loaded yet on this Redis: Run loads it.
				stored[i], errs[i] = r.runFill(ctx, ops[i])
				continue
			}
			n, err := c.Int()
			stored[i], errs[i] = n == 1 || ops[i].any && err == nil, err
		}
	}
	return stored, errs
}

// cacheCmd runs one command of the proxy's own on the cache tier (the
// shared multiplexed connections) and returns Redis' error, if any.
func (r *Route) cacheCmd(ctx context.Context, cmd ...[]byte) error {
	out, err := r.cache.Do(ctx, 2, cmd)
	if err != nil {
		return err
	}
	return replyErr(out[0])
}

// replyErr is Redis' error reply as an error, nil for any other reply.
func replyErr(reply []byte) error {
	if len(reply) > 0 && reply[0] == '-' {
		return redisErr(oneLine(string(reply[1 : len(reply)-2])))
	}
	return nil
}

// releaseLock deletes a lease only if it is still ours.
var releaseLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// fetchLocked is fetch across proxy instances: one instance holds a SET NX
// PX lease on the key and loads; the others wait for the fill (polling
// Redis, not PostgreSQL) until the lease ends, and take over if its holder
// died. The wait is bounded by twice the lease.
func (r *Route) fetchLocked(ctx context.Context, key string) (row, error) {
	token := newToken()
	lease := time.Duration(r.cfg.LockTTL)
	deadline := time.Now().Add(2 * lease)
	for time.Now().Before(deadline) {
		ok, err := r.rdb.SetNX(ctx, lockKey(key), token, lease).Result()
		if err != nil {
			return r.loadAndFill(ctx, key) // Redis trouble: load without the lease
		}
		if ok {
			defer releaseLock.Run(context.WithoutCancel(ctx), r.rdb, []string{lockKey(key)}, token)
			if present, _ := r.inCache(ctx, key); present {
				return row{found: true, cached: true}, nil
			}
			return r.loadAndFill(ctx, key)
		}
		for time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			present, absent := r.inCache(ctx, key)
			if present {
				return row{found: true, cached: true}, nil
			}
			if absent {
				return row{}, nil
			}
			if n, _ := r.rdb.Exists(ctx, lockKey(key)).Result(); n == 0 {
				break // lease released or expired without a fill: try to take it
			}
		}
	}
	return r.loadAndFill(ctx, key)
}

// inCache reports whether key is cached (present) or negatively cached
// (absent).
func (r *Route) inCache(ctx context.Context, key string) (present, absent bool) {
	n, err := r.rdb.Exists(ctx, key).Result()
	if err == nil && n == 1 {
		return true, false
	}
	n, err = r.rdb.Exists(ctx, negKey(key)).Result()
	return false, err == nil && n == 1
}

func newToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// shouldRefresh is XFetch (Vattani et al., PVLDB 8(8), 2015): refresh
// early when -delta*beta*ln(rand) >= time to expiry, with delta the mean
// load time. Only hot keys close to expiry pass.
func (r *Route) shouldRefresh(pttlReply []byte) bool {
	if len(pttlReply) < 2 || pttlReply[0] != ':' {
		return false
	}
	left, err := strconv.ParseInt(string(pttlReply[1:len(pttlReply)-2]), 10, 64)
	if err != nil || left < 0 {
		return false
	}
	delta := float64(r.loadDur.Load()) / float64(time.Millisecond)
	u := 1 - mrand.Float64() // (0, 1]
	return -delta*r.cfg.EarlyRefreshBeta*math.Log(u) >= float64(left)
}

// refresh reloads key in the background and overwrites the cached copy,
// once at a time per key.
func (r *Route) refresh(key string) {
	fk := "refresh\x00" + key
	fl, lead := r.loads.flights.join(fk)
	if !lead {
		return
	}
	go func() {
		var err error
		defer func() { r.loads.flights.land(fk, fl, row{}, err) }()
		ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
		defer cancel()
		gen := r.loads.slot(key).Load()
		guard, fillable := r.beforeLoad(ctx, key)
		ls, ok := r.takeLease(ctx, key)
		var rw row
		rw, err = r.loadRow(ctx, r.db.Pool(), key)
		r.Stats.Loads.Add(1)
		if err == nil && fillable && ok && rw.found && r.loads.storeBegin(key, gen) {
			r.Stats.EarlyRefreshes.Add(1)
			r.fillAfterLoad(ctx, key, rw, true, guard, ls)
			r.loads.storeEnd(key)
		}
	}()
}
