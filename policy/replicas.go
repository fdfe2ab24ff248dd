package policy

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Write-back writes that wait for replicas (write_back.min_replicas).
//
// A write-back write is acknowledged once its script (the cache write and
// the queue append, writeback.go) has run on the primary. Replication is
// asynchronous, so on a failover (SENTINEL FAILOVER, or a primary that
// dies) the entries the replica had not received are lost with the old
// primary, acknowledged or not: they never reach PostgreSQL. With
// min_replicas > 0 the script goes in one pipeline with
// WAIT min_replicas replica_timeout, on one connection (go-redis'
// Pipeline writes both and reads both replies on the connection it took),
// so WAIT counts the replicas that acknowledged the replication offset of
// that connection's last write, the script's own, and the write costs
// one round trip still. A write fewer replicas acknowledged within the
// timeout (or whose WAIT failed: the connection lost at a failover, the
// primary turned into a replica) is answered -NOREPLICAS, never a
// success: its entry is in the primary's stream and its value in the
// primary's cache, so it may still reach PostgreSQL, or be lost if the
// primary fails over before a replica has it. Each one counts in the
// route's NoReplicas (respite_route_noreplicas_total); a burst of them
// logs one WARN line when it starts and one when it is over.
//
// Transactions: a write-back write inside MULTI queues its script (Queue),
// and EXEC runs on the client's pinned connection; the session sends the
// same WAIT on that connection after EXEC (Txn.ReplicaWait, a second
// round trip) and answers -NOREPLICAS instead of EXEC's reply when too
// few replicas acknowledged it (Txn.NoReplicas).

// replicaWait is write_back.min_replicas (n, 0: off) and
// write_back.replica_timeout.
type replicaWait struct {
	n       int
	timeout time.Duration
	log     *burstLog
}

// eval runs the write-back script s, followed by WAIT on its connection
// when replicas are required; see the note above. The script's reply and
// error are as s.Run's; a script that succeeded but whose entry too few
// replicas acknowledged gets a NOREPLICAS error instead.
func (w *writeBack) eval(ctx context.Context, s *redis.Script, keys []string, args ...any) (any, error) {
	rw := &w.r.sh.replicas
	if rw.n <= 0 {
		return s.Run(ctx, w.r.rdb, keys, args...).Result()
	}
	for attempt := 0; ; attempt++ {
		pipe := w.r.rdb.Pipeline()
		var cmd *redis.Cmd
		if attempt == 0 {
			cmd = s.EvalSha(ctx, pipe, keys, args...)
		} else {
			cmd = s.Eval(ctx, pipe, keys, args...)
		}
		wait := pipe.Do(ctx, "WAIT", rw.n, rw.timeout.Milliseconds())
		_, _ = pipe.Exec(ctx) // each command carries its own error
		v, err := cmd.Result()
		if err != nil && attempt == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
			continue // the script's source, as Script.Run does
		}
		if err != nil && err != redis.Nil {
			return v, err // nothing written (or a Redis error the command itself would give)
		}
		// redis.Nil is a script that wrote and returned nil (GETSET of a
		// key without a value): it waits like the others.
		got, werr := wait.Int64()
		if werr == nil && got >= int64(rw.n) {
			return v, err
		}
		return nil, w.noReplicas(got, werr)
	}
}

// noReplicas counts and logs a write-back write that ran on the primary
// but was not confirmed by write_back.min_replicas replicas, and is the
// error its client gets.
func (w *writeBack) noReplicas(got int64, werr error) error {
	return redisErr(w.r.noReplicas("the write", got, werr))
}

// noReplicas counts one NOREPLICAS answer of route r (NoReplicas), logs
// it with the burst log, and returns its text; what is "the write" or
// "the transaction".
func (r *Route) noReplicas(what string, got int64, werr error) string {
	rw := &r.sh.replicas
	r.Stats.NoReplicas.Add(1)
	if werr != nil {
		rw.log.event("write-back writes refused with NOREPLICAS: their replication could not be confirmed (write_back.min_replicas)",
			"route", r.cfg.Name, "min_replicas", rw.n, "err", oneLine(werr.Error()))
		return fmt.Sprintf("NOREPLICAS route '%s': %s ran on the primary but its replication could not be confirmed (WAIT: %s); "+
			"it is queued there and may still apply, or be lost if the primary fails over", r.cfg.Name, what, oneLine(werr.Error()))
	}
	rw.log.event("write-back writes refused with NOREPLICAS: too few replicas acknowledged them within write_back.replica_timeout",
		"route", r.cfg.Name, "replicas", got, "min_replicas", rw.n, "replica_timeout", rw.timeout)
	return fmt.Sprintf("NOREPLICAS route '%s': %d of %d replicas acknowledged %s within %v (write_back.min_replicas); "+
		"it is queued on the primary and may still apply, or be lost if the primary fails over", r.cfg.Name, got, rw.n, what, rw.timeout)
}

// ReplicaWait is the WAIT the session sends after EXEC of t, on the same
// pinned connection, before it answers: write_back.min_replicas and
// replica_timeout when t queued a write-back write and replicas are
// required, else n is 0.
func (t *Txn) ReplicaWait() (n int, timeout time.Duration) {
	for _, op := range t.ops {
		if !op.read && op.r != nil && op.r.queued && op.r.sh.replicas.n > 0 {
			return op.r.sh.replicas.n, op.r.sh.replicas.timeout
		}
	}
	return 0, 0
}

// NoReplicas is the error the client of t gets instead of EXEC's reply
// when the WAIT after it answered got, fewer than ReplicaWait's n, or
// failed (werr): counted once for each write-back route t wrote, and
// logged.
func (t *Txn) NoReplicas(got int64, werr error) string {
	var text string
	seen := map[*Route]bool{}
	for _, op := range t.ops {
		if op.read || op.r == nil || !op.r.queued || seen[op.r] {
			continue
		}
		seen[op.r] = true
		if s := op.r.noReplicas("the transaction", got, werr); text == "" {
			text = s
		}
	}
	return text
}

// burstQuiet is how long a burst of refusals must be over before the
// burst log says so.
const burstQuiet = 10 * time.Second

// burstLog logs the first event of a burst (events less than burstQuiet
// apart) at WARN, and, once no event came for burstQuiet, one line with
// how many the burst had: one line per burst, not per write.
type burstLog struct {
	log   *slog.Logger
	quiet time.Duration

	mu    sync.Mutex
	n     int64 // events in the current burst; 0: none under way
	last  time.Time
	first string // the first event's message, repeated in the closing line
}

func newBurstLog(log *slog.Logger) *burstLog { return &burstLog{log: log, quiet: burstQuiet} }

// event records one event; the first of a burst is logged with args.
func (b *burstLog) event(msg string, args ...any) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.last = time.Now()
	b.n++
	first := b.n == 1
	if first {
		b.first = msg
	}
	b.mu.Unlock()
	if first {
		b.log.Warn(msg, args...)
		time.AfterFunc(b.quiet, b.close)
	}
}

// close ends the burst if it has been quiet long enough, else looks again
// when it could be.
func (b *burstLog) close() {
	b.mu.Lock()
	if wait := b.quiet - time.Since(b.last); wait > 0 {
		b.mu.Unlock()
		time.AfterFunc(wait, b.close)
		return
	}
	n, msg := b.n, b.first
	b.n = 0
	b.mu.Unlock()
	b.log.Warn(strings.SplitN(msg, ":", 2)[0]+": burst over", "refused", n, "quiet_for", b.quiet)
}
