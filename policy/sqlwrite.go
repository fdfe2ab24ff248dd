package policy

import (
	"context"
	"errors"
	"hash/fnv"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// The PostgreSQL side of a write, shared by cache-aside and write-through:
// each write command becomes the statements that give the row the value
// the command would give the key in Redis, and the reply Redis would send.
// Read-modify-write commands (INCR, SET NX/XX/GET, GETDEL, HSET, HINCRBY)
// run in one transaction holding an advisory lock on (route, key), so they
// are atomic across proxies; writers of one key are also serialized in the
// process (keyLocks).

// writeDirect runs a write command on its key against PostgreSQL, then
// brings the cache in line with it: cache-aside deletes the cached copy,
// write-through stores the row (writethrough.go); both with an intent.
func (r *Route) writeDirect(ctx context.Context, o Op) resp.Reply {
	key := o.key()
	unlock := r.locks.lock(key)
	defer unlock()
	// The write announces itself first (writethrough.go), so that a
	// proxy dying before its cache step leaves a record its restart (or
	// another proxy's sweep) resolves. With Redis unreachable write-through
	// refuses the write (the cache could not follow); cache-aside goes on
	// without the record, and the invalidation is retried before the key
	// is served from the cache again (unsettled.go).
	in, err := r.beginIntent(ctx, key)
	if err != nil {
		if r.stores {
			return r.fail(err)
		}
		in = nil
	}
	pctx, cancel := context.WithTimeout(ctx, r.writePhase())
	var reply resp.Reply
	if r.tagged() {
		reply, err = r.dbWriteTagged(pctx, o, in)
	} else {
		reply, err = r.dbWrite(pctx, nil, o)
	}
	cancel()
	out := outcomeCommitted // write-through: store the row
	if !r.stores {
		out = outcomeInvalidate // cache-aside: delete the cached copy
	}
	if err != nil {
		out = outcomeInvalidate
		if refusedForCertain(err) {
			out = outcomeRefused
		}
	}
	if ferr := r.finishWrite(ctx, key, in, out); ferr != nil {
		r.log.Warn("cache update after write failed", "err", ferr)
		if out != outcomeRefused {
			r.afterFailedStep(key, in)
		}
	}
	if err != nil {
		return r.fail(err)
	}
	return reply
}

// dbWrite applies one write command to PostgreSQL and returns the reply
// Redis would give. With tx it runs inside that transaction (MULTI/EXEC
// over routed keys) and leaves committing to the caller.
func (r *Route) dbWrite(ctx context.Context, outer pgx.Tx, o Op) (resp.Reply, error) {
	var pool backend.Querier = r.db.Pool()
	if outer != nil {
		pool = outer
	}
	key, args, name := o.key(), o.Args, o.name()
	switch o.ID {
	case router.CmdSet, router.CmdSetex, router.CmdGetset:
		value, opts, err := parseSet(o)
		if err != nil {
			return resp.Reply{}, err
		}
		if !opts.get && !opts.nx && !opts.xx {
			return resp.OK(), r.writeRow(ctx, pool, key, value)
		}
		var reply resp.Reply
		err = r.inTxOf(ctx, outer, key, func(tx pgx.Tx) error {
			old, err := r.loadRow(ctx, tx, key)
			if err != nil {
				return err
			}
			if (opts.nx && old.found) || (opts.xx && !old.found) {
				reply = resp.Null()
				if opts.get {
					reply = r.rowReply(old)
				}
				return nil
			}
			if err := r.writeRow(ctx, tx, key, value); err != nil {
				return err
			}
			reply = resp.OK()
			if opts.get {
				reply = r.rowReply(old)
			}
			return nil
		})
		return reply, err
	case router.CmdGetdel:
		var reply resp.Reply
		err := r.inTxOf(ctx, outer, key, func(tx pgx.Tx) error {
			old, err := r.loadRow(ctx, tx, key)
			if err != nil || !old.found {
				reply = resp.Null()
				return err
			}
			reply = r.rowReply(old)
			_, err = r.table.Delete(ctx, tx, r.id(key))
			return err
		})
		return reply, err
	case router.CmdDel, router.CmdUnlink:
		found, err := r.table.Delete(ctx, pool, r.id(key))
		return resp.Bool(found), err
	case router.CmdIncr, router.CmdDecr, router.CmdIncrby, router.CmdDecrby, router.CmdIncrbyfloat:
		return r.incr(ctx, outer, o)
	case router.CmdHset, router.CmdHmset:
		if len(args) < 4 || len(args)%2 != 0 {
			return resp.Reply{}, arity(name)
		}
		fields := make([]backend.Field, 0, len(args)/2-1)
		for i := 2; i < len(args); i += 2 {
			fields = append(fields, backend.Field{Name: string(args[i]), Value: string(args[i+1])})
		}
		if o.ID == router.CmdHmset {
			return resp.OK(), r.table.WriteFields(ctx, pool, r.id(key), fields)
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
		return resp.Int(added), err
	case router.CmdHdel:
		if len(args) < 3 {
			return resp.Reply{}, arity(name)
		}
		names := make([]string, len(args)-2)
		for i, a := range args[2:] {
			names[i] = string(a)
		}
		n, err := r.table.ClearFields(ctx, pool, r.id(key), names)
		return resp.Int(n), err
	case router.CmdHincrby:
		if len(args) != 4 {
			return resp.Reply{}, arity(name)
		}
		by, err := strconv.ParseInt(string(args[3]), 10, 64)
		if err != nil {
			return resp.Reply{}, errNotInteger
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
		return resp.Int(result), err
	}
	return resp.Reply{}, errors.New("unsupported write")
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
func (r *Route) incr(ctx context.Context, outer pgx.Tx, o Op) (resp.Reply, error) {
	key := o.key()
	delta, float, err := parseIncr(o)
	if err != nil {
		return resp.Reply{}, err
	}
	var reply resp.Reply
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
			reply = resp.Bulk(next)
		} else {
			n, _ := strconv.ParseInt(next, 10, 64)
			reply = resp.Int(n)
		}
		return nil
	})
	return reply, err
}

// parseIncr returns the increment of an INCR-family command as text.
func parseIncr(o Op) (delta string, float bool, err error) {
	args, name := o.Args, o.name()
	switch o.ID {
	case router.CmdIncr, router.CmdDecr:
		if len(args) != 2 {
			return "", false, arity(name)
		}
		if o.ID == router.CmdDecr {
			return "-1", false, nil
		}
		return "1", false, nil
	case router.CmdIncrby, router.CmdDecrby:
		if len(args) != 3 {
			return "", false, arity(name)
		}
		n, err := strconv.ParseInt(string(args[2]), 10, 64)
		if err != nil {
			return "", false, errNotInteger
		}
		if o.ID == router.CmdDecrby {
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

// parseSet validates SET/SETEX/GETSET arguments as Redis 7.0 does
// (t_string.c: parseExtendedStringArgumentsOrReply, then
// getExpireMillisecondsOrReply) and returns the value: every option is
// read first (a conflicting or unknown one is a syntax error), then the
// expiry's number ("value is not an integer or out of range"), then its
// range ("invalid expire time"). Expiry options are accepted: the cached
// copy's TTL is the route's (cache-aside invalidates it anyway).
func parseSet(op Op) ([]byte, setOpts, error) {
	var o setOpts
	args, name := op.Args, op.name()
	switch op.ID {
	case router.CmdGetset:
		if len(args) != 3 {
			return nil, o, arity(name)
		}
		return args[2], setOpts{get: true}, nil
	case router.CmdSetex:
		if len(args) != 4 {
			return nil, o, arity(name)
		}
		if err := expireTime(args[2], true, true, "setex"); err != nil {
			return nil, o, err
		}
		return args[3], o, nil
	}
	if len(args) < 3 {
		return nil, o, arity(name)
	}
	var expire []byte
	var unit string // ex, px, exat, pxat
	keepTTL := false
	for i := 3; i < len(args); i++ {
		a := args[i]
		hasNext := i+1 < len(args)
		switch {
		case router.IsOption(a, "nx") && !o.xx:
			o.nx = true
		case router.IsOption(a, "xx") && !o.nx:
			o.xx = true
		case router.IsOption(a, "get"):
			o.get = true
		case router.IsOption(a, "keepttl") && unit == "":
			keepTTL = true
		case hasNext && !keepTTL && expiryOption(a) != "" && (unit == "" || unit == expiryOption(a)):
			unit = expiryOption(a)
			expire = args[i+1]
			i++
		default:
			return nil, o, errSyntax
		}
	}
	if expire != nil {
		if err := expireTime(expire, unit == "ex" || unit == "exat", unit == "ex" || unit == "px", "set"); err != nil {
			return nil, o, err
		}
	}
	return args[2], o, nil
}

// expiryOption is SET's expiry option a names (ex, px, exat, pxat), or "".
func expiryOption(a []byte) string {
	for _, opt := range []string{"ex", "px", "exat", "pxat"} {
		if router.IsOption(a, opt) {
			return opt
		}
	}
	return ""
}

// expireTime checks an expiry argument as Redis 7.0's
// getExpireMillisecondsOrReply: an integer, positive, not overflowing
// once in milliseconds and, for a relative one, once added to now.
func expireTime(arg []byte, seconds, relative bool, cmd string) error {
	n, err := strconv.ParseInt(string(arg), 10, 64)
	if err != nil {
		return errNotInteger
	}
	invalid := redisErr("ERR invalid expire time in '" + cmd + "' command")
	if n <= 0 || (seconds && n > math.MaxInt64/1000) {
		return invalid
	}
	if seconds {
		n *= 1000
	}
	if relative && n > math.MaxInt64-time.Now().UnixMilli() {
		return invalid
	}
	return nil
}
