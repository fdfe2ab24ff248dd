// Package policy is the route layer: it carries commands on routed keys,
// keys under a configured prefix whose data lives in PostgreSQL and is
// cached in Redis under a caching policy.
//
// Files: set.go (Set, the routes at run time: splitting multi-key commands
// between routes, the PostgreSQL transaction around EXEC), route.go (one
// route), policy.go (the Policy interface, the commands each format
// serves), read.go (the read path every policy shares), cacheaside.go,
// writethrough.go and writeback.go (one policy each), sqlwrite.go (the
// PostgreSQL side of a write, shared by cache-aside and write-through),
// stampede.go (coalesced loads, distributed lease, negative caching, TTL
// jitter, early refresh), flight.go (one load in flight per key),
// local.go (the in-process tier), tx.go (writes queued in MULTI),
// flusher*.go, flushstream.go, flushbatch.go, deadletter.go and
// version.go (the write-back flusher), durability.go (the upstream
// Redis' eviction and persistence, and what they allow write-back),
// cache.go (a Cache over go-redis, for tests and tools), cacheversion.go
// (cache_version: where a cached copy lives), clusterkeys.go (the hash
// tag of a route's keys on a Redis Cluster), verify.go (RESPITE VERIFY),
// audit.go (the audit log of routed writes), capture.go and notify.go
// (invalidation from PostgreSQL's change stream or NOTIFY), lease.go
// (fill leases), tag.go (the proxy's own commits in the stream),
// tracking.go (in-process tiers following Redis), flushall.go
// (FLUSHALL/FLUSHDB that cannot drop a write-back queue), replicas.go
// (write-back writes acknowledged once replicas hold them), unsettled.go
// (keys whose cache step failed after a committed write), batch.go (reads
// over many keys of one route, their misses loaded in one query), live.go
// (the route set that serves, replaced whole on reload).
package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Cache runs commands on the Redis cache tier. Do sends cmds as one
// pipeline and returns each raw reply in protocol proto (2 or 3); err is
// set when Redis could not be reached.
type Cache interface {
	Do(ctx context.Context, proto int, cmds ...[][]byte) ([][]byte, error)
}

// Route is one configured route at run time.
type Route struct {
	cfg   config.Route
	db    *backend.DB
	table *backend.Table
	cache Cache                 // the fast shared path, for hits
	rdb   redis.UniversalClient // go-redis (RESP2), for fills, scripts and locks
	// slotTag is the hash tag of the route's keys on a cluster, "" on one
	// Redis (clusterkeys.go).
	slotTag string
	log     *slog.Logger
	policy  Policy
	traits  // what the policy decides for shared code (policy.go)

	loads   loader
	locks   keyLocks
	local   *localTier // in-process tier, when configured
	loadDur atomic.Int64
	sh      *shared // what the routes of one Set share (durability.go)
	// unsettled: keys whose cache step failed after a write (unsettled.go).
	unsettled unsettled
	// down says why the route cannot serve yet (nil: it can): its table
	// is not described, PostgreSQL being unreachable at start-up
	// (set.go: Set.connect). table is set before down is cleared.
	down atomic.Pointer[string]
	// stale is set while the change capture is too far behind
	// (postgres.invalidation.max_lag): reads of a tracked route are
	// served from PostgreSQL (capture.go).
	stale atomic.Bool

	hooks routeHooks // tests only
	Stats Stats
}

// routeHooks let tests stop a route at chosen points; nil fields do
// nothing.
type routeHooks struct {
	afterLoad   func(key string) // a fill's SELECT returned, before it stores
	beforeStore func(key string) // a fill passed its generation check, before it stores
}

// Stats counts what a route did; read with the atomic Load methods.
type Stats struct {
	Hits, Misses, NegativeHits atomic.Int64 // reads answered from the cache, loaded, answered "absent" from the negative cache
	LocalHits                  atomic.Int64 // hits answered by the in-process tier (also counted in Hits)
	Loads, Coalesced           atomic.Int64 // PostgreSQL loads, and reads that waited for another's load
	EarlyRefreshes, Degraded   atomic.Int64 // XFetch refreshes, reads served from PostgreSQL with Redis down
	Writes, Errors             atomic.Int64
	// RESPITE VERIFY (verify.go): cached rows compared with PostgreSQL,
	// found to differ, and deleted by REPAIR.
	VerifyChecked, VerifyDivergent, VerifyRepaired atomic.Int64
	FillsRefused                                   atomic.Int64 // fills refused because an invalidation took their lease (lease.go)
	Invalidations                                  atomic.Int64 // keys invalidated by change capture (capture.go)
	LocalPurges                                    atomic.Int64 // in-process tier emptied (lost connection, flush, FLUSHALL)
	NoReplicas                                     atomic.Int64 // write-back writes answered NOREPLICAS (replicas.go)
}

// New builds a route over a described table, on its own (tests, tools):
// no durability check guards its write-back writes, and its
// write-through intents are this host's (write_back.consumer's default).
func New(cfg config.Route, db *backend.DB, table *backend.Table, cache Cache, rdb redis.UniversalClient, log *slog.Logger) *Route {
	return newRoute(cfg, db, table, cache, rdb, log, newShared(""))
}

func newRoute(cfg config.Route, db *backend.DB, table *backend.Table, cache Cache, rdb redis.UniversalClient, log *slog.Logger, sh *shared) *Route {
	r := &Route{cfg: cfg, db: db, table: table, cache: cache, rdb: rdb, log: log.With("route", cfg.Name), sh: sh}
	if sh.cluster {
		r.slotTag = slotTag(cfg.Name)
	}
	r.loads.init()
	if lc := cfg.LocalCache; lc != nil && cfg.Format != config.FormatHash {
		r.local = newLocalTier(lc.Size, time.Duration(lc.TTL))
	}
	r.policy, r.traits = newPolicy(r)
	return r
}

// Config returns the route's effective configuration.
func (r *Route) Config() config.Route { return r.cfg }

// DB returns the PostgreSQL pools the route uses.
func (r *Route) DB() *backend.DB { return r.db }

// id is the key column's value for a Redis key: the part after the
// route's prefix (a routed key is a row: docs/MIGRATION.md).
// A cache version's tag (cacheversion.go) is not part of it.
func (r *Route) id(key string) string {
	rest := key[len(r.cfg.Prefix):]
	if r.slotTag != "" {
		rest = strings.TrimPrefix(rest, r.slotTag) // the one cacheKey put in
	}
	if r.cfg.CacheVersion > 0 {
		return untag(rest) // the tag versioned put in
	}
	return rest
}

// Redis keys the policies keep beside a routed key; the "respite:" prefix
// is reserved.
func negKey(key string) string  { return "respite:neg:" + key }
func lockKey(key string) string { return "respite:lock:" + key }

// Refusal is the error for a command a route does not serve.
func (r *Route) Refusal(name string) string {
	return fmt.Sprintf("ERR command '%s' is not supported on route '%s' (%s, prefix %q)",
		strings.ToUpper(name), r.cfg.Name, r.cfg.Policy, r.cfg.Prefix)
}

// Unready is why the route cannot serve yet, nil once it can.
func (r *Route) Unready() error {
	if why := r.down.Load(); why != nil {
		return errors.New(*why)
	}
	return nil
}

// Do carries one command on one of the route's keys (o.Args[1]).
func (r *Route) Do(ctx context.Context, o Op) (reply resp.Reply) {
	if !Supported(r.cfg.Format, o.ID) {
		return resp.Err(r.Refusal(o.name()))
	}
	if err := r.Unready(); err != nil {
		return r.fail(err)
	}
	if len(o.Args) < 2 {
		return resp.Err("ERR wrong number of arguments for '" + o.name() + "' command")
	}
	if r.cfg.Audit && !IsRead(o.ID) {
		start := time.Now()
		defer func() { r.auditReply(o, reply, start, false) }()
	}
	key := o.key()
	if !r.canonical(key) {
		// "user:01" would be a second cached copy of row 1.
		if IsRead(o.ID) {
			return absent(o)
		}
		return r.fail(r.nonCanonical(ctx, key))
	}
	switch o.ID {
	case router.CmdTtl, router.CmdPttl, router.CmdExpire:
		// Cache-side only: the TTL of the cached copy.
		return r.passthrough(ctx, o)
	}
	if !r.settle(ctx, key) && IsRead(o.ID) {
		// The cached copy may be older than PostgreSQL's row.
		return r.degraded(ctx, o)
	}
	if IsRead(o.ID) {
		if r.stale.Load() {
			return r.bypass(ctx, o)
		}
		return r.policy.Read(ctx, o)
	}
	r.Stats.Writes.Add(1)
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return r.policy.Write(ctx, o)
}

// nonCanonical is the error for a write on key, which is not in canonical
// form: it names the canonical key, or says why key is no value of the
// key column's type (a *backend.KeyError).
func (r *Route) nonCanonical(ctx context.Context, key string) error {
	id := clientUntag(r.id(key))
	if strings.HasPrefix(id, versionMark) {
		return fmt.Errorf("key %q is not in canonical form (\\x00v after the prefix starts the proxy's cache version tag)", r.cfg.Prefix+r.id(key))
	}
	canonical, err := r.table.CanonicalForm(ctx, id)
	if err != nil {
		return err
	}
	return fmt.Errorf("key %q is not in canonical form; use %q", r.cfg.Prefix+r.id(key), r.cfg.Prefix+canonical)
}

// checkSet checks, without applying anything, what SET key value on this
// route would refuse: the format, the route's readiness, the key (its
// canonical form, its cast to the key column) and the value (the value
// column's type, or a JSON object of the table's columns), and for
// write-back whether writes are accepted (durability.go).
func (r *Route) checkSet(ctx context.Context, key string, value []byte) error {
	if !Supported(r.cfg.Format, router.CmdSet) {
		return redisErr(r.Refusal("set"))
	}
	if err := r.Unready(); err != nil {
		return err
	}
	if !r.canonical(key) {
		return r.nonCanonical(ctx, key)
	}
	if err := r.table.CheckKey(ctx, r.id(key)); err != nil {
		return err
	}
	if r.queued {
		if err := r.sh.guard.writeErr(); err != nil {
			return err
		}
	}
	if r.cfg.Format == config.FormatJSON {
		return r.table.CheckObject(value)
	}
	return r.table.CheckValue(ctx, string(value))
}

// writeTimeout bounds one write command's PostgreSQL and Redis work.
const writeTimeout = 30 * time.Second

// absent is a read command's reply for a key that has no row.
func absent(o Op) resp.Reply {
	switch o.ID {
	case router.CmdHgetall:
		return resp.Map()
	case router.CmdHkeys, router.CmdHvals:
		return resp.Array()
	case router.CmdHmget:
		elems := make([]resp.Reply, max(len(o.Args)-2, 0))
		for i := range elems {
			elems[i] = resp.Null()
		}
		return resp.Array(elems...)
	case router.CmdHexists, router.CmdHlen, router.CmdExists:
		return resp.Int(0)
	case router.CmdTtl, router.CmdPttl:
		return resp.Int(-2)
	case router.CmdType:
		return resp.Status("none")
	}
	return resp.Null()
}

// passthrough runs o on the cache tier as it is.
func (r *Route) passthrough(ctx context.Context, o Op) resp.Reply {
	out, err := r.cache.Do(ctx, o.Proto, o.Args)
	if err != nil {
		return r.fail(err)
	}
	return resp.Raw(out[0])
}

// fail turns an error into a Redis error reply and counts it.
func (r *Route) fail(err error) resp.Reply {
	r.Stats.Errors.Add(1)
	return resp.Err(r.errorText(err))
}

// errorText is err as the route reports it: Redis' own errors as they
// are, anything else naming the route, and which server failed (the
// backend's errors say postgres: themselves).
func (r *Route) errorText(err error) string {
	var re redisErr
	if errors.As(err, &re) {
		if m := r.slotMoving(string(re)); m != "" {
			return m
		}
		return string(re)
	}
	msg := oneLine(err.Error())
	if m := r.slotMoving(msg); m != "" {
		return m
	}
	var ne net.Error
	if !strings.HasPrefix(msg, "postgres:") && (errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
		msg = "upstream redis unavailable: " + msg
	}
	return fmt.Sprintf("ERR route '%s': %s", r.cfg.Name, msg)
}

// slotMoving is the error for msg, a Redis Cluster error of one of the
// route's commands while its slot moves between nodes (a redirect the
// upstream did not follow to the end, keys split by the migration): a
// retryable -TRYAGAIN, never a redirect the client would act on; "" for
// any other error.
func (r *Route) slotMoving(msg string) string {
	for _, p := range []string{"ASK ", "MOVED ", "TRYAGAIN", "CLUSTERDOWN"} {
		if strings.HasPrefix(msg, p) {
			return "TRYAGAIN route '" + r.cfg.Name + "': its hash slot is moving between nodes (" + msg + "); retry"
		}
	}
	return ""
}

// redisErr is an error whose text is already a Redis error reply.
type redisErr string

func (e redisErr) Error() string { return string(e) }

// Redis' own error texts (src/server.c shared objects, t_string.c).
const (
	errNotInteger = redisErr("ERR value is not an integer or out of range")
	errNotFloat   = redisErr("ERR value is not a valid float")
	errSyntax     = redisErr("ERR syntax error")
	errOverflow   = redisErr("ERR increment or decrement would overflow")
)

func arity(name string) error {
	return redisErr("ERR wrong number of arguments for '" + name + "' command")
}

// oneLine keeps an error text usable in a RESP error reply.
func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ttl returns the route's TTL spread by ± ttl_jitter, in ms.
func (r *Route) ttl() int64 {
	base := float64(time.Duration(r.cfg.TTL).Milliseconds())
	j := float64(r.cfg.TTLJitter)
	ms := int64(base * (1 + j*(2*rand.Float64()-1)))
	return max(ms, 1)
}

func ms(d config.Duration) string { return strconv.FormatInt(time.Duration(d).Milliseconds(), 10) }

func formatInt(n int64) string { return strconv.FormatInt(n, 10) }

func itob(n int64) []byte { return []byte(formatInt(n)) }
