package backend

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Reading one row: LoadJSON, LoadFields and LoadValue. A key that cannot be
// cast to the key column's type names no row, so it is "not found", never
// an error.

// readKey decides whether a read may run: inside a transaction a key that
// cannot be cast is found out on the load pool first, so that it does not
// abort the caller's transaction.
func (t *Table) readKey(ctx context.Context, q Querier, key string) (bool, error) {
	if _, ok := t.keyParts(key); !ok {
		return false, nil // another number of parts names no row
	}
	if !inTx(q) {
		return true, nil
	}
	return t.keyCastable(ctx, key)
}

// readErr maps a read's error: a data exception can only come from the
// key's cast, so it means "not found".
func readErr(err error) (found bool, _ error) {
	if errors.Is(err, pgx.ErrNoRows) || isDataException(err) {
		return false, nil
	}
	return false, wrapErr(err)
}

// LoadJSON returns the row as one JSON object of all its columns
// (row_to_json: numbers as numbers, NULL as null, json columns embedded).
// A key that cannot be cast to the key column's type is not found.
//
//	SELECT row_to_json(r.*)::text FROM T AS r WHERE r.K = $1::text::KT
func (t *Table) LoadJSON(ctx context.Context, q Querier, key string) (obj []byte, found bool, err error) {
	err = t.do(ctx, q, "load", func(ctx context.Context) error {
		obj, found, err = t.loadJSON(ctx, q, key)
		return err
	})
	return obj, found, err
}

func (t *Table) loadJSON(ctx context.Context, q Querier, key string) (obj []byte, found bool, err error) {
	if ok, err := t.readKey(ctx, q, key); !ok || err != nil {
		return nil, false, err
	}
	var s string
	if err := q.QueryRow(ctx, t.sqlLoadJSON, key).Scan(&s); err != nil {
		found, err = readErr(err)
		return nil, found, err
	}
	return []byte(s), true, nil
}

// LoadFields returns every non-NULL column of the row as text (the
// column's ::text cast: booleans are "true"/"false", dates and timestamps
// in ISO form and UTC, the sessions' DateStyle and TimeZone set by
// OpenWith), in column order, key column included:
// the fields of a Redis hash.
//
//	SELECT c1::text, c2::text, ... FROM T WHERE K = $1::text::KT
func (t *Table) LoadFields(ctx context.Context, q Querier, key string) (fields []Field, found bool, err error) {
	err = t.do(ctx, q, "load", func(ctx context.Context) error {
		fields, found, err = t.loadFields(ctx, q, key)
		return err
	})
	return fields, found, err
}

func (t *Table) loadFields(ctx context.Context, q Querier, key string) (fields []Field, found bool, err error) {
	if ok, err := t.readKey(ctx, q, key); !ok || err != nil {
		return nil, false, err
	}
	vals := make([]*string, len(t.cols))
	dest := make([]any, len(t.cols))
	for i := range vals {
		dest[i] = &vals[i]
	}
	if err := q.QueryRow(ctx, t.sqlLoadFields, key).Scan(dest...); err != nil {
		found, err = readErr(err)
		return nil, found, err
	}
	fields = make([]Field, 0, len(t.cols))
	for i, v := range vals {
		if v != nil {
			fields = append(fields, Field{Name: t.cols[i].name, Value: *v})
		}
	}
	return fields, true, nil
}

// LoadValue returns the value column as text. A row whose value is NULL is
// found with value "": Redis has no NULL string, and the row exists (so
// EXISTS says 1 and GET says "", not nil).
//
//	SELECT V::text FROM T WHERE K = $1::text::KT
func (t *Table) LoadValue(ctx context.Context, q Querier, key string) (value string, found bool, err error) {
	err = t.do(ctx, q, "load", func(ctx context.Context) error {
		value, found, err = t.loadValue(ctx, q, key)
		return err
	})
	return value, found, err
}

func (t *Table) loadValue(ctx context.Context, q Querier, key string) (value string, found bool, err error) {
	if t.val < 0 {
		return "", false, ErrNoValueColumn
	}
	if ok, err := t.readKey(ctx, q, key); !ok || err != nil {
		return "", false, err
	}
	var v *string
	if err := q.QueryRow(ctx, t.sqlLoadValue, key).Scan(&v); err != nil {
		found, err = readErr(err)
		return "", found, err
	}
	if v == nil {
		return "", true, nil
	}
	return *v, true, nil
}
