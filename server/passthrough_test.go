package server

import (
	"bytes"
	"context"
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

func newGoRedis(t testing.TB, addr string, opt func(*redis.Options)) *redis.Client {
	o := &redis.Options{Addr: addr}
	if opt != nil {
		opt(o)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// A pipeline of 10,000 mixed commands returns the same bytes, in the same
// order, as Redis itself.
func TestPipelineMatchesRedisByteForByte(t *testing.T) {
	proxy := startProxy(t, nil)
	var req bytes.Buffer
	for i := 0; i < 10000; i++ {
		k := "pk" + strconv.Itoa(i%37)
		switch i % 5 {
		case 0:
			req.Write(encode("SET", k, strings.Repeat("v", i%50)))
		case 1:
			req.Write(encode("GET", k))
		case 2:
			req.Write(encode("INCR", "cnt"+strconv.Itoa(i%7)))
		case 3:
			req.Write(encode("RPUSH", "l"+k, strconv.Itoa(i)))
		case 4:
			req.Write(encode("LRANGE", "l"+k, "0", "5"))
		}
	}
	run := func(addr string) string {
		dialRaw(t, redisAddr).do("FLUSHALL")
		c := dialRaw(t, addr)
		go c.c.Write(req.Bytes())
		var out strings.Builder
		for i := 0; i < 10000; i++ {
			out.WriteString(c.read())
		}
		return out.String()
	}
	direct, proxied := run(redisAddr), run(proxy)
	if direct != proxied {
		t.Fatalf("pipelined replies differ: direct %d bytes, proxy %d bytes", len(direct), len(proxied))
	}
}

// A client that leaves inside MULTI must not leak its state to anyone:
// 200 clients then run 10,000 commands and each reply is what a clean
// connection gets.
func TestDisconnectInMultiLeaksNothing(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Upstream.PoolSize = 4 })
	a := dialRaw(t, proxy)
	for _, cmd := range [][]string{{"SELECT", "5"}, {"WATCH", "leak"}, {"MULTI"}, {"SET", "x", "1"}} {
		a.do(cmd...)
	}
	a.c.Close()
	dialRaw(t, redisAddr).do("SET", "leak", "changed")

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := redis.NewClient(&redis.Options{Addr: proxy, PoolSize: 1})
			defer c.Close()
			ctx := context.Background()
			for j := 0; j < 50; j++ {
				k := fmt.Sprintf("leak:%d:%d", i, j)
				if err := c.Set(ctx, k, j, 0).Err(); err != nil {
					errs <- fmt.Errorf("SET: %v", err)
					return
				}
				if v, err := c.Get(ctx, k).Int(); err != nil || v != j {
					errs <- fmt.Errorf("GET %s = %v, %v", k, v, err)
					return
				}
			}
			// A clean connection runs a watched transaction on db 0.
			_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, "tx:"+strconv.Itoa(i), "ok", 0)
				return nil
			})
			if err != nil {
				errs <- fmt.Errorf("transaction: %v", err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := dialRaw(t, redisAddr).do("EXISTS", "x"); got != ":0\r\n" {
		t.Errorf("the abandoned transaction ran: EXISTS x = %q", got)
	}
	d := dialRaw(t, redisAddr)
	d.do("SELECT", "5")
	if got := d.do("EXISTS", "leak:0:0"); got != ":0\r\n" {
		t.Errorf("a client's SET landed in the abandoned client's db 5")
	}
}

func TestSubscribeAndPatterns(t *testing.T) {
	proxy := startProxy(t, nil)
	sub := dialRaw(t, proxy)
	if got := sub.do("SUBSCRIBE", "news", "sport"); got != "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n" {
		t.Fatalf("SUBSCRIBE: %q", got)
	}
	if got := sub.read(); got != "*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n" {
		t.Fatalf("second SUBSCRIBE reply: %q", got)
	}
	if got := sub.do("PSUBSCRIBE", "w*"); got != "*3\r\n$10\r\npsubscribe\r\n$2\r\nw*\r\n:3\r\n" {
		t.Fatalf("PSUBSCRIBE: %q", got)
	}
	pub := dialRaw(t, proxy)
	if got := pub.do("PUBLISH", "news", "hello"); got != ":1\r\n" {
		t.Fatalf("PUBLISH: %q", got)
	}
	if got := sub.read(); got != "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n" {
		t.Fatalf("message: %q", got)
	}
	pub.do("PUBLISH", "weather", "rain")
	if got := sub.read(); got != "*4\r\n$8\r\npmessage\r\n$2\r\nw*\r\n$7\r\nweather\r\n$4\r\nrain\r\n" {
		t.Fatalf("pmessage: %q", got)
	}
	if got := sub.do("GET", "x"); !strings.HasPrefix(got, "-ERR Can't execute 'get'") {
		t.Fatalf("GET while subscribed: %q", got)
	}
	if got := sub.do("PING"); got != "*2\r\n$4\r\npong\r\n$0\r\n\r\n" {
		t.Fatalf("PING while subscribed: %q", got)
	}
	sub.do("UNSUBSCRIBE")
	sub.read()
	if got := sub.do("PUNSUBSCRIBE"); got != "*3\r\n$12\r\npunsubscribe\r\n$2\r\nw*\r\n:0\r\n" {
		t.Fatalf("PUNSUBSCRIBE: %q", got)
	}
	pub.do("SET", "after", "sub")
	if got := sub.do("GET", "after"); got != "$3\r\nsub\r\n" {
		t.Fatalf("GET after leaving subscribed mode: %q", got)
	}
}

// Subscribed-mode replies equal Redis' own, including the nil channel of
// an UNSUBSCRIBE with nothing subscribed.
func TestSubscribeRepliesMatchRedis(t *testing.T) {
	proxy := startProxy(t, nil)
	script := [][]string{{"UNSUBSCRIBE"}, {"SUBSCRIBE", "a"}, {"PING", "hi"}, {"UNSUBSCRIBE", "a"}, {"PING"}}
	run := func(addr string) []string {
		c := dialRaw(t, addr)
		var out []string
		for _, cmd := range script {
			out = append(out, c.do(cmd...))
		}
		return out
	}
	direct, proxied := run(redisAddr), run(proxy)
	for i := range script {
		if direct[i] != proxied[i] {
			t.Errorf("%v: Redis %q, proxy %q", script[i], direct[i], proxied[i])
		}
	}
}

func TestGoRedisPubSub(t *testing.T) {
	proxy := startProxy(t, nil)
	c := newGoRedis(t, proxy, nil)
	ctx := context.Background()
	ps := c.Subscribe(ctx, "chan1")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, "chan1", "payload").Err(); err != nil {
		t.Fatal(err)
	}
	msg, err := ps.ReceiveMessage(ctx)
	if err != nil || msg.Payload != "payload" {
		t.Fatalf("got %v, %v", msg, err)
	}
}

func TestBlockingDoesNotStallOthers(t *testing.T) {
	proxy := startProxy(t, nil)
	dialRaw(t, redisAddr).do("DEL", "q")
	// 50 clients, connected and warmed up before the BLPOP starts.
	others := make([]*redis.Client, 50)
	for i := range others {
		others[i] = newGoRedis(t, proxy, func(o *redis.Options) { o.PoolSize = 1 })
		if err := others[i].Ping(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
	}
	blpop := dialRaw(t, proxy)
	start := time.Now()
	blpop.send(encode("BLPOP", "q", "1"))
	done := make(chan string)
	go func() { done <- blpop.read() }()
	var served atomic.Int32
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, c := range others {
		wg.Add(1)
		go func(c *redis.Client) {
			defer wg.Done()
			counted := false
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := c.Ping(context.Background()).Err(); err != nil {
					t.Error(err)
					return
				}
				if !counted {
					counted = true
					served.Add(1)
				}
			}
		}(c)
	}
	got := <-done
	n := served.Load() // clients answered while BLPOP was blocked
	close(stop)
	wg.Wait()
	if got != "*-1\r\n" {
		t.Fatalf("BLPOP q 1 = %q, want *-1", got)
	}
	if el := time.Since(start); el < 900*time.Millisecond || el > 5*time.Second {
		t.Fatalf("BLPOP q 1 took %v", el)
	}
	if n != 50 {
		t.Errorf("only %d of 50 clients were served while BLPOP blocked", n)
	}
}

func TestBlockingIsWokenAndOutlivesTimeouts(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Upstream.Timeout = config.Duration(300 * time.Millisecond) })
	dialRaw(t, redisAddr).do("DEL", "wq")
	done := make(chan string)
	go func() {
		c := dialRaw(t, proxy)
		done <- c.do("BLPOP", "wq", "0")
	}()
	select {
	case got := <-done:
		t.Fatalf("BLPOP wq 0 returned early: %q", got)
	case <-time.After(1200 * time.Millisecond):
	}
	dialRaw(t, proxy).do("LPUSH", "wq", "job")
	select {
	case got := <-done:
		if got != "*2\r\n$2\r\nwq\r\n$3\r\njob\r\n" {
			t.Fatalf("BLPOP = %q", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("LPUSH did not wake BLPOP")
	}
}

// A client blocked in BLPOP that disconnects must not leave an orphaned
// upstream BLPOP that steals the next element.
func TestBlockedClientDisconnectKeepsElement(t *testing.T) {
	proxy := startProxy(t, nil)
	d := dialRaw(t, redisAddr)
	d.do("DEL", "oq")
	c := dialRaw(t, proxy)
	c.send(encode("BLPOP", "oq", "0"))
	time.Sleep(200 * time.Millisecond)
	c.c.Close()
	time.Sleep(200 * time.Millisecond)
	d.do("LPUSH", "oq", "precious")
	time.Sleep(200 * time.Millisecond)
	if got := d.do("LRANGE", "oq", "0", "-1"); got != "*1\r\n$8\r\nprecious\r\n" {
		t.Fatalf("element consumed by an orphaned BLPOP: LRANGE = %q", got)
	}
}

func TestSelectIsPerClient(t *testing.T) {
	proxy := startProxy(t, nil)
	a, b := dialRaw(t, proxy), dialRaw(t, proxy)
	dialRaw(t, redisAddr).do("FLUSHALL")
	if got := a.do("SELECT", "3"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	a.do("SET", "dbkey", "three")
	if got := b.do("GET", "dbkey"); got != "$-1\r\n" {
		t.Fatalf("client B sees client A's db 3: %q", got)
	}
	if got := a.do("GET", "dbkey"); got != "$5\r\nthree\r\n" {
		t.Fatalf("client A lost its db: %q", got)
	}
	a.do("SELECT", "0")
	if got := a.do("GET", "dbkey"); got != "$-1\r\n" {
		t.Fatalf("SELECT 0 did not return to db 0: %q", got)
	}
}

func TestClientNameAndHello(t *testing.T) {
	proxy := startProxy(t, nil)
	a, b := dialRaw(t, proxy), dialRaw(t, proxy)
	if got := a.do("CLIENT", "SETNAME", "alice"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	if got := b.do("CLIENT", "GETNAME"); got != "$-1\r\n" {
		t.Fatalf("B sees A's name: %q", got)
	}
	if got := a.do("CLIENT", "GETNAME"); got != "$5\r\nalice\r\n" {
		t.Fatalf("GETNAME: %q", got)
	}
	for _, cmd := range [][]string{
		{"HELLO", "4"}, {"HELLO", "x"}, {"HELLO", "2", "foo"}, {"CLIENT", "SETNAME", "a b"},
		{"CLIENT", "SETINFO", "lib-name", "x"}, {"AUTH", "pw"}, {"AUTH", "default", "any"}, {"AUTH", "bob", "x"},
	} {
		if direct, proxied := dialRaw(t, redisAddr).do(cmd...), b.do(cmd...); direct != proxied {
			t.Errorf("%v: Redis %q, proxy %q", cmd, direct, proxied)
		}
	}
	got := a.do("HELLO", "3", "AUTH", "default", "x", "SETNAME", "bob")
	if !strings.HasPrefix(got, "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n") || !strings.Contains(got, "$5\r\nproto\r\n:3\r\n") {
		t.Fatalf("HELLO 3: %q", got)
	}
	if got := a.do("CLIENT", "GETNAME"); got != "$3\r\nbob\r\n" {
		t.Fatalf("HELLO SETNAME: %q", got)
	}
}

func TestRequirePass(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.RequirePass = "s3cret" })
	c := dialRaw(t, proxy)
	if got := c.do("GET", "x"); got != "-NOAUTH Authentication required.\r\n" {
		t.Fatalf("before AUTH: %q", got)
	}
	if got := c.do("HELLO", "3"); !strings.HasPrefix(got, "-NOAUTH HELLO must be called") {
		t.Fatalf("HELLO before AUTH: %q", got)
	}
	if got := c.do("AUTH", "wrong"); got != "-WRONGPASS invalid username-password pair or user is disabled.\r\n" {
		t.Fatalf("wrong password: %q", got)
	}
	if got := c.do("AUTH", "s3cret"); got != "+OK\r\n" {
		t.Fatalf("AUTH: %q", got)
	}
	if got := c.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("after AUTH: %q", got)
	}
	g := newGoRedis(t, proxy, func(o *redis.Options) { o.Password = "s3cret" })
	if err := g.Set(context.Background(), "authed", "1", 0).Err(); err != nil {
		t.Fatalf("go-redis with password: %v", err)
	}
}

func TestInlineAndErrors(t *testing.T) {
	proxy := startProxy(t, nil)
	c := dialRaw(t, proxy)
	c.send([]byte("PING\r\n"))
	if got := c.read(); got != "+PONG\r\n" {
		t.Fatalf("inline PING: %q", got)
	}
	c.send([]byte("\r\nSET greeting \"hello world\"\r\n"))
	if got := c.read(); got != "+OK\r\n" {
		t.Fatalf("inline SET (after an empty line, which gets no reply): %q", got)
	}
	if got := c.do("GET", "greeting"); got != "$11\r\nhello world\r\n" {
		t.Fatalf("GET: %q", got)
	}
	want := dialRaw(t, redisAddr).do("NOSUCHCMD", "a")
	if got := c.do("NOSUCHCMD", "a"); got != want {
		t.Fatalf("unknown command: %q, Redis says %q", got, want)
	}
	if got := c.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("connection did not survive an unknown command: %q", got)
	}
}

func TestClientReplyOff(t *testing.T) {
	proxy := startProxy(t, nil)
	c := dialRaw(t, proxy)
	c.send(encode("CLIENT", "REPLY", "OFF"))
	c.send(encode("SET", "quiet", "1"))
	c.send(encode("CLIENT", "REPLY", "SKIP")) // ignored while OFF
	c.send(encode("CLIENT", "REPLY", "ON"))
	if got := c.read(); got != "+OK\r\n" {
		t.Fatalf("first reply after REPLY ON: %q", got)
	}
	c.send(encode("CLIENT", "REPLY", "SKIP"))
	c.send(encode("GET", "quiet"))
	c.send(encode("GET", "quiet"))
	if got := c.read(); got != "$1\r\n1\r\n" {
		t.Fatalf("after SKIP: %q", got)
	}
}

func TestResp3Types(t *testing.T) {
	proxy := startProxy(t, nil)
	c := dialRaw(t, proxy)
	c.do("HELLO", "3")
	c.do("DEL", "h", "s", "z")
	c.do("HSET", "h", "f", "v")
	c.do("SADD", "s", "m")
	c.do("ZADD", "z", "1.5", "m")
	for cmd, want := range map[string]string{
		"HGETALL h":  "%1\r\n$1\r\nf\r\n$1\r\nv\r\n",
		"SMEMBERS s": "~1\r\n$1\r\nm\r\n",
		"ZSCORE z m": ",1.5\r\n",
		"GET nokey":  "_\r\n",
	} {
		if got := c.do(strings.Fields(cmd)...); got != want {
			t.Errorf("%s = %q, want %q", cmd, got, want)
		}
	}
}

func TestResp3TrackingInvalidation(t *testing.T) {
	proxy := startProxy(t, nil)
	c := dialRaw(t, proxy)
	c.do("HELLO", "3")
	if got := c.do("CLIENT", "TRACKING", "on"); got != "+OK\r\n" {
		t.Fatal(got)
	}
	c.do("GET", "tracked")
	dialRaw(t, proxy).do("SET", "tracked", "new")
	time.Sleep(50 * time.Millisecond)
	c.send(encode("PING"))
	if got := c.read(); got != ">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n" {
		t.Fatalf("invalidation push: %q", got)
	}
	if got := c.read(); got != "+PONG\r\n" {
		t.Fatalf("PING after push: %q", got)
	}
}

// go-redis v9 with default options (HELLO 3, CLIENT SETINFO) just works.
func TestGoRedisDefaults(t *testing.T) {
	proxy := startProxy(t, nil)
	c := newGoRedis(t, proxy, nil)
	ctx := context.Background()
	if err := c.Set(ctx, "gr", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "gr").Result(); err != nil || v != "v" {
		t.Fatalf("GET = %q, %v", v, err)
	}
	if _, err := c.Get(ctx, "missing").Result(); err != redis.Nil {
		t.Fatalf("GET missing: %v", err)
	}
	m, err := c.HGetAll(ctx, "nohash").Result()
	if err != nil || len(m) != 0 {
		t.Fatalf("HGETALL: %v %v", m, err)
	}
	big := strings.Repeat("x", 64<<20)
	if err := c.Set(ctx, "big", big, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "big").Result(); err != nil || v != big {
		t.Fatalf("64 MB value did not round-trip: %d bytes, %v", len(v), err)
	}
	bin := "\x00\r\n\xff"
	c.Set(ctx, bin, bin, 0)
	if v, _ := c.Get(ctx, bin).Result(); v != bin {
		t.Fatalf("binary key/value: %q", v)
	}
}

// More pinned sessions at once than upstream.pool_size: each holds its own
// upstream connection, and none waits for another to end.
func TestManyPinnedSessions(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Upstream.PoolSize = 4 })
	dialRaw(t, redisAddr).do("DEL", "workq")
	var conns []*rawConn
	for i := 0; i < 20; i++ {
		c := dialRaw(t, proxy)
		if got := c.do("WATCH", fmt.Sprintf("pinned:%d", i)); got != "+OK\r\n" {
			t.Fatalf("WATCH %d: %q", i, got)
		}
		conns = append(conns, c)
	}
	workers := make([]*rawConn, 20)
	for i := range workers {
		workers[i] = dialRaw(t, proxy)
		workers[i].send(encode("BLPOP", "workq", "0"))
	}
	time.Sleep(200 * time.Millisecond)
	for i := 0; i < 20; i++ {
		dialRaw(t, proxy).do("RPUSH", "workq", strconv.Itoa(i))
	}
	for i, w := range workers {
		if got := w.read(); !strings.HasPrefix(got, "*2\r\n$5\r\nworkq\r\n") {
			t.Fatalf("worker %d: %q", i, got)
		}
	}
	for i, c := range conns {
		c.do("MULTI")
		c.do("PING")
		if got := c.do("EXEC"); got != "*1\r\n+PONG\r\n" {
			t.Fatalf("transaction %d: %q", i, got)
		}
	}
}

// Pinned connections are reset (RESET, then the connection's own HELLO,
// AUTH and SELECT) and reused: state never carries over, and sequential
// transactions do not dial a connection each.
func TestPinnedConnectionsAreResetAndReused(t *testing.T) {
	proxy := startProxy(t, nil)
	d := dialRaw(t, redisAddr)
	d.do("FLUSHALL")
	// Leave every kind of state behind on pinned connections.
	a := dialRaw(t, proxy)
	a.do("WATCH", "rk")
	a.do("MULTI")
	a.do("SET", "rk", "queued")
	a.c.Close()
	b := dialRaw(t, proxy)
	b.do("SELECT", "4")
	b.do("SET", "rk", "db4")
	b.do("SELECT", "0")
	time.Sleep(100 * time.Millisecond)
	connsBefore := infoField(d.do("INFO", "stats"), "total_connections_received")
	for i := 0; i < 30; i++ {
		c := dialRaw(t, proxy)
		c.do("WATCH", "rk")
		if got := c.do("GET", "rk"); got != "$-1\r\n" {
			t.Fatalf("round %d: GET rk on db 0 = %q (state leaked)", i, got)
		}
		c.do("MULTI")
		if got := c.do("PING"); got != "+QUEUED\r\n" {
			t.Fatalf("round %d: PING in MULTI = %q", i, got)
		}
		if got := c.do("EXEC"); got != "*1\r\n+PONG\r\n" {
			t.Fatalf("round %d: EXEC = %q", i, got)
		}
		c.c.Close()
		time.Sleep(5 * time.Millisecond)
	}
	if connsAfter := infoField(d.do("INFO", "stats"), "total_connections_received"); connsAfter-connsBefore > 10 {
		t.Fatalf("30 sequential transactions dialled %d upstream connections; pinned connections are not reused", connsAfter-connsBefore)
	}
}

func infoField(info, field string) int {
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

// A reused pinned connection is back on upstream.db after its RESET.
func TestReusedPinnedConnectionKeepsConfiguredDB(t *testing.T) {
	proxy := startProxy(t, func(c *config.Config) { c.Upstream.DB = 2 })
	dialRaw(t, proxy).do("SET", "db2key", "two")
	for i := 0; i < 5; i++ {
		c := dialRaw(t, proxy)
		c.do("MULTI")
		c.do("GET", "db2key")
		if got := c.do("EXEC"); got != "*1\r\n$3\r\ntwo\r\n" {
			t.Fatalf("round %d: EXEC = %q (wrong database after reuse)", i, got)
		}
		c.c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}
