package policy

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The write-back flusher: it moves the writes that writeback.go queued in
// Redis into PostgreSQL, and loses none of them when a proxy is killed mid
// write-back or PostgreSQL is down (docs/OPERATIONS.md, "Failure
// behaviour").
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
// classes 08, 53, 57P, 40, 55P03, 57014, 58, and 28 and 3D: a refused
// login, a missing database) keeps the entries pending and retries the
// route with exponential backoff and jitter (RetryBase doubling up to
// RetryMax, each wait drawn uniformly from [d/2, d]), forever: these
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
// Lost queues. A queue can vanish from Redis: evicted (an allkeys-*
// maxmemory-policy, which durability.go refuses unless opted in), deleted
// (DEL, FLUSHALL, XGROUP DESTROY), or with a Redis restart without
// persistence. The flusher never lets that pass silently: a NOGROUP error
// for a group it had seen, or at start-up a missing stream of a route that
// flushed writes before (respite_versions has its rows, flushedBefore),
// is an ERROR line and counts in QueueStats.Lost
// (respite_writeback_queue_lost_total, alert RespiteWritebackQueueLost).
// It then creates the group again, and still flushes the entries it had
// read before the loss.
//
// Redis Cluster: one XREADGROUP reads only streams of one slot, and each
// route's stream is in its route's slot, so there Run reads each stream
// with an XREADGROUP of its own, all at once (readNew).
//
// Files. This one holds the Flusher, its options and counters, Run, Drain,
// FlushNow and the pass scheduler (pass, due, step). flushstream.go does
// the Redis Stream I/O (XREADGROUP, the re-read of pending entries,
// XAUTOCLAIM, XACK+XDEL, the queue figures); flushbatch.go flushes one
// batch; flusherrors.go classifies errors and computes the backoff;
// deadletter.go retries poison entries and keeps the dead-letter streams;
// version.go turns stream entries and ids into backend entries and
// versions.

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

	rdb      redis.UniversalClient
	consumer string
	log      *slog.Logger
	routes   []*wbRoute // high priority first, then configuration order

	mu     sync.Mutex // one pass at a time; guards the routes' state
	readMu sync.Mutex // held by Run's blocking read, so Drain can wait for it

	// afterFlush, if set, is called after every committed batch (tests).
	afterFlush func(route string, entries int)
	// flushedBefore, if set, tells whether a route flushed anything ever
	// (backend.DB.Flushed): a queue missing at start-up although it did
	// was lost (see Lost queues above).
	flushedBefore func(ctx context.Context, route string) (bool, error)
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
	known     bool                 // the group existed once since this flusher started
	missing   bool                 // the stream was missing at start-up: lost if the route flushed before
	lost      atomic.Int64         // times the queue was found lost (respite_writeback_queue_lost_total)
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

// NewFlusher builds a flusher over the write-back routes among routes (the
// others are ignored). consumer is this proxy's consumer name in
// ConsumerGroup; it must be stable across restarts (from the
// configuration, or the host name) so that a restarted proxy finds its own
// pending entries; "" means the host name. log nil means slog.Default().
func NewFlusher(routes []*Route, rdb redis.UniversalClient, consumer string, log *slog.Logger) *Flusher {
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
		if !r.queued {
			continue
		}
		cfg := r.Config()
		f.routes = append(f.routes, &wbRoute{
			r:          r,
			name:       cfg.Name,
			prefix:     cfg.Prefix,
			stream:     StreamKey(r.rkey()),
			dlq:        DeadLetterKey(r.rkey()),
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

// step does the due work of one route: create the group if needed,
// re-read our own pending entries and claim idle ones while the buffer
// has room, retry poison entries that are due, and flush the buffer (full
// batches always; a partial one when flush_interval has passed, or with
// force). ignoreWait skips the connection backoff. The error is the first
// Redis error, or the PostgreSQL error that put the route in backoff.
func (f *Flusher) step(ctx context.Context, w *wbRoute, now time.Time, force, ignoreWait bool) error {
	if !w.group {
		if !w.known {
			n, err := f.rdb.Exists(ctx, w.stream).Result()
			if err != nil {
				return err
			}
			w.missing = n == 0
		}
		err := f.rdb.XGroupCreateMkStream(ctx, w.stream, ConsumerGroup, "0").Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return err
		}
		w.group, w.known = true, true
	}
	if w.missing && f.flushedBefore != nil && w.r.Unready() == nil {
		// Answered once PostgreSQL does; until then the route flushes
		// nothing anyway.
		if flushed, err := f.flushedBefore(ctx, w.name); err == nil {
			w.missing = false
			if flushed {
				f.queueLost(w, "it was missing at start-up although the route flushed writes before")
			}
		}
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

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
