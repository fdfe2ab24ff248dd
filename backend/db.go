// Package backend is the PostgreSQL side of routed keys: it maps a route's
// key to one row of a table (docs/MIGRATION.md, "Key → row") and reads or
// writes that row, and it applies write-back batches.
//
// Conventions that hold for every statement built here:
//
//   - Values cross the boundary as text. PostgreSQL does every type
//     conversion: a key or value is sent as a text parameter and cast with
//     $n::text::<column type> (an I/O conversion cast, which exists for every
//     type), so "abc" for an integer column fails in PostgreSQL (SQLSTATE
//     22P02), never in Go.
//   - Identifiers from config (table and column names) are quoted with
//     pgx.Identifier{...}.Sanitize() and are case-sensitive afterwards;
//     type names come from the catalog (format_type), which quotes them.
//   - Keys and values are always query parameters, never part of the SQL
//     text. The one literal from config is a composite key's separator
//     (compositekey.go), which config allows only as punctuation without
//     quotes or backslashes, and which is quoted as a string literal.
package backend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DB holds two pgxpool pools: one for cache-miss loads and direct writes,
// one for write-back flushes, so a flush storm cannot starve reads.
type DB struct {
	load  *pgxpool.Pool
	flush *pgxpool.Pool
	dbState
}

// Options size the pools and bound their statements (see OpenWith).
type Options struct {
	// LoadConns and FlushConns are the pools' MaxConns; <= 0 keeps
	// pgxpool's default (max(4, NumCPU), or pool_max_conns from the DSN).
	LoadConns, FlushConns int32
	// StatementTimeout bounds every load and write, flushes included
	// (see TimeoutError); <= 0 means DefaultStatementTimeout. It is
	// PostgreSQL's statement_timeout on every connection of both pools,
	// rounded up to a millisecond, and replaces one the DSN sets.
	StatementTimeout time.Duration
	// TableConns bounds the statements of one table's Table methods
	// running at once on the load pool (the bulkhead); <= 0 means
	// max(1, MaxConns/2). On the flush pool the bound is always
	// max(1, its MaxConns/2).
	TableConns int
}

// Open is OpenWith with Options{LoadConns: loadConns, FlushConns:
// flushConns}: the default statement timeout and bulkheads.
func Open(ctx context.Context, dsn string, loadConns, flushConns int32) (*DB, error) {
	return OpenWith(ctx, dsn, Options{LoadConns: loadConns, FlushConns: flushConns})
}

// OpenWith creates the two pools for dsn (a pgx connection string: URL or
// key=value). It does not connect: pools dial lazily, so a proxy can start
// while PostgreSQL is down and still serve cache hits (docs/OPERATIONS.md,
// "Failure behaviour"). Call Ping or Describe at start-up to report an
// unusable database. The error is about the DSN only, a *ConnError that
// does not quote it.
func OpenWith(ctx context.Context, dsn string, o Options) (*DB, error) {
	timeout := o.StatementTimeout
	if timeout <= 0 {
		timeout = DefaultStatementTimeout
	}
	ms := (timeout + time.Millisecond - 1) / time.Millisecond
	mk := func(n int32, name string) (*pgxpool.Pool, error) {
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			return nil, wrapErr(err)
		}
		if n > 0 {
			cfg.MaxConns = n
		}
		if cfg.ConnConfig.RuntimeParams == nil {
			cfg.ConnConfig.RuntimeParams = map[string]string{}
		}
		if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
			cfg.ConnConfig.RuntimeParams["application_name"] = "respite-" + name
		}
		cfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(int64(ms), 10) + "ms"
		// Dates and timestamps as text in one form whatever the server's
		// settings, so that a key's canonical text (keys.go) is the same
		// on every connection and every server: replaces the DSN's.
		for k := range cfg.ConnConfig.RuntimeParams {
			if strings.EqualFold(k, "datestyle") || strings.EqualFold(k, "timezone") {
				delete(cfg.ConnConfig.RuntimeParams, k)
			}
		}
		cfg.ConnConfig.RuntimeParams["datestyle"] = "ISO, MDY"
		cfg.ConnConfig.RuntimeParams["timezone"] = "UTC"
		p, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return nil, wrapErr(err)
		}
		return p, nil
	}
	load, err := mk(o.LoadConns, "load")
	if err != nil {
		return nil, err
	}
	flush, err := mk(o.FlushConns, "flush")
	if err != nil {
		load.Close()
		return nil, err
	}
	db := &DB{load: load, flush: flush}
	db.timeout = timeout
	db.loadPerTable = o.TableConns
	if db.loadPerTable <= 0 {
		db.loadPerTable = max(1, int(load.Config().MaxConns)/2)
	}
	db.flushPerTable = max(1, int(flush.Config().MaxConns)/2)
	db.bulkheads = map[uint32]*bulkhead{}
	return db, nil
}

// StatementTimeout is the bound on every load and write (Options).
func (db *DB) StatementTimeout() time.Duration { return db.timeout }

// Close closes both pools, waiting for connections in use to be released.
func (db *DB) Close() {
	db.load.Close()
	db.flush.Close()
}

// PoolStats returns the load pool's total and idle connections.
func (db *DB) PoolStats() (total, idle int64) {
	st := db.load.Stat()
	return int64(st.TotalConns()), int64(st.IdleConns())
}

// Ping checks that both pools can reach PostgreSQL.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.load.Ping(ctx); err != nil {
		return wrapErr(err)
	}
	if err := db.flush.Ping(ctx); err != nil {
		return wrapErr(err)
	}
	return nil
}

// Querier is what statements run on: the load pool (DB.Pool), or a pgx.Tx
// (transactions over routed keys group writes in one DB transaction). It
// is the pgx method set shared by *pgxpool.Pool, *pgx.Conn and pgx.Tx.
//
// Inside a pgx.Tx, a statement that fails aborts the transaction
// (SQLSTATE 25P02 for everything after it). Table methods never let a key
// that cannot be cast reach the transaction: they check such keys on the
// load pool first. Bad values and constraint violations do reach it; a
// caller that wants to go on after one should wrap the write in a
// savepoint (tx.Begin).
type Querier interface {
	Exec(ctx context.Context, sql string, arguments ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Pool returns the load pool as a Querier (statements outside any
// transaction).
func (db *DB) Pool() Querier { return db.load }

// Begin starts a transaction on the load pool.
func (db *DB) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := db.load.Begin(ctx)
	if err != nil {
		return nil, wrapErr(err)
	}
	return tx, nil
}

// metaTable is the write-back version side table, resolved through the
// connection's search_path (SetupSQL creates it in the first schema of
// that path, normally public).
const metaTable = "respite_versions"

// EnsureMeta makes sure the side table used by Flush to refuse
// out-of-order batches exists (see SetupSQL): if it exists already it
// does nothing, else it creates it, which needs the CREATE privilege on
// the schema. Tests and single-role deployments use it; a proxy whose
// role may not create tables (PostgreSQL 15's default on schema public)
// has it created once with Setup and checks it at start-up with
// CheckMeta. Safe to call from several proxy instances at once.
func (db *DB) EnsureMeta(ctx context.Context) error {
	var exists bool
	if err := db.flush.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, metaTable).Scan(&exists); err != nil {
		return fmt.Errorf("look up %s: %w", metaTable, wrapErr(err))
	}
	if exists {
		return nil
	}
	err := createMeta(ctx, db.flush)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return fmt.Errorf("table %s does not exist and role %s may not create it (%s): %s",
			metaTable, db.currentUser(ctx), pgErr.Message, setupHint)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", metaTable, wrapErr(err))
	}
	return nil
}

// createMeta runs SetupSQL on q.
func createMeta(ctx context.Context, q Querier) error {
	_, err := q.Exec(ctx, SetupSQL)
	var pgErr *pgconn.PgError
	// Two concurrent CREATE TABLE IF NOT EXISTS can both pass the check;
	// the loser fails on a catalog's unique index (23505), or finds the
	// table (42P07) or its row type (42710, duplicate_object) made by the
	// other: the table exists now, so the setup runs again for what
	// follows the CREATE.
	if errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "42P07" || pgErr.Code == "42710") {
		_, err = q.Exec(ctx, SetupSQL)
	}
	return err
}

// DBError is an error reported by PostgreSQL for a statement (a constraint
// violation, a value that cannot be cast, ...). Its text is route-
// independent and safe for a client reply: the server's message and
// SQLSTATE, without DETAIL (which can quote row contents), for example
//
//	postgres: new row for relation "products" violates check constraint "products_stock_check" (SQLSTATE 23514)
//
// Unwrap gives the *pgconn.PgError with every field.
type DBError struct {
	Err *pgconn.PgError
}

func (e *DBError) Error() string {
	return fmt.Sprintf("postgres: %s (SQLSTATE %s)", e.Err.Message, e.Err.Code)
}

func (e *DBError) Unwrap() error { return e.Err }

// Code is the SQLSTATE.
func (e *DBError) Code() string { return e.Err.Code }

// KeyError reports a key that cannot be cast to its key column's type
// (SQLSTATE class 22, e.g. "abc" for an integer column), for writes.
// Reads report such keys as not found.
type KeyError struct {
	Table  string // table name as configured
	Column string // key column
	Type   string // column type, e.g. "integer"
	Key    string
	Err    error // the PostgreSQL error, when PostgreSQL reported it
	// Separator is set for a composite key: Column and Type then list
	// the key columns and their types.
	Separator string
}

func (e *KeyError) Error() string {
	if e.Separator != "" {
		return fmt.Sprintf("key %s is not a valid key of table %q (one value for each of the columns %s, of types %s, in that order, separated by %q)",
			quoteKey(e.Key), e.Table, e.Column, e.Type, e.Separator)
	}
	return fmt.Sprintf("key %s is not a valid %s for column %q of table %q",
		quoteKey(e.Key), e.Type, e.Column, e.Table)
}

func (e *KeyError) Unwrap() error { return e.Err }

// FieldError reports a field (Redis hash field or JSON object member) that
// cannot be written: it is not a column of the table, or it is the key
// column used in a way that would move the row.
type FieldError struct {
	Table  string
	Field  string
	Reason string // "" means "is not a column"
}

func (e *FieldError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("field %s is not a column of table %q", quoteKey(e.Field), e.Table)
	}
	return fmt.Sprintf("field %s of table %q %s", quoteKey(e.Field), e.Table, e.Reason)
}

// ErrInvalidJSON is wrapped by the error for a JSON value that is not a
// JSON object (WriteJSON, FlushJSON, CheckObject).
var ErrInvalidJSON = errors.New("value is not a valid JSON object")

// ErrNoValueColumn is returned by the value-format methods (LoadValue,
// WriteValue, Flush) of a Table described without a value column.
var ErrNoValueColumn = errors.New("route has no value column")

// quoteKey quotes a client-supplied string for an error message, bounded
// so that a huge key does not make a huge reply.
func quoteKey(s string) string {
	const max = 128
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

// isDataException reports SQLSTATE class 22 (data exception): invalid
// text representation, out of range, bad encoding, ...: what a failed
// text-to-type cast raises.
func isDataException(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}
