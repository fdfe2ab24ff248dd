package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Least privilege (docs/OPERATIONS.md, "PostgreSQL roles"): the proxy's
// role needs no privilege to create anything. The one object the proxy
// adds to the database, respite_versions, is created once by an operator
// (Setup, or SetupSQL by hand); at start-up CheckAccess checks, per route,
// that the role may do what the route does, and CheckMeta that the side
// table is there and usable.

// SetupSQL creates the side table Flush keeps per route and key the
// highest version flushed, so that an older batch flushed after a newer
// one (a retry, a DLQ replay) changes nothing. One row per route and key
// that was ever flushed (deleted keys keep their row, so that an older SET
// cannot bring them back). It is created in the first schema of the
// search_path (normally public) and idempotent.
const SetupSQL = `CREATE TABLE IF NOT EXISTS ` + metaTable + ` (
	route   text   NOT NULL,
	key     text   NOT NULL,
	version bigint NOT NULL,
	PRIMARY KEY (route, key)
) WITH (fillfactor = 70)`

// setupHint is what to do when respite_versions is missing.
const setupHint = `create it once with "respite -setup-db" and a postgres.dsn whose role may create tables ` +
	`(e.g. -set postgres.dsn=postgres://owner@host/db), or run backend.SetupSQL as such a role ` +
	`(docs/OPERATIONS.md, "PostgreSQL roles")`

// Setup connects to dsn once and creates respite_versions (SetupSQL) if it
// does not exist. Run it once per database, as a role that may create
// tables in the schema (the tables' owner); the proxy's own role then
// needs only the privileges CheckAccess and CheckMeta list. Its errors
// are safe to print (no DSN; see ConnError).
func Setup(ctx context.Context, dsn string) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return wrapErr(err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return wrapErr(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = createMeta(ctx, conn)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		var user, schema string
		_ = conn.QueryRow(ctx, `SELECT current_user::text, coalesce(current_schema()::text, 'public')`).Scan(&user, &schema)
		role, nsp := pgx.Identifier{user}.Sanitize(), pgx.Identifier{schema}.Sanitize()
		return fmt.Errorf("create %s: role %s may not create tables (%s): run the setup with a DSN of the schema's owner, or first GRANT CREATE ON SCHEMA %s TO %s;",
			metaTable, role, pgErr.Message, nsp, role)
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", metaTable, wrapErr(err))
	}
	return nil
}

// currentUser is the role statements run as, quoted, for messages.
func (db *DB) currentUser(ctx context.Context) string {
	var user string
	if err := db.load.QueryRow(ctx, `SELECT current_user::text`).Scan(&user); err != nil {
		return "(unknown role)"
	}
	return pgx.Identifier{user}.Sanitize()
}

// Access is what a route does with its table, for CheckAccess.
type Access struct {
	// Route names the route in the error.
	Route string
	// ValueOnly: the route reads and writes only the key and value columns
	// (format value). Otherwise (json, hash) it reads every column and may
	// write every column that is not generated.
	ValueOnly bool
	// Write: the route writes rows (SET, HSET, HDEL, DEL, ...): INSERT,
	// UPDATE and DELETE, and USAGE on the sequences of column defaults.
	Write bool
	// WriteBack: writes are flushed with Flush/FlushJSON/FlushFields:
	// also UPDATE on every other column that is not generated (a key
	// deleted and set again in one batch is recreated with the defaults)
	// and respite_versions (CheckMeta).
	WriteBack bool
}

// CheckAccess checks, at start-up, that the role of the load pool's
// connections holds every privilege route a needs on t's table, and for
// write-back routes that respite_versions exists and is usable (CheckMeta).
// A privilege counts whether it is granted on the table or on the
// columns, to the role, a role it inherits from or PUBLIC
// (has_column_privilege). Needed:
//
//   - USAGE on the table's schema;
//   - SELECT on the columns read: key and value (ValueOnly), else all;
//   - with Write: INSERT on the columns written (key and value, else every
//     column that is not generated), UPDATE on the value column (else on
//     every column that is not generated, the key included: an upsert
//     with nothing else to set sets the key to itself), DELETE, and USAGE
//     on every sequence a column default takes values from (serial);
//   - with WriteBack: UPDATE on every column that is not generated but
//     the key, and SELECT, INSERT on respite_versions' columns and UPDATE
//     on its version.
//
// The error names the route, the role, each missing privilege with its
// table and columns, and the GRANT statements that would add them, e.g.
//
//	route "users": role "app" is missing privileges on table "public"."users": INSERT ("age"), DELETE; as the owner of these objects run: GRANT INSERT ("age"), DELETE ON TABLE "public"."users" TO "app";
func (t *Table) CheckAccess(ctx context.Context, a Access) error {
	db := t.db
	role := db.currentUser(ctx)
	var p privs
	if err := p.table(ctx, db.load, t, a); err != nil {
		return routeErr(a.Route, fmt.Errorf("table %q: check privileges: %w", t.name, err))
	}
	if a.WriteBack {
		oid, err := metaOID(ctx, db)
		if err != nil {
			return routeErr(a.Route, err)
		}
		if err := p.meta(ctx, db.load, oid); err != nil {
			return routeErr(a.Route, fmt.Errorf("table %s: check privileges: %w", metaTable, err))
		}
	}
	return routeErr(a.Route, p.err(role))
}

// CheckMeta checks that respite_versions exists and that the role may
// read, insert and update it, as Flush does; the error says how to create
// it (Setup) or which GRANT is missing. CheckAccess runs it for write-back
// routes.
func (db *DB) CheckMeta(ctx context.Context) error {
	oid, err := metaOID(ctx, db)
	if err != nil {
		return err
	}
	var p privs
	if err := p.meta(ctx, db.load, oid); err != nil {
		return fmt.Errorf("table %s: check privileges: %w", metaTable, err)
	}
	return p.err(db.currentUser(ctx))
}

func routeErr(route string, err error) error {
	if err == nil || route == "" {
		return err
	}
	return fmt.Errorf("route %q: %w", route, err)
}

// metaOID finds respite_versions through the search_path.
func metaOID(ctx context.Context, db *DB) (uint32, error) {
	var oid *uint32
	if err := db.load.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1)::oid`, metaTable).Scan(&oid); err != nil {
		return 0, fmt.Errorf("look up %s: %w", metaTable, wrapErr(err))
	}
	if oid == nil {
		return 0, fmt.Errorf("table %s does not exist in the search_path of role %s (write-back routes keep flushed versions in it): %s",
			metaTable, db.currentUser(ctx), setupHint)
	}
	return *oid, nil
}

// privs collects the missing privileges of one check, in the order found.
type privs struct {
	missing []string // on table "public"."users": SELECT ("email"), DELETE
	grants  []string // GRANT SELECT ("email"), DELETE ON TABLE "public"."users" (without " TO role;")
}

// colPriv is what the role holds on one column.
type colPriv struct {
	name      string
	generated bool
	has       map[string]bool // SELECT, INSERT, UPDATE
}

// object is one relation's name and what the role holds on it.
type object struct {
	ident  string // quoted, schema-qualified
	nsp    string // quoted schema
	usage  bool   // USAGE on the schema
	delete bool
	cols   []colPriv
}

func loadObject(ctx context.Context, q Querier, oid uint32) (*object, error) {
	o := &object{}
	var nsp, rel string
	err := q.QueryRow(ctx, `SELECT n.nspname::text, c.relname::text,
	pg_catalog.has_schema_privilege(n.oid, 'USAGE'), pg_catalog.has_table_privilege(c.oid, 'DELETE')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1`, oid).
		Scan(&nsp, &rel, &o.usage, &o.delete)
	if err != nil {
		return nil, wrapErr(err)
	}
	o.ident, o.nsp = pgx.Identifier{nsp, rel}.Sanitize(), pgx.Identifier{nsp}.Sanitize()
	rows, err := q.Query(ctx, `SELECT a.attname::text, a.attgenerated <> '',
	pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'SELECT'),
	pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'INSERT'),
	pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'UPDATE')
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, wrapErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var c colPriv
		var sel, ins, upd bool
		if err := rows.Scan(&c.name, &c.generated, &sel, &ins, &upd); err != nil {
			return nil, wrapErr(err)
		}
		c.has = map[string]bool{"SELECT": sel, "INSERT": ins, "UPDATE": upd}
		o.cols = append(o.cols, c)
	}
	return o, wrapErr(rows.Err())
}

// need is what is missing of privilege priv on the columns for which want
// is true, as a GRANT item: "" when nothing is, priv alone (for the
// table) when the columns wanted are every column that is not generated
// and the role holds priv on none of them, else priv and the missing
// columns: SELECT ("id", "qty").
func (o *object) need(priv string, want func(c *colPriv) bool) string {
	var lack []string
	all, none := true, true
	for i := range o.cols {
		c := &o.cols[i]
		if !want(c) {
			if !c.generated {
				all = false
			}
			continue
		}
		if c.has[priv] {
			none = false
		} else {
			lack = append(lack, pgx.Identifier{c.name}.Sanitize())
		}
	}
	if len(lack) == 0 {
		return ""
	}
	if all && none {
		return priv
	}
	return priv + " (" + strings.Join(lack, ", ") + ")"
}

// add records what the role lacks on o: the schema's USAGE, and items on
// the table.
func (p *privs) add(o *object, items []string) {
	if !o.usage {
		p.lack("schema", o.nsp, "USAGE")
	}
	if len(items) > 0 {
		p.lack("table", o.ident, strings.Join(items, ", "))
	}
}

// lack records items (`SELECT ("id"), DELETE`) missing on the object of
// kind (table, schema, sequence) named ident (quoted).
func (p *privs) lack(kind, ident, items string) {
	p.missing = append(p.missing, "on "+kind+" "+ident+": "+items)
	p.grants = append(p.grants, "GRANT "+items+" ON "+strings.ToUpper(kind)+" "+ident)
}

// table adds what route a lacks on t's table.
func (p *privs) table(ctx context.Context, q Querier, t *Table, a Access) error {
	o, err := loadObject(ctx, q, t.oid)
	if err != nil {
		return err
	}
	val := ""
	if t.val >= 0 {
		val = t.cols[t.val].name
	}
	isKey := func(name string) bool { ci, ok := t.byNm[name]; return ok && t.isKey(ci) }
	if a.ValueOnly && val == "" {
		return errors.New("a value route needs a Table described with its value column")
	}
	isKV := func(c *colPriv) bool { return isKey(c.name) || c.name == val }
	var items []string
	check := func(priv string, want func(c *colPriv) bool) {
		if g := o.need(priv, want); g != "" {
			items = append(items, g)
		}
	}
	if a.ValueOnly {
		check("SELECT", isKV)
	} else {
		check("SELECT", func(*colPriv) bool { return true })
	}
	writable := func(c *colPriv) bool { return !c.generated }
	if a.Write || a.WriteBack {
		switch {
		case !a.ValueOnly:
			check("INSERT", writable)
			check("UPDATE", writable)
		case a.WriteBack:
			check("INSERT", isKV)
			check("UPDATE", func(c *colPriv) bool { return !c.generated && !isKey(c.name) })
		default:
			check("INSERT", isKV)
			check("UPDATE", func(c *colPriv) bool { return c.name == val })
		}
		if !o.delete {
			items = append(items, "DELETE")
		}
	}
	p.add(o, items)
	if a.Write || a.WriteBack {
		return p.sequences(ctx, q, t.oid)
	}
	return nil
}

// sequences adds USAGE on the sequences that column defaults of the
// table take values from (nextval: serial columns; identity columns
// need none).
func (p *privs) sequences(ctx context.Context, q Querier, oid uint32) error {
	rows, err := q.Query(ctx, `SELECT DISTINCT n.nspname::text, s.relname::text
FROM pg_catalog.pg_attrdef d
JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND dep.objid = d.oid
	AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
JOIN pg_catalog.pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
WHERE d.adrelid = $1
	AND CASE WHEN s.relkind = 'S' THEN NOT pg_catalog.has_sequence_privilege(s.oid, 'USAGE, UPDATE') END
ORDER BY 1, 2`, oid)
	if err != nil {
		return wrapErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var nsp, rel string
		if err := rows.Scan(&nsp, &rel); err != nil {
			return wrapErr(err)
		}
		p.lack("sequence", pgx.Identifier{nsp, rel}.Sanitize(), "USAGE")
	}
	return wrapErr(rows.Err())
}

// meta adds what Flush lacks on respite_versions.
func (p *privs) meta(ctx context.Context, q Querier, oid uint32) error {
	o, err := loadObject(ctx, q, oid)
	if err != nil {
		return err
	}
	found := map[string]bool{}
	for _, c := range o.cols {
		found[c.name] = true
	}
	for _, c := range []string{"route", "key", "version"} {
		if !found[c] {
			return fmt.Errorf("table %s has no column %q: it is not the table SetupSQL creates", o.ident, c)
		}
	}
	var items []string
	for _, n := range []struct {
		priv string
		want func(c *colPriv) bool
	}{
		{"SELECT", func(*colPriv) bool { return true }},
		{"INSERT", func(*colPriv) bool { return true }},
		{"UPDATE", func(c *colPriv) bool { return c.name == "version" }},
	} {
		if g := o.need(n.priv, n.want); g != "" {
			items = append(items, g)
		}
	}
	p.add(o, items)
	return nil
}

// err is the error for what is missing, nil if nothing is.
func (p *privs) err(role string) error {
	if len(p.missing) == 0 {
		return nil
	}
	grants := make([]string, len(p.grants))
	for i, g := range p.grants {
		grants[i] = g + " TO " + role + ";"
	}
	return fmt.Errorf("role %s is missing privileges %s; as the owner of these objects run: %s",
		role, strings.Join(p.missing, "; "), strings.Join(grants, " "))
}
