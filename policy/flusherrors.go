package policy

import (
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/respite/respite/backend"
)

// Why a flush failed and what follows: the error classes (classify), the
// route's connection backoff (unavailable, recovered) and the backoff
// schedule shared with poison entries. See Failures in the design note at
// the top of flusher.go.

// Error classes of a failed flush.
const (
	errUnavailable = iota // PostgreSQL unreachable or temporarily unable: retry forever
	errData               // the data is refused: split the batch, count attempts per entry
	errOther              // anything else: count an attempt for every entry
)

// classify sorts a flush error; see Failures in the design note at the
// top of flusher.go.
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

// pgUnavailable wraps an error that keeps entries pending (PostgreSQL
// unreachable, or the acknowledgement failing).
type pgUnavailable struct{ error }

func (e *pgUnavailable) Unwrap() error { return e.error }

func isPGUnavailable(err error) bool {
	var u *pgUnavailable
	return errors.As(err, &u)
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
