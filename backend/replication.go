package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Change capture from PostgreSQL's logical replication (pgoutput, through
// github.com/jackc/pglogrepl): the publication of the tracked tables, the
// persistent slot, and a stream of committed transactions reduced to what
// a cache needs, the key column's text of every row touched. Applying them
// (invalidating Redis) is the route layer's (policy/capture.go).

// LSN is a position in PostgreSQL's WAL.
type LSN = pglogrepl.LSN

// ChangeKind is what happened to the rows of a Change.
type ChangeKind int

// The kinds of change.
const (
	ChangeInsert ChangeKind = iota
	ChangeUpdate
	ChangeDelete
	ChangeTruncate // every row of the table: Keys is empty
)

// Change is one row change (or a TRUNCATE) of a tracked table.
type Change struct {
	Table uint32 // the table's oid (Table.OID)
	Kind  ChangeKind
	// Keys are the key's texts (PostgreSQL's output, DateStyle ISO and
	// TimeZone UTC; a composite key's columns joined by its separator, as
	// a route names the row) of the row before and after the change, once
	// each: two for an UPDATE that changed the key.
	Keys []string
	// Unknown is set when a key could not be read from the stream (no
	// REPLICA IDENTITY covering the key column, an unchanged TOASTed
	// key): the table's cached copies must all be dropped. Without a
	// replica identity covering the key column every UPDATE and DELETE
	// is Unknown: pgoutput does not send the old key.
	Unknown bool
}

// Txn is one committed transaction's changes to tracked tables.
type Txn struct {
	// Xid is the transaction's id (32 bits, as pgoutput sends it).
	Xid uint32
	// End is the position after the transaction's commit: acknowledging
	// it (Replication.Ack) tells PostgreSQL never to send it again.
	End     LSN
	Commit  time.Time
	Changes []Change
	// Tags are the contents of the transactional logical messages with
	// prefix TagPrefix the transaction emitted (Tag): the proxy's own
	// writes.
	Tags []string
}

// TagPrefix is the prefix of the proxy's logical messages.
const TagPrefix = "respite"

// Event is what Replication.Next returns: a transaction, or (Txn nil) an
// idle moment at which everything up to WALEnd has been sent.
type Event struct {
	Txn    *Txn
	WALEnd LSN // with Txn nil: the server's position; 0 when unknown
}

// SlotInfo is a slot's row of pg_replication_slots.
type SlotInfo struct {
	Exists    bool
	WALStatus string // reserved, extended, unreserved, lost ("" before PostgreSQL 13)
	Confirmed LSN    // confirmed_flush_lsn
	Active    bool
	Plugin    string
}

// OID is the table's oid, as the stream names it.
func (t *Table) OID() uint32 { return t.oid }

// Ident is the table's quoted, schema-qualified name.
func (t *Table) Ident() string { return t.ident }

// Slot reads slot's state; Exists is false if there is none.
func (db *DB) Slot(ctx context.Context, slot string) (SlotInfo, error) {
	var s SlotInfo
	var status, plugin *string
	var confirmed *string
	err := db.load.QueryRow(ctx, `SELECT wal_status::text, confirmed_flush_lsn::text, active, plugin::text
FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND slot_type = 'logical'`, slot).Scan(&status, &confirmed, &s.Active, &plugin)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, wrapErr(err)
	}
	s.Exists = true
	if status != nil {
		s.WALStatus = *status
	}
	if plugin != nil {
		s.Plugin = *plugin
	}
	if confirmed != nil {
		s.Confirmed, _ = pglogrepl.ParseLSN(*confirmed)
	}
	return s, nil
}

// SlotLag is how many bytes of WAL slot keeps behind the server's
// current position (pg_current_wal_lsn - confirmed_flush_lsn).
func (db *DB) SlotLag(ctx context.Context, slot string) (int64, error) {
	var lag *int64
	err := db.load.QueryRow(ctx, `SELECT (pg_catalog.pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lag)
	if err != nil || lag == nil {
		return 0, wrapErr(err)
	}
	return *lag, nil
}

// WaitVisible waits until transaction xid (a commit received from the
// slot) is visible to new snapshots. Logical decoding sends a commit
// once its WAL is flushed, which is before the committing backend leaves
// the proc array (and, with a synchronous standby, before the standby
// confirmed it): a snapshot taken meanwhile still sees the old rows. The
// first check usually says yes at once; then it polls, from 1 ms up to
// 50 ms apart, until ctx ends.
func (db *DB) WaitVisible(ctx context.Context, xid uint32) error {
	// The 64-bit id: xid in the epoch of the snapshot's xmax, or the one
	// before when xid's 32 bits are past xmax's (it wrapped since).
	const q = `SELECT pg_catalog.pg_visible_in_snapshot(
  (CASE WHEN (x.e << 32 | $1) > x.m THEN ((x.e - 1) << 32 | $1) ELSE (x.e << 32 | $1) END)::text::xid8, x.s)
FROM (SELECT s, pg_catalog.pg_snapshot_xmax(s)::text::bigint AS m,
             pg_catalog.pg_snapshot_xmax(s)::text::bigint >> 32 AS e
      FROM pg_catalog.pg_current_snapshot() AS s) AS x`
	wait := time.Millisecond
	for {
		var visible bool
		if err := db.load.QueryRow(ctx, q, int64(xid)).Scan(&visible); err != nil {
			return wrapErr(err)
		}
		if visible {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// CreateSlot creates the persistent logical slot with pgoutput.
func (db *DB) CreateSlot(ctx context.Context, slot string) error {
	_, err := db.load.Exec(ctx, `SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	return wrapErr(err)
}

// DropSlot drops slot (a lost one, before it is created again).
func (db *DB) DropSlot(ctx context.Context, slot string) error {
	_, err := db.load.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, slot)
	return wrapErr(err)
}

// EnsurePublication makes publication publish exactly tables (inserts,
// updates, deletes and truncates): it creates it or sets its tables. It
// reports whether it changed anything (the stream then misses the
// changes of a newly added table from before).
func (db *DB) EnsurePublication(ctx context.Context, publication string, tables []*Table) (changed bool, err error) {
	want := map[uint32]bool{}
	var names []string
	for _, t := range tables {
		if !want[t.oid] {
			want[t.oid] = true
			names = append(names, t.ident)
		}
	}
	var exists bool
	if err := db.load.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)`, publication).Scan(&exists); err != nil {
		return false, wrapErr(err)
	}
	pub := pgx.Identifier{publication}.Sanitize()
	if !exists {
		_, err := db.load.Exec(ctx, "CREATE PUBLICATION "+pub+" FOR TABLE "+strings.Join(names, ", ")+
			" WITH (publish = 'insert, update, delete, truncate')")
		return true, wrapErr(err)
	}
	rows, err := db.load.Query(ctx, `SELECT prrelid::oid FROM pg_catalog.pg_publication_rel r
JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid WHERE p.pubname = $1`, publication)
	if err != nil {
		return false, wrapErr(err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
	if err != nil {
		return false, wrapErr(err)
	}
	same := len(have) == len(want)
	for _, o := range have {
		same = same && want[o]
	}
	if same {
		return false, nil
	}
	_, err = db.load.Exec(ctx, "ALTER PUBLICATION "+pub+" SET TABLE "+strings.Join(names, ", "))
	return true, wrapErr(err)
}

// Tag marks the transaction of q as the proxy's own, with text: a
// transactional logical message (pg_logical_emit_message) the stream
// delivers with the transaction's changes (Txn.Tags).
func Tag(ctx context.Context, q Querier, text string) error {
	_, err := q.Exec(ctx, `SELECT pg_catalog.pg_logical_emit_message(true, '`+TagPrefix+`', $1::bytea)`, []byte(text))
	return wrapErr(err)
}

// CanTag reports whether the role may run pg_logical_emit_message (Tag).
func (db *DB) CanTag(ctx context.Context) (bool, error) {
	var ok bool
	err := db.load.QueryRow(ctx, `SELECT pg_catalog.has_function_privilege('pg_catalog.pg_logical_emit_message(boolean, text, bytea)', 'EXECUTE')`).Scan(&ok)
	return ok, wrapErr(err)
}

// Replication is one streaming connection on a slot. Not safe for
// concurrent use.
type Replication struct {
	conn *pgconn.PgConn
	keys map[uint32]Key // tracked table oid → its key
	rels map[uint32]*pglogrepl.RelationMessage
	cur  *Txn // the transaction being received
	// acked is the last position acknowledged; lastEnd the end of the
	// last transaction returned.
	acked LSN
}

// StartReplication connects to dsn as a replication connection and
// streams slot from its confirmed position, with publication; keys maps
// the tracked tables' oids to their key (Table.Key). The session runs with
// DateStyle ISO and TimeZone UTC, so key texts are canonical as the
// routes' (keys.go).
func StartReplication(ctx context.Context, dsn, slot, publication string, keys map[uint32]Key) (*Replication, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, wrapErr(err)
	}
	for k := range cfg.RuntimeParams {
		if strings.EqualFold(k, "datestyle") || strings.EqualFold(k, "timezone") {
			delete(cfg.RuntimeParams, k)
		}
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["datestyle"] = "ISO, MDY"
	cfg.RuntimeParams["timezone"] = "UTC"
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "respite-cdc"
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, wrapErr(err)
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'", "messages 'true'"},
	})
	if err != nil {
		conn.Close(context.Background())
		return nil, wrapErr(err)
	}
	return &Replication{conn: conn, keys: keys, rels: map[uint32]*pglogrepl.RelationMessage{}}, nil
}

// Close ends the connection (unacknowledged transactions are sent again
// to the next connection on the slot).
func (r *Replication) Close() { r.conn.Close(context.Background()) }

// Abandon drops the connection without a word to the server, as a
// process killed would (tests).
func (r *Replication) Abandon() { r.conn.Conn().Close() }

// Ack tells PostgreSQL that everything up to lsn is applied: the slot's
// confirmed_flush_lsn moves there, and WAL before it may be recycled.
func (r *Replication) Ack(lsn LSN) error {
	if lsn < r.acked {
		lsn = r.acked
	}
	r.acked = lsn
	return wrapErr(pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: lsn}))
}

// Ping reports the acknowledged position again and asks the server for a
// keepalive at once: Next then returns an idle Event with its position
// if no transaction is being received.
func (r *Replication) Ping() error {
	return wrapErr(pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: r.acked, ReplyRequested: true}))
}

// Acked is the last position acknowledged on this connection.
func (r *Replication) Acked() LSN { return r.acked }

// Next waits until ctx ends for the next committed transaction or idle
// moment. ctx ending is not an error of the connection: Next returns an
// Event with neither (and ctx's error), and the connection stays usable.
// An idle Event comes with every keepalive received outside a
// transaction: everything before its WALEnd has been sent and returned.
func (r *Replication) Next(ctx context.Context) (Event, error) {
	for {
		msg, err := r.conn.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil && pgconn.Timeout(err) {
				return Event{}, ctx.Err()
			}
			return Event{}, wrapErr(err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return Event{}, wrapErr(pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return Event{}, err
				}
				if r.cur == nil {
					return Event{WALEnd: k.ServerWALEnd}, nil
				}
				if k.ReplyRequested {
					// Inside a transaction: only what is applied.
					if err := r.Ack(r.acked); err != nil {
						return Event{}, err
					}
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return Event{}, err
				}
				txn, err := r.decode(x.WALData)
				if err != nil {
					return Event{}, err
				}
				if txn != nil {
					return Event{Txn: txn}, nil
				}
			}
		default:
			// CopyDone and the like: the stream ended.
			return Event{}, fmt.Errorf("replication stream ended (%T)", msg)
		}
	}
}

// decode takes one pgoutput message into the transaction being received
// and returns it once its commit arrived.
func (r *Replication) decode(data []byte) (*Txn, error) {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("pgoutput: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		r.rels[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		r.cur = &Txn{Xid: m.Xid}
	case *pglogrepl.CommitMessage:
		t := r.cur
		r.cur = nil
		if t == nil {
			t = &Txn{}
		}
		t.End, t.Commit = m.TransactionEndLSN, m.CommitTime
		return t, nil
	case *pglogrepl.InsertMessage:
		r.add(m.RelationID, ChangeInsert, nil, m.Tuple)
	case *pglogrepl.UpdateMessage:
		r.add(m.RelationID, ChangeUpdate, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		r.add(m.RelationID, ChangeDelete, m.OldTuple, nil)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if _, ok := r.keys[id]; ok && r.cur != nil {
				r.cur.Changes = append(r.cur.Changes, Change{Table: id, Kind: ChangeTruncate})
			}
		}
	case *pglogrepl.LogicalDecodingMessage:
		if m.Prefix == TagPrefix && m.Transactional && r.cur != nil {
			r.cur.Tags = append(r.cur.Tags, string(m.Content))
		}
	}
	return nil, nil
}

// add records a row change of table rel: the key's text in the old tuple
// (sent for a key change, or with REPLICA IDENTITY FULL) and the new one.
func (r *Replication) add(rel uint32, kind ChangeKind, old, new *pglogrepl.TupleData) {
	key, ok := r.keys[rel]
	if !ok || r.cur == nil {
		return
	}
	c := Change{Table: rel, Kind: kind}
	// at: each key column's position in the relation, -1 if missing.
	at := make([]int, len(key.Columns))
	rm := r.rels[rel]
	for j, name := range key.Columns {
		at[j] = -1
		if rm != nil {
			for i, col := range rm.Columns {
				if col.Name == name {
					at[j] = i
				}
			}
		}
	}
	parts := make([]string, len(at))
	for _, tup := range []*pglogrepl.TupleData{old, new} {
		if tup == nil {
			continue
		}
		known := true
		for j, i := range at {
			if i < 0 || i >= len(tup.Columns) || tup.Columns[i].DataType != pglogrepl.TupleDataTypeText {
				// NULL (no REPLICA IDENTITY covers the key), unchanged TOAST.
				known = false
				break
			}
			parts[j] = string(tup.Columns[i].Data)
		}
		if !known {
			c.Unknown = true
			continue
		}
		k := strings.Join(parts, key.Separator)
		if len(c.Keys) == 0 || c.Keys[0] != k {
			c.Keys = append(c.Keys, k)
		}
	}
	if kind == ChangeDelete && old == nil {
		c.Unknown = true
	}
	if kind == ChangeUpdate && old == nil && !r.inIdentity(rel, at) {
		// pgoutput sends the old tuple only when a replica identity
		// column changed (or with REPLICA IDENTITY FULL): a key column is
		// not one, so it may have changed and the old key is unknown.
		c.Unknown = true
	}
	if len(c.Keys) == 0 {
		c.Unknown = true
	}
	r.cur.Changes = append(r.cur.Changes, c)
}

// inIdentity reports whether every column at of table rel is part of
// its replica identity (the relation message's flag 1; every column with
// REPLICA IDENTITY FULL).
func (r *Replication) inIdentity(rel uint32, at []int) bool {
	rm := r.rels[rel]
	if rm == nil {
		return false
	}
	for _, i := range at {
		if i < 0 || i >= len(rm.Columns) || rm.Columns[i].Flags&1 == 0 {
			return false
		}
	}
	return true
}
