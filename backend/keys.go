package backend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Keys and values before a statement: what Go can tell about a text to
// type cast without asking PostgreSQL (vouch), the casts that must ask it
// (castable), the checks write-back routes run before queueing a write
// (CheckKey, CheckValue), and the canonical form of a key (CanonicalKey).

// vouch says what Go knows about casting s to column c's type: yes (1),
// no (-1), or ask PostgreSQL (0). It only answers yes or no when
// PostgreSQL would certainly agree; anything doubtful is 0.
func vouch(c *column, s string) int {
	switch c.kind {
	case kindInt16, kindInt32, kindInt64:
		bits := 64
		switch c.kind {
		case kindInt16:
			bits = 16
		case kindInt32:
			bits = 32
		}
		if _, err := strconv.ParseInt(s, 10, bits); err == nil {
			return 1
		}
		if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
			return -1
		}
	case kindText:
		if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
			return -1 // PostgreSQL text cannot hold NUL or invalid UTF-8
		}
		// Assigning to varchar(n)/char(n) fails when the string is longer
		// than n, unless the excess characters are all spaces.
		if c.maxChars > 0 && utf8.RuneCountInString(strings.TrimRight(s, " ")) > c.maxChars {
			return -1
		}
		return 1
	case kindUUID:
		if isUUID(s) {
			return 1
		}
	}
	return 0
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch i {
		case 8, 13, 18, 23:
			if ch != '-' {
				return false
			}
		default:
			if !('0' <= ch && ch <= '9' || 'a' <= ch && ch <= 'f' || 'A' <= ch && ch <= 'F') {
				return false
			}
		}
	}
	return true
}

// castable says whether s can be cast to column c's type: in Go when
// vouch is sure, otherwise by running check ("SELECT $1::text::type") on
// the load pool, outside any transaction of the caller.
func (t *Table) castable(ctx context.Context, c *column, check, s string) (bool, error) {
	switch vouch(c, s) {
	case 1:
		return true, nil
	case -1:
		return false, nil
	}
	_, err := t.db.load.Exec(ctx, check, s)
	if err == nil {
		return true, nil
	}
	if isDataException(err) {
		return false, nil
	}
	return false, wrapErr(err)
}

func (t *Table) keyError(key string, err error) *KeyError {
	k := t.cols[t.key]
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		err = nil
	}
	return &KeyError{Table: t.name, Column: k.name, Type: k.fullType, Key: key, Err: err}
}

// CheckKey returns a *KeyError if key cannot be cast to the key column's
// type, nil if it can. It asks PostgreSQL (one SELECT on the load pool)
// only when Go cannot tell, e.g. never for integer keys in decimal or text
// keys in valid UTF-8. Write-back routes use it before queueing a write.
func (t *Table) CheckKey(ctx context.Context, key string) error {
	return t.do(ctx, nil, "key check", func(ctx context.Context) error {
		return t.checkKey(ctx, key)
	})
}

func (t *Table) checkKey(ctx context.Context, key string) error {
	ok, err := t.castable(ctx, &t.cols[t.key], t.sqlKeyCheck, key)
	if err != nil {
		return err
	}
	if !ok {
		return t.keyError(key, nil)
	}
	return nil
}

// CheckValue returns an error if value cannot be cast to the value
// column's type (the same checks as CheckKey; constraints are not
// checked). Write-back value routes use it before queueing a write.
func (t *Table) CheckValue(ctx context.Context, value string) error {
	return t.do(ctx, nil, "value check", func(ctx context.Context) error {
		return t.checkValue(ctx, value)
	})
}

func (t *Table) checkValue(ctx context.Context, value string) error {
	if t.val < 0 {
		return ErrNoValueColumn
	}
	v := &t.cols[t.val]
	ok, err := t.castable(ctx, v, t.sqlValCheck, value)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("value %s is not a valid %s for column %q of table %q", quoteKey(value), v.fullType, v.name, t.name)
	}
	return nil
}

// CanonicalKey returns the form PostgreSQL gives key once cast to the key
// column's type, when Go can tell (integers in decimal without sign or
// leading zeros, lower-case uuids), and whether key already is that form.
// Routes use it so that "user:01" and "user:1" are not two cached copies of
// one row: a non-canonical key is not found for reads and refused for
// writes. Other types are taken as they are.
func (t *Table) CanonicalKey(key string) (canonical string, ok bool) {
	switch t.cols[t.key].kind {
	case kindInt16, kindInt32, kindInt64:
		n, err := strconv.ParseInt(strings.TrimSpace(key), 10, 64)
		if err != nil {
			return key, true // not an integer: the cast decides (not found / KeyError)
		}
		c := strconv.FormatInt(n, 10)
		return c, c == key
	case kindUUID:
		c := strings.ToLower(strings.ReplaceAll(strings.Trim(key, "{}"), "-", ""))
		if len(c) != 32 {
			return key, true
		}
		c = c[0:8] + "-" + c[8:12] + "-" + c[12:16] + "-" + c[16:20] + "-" + c[20:32]
		return c, c == key
	}
	return key, true
}

func inTx(q Querier) bool {
	_, ok := q.(pgx.Tx)
	return ok
}
