package policy

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fill leases (memcache's leases): on a route that tracks changes
// (track_changes, capture.go), a read that misses takes a lease on the key
// in Redis before its SELECT begins, and its fill stores the row only if
// the lease is still there. Every invalidation the change capture applies
// deletes the key's lease (and a whole-route flush bumps the route's
// epoch, which every lease carries), so a fill whose SELECT may not have
// seen a commit (one the capture applied after the lease was taken) is
// refused. Nothing compares WAL positions: a commit whose WAL record
// precedes a position the fill could read may still be invisible to its
// snapshot. The capture applies an invalidation only once new snapshots
// see its commit (backend.WaitVisible: decoding sends a commit when its
// WAL is flushed, before the committer leaves the proc array and, with a
// synchronous standby, before the standby confirmed it), so a fill whose
// snapshot missed the commit took its lease before the invalidation, and
// a fill that takes its lease after it reads the new rows.

func leaseKey(key string) string   { return "respite:lease:" + key }
func epochKey(route string) string { return "respite:cdc:epoch:" + route }

// leaseTTL bounds a lease: a load that takes longer does not fill.
const leaseTTL = loadTimeout + 5*time.Second

// fillLease is a lease taken before a load: its token in the key's lease
// hash and the route's epoch when it was taken.
type fillLease struct{ token, epoch string }

// leaseTake (KEYS: lease, route epoch; ARGV: token, ttl ms) adds the
// token to the lease hash and returns the route's epoch.
var leaseTake = redis.NewScript(`
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('GET', KEYS[2]) or ''`)

// takeLease takes a fill lease on key before a load, on a route that
// tracks changes (nil otherwise). ok is false when Redis could not be
// asked: the load's result must not be cached.
func (r *Route) takeLease(ctx context.Context, key string) (l *fillLease, ok bool) {
	if !r.cfg.TrackChanges {
		return nil, true
	}
	tok := newToken()
	ep, err := leaseTake.Run(ctx, r.rdb, []string{leaseKey(key), epochKey(r.rkey())}, tok, leaseTTL.Milliseconds()).Text()
	if err != nil {
		return nil, false
	}
	return &fillLease{token: tok, epoch: ep}, true
}

// leased wraps a fill script so that it runs only while the caller's
// lease holds: it takes two more KEYS (the lease hash and the route's
// epoch, last) and two more ARGV (token and epoch, first), consumes the
// token, and sets leased. refused is the Lua run when the lease is gone
// (default: return 0, nothing stored); the script sees its own arguments
// as A.
func leased(src, refused string) *redis.Script {
	if refused == "" {
		refused = "if not leased then return 0 end"
	}
	return redis.NewScript(`
local nk = #KEYS
local leased = redis.call('HDEL', KEYS[nk-1], ARGV[1]) == 1 and (redis.call('GET', KEYS[nk]) or '') == ARGV[2]
local A = {}
for i = 3, #ARGV do A[i-2] = ARGV[i] end
` + refused + "\n" + strings.ReplaceAll(src, "ARGV", "A"))
}

// plainFillSrc (KEYS: key; ARGV: value, ttl ms, nx 0/1) stores a string
// fill; returns 1 if it stored.
const plainFillSrc = `
local ok
if ARGV[3] == '1' then ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') else ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ok then return 1 end
return 0`

var (
	leasedPlainFill = leased(plainFillSrc, "")
	leasedHashFill  = leased(fillHashSrc, "")
	leasedWTFill    = leased(wtFillSrc, "")
	// A write-through write's own fill after its commit: without the
	// lease the cached copy is deleted instead (the intent still ends).
	leasedWTFinish = leased(wtFinishSrc, "if not leased and A[3] == 'fill' then A[3] = 'del' end")
)

// wrap puts l's keys after keys and its arguments before args.
func (l *fillLease) wrap(r *Route, key string, keys []string, args []any) ([]string, []any) {
	keys = append(append([]string(nil), keys...), leaseKey(key), epochKey(r.rkey()))
	return keys, append([]any{l.token, l.epoch}, args...)
}
