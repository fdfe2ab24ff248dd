// Command contention measures optimistic locking under contention: N
// clients (one connection each) buy from a stock of 100 on one hot key
// with WATCH / GET / MULTI DECR EXEC and retry on abort, against Redis
// directly, through Respite with the contention gate off, and with it on,
// all in one run on throwaway servers.
//
//	go run ./bench/contention [-clients 50,200] [-stock 100]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
	"github.com/respite/respite/server"
)

func main() {
	clientsFlag := flag.String("clients", "50,200", "comma-separated client counts")
	stock := flag.Int("stock", 100, "units in stock")
	flag.Parse()
	r, err := testenv.StartRedis()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer r.Stop()
	off := startProxy(r.Addr, false)
	on := startProxy(r.Addr, true)
	fmt.Printf("%-8s %-18s %9s %9s %12s %10s\n", "clients", "target", "successes", "attempts", "att/success", "wall")
	for _, f := range strings.Split(*clientsFlag, ",") {
		n, _ := strconv.Atoi(f)
		var direct time.Duration
		for _, tg := range []struct{ name, addr string }{{"direct Redis", r.Addr}, {"respite gate off", off}, {"respite gate on", on}} {
			succ, att, wall := run(tg.addr, n, *stock)
			if tg.name == "direct Redis" {
				direct = wall
			}
			fmt.Printf("%-8d %-18s %9d %9d %12.2f %10s  (%.2fx direct wall)\n", n, tg.name, succ, att,
				float64(att)/float64(max(succ, 1)), wall.Round(time.Millisecond), float64(wall)/float64(direct))
		}
	}
}

func startProxy(upstream string, gate bool) string {
	cfg := config.Default()
	cfg.Upstream.Addr = upstream
	cfg.Transactions.Gate.Enabled = gate
	srv, err := server.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go srv.Serve(l)
	return l.Addr().String()
}

// run sells stock units to n concurrent buyers and returns the successes,
// the EXEC attempts and the wall time until every buyer is done.
func run(addr string, n, stock int) (int64, int64, time.Duration) {
	ctx := context.Background()
	setup := redis.NewClient(&redis.Options{Addr: addr})
	setup.Set(ctx, "bench:stock", stock, 0)
	setup.Close()
	clients := make([]*redis.Client, n)
	for i := range clients {
		clients[i] = redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, MinIdleConns: 1, Protocol: 2})
		clients[i].Ping(ctx)
	}
	var succ, att atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, c := range clients {
		wg.Add(1)
		go func(c *redis.Client) {
			defer wg.Done()
			for {
				soldOut := false
				err := c.Watch(ctx, func(tx *redis.Tx) error {
					left, err := tx.Get(ctx, "bench:stock").Int()
					if err != nil {
						return err
					}
					if left <= 0 {
						soldOut = true
						return nil
					}
					att.Add(1)
					_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
						p.Decr(ctx, "bench:stock")
						return nil
					})
					return err
				}, "bench:stock")
				if soldOut {
					return
				}
				if err == nil {
					succ.Add(1)
					continue
				}
				if !errors.Is(err, redis.TxFailedErr) {
					fmt.Fprintln(os.Stderr, "buyer:", err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	wall := time.Since(start)
	for _, c := range clients {
		c.Close()
	}
	return succ.Load(), att.Load(), wall
}
