package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/testenv"
)

var (
	pg *testenv.Postgres
	db *DB
)

const schema = `
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE, age int CHECK (age >= 0));
CREATE TABLE products (sku text PRIMARY KEY, stock int NOT NULL CHECK (stock >= 0), label text DEFAULT 'unnamed');
CREATE TABLE page_views (page_id text PRIMARY KEY, views bigint NOT NULL DEFAULT 0);
CREATE TABLE counters (id int PRIMARY KEY, n int);
CREATE TABLE "Order Items" ("Key" text PRIMARY KEY, "Qty" int, note text);
CREATE TABLE nokey (id int, v text);
CREATE TABLE partial_unique (id int, v text);
CREATE UNIQUE INDEX ON partial_unique (id) WHERE id > 0;
CREATE TABLE pair_unique (a int, b int, UNIQUE (a, b));
CREATE TABLE typed (id uuid PRIMARY KEY, tags text[], meta jsonb, active boolean, price numeric(10,2), code varchar(5) UNIQUE);
CREATE VIEW users_view AS SELECT * FROM users;
`

func TestMain(m *testing.M) {
	var err error
	pg, err = testenv.StartPostgres()
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend tests need PostgreSQL:", err)
		os.Exit(1)
	}
	code := func() int {
		defer pg.Stop()
		if err := pg.Exec(schema); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ctx := context.Background()
		db, err = Open(ctx, pg.DSN, 4, 2)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer db.Close()
		if err := db.Ping(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := db.EnsureMeta(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func describe(t testing.TB, table, key, value string) *Table {
	t.Helper()
	tb, err := db.Describe(ctxT(t), table, key, value)
	if err != nil {
		t.Fatalf("Describe(%q, %q, %q): %v", table, key, value, err)
	}
	return tb
}

func exec(t testing.TB, sql string) {
	t.Helper()
	if err := pg.Exec(sql); err != nil {
		t.Fatal(err)
	}
}

func query(t testing.TB, sql string) string {
	t.Helper()
	out, err := pg.Query(sql)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sp(s string) *string { return &s }

func TestDescribeErrors(t *testing.T) {
	ctx := ctxT(t)
	cases := []struct {
		table, key, value, want string
	}{
		{"nosuch", "id", "", `table "nosuch" does not exist`},
		{"Users", "id", "", `table "Users" does not exist (names are case-sensitive; did you mean "users"?)`},
		{"users", "idx", "", `table "users": column "idx" does not exist`},
		{"users", "ID", "", `table "users": column "ID" does not exist (names are case-sensitive; did you mean "id"?)`},
		{"users", "id", "nickname", `table "users": column "nickname" does not exist`},
		{"users", "id", "id", `table "users": value column "id" is the key column`},
		{"users", "name", "", `table "users": column "name" has no primary key or unique index of its own`},
		{"nokey", "id", "v", `table "nokey": column "id" has no primary key or unique index of its own`},
		{"partial_unique", "id", "", `table "partial_unique": column "id" has no primary key`},
		{"pair_unique", "a", "", `table "pair_unique": column "a" has no primary key`},
		{"users_view", "id", "", `table "users_view": is not a table`},
		{"users", "", "", `table "users": key column is empty`},
	}
	for _, c := range cases {
		_, err := db.Describe(ctx, c.table, c.key, c.value)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("Describe(%q, %q, %q) = %v, want prefix %q", c.table, c.key, c.value, err, c.want)
		}
	}
	// A unique (non-primary) key is enough; schema-qualified names work.
	tb := describe(t, "public.users", "email", "name")
	if got := strings.Join(tb.Columns(), ","); got != "id,name,email,age" {
		t.Errorf("Columns = %s", got)
	}
	if tb.KeyColumn() != "email" || tb.ValueColumn() != "name" || tb.Name() != "public.users" {
		t.Errorf("KeyColumn/ValueColumn/Name = %s/%s/%s", tb.KeyColumn(), tb.ValueColumn(), tb.Name())
	}
}

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

func row(t *testing.T, sql string) string { t.Helper(); return query(t, sql) }

func TestWriteJSON(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM users`)
	users := describe(t, "users", "id", "")
	q := db.Pool()

	if err := users.WriteJSON(ctx, q, "7", []byte(`{"name": "Ann", "email": "ann@example.com", "age": 30}`)); err != nil {
		t.Fatal(err)
	}
	if got := row(t, "SELECT * FROM users WHERE id = 7"); got != "7|Ann|ann@example.com|30" {
		t.Errorf("new row = %s", got)
	}
	// Partial update keeps the other columns; numbers as strings are cast by PostgreSQL.
	if err := users.WriteJSON(ctx, q, "7", []byte(`{"age": "31"}`)); err != nil {
		t.Fatal(err)
	}
	if got := row(t, "SELECT * FROM users WHERE id = 7"); got != "7|Ann|ann@example.com|31" {
		t.Errorf("after partial update = %s", got)
	}
	// null sets NULL; the key column may be given when it equals the key.
	for _, obj := range []string{`{"id": 7, "email": null}`, `{"id": "7"}`, `{"id": " 07"}`, `{}`} {
		if err := users.WriteJSON(ctx, q, "7", []byte(obj)); err != nil {
			t.Errorf("WriteJSON(%s): %v", obj, err)
		}
	}
	if got := row(t, "SELECT * FROM users WHERE id = 7"); got != "7|Ann||31" {
		t.Errorf("after email null = %s", got)
	}

	var fe *FieldError
	err := users.WriteJSON(ctx, q, "7", []byte(`{"name": "X", "nickname": "annie"}`))
	if !errors.As(err, &fe) || fe.Field != "nickname" || err.Error() != `field "nickname" is not a column of table "users"` {
		t.Errorf("unknown field: %v", err)
	}
	err = users.WriteJSON(ctx, q, "7", []byte(`{"id": 8, "name": "X"}`))
	if !errors.As(err, &fe) || fe.Field != "id" || !strings.Contains(err.Error(), "does not match the key") {
		t.Errorf("key mismatch: %v", err)
	}
	if err := users.WriteJSON(ctx, q, "7", []byte(`{"id": null}`)); !errors.As(err, &fe) {
		t.Errorf("key null: %v", err)
	}
	// PostgreSQL's integer input refuses "7.0": a bad value, not a bad key.
	var ke *KeyError
	if err := users.WriteJSON(ctx, q, "7", []byte(`{"id": 7.0}`)); errors.As(err, &ke) || !strings.Contains(fmt.Sprint(err), "22P02") {
		t.Errorf("key 7.0: %v", err)
	}
	for _, bad := range []string{`{"name": "X"`, `[1,2]`, `"str"`, ``, `{"name": "X"} {}`, `null`, `{"a" 1}`} {
		if err := users.WriteJSON(ctx, q, "7", []byte(bad)); !errors.Is(err, ErrInvalidJSON) {
			t.Errorf("WriteJSON(%q) = %v, want ErrInvalidJSON", bad, err)
		}
	}
	// Constraint violations: a *DBError with the SQLSTATE, the row unchanged.
	var dbe *DBError
	err = users.WriteJSON(ctx, q, "7", []byte(`{"name": "Changed", "age": -1}`))
	if !errors.As(err, &dbe) || dbe.Code() != "23514" || !strings.Contains(err.Error(), "users_age_check") {
		t.Errorf("check violation: %v", err)
	}
	if got := row(t, "SELECT * FROM users WHERE id = 7"); got != "7|Ann||31" {
		t.Errorf("after failed write = %s", got)
	}
	if err := users.WriteJSON(ctx, q, "8", []byte(`{"age": 5}`)); !errors.As(err, &dbe) || dbe.Code() != "23502" {
		t.Errorf("not null violation on new row: %v", err)
	}
	if err := users.WriteJSON(ctx, q, "8", []byte(`{"name": "B", "email": "x@y"}`)); err != nil {
		t.Fatal(err)
	}
	if err := users.WriteJSON(ctx, q, "7", []byte(`{"email": "x@y"}`)); !errors.As(err, &dbe) || dbe.Code() != "23505" {
		t.Errorf("unique violation: %v", err)
	}
	// Bad value: a *DBError, not a *KeyError.
	err = users.WriteJSON(ctx, q, "7", []byte(`{"age": "x"}`))
	if !errors.As(err, &dbe) || dbe.Code() != "22P02" || errors.As(err, &ke) {
		t.Errorf("bad value: %v", err)
	}
	// Bad key.
	err = users.WriteJSON(ctx, q, "abc", []byte(`{"name": "X"}`))
	if !errors.As(err, &ke) || ke.Key != "abc" || ke.Column != "id" {
		t.Errorf("bad key: %v", err)
	} else if err.Error() != `key "abc" is not a valid integer for column "id" of table "users"` {
		t.Errorf("KeyError text: %s", err)
	}
	if got := row(t, "SELECT count(*) FROM users"); got != "2" {
		t.Errorf("users has %s rows", got)
	}
}

func TestWriteJSONTypes(t *testing.T) {
	ctx := ctxT(t)
	typed := describe(t, "typed", "id", "")
	q := db.Pool()
	id := "6b1d3f4e-0c1a-4a5b-9c7d-2e3f4a5b6c7d"
	err := typed.WriteJSON(ctx, q, id, []byte(`{"tags": ["a", "b"], "meta": {"x": [1, 2]}, "active": true, "price": 12.345, "code": "ab"}`))
	if err != nil {
		t.Fatal(err)
	}
	obj, found, err := typed.LoadJSON(ctx, q, strings.ToUpper(id))
	want := `{"id":"` + id + `","tags":["a","b"],"meta":{"x": [1, 2]},"active":true,"price":12.35,"code":"ab"}`
	if err != nil || !found || string(obj) != want {
		t.Errorf("LoadJSON = %s, %v, %v\nwant %s", obj, found, err, want)
	}
	f, _, _ := typed.LoadFields(ctx, q, id)
	if fmt.Sprint(f) != `[{id `+id+`} {tags {a,b}} {meta {"x": [1, 2]}} {active true} {price 12.35} {code ab}]` {
		t.Errorf("LoadFields = %v", f)
	}
	var ke *KeyError
	if err := typed.WriteJSON(ctx, q, "not-a-uuid", []byte(`{}`)); !errors.As(err, &ke) {
		t.Errorf("bad uuid key: %v", err)
	}
	var dbe *DBError
	if err := typed.WriteJSON(ctx, q, id, []byte(`{"code": "toolong"}`)); !errors.As(err, &dbe) || dbe.Code() != "22001" {
		t.Errorf("varchar(5) too long: %v", err)
	}
	code := describe(t, "typed", "code", "price")
	if err := code.WriteValue(ctx, q, "toolong", "1"); !errors.As(err, &ke) {
		t.Errorf("varchar(5) key too long: %v", err)
	}
	if v, found, err := code.LoadValue(ctx, q, "ab"); v != "12.35" || !found || err != nil {
		t.Errorf("LoadValue(ab) = %q, %v, %v", v, found, err)
	}
}

func TestWriteAndClearFields(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM users`)
	users := describe(t, "users", "id", "")
	q := db.Pool()

	if err := users.WriteFields(ctx, q, "1", []Field{{"name", "Ann"}, {"age", "3"}, {"age", "4"}}); err != nil {
		t.Fatal(err)
	}
	if got := row(t, "SELECT * FROM users WHERE id = 1"); got != "1|Ann||4" {
		t.Errorf("after HSET = %s", got)
	}
	if err := users.WriteFields(ctx, q, "1", []Field{{"email", "a@b"}, {"id", "01"}}); err != nil {
		t.Fatal(err)
	}
	if got := row(t, "SELECT * FROM users WHERE id = 1"); got != "1|Ann|a@b|4" {
		t.Errorf("after second HSET = %s", got)
	}
	var fe *FieldError
	if err := users.WriteFields(ctx, q, "1", []Field{{"nickname", "x"}}); !errors.As(err, &fe) || fe.Field != "nickname" {
		t.Errorf("unknown field: %v", err)
	}
	if err := users.WriteFields(ctx, q, "1", []Field{{"id", "2"}}); !errors.As(err, &fe) || fe.Field != "id" {
		t.Errorf("key field mismatch: %v", err)
	}
	var ke *KeyError
	if err := users.WriteFields(ctx, q, "x1", []Field{{"name", "x"}}); !errors.As(err, &ke) {
		t.Errorf("bad key: %v", err)
	}
	var dbe *DBError
	if err := users.WriteFields(ctx, q, "1", []Field{{"age", "old"}}); !errors.As(err, &dbe) || errors.As(err, &ke) {
		t.Errorf("bad value: %v", err)
	}

	n, err := users.ClearFields(ctx, q, "1", []string{"email", "age", "email"})
	if err != nil || n != 2 {
		t.Errorf("HDEL email age = %d, %v; want 2", n, err)
	}
	if got := row(t, "SELECT * FROM users WHERE id = 1"); got != "1|Ann||" {
		t.Errorf("after HDEL = %s", got)
	}
	if n, err := users.ClearFields(ctx, q, "1", []string{"email", "age"}); err != nil || n != 0 {
		t.Errorf("second HDEL = %d, %v; want 0", n, err)
	}
	if n, err := users.ClearFields(ctx, q, "99", []string{"email"}); err != nil || n != 0 {
		t.Errorf("HDEL missing row = %d, %v; want 0", n, err)
	}
	if _, err := users.ClearFields(ctx, q, "1", []string{"id"}); !errors.As(err, &fe) || !strings.Contains(err.Error(), "key column") {
		t.Errorf("HDEL key column: %v", err)
	}
	if _, err := users.ClearFields(ctx, q, "1", []string{"nickname"}); !errors.As(err, &fe) {
		t.Errorf("HDEL unknown field: %v", err)
	}
	if _, err := users.ClearFields(ctx, q, "1", []string{"name"}); !errors.As(err, &dbe) || dbe.Code() != "23502" {
		t.Errorf("HDEL NOT NULL column: %v", err)
	}
	if _, err := users.ClearFields(ctx, q, "abc", []string{"name"}); !errors.As(err, &ke) {
		t.Errorf("HDEL bad key: %v", err)
	}
	if got := row(t, "SELECT * FROM users WHERE id = 1"); got != "1|Ann||" {
		t.Errorf("after failed HDELs = %s", got)
	}
}

func TestWriteValueAndDelete(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM products; DELETE FROM users; INSERT INTO users VALUES (1, 'Ann', NULL, 5)`)
	stock := describe(t, "products", "sku", "stock")
	q := db.Pool()

	if err := stock.WriteValue(ctx, q, "abc", "10"); err != nil { // a text key: "abc" is fine
		t.Fatal(err)
	}
	if err := stock.WriteValue(ctx, q, "abc", "9"); err != nil {
		t.Fatal(err)
	}
	if got := row(t, "SELECT * FROM products"); got != "abc|9|unnamed" {
		t.Errorf("products = %s", got)
	}
	var dbe *DBError
	var ke *KeyError
	if err := stock.WriteValue(ctx, q, "abc", "x"); !errors.As(err, &dbe) || dbe.Code() != "22P02" || errors.As(err, &ke) {
		t.Errorf("SET stock:abc x = %v", err)
	}
	if err := stock.WriteValue(ctx, q, "abc", "-1"); !errors.As(err, &dbe) || dbe.Code() != "23514" {
		t.Errorf("SET stock:abc -1 = %v", err)
	}
	if err := stock.WriteValue(ctx, q, "new", "-1"); !errors.As(err, &dbe) {
		t.Errorf("SET stock:new -1 = %v", err)
	}
	if err := stock.CheckValue(ctx, "x"); err == nil {
		t.Error("CheckValue(x) = nil")
	}
	if err := stock.CheckValue(ctx, " 7 "); err != nil {
		t.Errorf("CheckValue(' 7 ') = %v", err)
	}
	if got := row(t, "SELECT * FROM products"); got != "abc|9|unnamed" {
		t.Errorf("products after failures = %s", got)
	}

	age := describe(t, "users", "id", "age")
	for _, key := range []string{"abc", "1.5", "99999999999", "1'; DROP TABLE users; --"} {
		err := age.WriteValue(ctx, q, key, "5")
		if !errors.As(err, &ke) || ke.Key != key || ke.Type != "integer" {
			t.Errorf("SET with key %q = %v, want *KeyError", key, err)
		}
		if err := age.CheckKey(ctx, key); !errors.As(err, &ke) {
			t.Errorf("CheckKey(%q) = %v", key, err)
		}
		if ok, err := age.Delete(ctx, q, key); ok || err != nil {
			t.Errorf("Delete(%q) = %v, %v", key, ok, err)
		}
	}
	if err := age.CheckKey(ctx, "+12"); err != nil {
		t.Errorf("CheckKey(+12) = %v", err)
	}
	if ok, err := stock.Delete(ctx, q, "abc"); !ok || err != nil {
		t.Errorf("Delete(abc) = %v, %v", ok, err)
	}
	if ok, err := stock.Delete(ctx, q, "abc"); ok || err != nil {
		t.Errorf("second Delete(abc) = %v, %v", ok, err)
	}
}

func TestInjection(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM products`)
	stock := describe(t, "products", "sku", "stock")
	label := describe(t, "products", "sku", "label")
	q := db.Pool()
	evil := []string{
		`1'; DROP TABLE users; --`,
		`x"); DROP TABLE products; --`,
		`$1`, `\'`, `'||(SELECT 1)||'`, "a\nb",
	}
	for i, key := range evil {
		if err := stock.WriteValue(ctx, q, key, strconv.Itoa(i)); err != nil {
			t.Fatalf("WriteValue(%q): %v", key, err)
		}
		if err := label.WriteValue(ctx, q, key, key); err != nil {
			t.Fatalf("WriteValue(%q): %v", key, err)
		}
		if err := stock.WriteJSON(ctx, q, key, []byte(`{"label": `+strconv.Quote(key)+`}`)); err != nil {
			t.Fatalf("WriteJSON(%q): %v", key, err)
		}
		v, found, err := label.LoadValue(ctx, q, key)
		if v != key || !found || err != nil {
			t.Errorf("LoadValue(%q) = %q, %v, %v", key, v, found, err)
		}
	}
	if got := row(t, "SELECT count(*) FROM products WHERE sku = label"); got != strconv.Itoa(len(evil)) {
		t.Errorf("%s rows with sku = label", got)
	}
	n, err := stock.Flush(ctx, "injection", []Entry{{Key: evil[0], Value: sp("5"), Version: 1}, {Key: evil[1], Value: nil, Version: 2}})
	if err != nil || n != 2 {
		t.Errorf("Flush = %d, %v", n, err)
	}
	if got := row(t, "SELECT to_regclass('users') IS NOT NULL AND to_regclass('products') IS NOT NULL"); got != "t" {
		t.Errorf("tables gone")
	}
}

func TestQuotedIdentifiers(t *testing.T) {
	ctx := ctxT(t)
	items := describe(t, "Order Items", "Key", "Qty")
	q := db.Pool()
	if got := strings.Join(items.Columns(), ","); got != "Key,Qty,note" {
		t.Errorf("Columns = %s", got)
	}
	if err := items.WriteJSON(ctx, q, "A-1", []byte(`{"Qty": 3, "note": "first", "Key": "A-1"}`)); err != nil {
		t.Fatal(err)
	}
	if err := items.WriteFields(ctx, q, "A-2", []Field{{"Qty", "4"}}); err != nil {
		t.Fatal(err)
	}
	if err := items.WriteValue(ctx, q, "A-3", "5"); err != nil {
		t.Fatal(err)
	}
	obj, _, err := items.LoadJSON(ctx, q, "A-1")
	if err != nil || string(obj) != `{"Key":"A-1","Qty":3,"note":"first"}` {
		t.Errorf("LoadJSON = %s, %v", obj, err)
	}
	f, _, _ := items.LoadFields(ctx, q, "A-2")
	if fmt.Sprint(f) != "[{Key A-2} {Qty 4}]" {
		t.Errorf("LoadFields = %v", f)
	}
	if v, _, _ := items.LoadValue(ctx, q, "A-3"); v != "5" {
		t.Errorf("LoadValue = %q", v)
	}
	if n, err := items.ClearFields(ctx, q, "A-1", []string{"note"}); n != 1 || err != nil {
		t.Errorf("ClearFields = %d, %v", n, err)
	}
	if n, err := items.Flush(ctx, "items", []Entry{{"A-1", sp("7"), 1}, {"A-3", nil, 2}}); n != 2 || err != nil {
		t.Errorf("Flush = %d, %v", n, err)
	}
	if n, err := items.FlushJSON(ctx, "items-json", []Entry{{"A-2", sp(`{"note": "n"}`), 1}}); n != 1 || err != nil {
		t.Errorf("FlushJSON = %d, %v", n, err)
	}
	if ok, err := items.Delete(ctx, q, "A-2"); !ok || err != nil {
		t.Errorf("Delete = %v, %v", ok, err)
	}
	if got := row(t, `SELECT * FROM "Order Items" ORDER BY 1`); got != "A-1|7|" {
		t.Errorf("Order Items = %q", got)
	}
}

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

func TestPostgresDown(t *testing.T) {
	ctx := ctxT(t)
	stock := describe(t, "products", "sku", "stock")
	q := db.Pool()
	exec(t, `INSERT INTO products VALUES ('down', 1) ON CONFLICT DO NOTHING`)
	pg.Halt()
	resumed := false
	defer func() {
		if !resumed {
			pg.Resume()
		}
	}()
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, _, err := stock.LoadValue(short, q, "down"); err == nil || !strings.HasPrefix(err.Error(), "postgres") {
		t.Errorf("LoadValue with PostgreSQL down = %v", err)
	}
	if err := stock.WriteValue(short, q, "down", "2"); err == nil {
		t.Error("WriteValue with PostgreSQL down succeeded")
	}
	if _, err := stock.Flush(short, "down", []Entry{{"down", sp("3"), 1}}); err == nil {
		t.Error("Flush with PostgreSQL down succeeded")
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	// The pools recover by themselves (a few dead connections may fail first).
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, found, err := stock.LoadValue(ctx, q, "down")
		if err == nil {
			if v != "1" || !found {
				t.Errorf("LoadValue after resume = %q, %v", v, found)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("LoadValue after resume: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
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
