package backend

import (
	"context"
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

func row(t *testing.T, sql string) string { t.Helper(); return query(t, sql) }

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
