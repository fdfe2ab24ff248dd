package backend

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Change capture without replication rights (postgres.invalidation.mode
// notify): a trigger on each tracked table pg_notify()s the row's key,
// and the proxy LISTENs. NotifyFunctionSQL and NotifyTriggerSQL are the
// documented setup (docs/OPERATIONS.md, "Writes that bypass the proxy").

// NotifyFunctionSQL creates the trigger function: for each row it sends
// "<table oid>\t<key>" (the key as to_jsonb gives it: ISO dates and
// timestamps whatever the writer's DateStyle) for the old and the new
// row, and "<table oid>" for a TRUNCATE. TG_ARGV: the channel, the key
// column, and for a composite key the separator and the further key
// columns (the key is then the columns' texts joined by the separator,
// as the route names the row).
const NotifyFunctionSQL = `CREATE OR REPLACE FUNCTION respite_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r jsonb;
  k text;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify(TG_ARGV[0], TG_RELID::text);
    RETURN NULL;
  END IF;
  FOREACH r IN ARRAY CASE TG_OP WHEN 'UPDATE' THEN ARRAY[to_jsonb(OLD), to_jsonb(NEW)]
                                WHEN 'DELETE' THEN ARRAY[to_jsonb(OLD)] ELSE ARRAY[to_jsonb(NEW)] END LOOP
    k := r ->> TG_ARGV[1];
    FOR i IN 3 .. TG_NARGS - 1 LOOP
      k := k || TG_ARGV[2] || (r ->> TG_ARGV[i]);
    END LOOP;
    PERFORM pg_notify(TG_ARGV[0], TG_RELID::text || E'\t' || k);
  END LOOP;
  RETURN NULL;
END $$`

// NotifyTriggerSQL creates the two triggers (rows, TRUNCATE) on table
// (a quoted identifier, as Table.Ident) for channel and key (Table.Key;
// the separator is passed only for a composite key).
func NotifyTriggerSQL(table, channel string, key Key) string {
	args := quoteLiteral(channel) + ", " + quoteLiteral(key.Columns[0])
	if len(key.Columns) > 1 {
		args += ", " + quoteLiteral(key.Separator)
		for _, c := range key.Columns[1:] {
			args += ", " + quoteLiteral(c)
		}
	}
	return "CREATE TRIGGER respite_notify AFTER INSERT OR UPDATE OR DELETE ON " + table +
		" FOR EACH ROW EXECUTE FUNCTION respite_notify(" + args + ");\n" +
		"CREATE TRIGGER respite_notify_truncate AFTER TRUNCATE ON " + table +
		" FOR EACH STATEMENT EXECUTE FUNCTION respite_notify(" + args + ")"
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Listener is a dedicated (not pooled) connection LISTENing on a channel.
type Listener struct{ conn *pgx.Conn }

// Listen connects to dsn and LISTENs on channel.
func Listen(ctx context.Context, dsn, channel string) (*Listener, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, wrapErr(err)
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "respite-notify"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, wrapErr(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		conn.Close(context.Background())
		return nil, wrapErr(err)
	}
	return &Listener{conn: conn}, nil
}

// Close ends the connection.
func (l *Listener) Close() { l.conn.Close(context.Background()) }

// Next waits up to wait for a notification and returns it as a change
// (ok false: none came; the connection is still usable). A payload that
// is not the trigger's is an Unknown change of table 0.
func (l *Listener) Next(ctx context.Context, wait time.Duration) (c Change, ok bool, err error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	n, err := l.conn.WaitForNotification(wctx)
	if err != nil {
		if wctx.Err() != nil && ctx.Err() == nil {
			return Change{}, false, nil
		}
		return Change{}, false, wrapErr(err)
	}
	rel, key, hasKey := strings.Cut(n.Payload, "\t")
	oid, perr := strconv.ParseUint(rel, 10, 32)
	switch {
	case perr != nil:
		return Change{Unknown: true}, true, nil
	case !hasKey:
		return Change{Table: uint32(oid), Kind: ChangeTruncate}, true, nil
	}
	return Change{Table: uint32(oid), Kind: ChangeUpdate, Keys: []string{key}}, true, nil
}
