package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The catalog side of a route's table: Describe reads the table's columns,
// types and key index from pg_catalog once, at start-up, and builds the
// statements that do not depend on a call's fields; the accessors and
// columnsOf answer from that description.

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
	oid   uint32
	bh    *bulkhead // shared by the Tables of one table
	name  string    // as configured, for messages
	ident string    // quoted, schema-qualified: "public"."users"
	cols  []column
	byNm  map[string]int
	key   int    // index of the (first) key column in cols
	keys  []int  // indexes of the key columns, in key order (compositekey.go)
	sep   string // between the parts of a composite key
	val   int    // index of the value column, -1 if none

	sqlKeyCheck   string
	sqlCanon      []string // CanonicalForm's statement per key column, "" when every text is canonical
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
	canon     canon // the canonical text of a key of this type (keys.go)
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
	return db.DescribeKey(ctx, table, Key{Columns: []string{keyColumn}}, valueColumn)
}

// DescribeKey is Describe for a key of one or several columns
// (compositekey.go): the table needs a primary key or unique index on
// exactly those columns; without one the error names the columns of its
// primary key.
func (db *DB) DescribeKey(ctx context.Context, table string, key Key, valueColumn string) (*Table, error) {
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
		// The search_path skips schemas the role may not use.
		var nspName string
		if !strings.Contains(table, ".") && db.load.QueryRow(ctx, `SELECT n.nspname::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $1 AND NOT pg_catalog.has_schema_privilege(n.oid, 'USAGE') ORDER BY 1 LIMIT 1`, table).Scan(&nspName) == nil {
			nsp, role := pgx.Identifier{nspName}.Sanitize(), db.currentUser(ctx)
			msg += fmt.Sprintf(" for role %s (one exists in schema %s, on which the role lacks USAGE: GRANT USAGE ON SCHEMA %s TO %s;)", role, nsp, nsp, role)
		}
		return nil, errors.New(msg)
	}
	var pgErr *pgconn.PgError
	if i := strings.IndexByte(table, '.'); i > 0 && errors.As(err, &pgErr) && pgErr.Code == "42501" {
		nsp, role := pgx.Identifier{table[:i]}.Sanitize(), db.currentUser(ctx)
		return nil, fmt.Errorf("table %q: %s (role %s lacks USAGE on the schema: GRANT USAGE ON SCHEMA %s TO %s;)", table, pgErr.Message, role, nsp, role)
	}
	if err != nil {
		return nil, fmt.Errorf("table %q: %w", table, wrapErr(err))
	}
	if relkind != "r" && relkind != "p" {
		return nil, fmt.Errorf("table %q: is not a table (relkind %q): routes need INSERT ... ON CONFLICT", table, relkind)
	}

	t := &Table{
		db:    db,
		oid:   oid,
		bh:    db.bulkheadFor(oid),
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
		if typOID == 1042 {
			// format_type says "character", which as a cast is
			// character(1) and cuts every longer text to one letter;
			// bpchar is the type without a length.
			c.typ = "pg_catalog.bpchar"
		}
		c.kind, c.maxChars = kindOf(uint32(typOID), typmod)
		c.canon = canonOf(uint32(typOID), typmod)
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
	if len(key.Columns) == 0 || key.Columns[0] == "" {
		return nil, fmt.Errorf("table %q: key column is empty", table)
	}
	t.sep = key.Separator
	if t.sep == "" {
		t.sep = ":"
	}
	for _, kc := range key.Columns {
		ci, err := lookup(kc, "")
		if err != nil {
			return nil, err
		}
		t.keys = append(t.keys, ci)
	}
	t.key = t.keys[0]
	if valueColumn != "" {
		if t.val, err = lookup(valueColumn, ""); err != nil {
			return nil, err
		}
		if t.isKey(t.val) {
			return nil, fmt.Errorf("table %q: value column %q is the key column", table, valueColumn)
		}
	}
	if err := t.checkUnique(ctx, key.Columns); err != nil {
		return nil, err
	}
	t.build()
	return t, nil
}

// checkUnique refuses a key that no primary key or unique index covers
// exactly (a non-partial, non-deferrable unique index on just those
// columns, in any order, which INSERT ... ON CONFLICT (K1, K2) needs),
// naming the columns of the table's primary key.
func (t *Table) checkUnique(ctx context.Context, columns []string) error {
	db := t.db
	var unique bool
	err := db.load.QueryRow(ctx, `SELECT EXISTS (
	SELECT 1 FROM pg_catalog.pg_index i
	WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indnkeyatts = $3
	  AND i.indpred IS NULL AND i.indexprs IS NULL
	  AND (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attname::text)
	       FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
	       JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
	       WHERE u.ord <= i.indnkeyatts) = (SELECT pg_catalog.array_agg(c ORDER BY c) FROM pg_catalog.unnest($2::text[]) AS c))`,
		t.oid, columns, len(columns)).Scan(&unique)
	if err != nil {
		return fmt.Errorf("table %q: %w", t.name, wrapErr(err))
	}
	if unique {
		return nil
	}
	var pk []string
	err = db.load.QueryRow(ctx, `SELECT pg_catalog.array_agg(a.attname::text ORDER BY u.ord)
FROM pg_catalog.pg_index i, pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attnum = u.attnum
WHERE i.indrelid = $1 AND i.indisprimary AND a.attrelid = i.indrelid AND u.ord <= i.indnkeyatts`, t.oid).Scan(&pk)
	if err != nil {
		return fmt.Errorf("table %q: %w", t.name, wrapErr(err))
	}
	what := fmt.Sprintf("column %q has", columns[0])
	if len(columns) > 1 {
		what = fmt.Sprintf("columns (%s) have", strings.Join(columns, ", "))
	}
	msg := fmt.Sprintf("table %q: %s no primary key or unique index of their own (INSERT ... ON CONFLICT (%s) needs one)",
		t.name, what, t.keyIdents(""))
	if len(columns) == 1 {
		msg = strings.Replace(msg, "of their own", "of its own", 1)
	}
	switch {
	case len(pk) == 1:
		msg += fmt.Sprintf("; its primary key is %s: set key_column: %s", pk[0], pk[0])
	case len(pk) > 1:
		msg += fmt.Sprintf("; its primary key is (%s): set key_columns: [%s] (keys then name a row as prefix%s)",
			strings.Join(pk, ", "), strings.Join(pk, ", "), "<"+strings.Join(pk, ">"+t.sep+"<")+">")
	}
	return errors.New(msg)
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
	keyEq := t.keyMatch("", "$1")
	t.sqlKeyCheck = "SELECT " + strings.Join(t.keyCasts("$1"), ", ")
	t.sqlCanon = make([]string, len(t.keys))
	for i, ci := range t.keys {
		t.sqlCanon[i] = canonSQL(&t.cols[ci])
	}
	t.sqlLoadJSON = "SELECT pg_catalog.row_to_json(respite_r.*)::text FROM " + t.ident +
		" AS respite_r WHERE " + t.keyMatch("respite_r.", "$1")
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

// KeyColumn is the key column's name (the first of a composite key).
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

// columnsOf checks that every name is a column and returns the column
// indexes, deduplicated, in table order, without the key columns, and
// where key columns are among the names (keyAt: key column index to the
// position of its last occurrence in names).
func (t *Table) columnsOf(names []string) (cols []int, keyAt map[int]int, err error) {
	seen := make([]bool, len(t.cols))
	keyAt = map[int]int{}
	for i, n := range names {
		ci, ok := t.byNm[n]
		if !ok {
			return nil, nil, &FieldError{Table: t.name, Field: n}
		}
		if t.isKey(ci) {
			keyAt[ci] = i
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
