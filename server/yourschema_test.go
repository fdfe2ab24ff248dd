package server

import (
	"strings"
	"testing"

	"github.com/respite/respite/internal/config"
)

// docs/YOUR-SCHEMA.md, run as written: a route on a table with a
// composite primary key, a jsonb and a timestamptz column, as json and as
// hash; the replies the page shows, in the order of its §3 (two GETs of
// order:42:1001: a miss, then a hit); RESPITE STATS' hit rate and counts.
func TestYourSchemaWalkthrough(t *testing.T) {
	p := sharedPostgres(t)
	if err := p.Exec(`DROP TABLE IF EXISTS shop_orders;
CREATE TABLE shop_orders (
  tenant_id  int,
  id         bigint,
  status     text        NOT NULL DEFAULT 'new',
  items      jsonb       NOT NULL DEFAULT '[]',
  placed_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id)
);
INSERT INTO shop_orders VALUES (42, 1001, 'paid', '[{"sku": "apple", "qty": 2}]', '2024-05-01 10:00:00+00');`); err != nil {
		t.Fatal(err)
	}
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, func(c *config.Config) {
		c.Routes = []config.Route{
			{Name: "orders", Prefix: "order:", Policy: config.WriteThrough, Table: "shop_orders", KeyColumns: []string{"tenant_id", "id"}, Format: config.FormatJSON},
			{Name: "order_fields", Prefix: "orderh:", Policy: config.CacheAside, Table: "shop_orders", KeyColumns: []string{"tenant_id", "id"}, Format: config.FormatHash},
		}
	})
	c := dialRaw(t, proxy)
	row := `{"tenant_id":42,"id":1001,"status":"paid","items":[{"qty": 2, "sku": "apple"}],"placed_at":"2024-05-01T10:00:00+00:00"}`
	for _, tc := range [][]string{
		{"GET", "order:42:1001", bulk(row)},
		{"GET", "order:42:1001", bulk(row)},
		{"SET", "order:42:1002", `{"items": [{"sku": "pear", "qty": 1}], "placed_at": "2024-06-01T09:30:00Z"}`, "+OK\r\n"},
		{"GET", "order:42:1002", bulk(`{"tenant_id":42,"id":1002,"status":"new","items":[{"qty": 1, "sku": "pear"}],"placed_at":"2024-06-01T09:30:00+00:00"}`)},
		{"HGET", "orderh:42:1001", "placed_at", bulk("2024-05-01 10:00:00+00")},
		{"HGET", "orderh:42:1001", "items", bulk(`[{"qty": 2, "sku": "apple"}]`)},
		{"GET", "order:042:1001", "$-1\r\n"},
		{"GET", "order:42", "$-1\r\n"},
	} {
		if got := c.do(tc[:len(tc)-1]...); got != tc[len(tc)-1] {
			t.Errorf("%v: %q, want %q", tc[:len(tc)-1], got, tc[len(tc)-1])
		}
	}
	if got := c.do("SET", "order:042:1001", "{}"); !strings.Contains(got, `use "order:42:1001"`) {
		t.Errorf("SET order:042:1001: %q", got)
	}
	if got := c.do("RESPITE", "STATS"); !strings.Contains(got, "$6\r\norders\r\n$6\r\npolicy\r\n$13\r\nwrite-through\r\n$8\r\nhit_rate\r\n$6\r\n0.6667\r\n$4\r\nhits\r\n:2\r\n$6\r\nmisses\r\n:1\r\n") {
		t.Errorf("RESPITE STATS: %q", got)
	}
}
