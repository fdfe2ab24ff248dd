package policy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The flusher's Redis Stream I/O: reading new entries (XREADGROUP ... >),
// re-reading this consumer's own pending ones (XREADGROUP ... ID),
// claiming idle entries of other consumers (XAUTOCLAIM), acknowledging
// (XACK and XDEL in one MULTI), and the figures of the queues. See Queue in
// the design note at the top of flusher.go.

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
	if _, ok := f.rdb.(*redis.ClusterClient); ok && len(ws) > 1 {
		// One XREADGROUP reads streams of one slot, and on a cluster each
		// route's stream is in its route's slot (clusterkeys.go): one read
		// per stream, all at once.
		errs := make([]error, len(ws))
		var wg sync.WaitGroup
		for i := range ws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = f.readStreams(ctx, ws[i:i+1], count, block)
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	return f.readStreams(ctx, ws, count, block)
}

// readStreams is readNew's XREADGROUP over the streams of ws, whose keys
// share a slot (or the upstream is one Redis).
func (f *Flusher) readStreams(ctx context.Context, ws []*wbRoute, count int64, block time.Duration) error {
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
		if !isReply(err) {
			// The reply may have been lost with the connection after
			// Redis made entries pending for us: read our own pending
			// entries again rather than wait for claim_idle.
			for _, w := range ws {
				if w.pel == "" {
					w.pel = "0"
				}
			}
		}
		if isNoGroup(err) {
			named := false
			for _, w := range ws {
				named = named || strings.Contains(err.Error(), "'"+w.stream+"'")
			}
			for _, w := range ws {
				if !named || strings.Contains(err.Error(), "'"+w.stream+"'") {
					f.noGroup(w)
				}
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
			f.noGroup(w)
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

// readPending re-reads a page of this consumer's own pending entries.
func (f *Flusher) readPending(ctx context.Context, w *wbRoute) error {
	res, err := f.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: ConsumerGroup, Consumer: f.consumer, Streams: []string{w.stream, w.pel}, Count: int64(w.batch), Block: -1,
	}).Result()
	if err != nil && err != redis.Nil {
		if isNoGroup(err) {
			f.noGroup(w)
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
			f.noGroup(w)
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

func isNoGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOGROUP") }

// noGroup notes that w's stream or consumer group is gone (NOGROUP): the
// next step creates them again. If the group existed, the queue was lost.
func (f *Flusher) noGroup(w *wbRoute) {
	if w.group {
		f.queueLost(w, "its stream or consumer group disappeared")
	}
	w.group = false
}

// queueLost reports a lost write-back queue: an ERROR line, and
// respite_writeback_queue_lost_total. Entries already read stay buffered
// and are still flushed.
func (f *Flusher) queueLost(w *wbRoute, how string) {
	w.lost.Add(1)
	f.log.Error("write-back queue lost: acknowledged writes not yet in PostgreSQL may be gone",
		"route", w.name, "stream", w.stream, "how", how,
		"causes", "eviction (maxmemory-policy), DEL or FLUSHALL, XGROUP DESTROY, or a Redis restart without persistence",
		"buffered", len(w.buf))
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
	// Lost counts the times this flusher found the queue lost (its stream
	// or consumer group gone).
	Lost int64
	// Err is set when the numbers could not be read (Redis down).
	Err error
}

// Queues reports every write-back route's queue, high priority first.
func (f *Flusher) Queues(ctx context.Context) []QueueStats {
	out := make([]QueueStats, 0, len(f.routes))
	now := time.Now()
	for _, w := range f.routes {
		q := QueueStats{Route: w.name, Priority: "low", Lost: w.lost.Load()}
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
