package policy

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Poison entries and dead letters: an entry that fails on its own is
// retried alone with backoff, moved to the route's dead-letter stream after
// max_retries attempts, and administered there (DeadLetters, Replay,
// Drop). See Failures in the design note at the top of flusher.go.

// poisoned is an entry that failed on its own.
type poisoned struct {
	msg      redis.XMessage
	attempts int
	next     time.Time
	err      error
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

func strArgs(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
