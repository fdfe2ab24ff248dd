package backend

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// Every supported key type against a real table: CanonicalKey (Go only,
// on every command) says "canonical" exactly for the texts PostgreSQL
// itself gives the values (cast to the column's type and back to text,
// trailing zeros of an unconstrained numeric trimmed); CanonicalForm
// gives that text for the others, or a *KeyError for a key that is no
// value of the type; and a row written under a non-canonical spelling is
// found under the canonical one.
func TestCanonicalKeysMatchPostgres(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		typ    string
		inputs []string
		// outOfRange look canonical but do not fit the type: CanonicalKey
		// leaves them to the cast (documented).
		outOfRange []string
	}{
		{"integer", []string{"1", "01", "+1", " 1", "1 ", "-0", "0", "-5", "2147483647", "-2147483648", "abc", "", "1.0", "1e3", "2147483648"}, []string{"2147483648"}},
		{"bigint", []string{"9223372036854775807", "9223372036854775808", "-9223372036854775808", "007"}, nil},
		{"smallint", []string{"32767", "32768", "-1"}, []string{"32768"}},
		{"numeric", []string{"1.5", "1.50", "01.5", ".5", "5.", "+1.5", "-0", "-0.0", "0", "0.0", "1e2", "100", "1E-3", "0.001",
			"NaN", "nan", "Infinity", "inf", "-Infinity", "abc", "1,5", "-1.25", "12345678901234567890.123", "10", "1.0e1"}, nil},
		{"numeric(10,2)", []string{"1.5", "1.50", "1", "1.00", "-0.00", "0.00", "1.005", "1.999", "123.45", "-123.45", "NaN", "12345678.90"}, nil},
		{"numeric(5,0)", []string{"12", "12.0", "12.4", "-0"}, nil},
		{"date", []string{"2024-01-31", "2024-1-31", "Jan 31 2024", "2024-01-31 BC", "0044-03-15 BC", "44-03-15", "20240131",
			"2024-02-29", "2023-02-29", "2024-13-01", "0000-01-01", "10000-01-01", "010000-01-01", "infinity", "-infinity",
			"Infinity", "2024-01-31 ", "1/31/2024", "0001-02-29 BC", "0005-02-29 BC", "0002-02-29 BC", "1900-02-29", "2000-02-29",
			"2024-04-31", "2024-01-31 00:00:00"}, nil},
		{"timestamp", []string{"2024-01-31 10:00:00", "2024-01-31T10:00:00", "2024-01-31 10:00", "2024-01-31 10:00:00.5",
			"2024-01-31 10:00:00.50", "2024-01-31 10:00:00.123456", "2024-01-31 10:00:00.1234567", "2024-01-31 24:00:00",
			"2024-01-31 23:59:60", "2024-01-31 10:00:00+02", "0044-03-15 10:00:00 BC", "infinity", "2024-01-31",
			"2024-01-31 9:00:00", "2024-01-31 10:00:00.000001"}, nil},
		{"timestamp(3)", []string{"2024-01-31 10:00:00.123", "2024-01-31 10:00:00.1234", "2024-01-31 10:00:00.5", "2024-01-31 10:00:00.1235"}, nil},
		{"timestamptz", []string{"2024-01-31 10:00:00+00", "2024-01-31 10:00:00", "2024-01-31 10:00:00+01", "2024-01-31 10:00:00Z",
			"2024-01-31 10:00:00.25+00", "2024-01-31 10:00:00+00:00", "0044-03-15 10:00:00+00 BC", "2024-01-31 10:00:00 UTC"}, nil},
		{"uuid", []string{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
			"a0eebc999c0b4ef8bb6d6bb9bd380a11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "nope"}, nil},
		{"boolean", []string{"true", "false", "t", "TRUE", "yes", "1", "on", "f", "maybe"}, nil},
		{"character(5)", []string{"ab", "ab ", "ab   ", "abcdef", "abcde", " ab"}, nil},
		{"text", []string{"anything", "a ", " b", "ÄÖ"}, nil},
		{"varchar(5)", []string{"abc", "abc  "}, nil},
	} {
		name := "canon_" + strings.NewReplacer("(", "_", ")", "", ",", "_").Replace(tc.typ)
		if err := pg.Exec("CREATE TABLE " + name + " (k " + tc.typ + " PRIMARY KEY, v text)"); err != nil {
			t.Fatal(err)
		}
		tbl, err := db.Describe(ctx, name, "k", "v")
		if err != nil {
			t.Fatal(err)
		}
		// The reference: the text of the value PostgreSQL stores for the
		// key (the input function of the column's type, with its length,
		// scale or precision), trailing zeros of a numeric trimmed.
		if err := pg.Exec("CREATE TABLE " + name + "_ref (k " + tc.typ + ")"); err != nil {
			t.Fatal(err)
		}
		ref := "INSERT INTO " + name + "_ref (k) VALUES ($1) RETURNING k::text"
		if tc.typ == "numeric" {
			ref = "INSERT INTO " + name + "_ref (k) VALUES ($1) RETURNING pg_catalog.trim_scale(k)::text"
		}
		for _, in := range tc.inputs {
			var want string
			pgErr := db.load.QueryRow(ctx, ref, in).Scan(&want)
			got := tbl.CanonicalKey(in)
			switch {
			case pgErr != nil:
				oor := false
				for _, o := range tc.outOfRange {
					oor = oor || o == in
				}
				if got && !oor {
					t.Errorf("%s %q: CanonicalKey says canonical, PostgreSQL refuses it: %v", tc.typ, in, pgErr)
				}
				if _, err := tbl.CanonicalForm(ctx, in); !got {
					var ke *KeyError
					if !errors.As(err, &ke) {
						t.Errorf("%s %q: CanonicalForm: %v, want a *KeyError", tc.typ, in, err)
					}
				}
				continue
			case got != (want == in):
				t.Errorf("%s %q: CanonicalKey %v, but PostgreSQL's text is %q", tc.typ, in, got, want)
			}
			if !tbl.CanonicalKey(want) {
				t.Errorf("%s: PostgreSQL's own text %q (of %q) is not canonical for CanonicalKey", tc.typ, want, in)
			}
			if form, err := tbl.CanonicalForm(ctx, in); err != nil || form != want {
				t.Errorf("%s %q: CanonicalForm %q, %v; want %q", tc.typ, in, form, err, want)
			}
			// A row written under this spelling is the canonical key's row.
			if _, err := db.load.Exec(ctx, "DELETE FROM "+name); err != nil {
				t.Fatal(err)
			}
			if err := tbl.WriteValue(ctx, db.Pool(), in, "row"); err != nil {
				t.Errorf("%s: write %q: %v", tc.typ, in, err)
				continue
			}
			if v, found, err := tbl.LoadValue(ctx, db.Pool(), want); err != nil || !found || v != "row" {
				t.Errorf("%s: row written as %q, loaded as %q: %q %v %v", tc.typ, in, want, v, found, err)
			}
			stored, err := pg.Query("SELECT k::text FROM " + name)
			if tc.typ == "numeric" {
				stored, err = pg.Query("SELECT pg_catalog.trim_scale(k)::text FROM " + name)
			}
			if err != nil || stored != want {
				t.Errorf("%s: %q stored as %q, want %q (%v)", tc.typ, in, stored, want, err)
			}
		}
	}
}
