package backend

import (
	"context"
	"strconv"
	"strings"
)

// A route's key names one row by one column (key_column) or by several
// (key_columns, a composite primary key): the part of the Redis key after
// the prefix is then the columns' values in order, joined by the route's
// separator ("42:1001" is tenant_id 42, id 1001 with ":"). Each part is
// its column's canonical text (keys.go), and a key with another number
// of parts names no row. In SQL the key stays one text parameter ($1, or
// an element of a text array in a flush), split with split_part; Go
// checks the number of parts before any statement runs, so a part can
// never absorb a separator.

// Key is how a route's keys name rows: the key columns in key order and
// the separator between their values (unused for one column).
type Key struct {
	Columns   []string
	Separator string
}

// composite reports whether the key has several columns.
func (t *Table) composite() bool { return len(t.keys) > 1 }

// keyParts splits key into one text per key column; ok is false when it
// has another number of parts.
func (t *Table) keyParts(key string) (parts []string, ok bool) {
	if !t.composite() {
		return []string{key}, true
	}
	parts = strings.Split(key, t.sep)
	return parts, len(parts) == len(t.keys)
}

// joinKey is the key of the given parts.
func (t *Table) joinKey(parts []string) string { return strings.Join(parts, t.sep) }

// sepLiteral is the separator as an SQL string literal (config allows
// only punctuation without quotes or backslashes).
func (t *Table) sepLiteral() string { return "'" + strings.ReplaceAll(t.sep, "'", "''") + "'" }

// keyCasts is, for each key column, src (an SQL text expression holding
// a whole key) cast to the column's type: src::text::KT for one column,
// split_part(src::text, sep, i)::KTi for several.
func (t *Table) keyCasts(src string) []string {
	out := make([]string, len(t.keys))
	for i, ci := range t.keys {
		c := t.cols[ci]
		if !t.composite() {
			out[i] = src + "::text::" + c.typ
		} else {
			out[i] = "pg_catalog.split_part(" + src + "::text, " + t.sepLiteral() + ", " + strconv.Itoa(i+1) + ")::" + c.typ
		}
	}
	return out
}

// keyMatch is "alias.K1 = cast1 AND alias.K2 = cast2" for src (see
// keyCasts); alias may be "" (no qualifier) or end in ".".
func (t *Table) keyMatch(alias, src string) string {
	casts := t.keyCasts(src)
	conds := make([]string, len(t.keys))
	for i, ci := range t.keys {
		conds[i] = alias + t.cols[ci].ident + " = " + casts[i]
	}
	return strings.Join(conds, " AND ")
}

// keyIdents is "alias.K1, alias.K2".
func (t *Table) keyIdents(alias string) string {
	out := make([]string, len(t.keys))
	for i, ci := range t.keys {
		out[i] = alias + t.cols[ci].ident
	}
	return strings.Join(out, ", ")
}

// named is "alias.name0, alias.name1": the key's parts as columns name0,
// name1, ... of a CTE.
func (t *Table) named(alias, name string) string {
	out := make([]string, len(t.keys))
	for i := range t.keys {
		out[i] = alias + name + strconv.Itoa(i)
	}
	return strings.Join(out, ", ")
}

// joinNamed is "left.K1 = right.name0 AND left.K2 = right.name1".
func (t *Table) joinNamed(left, right, name string) string {
	out := make([]string, len(t.keys))
	for i, ci := range t.keys {
		out[i] = left + t.cols[ci].ident + " = " + right + name + strconv.Itoa(i)
	}
	return strings.Join(out, " AND ")
}

// keyAs is "alias.K1 AS name0, alias.K2 AS name1".
func (t *Table) keyAs(alias, name string) string {
	out := make([]string, len(t.keys))
	for i, ci := range t.keys {
		out[i] = alias + t.cols[ci].ident + " AS " + name + strconv.Itoa(i)
	}
	return strings.Join(out, ", ")
}

// sameNamed is "a.x0 = b.y0 AND a.x1 = b.y1".
func (t *Table) sameNamed(a, x, b, y string) string {
	out := make([]string, len(t.keys))
	for i := range t.keys {
		n := strconv.Itoa(i)
		out[i] = a + x + n + " = " + b + y + n
	}
	return strings.Join(out, " AND ")
}

// castsAs is "cast1 AS name0, cast2 AS name1" for src.
func (t *Table) castsAs(src, name string) string {
	casts := t.keyCasts(src)
	for i := range casts {
		casts[i] += " AS " + name + strconv.Itoa(i)
	}
	return strings.Join(casts, ", ")
}

// textOfNamed is the canonical key text of the parts alias.name0, ...:
// each part's ::text, joined by the separator.
func (t *Table) textOfNamed(alias, name string) string {
	out := make([]string, len(t.keys))
	for i := range t.keys {
		out[i] = alias + name + strconv.Itoa(i) + "::text"
	}
	return strings.Join(out, " || "+t.sepLiteral()+" || ")
}

// isKey reports whether column ci is a key column.
func (t *Table) isKey(ci int) bool {
	for _, k := range t.keys {
		if k == ci {
			return true
		}
	}
	return false
}

// keyPartOf is the position in the key of key column ci.
func (t *Table) keyPartOf(ci int) int {
	for i, k := range t.keys {
		if k == ci {
			return i
		}
	}
	return -1
}

// keyCastable says whether every part of key can be cast to its column's
// type (false for a key with another number of parts): in Go where vouch
// is sure of every part, else with one statement on the load pool.
func (t *Table) keyCastable(ctx context.Context, key string) (bool, error) {
	parts, ok := t.keyParts(key)
	if !ok {
		return false, nil
	}
	sure := true
	for i, ci := range t.keys {
		switch vouch(&t.cols[ci], parts[i]) {
		case -1:
			return false, nil
		case 0:
			sure = false
		}
	}
	if sure {
		return true, nil
	}
	_, err := t.db.load.Exec(ctx, t.sqlKeyCheck, key)
	if err == nil {
		return true, nil
	}
	if isDataException(err) {
		return false, nil
	}
	return false, wrapErr(err)
}

// KeyColumns is the key columns' names, in key order.
func (t *Table) KeyColumns() []string {
	out := make([]string, len(t.keys))
	for i, ci := range t.keys {
		out[i] = t.cols[ci].name
	}
	return out
}

// Key is the table's key as its route names rows: the key columns and,
// for several, the separator.
func (t *Table) Key() Key { return Key{Columns: t.KeyColumns(), Separator: t.sep} }

// KeySeparator is the separator between the parts of a composite key.
func (t *Table) KeySeparator() string { return t.sep }
