package policy

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
)

// Flushing one batch: turn its entries into backend entries, write them in
// one statement, acknowledge them once committed, and split the batch on a
// data error so that the good entries commit. See Batches and Failures in
// the design note at the top of flusher.go.

// flush writes msgs (at most one batch) in one statement and acknowledges
// them. On a data error it splits them; poison entries move to w.retry or
// the dead-letter stream. It returns the messages that must be tried
// again later, with the error that stopped them (PostgreSQL unreachable,
// or Redis failing to acknowledge).
func (f *Flusher) flush(ctx context.Context, w *wbRoute, msgs []redis.XMessage) ([]redis.XMessage, error) {
	if err := w.r.Unready(); err != nil {
		return msgs, err // PostgreSQL not connected yet: kept pending
	}
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
