package backend

import (
	"fmt"
	"testing"
)

// LoadMany reads what the one-row loads read, by key, in each format; a
// key without a row, or one that cannot be cast (out of range, not a
// number, NUL), is absent, whether Go can tell (left out) or only
// PostgreSQL can (the statement fails and each key is read alone).
func TestLoadMany(t *testing.T) {
	ctx := ctxT(t)
	exec(t, `DELETE FROM users; INSERT INTO users VALUES (1, 'Ann', 'ann@example.com', 30), (2, 'Bob', NULL, NULL)`)
	users := describe(t, "users", "id", "")
	email := describe(t, "users", "id", "email")
	q := db.Pool()
	keys := []string{"1", "2", "3", "99999999999", "abc", "1\x00", "2"} // canonical keys, and some no int is
	for _, f := range []Format{AsJSON, AsFields, AsValue} {
		tbl := users
		if f == AsValue {
			tbl = email
		}
		got, err := tbl.LoadMany(ctx, q, f, keys)
		if err != nil {
			t.Fatalf("format %d: %v", f, err)
		}
		if len(got) != 2 {
			t.Errorf("format %d: %d rows %v, want 1 and 2", f, len(got), got)
		}
		for _, k := range []string{"1", "2"} {
			var want string
			switch f {
			case AsJSON:
				obj, _, _ := users.LoadJSON(ctx, q, k)
				want = string(obj)
			case AsFields:
				fields, _, _ := users.LoadFields(ctx, q, k)
				want = fmt.Sprint(fields)
			default:
				v, _, _ := email.LoadValue(ctx, q, k)
				want = v
			}
			l := got[k]
			have := map[Format]string{AsJSON: string(l.JSON), AsFields: fmt.Sprint(l.Fields), AsValue: l.Value}[f]
			if have != want {
				t.Errorf("format %d, key %s: %q, want %q", f, k, have, want)
			}
		}
	}
}

func TestOutOfRange(t *testing.T) {
	for _, tc := range []struct {
		kind kind
		s    string
		want bool
	}{
		{kindInt32, "2147483647", false}, {kindInt32, "2147483648", true}, {kindInt32, "-2147483649", true},
		{kindInt16, "40000", true}, {kindInt64, "99999999999", false}, {kindInt64, "99999999999999999999", true},
		{kindInt32, "1e3", false}, {kindInt32, "", false}, {kindInt32, "-", false}, {kindText, "99999999999999999999", false},
	} {
		if got := outOfRange(&column{kind: tc.kind}, tc.s); got != tc.want {
			t.Errorf("outOfRange(%v, %q) = %v", tc.kind, tc.s, got)
		}
	}
}
