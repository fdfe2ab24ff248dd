package backend

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A table locked by another transaction: its loads, writes and flushes
// fail after the statement timeout with a *TimeoutError, and meanwhile
// loads of another table on the same pools keep answering at once,
// because the locked table's statements may hold only TableConns of the
// pool's connections. Without the bulkhead the thirteen stuck statements
// would hold all four connections and the other table's loads would wait
// for the timeout.
func TestStatementTimeoutAndBulkhead(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `CREATE TABLE lock_slow (k text PRIMARY KEY, v text);
CREATE TABLE lock_fast (k text PRIMARY KEY, v text);
INSERT INTO lock_slow VALUES ('a', '1'); INSERT INTO lock_fast VALUES ('a', '1')`)
	const timeout = 2 * time.Second
	// The DSN's own statement_timeout is replaced.
	d := openWith(t, pg.DSN+"&statement_timeout=100", Options{LoadConns: 4, FlushConns: 2, StatementTimeout: timeout})
	if d.StatementTimeout() != timeout || d.loadPerTable != 2 || d.flushPerTable != 1 {
		t.Fatalf("timeout %v, per table %d/%d", d.StatementTimeout(), d.loadPerTable, d.flushPerTable)
	}
	var setting string
	if err := d.Pool().QueryRow(ctx, `SHOW statement_timeout`).Scan(&setting); err != nil || setting != "2s" {
		t.Fatalf("statement_timeout = %q, %v", setting, err)
	}
	slow, err := d.Describe(ctx, "lock_slow", "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	fast, err := d.Describe(ctx, "lock_fast", "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	q := d.Pool()

	locker, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(context.Background())
	lock, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(context.Background())
	if _, err := lock.Exec(ctx, `LOCK TABLE lock_slow IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}

	type result struct {
		op      string
		err     error
		elapsed time.Duration
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		results []result
		done    atomic.Int32
	)
	start := time.Now()
	run := func(op string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := f()
			done.Add(1)
			mu.Lock()
			results = append(results, result{op, err, time.Since(start)})
			mu.Unlock()
		}()
	}
	for i := 0; i < 12; i++ {
		run("load", func() error { _, _, err := slow.LoadValue(ctx, q, "a"); return err })
	}
	run("write", func() error { return slow.WriteValue(ctx, q, "a", "2") })
	run("flush", func() error { _, err := slow.Flush(ctx, "lock_slow", []Entry{{"a", sp("3"), 1}}); return err })
	run("flush", func() error { _, err := slow.Flush(ctx, "lock_slow", []Entry{{"b", sp("3"), 2}}); return err })

	time.Sleep(200 * time.Millisecond)
	for i := 0; i < 5; i++ {
		t0 := time.Now()
		v, found, err := fast.LoadValue(ctx, q, "a")
		if took := time.Since(t0); err != nil || v != "1" || !found || took > time.Second {
			t.Errorf("load of lock_fast while lock_slow is locked: %q, %v, %v after %v", v, found, err, took)
		}
	}
	if err := fast.WriteValue(ctx, q, "b", "2"); err != nil {
		t.Errorf("write of lock_fast while lock_slow is locked: %v", err)
	}
	if n := done.Load(); n != 0 {
		t.Fatalf("%d operations on lock_slow ended before the loads of lock_fast: the test did not measure the bulkhead", n)
	}
	wg.Wait()
	for _, r := range results {
		var te *TimeoutError
		if !errors.As(r.err, &te) || te.Table != "lock_slow" || te.After != timeout {
			t.Errorf("%s on the locked table: %v, want a *TimeoutError", r.op, r.err)
			continue
		}
		if want := `table "lock_slow": ` + r.op + ` timed out after 2s (postgres.statement_timeout)`; !strings.HasPrefix(r.err.Error(), want) {
			t.Errorf("%s: %q, want it to start with %q", r.op, r.err, want)
		}
		// The operations that held a connection end at the timeout; those
		// queued behind them by its end plus the deadline's margin.
		if r.elapsed < timeout-100*time.Millisecond || r.elapsed > timeout+deadlineMargin+time.Second {
			t.Errorf("%s ended after %v, want the statement timeout (%v) plus at most %v", r.op, r.elapsed, timeout, deadlineMargin)
		}
	}
	if len(results) != 15 {
		t.Errorf("%d results", len(results))
	}

	// Once the lock is gone the table answers again, on the same pools.
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _, err := slow.LoadValue(ctx, q, "a"); err != nil || v != "1" {
		t.Errorf("LoadValue after the lock = %q, %v", v, err)
	}
	if err := slow.WriteValue(ctx, q, "a", "5"); err != nil {
		t.Error(err)
	}
	if n, err := slow.Flush(ctx, "lock_slow", []Entry{{"a", sp("6"), 3}}); n != 1 || err != nil {
		t.Errorf("Flush after the lock = %d, %v", n, err)
	}
}

// The caller's own deadline, shorter than the statement timeout, is the
// caller's error, not a *TimeoutError; a statement inside a transaction
// is bounded by the statement timeout too.
func TestTimeoutInTransactionAndCallerDeadline(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `CREATE TABLE lock_tx (k int PRIMARY KEY, v int); INSERT INTO lock_tx VALUES (1, 1)`)
	d := openWith(t, pg.DSN, Options{LoadConns: 2, FlushConns: 1, StatementTimeout: 500 * time.Millisecond})
	tb, err := d.Describe(ctx, "lock_tx", "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	locker, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(context.Background())
	if _, err := locker.Exec(ctx, `BEGIN; LOCK TABLE lock_tx IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, _, err = tb.LoadValue(short, d.Pool(), "1")
	var te *TimeoutError
	if err == nil || errors.As(err, &te) || !strings.HasPrefix(err.Error(), "postgres") {
		t.Errorf("LoadValue with the caller's 100ms deadline = %v, want the caller's timeout", err)
	}

	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	t0 := time.Now()
	err = tb.WriteValue(ctx, tx, "1", "2")
	if !errors.As(err, &te) || te.Op != "write" || te.Queued {
		t.Errorf("WriteValue in a transaction = %v, want a *TimeoutError", err)
	}
	if took := time.Since(t0); took < 400*time.Millisecond || took > 2*time.Second {
		t.Errorf("WriteValue in a transaction took %v", took)
	}
	if _, err := locker.Exec(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	if v, _, err := tb.LoadValue(ctx, d.Pool(), "1"); v != "1" || err != nil {
		t.Errorf("LoadValue after = %q, %v", v, err)
	}
}
