package backend

import (
	"strings"
	"testing"
)

func TestDescribeErrors(t *testing.T) {
	ctx := ctxT(t)
	cases := []struct {
		table, key, value, want string
	}{
		{"nosuch", "id", "", `table "nosuch" does not exist`},
		{"Users", "id", "", `table "Users" does not exist (names are case-sensitive; did you mean "users"?)`},
		{"users", "idx", "", `table "users": column "idx" does not exist`},
		{"users", "ID", "", `table "users": column "ID" does not exist (names are case-sensitive; did you mean "id"?)`},
		{"users", "id", "nickname", `table "users": column "nickname" does not exist`},
		{"users", "id", "id", `table "users": value column "id" is the key column`},
		{"users", "name", "", `table "users": column "name" has no primary key or unique index of its own`},
		{"nokey", "id", "v", `table "nokey": column "id" has no primary key or unique index of its own`},
		{"partial_unique", "id", "", `table "partial_unique": column "id" has no primary key`},
		{"pair_unique", "a", "", `table "pair_unique": column "a" has no primary key`},
		{"users_view", "id", "", `table "users_view": is not a table`},
		{"users", "", "", `table "users": key column is empty`},
	}
	for _, c := range cases {
		_, err := db.Describe(ctx, c.table, c.key, c.value)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("Describe(%q, %q, %q) = %v, want prefix %q", c.table, c.key, c.value, err, c.want)
		}
	}
	// A unique (non-primary) key is enough; schema-qualified names work.
	tb := describe(t, "public.users", "email", "name")
	if got := strings.Join(tb.Columns(), ","); got != "id,name,email,age" {
		t.Errorf("Columns = %s", got)
	}
	if tb.KeyColumn() != "email" || tb.ValueColumn() != "name" || tb.Name() != "public.users" {
		t.Errorf("KeyColumn/ValueColumn/Name = %s/%s/%s", tb.KeyColumn(), tb.ValueColumn(), tb.Name())
	}
}
