package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
)

// Redis semantics of WATCH kept through the proxy, each its own case: the
// reference is Redis itself (runScript compares byte for byte) and the
// expected reply from Redis' tests/unit/multi.tcl and the WATCH docs.
func TestWatchSemantics(t *testing.T) {
	proxy := startProxy(t, nil)
	for _, tc := range []struct {
		name  string
		steps []string
	}{
		{"other client SET", []string{"A: SET w 1", "A: WATCH w", "B: SET w 2", "A: MULTI", "A: SET w 3", "A: EXEC => *-1"}},
		{"other client DEL", []string{"A: SET w 1", "A: WATCH w", "B: DEL w", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
		{"other client EXPIRE", []string{"A: SET w 1", "A: WATCH w", "B: EXPIRE w 100", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
		{"other client INCR", []string{"A: SET w 1", "A: WATCH w", "B: INCR w", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
		{"other client creates", []string{"A: DEL w", "A: WATCH w", "B: SET w 1", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
		{"same client before MULTI", []string{"A: SET w 1", "A: WATCH w", "A: SET w 2", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
		{"UNWATCH then other write", []string{"A: SET w 1", "A: WATCH w", "A: UNWATCH", "B: SET w 2", "A: MULTI", "A: PING", "A: EXEC => *1 +PONG"}},
		{"DISCARD clears WATCH", []string{"A: SET w 1", "A: WATCH w", "A: MULTI", "A: DISCARD", "B: SET w 2", "A: MULTI", "A: PING", "A: EXEC => *1 +PONG"}},
		{"runtime error keeps the rest", []string{"A: SET s str", "A: MULTI", "A: INCR s", "A: SET after 1", "A: EXEC => *2 -ERR value is not an integer or out of range +OK", "A: GET after => $1 1"}},
		{"FLUSHALL", []string{"A: SET w 1", "A: WATCH w", "B: FLUSHALL", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
		{"FLUSHDB", []string{"A: SET w 1", "A: WATCH w", "B: FLUSHDB", "A: MULTI", "A: PING", "A: EXEC => *-1"}},
		{"WATCH no keys", []string{"A: WATCH => -ERR wrong number of arguments for 'watch' command"}},
	} {
		t.Run(tc.name, func(t *testing.T) { matchRedis(t, proxy, tc.steps) })
	}
}

func TestWatchedKeyExpiresBeforeExec(t *testing.T) {
	proxy := startProxy(t, nil)
	c := dialRaw(t, proxy)
	c.do("SET", "exp", "1", "PX", "100")
	c.do("WATCH", "exp")
	time.Sleep(300 * time.Millisecond)
	c.do("MULTI")
	c.do("PING")
	if got := c.do("EXEC"); got != "*-1\r\n" {
		t.Fatalf("EXEC after the watched key expired: %q", got)
	}
}

// Booking: 10 clients race for one room; exactly one wins and the stored
// guest is the winner.
func TestBookingRace(t *testing.T) {
	proxy := startProxy(t, nil)
	dialRaw(t, proxy).do("SET", "room:1:status", "available")
	dialRaw(t, proxy).do("DEL", "room:1:guest")
	var wins atomic.Int32
	var winner atomic.Value
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer c.Close()
			ctx := context.Background()
			guest := fmt.Sprintf("guest-%d", i)
			err := c.Watch(ctx, func(tx *redis.Tx) error {
				if st, _ := tx.Get(ctx, "room:1:status").Result(); st != "available" {
					return nil
				}
				_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Set(ctx, "room:1:status", "booked", 0)
					p.Set(ctx, "room:1:guest", guest, 0)
					return nil
				})
				if err == nil {
					wins.Add(1)
					winner.Store(guest)
				}
				return err
			}, "room:1:status")
			if err != nil && !errors.Is(err, redis.TxFailedErr) {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d clients booked the room", wins.Load())
	}
	if got := dialRaw(t, proxy).do("GET", "room:1:guest"); got != fmt.Sprintf("$%d\r\n%s\r\n", len(winner.Load().(string)), winner.Load()) {
		t.Fatalf("stored guest %q, winner %q", got, winner.Load())
	}
}

// Limited stock on a write-through route: 100 buyers with WATCH/retry,
// stock 10 → exactly 10 succeed; stock is 0 in Redis and PostgreSQL; each
// winner's order, written in the same transaction, exists in both.
func TestLimitedStockWriteThrough(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM products; DELETE FROM orders; INSERT INTO products VALUES ('widget', 10)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	var wins atomic.Int32
	var wg sync.WaitGroup
	var winners sync.Map
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1, Protocol: 2})
			defer c.Close()
			ctx := context.Background()
			for attempt := 0; attempt < 500; attempt++ {
				done := false
				err := c.Watch(ctx, func(tx *redis.Tx) error {
					n, err := tx.Get(ctx, "stock:widget").Int()
					if err != nil {
						return err
					}
					if n <= 0 {
						done = true
						return nil
					}
					_, err = tx.TxPipelined(ctx, func(pp redis.Pipeliner) error {
						pp.Decr(ctx, "stock:widget")
						pp.Set(ctx, fmt.Sprintf("order:o%d", i), fmt.Sprintf(`{"buyer":"b%d","sku":"widget"}`, i), 0)
						return nil
					})
					if err == nil {
						done = true
						wins.Add(1)
						winners.Store(i, true)
					}
					return err
				}, "stock:widget")
				if done {
					return
				}
				if err != nil && !errors.Is(err, redis.TxFailedErr) && !strings.Contains(err.Error(), "EXECABORT") {
					t.Errorf("buyer %d: %v", i, err)
					return
				}
				time.Sleep(time.Duration(attempt%5) * time.Millisecond)
			}
			t.Errorf("buyer %d never finished", i)
		}(i)
	}
	wg.Wait()
	if wins.Load() != 10 {
		t.Fatalf("%d buyers succeeded, want 10", wins.Load())
	}
	if got, _ := p.Query("SELECT stock FROM products WHERE sku = 'widget'"); got != "0" {
		t.Fatalf("PostgreSQL stock %q, want 0", got)
	}
	if got := dialRaw(t, proxy).do("GET", "stock:widget"); got != "$1\r\n0\r\n" {
		t.Fatalf("stock through the proxy %q, want 0", got)
	}
	if got, _ := p.Query("SELECT count(*) FROM orders"); got != "10" {
		t.Fatalf("%s orders in PostgreSQL, want 10", got)
	}
	winners.Range(func(k, _ any) bool {
		key := fmt.Sprintf("order:o%d", k)
		if got := dialRaw(t, proxy).do("GET", key); !strings.Contains(got, fmt.Sprintf(`"buyer":"b%d"`, k)) {
			t.Errorf("%s through the proxy: %q", key, got)
		}
		return true
	})
}

// Transfers between write-through accounts conserve the total in both
// stores.
func TestTransfersConserveTotals(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM accounts; INSERT INTO accounts VALUES ('a', 1000), ('b', 1000)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			from, to := "acct:a", "acct:b"
			if i%2 == 1 {
				from, to = to, from
			}
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1, Protocol: 2})
			defer c.Close()
			ctx := context.Background()
			for attempt := 0; attempt < 200; attempt++ {
				err := c.Watch(ctx, func(tx *redis.Tx) error {
					bal, err := tx.Get(ctx, from).Int()
					if err != nil || bal < 100 {
						return err
					}
					_, err = tx.TxPipelined(ctx, func(pp redis.Pipeliner) error {
						pp.DecrBy(ctx, from, 100)
						pp.IncrBy(ctx, to, 100)
						return nil
					})
					return err
				}, from, to)
				if err == nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
			t.Errorf("transfer %d never committed", i)
		}(i)
	}
	wg.Wait()
	if got, _ := p.Query("SELECT sum(balance) FROM accounts"); got != "2000" {
		t.Fatalf("PostgreSQL total %s, want 2000", got)
	}
	c := dialRaw(t, proxy)
	a, _ := strconv.Atoi(strings.Fields(strings.ReplaceAll(c.do("GET", "acct:a"), "\r\n", " "))[1])
	b, _ := strconv.Atoi(strings.Fields(strings.ReplaceAll(c.do("GET", "acct:b"), "\r\n", " "))[1])
	if a+b != 2000 {
		t.Fatalf("cached total %d + %d != 2000", a, b)
	}
	if got, _ := p.Query("SELECT balance FROM accounts WHERE id = 'a'"); got != strconv.Itoa(a) {
		t.Fatalf("account a: PostgreSQL %s, cache %d", got, a)
	}
}

// An EXEC aborted by WATCH leaves PostgreSQL unchanged (rolled back), and a
// refused routed command aborts the whole transaction (EXECABORT).
func TestAbortedExecRollsBackPostgres(t *testing.T) {
	p := sharedPostgres(t)
	p.Exec("DELETE FROM products; INSERT INTO products VALUES ('gadget', 5)")
	dialRaw(t, redisAddr).do("FLUSHALL")
	proxy := startRouted(t, p, nil)
	a, b := dialRaw(t, proxy), dialRaw(t, proxy)
	a.do("WATCH", "stock:gadget")
	b.do("SET", "stock:gadget", "4")
	a.do("MULTI")
	if got := a.do("SET", "stock:gadget", "1"); got != "+QUEUED\r\n" {
		t.Fatalf("queued routed write: %q", got)
	}
	if got := a.do("EXEC"); got != "*-1\r\n" {
		t.Fatalf("EXEC: %q", got)
	}
	if got, _ := p.Query("SELECT stock FROM products WHERE sku = 'gadget'"); got != "4" {
		t.Fatalf("PostgreSQL after an aborted EXEC: %q, want 4 (B's write)", got)
	}
	a.do("MULTI")
	a.do("SET", "plain-in-tx", "1")
	if got := a.do("LPUSH", "stock:gadget", "x"); !strings.HasPrefix(got, "-ERR command 'LPUSH' is not supported on route 'stock'") {
		t.Fatalf("refused command in MULTI: %q", got)
	}
	if got := a.do("EXEC"); !strings.HasPrefix(got, "-EXECABORT") {
		t.Fatalf("EXEC after a refused command: %q", got)
	}
	if got := a.do("EXISTS", "plain-in-tx"); got != ":0\r\n" {
		t.Fatalf("part of an aborted transaction ran: %q", got)
	}
}

// Retry metadata: the admin command ranks the hot key first with its abort
// count; RESP3 clients get an attribute on an aborted EXEC; RESP2 clients a
// plain nil and RESPITE LASTABORT.
func TestRetryMetadata(t *testing.T) {
	proxy := startProxy(t, nil)
	a, b := dialRaw(t, proxy), dialRaw(t, proxy)
	for i := 0; i < 3; i++ {
		a.do("WATCH", "hot")
		b.do("INCR", "hot")
		a.do("MULTI")
		a.do("INCR", "hot")
		if got := a.do("EXEC"); got != "*-1\r\n" {
			t.Fatalf("RESP2 EXEC abort: %q", got)
		}
	}
	a.do("WATCH", "cold")
	a.do("MULTI")
	a.do("PING")
	a.do("EXEC")
	got := a.do("RESPITE", "LASTABORT")
	if !strings.Contains(got, "$7\r\nattempt\r\n:3\r\n") || !strings.Contains(got, "$16\r\nconflicting_keys\r\n*1\r\n$3\r\nhot\r\n") || !strings.Contains(got, "$14\r\nconflict_known\r\n:1\r\n") {
		t.Fatalf("RESPITE LASTABORT: %q", got)
	}
	got = a.do("RESPITE", "CONFLICTS")
	if !strings.HasPrefix(got, "*2\r\n*8\r\n$3\r\nkey\r\n$3\r\nhot\r\n$8\r\nattempts\r\n:3\r\n$6\r\naborts\r\n:3\r\n") {
		t.Fatalf("RESPITE CONFLICTS: %q", got)
	}
	c3 := dialRaw(t, proxy)
	c3.do("HELLO", "3")
	// Off by default (redis-cli 7.0 cannot parse attributes): a plain null.
	c3.do("WATCH", "hot")
	b.do("INCR", "hot")
	c3.do("MULTI")
	c3.do("PING")
	if got := c3.do("EXEC"); got != "_\r\n" {
		t.Fatalf("RESP3 aborted EXEC without opting in: %q", got)
	}
	if got := c3.do("RESPITE", "ATTRIBUTES", "ON"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	c3.do("WATCH", "hot")
	b.do("INCR", "hot")
	c3.do("MULTI")
	c3.do("PING")
	got = c3.do("EXEC")
	if !strings.HasPrefix(got, "|1\r\n$7\r\nrespite\r\n%4\r\n$7\r\nattempt\r\n:2\r\n") || !strings.HasSuffix(got, "_\r\n") {
		t.Fatalf("RESP3 aborted EXEC: %q", got)
	}
	// go-redis (RESP3 by default) skips the attribute and sees a plain abort.
	withAttr := startProxy(t, func(c *config.Config) { c.Transactions.AbortAttribute = true })
	g := newGoRedis(t, withAttr, nil)
	ctx := context.Background()
	err := g.Watch(ctx, func(tx *redis.Tx) error {
		b.do("INCR", "hot")
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error { p.Incr(ctx, "hot"); return nil })
		return err
	}, "hot")
	if !errors.Is(err, redis.TxFailedErr) {
		t.Fatalf("go-redis RESP3 abort: %v", err)
	}
}

// A WATCH or MULTI left open past transactions.idle_timeout is ended by the
// proxy; the client's EXEC then fails clearly and nothing it queued runs.
func TestIdleTransactionTimeout(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Transactions.IdleTimeout = config.Duration(300 * time.Millisecond) })
	c := dialRaw(t, proxy)
	c.do("DEL", "idle-k")
	c.do("WATCH", "idle-k")
	c.do("MULTI")
	if got := c.do("SET", "idle-k", "1"); got != "+QUEUED\r\n" {
		t.Fatal(got)
	}
	time.Sleep(700 * time.Millisecond)
	if got := c.do("SET", "idle-other", "1"); !strings.HasPrefix(got, "-ERR transaction ended by the proxy") {
		t.Fatalf("command after the MULTI expired: %q", got)
	}
	if got := c.do("EXEC"); !strings.HasPrefix(got, "-ERR transaction ended by the proxy") {
		t.Fatalf("EXEC after idle timeout: %q", got)
	}
	if got := c.do("EXISTS", "idle-k", "idle-other"); got != ":0\r\n" {
		t.Fatalf("queued commands ran: %q", got)
	}
	// WATCH alone: the guarantee is gone, so the later EXEC fails.
	c.do("WATCH", "idle-k")
	time.Sleep(700 * time.Millisecond)
	c.do("MULTI")
	c.do("SET", "idle-k", "2")
	if got := c.do("EXEC"); !strings.HasPrefix(got, "-ERR transaction ended by the proxy") {
		t.Fatalf("EXEC after an expired WATCH: %q", got)
	}
	if got := c.do("GET", "idle-k"); got != "$-1\r\n" {
		t.Fatalf("the transaction ran: %q", got)
	}
	// The session works normally afterwards.
	if got := c.do("MULTI"); got != "+OK\r\n" {
		t.Fatalf("MULTI: %q", got)
	}
	if got := c.do("SET", "idle-k", "3"); got != "+QUEUED\r\n" {
		t.Fatalf("SET: %q", got)
	}
	if got := c.do("EXEC"); got != "*1\r\n+OK\r\n" {
		t.Fatalf("next transaction: %q", got)
	}
}

// The contention gate: with it on, 50 buyers of 200 units on one hot key
// need few attempts per purchase (without it, tens).
func TestContentionGateCutsRetries(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Transactions.Gate.Enabled = true })
	dialRaw(t, proxy).do("SET", "gate:stock", "200")
	var succ, att atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1, Protocol: 2})
			defer c.Close()
			ctx := context.Background()
			for {
				soldOut := false
				err := c.Watch(ctx, func(tx *redis.Tx) error {
					n, err := tx.Get(ctx, "gate:stock").Int()
					if err != nil || n <= 0 {
						soldOut = err == nil
						return err
					}
					att.Add(1)
					_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error { p.Decr(ctx, "gate:stock"); return nil })
					return err
				}, "gate:stock")
				if soldOut {
					return
				}
				if err == nil {
					succ.Add(1)
				} else if !errors.Is(err, redis.TxFailedErr) {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if succ.Load() != 200 {
		t.Fatalf("%d purchases, want 200", succ.Load())
	}
	ratio := float64(att.Load()) / float64(succ.Load())
	t.Logf("%d attempts for 200 purchases (%.2f per purchase)", att.Load(), ratio)
	if ratio > 2.5 {
		t.Fatalf("%.2f attempts per purchase with the gate on", ratio)
	}
	if got := dialRaw(t, proxy).do("INFO", "respite"); !strings.Contains(got, "respite_gate_waits:") || strings.Contains(got, "respite_gate_waits:0\r\n") {
		t.Fatalf("no gate waits recorded: %q", got)
	}
}
