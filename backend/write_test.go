package backend

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

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
