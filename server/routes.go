package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tidwall/redcon"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// routes is the set of configured routes at run time.
type routes struct {
	list     []*policy.Route
	prefixes *router.Prefixes
	db       *backend.DB
	flusher  *policy.Flusher // nil without write-back routes
	cancel   context.CancelFunc
}

// openRoutes connects to PostgreSQL and checks every route's table and
// columns; the error names the route, table and column.
func openRoutes(cfg config.Config, cache policy.Cache, rdb *redis.Client, log *slog.Logger) (*routes, error) {
	if len(cfg.Routes) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	db, err := backend.Open(ctx, cfg.Postgres.DSN, cfg.Postgres.MaxConns, cfg.Postgres.FlushConns)
	if err != nil {
		return nil, err // backend errors already name PostgreSQL
	}
	if err := db.Ping(ctx); err != nil {
		db.Close()
		return nil, err // backend errors already name PostgreSQL
	}
	rs := &routes{db: db}
	var prefixes []string
	for _, rc := range cfg.Routes {
		t, err := db.Describe(ctx, rc.Table, rc.KeyColumn, rc.ValueColumn)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("route %q: %w", rc.Name, err)
		}
		rs.list = append(rs.list, policy.New(rc, db, t, cache, rdb, log))
		prefixes = append(prefixes, rc.Prefix)
	}
	if err := db.EnsureMeta(ctx); err != nil {
		db.Close()
		return nil, err // backend errors already name PostgreSQL
	}
	rs.prefixes = router.NewPrefixes(prefixes)
	bg, stop := context.WithCancel(context.Background())
	rs.cancel = stop
	go policy.ListenInvalidations(bg, rdb, rs.list)
	for _, r := range rs.list {
		if r.Config().Policy == config.WriteBack {
			rs.flusher = policy.NewFlusher(rs.list, rdb, cfg.WriteBack.Consumer, log)
			rs.flusher.ClaimIdle = time.Duration(cfg.WriteBack.ClaimIdle)
			go rs.flusher.Run(bg)
			break
		}
	}
	return rs, nil
}

// routeList returns the configured routes (none without routes).
func (s *Server) routeList() []*policy.Route {
	if s.routes.Load() == nil {
		return nil
	}
	return s.routes.Load().list
}

// match returns the route of key, or nil.
func (rs *routes) match(key []byte) *policy.Route {
	if rs == nil {
		return nil
	}
	if i := rs.prefixes.Match(key); i >= 0 {
		return rs.list[i]
	}
	return nil
}

// drain flushes the write-back queues until they are empty or ctx ends
// and returns how many entries are left in them (still durable).
func (rs *routes) drain(ctx context.Context) (int64, error) {
	if rs == nil || rs.flusher == nil {
		return 0, nil
	}
	rs.cancel() // stop the background loop; Drain takes over
	return rs.flusher.Drain(ctx)
}

func (rs *routes) close() {
	if rs == nil {
		return
	}
	rs.cancel()
	rs.db.Close()
}

// muxCache is policy.Cache over the multiplexed shared path.
type muxCache struct{ up *upstream }

func (m muxCache) Do(_ context.Context, proto int, cmds ...[][]byte) ([][]byte, error) {
	cl := callPool.Get().(*call)
	defer callPool.Put(cl)
	var small [4]redcon.Command
	batch := small[:0]
	for _, c := range cmds {
		batch = append(batch, redcon.Command{Args: c})
	}
	mx := m.up.mux[index(proto)]
	mx.conns[int(muxPick.Add(1))%len(mx.conns)].do(cl, batch)
	if cl.err != nil {
		return nil, cl.err
	}
	buf := append([]byte(nil), cl.out...) // cl goes back to the pool
	if cap(cl.out) > 1<<20 {
		cl.out = nil
	}
	out := make([][]byte, len(cl.ends))
	start := 0
	for i, end := range cl.ends {
		out[i] = buf[start:end:end]
		start = end
	}
	return out, nil
}

// callPool recycles muxCache's calls (each has a channel).
var callPool = sync.Pool{New: func() any { return newCall() }}

// muxPick spreads muxCache's calls over the multiplexed connections.
var muxPick atomic.Uint32

// routedKeys reports whether any key of args belongs to a route.
func (c *session) routedKeys(args [][]byte) bool {
	rs := c.s.routes.Load()
	if rs == nil {
		return false
	}
	switch router.Lookup(args[0]) {
	case router.Transaction, router.PubSub, router.Local, router.Client, router.Select, router.Monitor:
		return false
	}
	c.keys, _ = router.KeyPositions(c.keys[:0], args)
	for _, k := range c.keys {
		if rs.match(args[k]) != nil {
			return true
		}
	}
	return false
}

// routed carries a command with at least one routed key. Multi-key
// commands are split per key and merged in the client's order; other
// commands must keep all their keys in one route.
func (c *session) routed(args [][]byte) {
	ctx := context.Background() // the policies bound what can block (loads, writes)
	name := router.Name(args[0])
	keys := append(c.routedAt[:0], c.keys...)
	c.routedAt = keys
	if c.s.metrics != nil {
		class := admin.ClassRoutedWrite
		if policy.IsRead(name) {
			class = admin.ClassRoutedRead
		}
		defer c.observe(class, time.Now())
	}
	if c.pin != nil && c.pin.multi {
		c.queueRouted(ctx, name, args, keys)
		return
	}
	c.s.conflicts.noteWrites([]redcon.Command{{Args: args}}, &c.keys)
	switch name {
	case "mget":
		c.routedMGet(ctx, args, keys)
		return
	case "mset":
		c.routedMSet(ctx, args)
		return
	case "del", "unlink", "exists":
		c.routedCount(ctx, name, args, keys)
		return
	}
	var route *policy.Route
	for _, k := range keys {
		r := c.s.routes.Load().match(args[k])
		if r == nil || (route != nil && r != route) {
			c.sendError(fmt.Sprintf("ERR command '%s' mixes keys of different routes", strings.ToUpper(name)))
			return
		}
		route = r
	}
	if len(keys) != 1 || keys[0] != 1 {
		c.sendError(route.Refusal(name))
		return
	}
	c.send(route.Do(ctx, c.proto, name, args))
}

// routedMGet answers MGET: routed keys through their route's GET, the
// others with one MGET upstream; the array keeps the client's order.
func (c *session) routedMGet(ctx context.Context, args [][]byte, keys []int) {
	if len(args) < 2 {
		c.sendError(errArity("mget"))
		return
	}
	parts := make([][]byte, len(args)-1)
	plain := [][]byte{args[0]}
	var plainAt []int
	for i := 1; i < len(args); i++ {
		if r := c.s.routes.Load().match(args[i]); r != nil {
			parts[i-1] = r.Do(ctx, c.proto, "get", [][]byte{[]byte("GET"), args[i]})
			if parts[i-1][0] == '-' { // an error inside MGET's array would not be Redis
				c.send(parts[i-1])
				return
			}
		} else {
			plain = append(plain, args[i])
			plainAt = append(plainAt, i-1)
		}
	}
	if len(plain) > 1 {
		out, err := muxCache{c.s.up}.Do(ctx, c.proto, plain)
		if err != nil {
			c.sendError(upstreamError(err))
			return
		}
		elems, ok := splitArray(out[0])
		if !ok || len(elems) != len(plainAt) {
			c.send(out[0])
			return
		}
		for j, at := range plainAt {
			parts[at] = elems[j]
		}
	}
	b := resp.AppendArray(nil, len(parts))
	for _, p := range parts {
		b = append(b, p...)
	}
	c.send(b)
}

// routedMSet answers MSET: each routed pair through its route, the rest
// with one MSET upstream. Unlike Redis it is not atomic across stores.
func (c *session) routedMSet(ctx context.Context, args [][]byte) {
	if len(args) < 3 || len(args)%2 != 1 {
		c.sendError(errArity("mset"))
		return
	}
	plain := [][]byte{args[0]}
	for i := 1; i+1 < len(args); i += 2 {
		if r := c.s.routes.Load().match(args[i]); r != nil {
			if reply := r.Do(ctx, c.proto, "set", [][]byte{[]byte("SET"), args[i], args[i+1]}); reply[0] == '-' {
				c.send(reply)
				return
			}
		} else {
			plain = append(plain, args[i], args[i+1])
		}
	}
	if len(plain) > 1 {
		out, err := muxCache{c.s.up}.Do(ctx, c.proto, plain)
		if err != nil {
			c.sendError(upstreamError(err))
			return
		}
		c.send(out[0])
		return
	}
	c.sendStatus("OK")
}

// routedCount answers DEL, UNLINK and EXISTS: the sum over routed keys
// and one upstream command for the others.
func (c *session) routedCount(ctx context.Context, name string, args [][]byte, keys []int) {
	if len(args) < 2 {
		c.sendError(errArity(name))
		return
	}
	var total int64
	plain := [][]byte{args[0]}
	for i := 1; i < len(args); i++ {
		r := c.s.routes.Load().match(args[i])
		if r == nil {
			plain = append(plain, args[i])
			continue
		}
		reply := r.Do(ctx, c.proto, name, [][]byte{args[0], args[i]})
		if reply[0] != ':' {
			c.send(reply)
			return
		}
		var n int64
		fmt.Sscan(string(reply[1:len(reply)-2]), &n)
		total += n
	}
	if len(plain) > 1 {
		out, err := muxCache{c.s.up}.Do(ctx, c.proto, plain)
		if err != nil {
			c.sendError(upstreamError(err))
			return
		}
		if out[0][0] != ':' {
			c.send(out[0])
			return
		}
		var n int64
		fmt.Sscan(string(out[0][1:len(out[0])-2]), &n)
		total += n
	}
	c.send(resp.AppendInt(nil, total))
}

// splitArray returns the elements of a raw array reply.
func splitArray(b []byte) ([][]byte, bool) {
	br := newByteReader(b)
	head, err := br.ReadSlice('\n')
	if err != nil || len(head) < 4 || head[0] != '*' {
		return nil, false
	}
	var n int
	fmt.Sscan(string(head[1:len(head)-2]), &n)
	elems := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		e, err := resp.AppendReply(nil, br)
		if err != nil {
			return nil, false
		}
		elems = append(elems, e)
	}
	return elems, true
}

func newByteReader(b []byte) *bufio.Reader { return bufio.NewReaderSize(bytes.NewReader(b), 64<<10) }
