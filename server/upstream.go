package server

import (
	"context"
	"crypto/tls"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
)

// upstream holds the go-redis clients Respite talks to Redis with. There is
// one of each per RESP version, because a client's protocol is fixed by the
// HELLO it sent on connect and raw replies are forwarded as they are.
type upstream struct {
	// shared carries stateless commands; ap multiplexes many clients'
	// commands onto few of its connections as one pipeline.
	mux    [2]*mux
	shared [2]*redis.Client
	ap     [2]*redis.AutoPipeliner
	// autopipeline sends the shared path through go-redis' AutoPipeliner
	// instead of mux (upstream.multiplexer: go-redis).
	autopipeline bool
	// pinned hands out connections that are never returned to a pool
	// (EphemeralConn): read timeout off, no retries, so a blocking command
	// waits as long as the client asked and nothing runs twice.
	pinned [2]*redis.Client
	// free holds reset pinned connections for reuse, per RESP version.
	free [2]chan *redis.Conn
	// timeout bounds one non-blocking round trip.
	timeout time.Duration
	opts    config.Upstream
	tls     *tls.Config // nil without upstream TLS
}

// newUpstream builds the clients; maxPinned caps the connections pinned
// sessions may hold at once (one per client at most, so max_clients).
func newUpstream(cfg config.Upstream, maxPinned int) (*upstream, error) {
	tc, err := upstreamTLS(cfg)
	if err != nil {
		return nil, err
	}
	u := &upstream{timeout: time.Duration(cfg.Timeout), opts: cfg, autopipeline: cfg.Multiplexer == "go-redis", tls: tc}
	muxConns := cfg.MuxConns
	if muxConns == 0 {
		// One per thread running Go code: with gomaxprocs 1 the single
		// connection batches the most commands per write.
		muxConns = min(runtime.GOMAXPROCS(0), 16)
	}
	for i, proto := range []int{2, 3} {
		u.mux[i] = newMux(cfg, proto, muxConns, tc)
		u.shared[i] = redis.NewClient(u.options(proto, cfg.PoolSize, time.Duration(cfg.Timeout)))
		ap, err := u.shared[i].AsyncAutoPipeline()
		if err != nil {
			return nil, err
		}
		u.ap[i] = ap
		// Every pinned session (WATCH, MULTI, BLPOP, SUBSCRIBE, ...) holds a
		// connection of this pool for as long as it lasts: its size must
		// not be a small pool size, or the next session would wait for a
		// free slot (go-redis connections are only dialled on demand).
		u.pinned[i] = redis.NewClient(u.options(proto, max(maxPinned, cfg.PoolSize), -1))
		u.free[i] = make(chan *redis.Conn, cfg.PoolSize)
	}
	return u, nil
}

// options are the go-redis options for one protocol version; readTimeout -1
// disables the socket read deadline.
func (u *upstream) options(proto, pool int, readTimeout time.Duration) *redis.Options {
	return &redis.Options{
		Addr:                  u.opts.Addr,
		Username:              u.opts.Username,
		Password:              u.opts.Password,
		DB:                    u.opts.DB,
		Protocol:              proto,
		DisableIdentity:       true,
		MaxRetries:            -1,
		PoolSize:              pool,
		DialTimeout:           time.Duration(u.opts.DialTimeout),
		ReadTimeout:           readTimeout,
		WriteTimeout:          time.Duration(u.opts.Timeout),
		ContextTimeoutEnabled: true,
		TLSConfig:             u.tls,
	}
}

// index maps a RESP version (2 or 3) to the slot of its clients.
func index(proto int) int {
	if proto == 3 {
		return 1
	}
	return 0
}

// takePinned returns a connection for a pinned session: a reset one kept
// by recycle, or a new go-redis EphemeralConn (closing it closes the
// socket: it never returns to a go-redis pool with its state).
func (u *upstream) takePinned(proto int) *redis.Conn {
	select {
	case cn := <-u.free[index(proto)]:
		return cn
	default:
		return u.pinned[index(proto)].EphemeralConn()
	}
}

// recycle resets a pinned connection whose session ended and keeps it for
// the next one. RESET (https://redis.io/commands/reset) ends MULTI, WATCH,
// subscriptions and MONITOR, selects db 0, turns CLIENT TRACKING and REPLY
// back to defaults, and returns to RESP2 unauthenticated, so the
// connection's own set-up (HELLO with AUTH, SELECT) is sent again; every
// reply is checked, and a connection that does not answer exactly so is
// closed instead.
func (u *upstream) recycle(proto int, cn *redis.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), u.timeout)
	defer cancel()
	want := []string{"+RESET\r\n"}
	cmds := [][]any{{"RESET"}}
	user := u.opts.Username
	if user == "" {
		user = "default"
	}
	switch {
	case proto == 3 && u.opts.Password != "":
		cmds = append(cmds, []any{"HELLO", "3", "AUTH", user, u.opts.Password})
		want = append(want, "")
	case proto == 3:
		cmds = append(cmds, []any{"HELLO", "3"})
		want = append(want, "")
	case u.opts.Password != "":
		cmds = append(cmds, []any{"AUTH", user, u.opts.Password})
		want = append(want, "+OK\r\n")
	}
	if u.opts.DB != 0 {
		cmds = append(cmds, []any{"SELECT", strconv.Itoa(u.opts.DB)})
		want = append(want, "+OK\r\n")
	}
	raws := make([]*redis.RawCmd, len(cmds))
	p := cn.Pipeline()
	for i, args := range cmds {
		raws[i] = redis.NewRawCmd(ctx, args...)
		p.Process(ctx, raws[i])
	}
	p.Exec(ctx)
	for i, r := range raws {
		v, err := r.Result()
		if err != nil || len(v) == 0 || v[0] == '-' || (want[i] != "" && string(v) != want[i]) {
			cn.Close()
			return
		}
	}
	select {
	case u.free[index(proto)] <- cn:
	default:
		cn.Close()
	}
}

// dedicated returns a new single-connection client for a session that owns
// its connection for its whole life (MONITOR). Close it when done.
func (u *upstream) dedicated(proto int) *redis.Client {
	return redis.NewClient(u.options(proto, 1, -1))
}

// version asks the upstream for its redis_version ("7.0.15").
func (u *upstream) version(ctx context.Context) (string, error) {
	info, err := u.shared[0].Info(ctx, "server").Result()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v, nil
		}
	}
	return "", nil
}

func (u *upstream) close() {
	for i := range u.free {
		for done := false; !done; {
			select {
			case cn := <-u.free[i]:
				cn.Close()
			default:
				done = true
			}
		}
	}
	for i := range u.shared {
		u.mux[i].close()
		u.ap[i].Close()
		u.shared[i].Close()
		u.pinned[i].Close()
	}
}
