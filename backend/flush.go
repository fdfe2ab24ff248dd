package backend

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Flushed reports whether any key of route was ever flushed (a row of
// respite_versions): a route whose write-back queue is missing from Redis
// although it flushed before has lost its queue (policy's flusher says so).
func (db *DB) Flushed(ctx context.Context, route string) (bool, error) {
	var found bool
	err := db.flush.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+metaTable+` WHERE route = $1)`, route).Scan(&found)
	return found, wrapErr(err)
}

// Entry is one queued write-back write.
type Entry struct {
	Key string
	// Value is the new value (Flush: the value column's text; FlushJSON and
	// FlushFields: a JSON object of columns); nil deletes the row.
	Value *string
	// Version increases monotonically per route (e.g. derived from the
	// Redis stream id). Within one call, entries for a key apply in Version
	// order (equal versions: slice order); across calls, a key is only
	// written when its Version is higher than the highest already flushed.
	Version int64
}

// folded is the result of all of one key's entries in a batch.
type folded struct {
	key     string
	version int64
	del     bool // the last write deletes the row
	// replace: the row was deleted earlier in the batch and then written
	// again, so it is recreated: the columns not written get their
	// defaults, as if DELETE and INSERT had run one after the other.
	replace bool
	value   string                  // Flush: the last value
	fields  map[int]json.RawMessage // FlushJSON: merged members by column
}

// fold coalesces entries per key in (Version, slice position) order.
// merge applies one non-nil value to the state.
func fold(entries []Entry, merge func(f *folded, v string) error) ([]*folded, error) {
	idx := make([]int, len(entries))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ea, eb := &entries[idx[a]], &entries[idx[b]]
		if ea.Key != eb.Key {
			return ea.Key < eb.Key
		}
		return ea.Version < eb.Version
	})
	var out []*folded
	var cur *folded
	for _, i := range idx {
		e := &entries[i]
		if cur == nil || cur.key != e.Key {
			cur = &folded{key: e.Key}
			out = append(out, cur)
		}
		cur.version = e.Version // sorted: the last is the highest
		if e.Value == nil {
			cur.del, cur.replace = true, true
			cur.value, cur.fields = "", nil
			continue
		}
		cur.del = false
		if err := merge(cur, *e.Value); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Flush applies a batch of a value-format route in ONE statement on the
// flush pool and returns how many rows it wrote (upserted or deleted).
//
// Entries are coalesced per key first (highest Version wins; a set-based
// upsert that met a key twice would fail with SQLSTATE 21000), in Go and
// again in SQL on the cast key (so "5" and "05" are one integer key). A
// key deleted and then set again in the batch is recreated: its other
// columns get their defaults. The side table respite_versions (see
// SetupSQL) is updated in the same statement with a data-modifying CTE,
// and only keys whose version advanced are applied, so an older batch
// flushed after a newer one (a retry, a DLQ replay) changes nothing, and a
// replayed batch is idempotent. route names the version rows.
//
// One statement means all or nothing: a key or value that cannot be cast,
// or a constraint violation, fails the whole batch (*KeyError is not
// reported here; the error is the *DBError). Check keys and values when
// they are queued (CheckKey, CheckValue); a caller that still meets a
// failing batch can bisect it. Concurrent flushes of overlapping keys can
// deadlock (SQLSTATE 40P01); PostgreSQL aborts one and the retry succeeds.
//
//	WITH respite_in AS (SELECT DISTINCT ON (s.kc) s.kc::text AS kt, s.* FROM (SELECT x.k::text::KT AS kc, x.v, x.ver, x.rep
//	    FROM ROWS FROM (unnest($2::text[]), unnest($3::text[]), unnest($4::int8[]), unnest($5::bool[])) AS x(k, v, ver, rep)) s
//	    ORDER BY s.kc, s.ver DESC),
//	  respite_adv AS (INSERT INTO respite_versions AS rv (route, key, version) SELECT $1::text, kt, ver FROM respite_in ORDER BY kt
//	    ON CONFLICT (route, key) DO UPDATE SET version = EXCLUDED.version WHERE rv.version < EXCLUDED.version RETURNING rv.key),
//	  respite_go AS (SELECT i.* FROM respite_in i JOIN respite_adv a ON a.key = i.kt),
//	  respite_u0 AS (UPDATE T AS t SET V = g.v::text::VT FROM respite_go g WHERE t.K = g.kc AND g.v IS NOT NULL AND NOT g.rep
//	    RETURNING t.K AS respite_k),
//	  respite_i0 AS (INSERT INTO T (K, V) SELECT g.kc, g.v::text::VT FROM respite_go g WHERE g.v IS NOT NULL AND NOT g.rep
//	    AND NOT EXISTS (SELECT 1 FROM respite_u0 u WHERE u.respite_k = g.kc) ORDER BY g.kc
//	    ON CONFLICT (K) DO UPDATE SET V = EXCLUDED.V RETURNING 1),
//	  [respite_u1, respite_i1: the same for g.rep, also setting the other columns = DEFAULT: only if the batch recreates a key]
//	  [respite_d AS (DELETE FROM T AS t USING respite_go g WHERE g.v IS NULL AND t.K = g.kc RETURNING 1): only if it deletes]
//	SELECT (SELECT count(*) FROM respite_u0) + (SELECT count(*) FROM respite_i0) [+ ...]
//
// (UPDATE then INSERT rather than the upsert alone: see writeSQL.)
func (t *Table) Flush(ctx context.Context, route string, entries []Entry) (n int, err error) {
	err = t.do(ctx, t.db.flush, "flush", func(ctx context.Context) error {
		n, err = t.flush(ctx, route, entries)
		return err
	})
	return n, err
}

func (t *Table) flush(ctx context.Context, route string, entries []Entry) (int, error) {
	if t.val < 0 {
		return 0, ErrNoValueColumn
	}
	if len(entries) == 0 {
		return 0, nil
	}
	if err := t.entryKeys(entries); err != nil {
		return 0, err
	}
	fs, err := fold(entries, func(f *folded, v string) error { f.value = v; return nil })
	if err != nil {
		return 0, err
	}
	keys := make([]string, len(fs))
	vals := make([]*string, len(fs))
	vers := make([]int64, len(fs))
	reps := make([]bool, len(fs))
	variant := 0
	for i, f := range fs {
		keys[i], vers[i], reps[i] = f.key, f.version, f.replace
		if f.del {
			variant |= 1
		} else {
			v := f.value
			vals[i] = &v
			if f.replace {
				variant |= 2
			}
		}
	}
	var n int
	if err := t.db.flush.QueryRow(ctx, t.sqlFlushValue[variant], route, keys, vals, vers, reps).Scan(&n); err != nil {
		return 0, wrapErr(err)
	}
	return n, nil
}

// entryKeys refuses a batch with a composite key of another number of
// parts, which split_part would read as another row.
func (t *Table) entryKeys(entries []Entry) error {
	for _, e := range entries {
		if _, ok := t.keyParts(e.Key); !ok {
			return t.keyError(e.Key, nil)
		}
	}
	return nil
}

// flushValueSQL builds Flush's statement for a batch with (rep) or
// without keys that are recreated and with (del) or without deletes: the
// CTEs a batch cannot use are left out (fixed per table: four texts).
func (t *Table) flushValueSQL(rep, del bool) string {
	in := "SELECT " + t.castsAs("x.k", "kc") + ", x.v, x.ver, x.rep FROM ROWS FROM (" +
		"pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::int8[]), pg_catalog.unnest($5::bool[])" +
		") AS x(k, v, ver, rep)"
	cols := []int{t.val}
	groups := []flushGroup{{cols: cols, where: "respite_g.v IS NOT NULL AND NOT respite_g.rep"}}
	if rep {
		groups = append(groups, flushGroup{cols: cols, where: "respite_g.v IS NOT NULL AND respite_g.rep", replace: true})
	}
	return t.flushSQL(in, "v", groups, func(int) string { return "respite_g.v::text::" + t.cols[t.val].typ }, "", del)
}

// flushGroup is one upsert of a flush: the keys selected by where, all
// writing the same columns.
type flushGroup struct {
	cols    []int
	where   string
	replace bool // the other (non-generated) columns are reset to DEFAULT
}

// flushSQL assembles a flush statement. in yields rows (kc, payload, ver,
// ...) with kc the cast key; payload is the column that is NULL for
// deletes; each group becomes an UPDATE of the existing rows and an INSERT
// ... ON CONFLICT of the others (see writeSQL for why not the upsert
// alone); groups cover disjoint keys, so no row is affected twice. expr
// gives a column's new value; from is extra FROM text after
// "respite_go respite_g"; del adds the DELETE.
func (t *Table) flushSQL(in, payload string, groups []flushGroup, expr func(ci int) string, from string, del bool) string {
	var b strings.Builder
	b.WriteString("WITH respite_in AS (SELECT DISTINCT ON (" + t.named("s.", "kc") + ") " + t.textOfNamed("s.", "kc") + " AS kt, s.* FROM (" + in +
		") s ORDER BY " + t.named("s.", "kc") + ", s.ver DESC),\n")
	b.WriteString("respite_adv AS (INSERT INTO " + metaTable + " AS respite_rv (route, key, version)" +
		" SELECT $1::text, kt, ver FROM respite_in ORDER BY kt" +
		" ON CONFLICT (route, key) DO UPDATE SET version = EXCLUDED.version" +
		" WHERE respite_rv.version < EXCLUDED.version RETURNING respite_rv.key),\n")
	b.WriteString("respite_go AS (SELECT i.* FROM respite_in i JOIN respite_adv a ON a.key = i.kt)")
	var counts []string
	for gi, g := range groups {
		var defaults []int
		if g.replace {
			written := map[int]bool{}
			for _, ci := range t.keys {
				written[ci] = true
			}
			for _, ci := range g.cols {
				written[ci] = true
			}
			for ci, c := range t.cols {
				if !written[ci] && !c.generated {
					defaults = append(defaults, ci)
				}
			}
		}
		u, i := "respite_u"+strconv.Itoa(gi), "respite_i"+strconv.Itoa(gi)
		counts = append(counts, "(SELECT count(*) FROM "+u+")", "(SELECT count(*) FROM "+i+")")
		b.WriteString(",\n" + u + " AS (")
		if len(g.cols) == 0 && len(defaults) == 0 {
			b.WriteString("SELECT " + t.keyAs("respite_t.", "respite_k") + " FROM " + t.ident + " AS respite_t, respite_go respite_g" +
				" WHERE " + t.joinNamed("respite_t.", "respite_g.", "kc") + " AND " + g.where + ")")
		} else {
			b.WriteString("UPDATE " + t.ident + " AS respite_t SET " + t.setList(g.cols, expr, defaults) +
				" FROM respite_go respite_g" + from + " WHERE " + t.joinNamed("respite_t.", "respite_g.", "kc") + " AND " + g.where +
				" RETURNING " + t.keyAs("respite_t.", "respite_k") + ")")
		}
		b.WriteString(",\n" + i + " AS (INSERT INTO " + t.ident + " (" + t.keyIdents(""))
		for _, ci := range g.cols {
			b.WriteString(", " + t.cols[ci].ident)
		}
		b.WriteString(") SELECT " + t.named("respite_g.", "kc"))
		for _, ci := range g.cols {
			b.WriteString(", " + expr(ci))
		}
		b.WriteString(" FROM respite_go respite_g" + from + " WHERE " + g.where +
			" AND NOT EXISTS (SELECT 1 FROM " + u + " WHERE " + t.sameNamed(u+".", "respite_k", "respite_g.", "kc") + ") ORDER BY " + t.named("respite_g.", "kc"))
		b.WriteString(t.upsertTail(g.cols, defaults...) + " RETURNING 1)")
	}
	if del {
		b.WriteString(",\nrespite_d AS (DELETE FROM " + t.ident + " AS respite_t USING respite_go respite_g WHERE respite_g." + payload +
			" IS NULL AND " + t.joinNamed("respite_t.", "respite_g.", "kc") + " RETURNING 1)")
		counts = append(counts, "(SELECT count(*) FROM respite_d)")
	}
	if len(counts) == 0 {
		counts = append(counts, "0")
	}
	b.WriteString("\nSELECT " + strings.Join(counts, " + "))
	return b.String()
}

// FlushJSON is Flush for a json-format route: each non-nil Value is a JSON
// object of columns, written as WriteJSON writes it (only the columns
// given; PostgreSQL converts with jsonb_populate_record). A key's entries
// in one batch are merged in Version order (later members override
// earlier ones; a delete discards what came before and recreates the row
// from defaults if it is written again), since each write is a partial
// update. The key column in an object is ignored (the entry's Key decides).
// Version guard and one-statement contract as Flush; the guard is per row,
// so the members of a skipped older entry are skipped even where newer
// data did not touch them.
//
// Errors before any statement: ErrInvalidJSON (wrapped) or *FieldError for
// an entry that CheckObject would refuse; the whole batch is refused.
//
// The statement is Flush's with the payload as JSON and one upsert CTE per
// distinct (set of columns, recreated) among the batch's keys:
//
//	respite_uN AS (UPDATE T AS t SET c1 = r.c1, c2 = r.c2 [, other = DEFAULT ...] FROM respite_go g
//	    CROSS JOIN LATERAL jsonb_populate_record(NULL::T, g.o) r WHERE t.K = g.kc AND g.o IS NOT NULL AND g.grp = N RETURNING t.K AS respite_k),
//	respite_iN AS (INSERT INTO T (K, c1, c2) SELECT g.kc, r.c1, r.c2 FROM respite_go g
//	    CROSS JOIN LATERAL jsonb_populate_record(NULL::T, g.o) r WHERE g.o IS NOT NULL AND g.grp = N
//	    AND NOT EXISTS (SELECT 1 FROM respite_uN u WHERE u.respite_k = g.kc) ORDER BY g.kc
//	    ON CONFLICT (K) DO UPDATE SET c1 = EXCLUDED.c1, c2 = EXCLUDED.c2 [, other = DEFAULT ...] RETURNING 1)
func (t *Table) FlushJSON(ctx context.Context, route string, entries []Entry) (n int, err error) {
	err = t.do(ctx, t.db.flush, "flush", func(ctx context.Context) error {
		n, err = t.flushJSON(ctx, route, entries)
		return err
	})
	return n, err
}

func (t *Table) flushJSON(ctx context.Context, route string, entries []Entry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	if err := t.entryKeys(entries); err != nil {
		return 0, err
	}
	fs, err := fold(entries, func(f *folded, v string) error {
		ms, err := parseObject([]byte(v))
		if err != nil {
			return fmt.Errorf("key %s: %w", quoteKey(f.key), err)
		}
		if f.fields == nil {
			f.fields = map[int]json.RawMessage{}
		}
		for _, m := range ms {
			ci, ok := t.byNm[m.name]
			if !ok {
				return &FieldError{Table: t.name, Field: m.name}
			}
			if !t.isKey(ci) {
				f.fields[ci] = m.raw
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	del := false
	groupOf := map[string]int32{}
	var groups []flushGroup
	keys := make([]string, len(fs))
	objs := make([]*string, len(fs))
	vers := make([]int64, len(fs))
	grps := make([]int32, len(fs))
	var sig strings.Builder
	for i, f := range fs {
		keys[i], vers[i], grps[i] = f.key, f.version, -1
		if f.del {
			del = true
			continue
		}
		cols := make([]int, 0, len(f.fields))
		for ci := range f.fields {
			cols = append(cols, ci)
		}
		sort.Ints(cols)
		sig.Reset()
		fmt.Fprint(&sig, f.replace, cols)
		g, ok := groupOf[sig.String()]
		if !ok {
			g = int32(len(groups))
			groupOf[sig.String()] = g
			groups = append(groups, flushGroup{cols: cols, replace: f.replace,
				where: "respite_g.o IS NOT NULL AND respite_g.grp = " + strconv.Itoa(int(g))})
		}
		grps[i] = g
		var ob strings.Builder
		ob.WriteByte('{')
		for j, ci := range cols {
			if j > 0 {
				ob.WriteByte(',')
			}
			name, _ := json.Marshal(t.cols[ci].name)
			ob.Write(name)
			ob.WriteByte(':')
			ob.Write(f.fields[ci])
		}
		ob.WriteByte('}')
		s := ob.String()
		objs[i] = &s
	}
	in := "SELECT " + t.castsAs("x.k", "kc") + ", x.o::jsonb AS o, x.ver, x.grp FROM ROWS FROM (" +
		"pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::int8[]), pg_catalog.unnest($5::int4[])" +
		") AS x(k, o, ver, grp)"
	sql := t.flushSQL(in, "o", groups,
		func(ci int) string { return "respite_r." + t.cols[ci].ident },
		" CROSS JOIN LATERAL pg_catalog.jsonb_populate_record(NULL::"+t.ident+", respite_g.o) AS respite_r", del)
	var n int
	if err := t.db.flush.QueryRow(ctx, sql, route, keys, objs, vers, grps).Scan(&n); err != nil {
		return 0, wrapErr(err)
	}
	return n, nil
}

// FlushFields is FlushJSON for a hash-format route: each non-nil Value is
// a JSON object of the fields written (HSET) with null for fields removed
// (HDEL); nil deletes the row (DEL).
func (t *Table) FlushFields(ctx context.Context, route string, entries []Entry) (int, error) {
	return t.FlushJSON(ctx, route, entries)
}
