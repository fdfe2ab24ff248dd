package policy

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Write-through: a write goes to PostgreSQL and, once it committed, the
// cache gets the row as PostgreSQL now holds it, all before the client's
// reply. A failed PostgreSQL write leaves the cache as it was and answers
// the error; with Redis unreachable, writes are refused (the cache could
// not follow). Writers of one key are serialized in the process and, for
// read-modify-write commands, across processes by an advisory lock
// (sqlwrite.go). Reads are cache-aside's.
//
// Crashes (docs/OPERATIONS.md, "Write-through after a crash"). A proxy
// can die between the PostgreSQL commit and the cache update, and a
// read's fill can race a write (loaded before the commit, stored after
// the update). Either would leave the cache disagreeing with PostgreSQL
// until the TTL. So every write announces itself in Redis before it
// touches PostgreSQL, with an intent in the key's marker, the hash
// respite:wt:<key>:
//
//   - g, the key's write generation: set from Redis' clock when the
//     marker is created, then incremented by every write that begins and
//     every write that finishes;
//   - w:<instance>/<boot>/<token> = the deadline (ms, Redis' clock) of
//     each write in progress: begin + intentLease(), which is the bound on
//     its PostgreSQL part (writePhase: past it the write is abandoned) plus
//     intentMargin (how long PostgreSQL may still run the last statement
//     of a client that died).
//
// and its key in the route's sorted set respite:wt:pending:<route>, scored
// by the earliest deadline of its writes.
//
// A write (wtBegin) bumps g and adds its intent, leaving the cached value
// as it is; then it writes PostgreSQL; then (wtFinish) it removes its
// intent, bumps g, and stores the row it read back after the commit only
// if it was alone: no other intent live and g unchanged since its begin
// but for its own finish. Otherwise it deletes the cached copy, and the
// next read loads it. A write PostgreSQL refused for certain (an error
// from the server, a connection never made) leaves the cache as it was.
//
// A read that misses reads g before it loads the row and fills the cache
// only if g is the same and no intent is live (wtFill), so a fill loaded
// before a write's commit never lands after it.
//
// An intent whose writer died is resolved (wtResolve: the cached copy and
// the negative marker deleted, g bumped): at start-up, by the proxy of
// the same instance name (write_back.consumer, the host name by default:
// the intents of its earlier run are all dead), before it serves; its
// intents then stay as fences for intentMargin, since PostgreSQL finishes
// a statement it received even after the client died, and every proxy's
// sweeper (Set.sweep, every intentSweep) resolves them again then, as it
// resolves any intent past its lease. After a crash, no proxy serves a
// cached value that disagrees with PostgreSQL once the restarted proxy
// starts (reads of the fenced keys go to PostgreSQL), and the cache holds
// the row again from the first read after intentMargin + intentSweep
// (8 s with the default statement timeout); if the proxy does not come
// back, the other instances resolve its intents intentLease() +
// intentSweep after they began, and until then serve the value cached
// before the write.
type writeThrough struct{ reader }

// Write writes PostgreSQL, then stores the row as it is there now.
func (p *writeThrough) Write(ctx context.Context, o Op) resp.Reply { return p.r.writeDirect(ctx, o) }

// Queue defers the PostgreSQL write to EXEC; Redis queues DEL key.
func (p *writeThrough) Queue(ctx context.Context, o Op) (*Queued, error) {
	return p.r.queueDeferred(ctx, o)
}

// Prepare announces the write (its intent) and runs its statements inside
// the EXEC transaction. The cached copy is left alone: a client WATCHing
// the key must not see the proxy change it before EXEC.
func (p *writeThrough) Prepare(ctx context.Context, tx pgx.Tx, q *Queued) (resp.Reply, error) {
	in, err := p.r.beginIntent(ctx, q.Key())
	if err != nil {
		return resp.Reply{}, err
	}
	q.intent = in
	if err := p.r.tagTx(ctx, tx, q.Key(), in); err != nil {
		return resp.Reply{}, err
	}
	return p.r.dbWrite(ctx, tx, q.op)
}

// Finish stores the committed row in the cache, or invalidates the key of
// a transaction that failed after Redis ran it.
func (p *writeThrough) Finish(ctx context.Context, q *Queued, _ []byte, committed bool) resp.Reply {
	out := outcomeInvalidate
	if committed {
		out = outcomeCommitted
	}
	if err := p.r.finishWrite(ctx, q.Key(), q.intent, out); err != nil {
		p.r.log.Warn("cache update after a transaction failed", "err", err)
		p.r.afterFailedStep(q.Key(), q.intent)
	}
	q.intent = nil
	return q.reply
}

// intents reports whether the route's writes announce themselves with
// intents: write-through, and cache-aside, whose writes end by deleting
// the cached copy instead of storing the row (a proxy killed between its
// PostgreSQL write and that deletion would otherwise leave the old copy
// cached for the TTL). Cache-aside reads keep their plain fill (one SET,
// no generation check in Redis): a fill that lands while a dead proxy's
// statement may still commit is deleted by the sweep's second resolution
// of the fenced intent, intentMargin after the restart.
func (r *Route) intents() bool {
	return !r.queued
}

// intentSweep is how often a proxy resolves intents past their lease.
const intentSweep = time.Second

// writePhase bounds a write-through write's PostgreSQL part (its context
// deadline; a transaction in MULTI that ran longer is rolled back):
// writeTimeout or, if longer, two statement timeouts and a second (a
// read-modify-write runs its lock, load and write, then commits).
func (r *Route) writePhase() time.Duration {
	d := writeTimeout
	if r.db != nil {
		d = max(d, 2*r.db.StatementTimeout()+time.Second)
	}
	return d
}

// intentMargin is how long a write's last statement may still commit
// after its proxy died: PostgreSQL runs a statement it received to its
// end (at most postgres.statement_timeout) even when the client is gone.
// Plus two seconds.
func (r *Route) intentMargin() time.Duration {
	st := 5 * time.Second
	if r.db != nil {
		st = r.db.StatementTimeout()
	}
	return st + 2*time.Second
}

// intentLease is how long a write-through write may take before other
// proxies treat it as dead: writePhase() + intentMargin().
func (r *Route) intentLease() time.Duration { return r.writePhase() + r.intentMargin() }

func markerKey(key string) string    { return "respite:wt:" + key }
func pendingKey(route string) string { return "respite:wt:pending:" + route }

// intent is one write-through write in progress.
type intent struct {
	token string // w:<token> in the marker
	gen   string // g after the write began
	start time.Time
}

// The intent scripts take KEYS = {key, negative marker, marker, pending}.
const (
	// wtBeginSrc (ARGV: token, lease ms) bumps g, adds the intent and
	// returns g.
	wtBeginSrc = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'g', 1)
else
  redis.call('HSET', KEYS[3], 'g', string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local deadline = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[3], 'w:' .. ARGV[1], string.format('%d', deadline))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[2]) + 60000)
redis.call('ZADD', KEYS[4], 'LT', deadline, KEYS[1])
return redis.call('HGET', KEYS[3], 'g')`

	// wtLive (inlined in the scripts below) counts the live intents in
	// the marker, deleting those past their deadline, and reschedules
	// the key in pending (or removes it). It leaves the number in live
	// and the deleted ones in expired. With own set (start-up), intents
	// of this instance from another process (boot) are dead but their
	// last statement may still commit: their deadline is brought down to
	// now + fence ms at the latest, and they are counted in fenced.
	wtLive = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live, expired, fenced, earliest = 0, 0, 0, nil
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'w:' then
    local d = tonumber(all[i+1])
    if own ~= '' and string.sub(all[i], 3, 2 + #own) == own and string.sub(all[i], 3 + #own, 2 + #own + #boot) ~= boot then
      if d > now + fence then
        d = now + fence
        redis.call('HSET', KEYS[3], all[i], string.format('%d', d))
      end
      fenced = fenced + 1
    end
    if d <= now then
      redis.call('HDEL', KEYS[3], all[i])
      expired = expired + 1
    else
      live = live + 1
      if earliest == nil or d < earliest then earliest = d end
    end
  end
end
if earliest then redis.call('ZADD', KEYS[4], earliest, KEYS[1]) else redis.call('ZREM', KEYS[4], KEYS[1]) end
`

	// wtFinishSrc (ARGV: token, g at begin, outcome, ttl ms, kind, the
	// value or the hash's field/value pairs) ends a write: with outcome
	// "fill" it stores the row if the write was alone, else deletes the
	// cached copy; "del" deletes it; "keep" leaves it (PostgreSQL
	// refused the write). Returns 1 if it stored the row.
	wtFinishSrc = `
local own, boot, fence = '', '', 0
redis.call('HDEL', KEYS[3], 'w:' .. ARGV[1])
` + wtLive + `
local g = redis.call('HGET', KEYS[3], 'g')
local alone = live == 0 and g == ARGV[2]
if g then redis.call('HINCRBY', KEYS[3], 'g', 1) end
if ARGV[3] == 'keep' then return 0 end
if ARGV[3] == 'fill' and alone then
  redis.call('DEL', KEYS[2])
  if ARGV[5] == 'str' then
    redis.call('SET', KEYS[1], ARGV[6], 'PX', ARGV[4])
  elseif ARGV[5] == 'hash' then
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], unpack(ARGV, 6))
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
redis.call('DEL', KEYS[1], KEYS[2])
return 0`

	// wtFillSrc (ARGV: g read before the load, "" for none; ttl ms; kind
	// str | hash | neg; overwrite 0/1; the value or pairs) is a read's
	// fill: only with g unchanged and no live intent. Returns 1 if it
	// stored.
	wtFillSrc = `
local own, boot, fence = '', '', 0
` + wtLive + `
if live > 0 or (redis.call('HGET', KEYS[3], 'g') or '') ~= ARGV[1] then return 0 end
if ARGV[3] == 'neg' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  return 1
end
if ARGV[4] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[3] == 'str' then
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1`

	// wtResolveSrc (ARGV: own, this instance's token prefix, or "";
	// boot, this process' part of the token; fence ms) deletes intents
	// past their deadline and, with own, fences those of this instance
	// written by another process (an earlier run: see wtLive). If there
	// were any, it deletes the cached copy and the negative marker, and
	// bumps g. Returns how many.
	wtResolveSrc = `
local own, boot, fence = ARGV[1], ARGV[2], tonumber(ARGV[3])
` + wtLive + `
expired = expired + fenced
if expired > 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[3], 'g', 1) end
end
return expired`
)

var (
	wtBegin   = redis.NewScript(wtBeginSrc)
	wtFinish  = redis.NewScript(wtFinishSrc)
	wtFill    = redis.NewScript(wtFillSrc)
	wtResolve = redis.NewScript(wtResolveSrc)
)

func (r *Route) intentKeys(key string) []string {
	return []string{key, negKey(key), markerKey(key), pendingKey(r.rkey())}
}

// instancePrefix starts the tokens of this instance's intents; a token is
// <instance>/<bootID>/<random>.
func (r *Route) instancePrefix() string { return r.sh.instance + "/" }

// bootID tells this process' intents from those an earlier run of the
// same instance left behind. Set once, never changed.
var bootID = newToken()[:12] + "/"

// beginIntent announces a write of key (wtBegin). An error means Redis
// cannot be reached: the write is refused before PostgreSQL.
func (r *Route) beginIntent(ctx context.Context, key string) (*intent, error) {
	in := &intent{token: r.instancePrefix() + bootID + newToken(), start: time.Now()}
	g, err := wtBegin.Run(ctx, r.rdb, r.intentKeys(key), in.token, r.intentLease().Milliseconds()).Text()
	if err != nil {
		return nil, err
	}
	in.gen = g
	return in, nil
}

// outcome is how a write-through write ended, for finishWrite.
type outcome int

const (
	outcomeCommitted  outcome = iota // committed: store the row if alone, else invalidate
	outcomeInvalidate                // may have committed (an ambiguous error): invalidate
	outcomeRefused                   // PostgreSQL refused it for certain: keep the cached copy
)

// finishWrite ends the write of key announced by in (wtFinish): after a
// commit it reads the row back and stores it if the write was alone.
func (r *Route) finishWrite(ctx context.Context, key string, in *intent, out outcome) error {
	r.invalidated(key)
	if in == nil {
		return r.invalidate(ctx, key)
	}
	args := []any{in.token, in.gen, "del", r.ttl(), "none"}
	var ls *fillLease
	switch out {
	case outcomeRefused:
		args[2] = "keep"
	case outcomeCommitted:
		var ok bool
		if ls, ok = r.takeLease(ctx, key); !ok {
			break // the cached copy is deleted
		}
		rw, err := r.loadRow(ctx, r.db.Pool(), key)
		if err != nil {
			break // the cached copy is deleted
		}
		args[2] = "fill"
		switch {
		case !rw.found:
		case r.cfg.Format == config.FormatHash:
			args[4] = "hash"
			for _, f := range rw.fields {
				args = append(args, f.Name, f.Value)
			}
		case r.cfg.Format == config.FormatJSON:
			args[4] = "str"
			args = append(args, string(rw.json))
		default:
			args[4] = "str"
			args = append(args, rw.value)
		}
		if args[4] == "hash" && len(args) == 5 {
			args[4] = "none" // a row with no non-NULL column: nothing to cache
		}
	}
	if ls != nil {
		keys, args := ls.wrap(r, key, r.intentKeys(key), args)
		return leasedWTFinish.Run(context.WithoutCancel(ctx), r.rdb, keys, args...).Err()
	}
	return wtFinish.Run(context.WithoutCancel(ctx), r.rdb, r.intentKeys(key), args...).Err()
}

// refusedForCertain reports an error after which PostgreSQL certainly did
// not apply the write: refused by the server or by the proxy's own
// checks, or no connection was ever made. Anything else (a connection
// lost mid-statement, a deadline) may have committed.
func refusedForCertain(err error) bool {
	var de *backend.DBError
	var ke *backend.KeyError
	var fe *backend.FieldError
	var ce *backend.ConnError
	var te *backend.TimeoutError
	var re redisErr
	switch {
	case errors.As(err, &re), errors.As(err, &ke), errors.As(err, &fe), errors.Is(err, backend.ErrInvalidJSON):
		return true
	case errors.As(err, &te) && te.Queued:
		return true // it never started
	case errors.As(err, &de):
		return true // the server answered with an error: not committed
	case errors.As(err, &ce):
		return strings.HasPrefix(ce.Cause, "cannot connect")
	}
	return false
}

// observe reads key's write generation before a load, for guardedFillOp:
// "" when no write marked the key lately.
func (r *Route) observe(ctx context.Context, key string) (string, error) {
	g, err := r.rdb.HGet(ctx, markerKey(key), "g").Result()
	if err == redis.Nil {
		return "", nil
	}
	return g, err
}

// guardedFillOp is fillOp for a write-through route (wtFill): the row
// loaded after observing generation g is stored only if no write began or
// ended since and none is in progress.
func (r *Route) guardedFillOp(key string, rw row, overwrite bool, g string, ls *fillLease) fillOp {
	args := []any{g, r.ttl(), "str", boolInt(overwrite)}
	switch {
	case !rw.found:
		neg := time.Duration(*r.cfg.NegativeTTL)
		if neg <= 0 {
			return fillOp{}
		}
		args[1], args[2] = neg.Milliseconds(), "neg"
	case r.cfg.Format == config.FormatHash:
		if len(rw.fields) == 0 {
			return fillOp{}
		}
		args[2] = "hash"
		for _, f := range rw.fields {
			args = append(args, f.Name, f.Value)
		}
	case r.cfg.Format == config.FormatJSON:
		args = append(args, string(rw.json))
	default:
		args = append(args, rw.value)
	}
	if ls != nil {
		keys, args := ls.wrap(r, key, r.intentKeys(key), args)
		return fillOp{script: leasedWTFill, keys: keys, args: args}
	}
	return fillOp{script: wtFill, keys: r.intentKeys(key), args: args}
}

// ResolveIntents resolves the route's dead write-through intents: those
// past their lease and, with own, those earlier runs of this instance
// left (at start-up, before serving: none of them can be alive, but the
// last statement of each may still commit for intentMargin, so they are
// kept that long as live intents, fencing fills out, and resolved again
// by the sweep). It returns how many keys it invalidated.
func (r *Route) ResolveIntents(ctx context.Context, own bool) (int, error) {
	if !r.intents() {
		return 0, nil
	}
	prefix, max := "", "("+strconv.FormatInt(time.Now().UnixMilli(), 10)
	if own {
		prefix, max = r.instancePrefix(), "+inf"
	}
	keys, err := r.rdb.ZRangeByScore(ctx, pendingKey(r.rkey()), &redis.ZRangeBy{Min: "-inf", Max: max, Count: 1000}).Result()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, key := range keys {
		got, err := wtResolve.Run(ctx, r.rdb, r.intentKeys(key), prefix, bootID, r.intentMargin().Milliseconds()).Int()
		if err != nil {
			return n, err
		}
		if got > 0 {
			r.invalidated(key)
			n++
		}
	}
	return n, nil
}
