package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Bounds on every load and write (docs/OPERATIONS.md, "PostgreSQL
// timeouts and bulkheads"):
//
//   - The statement timeout. Every connection of both pools starts with
//     PostgreSQL's statement_timeout set to it (a startup parameter, see
//     OpenWith), so a statement waiting on a lock or running long is
//     cancelled by the server and the connection stays usable; and every
//     Table method runs under a context deadline of the timeout plus
//     deadlineMargin, which also bounds waiting for a connection and a
//     server that stopped answering. A load or write therefore returns
//     within about the timeout, with a *TimeoutError.
//   - The bulkhead. Each table has a bound on the statements of its Table
//     methods running at once on each pool (Options.TableConns), so the
//     statements stuck on one locked or slow table cannot hold every
//     pooled connection: another table's loads still find one.

// DefaultStatementTimeout is the statement timeout when Options leave it 0
// (the config field postgres.statement_timeout has the same default).
const DefaultStatementTimeout = 5 * time.Second

// deadlineMargin is how much longer than the statement timeout a Table
// method's context deadline is: PostgreSQL's own timeout fires first and
// leaves the connection usable, the deadline (which closes it) only
// catches what the server cannot (no connection free, no answer at all).
const deadlineMargin = time.Second

// TimeoutError is a load or write that did not finish within the
// statement timeout: the table is locked by another transaction, the
// statement is slow, or PostgreSQL does not answer. Its text names the
// table, the operation and the setting, e.g.
//
//	table "products": write timed out after 5s (postgres.statement_timeout): the table is locked by another transaction, or PostgreSQL is slow
//
// Queued is true when the operation never started: the table's bulkhead
// (Options.TableConns) had no room for it before the deadline, because
// earlier operations on the table were stuck. Unwrap
// gives the underlying error (SQLSTATE 57014, or a context deadline).
type TimeoutError struct {
	Table  string
	Op     string // "load", "write", "delete", "flush"
	After  time.Duration
	Queued bool
	Err    error
}

func (e *TimeoutError) Error() string {
	if e.Queued {
		return fmt.Sprintf("table %q: %s timed out after %v (postgres.statement_timeout) waiting for a connection: earlier statements on this table are still running, it is probably locked by another transaction",
			e.Table, e.Op, e.After)
	}
	return fmt.Sprintf("table %q: %s timed out after %v (postgres.statement_timeout): the table is locked by another transaction, or PostgreSQL is slow",
		e.Table, e.Op, e.After)
}

func (e *TimeoutError) Unwrap() error { return e.Err }

// bulkhead bounds the statements on one table running at once: one
// semaphore per pool.
type bulkhead struct {
	load, flush chan struct{}
}

// bulkheadFor returns the bulkhead of the table with this oid, shared by
// every Table described for it.
func (db *DB) bulkheadFor(oid uint32) *bulkhead {
	db.mu.Lock()
	defer db.mu.Unlock()
	if b, ok := db.bulkheads[oid]; ok {
		return b
	}
	b := &bulkhead{load: make(chan struct{}, db.loadPerTable), flush: make(chan struct{}, db.flushPerTable)}
	db.bulkheads[oid] = b
	return b
}

// do runs f, one operation of t on q, under the statement timeout's
// deadline and, when q is one of the pools, the table's bulkhead
// (statements inside a caller's transaction run on the connection the
// transaction holds already). f's errors are already mapped (wrapErr);
// do turns a timeout into a *TimeoutError. An error because the caller's
// own ctx ended is returned as it is.
func (t *Table) do(ctx context.Context, q Querier, op string, f func(ctx context.Context) error) error {
	db := t.db
	octx, cancel := context.WithTimeout(ctx, db.timeout+deadlineMargin)
	defer cancel()
	var sem chan struct{}
	switch q {
	case Querier(db.load):
		sem = t.bh.load
	case Querier(db.flush):
		sem = t.bh.flush
	}
	if sem != nil {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		case <-octx.Done():
			if ctx.Err() != nil {
				return wrapErr(ctx.Err())
			}
			return &TimeoutError{Table: t.name, Op: op, After: db.timeout, Queued: true, Err: octx.Err()}
		}
	}
	start := time.Now()
	err := f(octx)
	if err == nil || ctx.Err() != nil {
		return err
	}
	// SQLSTATE 57014 is also a cancel request (pg_cancel_backend): a
	// timeout when the server says so, or (its messages may be in another
	// language) when the statement ran about as long as the timeout.
	var de *DBError
	if octx.Err() != nil || errors.As(err, &de) && de.Code() == "57014" &&
		(strings.Contains(de.Err.Message, "statement timeout") || time.Since(start) >= db.timeout*9/10) {
		return &TimeoutError{Table: t.name, Op: op, After: db.timeout, Err: err}
	}
	return err
}

// dbState is the part of DB the bounds need (embedded in DB).
type dbState struct {
	timeout       time.Duration
	loadPerTable  int
	flushPerTable int
	mu            sync.Mutex
	bulkheads     map[uint32]*bulkhead
}
