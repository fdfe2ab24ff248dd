package server

import (
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
)

// Routes on a real two-column primary key (tenant_id, id): keys are
// "prefix<tenant_id>:<id>", in canonical form only, for the three
// policies, MGET and MSET across them and a MULTI/EXEC; a route whose key
// does not cover the primary key is refused at start-up naming the
// columns it needs.
func TestCompositeKeyRoutes(t *testing.T) {
	p := sharedPostgres(t)
	if err := p.Exec(`DROP TABLE IF EXISTS corders, cstock;
CREATE TABLE corders (tenant_id int, id bigint, total numeric NOT NULL DEFAULT 0, meta jsonb, placed timestamptz, PRIMARY KEY (tenant_id, id));
CREATE TABLE cstock (tenant_id int, sku text, n bigint NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, sku));
INSERT INTO corders VALUES (42, 1001, 9.5, '{"gift": true}', '2024-05-01 10:00:00+00');`); err != nil {
		t.Fatal(err)
	}
	dialRaw(t, redisAddr).do("FLUSHALL")
	routes := []config.Route{
		{Name: "co", Prefix: "co:", Policy: config.CacheAside, Table: "corders", KeyColumns: []string{"tenant_id", "id"}, Format: config.FormatJSON},
		{Name: "wh", Prefix: "wh:", Policy: config.WriteThrough, Table: "corders", KeyColumns: []string{"tenant_id", "id"}, Format: config.FormatHash},
		{Name: "ct", Prefix: "ct:", Policy: config.WriteThrough, Table: "cstock", KeyColumns: []string{"tenant_id", "sku"}, Format: config.FormatValue, ValueColumn: "n"},
		{Name: "cs", Prefix: "cs:", Policy: config.WriteBack, Table: "cstock", KeyColumns: []string{"tenant_id", "sku"}, KeySeparator: "/", Format: config.FormatValue, ValueColumn: "n"},
		{Name: "bh", Prefix: "bh:", Policy: config.WriteBack, Table: "corders", KeyColumns: []string{"tenant_id", "id"}, Format: config.FormatHash},
		{Name: "bj", Prefix: "bj:", Policy: config.WriteBack, Table: "corders", KeyColumns: []string{"tenant_id", "id"}, Format: config.FormatJSON},
	}
	proxy := startRouted(t, p, func(c *config.Config) { c.Routes = append(c.Routes, routes...) })
	c := dialRaw(t, proxy)
	q := func(sql string) string {
		t.Helper()
		out, err := p.Query(sql)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	row := `{"tenant_id":42,"id":1001,"total":9.5,"meta":{"gift": true},"placed":"2024-05-01T10:00:00+00:00"}`
	for _, tc := range [][]string{
		{"GET co:42:1001", bulk(row)},
		{"GET co:042:1001", "$-1\r\n"}, // not canonical: no row
		{"GET co:42", "$-1\r\n"},       // one part: no row
		{"GET co:42:1001:5", "$-1\r\n"},
		{"TYPE wh:42:1001", "+hash\r\n"},
		{"HGET wh:42:1001 total", bulk("9.5")},
		{"HSET wh:42:1001 total 11", ":0\r\n"},
		{"SET co:42:1005 {\"total\":3}", "+OK\r\n"},
		{"INCRBY ct:1:apple 5", ":5\r\n"},
		{"INCR cs:1/pear", ":1\r\n"},
		{"INCR cs:1/pear", ":2\r\n"},
		{"MGET co:42:1005 co:7:1 plain:x ct:1:apple", "*4\r\n" + bulk(`{"tenant_id":42,"id":1005,"total":3,"meta":null,"placed":null}`) + "$-1\r\n$-1\r\n" + bulk("5")},
		{"MSET ct:1:apple 10 ct:2:apple 20 cs:1/kiwi 4 plain:y 1", "+OK\r\n"},
		{"DEL co:42:1005", ":1\r\n"},
		{"HSET bh:8:1 total 7", ":1\r\n"},
		{"SET bj:8:2 {\"total\":8,\"meta\":{\"k\":1}}", "+OK\r\n"},
	} {
		if got := c.do(strings.Fields(tc[0])...); got != tc[1] {
			t.Errorf("%s: %q, want %q", tc[0], got, tc[1])
		}
	}
	for _, tc := range [][]string{
		{"SET co:042:1001 {}", `key "co:042:1001" is not in canonical form; use "co:42:1001"`},
		{"SET ct:1 5", `one value for each of the columns tenant_id, sku, of types integer, text, in that order, separated by ":"`},
		{"INCR cs:1:pear", `separated by "/"`},
	} {
		if got := c.do(strings.Fields(tc[0])...); !strings.HasPrefix(got, "-ERR") || !strings.Contains(got, tc[1]) {
			t.Errorf("%s: %q, want an error with %q", tc[0], got, tc[1])
		}
	}
	c.do("MULTI")
	c.do("INCRBY", "ct:1:apple", "1")
	c.do("SET", "co:42:1006", `{"total": 4}`)
	c.do("INCR", "cs:2/fig")
	c.do("HSET", "wh:7:1", "total", "2")
	if got := c.do("EXEC"); got != "*4\r\n:11\r\n+OK\r\n:1\r\n:1\r\n" {
		t.Fatalf("EXEC: %q", got)
	}
	if got := q("SELECT string_agg(tenant_id||':'||id||'='||total, ',' ORDER BY tenant_id, id) FROM corders WHERE tenant_id <> 8"); got != "7:1=2,42:1001=11,42:1006=4" {
		t.Errorf("corders: %s", got)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := q("SELECT string_agg(tenant_id||':'||sku||'='||n, ',' ORDER BY tenant_id, sku) FROM cstock") + " " +
			q("SELECT string_agg(tenant_id||':'||id||'='||total||coalesce(meta::text, ''), ',' ORDER BY id) FROM corders WHERE tenant_id = 8")
		if got == `1:apple=11,1:kiwi=4,1:pear=2,2:apple=20,2:fig=1 8:1=7,8:2=8{"k": 1}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cstock, write-back rows of corders: %s", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A key that does not cover the primary key: refused at start-up.
	cfg := config.Default()
	cfg.Listen, cfg.Upstream.Addr, cfg.Postgres.DSN = "127.0.0.1:0", redisAddr, p.DSN
	cfg.Routes = []config.Route{{Name: "bad", Prefix: "bad:", Policy: config.CacheAside, Table: "corders", KeyColumn: "id", Format: config.FormatJSON}}
	if err := fillDefaults(&cfg); err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		srv.Close()
		t.Fatal("a route on id alone of a (tenant_id, id) primary key started")
	}
	if want := `its primary key is (tenant_id, id): set key_columns: [tenant_id, id]`; !strings.Contains(err.Error(), want) {
		t.Errorf("start-up error %q, want it to contain %q", err, want)
	}
}

func bulk(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }
