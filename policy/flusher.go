package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
)

// The write-back flusher (PRODUCT.md §5.3, §8 "proxy killed mid
// write-back", "PostgreSQL down").
//
// Queue. Every write-back route has a Redis Stream, StreamKey(route),
// filled by the write scripts of writeback.go, and a consumer group
// ConsumerGroup on it shared by all proxy instances. Each proxy reads as
// its own consumer (a name stable across restarts). An entry is read
// (XREADGROUP), which makes it pending for this consumer, written to
// PostgreSQL, and only after the statement committed acknowledged and
// deleted (XACK and XDEL in one MULTI), so the stream holds exactly the
// entries not yet acknowledged. A proxy that dies between the read and the
// acknowledgement leaves the entries pending: at start it re-reads its own
// pending entries first (XREADGROUP ... ID 0), and any instance claims
// entries idle for longer than ClaimIdle from other consumers
// (XAUTOCLAIM), so the entries of an instance that never comes back are
// flushed too. Flushing an entry twice is harmless: see Versions.
//
// Versions. An entry's backend.Entry.Version comes from its stream id
// "ms-seq" as ms<<20 | seq (seq capped at 2^20-1: more than a million
// entries in one millisecond of one stream would share a version, and
// Redis does not come close). Stream ids increase in a stream, so versions
// follow the order of the writes; (*Route).flushBatch keeps per key the
// highest version of a batch and skips keys whose stored version is not
// lower (respite_versions), so batches may be flushed twice or out of
// order without undoing a newer write. A dead-lettered entry that is
// replayed gets a new stream id but keeps its original version (field
// orig), so a replay never overwrites a newer write of the same key. If
// Redis loses the stream (a restart without persistence) and its clock is
// behind the versions already stored, new writes of those keys are skipped
// until the clock passes them.
//
// Batches. Entries are flushed in batches of up to batch_size, one
// statement each: a batch is flushed as soon as it is full, a partial one
// once flush_interval has passed since the route's previous flush. Run
// waits for new entries with one XREADGROUP BLOCK over all streams (at
// most Block, default 100ms), so it neither busy-loops nor sleeps past due
// work. Routes with priority high are served before low ones in every
// pass.
//
// Failures. An error that says PostgreSQL cannot be reached or is
// temporarily unable to serve (network and connection errors, SQLSTATE
// classes 08, 53, 57P, 40, 55P03, 57014, 58) keeps the entries pending and
// retries the route with exponential backoff and jitter (RetryBase doubling
// up to RetryMax, each wait drawn uniformly from [d/2, d]), forever: these
// failures never count against max_retries and never dead-letter anything.
// A data error (a poison entry: SQLSTATE class 22, 23, 44 or P0, or a value
// the route cannot decode) splits the batch in halves, recursively, so the
// good entries commit; an entry that fails alone is retried on its own,
// with backoff, while the route's other entries go on flushing. Attempts
// are counted in memory per stream id (a restart starts the count again).
// Any other error (a missing table, a permission) counts one attempt for
// every entry of the batch. An entry whose attempts reach max_retries is
// added to the dead-letter stream DeadLetterKey(route) with its fields
// plus error, route, id and attempts, and acknowledged and deleted from
// the queue atomically (a script that does nothing if the entry is no
// longer queued, so an entry is dead-lettered once). DeadLetters, Replay
// and Drop administer it. Entries an instance keeps pending while it
// retries can be claimed by other instances once idle for ClaimIdle,
// which is what should happen when only this instance lost PostgreSQL; a
// duplicate flush is harmless (Versions).
//
// Redis Cluster: Run reads all streams in one XREADGROUP, which needs them
// in one slot; a clustered upstream needs one read per stream.

// ConsumerGroup is the consumer group every proxy instance reads the
// write-back streams in.
const ConsumerGroup = "respite"

// Flusher drains every write-back route's stream into PostgreSQL.
//
// The exported option fields may be changed before the first call to Run,
// Drain or FlushNow. All methods are safe for concurrent use; Run, Drain and
// FlushNow take turns (one pass at a time). For a graceful shutdown, stop
// accepting writes, cancel Run, wait for it to return, then Drain with a
// timeout.
type Flusher struct {
	// ClaimIdle is how long an entry must have been pending with another
	// consumer before this one claims it (XAUTOCLAIM min-idle-time).
	// Default 30s.
	ClaimIdle time.Duration
	// RetryBase and RetryMax bound the exponential backoff between retries
	// of a failed flush (defaults 100ms and 10s).
	RetryBase, RetryMax time.Duration
	// Block is the longest Run waits in XREADGROUP BLOCK (default 100ms).
	Block time.Duration
	// StatementTimeout bounds one flush statement (default 30s). A
	// statement is not cancelled when Run's context ends, so the batch in
	// flight is still acknowledged; Drain's deadline does cancel it.
	StatementTimeout time.Duration

	// Stats counts what the flusher did; read with the atomic Load methods.
	Stats FlusherStats

	rdb      *redis.Client
	consumer string
	log      *slog.Logger
	routes   []*wbRoute // high priority first, then configuration order

	mu     sync.Mutex // one pass at a time; guards the routes' state
	readMu sync.Mutex // held by Run's blocking read, so Drain can wait for it

	// afterFlush, if set, is called after every committed batch (tests).
	afterFlush func(route string, entries int)
}

// FlusherStats are the flusher's counters.
type FlusherStats struct {
	Batches      atomic.Int64 // batches committed (one statement each)
	Entries      atomic.Int64 // entries committed and acknowledged
	Statements   atomic.Int64 // flush statements sent to PostgreSQL, failed ones included
	Coalesced    atomic.Int64 // entries saved by coalescing: entries minus distinct keys, per committed batch
	Retries      atomic.Int64 // statements that retried entries after a failure
	DeadLettered atomic.Int64 // entries moved to a dead-letter stream
	Errors       atomic.Int64 // failed statements and Redis errors
}

// QueueStats describes one write-back route's queue.
type QueueStats struct {
	Route    string
	Priority string
	// Length is the number of entries not yet acknowledged: unread plus
	// pending (acknowledged entries are deleted, so this is XLEN).
	Length int64
	// OldestAge is the age of the oldest unacknowledged entry, from its
	// stream id (0 when the queue is empty): the sync lag.
	OldestAge time.Duration
	// InFlight is the number of entries pending in the consumer group
	// (read by some instance, not yet acknowledged).
	InFlight int64
	// DeadLetters is the length of the dead-letter stream.
	DeadLetters int64
	// Err is set when the numbers could not be read (Redis down).
	Err error
}

// wbRoute is the flusher's state for one route. Fields below r are
// guarded by Flusher.mu.
type wbRoute struct {
	r          *Route
	name       string
	prefix     string
	stream     string
	dlq        string
	batch      int
	interval   time.Duration
	maxRetries int
	high       bool

	group     bool                 // the consumer group is known to exist
	buf       []redis.XMessage     // read (pending for us), not yet flushed, in read order
	held      map[string]bool      // ids in buf or retry
	retry     map[string]*poisoned // entries that failed alone, waiting for their next attempt
	pel       string               // cursor of the re-read of our own pending entries; "" when done
	claimFrom string               // XAUTOCLAIM cursor
	claimAt   time.Time            // next XAUTOCLAIM
	lastFlush time.Time
	waitUntil time.Time // connection backoff: no flush before
	fails     int       // consecutive unreachable failures
	lastErr   error     // why the last flush could not run, while fails > 0
}

// poisoned is an entry that failed on its own.
type poisoned struct {
	msg      redis.XMessage
	attempts int
	next     time.Time
	err      error
}

// NewFlusher builds a flusher over the write-back routes among routes (the
// others are ignored). consumer is this proxy's consumer name in
// ConsumerGroup; it must be stable across restarts (from the
// configuration, or the host name) so that a restarted proxy finds its own
// pending entries; "" means the host name. log nil means slog.Default().
func NewFlusher(routes []*Route, rdb *redis.Client, consumer string, log *slog.Logger) *Flusher {
	if consumer == "" {
		consumer, _ = os.Hostname()
		if consumer == "" {
			consumer = "respite"
		}
	}
	if log == nil {
		log = slog.Default()
	}
	f := &Flusher{
		ClaimIdle:        30 * time.Second,
		RetryBase:        100 * time.Millisecond,
		RetryMax:         10 * time.Second,
		Block:            100 * time.Millisecond,
		StatementTimeout: 30 * time.Second,
		rdb:              rdb,
		consumer:         consumer,
		log:              log.With("component", "flusher", "consumer", consumer),
	}
	now := time.Now()
	for _, r := range routes {
		cfg := r.Config()
		if cfg.Policy != config.WriteBack {
			continue
		}
		f.routes = append(f.routes, &wbRoute{
			r:          r,
			name:       cfg.Name,
			prefix:     cfg.Prefix,
			stream:     StreamKey(cfg.Name),
			dlq:        DeadLetterKey(cfg.Name),
			batch:      max(cfg.BatchSize, 1),
			interval:   time.Duration(cfg.FlushInterval),
			maxRetries: max(cfg.MaxRetries, 1),
			high:       cfg.Priority == "high",
			held:       map[string]bool{},
			retry:      map[string]*poisoned{},
			pel:        "0",
			claimFrom:  "0-0",
			lastFlush:  now,
		})
	}
	sort.SliceStable(f.routes, func(i, j int) bool { return f.routes[i].high && !f.routes[j].high })
	return f
}

// Consumer returns the consumer name the flusher reads as.
func (f *Flusher) Consumer() string { return f.consumer }

// Run flushes in the background until ctx is done. Entries read but not
// flushed when it returns stay pending in Redis: call Drain to flush them
// (graceful shutdown), or a later flusher with the same consumer name
// flushes them.
func (f *Flusher) Run(ctx context.Context) {
	if len(f.routes) == 0 {
		<-ctx.Done()
		return
	}
	redisFails := 0
	for ctx.Err() == nil {
		f.mu.Lock()
		next, err := f.pass(ctx, false, false)
		streams, count := f.readable(time.Now())
		f.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			redisFails++
			f.Stats.Errors.Add(1)
			if redisFails == 1 || redisFails%20 == 0 {
				f.log.Warn("write-back flusher: redis error", "err", err, "failures", redisFails)
			}
			sleepCtx(ctx, f.backoff(redisFails))
			continue
		}
		wait := min(max(time.Until(next), time.Millisecond), f.Block)
		if len(streams) == 0 {
			sleepCtx(ctx, wait)
			continue
		}
		if err := f.readNew(ctx, streams, count, wait); err != nil && ctx.Err() == nil {
			redisFails++
			f.Stats.Errors.Add(1)
			if redisFails == 1 || redisFails%20 == 0 {
				f.log.Warn("write-back flusher: redis error", "err", err, "failures", redisFails)
			}
			sleepCtx(ctx, f.backoff(redisFails))
			continue
		}
		redisFails = 0
	}
}

// Drain flushes everything pending: this consumer's pending entries (also
// those a cancelled Run read last), entries of other consumers idle for
// longer than ClaimIdle, and new entries, until none is left or ctx ends.
// Unreachable PostgreSQL is retried with backoff until ctx ends; poison
// entries are retried until they are dead-lettered. It returns how many
// entries remain in the streams (XLEN summed over the routes): they are
// still in the durable queue, never dropped. err is nil when this
// consumer has nothing left to flush (left then counts only entries other
// live consumers hold, or that arrived meanwhile), otherwise it says why
// the drain stopped.
func (f *Flusher) Drain(ctx context.Context) (left int64, err error) {
	// A Run cancelled just before may still be in its blocking read (at
	// most Block): let it deliver what it read, so that this drain sees it.
	f.readMu.Lock()
	f.readMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.routes {
		w.pel = "0" // a cancelled read may have made entries pending unseen
		w.claimFrom, w.claimAt = "0-0", time.Time{}
	}
	var lastErr error
	for {
		if err := ctx.Err(); err != nil {
			for _, w := range f.routes {
				if w.lastErr != nil {
					lastErr = fmt.Errorf("route %s: %w", w.name, w.lastErr)
				}
			}
			if lastErr != nil {
				err = fmt.Errorf("%w (last error: %v)", err, lastErr)
			}
			left, _ := f.remaining(ctx)
			return left, err
		}
		next, err := f.pass(ctx, true, false)
		if err != nil {
			lastErr = err
		}
		empty := true
		for _, w := range f.routes {
			if !w.group {
				empty = false
				continue
			}
			if len(w.buf) < w.batch && w.pel == "" && !time.Now().Before(w.waitUntil) {
				n, err := f.readOne(ctx, w, int64(w.batch-len(w.buf)))
				if err != nil {
					lastErr = err
					empty = false
					continue
				}
				if n > 0 {
					empty = false
					continue
				}
			}
			if len(w.buf) > 0 || len(w.retry) > 0 || w.pel != "" || w.claimFrom != "0-0" || w.claimAt.IsZero() {
				empty = false
			}
		}
		if empty {
			left, err := f.remaining(ctx)
			return left, err
		}
		if err == nil {
			// Only waiting for a backoff or a retry left: sleep until due.
			if d := time.Until(next); d > 0 {
				sleepCtx(ctx, min(d, f.Block))
			}
		} else {
			sleepCtx(ctx, min(f.backoff(1), f.Block))
		}
	}
}

// FlushNow makes one immediate pass over all routes, high priority first:
// it flushes what is buffered and what is in the streams now (up to their
// length at the call), ignoring flush_interval and any backoff. Poison
// entries are handled as always (split, retried later, dead-lettered). It
// returns the first error that kept entries from being flushed (PostgreSQL
// or Redis unreachable); those entries stay pending.
func (f *Flusher) FlushNow(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for _, w := range f.routes {
		if err := f.step(ctx, w, time.Now(), true, true); err != nil {
			keep(err)
			continue
		}
		n, err := f.rdb.XLen(ctx, w.stream).Result()
		if err != nil {
			keep(err)
			continue
		}
		for reads := n/int64(w.batch) + 1; reads > 0; reads-- {
			got := 0
			if w.pel == "" { // else step re-reads our own pending entries first
				if got, err = f.readOne(ctx, w, int64(w.batch)); err != nil {
					keep(err)
					break
				}
			}
			if err := f.step(ctx, w, time.Now(), true, true); err != nil {
				keep(err)
				break
			}
			if got < w.batch && w.pel == "" {
				break
			}
		}
	}
	return first
}

// Queues reports every write-back route's queue, high priority first.
func (f *Flusher) Queues(ctx context.Context) []QueueStats {
	out := make([]QueueStats, 0, len(f.routes))
	now := time.Now()
	for _, w := range f.routes {
		q := QueueStats{Route: w.name, Priority: "low"}
		if w.high {
			q.Priority = "high"
		}
		p := f.rdb.Pipeline()
		xlen := p.XLen(ctx, w.stream)
		first := p.XRangeN(ctx, w.stream, "-", "+", 1)
		pend := p.XPending(ctx, w.stream, ConsumerGroup)
		dlen := p.XLen(ctx, w.dlq)
		p.Exec(ctx)
		q.Length, q.Err = xlen.Result()
		if msgs, err := first.Result(); err == nil && len(msgs) > 0 {
			if ms, _, ok := parseID(msgs[0].ID); ok {
				q.OldestAge = max(now.Sub(time.UnixMilli(ms)), 0)
			}
		} else if err != nil && q.Err == nil {
			q.Err = err
		}
		if pi, err := pend.Result(); err == nil {
			q.InFlight = pi.Count
		} else if !isNoGroup(err) && q.Err == nil {
			q.Err = err
		}
		if n, err := dlen.Result(); err == nil {
			q.DeadLetters = n
		} else if q.Err == nil {
			q.Err = err
		}
		out = append(out, q)
	}
	return out
}

// DeadLetters lists up to count entries (all when count <= 0) of route's
// dead-letter stream, oldest first. Each has the fields of the queued
// entry (k, and v or op=del; orig for a replayed entry) plus error (why
// the last attempt failed), route, id (its id in the queue) and attempts.
func (f *Flusher) DeadLetters(ctx context.Context, route string, count int64) ([]redis.XMessage, error) {
	w, err := f.route(route)
	if err != nil {
		return nil, err
	}
	if count > 0 {
		return f.rdb.XRangeN(ctx, w.dlq, "-", "+", count).Result()
	}
	return f.rdb.XRange(ctx, w.dlq, "-", "+").Result()
}

// replayScript moves dead letters (ARGV: their ids) from KEYS[1] (the
// dead-letter stream) back to KEYS[2] (the queue), atomically per call.
// The new entry keeps the original version in field orig.
var replayScript = redis.NewScript(`
local n = 0
for i = 1, #ARGV do
  local e = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #e == 1 then
    local f = e[1][2]
    local out = {}
    local orig, id
    for j = 1, #f, 2 do
      local name = f[j]
      if name == 'orig' then orig = f[j+1]
      elseif name == 'id' then id = f[j+1]
      elseif name ~= 'error' and name ~= 'route' and name ~= 'attempts' then
        out[#out+1] = name
        out[#out+1] = f[j+1]
      end
    end
    out[#out+1] = 'orig'
    out[#out+1] = orig or id or ARGV[i]
    redis.call('XADD', KEYS[2], '*', unpack(out))
    redis.call('XDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n`)

// dropAll empties a dead-letter stream and says how many entries it had.
var dropAll = redis.NewScript(`
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n`)

// Replay moves route's dead letters with the given ids (all of them when
// none is given) back to its queue as new entries, and deletes them from
// the dead-letter stream; each move is atomic. It returns how many moved
// (unknown ids are skipped). A replayed entry keeps its original version,
// so it does not overwrite a newer write of its key. Fix the cause first:
// an entry that fails again goes back to the dead-letter stream after
// max_retries attempts.
func (f *Flusher) Replay(ctx context.Context, route string, ids ...string) (int, error) {
	w, err := f.route(route)
	if err != nil {
		return 0, err
	}
	if len(ids) > 0 {
		n, err := replayScript.Run(ctx, f.rdb, []string{w.dlq, w.stream}, strArgs(ids)...).Int()
		return n, err
	}
	// All: the entries present now, page by page (entries dead-lettered
	// during the replay stay).
	last, err := f.rdb.XRevRangeN(ctx, w.dlq, "+", "-", 1).Result()
	if err != nil || len(last) == 0 {
		return 0, err
	}
	end, total := last[0].ID, 0
	for {
		page, err := f.rdb.XRangeN(ctx, w.dlq, "-", end, 100).Result()
		if err != nil {
			return total, err
		}
		if len(page) == 0 {
			return total, nil
		}
		pids := make([]string, len(page))
		for i, m := range page {
			pids[i] = m.ID
		}
		n, err := replayScript.Run(ctx, f.rdb, []string{w.dlq, w.stream}, strArgs(pids)...).Int()
		total += n
		if err != nil {
			return total, err
		}
	}
}

// Drop deletes route's dead letters with the given ids (all when none is
// given) and returns how many it deleted.
func (f *Flusher) Drop(ctx context.Context, route string, ids ...string) (int, error) {
	w, err := f.route(route)
	if err != nil {
		return 0, err
	}
	if len(ids) > 0 {
		n, err := f.rdb.XDel(ctx, w.dlq, ids...).Result()
		return int(n), err
	}
	return dropAll.Run(ctx, f.rdb, []string{w.dlq}).Int()
}

func (f *Flusher) route(name string) (*wbRoute, error) {
	for _, w := range f.routes {
		if w.name == name {
			return w, nil
		}
	}
	return nil, fmt.Errorf("no write-back route %q", name)
}

// pass does the due work of every route, high priority first (see step).
// It returns when the next work is due and the first Redis error; a route
// whose PostgreSQL is unreachable is in backoff, which is not an error
// here.
func (f *Flusher) pass(ctx context.Context, force, ignoreWait bool) (next time.Time, err error) {
	next = time.Now().Add(f.Block)
	for _, w := range f.routes {
		if ctx.Err() != nil {
			return next, ctx.Err()
		}
		if e := f.step(ctx, w, time.Now(), force, ignoreWait); e != nil && !isPGUnavailable(e) && err == nil {
			err = e
		}
		if d := w.due(); !d.IsZero() && d.Before(next) {
			next = d
		}
	}
	return next, err
}

// due is when w has work next: zero when it has none scheduled.
func (w *wbRoute) due() time.Time {
	var d time.Time
	earlier := func(t time.Time) {
		if d.IsZero() || t.Before(d) {
			d = t
		}
	}
	if w.waitUntil.After(time.Now()) {
		return w.waitUntil
	}
	if len(w.buf) > 0 {
		if len(w.buf) >= w.batch {
			earlier(time.Now())
		}
		earlier(w.lastFlush.Add(w.interval))
	}
	for _, p := range w.retry {
		earlier(p.next)
	}
	if w.pel != "" {
		earlier(time.Now())
	}
	if w.claimAt.IsZero() {
		earlier(time.Now())
	} else {
		earlier(w.claimAt)
	}
	return d
}

// readable lists the streams Run should read new entries from: routes
// with their group, not in backoff, with room in their buffer. count is
// the largest room.
func (f *Flusher) readable(now time.Time) (streams []*wbRoute, count int64) {
	for _, w := range f.routes {
		if w.group && w.pel == "" && !now.Before(w.waitUntil) && len(w.buf) < w.batch {
			streams = append(streams, w)
			count = max(count, int64(w.batch-len(w.buf)))
		}
	}
	return streams, count
}

// readNew reads new entries of several streams in one XREADGROUP BLOCK
// into their buffers.
func (f *Flusher) readNew(ctx context.Context, ws []*wbRoute, count int64, block time.Duration) error {
	f.readMu.Lock()
	defer f.readMu.Unlock()
	args := make([]string, 0, 2*len(ws))
	for _, w := range ws {
		args = append(args, w.stream)
	}
	for range ws {
		args = append(args, ">")
	}
	res, err := f.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: ConsumerGroup, Consumer: f.consumer, Streams: args, Count: count, Block: block,
	}).Result()
	if err == redis.Nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		if isNoGroup(err) {
			for _, w := range ws {
				w.group = false
			}
		}
		return err
	}
	for _, s := range res {
		for _, w := range ws {
			if w.stream == s.Stream {
				w.add(s.Messages)
			}
		}
	}
	return nil
}

// readOne reads up to count new entries of w without blocking.
func (f *Flusher) readOne(ctx context.Context, w *wbRoute, count int64) (int, error) {
	res, err := f.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: ConsumerGroup, Consumer: f.consumer, Streams: []string{w.stream, ">"}, Count: count, Block: -1,
	}).Result()
	if err == redis.Nil {
		return 0, nil
	}
	if err != nil {
		if isNoGroup(err) {
			w.group = false
		}
		return 0, err
	}
	n := 0
	for _, s := range res {
		n += len(s.Messages)
		w.add(s.Messages)
	}
	return n, nil
}

// add appends messages to the buffer, skipping those already held.
func (w *wbRoute) add(msgs []redis.XMessage) {
	for _, m := range msgs {
		if !w.held[m.ID] {
			w.held[m.ID] = true
			w.buf = append(w.buf, m)
		}
	}
}

// step does the due work of one route: create the group if needed,
// re-read our own pending entries and claim idle ones while the buffer
// has room, retry poison entries that are due, and flush the buffer (full
// batches always; a partial one when flush_interval has passed, or with
// force). ignoreWait skips the connection backoff. The error is the first
// Redis error, or the PostgreSQL error that put the route in backoff.
func (f *Flusher) step(ctx context.Context, w *wbRoute, now time.Time, force, ignoreWait bool) error {
	if !w.group {
		err := f.rdb.XGroupCreateMkStream(ctx, w.stream, ConsumerGroup, "0").Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return err
		}
		w.group = true
	}
	if !ignoreWait && now.Before(w.waitUntil) {
		return nil
	}
	if w.pel != "" && len(w.buf) < w.batch {
		if err := f.readPending(ctx, w); err != nil {
			return err
		}
	}
	if w.pel == "" && !now.Before(w.claimAt) && len(w.buf) < w.batch {
		if err := f.claim(ctx, w, now); err != nil {
			return err
		}
	}
	if err := f.retryPoisoned(ctx, w, now); err != nil {
		return err
	}
	for len(w.buf) > 0 {
		if len(w.buf) < w.batch && !force && now.Before(w.lastFlush.Add(w.interval)) {
			break
		}
		if w.fails > 0 {
			f.Stats.Retries.Add(1)
		}
		n := min(w.batch, len(w.buf))
		chunk := w.buf[:n:n]
		rest := w.buf[n:]
		left, err := f.flush(ctx, w, chunk)
		w.buf = append(left, rest...)
		w.lastFlush = time.Now()
		if err != nil {
			return f.unavailable(w, err)
		}
		f.recovered(w)
	}
	return nil
}

// readPending re-reads a page of this consumer's own pending entries.
func (f *Flusher) readPending(ctx context.Context, w *wbRoute) error {
	res, err := f.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: ConsumerGroup, Consumer: f.consumer, Streams: []string{w.stream, w.pel}, Count: int64(w.batch), Block: -1,
	}).Result()
	if err != nil && err != redis.Nil {
		if isNoGroup(err) {
			w.group = false
		}
		return err
	}
	var msgs []redis.XMessage
	for _, s := range res {
		msgs = append(msgs, s.Messages...)
	}
	if len(msgs) == 0 {
		w.pel = ""
		return nil
	}
	w.pel = msgs[len(msgs)-1].ID
	w.add(msgs)
	return nil
}

// claim takes over one page of entries idle for longer than ClaimIdle in
// other consumers (XAUTOCLAIM). After a full scan the next one is due in
// ClaimIdle/2.
func (f *Flusher) claim(ctx context.Context, w *wbRoute, now time.Time) error {
	msgs, next, err := f.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: w.stream, Group: ConsumerGroup, Consumer: f.consumer,
		MinIdle: f.ClaimIdle, Start: w.claimFrom, Count: int64(w.batch),
	}).Result()
	if err != nil {
		if isNoGroup(err) {
			w.group = false
		}
		return err
	}
	w.claimFrom = next
	if next == "0-0" || next == "" {
		w.claimFrom = "0-0"
		w.claimAt = now.Add(max(f.ClaimIdle/2, 10*time.Millisecond))
	}
	var fresh []redis.XMessage
	for _, m := range msgs {
		if !w.held[m.ID] {
			fresh = append(fresh, m)
		}
	}
	if len(fresh) > 0 {
		f.log.Info("claimed idle write-back entries", "route", w.name, "entries", len(fresh))
	}
	w.add(fresh)
	return nil
}

// retryPoisoned retries, one statement each, the poison entries that are
// due.
func (f *Flusher) retryPoisoned(ctx context.Context, w *wbRoute, now time.Time) error {
	if len(w.retry) == 0 {
		return nil
	}
	var due []*poisoned
	for _, p := range w.retry {
		if !now.Before(p.next) {
			due = append(due, p)
		}
	}
	sort.Slice(due, func(i, j int) bool { return idLess(due[i].msg.ID, due[j].msg.ID) })
	for _, p := range due {
		f.Stats.Retries.Add(1)
		// Success acknowledges it and removes it from w.retry; a data
		// error counts one more attempt.
		if _, err := f.flush(ctx, w, []redis.XMessage{p.msg}); err != nil {
			p.next = time.Now() // as soon as the backoff ends
			return f.unavailable(w, err)
		}
	}
	return nil
}

// unavailable puts w in backoff after err kept a batch from being flushed.
func (f *Flusher) unavailable(w *wbRoute, err error) error {
	w.fails++
	w.lastErr = err
	w.waitUntil = time.Now().Add(f.backoff(w.fails))
	if w.fails == 1 || w.fails%20 == 0 {
		f.log.Warn("write-back flush failed, entries kept pending; retrying",
			"route", w.name, "err", err, "failures", w.fails, "pending", len(w.buf)+len(w.retry))
	}
	return &pgUnavailable{err}
}

func (f *Flusher) recovered(w *wbRoute) {
	if w.fails > 0 {
		f.log.Info("write-back flushing resumed", "route", w.name, "after_failures", w.fails)
	}
	w.fails, w.waitUntil, w.lastErr = 0, time.Time{}, nil
}

// pgUnavailable wraps an error that keeps entries pending (PostgreSQL
// unreachable, or the acknowledgement failing).
type pgUnavailable struct{ error }

func (e *pgUnavailable) Unwrap() error { return e.error }

func isPGUnavailable(err error) bool {
	var u *pgUnavailable
	return errors.As(err, &u)
}

// flush writes msgs (at most one batch) in one statement and acknowledges
// them. On a data error it splits them; poison entries move to w.retry or
// the dead-letter stream. It returns the messages that must be tried
// again later, with the error that stopped them (PostgreSQL unreachable,
// or Redis failing to acknowledge).
func (f *Flusher) flush(ctx context.Context, w *wbRoute, msgs []redis.XMessage) ([]redis.XMessage, error) {
	entries := make([]backend.Entry, 0, len(msgs))
	good := make([]redis.XMessage, 0, len(msgs))
	var gone []string // deleted from the stream meanwhile: only acknowledge
	for _, m := range msgs {
		if m.Values == nil {
			gone = append(gone, m.ID)
			continue
		}
		e, err := toEntry(m, w.prefix)
		if err != nil {
			f.failed(ctx, w, m, err, true) // can never flush
			continue
		}
		entries = append(entries, e)
		good = append(good, m)
	}
	if len(entries) == 0 {
		if err := f.ack(ctx, w, gone); err != nil {
			return msgsOf(msgs, gone), err
		}
		return nil, nil
	}
	sctx, cancel := f.statementContext(ctx)
	_, err := w.r.flushBatch(sctx, entries)
	cancel()
	if err == nil || !refusedBeforeStatement(err) {
		f.Stats.Statements.Add(1)
	}
	if err == nil {
		ids := append(gone, idsOf(good)...)
		if err := f.ack(ctx, w, ids); err != nil {
			// Committed but not acknowledged: flushing again is harmless
			// (same versions), so keep them.
			return append(good, msgsOf(msgs, gone)...), err
		}
		f.Stats.Batches.Add(1)
		f.Stats.Entries.Add(int64(len(entries)))
		f.Stats.Coalesced.Add(int64(len(entries) - distinctKeys(entries)))
		if f.afterFlush != nil {
			f.afterFlush(w.name, len(entries))
		}
		return nil, nil
	}
	f.Stats.Errors.Add(1)
	if err := f.ack(ctx, w, gone); err != nil {
		good = append(good, msgsOf(msgs, gone)...)
	}
	switch classify(err) {
	case errUnavailable:
		return good, err
	case errData:
		if len(good) == 1 {
			f.failed(ctx, w, good[0], err, false)
			return nil, nil
		}
		half := len(good) / 2
		f.log.Debug("write-back batch refused, splitting", "route", w.name, "entries", len(good), "err", err)
		left, err := f.flush(ctx, w, good[:half:half])
		if err != nil {
			return append(left, good[half:]...), err
		}
		return f.flush(ctx, w, good[half:])
	default:
		for _, m := range good {
			f.failed(ctx, w, m, err, false)
		}
		return nil, nil
	}
}

// failed counts a failed attempt of m, and dead-letters it after
// max_retries attempts (at once if final: an entry that can never be
// flushed); otherwise m waits in w.retry for its backoff.
func (f *Flusher) failed(ctx context.Context, w *wbRoute, m redis.XMessage, cause error, final bool) {
	p := w.retry[m.ID]
	if p == nil {
		p = &poisoned{msg: m}
		w.retry[m.ID] = p
	}
	p.attempts++
	p.err = cause
	if p.attempts >= w.maxRetries || final {
		if err := f.deadLetter(ctx, w, m, cause, p.attempts); err == nil {
			return
		}
	}
	p.next = time.Now().Add(f.backoff(p.attempts))
}

// deadLetterScript moves entry ARGV[2] of stream KEYS[1] to the
// dead-letter stream KEYS[2] with fields ARGV[3...], acknowledging it in
// group ARGV[1] and deleting it, atomically; it returns 0 (and only
// acknowledges) when the entry is no longer in the stream (another
// instance claimed and handled it), so an entry is never dead-lettered
// twice.
var deadLetterScript = redis.NewScript(`
if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1`)

// deadLetter moves m to the dead-letter stream (deadLetterScript) with its
// fields plus error, route, id and attempts.
func (f *Flusher) deadLetter(ctx context.Context, w *wbRoute, m redis.XMessage, cause error, attempts int) error {
	args := make([]any, 0, 2*len(m.Values)+10)
	args = append(args, ConsumerGroup, m.ID)
	for _, k := range fieldOrder(m.Values) {
		args = append(args, k, fmt.Sprint(m.Values[k]))
	}
	args = append(args, "error", oneLine(cause.Error()), "route", w.name, "id", m.ID, "attempts", strconv.Itoa(attempts))
	moved, err := deadLetterScript.Run(ctx, f.rdb, []string{w.stream, w.dlq}, args...).Int()
	if err != nil {
		f.Stats.Errors.Add(1)
		f.log.Warn("write-back: cannot move entry to the dead-letter queue", "route", w.name, "id", m.ID, "err", err)
		return err
	}
	delete(w.held, m.ID)
	delete(w.retry, m.ID)
	if moved == 0 {
		return nil
	}
	f.Stats.DeadLettered.Add(1)
	f.log.Warn("write-back entry moved to the dead-letter queue", "route", w.name, "id", m.ID,
		"key", m.Values["k"], "attempts", attempts, "err", cause, "dlq", w.dlq)
	return nil
}

// ack acknowledges and deletes ids in one MULTI.
func (f *Flusher) ack(ctx context.Context, w *wbRoute, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	p := f.rdb.TxPipeline()
	p.XAck(ctx, w.stream, ConsumerGroup, ids...)
	p.XDel(ctx, w.stream, ids...)
	if _, err := p.Exec(ctx); err != nil {
		f.Stats.Errors.Add(1)
		return err
	}
	for _, id := range ids {
		delete(w.held, id)
		delete(w.retry, id)
	}
	return nil
}

// statementContext is the context of one flush statement: not cancelled
// with ctx (a cancelled Run still finishes and acknowledges its batch),
// but bounded by StatementTimeout and by ctx's deadline.
func (f *Flusher) statementContext(ctx context.Context) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(f.StatementTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return context.WithDeadline(context.WithoutCancel(ctx), deadline)
}

// remaining sums the streams' lengths.
func (f *Flusher) remaining(ctx context.Context) (int64, error) {
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
	}
	var total int64
	for _, w := range f.routes {
		n, err := f.rdb.XLen(ctx, w.stream).Result()
		if err != nil {
			return -1, err
		}
		total += n
	}
	return total, nil
}

// backoff is the wait before retry n (n >= 1): RetryBase doubled n-1
// times, at most RetryMax, drawn uniformly from [d/2, d].
func (f *Flusher) backoff(n int) time.Duration {
	d := f.RetryBase
	for i := 1; i < n && d < f.RetryMax; i++ {
		d *= 2
	}
	d = min(d, f.RetryMax)
	if d <= 1 {
		return max(d, time.Millisecond)
	}
	return d/2 + rand.N(d/2+1)
}

// Error classes of a failed flush.
const (
	errUnavailable = iota // PostgreSQL unreachable or temporarily unable: retry forever
	errData               // the data is refused: split the batch, count attempts per entry
	errOther              // anything else: count an attempt for every entry
)

// classify sorts a flush error; see the package comment of this file.
func classify(err error) int {
	var de *backend.DBError
	if errors.As(err, &de) {
		code := de.Code()
		switch {
		case strings.HasPrefix(code, "22"), strings.HasPrefix(code, "23"),
			strings.HasPrefix(code, "44"), strings.HasPrefix(code, "P0"):
			return errData
		case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"), strings.HasPrefix(code, "57P"),
			strings.HasPrefix(code, "40"), strings.HasPrefix(code, "58"), code == "55P03", code == "57014",
			strings.HasPrefix(code, "28"), strings.HasPrefix(code, "3D"): // connecting: auth, no database
			return errUnavailable
		}
		return errOther
	}
	var fe *backend.FieldError
	var ke *backend.KeyError
	var ee *entryError
	switch {
	case errors.Is(err, backend.ErrInvalidJSON), errors.As(err, &fe), errors.As(err, &ke), errors.As(err, &ee):
		return errData
	case errors.Is(err, backend.ErrNoValueColumn):
		return errOther
	}
	// Network errors, connection refused, timeouts, a closed pool.
	return errUnavailable
}

// refusedBeforeStatement reports the errors flushBatch returns without
// sending a statement.
func refusedBeforeStatement(err error) bool {
	var fe *backend.FieldError
	return errors.Is(err, backend.ErrInvalidJSON) || errors.As(err, &fe) || errors.Is(err, backend.ErrNoValueColumn)
}

// entryError is a stream entry that cannot be turned into a write.
type entryError struct{ msg string }

func (e *entryError) Error() string { return e.msg }

// toEntry turns a stream entry into a backend.Entry: Key = field k (the
// Redis key, which must have the route's prefix), Value = field v, or nil
// for op=del; Version from the stream id (or from field orig, the original
// id of a replayed dead letter).
func toEntry(m redis.XMessage, prefix string) (backend.Entry, error) {
	k, ok := m.Values["k"].(string)
	if !ok {
		return backend.Entry{}, &entryError{"malformed write-back entry: no field k"}
	}
	if !strings.HasPrefix(k, prefix) {
		return backend.Entry{}, &entryError{fmt.Sprintf("malformed write-back entry: key %q is not under the route's prefix %q", k, prefix)}
	}
	id := m.ID
	if o, ok := m.Values["orig"].(string); ok {
		id = o
	}
	ver, ok := Version(id)
	if !ok {
		return backend.Entry{}, &entryError{fmt.Sprintf("malformed write-back entry: bad id %q", id)}
	}
	e := backend.Entry{Key: k, Version: ver}
	if v, ok := m.Values["v"].(string); ok {
		e.Value = &v
	} else if op, _ := m.Values["op"].(string); op != "del" {
		return backend.Entry{}, &entryError{"malformed write-back entry: neither v nor op=del"}
	}
	return e, nil
}

// Version maps a stream id "ms-seq" to a write-back version, ms<<20 | seq
// (seq capped at 2^20-1), increasing with the id.
func Version(id string) (int64, bool) {
	ms, seq, ok := parseID(id)
	if !ok || ms >= 1<<43 {
		return 0, false
	}
	return ms<<20 | min(seq, 1<<20-1), true
}

func parseID(id string) (ms, seq int64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	ms, err1 := strconv.ParseInt(a, 10, 64)
	if !found {
		return ms, 0, err1 == nil && ms >= 0
	}
	seq, err2 := strconv.ParseInt(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil && ms >= 0 && seq >= 0
}

// idLess orders stream ids.
func idLess(a, b string) bool {
	am, as, _ := parseID(a)
	bm, bs, _ := parseID(b)
	return am < bm || am == bm && as < bs
}

func isNoGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOGROUP") }

func idsOf(msgs []redis.XMessage) []string {
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

// msgsOf returns the messages of msgs whose ids are in ids.
func msgsOf(msgs []redis.XMessage, ids []string) []redis.XMessage {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	var out []redis.XMessage
	for _, m := range msgs {
		if want[m.ID] {
			out = append(out, m)
		}
	}
	return out
}

func distinctKeys(entries []backend.Entry) int {
	seen := make(map[string]struct{}, len(entries))
	for _, e := range entries {
		seen[e.Key] = struct{}{}
	}
	return len(seen)
}

// fieldOrder lists an entry's fields: k, v, op, orig first, then the rest
// sorted.
func fieldOrder(vals map[string]any) []string {
	var out, rest []string
	for _, k := range []string{"k", "v", "op", "orig"} {
		if _, ok := vals[k]; ok {
			out = append(out, k)
		}
	}
	for k := range vals {
		switch k {
		case "k", "v", "op", "orig", "error", "route", "id", "attempts":
		default:
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

func strArgs(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
