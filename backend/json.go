package backend

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// JSON objects as routes send them: parsed into their members in document
// order, and checked against the table's columns before any statement.

// member is one member of a JSON object, in document order.
type member struct {
	name string
	raw  json.RawMessage
}

// parseObject parses a JSON object into its members in document order.
// Anything else (invalid JSON, an array, trailing data) wraps
// ErrInvalidJSON.
func parseObject(obj []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(obj))
	bad := func(err error) error {
		if err == nil {
			return ErrInvalidJSON
		}
		return fmt.Errorf("%w: %v", ErrInvalidJSON, err)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, bad(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, bad(nil)
	}
	var ms []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad(err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, bad(nil)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, bad(err)
		}
		ms = append(ms, member{name, raw})
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, bad(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad(errors.New("data after the object"))
	}
	return ms, nil
}

// CheckObject checks in Go what WriteJSON and FlushJSON check before
// running a statement: obj is a JSON object whose members are all columns.
func (t *Table) CheckObject(obj []byte) error {
	ms, err := parseObject(obj)
	if err != nil {
		return err
	}
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.name
	}
	_, _, err = t.columnsOf(names)
	return err
}
