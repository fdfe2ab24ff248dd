// Package upstream owns every connection Respite makes to Redis: the
// shared multiplexed connections (Mux, one set per RESP version), the
// pinned connections sessions take for themselves (Conn, reset and reused
// through a small free list), and the go-redis client the route layer uses
// for cache fills, scripts, locks, streams and pub/sub.
//
// Files: upstream.go (Upstream, its go-redis client, the free list of
// pinned connections), mux.go (the twemproxy-style multiplexer), conn.go
// (a pinned connection and the handshake every connection starts with),
// alive_*.go (the liveness check of an idle pinned connection), tls.go,
// tracking.go (the client-side-caching connection of the in-process
// tiers), cache.go (the route layer's Cache over the multiplexer),
// slots.go (hash slots, CLUSTER SHARDS/SLOTS, MOVED and ASK), cluster.go
// (Cluster: the slot map, a multiplexer pair per primary, the redirect
// loop), sentinel.go (following Sentinel's primary).
package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Upstream is the upstream Redis as the rest of Respite sees it.
type Upstream struct {
	cfg     config.Upstream
	tls     *tls.Config // nil without upstream TLS
	timeout time.Duration

	mux [2]*Mux // shared multiplexed connections, RESP2 and RESP3
	// own are the route layer's multiplexed connections (Cache), logged in
	// with the operator's credentials; they are used instead of mux only
	// while clients' connections log in as a restricted user
	// (clientuser.go), and are not dialled otherwise.
	own [2]*Mux
	// client is the user the connections carrying clients' commands (mux,
	// pinned) log in as; nil: the operator's (upstream.username).
	client atomic.Pointer[login]
	// restricted: RestrictClients ran; the route layer's commands use own
	// from then on (also after a fall back to the operator's user, as
	// connections of mux may still be logged in as the restricted one).
	restricted atomic.Bool
	healMu     sync.Mutex
	healAt     time.Time // the last attempt to create the restricted user again
	healOK     bool      // and whether it succeeded
	onFallback func(error)
	// free holds reset pinned connections for reuse, per RESP version.
	free [2]chan *Conn
	open atomic.Int64 // pinned connections open

	// redis is go-redis (RESP2) for the route layer: fills, scripts,
	// locks, write-back streams, invalidation pub/sub; in upstream.mode
	// cluster it reaches the first seed only (INFO, the version, CLIENT
	// commands of the proxy's own), and routes is a ClusterClient.
	redis  *redis.Client
	routes redis.UniversalClient

	cache *Cache // the route layer's commands on the multiplexed connections

	// cluster carries the shared path in upstream.mode cluster; nil
	// otherwise.
	cluster *Cluster
	// sentinel follows the primary in upstream.mode sentinel; nil
	// otherwise.
	sentinel *sentinel

	mu      sync.Mutex
	version string // redis_version, asked once
	// nodeLists are the free lists of pinned connections per cluster node
	// (upstream.mode cluster), guarded by mu.
	nodeLists map[string]*[2]chan *Conn
}

// New builds the upstream clients for cfg. Nothing is dialled yet: a Redis
// that is down is reported per command, as one that goes down later.
func New(cfg config.Upstream) (*Upstream, error) {
	switch cfg.Mode {
	case "", config.ModeStandalone:
	case config.ModeCluster:
		if len(cfg.Addrs) == 0 {
			return nil, errors.New("upstream.mode cluster needs upstream.addrs")
		}
		// The shared multiplexer and go-redis reach the first seed: for
		// what the proxy asks any node (INFO, the version).
		cfg.Addr = cfg.Addrs[0]
	case config.ModeSentinel:
		if len(cfg.Addrs) == 0 || cfg.MasterName == "" {
			return nil, errors.New("upstream.mode sentinel needs upstream.addrs and upstream.master_name")
		}
	default:
		return nil, errors.New("upstream.mode " + cfg.Mode + " is unknown")
	}
	tc, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	u := &Upstream{cfg: cfg, tls: tc, timeout: time.Duration(cfg.Timeout)}
	u.cache = &Cache{u: u}
	if cfg.Mode == config.ModeSentinel {
		u.sentinel = newSentinel(u, cfg)
		cfg.Addr = u.sentinel.primary() // "" until a sentinel answers
	}
	muxConns := cfg.MuxConns
	if muxConns == 0 {
		// One per thread running Go code: with gomaxprocs 1 the single
		// connection batches the most commands per write.
		muxConns = min(runtime.GOMAXPROCS(0), 16)
	}
	for i, proto := range []int{2, 3} {
		u.mux[i] = newMux(cfg, proto, muxConns, tc)
		u.own[i] = newMux(cfg, proto, muxConns, tc)
		for _, c := range u.mux[i].conns {
			c.login, c.heal = u.clientLogin, u.heal
		}
		u.free[i] = make(chan *Conn, cfg.PoolSize)
		if u.sentinel != nil {
			for _, m := range []*Mux{u.mux[i], u.own[i]} {
				for _, c := range m.conns {
					c.lost = u.sentinel.lost
				}
			}
		}
	}
	if cfg.Mode == config.ModeCluster {
		u.cluster = newCluster(u, cfg, muxConns)
	}
	// One set of go-redis options, RESP2 and no retries (a script is never
	// sent twice), made into each kind's client by go-redis itself.
	opts := &redis.UniversalOptions{
		Addrs:                 []string{cfg.Addr},
		Username:              cfg.Username,
		Password:              cfg.Password,
		DB:                    cfg.DB,
		Protocol:              2,
		DisableIdentity:       true,
		MaxRetries:            -1,
		PoolSize:              cfg.PoolSize,
		DialTimeout:           time.Duration(cfg.DialTimeout),
		ReadTimeout:           time.Duration(cfg.Timeout),
		WriteTimeout:          time.Duration(cfg.Timeout),
		ContextTimeoutEnabled: true,
		TLSConfig:             tc,
	}
	if u.sentinel != nil {
		o := opts.Simple()
		o.Dialer = u.sentinel.dialPrimary
		u.redis = redis.NewClient(o)
		go u.sentinel.run()
		return u, nil
	}
	if cfg.Mode == config.ModeCluster {
		o := *opts
		o.Addrs = cfg.Addrs
		u.routes = redis.NewClusterClient(o.Cluster())
	}
	u.redis = redis.NewClient(opts.Simple())
	return u, nil
}

// index maps a RESP version (2 or 3) to its slot.
func index(proto int) int {
	if proto == 3 {
		return 1
	}
	return 0
}

// Shared returns the multiplexer for clients speaking proto.
func (u *Upstream) Shared(proto int) *Mux { return u.mux[index(proto)] }

// Cluster returns the cluster carrier in upstream.mode cluster, nil in
// the other modes (whose shared path is Shared).
func (u *Upstream) Cluster() *Cluster { return u.cluster }

// SentinelSwitches is how many times Sentinel named a new primary since
// start (upstream.mode sentinel; 0 in the other modes).
func (u *Upstream) SentinelSwitches() int64 {
	if u.sentinel == nil {
		return 0
	}
	return u.sentinel.switches()
}

// Redis returns the go-redis client (RESP2) of the proxy's own commands
// (in upstream.mode cluster: to the first seed).
func (u *Upstream) Redis() *redis.Client { return u.redis }

// RouteRedis returns the go-redis client (RESP2) of the route layer: a
// ClusterClient in upstream.mode cluster, Redis otherwise.
func (u *Upstream) RouteRedis() redis.UniversalClient {
	if u.routes != nil {
		return u.routes
	}
	return u.redis
}

// Timeout bounds one non-blocking round trip.
func (u *Upstream) Timeout() time.Duration { return u.timeout }

// DB is the database clients start in.
func (u *Upstream) DB() int { return u.cfg.DB }

// HasCredentials reports whether Respite logs in to Redis with a password
// of its own (upstream.password).
func (u *Upstream) HasCredentials() bool { return u.cfg.Password != "" }

// Take returns a pinned connection speaking proto: a reset one from the
// free list that is still open, or a new one.
func (u *Upstream) Take(proto int) (*Conn, error) {
	for {
		select {
		case c := <-u.free[index(proto)]:
			if alive(c.nc) {
				return c, nil
			}
			c.Close() // Redis closed it while it was idle (timeout, restart, CLIENT KILL)
			continue
		default:
		}
		cfg, ok := u.primaryConfig()
		if !ok {
			u.sentinel.lost()
			return nil, errNoPrimary
		}
		user, pass := u.clientLogin()
		nc, br, id, err := dial(cfg, u.tls, proto, user, pass)
		if err != nil && u.heal(err) {
			user, pass = u.clientLogin()
			nc, br, id, err = dial(cfg, u.tls, proto, user, pass)
		}
		if err != nil {
			if u.sentinel != nil {
				u.sentinel.lost()
			}
			return nil, err
		}
		u.open.Add(1)
		c := &Conn{nc: nc, br: br, proto: proto, u: u}
		c.id.Store(id)
		if u.sentinel != nil && !u.sentinel.track(c, cfg.Addr) {
			c.Close() // the primary changed while dialling
			return nil, errSwitched
		}
		return c, nil
	}
}

// primaryConfig is the configuration a new connection to the primary is
// dialled with: upstream.addr, or in upstream.mode sentinel the primary
// the sentinel names (ok false while it names none).
func (u *Upstream) primaryConfig() (cfg config.Upstream, ok bool) {
	cfg = u.cfg
	if u.sentinel != nil {
		cfg.Addr = u.sentinel.primary()
	}
	return cfg, cfg.Addr != ""
}

// TakeSlot is Take for a session whose commands are about slot (AnySlot:
// none yet): in upstream.mode cluster the connection is to that slot's
// primary; in the other modes it is Take.
func (u *Upstream) TakeSlot(proto, slot int) (*Conn, error) {
	if u.cluster == nil {
		return u.Take(proto)
	}
	addr, err := u.cluster.NodeAddr(slot)
	if err != nil {
		return nil, err
	}
	return u.TakeAt(proto, addr)
}

// TakeAt is a pinned connection to the cluster node at addr
// (upstream.mode cluster): a reset one of that node's free list, or a new
// one.
func (u *Upstream) TakeAt(proto int, addr string) (*Conn, error) {
	free := u.nodeFree(addr, proto)
	for {
		select {
		case c := <-free:
			if alive(c.nc) {
				return c, nil
			}
			c.Close()
			continue
		default:
		}
		break
	}
	cfg := u.cfg
	cfg.Addr = addr
	user, pass := u.clientLogin()
	nc, br, id, err := dial(cfg, u.tls, proto, user, pass)
	if err != nil {
		return nil, err
	}
	u.open.Add(1)
	c := &Conn{nc: nc, br: br, proto: proto, u: u, addr: addr}
	c.id.Store(id)
	return c, nil
}

// Put ends a session's use of c: in the background, c is reset (RESET,
// https://redis.io/commands/reset: it ends MULTI, WATCH, subscriptions,
// MONITOR, CLIENT TRACKING and NO-EVICT, turns replies on, selects db 0
// and returns to RESP2 unauthenticated), set up again exactly as a new
// connection (HELLO with AUTH, SELECT), and kept for the next session;
// a connection that does not answer exactly so is closed instead.
func (u *Upstream) Put(c *Conn) {
	free := u.free[index(c.proto)]
	if c.addr != "" {
		free = u.nodeFree(c.addr, c.proto)
	}
	go func() {
		if c.br.Buffered() > 0 {
			c.Close() // replies nobody read: the stream cannot be trusted
			return
		}
		proto := c.proto
		user, pass := u.clientLogin()
		id, err := handshake(c.nc, c.br, u.cfg, proto, user, pass, true)
		if err != nil {
			c.Close()
			return
		}
		c.id.Store(id) // RESET keeps the id; HELLO tells it
		select {
		case free <- c:
		default:
			c.Close()
		}
	}()
}

// lookupID finds the id of the connection from addr (its local address)
// in CLIENT LIST; 0 if there is none or Redis cannot be asked.
func (u *Upstream) lookupID(addr string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), u.timeout)
	defer cancel()
	list, err := u.redis.ClientList(ctx).Result()
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(list, "\n") {
		var id int64
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id, _ = strconv.ParseInt(v, 10, 64)
			}
			if f == "addr="+addr {
				return id
			}
		}
	}
	return 0
}

// nodeFree is the free list of reset pinned connections to the cluster
// node at addr, speaking proto.
func (u *Upstream) nodeFree(addr string, proto int) chan *Conn {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.nodeLists == nil {
		u.nodeLists = map[string]*[2]chan *Conn{}
	}
	l := u.nodeLists[addr]
	if l == nil {
		l = &[2]chan *Conn{make(chan *Conn, u.cfg.PoolSize), make(chan *Conn, u.cfg.PoolSize)}
		u.nodeLists[addr] = l
	}
	return l[index(proto)]
}

// NeedsAuth reports whether Redis answers -NOAUTH on a new connection set
// up as the proxy sets up its own (with upstream.password, if any): its
// default user has a password the proxy does not hold (a client's CONFIG
// SET requirepass). ok is false when Redis could not be asked.
func (u *Upstream) NeedsAuth() (needs, ok bool) {
	cfg, ok := u.primaryConfig()
	if !ok {
		return false, false
	}
	cfg.DB = 0
	nc, br, _, err := dial(cfg, u.tls, 2, u.cfg.Username, u.cfg.Password)
	if err != nil {
		return false, false
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(u.timeout))
	if _, err := nc.Write(resp.AppendCommand(nil, strArgs("PING"))); err != nil {
		return false, false
	}
	reply, err := resp.AppendReply(nil, br)
	if err != nil {
		return false, false
	}
	return strings.HasPrefix(string(reply), "-NOAUTH"), true
}

// lookupIDAt is lookupID on the cluster node at node, asked on a
// connection of its own.
func (u *Upstream) lookupIDAt(node, addr string) int64 {
	cfg := u.cfg
	cfg.Addr, cfg.DB = node, 0
	nc, br, _, err := dial(cfg, u.tls, 2, u.cfg.Username, u.cfg.Password)
	if err != nil {
		return 0
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(u.timeout))
	if _, err := nc.Write(resp.AppendCommand(nil, strArgs("CLIENT", "LIST"))); err != nil {
		return 0
	}
	reply, err := resp.AppendReply(nil, br)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(scalar(reply), "\n") {
		var id int64
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id, _ = strconv.ParseInt(v, 10, 64)
			}
			if f == "addr="+addr {
				return id
			}
		}
	}
	return 0
}

// Pinned reports the pinned connections open and those idle in the free
// lists.
func (u *Upstream) Pinned() (open, idle int64) {
	idle = int64(len(u.free[0]) + len(u.free[1]))
	u.mu.Lock()
	for _, l := range u.nodeLists {
		idle += int64(len(l[0]) + len(l[1]))
	}
	u.mu.Unlock()
	return u.open.Load(), idle
}

// Version is the upstream's redis_version ("7.0.15"), asked once; "" while
// Redis cannot be reached.
func (u *Upstream) Version() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.version == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if info, err := u.redis.Info(ctx, "server").Result(); err == nil {
			for _, line := range strings.Split(info, "\n") {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
					u.version = v
				}
			}
		}
	}
	return u.version
}

// Close closes every connection.
func (u *Upstream) Close() {
	drain := func(free chan *Conn) {
		for {
			select {
			case c := <-free:
				c.Close()
			default:
				return
			}
		}
	}
	for i := range u.free {
		drain(u.free[i])
		u.mux[i].close()
		u.own[i].close()
	}
	u.mu.Lock()
	for _, l := range u.nodeLists {
		drain(l[0])
		drain(l[1])
	}
	u.mu.Unlock()
	if u.cluster != nil {
		u.cluster.close()
	}
	if u.sentinel != nil {
		u.sentinel.close()
	}
	u.redis.Close()
	if u.routes != nil {
		u.routes.Close()
	}
}
