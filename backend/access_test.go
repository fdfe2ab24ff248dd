package backend

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// dsnAs is the test server's DSN for another user (and password, when
// not ""), with extra connection parameters.
func dsnAs(t testing.TB, user, password string, params map[string]string) string {
	t.Helper()
	u, err := url.Parse(pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if password == "" {
		u.User = url.User(user)
	} else {
		u.User = url.UserPassword(user, password)
	}
	q := u.Query()
	for k, v := range params {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func openWith(t testing.TB, dsn string, o Options) *DB {
	t.Helper()
	d, err := OpenWith(ctxT(t), dsn, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

var grantRE = regexp.MustCompile(`GRANT [^;]+;`)

// applyGrants runs, as the owner, the GRANT statements err suggests.
func applyGrants(t *testing.T, err error) {
	t.Helper()
	stmts := grantRE.FindAllString(err.Error(), -1)
	if len(stmts) == 0 {
		t.Fatalf("no GRANT in %v", err)
	}
	exec(t, strings.Join(stmts, "\n"))
}

func wantErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil || err.Error() != want {
		t.Fatalf("%s:\n got %v\nwant %s", what, err, want)
	}
}

// A role with no privilege to create anything (PostgreSQL 15's default
// for schema public, and no CREATE on schema lp either) runs every route
// once the owner set up respite_versions and granted what CheckAccess
// names: the suggested GRANTs are applied as they are, so the test also
// proves that they are right and enough.
func TestLeastPrivilege(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `
CREATE SCHEMA lp;
CREATE TABLE lp.items (id int PRIMARY KEY, qty int NOT NULL DEFAULT 0, label text DEFAULT 'none',
	serial_no serial, twice int GENERATED ALWAYS AS (qty * 2) STORED);
CREATE ROLE respite_lp LOGIN;
ALTER ROLE respite_lp SET search_path = lp;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
`)
	lp := openWith(t, dsnAs(t, "respite_lp", "", nil), Options{LoadConns: 2, FlushConns: 1})
	for _, sql := range []string{`CREATE TABLE public.lp_probe (a int)`, `CREATE TABLE lp.lp_probe (a int)`} {
		var pgErr *pgconn.PgError
		if _, err := lp.Pool().Exec(ctx, sql); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Fatalf("%s as respite_lp: %v, want permission denied", sql, err)
		}
	}

	// Without USAGE on the schema the search_path skips it.
	_, err := lp.Describe(ctx, "items", "id", "qty")
	wantErr(t, "Describe without USAGE", err, `table "items" does not exist for role "respite_lp" (one exists in schema "lp", on which the role lacks USAGE: GRANT USAGE ON SCHEMA "lp" TO "respite_lp";)`)
	_, err = lp.Describe(ctx, "lp.items", "id", "qty")
	wantErr(t, "Describe lp.items without USAGE", err, `table "lp.items": permission denied for schema lp (role "respite_lp" lacks USAGE on the schema: GRANT USAGE ON SCHEMA "lp" TO "respite_lp";)`)
	applyGrants(t, err)

	// A value route, write-through: only its two columns.
	stock, err := lp.Describe(ctx, "items", "id", "qty")
	if err != nil {
		t.Fatal(err)
	}
	if err := stock.WriteValue(ctx, lp.Pool(), "1", "5"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("WriteValue before the grants: %v", err)
	}
	err = stock.CheckAccess(ctx, Access{Route: "stock", ValueOnly: true, Write: true})
	wantErr(t, "CheckAccess stock", err, `route "stock": role "respite_lp" is missing privileges on table "lp"."items": SELECT ("id", "qty"), INSERT ("id", "qty"), UPDATE ("qty"), DELETE; on sequence "lp"."items_serial_no_seq": USAGE; as the owner of these objects run: GRANT SELECT ("id", "qty"), INSERT ("id", "qty"), UPDATE ("qty"), DELETE ON TABLE "lp"."items" TO "respite_lp"; GRANT USAGE ON SEQUENCE "lp"."items_serial_no_seq" TO "respite_lp";`)
	applyGrants(t, err)
	if err := stock.CheckAccess(ctx, Access{Route: "stock", ValueOnly: true, Write: true}); err != nil {
		t.Fatalf("CheckAccess after the grants: %v", err)
	}
	q := lp.Pool()
	if err := stock.WriteValue(ctx, q, "1", "5"); err != nil {
		t.Fatal(err)
	}
	if err := stock.WriteValue(ctx, q, "1", "6"); err != nil {
		t.Fatal(err)
	}
	if v, found, err := stock.LoadValue(ctx, q, "1"); v != "6" || !found || err != nil {
		t.Fatalf("LoadValue = %q, %v, %v", v, found, err)
	}
	if err := stock.WriteValue(ctx, q, "2", "1"); err != nil {
		t.Fatal(err)
	}
	if ok, err := stock.Delete(ctx, q, "2"); !ok || err != nil {
		t.Fatalf("Delete = %v, %v", ok, err)
	}

	// The same route write-back: respite_versions first.
	wb := Access{Route: "stock-wb", ValueOnly: true, Write: true, WriteBack: true}
	err = stock.CheckAccess(ctx, wb)
	wantErr(t, "CheckAccess without respite_versions", err, `route "stock-wb": table respite_versions does not exist in the search_path of role "respite_lp" (write-back routes keep flushed versions in it): `+setupHint)
	if err := lp.EnsureMeta(ctx); err == nil || !strings.Contains(err.Error(), "may not create it") || !strings.Contains(err.Error(), "respite -setup-db") {
		t.Fatalf("EnsureMeta as respite_lp: %v", err)
	}
	err = Setup(ctx, dsnAs(t, "respite_lp", "", nil))
	wantErr(t, "Setup as respite_lp", err, `create respite_versions: role "respite_lp" may not create tables (permission denied for schema lp): run the setup with a DSN of the schema's owner, or first GRANT CREATE ON SCHEMA "lp" TO "respite_lp";`)
	if err := Setup(ctx, dsnAs(t, "postgres", "", map[string]string{"search_path": "lp"})); err != nil {
		t.Fatalf("Setup as the owner: %v", err)
	}
	if err := Setup(ctx, dsnAs(t, "postgres", "", map[string]string{"search_path": "lp"})); err != nil {
		t.Fatalf("Setup again: %v", err)
	}
	err = stock.CheckAccess(ctx, wb)
	wantErr(t, "CheckAccess write-back", err, `route "stock-wb": role "respite_lp" is missing privileges on table "lp"."items": UPDATE ("label", "serial_no"); on table "lp"."respite_versions": SELECT, INSERT, UPDATE ("version"); as the owner of these objects run: GRANT UPDATE ("label", "serial_no") ON TABLE "lp"."items" TO "respite_lp"; GRANT SELECT, INSERT, UPDATE ("version") ON TABLE "lp"."respite_versions" TO "respite_lp";`)
	if err := lp.CheckMeta(ctx); err == nil || !strings.Contains(err.Error(), `"lp"."respite_versions"`) {
		t.Fatalf("CheckMeta before the grant: %v", err)
	}
	applyGrants(t, err)
	if err := stock.CheckAccess(ctx, wb); err != nil {
		t.Fatalf("CheckAccess write-back after the grants: %v", err)
	}
	if err := lp.CheckMeta(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lp.EnsureMeta(ctx); err != nil {
		t.Fatalf("EnsureMeta once it exists: %v", err)
	}
	exec(t, `UPDATE lp.items SET label = 'kept' WHERE id = 1`)
	// A delete then a set of key 1 in one batch recreates the row: label
	// back to its default, which needs UPDATE on label.
	if n, err := stock.Flush(ctx, "stock-wb", []Entry{{"1", nil, 1}, {"1", sp("9"), 2}, {"3", sp("4"), 3}}); n != 2 || err != nil {
		t.Fatalf("Flush as respite_lp = %d, %v", n, err)
	}
	if got := row(t, `SELECT string_agg(id || ':' || qty || ':' || label, ',' ORDER BY id) FROM lp.items`); got != "1:9:none,3:4:none" {
		t.Errorf("lp.items = %s", got)
	}
	if got := row(t, `SELECT string_agg(key || '=' || version, ',' ORDER BY key) FROM lp.respite_versions`); got != "1=2,3=3" {
		t.Errorf("lp.respite_versions = %s", got)
	}

	// A json route reads every column and may write any that is not
	// generated.
	items, err := lp.Describe(ctx, "items", "id", "")
	if err != nil {
		t.Fatal(err)
	}
	err = items.CheckAccess(ctx, Access{Route: "items", Write: true})
	wantErr(t, "CheckAccess items", err, `route "items": role "respite_lp" is missing privileges on table "lp"."items": SELECT ("label", "serial_no", "twice"), INSERT ("label", "serial_no"), UPDATE ("id"); as the owner of these objects run: GRANT SELECT ("label", "serial_no", "twice"), INSERT ("label", "serial_no"), UPDATE ("id") ON TABLE "lp"."items" TO "respite_lp";`)
	applyGrants(t, err)
	if err := items.CheckAccess(ctx, Access{Route: "items", Write: true, WriteBack: true}); err != nil {
		t.Fatalf("CheckAccess items after the grants: %v", err)
	}
	if err := items.WriteJSON(ctx, q, "7", []byte(`{"qty": 3, "label": "seven"}`)); err != nil {
		t.Fatal(err)
	}
	if obj, _, err := items.LoadJSON(ctx, q, "7"); err != nil || !strings.Contains(string(obj), `"twice":6`) {
		t.Fatalf("LoadJSON = %s, %v", obj, err)
	}
	if err := items.WriteJSON(ctx, q, "7", []byte(`{"id": 7}`)); err != nil {
		t.Fatalf("WriteJSON of the key alone (sets the key to itself): %v", err)
	}

	// Revoking the schema afterwards is reported too.
	exec(t, `REVOKE USAGE ON SCHEMA lp FROM respite_lp`)
	err = stock.CheckAccess(ctx, Access{Route: "stock", ValueOnly: true})
	wantErr(t, "CheckAccess after REVOKE USAGE", err, `route "stock": role "respite_lp" is missing privileges on schema "lp": USAGE; as the owner of these objects run: GRANT USAGE ON SCHEMA "lp" TO "respite_lp";`)

	// The superuser of the other tests has every privilege.
	users := describe(t, "users", "id", "")
	if err := users.CheckAccess(ctx, Access{Route: "users", Write: true, WriteBack: true}); err != nil {
		t.Errorf("CheckAccess as the owner: %v", err)
	}
	if err := db.CheckMeta(ctx); err != nil {
		t.Errorf("CheckMeta as the owner: %v", err)
	}
}

// Proxies starting at once on a database without respite_versions each
// create it: every one succeeds (the losers of CREATE TABLE IF NOT
// EXISTS's race see the table, or its row type, made by the winner).
func TestConcurrentSetupSucceeds(t *testing.T) {
	ctx := ctxT(t)
	for round := range 30 {
		schema := fmt.Sprintf("setup_race_%d", round)
		if err := pg.Exec("CREATE SCHEMA " + schema); err != nil {
			t.Fatal(err)
		}
		cfg, err := pgx.ParseConfig(pg.DSN)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["search_path"] = schema
		var wg sync.WaitGroup
		errs := make([]error, 16)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					errs[i] = err
					return
				}
				defer conn.Close(ctx)
				errs[i] = createMeta(ctx, conn)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, setup %d: %v", round, i, err)
			}
		}
	}
}
