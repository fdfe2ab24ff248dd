package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// What an error may say: backend's errors go to Redis clients (route
// errors) and to the unauthenticated /readyz, so their Error() names the
// cause and never the connection: not the DSN, user, database, host, port
// or password. pgx's own texts carry those ("failed to connect to
// `user=app database=shop`: 127.0.0.1:5432 (127.0.0.1): ...", "read tcp
// 10.0.0.5:40122->10.0.0.9:5432: ...", "password authentication failed
// for user ..."); wrapErr turns them into a *ConnError, whose Detail keeps
// them for the log.

// ConnError is a failure to reach or log in to PostgreSQL, a connection
// lost during a statement, or a DSN that cannot be parsed. Error() is safe
// to show anyone: "postgres: " and Cause, for example
//
//	postgres: cannot connect: connection refused
//	postgres: cannot connect: authentication failed (SQLSTATE 28P01)
//	postgres: connection lost: connection reset
//	postgres: invalid postgres.dsn: invalid port
//
// Detail() is the full text for the proxy's log (see Detail). Unwrap gives
// pgx's error, so errors.Is(err, context.DeadlineExceeded) and
// errors.Is(err, syscall.ECONNREFUSED) keep working; do not show its text
// to clients.
type ConnError struct {
	Cause  string
	Err    error
	detail string
}

func (e *ConnError) Error() string { return "postgres: " + e.Cause }

func (e *ConnError) Unwrap() error { return e.Err }

// Detail is pgx's full text: user, database, host, port and the server's
// own message, never the password (a DSN that cannot be parsed is left
// out entirely). For logs only.
func (e *ConnError) Detail() string { return e.detail }

// Detail returns err's text for the proxy's log: Error(), followed by the
// connection details a *ConnError in its chain leaves out. It is
// err.Error() for every other error, and "" for nil.
func Detail(err error) string {
	if err == nil {
		return ""
	}
	var ce *ConnError
	if errors.As(err, &ce) && ce.detail != "" {
		return err.Error() + " [" + ce.detail + "]"
	}
	return err.Error()
}

// Unreachable reports an error that says PostgreSQL could not be reached
// or did not answer in time: a *ConnError (but for an invalid DSN, which
// no retry mends), a *TimeoutError, or a *DBError of SQLSTATE class 08
// (connection exception), 53 (insufficient resources) or 57P (the server
// shutting down or restarting). A route set opened while PostgreSQL
// is unreachable starts degraded and connects in the background; any
// other error (a table or column missing, a privilege) is the
// configuration's.
func Unreachable(err error) bool {
	var ce *ConnError
	var te *TimeoutError
	var de *DBError
	switch {
	case errors.As(err, &ce):
		return !strings.HasPrefix(ce.Cause, "invalid postgres.dsn")
	case errors.As(err, &te):
		return true
	case errors.As(err, &de):
		code := de.Code()
		return strings.HasPrefix(code, "08") || strings.HasPrefix(code, "53") || strings.HasPrefix(code, "57P")
	}
	return false
}

// Redact maps an error from pgx the way every error backend returns is
// mapped: a statement's error becomes a *DBError, a connection failure a
// *ConnError, anything else gets the prefix "postgres: ". Use it on the
// errors of pgx calls made outside backend (tx.Commit, tx.Rollback) before
// they reach a client. Backend's own errors pass through unchanged.
func Redact(err error) error { return wrapErr(err) }

// wrapErr is Redact.
func wrapErr(err error) error {
	if err == nil {
		return nil
	}
	var (
		de      *DBError
		ce      *ConnError
		te      *TimeoutError
		ke      *KeyError
		connErr *pgconn.ConnectError
		pgErr   *pgconn.PgError
		parse   *pgconn.ParseConfigError
	)
	switch {
	case errors.As(err, &de), errors.As(err, &ce), errors.As(err, &te), errors.As(err, &ke):
		return err
	case errors.As(err, &connErr):
		// Before PgError: a PgError inside a ConnectError is a refused
		// login, whose message names the user and database.
		return &ConnError{Cause: "cannot connect: " + connectCause(err), Err: err, detail: err.Error()}
	case errors.As(err, &pgErr):
		return &DBError{Err: pgErr}
	case errors.As(err, &parse):
		return &ConnError{Cause: "invalid postgres.dsn: " + parseCause(parse), Err: err, detail: "pgx: " + parseCause(parse)}
	case isNetErr(err):
		return &ConnError{Cause: "connection lost: " + netCause(err), Err: err, detail: err.Error()}
	}
	if strings.HasPrefix(err.Error(), "postgres") {
		return err
	}
	return fmt.Errorf("postgres: %w", err)
}

// connectCause says why a connection attempt failed, in words that hold
// no connection parameter: the SQLSTATE of a refused login, else the
// network's reason.
func connectCause(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		code := pgErr.Code
		var what string
		switch {
		case code == "28P01":
			what = "authentication failed"
		case strings.HasPrefix(code, "28"):
			what = "login refused (no pg_hba.conf entry, or the role may not log in)"
		case code == "3D000":
			what = "database does not exist"
		case strings.HasPrefix(code, "53"):
			what = "too many connections"
		case code == "57P03":
			what = "the server is starting up or shutting down"
		default:
			what = "refused by the server"
		}
		return fmt.Sprintf("%s (SQLSTATE %s)", what, code)
	}
	return netCause(err)
}

// netCause names a network failure without its addresses.
func netCause(err error) string {
	var dns *net.DNSError
	var nerr net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return "timed out"
	case errors.As(err, &dns):
		return "host name lookup failed"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server"
	}
	return "connection failed"
}

// isNetErr reports an error of the connection itself (its text would
// name the local and remote addresses).
func isNetErr(err error) bool {
	var op *net.OpError
	var dns *net.DNSError
	return errors.As(err, &op) || errors.As(err, &dns)
}

// parseCause is pgx's reason for refusing a DSN ("invalid port"), without
// the DSN it quotes. Its Error() is "cannot parse `<dsn>`: <reason>" or
// "... <reason> (<wrapped error>)"; the wrapped error is left out too,
// since a URL parse error quotes the URL, password included.
func parseCause(e *pgconn.ParseConfigError) string {
	s := e.Error()
	if inner := e.Unwrap(); inner != nil {
		s = strings.TrimSuffix(s, " ("+inner.Error()+")")
	}
	if i := strings.LastIndex(s, "`: "); i >= 0 {
		return s[i+len("`: "):]
	}
	return "cannot be parsed"
}
