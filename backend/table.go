package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Field is one Redis hash field: a column name and its value as text.
type Field struct {
	Name, Value string
}

// Table describes one route's table: the columns in table order, which one
// is the key and which one (for value-format routes) holds the value, and
// the statements built from them. A Table is immutable and safe for
// concurrent use. Build it with DB.Describe.
type Table struct {
	db    *DB
	name  string // as configured, for messages
	ident string // quoted, schema-qualified: "public"."users"
	cols  []column
	byNm  map[string]int
	key   int // index of the key column in cols
	val   int // index of the value column, -1 if none

	sqlKeyCheck   string
	sqlValCheck   string
	sqlLoadJSON   string
	sqlLoadFields string
	sqlLoadValue  string
	sqlWriteValue string
	sqlDelete     string
	sqlFlushValue [4]string // [rep<<1 | del]
}

type column struct {
	name      string
	ident     string // quoted
	typ       string // format_type without typmod: what casts use
	fullType  string // format_type with typmod, for messages
	kind      kind
	maxChars  int // varchar(n)/char(n): n; 0 otherwise
	generated bool
}

// kind is what Go can check about a text-to-type cast without asking
// PostgreSQL (see vouch).
type kind int

const (
	kindOther kind = iota
	kindInt16
	kindInt32
	kindInt64
	kindText // text, varchar, char, with maxChars for a length limit
	kindUUID
)

// Describe checks, at start-up, that the table, the key column and (if
// valueColumn is not "") the value column exist, that the key column has a
// unique index or primary key of its own (a non-partial, non-deferrable
// unique index on just that column, which INSERT ... ON CONFLICT (key)
// needs), and returns the table's description.
//
// table is one identifier taken literally (case-sensitive: "Users" is not
// users), or "schema.table" when it contains a dot (split at the first
// dot). It is resolved once, here, with to_regclass: later statements use
// the schema-qualified name, whatever the search_path. Errors name the
// table and column, e.g.
//
//	table "users": column "idx" does not exist
//
// and hint at the lower-case name when only that exists.
func (db *DB) Describe(ctx context.Context, table, keyColumn, valueColumn string) (*Table, error) {
	if table == "" {
		return nil, errors.New("table name is empty")
	}
	ident := identFor(table)
	var (
		oid     uint32
		nsp     string
		rel     string
		relkind string
	)
	err := db.load.QueryRow(ctx, `SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass($1)`, ident).Scan(&oid, &nsp, &rel, &relkind)
	if errors.Is(err, pgx.ErrNoRows) {
		msg := fmt.Sprintf("table %q does not exist", table)
		if low := strings.ToLower(table); low != table {
			var found bool
			if db.load.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, identFor(low)).Scan(&found) == nil && found {
				msg += fmt.Sprintf(" (names are case-sensitive; did you mean %q?)", low)
			}
		}
		return nil, errors.New(msg)
	}
	if err != nil {
		return nil, fmt.Errorf("table %q: %w", table, wrapErr(err))
	}
	if relkind != "r" && relkind != "p" {
		return nil, fmt.Errorf("table %q: is not a table (relkind %q): routes need INSERT ... ON CONFLICT", table, relkind)
	}

	t := &Table{
		db:    db,
		name:  table,
		ident: pgx.Identifier{nsp, rel}.Sanitize(),
		byNm:  map[string]int{},
		key:   -1,
		val:   -1,
	}
	rows, err := db.load.Query(ctx, `SELECT a.attname::text,
	pg_catalog.format_type(a.atttypid, NULL),
	pg_catalog.format_type(a.atttypid, a.atttypmod),
	a.atttypid::int8, a.atttypmod, a.attgenerated <> ''
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("table %q: %w", table, wrapErr(err))
	}
	for rows.Next() {
		var (
			c      column
			typOID int64
			typmod int32
		)
		if err := rows.Scan(&c.name, &c.typ, &c.fullType, &typOID, &typmod, &c.generated); err != nil {
			rows.Close()
			return nil, fmt.Errorf("table %q: %w", table, wrapErr(err))
		}
		c.ident = pgx.Identifier{c.name}.Sanitize()
		c.kind, c.maxChars = kindOf(uint32(typOID), typmod)
		t.byNm[c.name] = len(t.cols)
		t.cols = append(t.cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("table %q: %w", table, wrapErr(err))
	}
	lookup := func(col, what string) (int, error) {
		if i, ok := t.byNm[col]; ok {
			return i, nil
		}
		msg := fmt.Sprintf("table %q: %scolumn %q does not exist", table, what, col)
		if low := strings.ToLower(col); low != col {
			if _, ok := t.byNm[low]; ok {
				msg += fmt.Sprintf(" (names are case-sensitive; did you mean %q?)", low)
			}
		}
		return -1, errors.New(msg)
	}
	if keyColumn == "" {
		return nil, fmt.Errorf("table %q: key column is empty", table)
	}
	if t.key, err = lookup(keyColumn, ""); err != nil {
		return nil, err
	}
	if valueColumn != "" {
		if t.val, err = lookup(valueColumn, ""); err != nil {
			return nil, err
		}
		if t.val == t.key {
			return nil, fmt.Errorf("table %q: value column %q is the key column", table, valueColumn)
		}
	}

	var unique bool
	err = db.load.QueryRow(ctx, `SELECT EXISTS (
	SELECT 1 FROM pg_catalog.pg_index i
	JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
	WHERE i.indrelid = $1 AND a.attname = $2
	  AND i.indisunique AND i.indimmediate AND i.indnkeyatts = 1
	  AND i.indpred IS NULL AND i.indexprs IS NULL)`, oid, keyColumn).Scan(&unique)
	if err != nil {
		return nil, fmt.Errorf("table %q: %w", table, wrapErr(err))
	}
	if !unique {
		return nil, fmt.Errorf("table %q: column %q has no primary key or unique index of its own (INSERT ... ON CONFLICT (%s) needs one)",
			table, keyColumn, t.cols[t.key].ident)
	}
	t.build()
	return t, nil
}

// identFor quotes a configured table name: one identifier, or
// schema.table when it contains a dot.
func identFor(table string) string {
	if i := strings.IndexByte(table, '.'); i > 0 && i < len(table)-1 {
		return pgx.Identifier{table[:i], table[i+1:]}.Sanitize()
	}
	return pgx.Identifier{table}.Sanitize()
}

// kindOf maps a column type to what vouch can check in Go. Domains and
// every other type are kindOther: only PostgreSQL can tell.
func kindOf(oid uint32, typmod int32) (kind, int) {
	switch oid {
	case 21:
		return kindInt16, 0
	case 23:
		return kindInt32, 0
	case 20:
		return kindInt64, 0
	case 25:
		return kindText, 0
	case 1043, 1042: // varchar, bpchar: typmod is n+4, -1 without a limit
		if typmod >= 4 {
			return kindText, int(typmod - 4)
		}
		return kindText, 0
	case 2950:
		return kindUUID, 0
	}
	return kindOther, 0
}

// build prepares the statements that do not depend on the fields of a
// call. $1 is always the key.
func (t *Table) build() {
	k := t.cols[t.key]
	keyEq := k.ident + " = $1::text::" + k.typ
	t.sqlKeyCheck = "SELECT $1::text::" + k.typ
	t.sqlLoadJSON = "SELECT pg_catalog.row_to_json(respite_r.*)::text FROM " + t.ident +
		" AS respite_r WHERE respite_r." + keyEq
	var sel []string
	for _, c := range t.cols {
		sel = append(sel, c.ident+"::text")
	}
	t.sqlLoadFields = "SELECT " + strings.Join(sel, ", ") + " FROM " + t.ident + " WHERE " + keyEq
	t.sqlDelete = "DELETE FROM " + t.ident + " WHERE " + keyEq
	if t.val >= 0 {
		v := t.cols[t.val]
		t.sqlValCheck = "SELECT $1::text::" + v.typ
		t.sqlLoadValue = "SELECT " + v.ident + "::text FROM " + t.ident + " WHERE " + keyEq
		t.sqlWriteValue = t.writeSQL([]int{t.val}, func(int) string { return "$2::text::" + v.typ }, "", "")
		for i := range t.sqlFlushValue {
			t.sqlFlushValue[i] = t.flushValueSQL(i&2 != 0, i&1 != 0)
		}
	}
}

// Name is the table name as configured.
func (t *Table) Name() string { return t.name }

// KeyColumn is the key column's name.
func (t *Table) KeyColumn() string { return t.cols[t.key].name }

// ValueColumn is the value column's name, "" if the table was described
// without one.
func (t *Table) ValueColumn() string {
	if t.val < 0 {
		return ""
	}
	return t.cols[t.val].name
}

// Columns returns the table's column names in table order (attnum),
// dropped columns excluded. The slice is a copy.
func (t *Table) Columns() []string {
	out := make([]string, len(t.cols))
	for i, c := range t.cols {
		out[i] = c.name
	}
	return out
}

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

func inTx(q Querier) bool {
	_, ok := q.(pgx.Tx)
	return ok
}

// readKey decides whether a read may run: inside a transaction a key that
// cannot be cast is found out on the load pool first, so that it does not
// abort the caller's transaction.
func (t *Table) readKey(ctx context.Context, q Querier, key string) (bool, error) {
	if !inTx(q) {
		return true, nil
	}
	return t.castable(ctx, &t.cols[t.key], t.sqlKeyCheck, key)
}

// readErr maps a read's error: a data exception can only come from the
// key's cast, so it means "not found".
func readErr(err error) (found bool, _ error) {
	if errors.Is(err, pgx.ErrNoRows) || isDataException(err) {
		return false, nil
	}
	return false, wrapErr(err)
}

// LoadJSON returns the row as one JSON object of all its columns
// (row_to_json: numbers as numbers, NULL as null, json columns embedded).
// A key that cannot be cast to the key column's type is not found.
//
//	SELECT row_to_json(r.*)::text FROM T AS r WHERE r.K = $1::text::KT
func (t *Table) LoadJSON(ctx context.Context, q Querier, key string) (obj []byte, found bool, err error) {
	if ok, err := t.readKey(ctx, q, key); !ok || err != nil {
		return nil, false, err
	}
	var s string
	if err := q.QueryRow(ctx, t.sqlLoadJSON, key).Scan(&s); err != nil {
		found, err = readErr(err)
		return nil, found, err
	}
	return []byte(s), true, nil
}

// LoadFields returns every non-NULL column of the row as text (the
// column's ::text cast: booleans are "true"/"false", timestamps follow the
// session's DateStyle and TimeZone), in column order, key column included:
// the fields of a Redis hash.
//
//	SELECT c1::text, c2::text, ... FROM T WHERE K = $1::text::KT
func (t *Table) LoadFields(ctx context.Context, q Querier, key string) (fields []Field, found bool, err error) {
	if ok, err := t.readKey(ctx, q, key); !ok || err != nil {
		return nil, false, err
	}
	vals := make([]*string, len(t.cols))
	dest := make([]any, len(t.cols))
	for i := range vals {
		dest[i] = &vals[i]
	}
	if err := q.QueryRow(ctx, t.sqlLoadFields, key).Scan(dest...); err != nil {
		found, err = readErr(err)
		return nil, found, err
	}
	fields = make([]Field, 0, len(t.cols))
	for i, v := range vals {
		if v != nil {
			fields = append(fields, Field{Name: t.cols[i].name, Value: *v})
		}
	}
	return fields, true, nil
}

// LoadValue returns the value column as text. A row whose value is NULL is
// found with value "": Redis has no NULL string, and the row exists (so
// EXISTS says 1 and GET says "", not nil).
//
//	SELECT V::text FROM T WHERE K = $1::text::KT
func (t *Table) LoadValue(ctx context.Context, q Querier, key string) (value string, found bool, err error) {
	if t.val < 0 {
		return "", false, ErrNoValueColumn
	}
	if ok, err := t.readKey(ctx, q, key); !ok || err != nil {
		return "", false, err
	}
	var v *string
	if err := q.QueryRow(ctx, t.sqlLoadValue, key).Scan(&v); err != nil {
		found, err = readErr(err)
		return "", found, err
	}
	if v == nil {
		return "", true, nil
	}
	return *v, true, nil
}

// writeKey is the check before a write: inside a transaction a key that
// cannot be cast is refused without touching the transaction.
func (t *Table) writeKey(ctx context.Context, q Querier, key string) error {
	if !inTx(q) {
		return nil
	}
	return t.CheckKey(ctx, key)
}

// writeErr maps a write's error: a data exception is a *KeyError if the
// key is what cannot be cast, otherwise (a bad value) a *DBError.
func (t *Table) writeErr(ctx context.Context, key string, err error) error {
	if isDataException(err) {
		ok, cerr := t.castable(ctx, &t.cols[t.key], t.sqlKeyCheck, key)
		if cerr == nil && !ok {
			return t.keyError(key, err)
		}
	}
	return wrapErr(err)
}

// member is one member of a JSON object, in document order.
type member struct {
	name string
	raw  json.RawMessage
}

// parseObject parses a JSON object into its members in document order.
// Anything else (invalid JSON, an array, trailing data) wraps
// ErrInvalidJSON.
func parseObject(obj []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(obj))
	bad := func(err error) error {
		if err == nil {
			return ErrInvalidJSON
		}
		return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, bad(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, bad(nil)
	}
	var ms []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad(err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, bad(nil)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, bad(err)
		}
		ms = append(ms, member{name, raw})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, bad(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad(errors.New("data after the object"))
	}
	return ms, nil
}

// columnsOf checks that every name is a column and returns the column
// indexes, deduplicated, in table order, and whether the key column is
// among them (keyAt: the position of its last occurrence in names, -1 if
// absent).
func (t *Table) columnsOf(names []string) (cols []int, keyAt int, err error) {
	seen := make([]bool, len(t.cols))
	keyAt = -1
	for i, n := range names {
		ci, ok := t.byNm[n]
		if !ok {
			return nil, -1, &FieldError{Table: t.name, Field: n}
		}
		if ci == t.key {
			keyAt = i
			continue
		}
		seen[ci] = true
	}
	for ci, s := range seen {
		if s {
			cols = append(cols, ci)
		}
	}
	return cols, keyAt, nil
}

// CheckObject checks in Go what WriteJSON and FlushJSON check before
// running a statement: obj is a JSON object whose members are all columns.
func (t *Table) CheckObject(obj []byte) error {
	ms, err := parseObject(obj)
	if err != nil {
		return err
	}
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.name
	}
	_, _, err = t.columnsOf(names)
	return err
}

// upsertTail is " ON CONFLICT (K) DO UPDATE SET c = EXCLUDED.c, ..." for
// cols, then "d = DEFAULT" for defaults. With nothing to set it sets the
// key to itself, so that the row still counts as written.
func (t *Table) upsertTail(cols []int, defaults ...int) string {
	k := t.cols[t.key].ident
	var set []string
	for _, ci := range cols {
		c := t.cols[ci].ident
		set = append(set, c+" = EXCLUDED."+c)
	}
	for _, ci := range defaults {
		set = append(set, t.cols[ci].ident+" = DEFAULT")
	}
	if len(set) == 0 {
		set = append(set, k+" = EXCLUDED."+k)
	}
	return " ON CONFLICT (" + k + ") DO UPDATE SET " + strings.Join(set, ", ")
}

// setList is "c1 = expr(c1), c2 = expr(c2)" then "d = DEFAULT".
func (t *Table) setList(cols []int, expr func(ci int) string, defaults []int) string {
	var set []string
	for _, ci := range cols {
		set = append(set, t.cols[ci].ident+" = "+expr(ci))
	}
	for _, ci := range defaults {
		set = append(set, t.cols[ci].ident+" = DEFAULT")
	}
	return strings.Join(set, ", ")
}

// writeSQL builds a single-row partial upsert of cols, with expr(ci) the
// new value of column ci, from extra FROM items ("" for none) and cond an
// extra condition ("" for none; when false nothing is written and the
// count is 0). It returns the number of rows written (0 or 1).
//
// Why not a plain INSERT ... ON CONFLICT DO UPDATE: PostgreSQL checks NOT
// NULL and CHECK constraints on the proposed new row before it looks for a
// conflict, so updating only "age" of an existing user would fail on the
// NOT NULL "name" that the proposed row lacks. The row is updated first;
// only if there was none, it is inserted (the ON CONFLICT still covers a
// concurrent insert of the same key).
//
//	WITH respite_u AS (UPDATE T AS respite_t SET c1 = e1, c2 = e2 [FROM f] WHERE respite_t.K = $1::text::KT [AND cond] RETURNING 1),
//	  respite_i AS (INSERT INTO T (K, c1, c2) SELECT $1::text::KT, e1, e2 [FROM f] WHERE NOT EXISTS (SELECT 1 FROM respite_u) [AND cond]
//	    ON CONFLICT (K) DO UPDATE SET c1 = EXCLUDED.c1, c2 = EXCLUDED.c2 RETURNING 1)
//	SELECT (SELECT count(*) FROM respite_u) + (SELECT count(*) FROM respite_i)
func (t *Table) writeSQL(cols []int, expr func(ci int) string, from, cond string) string {
	k := t.cols[t.key]
	keyVal := "$1::text::" + k.typ
	if cond != "" {
		cond = " AND " + cond
	}
	var b strings.Builder
	b.WriteString("WITH respite_u AS (")
	if len(cols) == 0 {
		b.WriteString("SELECT 1 FROM " + t.ident + " AS respite_t")
		if from != "" {
			b.WriteString(", " + from)
		}
		b.WriteString(" WHERE respite_t." + k.ident + " = " + keyVal + cond + "),\n")
	} else {
		b.WriteString("UPDATE " + t.ident + " AS respite_t SET " + t.setList(cols, expr, nil))
		if from != "" {
			b.WriteString(" FROM " + from)
		}
		b.WriteString(" WHERE respite_t." + k.ident + " = " + keyVal + cond + " RETURNING 1),\n")
	}
	b.WriteString("respite_i AS (INSERT INTO " + t.ident + " (" + k.ident)
	for _, ci := range cols {
		b.WriteString(", " + t.cols[ci].ident)
	}
	b.WriteString(") SELECT " + keyVal)
	for _, ci := range cols {
		b.WriteString(", " + expr(ci))
	}
	if from != "" {
		b.WriteString(" FROM " + from)
	}
	b.WriteString(" WHERE NOT EXISTS (SELECT 1 FROM respite_u)" + cond)
	b.WriteString(t.upsertTail(cols) + " RETURNING 1)\n")
	b.WriteString("SELECT (SELECT count(*) FROM respite_u) + (SELECT count(*) FROM respite_i)")
	return b.String()
}

// runWrite runs a writeSQL statement; 0 rows written means cond failed:
// the key column given does not match the key.
func (t *Table) runWrite(ctx context.Context, q Querier, key, sql string, args ...any) error {
	var n int64
	if err := q.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		return t.writeErr(ctx, key, err)
	}
	if n == 0 {
		return &FieldError{Table: t.name, Field: t.cols[t.key].name,
			Reason: "is the key column and does not match the key " + quoteKey(key)}
	}
	return nil
}

// WriteJSON upserts the row from a JSON object of columns: only the
// columns given are written; a new row gets defaults for the rest. JSON
// values are converted by PostgreSQL (jsonb_populate_record: strings and
// numbers through the column type's input function, arrays to arrays,
// objects to json/jsonb or composites, null to NULL). The key column, if
// present, must equal the key after the cast (5, "5" and "05" all equal
// the key "5" of an integer column), else a *FieldError.
//
// Errors: ErrInvalidJSON (wrapped) for anything but a JSON object;
// *FieldError for a member that is not a column; *KeyError for a key that
// cannot be cast; *DBError for a bad value or a constraint violation (the
// row is unchanged). The statement is writeSQL's with
//
//	e_i = r.c_i, f = jsonb_populate_record(NULL::T, $2::text::jsonb) AS r, [cond = r.K = $1::text::KT]
func (t *Table) WriteJSON(ctx context.Context, q Querier, key string, obj []byte) error {
	ms, err := parseObject(obj)
	if err != nil {
		return err
	}
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.name
	}
	cols, keyAt, err := t.columnsOf(names)
	if err != nil {
		return err
	}
	if err := t.writeKey(ctx, q, key); err != nil {
		return err
	}
	k := t.cols[t.key]
	cond := ""
	if keyAt >= 0 {
		cond = "respite_r." + k.ident + " = $1::text::" + k.typ
	}
	sql := t.writeSQL(cols, func(ci int) string { return "respite_r." + t.cols[ci].ident },
		"pg_catalog.jsonb_populate_record(NULL::"+t.ident+", $2::text::jsonb) AS respite_r", cond)
	return t.runWrite(ctx, q, key, sql, key, string(obj))
}

// WriteFields upserts the given fields (HSET/HMSET): only these columns
// are written; a new row gets defaults for the rest. A repeated field
// takes its last value. The key column may be given if it equals the key
// after the cast. Errors as WriteJSON. The statement is writeSQL's with
//
//	e_i = $n::text::T_i, [cond = $m::text::KT = $1::text::KT]
func (t *Table) WriteFields(ctx context.Context, q Querier, key string, fields []Field) error {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.Name
	}
	cols, keyAt, err := t.columnsOf(names)
	if err != nil {
		return err
	}
	if err := t.writeKey(ctx, q, key); err != nil {
		return err
	}
	last := make(map[int]string, len(fields))
	for _, f := range fields {
		last[t.byNm[f.Name]] = f.Value
	}
	k := t.cols[t.key]
	args := []any{key}
	param := map[int]int{}
	for _, ci := range cols {
		args = append(args, last[ci])
		param[ci] = len(args)
	}
	cond := ""
	if keyAt >= 0 {
		args = append(args, fields[keyAt].Value)
		cond = fmt.Sprintf("$%d::text::%s = $1::text::%s", len(args), k.typ, k.typ)
	}
	sql := t.writeSQL(cols, func(ci int) string { return fmt.Sprintf("$%d::text::%s", param[ci], t.cols[ci].typ) }, "", cond)
	return t.runWrite(ctx, q, key, sql, args...)
}

// ClearFields (HDEL) sets the named columns to NULL and returns how many
// of them were non-NULL before, as Redis counts removed fields; a missing
// row counts 0 and a row whose named columns are all NULL already is not
// written. A repeated name counts once. Naming the key column or a name
// that is not a column is a *FieldError (nothing is changed); a NOT NULL
// column gives the constraint's *DBError. A key that cannot be cast is a
// *KeyError.
//
//	WITH o AS (SELECT K AS k, (c1 IS NOT NULL)::int + (c2 IS NOT NULL)::int AS n FROM T WHERE K = $1::text::KT FOR UPDATE)
//	UPDATE T AS t SET c1 = NULL, c2 = NULL FROM o WHERE t.K = o.k AND o.n > 0 RETURNING o.n
func (t *Table) ClearFields(ctx context.Context, q Querier, key string, names []string) (int64, error) {
	cols, keyAt, err := t.columnsOf(names)
	if err != nil {
		return 0, err
	}
	if keyAt >= 0 {
		return 0, &FieldError{Table: t.name, Field: t.cols[t.key].name, Reason: "is the key column and cannot be removed"}
	}
	if len(cols) == 0 {
		return 0, nil
	}
	if err := t.writeKey(ctx, q, key); err != nil {
		return 0, err
	}
	k := t.cols[t.key]
	var cnt, set []string
	for _, ci := range cols {
		c := t.cols[ci].ident
		cnt = append(cnt, "("+c+" IS NOT NULL)::int")
		set = append(set, c+" = NULL")
	}
	sql := "WITH respite_o AS (SELECT " + k.ident + " AS k, " + strings.Join(cnt, " + ") + " AS n FROM " + t.ident +
		" WHERE " + k.ident + " = $1::text::" + k.typ + " FOR UPDATE) UPDATE " + t.ident + " AS respite_t SET " +
		strings.Join(set, ", ") + " FROM respite_o WHERE respite_t." + k.ident + " = respite_o.k AND respite_o.n > 0 RETURNING respite_o.n"
	var n int64
	if err := q.QueryRow(ctx, sql, key).Scan(&n); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, nil
		}
		return 0, t.writeErr(ctx, key, err)
	}
	return n, nil
}

// WriteValue upserts the value column (SET). Errors: *KeyError for a key
// that cannot be cast; *DBError for a value that cannot be cast ("x" into
// an integer) or a constraint violation. The statement is writeSQL's with
//
//	e = $2::text::VT
func (t *Table) WriteValue(ctx context.Context, q Querier, key, value string) error {
	if t.val < 0 {
		return ErrNoValueColumn
	}
	if err := t.writeKey(ctx, q, key); err != nil {
		return err
	}
	return t.runWrite(ctx, q, key, t.sqlWriteValue, key, value)
}

// Delete deletes the row and reports whether there was one. A key that
// cannot be cast names no row: (false, nil), as Redis DEL of a missing
// key, not an error.
//
//	DELETE FROM T WHERE K = $1::text::KT
func (t *Table) Delete(ctx context.Context, q Querier, key string) (bool, error) {
	if ok, err := t.readKey(ctx, q, key); !ok || err != nil {
		return false, err
	}
	tag, err := q.Exec(ctx, t.sqlDelete, key)
	if err != nil {
		if isDataException(err) {
			return false, nil
		}
		return false, wrapErr(err)
	}
	return tag.RowsAffected() > 0, nil
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
