package policy

import (
	"context"
	"errors"
	"hash/fnv"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Write-through (PRODUCT.md §5.2): a write goes to PostgreSQL and, once it
// committed, the cache gets the row as PostgreSQL now holds it, all before
// the client's reply. A failed PostgreSQL write leaves the cache as it was
// and returns the error. Writers of one key are serialized in the process
// (keyLocks) and, for read-modify-write commands, across processes by a
// PostgreSQL advisory lock. Reads are cache-aside's.
//
// writeDirect is also cache-aside's write path: the same PostgreSQL
// statements, followed by invalidation instead of a cache update.

// writeDirect runs a write command on key against PostgreSQL, then updates
// or invalidates the cache (afterWrite).
func (r *Route) writeDirect(ctx context.Context, proto int, name, key string, args [][]byte) []byte {
	if r.cfg.Policy == config.WriteThrough {
		// Write-through refuses writes it could not mirror in the cache.
		if _, err := r.cache.Do(ctx, 2, [][]byte{cmdExists, args[1]}); err != nil {
			return r.fail(err)
		}
	}
	unlock := r.locks.lock(key)
	defer unlock()
	reply, err := r.dbWrite(ctx, nil, proto, name, key, args)
	if err != nil {
		return r.fail(err)
	}
	if err := r.afterWrite(ctx, key); err != nil {
		r.log.Warn("cache update after write failed", "err", err)
	}
	return reply
}

// dbWrite applies one write command to PostgreSQL and returns the reply
// Redis would give. With tx it runs inside that transaction (MULTI/EXEC
// over routed keys) and leaves committing to the caller.
func (r *Route) dbWrite(ctx context.Context, outer pgx.Tx, proto int, name, key string, args [][]byte) ([]byte, error) {
	var pool backend.Querier = r.db.Pool()
	if outer != nil {
		pool = outer
	}
	switch name {
	case "set", "setex", "getset":
		value, opts, err := parseSet(name, args)
		if err != nil {
			return nil, err
		}
		if !opts.get && !opts.nx && !opts.xx {
			return resp.AppendStatus(nil, "OK"), r.writeRow(ctx, pool, key, value)
		}
		var reply []byte
		err = r.inTxOf(ctx, outer, key, func(tx pgx.Tx) error {
			old, err := r.loadRow(ctx, tx, key)
			if err != nil {
				return err
			}
			if (opts.nx && old.found) || (opts.xx && !old.found) {
				reply = resp.AppendNull(nil, proto)
				if opts.get {
					reply = r.rowReply(proto, old)
				}
				return nil
			}
			if err := r.writeRow(ctx, tx, key, value); err != nil {
				return err
			}
			reply = resp.AppendStatus(nil, "OK")
			if opts.get {
				reply = r.rowReply(proto, old)
			}
			return nil
		})
		return reply, err
	case "getdel":
		var reply []byte
		err := r.inTxOf(ctx, outer, key, func(tx pgx.Tx) error {
			old, err := r.loadRow(ctx, tx, key)
			if err != nil || !old.found {
				reply = resp.AppendNull(nil, proto)
				return err
			}
			reply = r.rowReply(proto, old)
			_, err = r.table.Delete(ctx, tx, r.id(key))
			return err
		})
		return reply, err
	case "del", "unlink":
		found, err := r.table.Delete(ctx, pool, r.id(key))
		return resp.AppendInt(nil, boolInt(found)), err
	case "incr", "decr", "incrby", "decrby", "incrbyfloat":
		return r.incr(ctx, outer, name, key, args)
	case "hset", "hmset":
		if len(args) < 4 || len(args)%2 != 0 {
			return nil, arity(name)
		}
		fields := make([]backend.Field, 0, len(args)/2-1)
		for i := 2; i < len(args); i += 2 {
			fields = append(fields, backend.Field{Name: string(args[i]), Value: string(args[i+1])})
		}
		if name == "hmset" {
			return resp.AppendStatus(nil, "OK"), r.table.WriteFields(ctx, pool, r.id(key), fields)
		}
		var added int64
		err := r.inTxOf(ctx, outer, key, func(tx pgx.Tx) error {
			old, err := r.loadRow(ctx, tx, key)
			if err != nil {
				return err
			}
			had := map[string]bool{}
			for _, f := range old.fields {
				had[f.Name] = true
			}
			for _, f := range fields {
				if !had[f.Name] {
					added++
					had[f.Name] = true
				}
			}
			return r.table.WriteFields(ctx, tx, r.id(key), fields)
		})
		return resp.AppendInt(nil, added), err
	case "hdel":
		if len(args) < 3 {
			return nil, arity(name)
		}
		names := make([]string, len(args)-2)
		for i, a := range args[2:] {
			names[i] = string(a)
		}
		n, err := r.table.ClearFields(ctx, pool, r.id(key), names)
		return resp.AppendInt(nil, n), err
	case "hincrby":
		if len(args) != 4 {
			return nil, arity(name)
		}
		by, err := strconv.ParseInt(string(args[3]), 10, 64)
		if err != nil {
			return nil, errNotInteger
		}
		var result int64
		err = r.inTxOf(ctx, outer, key, func(tx pgx.Tx) error {
			old, err := r.loadRow(ctx, tx, key)
			if err != nil {
				return err
			}
			var cur int64
			for _, f := range old.fields {
				if f.Name == string(args[2]) {
					if cur, err = strconv.ParseInt(f.Value, 10, 64); err != nil {
						return redisErr("ERR hash value is not an integer")
					}
				}
			}
			if (by > 0 && cur > math.MaxInt64-by) || (by < 0 && cur < math.MinInt64-by) {
				return errOverflow
			}
			result = cur + by
			return r.table.WriteFields(ctx, tx, r.id(key), []backend.Field{{Name: string(args[2]), Value: formatInt(result)}})
		})
		return resp.AppendInt(nil, result), err
	}
	return nil, errors.New("unsupported write")
}

// writeRow writes a whole value (json object or value column).
func (r *Route) writeRow(ctx context.Context, q backend.Querier, key string, value []byte) error {
	if r.cfg.Format == config.FormatJSON {
		return r.table.WriteJSON(ctx, q, r.id(key), value)
	}
	return r.table.WriteValue(ctx, q, r.id(key), string(value))
}

// inTxOf runs fn in one PostgreSQL transaction holding an advisory lock
// on (route, key), so read-modify-write commands are atomic across
// proxies; inside outer when it is not nil (the caller commits), else in a
// transaction of its own.
func (r *Route) inTxOf(ctx context.Context, outer pgx.Tx, key string, fn func(pgx.Tx) error) error {
	tx := outer
	if tx == nil {
		var err error
		if tx, err = r.db.Begin(ctx); err != nil {
			return err
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
	}
	h := fnv.New64a()
	h.Write([]byte(r.cfg.Name))
	h.Write([]byte{0})
	h.Write([]byte(key))
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(h.Sum64())); err != nil {
		return err
	}
	if err := fn(tx); err != nil || outer != nil {
		return err
	}
	return tx.Commit(ctx)
}

// incr is INCR, DECR, INCRBY, DECRBY and INCRBYFLOAT on a value route:
// read, add and write in one locked transaction; a missing row counts as
// 0, as a missing key does in Redis.
func (r *Route) incr(ctx context.Context, outer pgx.Tx, name, key string, args [][]byte) ([]byte, error) {
	delta, float, err := parseIncr(name, args)
	if err != nil {
		return nil, err
	}
	var reply []byte
	err = r.inTxOf(ctx, outer, key, func(tx pgx.Tx) error {
		old, err := r.loadRow(ctx, tx, key)
		if err != nil {
			return err
		}
		cur := "0"
		if old.found && old.value != "" {
			cur = old.value
		}
		next, err := addNumbers(cur, delta, float)
		if err != nil {
			return err
		}
		if err := r.table.WriteValue(ctx, tx, r.id(key), next); err != nil {
			return err
		}
		if float {
			reply = resp.AppendBulk(nil, next)
		} else {
			n, _ := strconv.ParseInt(next, 10, 64)
			reply = resp.AppendInt(nil, n)
		}
		return nil
	})
	return reply, err
}

// parseIncr returns the increment of an INCR-family command as text.
func parseIncr(name string, args [][]byte) (delta string, float bool, err error) {
	switch name {
	case "incr", "decr":
		if len(args) != 2 {
			return "", false, arity(name)
		}
		if name == "decr" {
			return "-1", false, nil
		}
		return "1", false, nil
	case "incrby", "decrby":
		if len(args) != 3 {
			return "", false, arity(name)
		}
		n, err := strconv.ParseInt(string(args[2]), 10, 64)
		if err != nil {
			return "", false, errNotInteger
		}
		if name == "decrby" {
			if n == math.MinInt64 {
				return "", false, errOverflow
			}
			n = -n
		}
		return formatInt(n), false, nil
	default: // incrbyfloat
		if len(args) != 3 {
			return "", false, arity(name)
		}
		if _, err := strconv.ParseFloat(string(args[2]), 64); err != nil {
			return "", false, errNotFloat
		}
		return string(args[2]), true, nil
	}
}

// addNumbers adds delta to cur with Redis' rules: integers must stay in
// int64; floats are formatted like INCRBYFLOAT (no exponent, no trailing
// zeros).
func addNumbers(cur, delta string, float bool) (string, error) {
	if float {
		a, err1 := strconv.ParseFloat(cur, 64)
		b, _ := strconv.ParseFloat(delta, 64)
		if err1 != nil {
			return "", errNotFloat
		}
		s := strconv.FormatFloat(a+b, 'f', 17, 64)
		if strings.Contains(s, ".") {
			s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
		}
		// Use the shortest form that round-trips, as Redis' %.17Lg does
		// after trimming.
		if short := strconv.FormatFloat(a+b, 'f', -1, 64); len(short) < len(s) {
			s = short
		}
		return s, nil
	}
	a, err := strconv.ParseInt(cur, 10, 64)
	if err != nil {
		return "", errNotInteger
	}
	b, _ := strconv.ParseInt(delta, 10, 64)
	if (b > 0 && a > math.MaxInt64-b) || (b < 0 && a < math.MinInt64-b) {
		return "", errOverflow
	}
	return formatInt(a + b), nil
}

// setOpts are SET's options that change what it does on a route.
type setOpts struct{ nx, xx, get bool }

// parseSet validates SET/SETEX/GETSET arguments (https://redis.io/commands/set)
// and returns the value. Expiry options are accepted: the cached copy's
// TTL is the route's (cache-aside invalidates it anyway).
func parseSet(name string, args [][]byte) ([]byte, setOpts, error) {
	var o setOpts
	switch name {
	case "getset":
		if len(args) != 3 {
			return nil, o, arity(name)
		}
		return args[2], setOpts{get: true}, nil
	case "setex":
		if len(args) != 4 {
			return nil, o, arity(name)
		}
		if n, err := strconv.ParseInt(string(args[2]), 10, 64); err != nil || n <= 0 {
			return nil, o, redisErr("ERR invalid expire time in 'setex' command")
		}
		return args[3], o, nil
	}
	if len(args) < 3 {
		return nil, o, arity(name)
	}
	for i := 3; i < len(args); i++ {
		switch strings.ToLower(string(args[i])) {
		case "nx":
			o.nx = true
		case "xx":
			o.xx = true
		case "get":
			o.get = true
		case "keepttl":
		case "ex", "px", "exat", "pxat":
			if i+1 >= len(args) {
				return nil, o, errSyntax
			}
			if n, err := strconv.ParseInt(string(args[i+1]), 10, 64); err != nil || n <= 0 {
				return nil, o, redisErr("ERR invalid expire time in 'set' command")
			}
			i++
		default:
			return nil, o, errSyntax
		}
	}
	if o.nx && o.xx {
		return nil, o, errSyntax
	}
	return args[2], o, nil
}

func arity(name string) error {
	return redisErr("ERR wrong number of arguments for '" + name + "' command")
}

func formatInt(n int64) string { return strconv.FormatInt(n, 10) }

// afterWrite brings the cache in line with PostgreSQL after a committed
// write: cache-aside invalidates; write-through stores the row as it is
// now in PostgreSQL (reloaded, so cache == DB even when PostgreSQL
// normalizes the value), falling back to invalidation.
func (r *Route) afterWrite(ctx context.Context, key string) error {
	if r.cfg.Policy != config.WriteThrough {
		return r.invalidate(ctx, key)
	}
	r.invalidated(key)
	rw, err := r.loadRow(ctx, r.db.Pool(), key)
	if err == nil {
		if _, err = r.cache.Do(ctx, 2, [][]byte{cmdDel, []byte(negKey(key))}); err == nil {
			if rw.found {
				err = r.fill(ctx, key, rw, true)
			} else {
				_, err = r.cache.Do(ctx, 2, [][]byte{cmdDel, []byte(key)})
			}
		}
	}
	if err != nil {
		return errors.Join(err, r.invalidate(ctx, key))
	}
	return nil
}
