package backend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

func statementCalls(t testing.TB, like string) int {
	t.Helper()
	out := query(t, "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query ILIKE '%"+like+"%'")
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatal(out, err)
	}
	return n
}

func TestFlushValue(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM page_views; DELETE FROM respite_versions WHERE route = 'pv'`)
	pv := describe(t, "page_views", "page_id", "views")

	// 10,000 entries over 100 keys, each key written 100 times, out of
	// order within the batch; a few deletes that are not the last write.
	var entries []Entry
	want := map[string]string{}
	for i := 0; i < 10000; i++ {
		key := "page" + strconv.Itoa(i%100)
		ver := int64(10000 - i) // the first entry of each key is its newest
		var v *string
		if i%7 == 3 && i >= 100 {
			v = nil
		} else {
			v = sp(strconv.Itoa(i))
		}
		entries = append(entries, Entry{Key: key, Value: v, Version: ver})
		if i < 100 {
			want[key] = strconv.Itoa(i)
		}
	}
	before := statementCalls(t, "respite_versions%page_views")
	n, err := pv.Flush(ctx, "pv", entries)
	if err != nil || n != 100 {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	if got := statementCalls(t, "respite_versions%page_views") - before; got != 1 {
		t.Errorf("Flush ran %d statements, want 1", got)
	}
	got := map[string]string{}
	for _, line := range strings.Split(row(t, "SELECT page_id, views FROM page_views"), "\n") {
		k, v, _ := strings.Cut(line, "|")
		got[k] = v
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("page_views =\n%v\nwant\n%v", got, want)
	}

	// An older batch flushed after a newer one changes nothing; replaying
	// the same batch changes nothing.
	if n, err := pv.Flush(ctx, "pv", []Entry{{"page1", sp("-5"), 9000}, {"page2", nil, 5}}); n != 0 || err != nil {
		t.Errorf("older batch: %d, %v", n, err)
	}
	if n, err := pv.Flush(ctx, "pv", entries); n != 0 || err != nil {
		t.Errorf("replayed batch: %d, %v", n, err)
	}
	if got := row(t, "SELECT views FROM page_views WHERE page_id = 'page1'"); got != "1" {
		t.Errorf("page1 = %s after older batch", got)
	}
	// Another route's versions are separate.
	if n, err := pv.Flush(ctx, "pv2", []Entry{{"page1", sp("11"), 1}}); n != 1 || err != nil {
		t.Errorf("other route: %d, %v", n, err)
	}

	// SET, DELETE, SET in one batch: the last SET wins. SET, SET, DELETE: deleted.
	n, err = pv.Flush(ctx, "pv", []Entry{
		{"page3", sp("1"), 20001}, {"page3", nil, 20002}, {"page3", sp("3"), 20003},
		{"page4", sp("1"), 20001}, {"page4", sp("2"), 20002}, {"page4", nil, 20003},
		{"fresh", nil, 20004},
	})
	if err != nil || n != 2 {
		t.Errorf("SET/DEL/SET batch: %d, %v", n, err)
	}
	if got := row(t, "SELECT coalesce((SELECT views::text FROM page_views WHERE page_id = 'page3'), 'none') || ',' || coalesce((SELECT views::text FROM page_views WHERE page_id = 'page4'), 'none')"); got != "3,none" {
		t.Errorf("page3,page4 = %s", got)
	}
	// A deleted key stays deleted against older SETs.
	if n, err := pv.Flush(ctx, "pv", []Entry{{"page4", sp("9"), 20000}}); n != 0 || err != nil {
		t.Errorf("older SET after DEL: %d, %v", n, err)
	}

	// A bad value fails the whole batch, changing nothing.
	var dbe *DBError
	if _, err := pv.Flush(ctx, "pv", []Entry{{"page5", sp("6"), 30000}, {"page6", sp("x"), 30001}}); !errors.As(err, &dbe) {
		t.Errorf("bad value batch: %v", err)
	}
	if got := row(t, "SELECT views FROM page_views WHERE page_id = 'page5'"); got != "5" {
		t.Errorf("page5 = %s after failed batch", got)
	}
	if n, err := pv.Flush(ctx, "pv", nil); n != 0 || err != nil {
		t.Errorf("empty flush: %d, %v", n, err)
	}
}

func TestFlushRecreate(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM products; INSERT INTO products VALUES ('w', 5, 'widget'), ('g', 1, 'gadget')`)
	stock := describe(t, "products", "sku", "stock")
	// DEL then SET in one batch recreates the row: label back to its default.
	n, err := stock.Flush(ctx, "recreate", []Entry{{"w", nil, 1}, {"w", sp("7"), 2}, {"g", sp("2"), 3}})
	if err != nil || n != 2 {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	if got := row(t, "SELECT string_agg(sku || ':' || stock || ':' || label, ',' ORDER BY sku) FROM products"); got != "g:2:gadget,w:7:unnamed" {
		t.Errorf("products = %s", got)
	}
	// Keys equal after the cast are one key (no SQLSTATE 21000).
	counters := describe(t, "counters", "id", "n")
	n, err = counters.Flush(ctx, "counters", []Entry{{"5", sp("1"), 1}, {"05", sp("2"), 2}, {" 5", sp("3"), 3}})
	if err != nil || n != 1 {
		t.Fatalf("Flush equal keys = %d, %v", n, err)
	}
	if got := row(t, "SELECT id || ':' || n FROM counters"); got != "5:3" {
		t.Errorf("counters = %s", got)
	}
	var dbe *DBError
	if _, err := counters.Flush(ctx, "counters", []Entry{{"abc", sp("1"), 10}}); !errors.As(err, &dbe) || dbe.Code() != "22P02" {
		t.Errorf("uncastable key in flush: %v", err)
	}
}

func TestFlushJSON(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM users; INSERT INTO users VALUES (1, 'Ann', 'ann@x', 30), (2, 'Bob', 'bob@x', 40), (3, 'Cy', NULL, 50)`)
	users := describe(t, "users", "id", "")
	before := statementCalls(t, "respite_versions%jsonb_populate_record")
	n, err := users.FlushJSON(ctx, "users", []Entry{
		{"1", sp(`{"age": 31}`), 1},
		{"1", sp(`{"email": "ann@y", "id": 1}`), 2}, // merged with the previous write
		{"2", nil, 3},
		{"3", nil, 4},
		{"3", sp(`{"name": "Cy2"}`), 5}, // recreated: email and age to defaults (NULL)
		{"4", sp(`{"name": "Dee", "age": "20"}`), 6},
		{"5", sp(`{}`), 7}, // would need a name: see below
	})
	var dbe *DBError
	if !errors.As(err, &dbe) || dbe.Code() != "23502" {
		t.Fatalf("FlushJSON with a NOT NULL violation = %d, %v", n, err)
	}
	n, err = users.FlushJSON(ctx, "users", []Entry{
		{"1", sp(`{"age": 31}`), 1},
		{"1", sp(`{"email": "ann@y", "id": 1}`), 2},
		{"2", nil, 3},
		{"3", nil, 4},
		{"3", sp(`{"name": "Cy2"}`), 5},
		{"4", sp(`{"name": "Dee", "age": "20"}`), 6},
		{"1", sp(`{"name": "Ann2", "age": null}`), 8},
	})
	if err != nil || n != 4 {
		t.Fatalf("FlushJSON = %d, %v", n, err)
	}
	// pg_stat_statements counts completed statements: the failed one is not.
	if got := statementCalls(t, "respite_versions%jsonb_populate_record") - before; got != 1 {
		t.Errorf("FlushJSON ran %d statements, want 1", got)
	}
	if got := row(t, "SELECT * FROM users ORDER BY id"); got != "1|Ann2|ann@y|\n3|Cy2||\n4|Dee||20" {
		t.Errorf("users =\n%s", got)
	}
	// Older entries are refused per row.
	if n, err := users.FlushFields(ctx, "users", []Entry{{"1", sp(`{"age": 99}`), 7}, {"4", sp(`{"age": 21}`), 9}}); n != 1 || err != nil {
		t.Errorf("FlushFields = %d, %v", n, err)
	}
	if got := row(t, "SELECT coalesce(age::text, 'NULL') FROM users WHERE id IN (1, 4) ORDER BY id"); got != "NULL\n21" {
		t.Errorf("ages = %s", got)
	}
	var fe *FieldError
	if _, err := users.FlushJSON(ctx, "users", []Entry{{"1", sp(`{"nickname": 1}`), 10}}); !errors.As(err, &fe) {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := users.FlushJSON(ctx, "users", []Entry{{"1", sp(`[1]`), 10}}); !errors.Is(err, ErrInvalidJSON) {
		t.Errorf("invalid JSON: %v", err)
	}
	if err := users.CheckObject([]byte(`{"nickname": 1}`)); !errors.As(err, &fe) {
		t.Errorf("CheckObject: %v", err)
	}
}

func benchFlush(b *testing.B, size int) {
	ctx := context.Background()
	if err := pg.Exec(`DELETE FROM page_views; DELETE FROM respite_versions WHERE route LIKE 'bench%'`); err != nil {
		b.Fatal(err)
	}
	pv := describe(b, "page_views", "page_id", "views")
	route := fmt.Sprintf("bench%d-%d", size, time.Now().UnixNano())
	keys := make([]string, size)
	for j := range keys {
		keys[j] = "bench-page-" + strconv.Itoa(j)
	}
	entries := make([]Entry, size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range entries {
			entries[j] = Entry{Key: keys[j], Value: sp(strconv.Itoa(i)), Version: int64(i + 1)}
		}
		n, err := pv.Flush(ctx, route, entries)
		if err != nil || n != size {
			b.Fatal(n, err)
		}
	}
}

func BenchmarkFlush100(b *testing.B)   { benchFlush(b, 100) }
func BenchmarkFlush10000(b *testing.B) { benchFlush(b, 10000) }
