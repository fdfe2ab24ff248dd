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
		if _, err := strconv.ParseInt(s, 10, intBits(c.kind)); err == nil {
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

// intBits is the size of an integer kind, 0 for the other kinds.
func intBits(k kind) int {
	switch k {
	case kindInt16:
		return 16
	case kindInt32:
		return 32
	case kindInt64:
		return 64
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
	e := &KeyError{Table: t.name, Column: k.name, Type: k.fullType, Key: key, Err: err}
	if t.composite() {
		var types []string
		for _, ci := range t.keys {
			types = append(types, t.cols[ci].fullType)
		}
		e.Column, e.Type, e.Separator = strings.Join(t.KeyColumns(), ", "), strings.Join(types, ", "), t.sep
	}
	return e
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
	ok, err := t.keyCastable(ctx, key)
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

// canon is how PostgreSQL writes a key column's values as text, which is
// the one form of a key a route serves (CanonicalKey): "user:01" and
// "user:1", "day:2024-1-31" and "day:2024-01-31", "w:1.50" and "w:1.5"
// name one row each, and a second spelling would be a second cached copy
// of it.
type canon struct {
	form  canonForm
	scale int // numeric: digits after the point, -1 unconstrained; timestamps: fractional digits (0 to 6)
}

// canonForm is a family of key types with one canonical text.
type canonForm int

const (
	canonAsIs        canonForm = iota // text, varchar, and the types Go does not check: taken as they are
	canonInt                          // smallint, integer, bigint: decimal, no sign for positives, no leading zeros
	canonNumeric                      // numeric: plain notation; unconstrained: no trailing zeros (trim_scale); numeric(p,s): s decimals
	canonDate                         // date: YYYY-MM-DD[ BC] (DateStyle ISO)
	canonTimestamp                    // timestamp(p): YYYY-MM-DD HH:MM:SS[.f][ BC], trailing zeros of f trimmed, at most p digits
	canonTimestampTZ                  // timestamptz(p): the same with +00 (the proxy's sessions run with TimeZone UTC)
	canonUUID                         // uuid: lower-case, hyphenated 8-4-4-4-12
	canonBool                         // boolean: true or false
	canonBpchar                       // character(n): no trailing spaces (they are padding), at most n characters (scale)
)

// canonOf is the canonical form of keys of the type with this oid and
// typmod. numeric with a negative scale (PostgreSQL 15) is taken as it is.
func canonOf(oid uint32, typmod int32) canon {
	switch oid {
	case 20, 21, 23:
		return canon{form: canonInt}
	case 1700:
		if typmod < 4 {
			return canon{form: canonNumeric, scale: -1}
		}
		scale := int(((typmod-4)&0x7ff)^1024) - 1024 // sign-extended 11 bits (PostgreSQL 15's numeric typmod)
		if scale < 0 {
			return canon{}
		}
		return canon{form: canonNumeric, scale: scale}
	case 1082:
		return canon{form: canonDate}
	case 1114, 1184:
		p := 6
		if typmod >= 0 && typmod < 6 {
			p = int(typmod)
		}
		if oid == 1184 {
			return canon{form: canonTimestampTZ, scale: p}
		}
		return canon{form: canonTimestamp, scale: p}
	case 2950:
		return canon{form: canonUUID}
	case 16:
		return canon{form: canonBool}
	case 1042:
		n := 0
		if typmod >= 4 {
			n = int(typmod - 4)
		}
		return canon{form: canonBpchar, scale: n}
	}
	return canon{}
}

// CanonicalKey reports whether key is the canonical text of a value of
// the key column's type: the text PostgreSQL gives that value (see canon
// for each type; text and varchar keys, and keys of types not listed
// there, are taken as they are). It never asks PostgreSQL: routes call it
// on every command. A key that is not canonical is not found for reads
// and refused for writes with its canonical form (CanonicalForm), so one
// row never has two cached copies. A key that looks canonical but does
// not fit the type (an integer out of range, 2024-02-30 is already
// refused here) is left to the cast: not found, or a *KeyError.
func (t *Table) CanonicalKey(key string) bool {
	parts, ok := t.keyParts(key)
	if !ok {
		return false
	}
	for i, ci := range t.keys {
		if !isCanonical(t.cols[ci].canon, parts[i]) {
			return false
		}
	}
	return true
}

// CanonicalForm returns the canonical text of key (what PostgreSQL gives
// it once cast to the key column's type, trailing zeros of an
// unconstrained numeric trimmed), asking PostgreSQL unless key already is
// canonical. A key that cannot be cast is a *KeyError.
// A composite key's parts are canonicalized one by one; a key with
// another number of parts is a *KeyError.
func (t *Table) CanonicalForm(ctx context.Context, key string) (string, error) {
	if t.CanonicalKey(key) {
		return key, nil
	}
	parts, ok := t.keyParts(key)
	if !ok {
		return "", t.keyError(key, nil)
	}
	out := make([]string, len(parts))
	err := t.do(ctx, nil, "key check", func(ctx context.Context) error {
		for i, ci := range t.keys {
			c := &t.cols[ci]
			if isCanonical(c.canon, parts[i]) || t.sqlCanon[i] == "" {
				out[i] = parts[i]
				continue
			}
			if vouch(c, parts[i]) < 0 {
				return t.keyError(key, nil) // NUL, invalid UTF-8, too long for character(n)
			}
			err := t.db.load.QueryRow(ctx, t.sqlCanon[i], parts[i]).Scan(&out[i])
			if isDataException(err) {
				return t.keyError(key, err)
			}
			if err != nil {
				return wrapErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return t.joinKey(out), nil
}

// canonSQL is the statement CanonicalForm runs for a key column, "" when
// every text is canonical.
func canonSQL(c *column) string {
	switch c.canon.form {
	case canonAsIs:
		return ""
	case canonNumeric:
		if c.canon.scale < 0 {
			return "SELECT pg_catalog.trim_scale($1::text::numeric)::text"
		}
	case canonBpchar:
		// Without the length: an explicit cast to character(n) would cut
		// a longer key, which CanonicalForm refuses before.
		return "SELECT $1::text::bpchar::text"
	}
	return "SELECT $1::text::" + c.fullType + "::text"
}

func isCanonical(c canon, s string) bool {
	switch c.form {
	case canonInt:
		n, err := strconv.ParseInt(s, 10, 64)
		return err == nil && strconv.FormatInt(n, 10) == s
	case canonNumeric:
		return canonicalNumeric(s, c.scale)
	case canonDate:
		return canonicalTime(s, false, 0, false)
	case canonTimestamp:
		return canonicalTime(s, true, c.scale, false)
	case canonTimestampTZ:
		return canonicalTime(s, true, c.scale, true)
	case canonUUID:
		return isUUID(s) && strings.ToLower(s) == s
	case canonBool:
		return s == "true" || s == "false"
	case canonBpchar:
		return strings.TrimRight(s, " ") == s && (c.scale == 0 || utf8.RuneCountInString(s) <= c.scale)
	}
	return true
}

// canonicalNumeric: -?(0|[1-9][0-9]*) then, unconstrained (scale < 0), an
// optional fraction not ending in 0, or exactly scale decimals; no
// negative zero; or NaN, Infinity, -Infinity.
func canonicalNumeric(s string, scale int) bool {
	switch s {
	case "NaN", "Infinity", "-Infinity":
		return true
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	whole, frac, dot := strings.Cut(s, ".")
	if whole == "" || !allDigits(whole) || (len(whole) > 1 && whole[0] == '0') {
		return false
	}
	if dot && (frac == "" || !allDigits(frac)) {
		return false
	}
	if scale < 0 {
		if dot && frac[len(frac)-1] == '0' {
			return false
		}
	} else if len(frac) != scale {
		return false
	}
	if neg && strings.Trim(whole+frac, "0") == "" {
		return false // -0 and -0.00 are 0 and 0.00
	}
	return true
}

// canonicalTime checks PostgreSQL's ISO output of a date, or with
// withTime of a timestamp with at most prec fractional digits (and +00
// with tz): YYYY-MM-DD[ HH:MM:SS[.f][+00]][ BC], the year at least four
// digits and without a leading zero beyond them, a day that exists in
// that month (the proleptic Gregorian calendar, 1 BC a leap year); or
// infinity, -infinity.
func canonicalTime(s string, withTime bool, prec int, tz bool) bool {
	if s == "infinity" || s == "-infinity" {
		return true
	}
	s, bc := strings.CutSuffix(s, " BC")
	date, clock, hasClock := strings.Cut(s, " ")
	if hasClock != withTime {
		return false
	}
	y, rest, ok := strings.Cut(date, "-")
	if !ok || len(y) < 4 || !allDigits(y) || (len(y) > 4 && y[0] == '0') || len(rest) != 5 || rest[2] != '-' ||
		!allDigits(rest[:2]) || !allDigits(rest[3:]) {
		return false
	}
	year, err := strconv.Atoi(y)
	if err != nil || year < 1 {
		return false
	}
	month, _ := strconv.Atoi(rest[:2])
	day, _ := strconv.Atoi(rest[3:])
	if bc {
		year = 1 - year // astronomical numbering: 1 BC is year 0
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, month) {
		return false
	}
	if !withTime {
		return true
	}
	if tz {
		if clock, ok = strings.CutSuffix(clock, "+00"); !ok {
			return false
		}
	}
	hms, frac, dot := strings.Cut(clock, ".")
	if len(hms) != 8 || hms[2] != ':' || hms[5] != ':' || !allDigits(hms[:2]) || !allDigits(hms[3:5]) || !allDigits(hms[6:]) {
		return false
	}
	h, _ := strconv.Atoi(hms[:2])
	m, _ := strconv.Atoi(hms[3:5])
	sec, _ := strconv.Atoi(hms[6:])
	if h > 23 || m > 59 || sec > 59 {
		return false
	}
	if dot {
		return frac != "" && len(frac) <= prec && allDigits(frac) && frac[len(frac)-1] != '0'
	}
	return true
}

func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func inTx(q Querier) bool {
	_, ok := q.(pgx.Tx)
	return ok
}
