package policy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Write-back (write-behind): a write changes the cached
// copy and appends the change to the route's durable queue, a Redis
// Stream, in one Lua script (atomic on the Redis side), and the client
// gets its reply at once. The Flusher (flusher.go) drains the stream into
// PostgreSQL in batches and acknowledges entries only after the commit.
//
// Dirty keys are made persistent (no TTL) so they cannot expire before
// they are flushed, and a deleted key leaves a tombstone (the negative
// marker, without TTL) so a read cannot load the old row back from
// PostgreSQL before the delete is flushed. Counters are queued as the
// resulting absolute value, so replaying an entry is idempotent.
//
// Stream entries have the fields k (the key), and either v (the value:
// the string, or for a hash route the whole hash as a JSON object, with
// removed fields as null) or op=del.

// writeBack is the write-back policy of a route. Reads are cache-aside's.
type writeBack struct {
	reader
	stream string // respite:wb:<route>
	dlq    string // respite:dlq:<route>
}

func newWriteBack(r *Route) *writeBack {
	return &writeBack{reader: reader{r}, stream: StreamKey(r.rkey()), dlq: DeadLetterKey(r.rkey())}
}

// StreamKey is the Redis Stream holding route's pending writes.
func StreamKey(route string) string { return "respite:wb:" + route }

// DeadLetterKey is the Redis Stream of route's entries that failed
// max_retries times.
func DeadLetterKey(route string) string { return "respite:dlq:" + route }

// loadNeeded comes from a script (Redis 7 prefixes it with "ERR ") that found neither the key nor its
// tombstone: the row must be loaded into the cache first.
const loadNeeded = "LOADNEEDED"

// The scripts take KEYS = {key, negative marker, stream}.
const (
	wbSetSrc = `
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'k', KEYS[1], 'v', ARGV[1])
return 1`
	wbIncrSrc = `
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('LOADNEEDED')
end
local v
if ARGV[2] == 'float' then
  v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
else
  v = redis.call('INCRBY', KEYS[1], ARGV[1])
end
redis.call('PERSIST', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'k', KEYS[1], 'v', tostring(v))
return tostring(v)`
	wbDelSrc = `
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('LOADNEEDED')
end
local existed = redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1')
redis.call('XADD', KEYS[3], '*', 'k', KEYS[1], 'op', 'del')
return existed`
	// wbGetSetSrc is GETSET (and SET ... GET): the old cached value, nil
	// for a tombstone or an absent row's marker.
	wbGetSetSrc = `
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('LOADNEEDED')
end
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'k', KEYS[1], 'v', ARGV[1])
return old`
	// wbHashSrc runs a hash write (ARGV[1] = HSET | HDEL | HINCRBY, the
	// rest its arguments) and queues the whole hash.
	wbHashSrc = `
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('LOADNEEDED')
end
local op = ARGV[1]
local res
local removed = {}
if op == 'HDEL' then
  for i = 2, #ARGV do removed[ARGV[i]] = true end
end
res = redis.call(op, KEYS[1], unpack(ARGV, 2))
local obj = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do obj[flat[i]] = flat[i+1] end
for f, _ in pairs(removed) do if obj[f] == nil then obj[f] = cjson.null end end
redis.call('PERSIST', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'k', KEYS[1], 'v', cjson.encode(obj))
return res`
)

// wbOwnPrelude makes a script taking KEYS = {key, marker, stream} take
// KEYS = {key} and ARGV = {marker, stream, args...} instead (Queued.Own):
// Redis checks only the declared key when the restricted user queues it.
const wbOwnPrelude = "local KEYS = {KEYS[1], ARGV[1], ARGV[2]} local ARGV = {unpack(ARGV, 3)}"

var (
	wbSet    = redis.NewScript(wbSetSrc)
	wbGetSet = redis.NewScript(wbGetSetSrc)
	wbIncr   = redis.NewScript(wbIncrSrc)
	wbDel    = redis.NewScript(wbDelSrc)
	wbHash   = redis.NewScript(wbHashSrc)
)

// Write carries one write command: the cache write and the queue append,
// atomically, in one script (followed by WAIT with
// write_back.min_replicas, replicas.go).
func (w *writeBack) Write(ctx context.Context, o Op) resp.Reply {
	r := w.r
	key, args := o.key(), o.Args
	if err := r.sh.guard.writeErr(); err != nil {
		return r.fail(err)
	}
	if err := r.table.CheckKey(ctx, r.id(key)); err != nil {
		return r.fail(err)
	}
	keys := []string{key, negKey(key), w.stream}
	switch o.ID {
	case router.CmdSet, router.CmdSetex, router.CmdGetset:
		value, opts, err := parseSet(o)
		if err != nil {
			return r.fail(err)
		}
		if opts.nx || opts.xx {
			return resp.Err(w.nxRefusal(o))
		}
		if err := w.check(ctx, value); err != nil {
			return r.fail(err)
		}
		r.invalidated(key)
		if opts.get {
			v, err := w.run(ctx, o, wbGetSet, keys, value)
			if errors.Is(err, redis.Nil) {
				return resp.Null()
			}
			if err != nil {
				return r.fail(err)
			}
			s, _ := v.(string)
			return resp.Bulk(s)
		}
		if _, err := w.eval(ctx, wbSet, keys, value); err != nil {
			return r.fail(err)
		}
		return resp.OK()
	case router.CmdIncr, router.CmdDecr, router.CmdIncrby, router.CmdDecrby, router.CmdIncrbyfloat:
		delta, float, err := parseIncr(o)
		if err != nil {
			return r.fail(err)
		}
		kind := "int"
		if float {
			kind = "float"
			if err := w.floatColumn(ctx); err != nil {
				return r.fail(err)
			}
		}
		v, err := w.run(ctx, o, wbIncr, keys, delta, kind)
		if err != nil {
			return r.fail(err)
		}
		s, _ := v.(string)
		if float {
			return resp.Bulk(s)
		}
		n, _ := strconv.ParseInt(s, 10, 64)
		return resp.Int(n)
	case router.CmdDel, router.CmdUnlink:
		v, err := w.run(ctx, o, wbDel, keys)
		if err != nil {
			return r.fail(err)
		}
		n, _ := v.(int64)
		return resp.Int(n)
	case router.CmdHset, router.CmdHmset, router.CmdHdel, router.CmdHincrby:
		hargs := []any{hashOp(o)}
		for _, a := range args[2:] {
			hargs = append(hargs, string(a))
		}
		if o.ID != router.CmdHdel {
			for i := 2; i+1 < len(args); i += 2 {
				if !contains(r.table.Columns(), string(args[i])) {
					return r.fail(&backend.FieldError{Table: r.cfg.Table, Field: string(args[i])})
				}
			}
		}
		v, err := w.run(ctx, o, wbHash, keys, hargs...)
		if err != nil {
			return r.fail(err)
		}
		if o.ID == router.CmdHmset {
			return resp.OK()
		}
		n, _ := v.(int64)
		return resp.Int(n)
	}
	return r.fail(errors.New("unsupported write"))
}

// hashOp is the command the hash script runs for o (HMSET runs as HSET).
func hashOp(o Op) string {
	if o.ID == router.CmdHmset {
		return "HSET"
	}
	return strings.ToUpper(o.name())
}

// Queue queues the write's script itself, so the cache write and the
// queue append happen inside the client's MULTI.
func (w *writeBack) Queue(ctx context.Context, o Op) (*Queued, error) {
	r := w.r
	key := o.key()
	q := &Queued{r: r, op: Op{ID: o.ID, Args: cloneArgs(o.Args), Proto: o.Proto}}
	if err := r.sh.guard.writeErr(); err != nil {
		return nil, err
	}
	if err := r.table.CheckKey(ctx, r.id(key)); err != nil {
		return nil, err
	}
	keys := []string{key, negKey(key), w.stream}
	var src string
	var sargs []string
	switch o.ID {
	case router.CmdSet, router.CmdSetex, router.CmdGetset:
		value, opts, err := parseSet(o)
		if err != nil {
			return nil, err
		}
		if opts.nx || opts.xx {
			return nil, redisErr(w.nxRefusal(o))
		}
		if err := w.check(ctx, value); err != nil {
			return nil, err
		}
		src, sargs = wbSetSrc, []string{string(value)}
		if opts.get {
			src = wbGetSetSrc
			q.get = true
		}
	case router.CmdIncr, router.CmdDecr, router.CmdIncrby, router.CmdDecrby, router.CmdIncrbyfloat:
		delta, float, err := parseIncr(o)
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
	case router.CmdDel, router.CmdUnlink:
		src = wbDelSrc
	default: // hash writes
		sargs = []string{hashOp(o)}
		for _, a := range o.Args[2:] {
			sargs = append(sargs, string(a))
		}
		src = wbHashSrc
	}
	if (o.ID != router.CmdSet && o.ID != router.CmdSetex) || q.get {
		// The script needs the row cached (or tombstoned) when EXEC runs.
		if _, err := r.ensure(ctx, key); err != nil {
			return nil, w.needsRow(o, err)
		}
	}
	q.Cmd = [][]byte{[]byte("EVAL"), []byte(src), []byte("3")}
	for _, k := range keys {
		q.Cmd = append(q.Cmd, []byte(k))
	}
	q.Own = [][]byte{[]byte("EVAL"), []byte(wbOwnPrelude + src), []byte("1")}
	for _, k := range keys {
		q.Own = append(q.Own, []byte(k))
	}
	for _, a := range sargs {
		q.Cmd = append(q.Cmd, []byte(a))
		q.Own = append(q.Own, []byte(a))
	}
	r.invalidated(key)
	return q, nil
}

// Prepare does nothing: the flusher writes PostgreSQL later.
func (w *writeBack) Prepare(context.Context, pgx.Tx, *Queued) (resp.Reply, error) {
	return resp.Reply{}, nil
}

// Finish turns the queued script's reply (elem, from EXEC's array) into
// the command's own reply.
func (w *writeBack) Finish(_ context.Context, q *Queued, elem []byte, _ bool) resp.Reply {
	if len(elem) == 0 {
		return resp.Raw(elem)
	}
	if elem[0] == '-' {
		return resp.Err(scriptError(strings.TrimSuffix(string(elem[1:]), "\r\n")))
	}
	switch q.op.ID {
	case router.CmdSet, router.CmdSetex, router.CmdHmset:
		if q.get {
			return resp.Raw(elem)
		}
		return resp.OK()
	case router.CmdIncr, router.CmdDecr, router.CmdIncrby, router.CmdDecrby, router.CmdIncrbyfloat:
		v, ok := bulkValue(elem)
		if !ok || q.float {
			return resp.Raw(elem)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return resp.Raw(elem)
		}
		return resp.Int(n)
	}
	return resp.Raw(elem)
}

// run runs a script that needs the key cached (or tombstoned), loading the
// row first when the script says so.
func (w *writeBack) run(ctx context.Context, o Op, s *redis.Script, keys []string, args ...any) (any, error) {
	key := o.key()
	for attempt := 0; ; attempt++ {
		v, err := w.eval(ctx, s, keys, args...)
		if err == nil || !strings.Contains(err.Error(), loadNeeded) || attempt == 3 {
			if err != nil && (strings.HasPrefix(err.Error(), "ERR") || strings.HasPrefix(err.Error(), "WRONGTYPE")) {
				return nil, redisErr(scriptError(err.Error()))
			}
			return v, err
		}
		if _, err := w.r.fetch(ctx, key, w.r.loads.filled(key)); err != nil {
			return nil, w.needsRow(o, err)
		}
	}
}

// needsRow is the error for a write on a key that is not cached when its
// row cannot be loaded. Only SET and SETEX write a key without its row;
// every other write's reply, or the whole row the cache must hold, comes
// from the row (docs/OPERATIONS.md, "Write-back while PostgreSQL is
// down").
func (w *writeBack) needsRow(o Op, err error) error {
	if !backend.Unreachable(err) {
		return err
	}
	why := map[router.ID]string{
		router.CmdIncr: "its reply is the new value", router.CmdIncrby: "its reply is the new value",
		router.CmdDecr: "its reply is the new value", router.CmdDecrby: "its reply is the new value",
		router.CmdIncrbyfloat: "its reply is the new value",
		router.CmdGetset:      "its reply is the old value",
		router.CmdDel:         "its reply says whether the row existed", router.CmdUnlink: "its reply says whether the row existed",
		router.CmdHset: "its reply counts the new fields", router.CmdHdel: "its reply counts the removed fields",
		router.CmdHincrby: "its reply is the new value", router.CmdHmset: "the cached hash must hold the whole row",
	}[o.ID]
	if why == "" {
		why = "it needs the row"
	}
	return fmt.Errorf("%s on a key that is not cached needs its row from PostgreSQL (%s), which is unreachable (%v); nothing was queued. "+
		"While PostgreSQL is down write-back takes SET on any key and every write on cached keys",
		strings.ToUpper(o.name()), why, err)
}

// nxRefusal is the error for SET NX or XX on a write-back route: whether
// the row exists is PostgreSQL's to say, and the write is applied later.
func (w *writeBack) nxRefusal(o Op) string {
	return "ERR " + strings.ToUpper(o.name()) + " with NX or XX is not supported on write-back route '" + w.r.cfg.Name +
		"' (GETSET and SET ... GET are; use a write-through route for conditional writes)"
}

// scriptError is an error a script's redis.call raised, as the command
// itself would have said it: Redis 7 appends where in the script it
// happened (" script: <sha>, on @user_script:9."), which names the
// proxy's internals, not the client's command.
func scriptError(text string) string {
	if i := strings.Index(text, " script: "); i >= 0 && strings.Contains(text[i:], "@user_script:") {
		return text[:i]
	}
	return text
}

// floatColumn refuses INCRBYFLOAT when the value column cannot hold a
// fraction: the cache would drift from PostgreSQL for good.
func (w *writeBack) floatColumn(ctx context.Context) error {
	if w.r.table.CheckValue(ctx, "0.5") != nil {
		return redisErr("ERR INCRBYFLOAT needs a floating-point value column on write-back route '" + w.r.cfg.Name + "'")
	}
	return nil
}

// check refuses a value PostgreSQL would reject, before it is queued:
// nothing that can never flush is acknowledged.
func (w *writeBack) check(ctx context.Context, value []byte) error {
	if w.r.cfg.Format == config.FormatJSON {
		return w.r.table.CheckObject(value)
	}
	return w.r.table.CheckValue(ctx, string(value))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// flushBatch writes entries of this route (keyed by their Redis keys,
// which it rewrites to key column values) to PostgreSQL in one statement
// and returns how many rows changed.
func (r *Route) flushBatch(ctx context.Context, entries []backend.Entry) (int, error) {
	for i := range entries {
		entries[i].Key = r.id(entries[i].Key)
	}
	switch r.cfg.Format {
	case config.FormatJSON:
		return r.table.FlushJSON(ctx, r.cfg.Name, entries)
	case config.FormatHash:
		return r.table.FlushFields(ctx, r.cfg.Name, entries)
	}
	return r.table.Flush(ctx, r.cfg.Name, entries)
}
