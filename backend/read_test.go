package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

func TestLoads(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM users; INSERT INTO users VALUES (1, 'Ann', 'ann@example.com', 30), (2, 'Bob', NULL, NULL)`)
	users := describe(t, "users", "id", "")
	q := db.Pool()

	obj, found, err := users.LoadJSON(ctx, q, "1")
	if err != nil || !found {
		t.Fatalf("LoadJSON(1) = %s, %v, %v", obj, found, err)
	}
	var m map[string]any
	if err := json.Unmarshal(obj, &m); err != nil {
		t.Fatal(err)
	}
	if m["id"] != float64(1) || m["name"] != "Ann" || m["email"] != "ann@example.com" || m["age"] != float64(30) || len(m) != 4 {
		t.Errorf("LoadJSON(1) = %s", obj)
	}
	obj, _, _ = users.LoadJSON(ctx, q, "2")
	if string(obj) != `{"id":2,"name":"Bob","email":null,"age":null}` {
		t.Errorf("LoadJSON(2) = %s", obj)
	}

	fields, found, err := users.LoadFields(ctx, q, "2")
	if err != nil || !found || fmt.Sprint(fields) != "[{id 2} {name Bob}]" {
		t.Errorf("LoadFields(2) = %v, %v, %v", fields, found, err)
	}
	fields, _, _ = users.LoadFields(ctx, q, "1")
	if fmt.Sprint(fields) != "[{id 1} {name Ann} {email ann@example.com} {age 30}]" {
		t.Errorf("LoadFields(1) = %v", fields)
	}

	email := describe(t, "users", "id", "email")
	if v, found, err := email.LoadValue(ctx, q, "1"); v != "ann@example.com" || !found || err != nil {
		t.Errorf("LoadValue(1) = %q, %v, %v", v, found, err)
	}
	if v, found, err := email.LoadValue(ctx, q, "2"); v != "" || !found || err != nil {
		t.Errorf("LoadValue(2) with NULL = %q, %v, %v; want \"\", true", v, found, err)
	}
	if _, _, err := users.LoadValue(ctx, q, "1"); !errors.Is(err, ErrNoValueColumn) {
		t.Errorf("LoadValue without value column: %v", err)
	}

	// Absent and uncastable keys are "not found", never errors.
	for _, key := range []string{"3", "abc", "", "1.5", "99999999999", "1'; DROP TABLE users; --", "1\x00", "\xff\xfe"} {
		if obj, found, err := users.LoadJSON(ctx, q, key); found || err != nil {
			t.Errorf("LoadJSON(%q) = %s, %v, %v", key, obj, found, err)
		}
		if f, found, err := users.LoadFields(ctx, q, key); found || err != nil {
			t.Errorf("LoadFields(%q) = %v, %v, %v", key, f, found, err)
		}
		if v, found, err := email.LoadValue(ctx, q, key); found || err != nil {
			t.Errorf("LoadValue(%q) = %q, %v, %v", key, v, found, err)
		}
	}
	// PostgreSQL's int parsing accepts surrounding spaces: Go must not
	// claim otherwise.
	if _, found, err := users.LoadJSON(ctx, q, " 1 "); !found || err != nil {
		t.Errorf("LoadJSON(\" 1 \") = %v, %v", found, err)
	}
	if n := query(t, "SELECT count(*) FROM users"); n != "2" {
		t.Errorf("users has %s rows", n)
	}
}

func TestLoadsInTransaction(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM users; INSERT INTO users VALUES (1, 'Ann', NULL, NULL)`)
	users := describe(t, "users", "id", "age")
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, key := range []string{"abc", "99999999999", "1x"} {
		if _, found, err := users.LoadJSON(ctx, tx, key); found || err != nil {
			t.Errorf("LoadJSON(%q) in tx = %v, %v", key, found, err)
		}
		if _, found, err := users.LoadValue(ctx, tx, key); found || err != nil {
			t.Errorf("LoadValue(%q) in tx = %v, %v", key, found, err)
		}
		if ok, err := users.Delete(ctx, tx, key); ok || err != nil {
			t.Errorf("Delete(%q) in tx = %v, %v", key, ok, err)
		}
		var ke *KeyError
		if err := users.WriteValue(ctx, tx, key, "5"); !errors.As(err, &ke) {
			t.Errorf("WriteValue(%q) in tx = %v, want *KeyError", key, err)
		}
	}
	// The transaction is still usable.
	if err := users.WriteValue(ctx, tx, "1", "41"); err != nil {
		t.Fatalf("WriteValue in tx after bad keys: %v", err)
	}
	if v, found, err := users.LoadValue(ctx, tx, "1"); v != "41" || !found || err != nil {
		t.Errorf("LoadValue in tx = %q, %v, %v", v, found, err)
	}
	if got := query(t, "SELECT coalesce(age::text, 'NULL') FROM users WHERE id = 1"); got != "NULL" {
		t.Errorf("uncommitted write visible: %s", got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := query(t, "SELECT age FROM users WHERE id = 1"); got != "41" {
		t.Errorf("after commit age = %s", got)
	}
}

func BenchmarkLoadValue(b *testing.B) {
	ctx := context.Background()
	if err := pg.Exec(`INSERT INTO products VALUES ('bench', 42) ON CONFLICT (sku) DO UPDATE SET stock = 42`); err != nil {
		b.Fatal(err)
	}
	stock := describe(b, "products", "sku", "stock")
	q := db.Pool()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, found, err := stock.LoadValue(ctx, q, "bench")
		if err != nil || !found || v != "42" {
			b.Fatal(v, found, err)
		}
	}
}
