package backend

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Writing one row: the partial upsert every write is built on (writeSQL),
// the writes of the three formats (WriteJSON, WriteFields, WriteValue),
// ClearFields and Delete, and the SQL pieces flush.go shares (upsertTail,
// setList).

// writeKey is the check before a write: inside a transaction a key that
// cannot be cast is refused without touching the transaction.
func (t *Table) writeKey(ctx context.Context, q Querier, key string) error {
	if _, ok := t.keyParts(key); !ok {
		return t.keyError(key, nil) // a composite key with another number of parts
	}
	if !inTx(q) {
		return nil
	}
	return t.CheckKey(ctx, key)
}

// writeErr maps a write's error: a data exception is a *KeyError if the
// key is what cannot be cast, otherwise (a bad value) a *DBError.
func (t *Table) writeErr(ctx context.Context, key string, err error) error {
	if isDataException(err) {
		ok, cerr := t.keyCastable(ctx, key)
		if cerr == nil && !ok {
			return t.keyError(key, err)
		}
	}
	return wrapErr(err)
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
	return " ON CONFLICT (" + t.keyIdents("") + ") DO UPDATE SET " + strings.Join(set, ", ")
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
	keyEq := t.keyMatch("respite_t.", "$1")
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
		b.WriteString(" WHERE " + keyEq + cond + "),\n")
	} else {
		b.WriteString("UPDATE " + t.ident + " AS respite_t SET " + t.setList(cols, expr, nil))
		if from != "" {
			b.WriteString(" FROM " + from)
		}
		b.WriteString(" WHERE " + keyEq + cond + " RETURNING 1),\n")
	}
	b.WriteString("respite_i AS (INSERT INTO " + t.ident + " (" + t.keyIdents(""))
	for _, ci := range cols {
		b.WriteString(", " + t.cols[ci].ident)
	}
	b.WriteString(") SELECT " + strings.Join(t.keyCasts("$1"), ", "))
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
		return &FieldError{Table: t.name, Field: strings.Join(t.KeyColumns(), ", "),
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
	return t.do(ctx, q, "write", func(ctx context.Context) error {
		return t.writeJSON(ctx, q, key, obj)
	})
}

func (t *Table) writeJSON(ctx context.Context, q Querier, key string, obj []byte) error {
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
	var conds []string
	casts := t.keyCasts("$1")
	for ci := range keyAt {
		conds = append(conds, "respite_r."+t.cols[ci].ident+" = "+casts[t.keyPartOf(ci)])
	}
	sort.Strings(conds)
	cond := strings.Join(conds, " AND ")
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
	return t.do(ctx, q, "write", func(ctx context.Context) error {
		return t.writeFields(ctx, q, key, fields)
	})
}

func (t *Table) writeFields(ctx context.Context, q Querier, key string, fields []Field) error {
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
	args := []any{key}
	param := map[int]int{}
	for _, ci := range cols {
		args = append(args, last[ci])
		param[ci] = len(args)
	}
	var conds []string
	casts := t.keyCasts("$1")
	for _, ci := range t.keys {
		at, ok := keyAt[ci]
		if !ok {
			continue
		}
		args = append(args, fields[at].Value)
		conds = append(conds, fmt.Sprintf("$%d::text::%s = %s", len(args), t.cols[ci].typ, casts[t.keyPartOf(ci)]))
	}
	cond := strings.Join(conds, " AND ")
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
func (t *Table) ClearFields(ctx context.Context, q Querier, key string, names []string) (n int64, err error) {
	err = t.do(ctx, q, "write", func(ctx context.Context) error {
		n, err = t.clearFields(ctx, q, key, names)
		return err
	})
	return n, err
}

func (t *Table) clearFields(ctx context.Context, q Querier, key string, names []string) (int64, error) {
	cols, keyAt, err := t.columnsOf(names)
	if err != nil {
		return 0, err
	}
	for ci := range keyAt {
		return 0, &FieldError{Table: t.name, Field: t.cols[ci].name, Reason: "is the key column and cannot be removed"}
	}
	if len(cols) == 0 {
		return 0, nil
	}
	if err := t.writeKey(ctx, q, key); err != nil {
		return 0, err
	}
	var cnt, set []string
	for _, ci := range cols {
		c := t.cols[ci].ident
		cnt = append(cnt, "("+c+" IS NOT NULL)::int")
		set = append(set, c+" = NULL")
	}
	var sel []string
	for i, ci := range t.keys {
		sel = append(sel, t.cols[ci].ident+" AS respite_k"+strconv.Itoa(i))
	}
	sql := "WITH respite_o AS (SELECT " + strings.Join(sel, ", ") + ", " + strings.Join(cnt, " + ") + " AS n FROM " + t.ident +
		" WHERE " + t.keyMatch("", "$1") + " FOR UPDATE) UPDATE " + t.ident + " AS respite_t SET " +
		strings.Join(set, ", ") + " FROM respite_o WHERE " + t.joinNamed("respite_t.", "respite_o.", "respite_k") + " AND respite_o.n > 0 RETURNING respite_o.n"
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
	return t.do(ctx, q, "write", func(ctx context.Context) error {
		return t.writeValue(ctx, q, key, value)
	})
}

func (t *Table) writeValue(ctx context.Context, q Querier, key, value string) error {
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
func (t *Table) Delete(ctx context.Context, q Querier, key string) (found bool, err error) {
	err = t.do(ctx, q, "delete", func(ctx context.Context) error {
		found, err = t.delete(ctx, q, key)
		return err
	})
	return found, err
}

func (t *Table) delete(ctx context.Context, q Querier, key string) (bool, error) {
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
