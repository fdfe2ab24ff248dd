// Package policy carries commands on routed keys: keys under a configured
// prefix whose data lives in PostgreSQL and is cached in Redis under a
// caching policy (PRODUCT.md §5). Each policy has its own file:
// cacheaside.go, writethrough.go, writeback.go; stampede.go holds the
// protection every read path shares (coalesced misses, negative caching,
// TTL jitter, early refresh).
//
// A Route handles single-key commands; the server splits multi-key
// commands (MGET, MSET, DEL, EXISTS, UNLINK) into one command per key and
// merges the replies. Replies are raw RESP in the client's protocol.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
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
	cache Cache         // the fast shared path, for hits
	rdb   *redis.Client // go-redis (RESP2), for fills, scripts and locks
	log   *slog.Logger

	loads   loader
	locks   keyLocks
	wb      *writeBack // write-back routes only
	local   *localTier // in-process tier, when configured
	loadDur atomic.Int64

	Stats Stats
}

// Stats counts what a route did; read with the atomic Load methods.
type Stats struct {
	Hits, Misses, NegativeHits atomic.Int64 // reads answered from the cache, loaded, answered "absent" from the negative cache
	LocalHits                  atomic.Int64 // hits answered by the in-process tier (also counted in Hits)
	Loads, Coalesced           atomic.Int64 // PostgreSQL loads, and reads that waited for another's load
	EarlyRefreshes, Degraded   atomic.Int64 // XFetch refreshes, reads served from PostgreSQL with Redis down
	Writes, Errors             atomic.Int64
}

// New builds a route over a described table.
func New(cfg config.Route, db *backend.DB, table *backend.Table, cache Cache, rdb *redis.Client, log *slog.Logger) *Route {
	r := &Route{cfg: cfg, db: db, table: table, cache: cache, rdb: rdb, log: log.With("route", cfg.Name)}
	r.loads.init()
	if cfg.Policy == config.WriteBack {
		r.wb = newWriteBack(r)
	}
	if lc := cfg.LocalCache; lc != nil && cfg.Format != config.FormatHash {
		r.local = newLocalTier(lc.Size, time.Duration(lc.TTL))
	}
	return r
}

// Config returns the route's effective configuration.
func (r *Route) Config() config.Route { return r.cfg }

// id is the key column's value for a Redis key: the part after the
// route's prefix (PRODUCT.md §4, "Key → row").
func (r *Route) id(key string) string { return key[len(r.cfg.Prefix):] }

// Redis keys the policies keep beside a routed key; the "respite:" prefix
// is reserved.
func negKey(key string) string  { return "respite:neg:" + key }
func lockKey(key string) string { return "respite:lock:" + key }

// Supported reports whether a route of this format serves command name
// (lower case), per PRODUCT.md §4.
func Supported(format config.Format, name string) bool {
	switch format {
	case config.FormatJSON:
		switch name {
		case "get", "set", "setex", "getdel", "mget", "mset", "del", "unlink", "exists", "ttl", "pttl", "expire":
			return true
		}
	case config.FormatHash:
		switch name {
		case "hget", "hmget", "hgetall", "hset", "hmset", "hdel", "hexists", "hlen", "hkeys", "hvals", "hincrby", "del", "unlink", "exists":
			return true
		}
	case config.FormatValue:
		switch name {
		case "get", "set", "mget", "mset", "del", "unlink", "exists", "incr", "incrby", "decr", "decrby", "incrbyfloat", "getset":
			return true
		}
	}
	return false
}

// Refusal is the error for a command a route does not serve.
func (r *Route) Refusal(name string) string {
	return fmt.Sprintf("ERR command '%s' is not supported on route '%s' (%s, prefix %q)",
		upper(name), r.cfg.Name, r.cfg.Policy, r.cfg.Prefix)
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// Do runs one single-key command (name in lower case, args[1] the key) and
// returns its raw reply for a client speaking proto.
func (r *Route) Do(ctx context.Context, proto int, name string, args [][]byte) []byte {
	if !Supported(r.cfg.Format, name) {
		return resp.AppendError(nil, r.Refusal(name))
	}
	if len(args) < 2 {
		return resp.AppendError(nil, "ERR wrong number of arguments for '"+name+"' command")
	}
	key := string(args[1])
	if canonical, ok := r.table.CanonicalKey(r.id(key)); !ok {
		// "user:01" would be a second cached copy of row 1.
		if IsRead(name) {
			return r.absent(proto, name, len(args))
		}
		return resp.AppendError(nil, fmt.Sprintf("ERR route '%s': key %q is not in canonical form; use %q", r.cfg.Name, key, r.cfg.Prefix+canonical))
	}
	switch name {
	case "get", "hget", "hmget", "hgetall", "hexists", "hlen", "hkeys", "hvals":
		return r.read(ctx, proto, key, args)
	case "exists":
		found, err := r.ensure(ctx, key)
		if err != nil {
			return r.fail(err)
		}
		return resp.AppendInt(nil, boolInt(found))
	case "ttl", "pttl", "expire":
		// Cache-side only: the TTL of the cached copy.
		return r.passthrough(ctx, proto, args)
	}
	r.Stats.Writes.Add(1)
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	switch r.cfg.Policy {
	case config.WriteBack:
		return r.wb.write(ctx, proto, name, key, args)
	default:
		return r.writeDirect(ctx, proto, name, key, args)
	}
}

// writeTimeout bounds one write command's PostgreSQL and Redis work.
const writeTimeout = 30 * time.Second

// absent is a read command's reply for a key that has no row.
func (r *Route) absent(proto int, name string, argc int) []byte {
	switch name {
	case "hgetall":
		return resp.AppendMap(nil, 0, proto)
	case "hkeys", "hvals":
		return resp.AppendArray(nil, 0)
	case "hmget":
		b := resp.AppendArray(nil, max(argc-2, 0))
		for i := 2; i < argc; i++ {
			b = resp.AppendNull(b, proto)
		}
		return b
	case "hexists", "hlen", "exists":
		return resp.AppendInt(nil, 0)
	case "ttl", "pttl":
		return resp.AppendInt(nil, -2)
	}
	return resp.AppendNull(nil, proto)
}

// passthrough runs args on the cache tier as they are.
func (r *Route) passthrough(ctx context.Context, proto int, args [][]byte) []byte {
	out, err := r.cache.Do(ctx, proto, args)
	if err != nil {
		return r.fail(err)
	}
	return out[0]
}

// Fail is the raw Redis error reply for err, as the route reports it.
func (r *Route) Fail(err error) []byte { return r.fail(err) }

// fail turns an error into a Redis error reply and counts it.
func (r *Route) fail(err error) []byte {
	r.Stats.Errors.Add(1)
	var re redisErr
	if errors.As(err, &re) {
		return resp.AppendError(nil, string(re))
	}
	var ke *backend.KeyError
	var fe *backend.FieldError
	var de *backend.DBError
	switch {
	case errors.As(err, &ke), errors.As(err, &fe), errors.As(err, &de), errors.Is(err, backend.ErrInvalidJSON):
		return resp.AppendError(nil, fmt.Sprintf("ERR route '%s': %s", r.cfg.Name, oneLine(err.Error())))
	}
	return resp.AppendError(nil, fmt.Sprintf("ERR route '%s': %s", r.cfg.Name, oneLine(err.Error())))
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
