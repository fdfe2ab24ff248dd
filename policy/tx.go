package policy

import (
	"context"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Transactions over routed keys (PRODUCT.md §6). Inside MULTI the server
// asks a route how to queue each write:
//
//   - cache-aside and write-through: the PostgreSQL write is deferred to
//     EXEC, where every such write of the transaction runs in one
//     PostgreSQL transaction that commits only if Redis' EXEC succeeds; on
//     Redis the proxy queues "DEL key", so the cached copy is invalidated
//     atomically with the rest and watchers of the key see it change.
//   - write-back: the queue script itself is queued (EVAL), so the cache
//     write and the queue append happen inside the same MULTI.

// DB returns the PostgreSQL pools the route uses.
func (r *Route) DB() *backend.DB { return r.db }

// Ensure loads key into the cache (or the negative cache) unless it is
// there already, so that a WATCH on it is not aborted by the proxy's own
// fill.
func (r *Route) Ensure(ctx context.Context, key string) error {
	_, err := r.ensure(ctx, key)
	return err
}

// IsRead reports whether a command (lower case) only reads.
func IsRead(name string) bool {
	switch name {
	case "get", "mget", "hget", "hmget", "hgetall", "hexists", "hlen", "hkeys", "hvals", "exists", "ttl", "pttl":
		return true
	}
	return false
}

// Queued is a routed command queued inside MULTI.
type Queued struct {
	// Cmd is what the proxy queues on the client's pinned connection.
	Cmd [][]byte
	// Pos is the command's place in EXEC's reply, set by the session.
	Pos   int
	read  bool // a read, queued as it is
	r     *Route
	name  string
	key   string
	args  [][]byte
	float bool
}

// Write reports whether q is a write, which EXEC must apply.
func (q *Queued) Write() bool { return !q.read }

// Key is the Redis key the write touches.
func (q *Queued) Key() string { return q.key }

// NeedsDB reports whether the write runs in PostgreSQL at EXEC.
func (q *Queued) NeedsDB() bool { return q.r.cfg.Policy != config.WriteBack }

// QueueWrite prepares one write command (name lower case, args[1] the key)
// for a MULTI. An error means the command must not be queued: the server
// then makes Redis abort the transaction (EXECABORT), as Redis does for a
// command it refuses while queueing.
func (r *Route) QueueWrite(ctx context.Context, name string, args [][]byte) (*Queued, error) {
	if !Supported(r.cfg.Format, name) {
		return nil, redisErr(r.Refusal(name))
	}
	key := string(args[1])
	q := &Queued{r: r, name: name, key: key, args: cloneArgs(args)}
	if r.cfg.Policy != config.WriteBack {
		if err := r.table.CheckKey(ctx, r.id(key)); err != nil {
			return nil, err
		}
		switch name {
		case "set", "setex", "getset":
			value, _, err := parseSet(name, args)
			if err != nil {
				return nil, err
			}
			if r.cfg.Format == config.FormatJSON {
				if err := r.table.CheckObject(value); err != nil {
					return nil, err
				}
			}
		case "incr", "decr", "incrby", "decrby", "incrbyfloat":
			if _, _, err := parseIncr(name, args); err != nil {
				return nil, err
			}
		}
		q.Cmd = [][]byte{cmdDel, args[1]}
		return q, nil
	}
	w := r.wb
	if err := r.table.CheckKey(ctx, r.id(key)); err != nil {
		return nil, err
	}
	keys := []string{key, negKey(key), w.stream}
	var src string
	var sargs []string
	switch name {
	case "set", "setex", "getset":
		value, opts, err := parseSet(name, args)
		if err != nil {
			return nil, err
		}
		if opts.nx || opts.xx || opts.get || name == "getset" {
			return nil, redisErr("ERR " + strings.ToUpper(name) + " with NX, XX or GET is not supported on write-back route '" + r.cfg.Name + "'")
		}
		if err := w.check(ctx, value); err != nil {
			return nil, err
		}
		src, sargs = wbSetSrc, []string{string(value)}
	case "incr", "decr", "incrby", "decrby", "incrbyfloat":
		delta, float, err := parseIncr(name, args)
		if err != nil {
			return nil, err
		}
		kind := "int"
		if float {
			kind = "float"
			if err := w.floatColumn(ctx); err != nil {
				return nil, err
			}
		}
		q.float = float
		src, sargs = wbIncrSrc, []string{delta, kind}
	case "del", "unlink":
		src = wbDelSrc
	default: // hash writes
		op := strings.ToUpper(name)
		if name == "hmset" {
			op = "HSET"
		}
		sargs = []string{op}
		for _, a := range args[2:] {
			sargs = append(sargs, string(a))
		}
		src = wbHashSrc
	}
	if name != "set" && name != "setex" {
		// The script needs the row cached (or tombstoned) when EXEC runs.
		if _, err := r.ensure(ctx, key); err != nil {
			return nil, err
		}
	}
	q.Cmd = [][]byte{[]byte("EVAL"), []byte(src), []byte("3")}
	for _, k := range keys {
		q.Cmd = append(q.Cmd, []byte(k))
	}
	for _, a := range sargs {
		q.Cmd = append(q.Cmd, []byte(a))
	}
	r.invalidated(key)
	return q, nil
}

// Apply runs q's PostgreSQL write inside tx (cache-aside, write-through)
// and returns the element for EXEC's reply array; for write-back it turns
// the queue script's reply (raw, from EXEC's array) into the command's own
// reply.
func (q *Queued) Apply(ctx context.Context, tx pgx.Tx, proto int, raw []byte) ([]byte, error) {
	if q.NeedsDB() {
		q.r.Stats.Writes.Add(1)
		return q.r.dbWrite(ctx, tx, proto, q.name, q.key, q.args)
	}
	q.r.Stats.Writes.Add(1)
	if len(raw) == 0 || raw[0] == '-' {
		return raw, nil
	}
	switch q.name {
	case "set", "setex", "hmset":
		return resp.AppendStatus(nil, "OK"), nil
	case "incr", "decr", "incrby", "decrby", "incrbyfloat":
		v, ok := bulkValue(raw)
		if !ok || q.float {
			return raw, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return raw, nil
		}
		return resp.AppendInt(nil, n), nil
	}
	return raw, nil
}

// Committed brings the cache in line with PostgreSQL after the
// transaction committed: write-through stores the new row, cache-aside
// invalidates (again: a read between EXEC and the commit may have cached
// the old row).
func (q *Queued) Committed(ctx context.Context) {
	if !q.NeedsDB() {
		return
	}
	if err := q.r.afterWrite(ctx, q.key); err != nil {
		q.r.log.Warn("cache update after a transaction failed", "err", err)
	}
}

// Abandoned invalidates the cached copy of a key whose transaction failed
// after Redis ran it (the PostgreSQL commit failed).
func (q *Queued) Abandoned(ctx context.Context) {
	q.r.invalidate(ctx, q.key)
}

func cloneArgs(args [][]byte) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = append([]byte(nil), a...)
	}
	return out
}
