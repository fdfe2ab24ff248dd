package server

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/respite/respite/internal/config"
)

// A reload adds a route while 50 clients keep pipelines running: no error,
// no dropped connection; a broken config is refused and the old routes
// keep serving.
func TestReloadAddsRouteWithoutDroppingClients(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM products; INSERT INTO products VALUES ('kiwi', 42)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	base := fmt.Sprintf("listen: 127.0.0.1:0\nupstream:\n  addr: %s\npostgres:\n  dsn: %s\nroutes:\n  - {name: users, prefix: 'user:', policy: cache-aside, table: users, key_column: id, format: json}\n", redisAddr, p.DSN)
	os.WriteFile(file, []byte(base), 0o600)
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startProxy(t, func(c *config.Config) { *c = cfg; c.Listen = "127.0.0.1:0" })
	srv := lastServer
	srv.ConfigFile = file

	admin := dialRaw(t, proxy)
	if got := admin.do("GET", "stock:kiwi"); got != "$-1\r\n" {
		t.Fatalf("before the reload stock:kiwi is a plain key: %q", got)
	}
	var stop atomic.Bool
	var failures atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		c := dialRaw(t, proxy)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			k := fmt.Sprintf("reload:%d", i)
			for n := 0; !stop.Load(); n++ {
				batch := append(encode("SET", k, fmt.Sprint(n)), encode("GET", k)...)
				if _, err := c.c.Write(batch); err != nil {
					failures.Add(1)
					return
				}
				c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
				r1, err1 := readReply(c.br)
				r2, err2 := readReply(c.br)
				if err1 != nil || err2 != nil || r1 != "+OK\r\n" || r2 != fmt.Sprintf("$%d\r\n%d\r\n", len(fmt.Sprint(n)), n) {
					failures.Add(1)
					return
				}
			}
		}(i)
	}
	time.Sleep(300 * time.Millisecond)
	os.WriteFile(file, []byte(base+"  - {name: stock, prefix: 'stock:', policy: write-through, table: products, key_column: sku, format: value, value_column: stock}\nlimits:\n  max_clients: 500\n"), 0o600)
	if got := admin.do("RESPITE", "RELOAD"); got != "+OK\r\n" {
		t.Fatalf("RESPITE RELOAD: %q", got)
	}
	if got := admin.do("GET", "stock:kiwi"); got != "$2\r\n42\r\n" {
		t.Fatalf("after the reload stock:kiwi is routed: %q", got)
	}
	time.Sleep(300 * time.Millisecond)
	// A broken config: a route over a missing table.
	os.WriteFile(file, []byte(base+"  - {name: ghosts, prefix: 'ghost:', policy: cache-aside, table: ghosts, key_column: id, format: json}\n"), 0o600)
	if got := admin.do("RESPITE", "RELOAD"); !strings.HasPrefix(got, "-ERR reload refused") || !strings.Contains(got, "ghosts") {
		t.Fatalf("broken config: %q", got)
	}
	if got := admin.do("GET", "stock:kiwi"); got != "$2\r\n42\r\n" {
		t.Fatalf("after a refused reload the old routes serve: %q", got)
	}
	// What cannot change live is reported.
	os.WriteFile(file, []byte(strings.Replace(base, "listen: 127.0.0.1:0", "listen: 127.0.0.1:1", 1)+"  - {name: stock, prefix: 'stock:', policy: write-through, table: products, key_column: sku, format: value, value_column: stock}\n"), 0o600)
	if got := admin.do("RESPITE", "RELOAD"); !strings.Contains(got, "need a restart") || !strings.Contains(got, "listen") {
		t.Fatalf("listen change: %q", got)
	}
	stop.Store(true)
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d clients saw an error or a dropped connection during the reloads", n)
	}
}
