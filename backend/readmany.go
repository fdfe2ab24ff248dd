package backend

import (
	"context"
	"strconv"
	"strings"
)

// Reading many rows in one statement: LoadMany, for the misses of one
// read over many keys (a routed MGET). The keys go as one text array,
// joined to the table on the key's cast:
//
//	SELECT k.k, <row> FROM unnest($1::text[]) AS k(k) JOIN T AS r ON r.K = k.k::text::KT
//
// so each row comes back beside the very text that named it, and a key
// with no row simply has none.

// Loaded is one row as LoadMany read it; which field is set depends on
// the format asked for (LoadJSON, LoadFields or LoadValue's result).
type Loaded struct {
	JSON   []byte
	Fields []Field
	Value  string
}

// Format is which of Loaded's fields LoadMany fills.
type Format int

const (
	AsJSON   Format = iota // Loaded.JSON, as LoadJSON
	AsFields               // Loaded.Fields, as LoadFields
	AsValue                // Loaded.Value, as LoadValue
)

// LoadMany returns the rows of keys (each in its canonical form,
// CanonicalKey, as callers of the one-row loads pass them too), by key;
// a key twice is read once. A key without a row (or of
// another number of parts, or one that cannot be cast) is absent from the
// map. One statement reads them all. Keys Go knows cannot be cast are
// left out first (mayName); if the cast of one it could not judge fails
// the statement (a data exception), each key is read on its own, so that
// key costs the others nothing but the retry. Callers keep batches to a
// few hundred keys (policy: loadChunk), which bounds that retry.
func (t *Table) LoadMany(ctx context.Context, q Querier, f Format, keys []string) (map[string]Loaded, error) {
	if f == AsValue && t.val < 0 {
		return nil, ErrNoValueColumn
	}
	ask := make([]string, 0, len(keys))
	for _, k := range keys {
		if t.mayName(k) {
			ask = append(ask, k)
		}
	}
	out := make(map[string]Loaded, len(ask))
	if len(ask) == 0 {
		return out, nil
	}
	err := t.do(ctx, q, "load", func(ctx context.Context) error {
		return t.loadMany(ctx, q, f, ask, out)
	})
	if err == nil || !isDataException(err) {
		return out, err
	}
	clear(out)
	for _, k := range ask {
		var l Loaded
		var found bool
		switch f {
		case AsJSON:
			l.JSON, found, err = t.LoadJSON(ctx, q, k)
		case AsFields:
			l.Fields, found, err = t.LoadFields(ctx, q, k)
		default:
			l.Value, found, err = t.LoadValue(ctx, q, k)
		}
		if err != nil {
			return nil, err
		}
		if found {
			out[k] = l
		}
	}
	return out, nil
}

// mayName reports whether key may name a row: it has the key's number of
// parts and Go cannot tell that a part fails its column's cast (an
// integer out of range, NUL in text), which would fail the statement for
// every key (vouch).
func (t *Table) mayName(key string) bool {
	parts, ok := t.keyParts(key)
	if !ok {
		return false
	}
	for i, ci := range t.keys {
		c := &t.cols[ci]
		if vouch(c, parts[i]) < 0 || outOfRange(c, parts[i]) {
			return false
		}
	}
	return true
}

// outOfRange reports whether s is a decimal integer (the canonical text
// of an integer key) too large for c's integer type: its cast fails.
func outOfRange(c *column, s string) bool {
	bits := intBits(c.kind)
	if bits == 0 {
		return false
	}
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return false
	}
	_, err := strconv.ParseInt(s, 10, bits)
	return err != nil
}

func (t *Table) loadMany(ctx context.Context, q Querier, f Format, keys []string, out map[string]Loaded) error {
	rows, err := q.Query(ctx, t.loadManySQL(f), keys)
	if err != nil {
		return wrapErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var l Loaded
		switch f {
		case AsJSON:
			var s string
			err = rows.Scan(&k, &s)
			l.JSON = []byte(s)
		case AsFields:
			vals := make([]*string, len(t.cols))
			dest := make([]any, 1+len(t.cols))
			dest[0] = &k
			for i := range vals {
				dest[1+i] = &vals[i]
			}
			err = rows.Scan(dest...)
			l.Fields = make([]Field, 0, len(t.cols))
			for i, v := range vals {
				if v != nil {
					l.Fields = append(l.Fields, Field{Name: t.cols[i].name, Value: *v})
				}
			}
		default:
			var v *string
			err = rows.Scan(&k, &v)
			if v != nil {
				l.Value = *v
			}
		}
		if err != nil {
			return wrapErr(err)
		}
		out[k] = l
	}
	return wrapErr(rows.Err())
}

// loadManySQL is LoadMany's statement for f.
func (t *Table) loadManySQL(f Format) string {
	var sel string
	switch f {
	case AsJSON:
		sel = "pg_catalog.row_to_json(respite_r.*)::text"
	case AsFields:
		cols := make([]string, len(t.cols))
		for i, c := range t.cols {
			cols[i] = "respite_r." + c.ident + "::text"
		}
		sel = strings.Join(cols, ", ")
	default:
		sel = "respite_r." + t.cols[t.val].ident + "::text"
	}
	return "SELECT respite_k.k, " + sel + " FROM pg_catalog.unnest($1::text[]) AS respite_k(k) JOIN " +
		t.ident + " AS respite_r ON " + t.keyMatch("respite_r.", "respite_k.k")
}
