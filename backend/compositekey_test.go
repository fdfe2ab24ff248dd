package backend

import (
	"strings"
	"testing"
)

// A table keyed on two columns (tenant_id, id) with jsonb and timestamp
// columns: every read, write, delete and flush of the three formats names
// the row by "tenant:id", canonical forms are checked part by part, keys
// with another number of parts name no row, and a key that does not match
// the primary key is refused at Describe naming the columns it needs.
func TestCompositeKey(t *testing.T) {
	ctx := ctxT(t)
	if err := pg.Exec(`CREATE TABLE orders2 (tenant_id int, id bigint, total numeric NOT NULL DEFAULT 0, meta jsonb, placed timestamptz,
PRIMARY KEY (tenant_id, id));
INSERT INTO orders2 VALUES (42, 1001, 9.5, '{"gift": true}', '2024-05-01 10:00:00+00'), (42, 1002, 1, NULL, NULL), (7, 1001, 3, NULL, NULL);`); err != nil {
		t.Fatal(err)
	}
	key := Key{Columns: []string{"tenant_id", "id"}, Separator: ":"}
	tb, err := db.DescribeKey(ctx, "orders2", key, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tb.KeyColumns(), ","); got != "tenant_id,id" {
		t.Fatalf("KeyColumns %q", got)
	}
	obj, found, err := tb.LoadJSON(ctx, db.Pool(), "42:1001")
	if err != nil || !found || string(obj) != `{"tenant_id":42,"id":1001,"total":9.5,"meta":{"gift": true},"placed":"2024-05-01T10:00:00+00:00"}` {
		t.Fatalf("LoadJSON 42:1001: %s %v %v", obj, found, err)
	}
	for _, k := range []string{"42", "42:1001:1", "1001:42", "x:1001", "42:"} {
		if _, found, err := tb.LoadJSON(ctx, db.Pool(), k); found || err != nil {
			t.Errorf("LoadJSON %q: found %v, err %v; want not found", k, found, err)
		}
	}
	for k, want := range map[string]bool{"42:1001": true, "042:1001": false, "42:01001": false, "42": false, "42:1001:": false, "-1:5": true} {
		if got := tb.CanonicalKey(k); got != want {
			t.Errorf("CanonicalKey(%q) = %v, want %v", k, got, want)
		}
	}
	if c, err := tb.CanonicalForm(ctx, "042:+1001"); err != nil || c != "42:1001" {
		t.Errorf("CanonicalForm 042:+1001: %q %v", c, err)
	}
	if _, err := tb.CanonicalForm(ctx, "42"); err == nil || !strings.Contains(err.Error(), `one value for each of the columns tenant_id, id, of types integer, bigint, in that order, separated by ":"`) {
		t.Errorf("CanonicalForm of a one-part key: %v", err)
	}
	if err := tb.CheckKey(ctx, "42:abc"); err == nil {
		t.Error("CheckKey 42:abc accepted")
	}
	if err := tb.CheckKey(ctx, "42:5"); err != nil {
		t.Errorf("CheckKey 42:5: %v", err)
	}
	// Writes: a partial upsert of a new row and an update, the key
	// columns in the object checked against the key.
	if err := tb.WriteJSON(ctx, db.Pool(), "42:1003", []byte(`{"total": 12, "meta": {"a": [1]}, "placed": "2024-06-01T00:00:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	if err := tb.WriteJSON(ctx, db.Pool(), "42:1003", []byte(`{"tenant_id": 42, "id": 1003, "total": 13}`)); err != nil {
		t.Fatal(err)
	}
	if err := tb.WriteJSON(ctx, db.Pool(), "42:1003", []byte(`{"tenant_id": 7, "total": 14}`)); err == nil {
		t.Fatal("a tenant_id other than the key's was written")
	}
	if err := tb.WriteJSON(ctx, db.Pool(), "42", []byte(`{"total": 1}`)); err == nil {
		t.Fatal("a one-part key was written")
	}
	if got, _ := pg.Query("SELECT tenant_id||'/'||id||'/'||total||'/'||(meta->'a'->>0)||'/'||placed FROM orders2 WHERE id = 1003"); got != "42/1003/13/1/2024-06-01 00:00:00+00" {
		t.Fatalf("row 42:1003 after writes: %q", got)
	}
	if err := tb.WriteFields(ctx, db.Pool(), "7:1001", []Field{{"total", "4"}, {"id", "1001"}}); err != nil {
		t.Fatal(err)
	}
	fields, found, err := tb.LoadFields(ctx, db.Pool(), "7:1001")
	if err != nil || !found || len(fields) != 3 || fields[2] != (Field{"total", "4"}) {
		t.Fatalf("LoadFields 7:1001: %v %v %v", fields, found, err)
	}
	if _, err := tb.ClearFields(ctx, db.Pool(), "7:1001", []string{"tenant_id"}); err == nil {
		t.Fatal("HDEL of a key column accepted")
	}
	if n, err := tb.ClearFields(ctx, db.Pool(), "42:1001", []string{"meta", "placed"}); err != nil || n != 2 {
		t.Fatalf("ClearFields: %d %v", n, err)
	}
	if found, err := tb.Delete(ctx, db.Pool(), "42:1002"); err != nil || !found {
		t.Fatalf("Delete 42:1002: %v %v", found, err)
	}
	if got, _ := pg.Query("SELECT count(*) FROM orders2 WHERE tenant_id = 42"); got != "2" {
		t.Fatalf("rows of tenant 42 after one delete: %s", got)
	}
	// Flushes: value and JSON batches over several rows of two tenants.
	vt, err := db.DescribeKey(ctx, "orders2", key, "total")
	if err != nil {
		t.Fatal(err)
	}
	v := func(s string) *string { return &s }
	n, err := vt.Flush(ctx, "orders2v", []Entry{{Key: "42:2000", Value: v("1"), Version: 1}, {Key: "42:2000", Value: v("2"), Version: 2},
		{Key: "7:2000", Value: v("70"), Version: 3}, {Key: "42:1003", Value: nil, Version: 4}})
	if err != nil || n != 3 {
		t.Fatalf("Flush: %d %v", n, err)
	}
	if got, _ := pg.Query("SELECT string_agg(tenant_id||':'||id||'='||total, ',' ORDER BY tenant_id, id) FROM orders2"); got != "7:1001=4,7:2000=70,42:1001=9.5,42:2000=2" {
		t.Fatalf("rows after Flush: %s", got)
	}
	if _, err := vt.Flush(ctx, "orders2v", []Entry{{Key: "42:2000:1", Value: v("1"), Version: 5}}); err == nil {
		t.Fatal("a flush of a three-part key was accepted")
	}
	n, err = tb.FlushJSON(ctx, "orders2j", []Entry{{Key: "42:2000", Value: v(`{"meta": {"b": 2}}`), Version: 1}, {Key: "9:1", Value: v(`{"total": 5}`), Version: 2}})
	if err != nil || n != 2 {
		t.Fatalf("FlushJSON: %d %v", n, err)
	}
	if got, _ := pg.Query("SELECT string_agg(tenant_id||':'||id||'='||total||coalesce(meta::text, ''), ',' ORDER BY tenant_id, id) FROM orders2 WHERE id IN (2000, 1)"); got != `7:2000=70,9:1=5,42:2000=2{"b": 2}` {
		t.Fatalf("rows after FlushJSON: %s", got)
	}
	if got, _ := pg.Query("SELECT string_agg(key, ',' ORDER BY key) FROM respite_versions WHERE route = 'orders2j'"); got != "42:2000,9:1" {
		t.Fatalf("version keys: %s", got)
	}
	// A key the primary key does not cover is refused, naming it.
	for _, tc := range []struct {
		cols []string
		want string
	}{
		{[]string{"id"}, `table "orders2": column "id" has no primary key or unique index of its own (INSERT ... ON CONFLICT ("id") needs one); its primary key is (tenant_id, id): set key_columns: [tenant_id, id] (keys then name a row as prefix<tenant_id>:<id>)`},
		{[]string{"tenant_id", "total"}, `table "orders2": columns (tenant_id, total) have no primary key or unique index of their own (INSERT ... ON CONFLICT ("tenant_id", "total") needs one); its primary key is (tenant_id, id): set key_columns: [tenant_id, id]`},
	} {
		_, err := db.DescribeKey(ctx, "orders2", Key{Columns: tc.cols, Separator: ":"}, "")
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("DescribeKey %v: %v\n want %s", tc.cols, err, tc.want)
		}
	}
	// The key columns in either order match the primary key.
	if _, err := db.DescribeKey(ctx, "orders2", Key{Columns: []string{"id", "tenant_id"}, Separator: "|"}, ""); err != nil {
		t.Errorf("key columns in the other order: %v", err)
	}
}
