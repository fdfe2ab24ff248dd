package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Set is the route layer at run time: the configured routes (their
// router snapshot and their policies at the same indexes), the PostgreSQL
// pools behind them and the write-back flusher. It answers every command
// the router sent down a routed path: outside MULTI (Do, which splits a
// multi-key command between routes and the plain keyspace and merges the
// replies in the client's order), before WATCH (Ensure), inside MULTI
// (Queue) and around EXEC (Begin, Txn). A reload builds a new Set; the
// zero *Set (nil) has no routes and its methods do nothing.
type Set struct {
	routes  *router.Routes
	list    []*Route
	db      *backend.DB
	flusher *Flusher // nil without write-back routes
	cache   Cache
	cancel  context.CancelFunc
	sh      *shared
	log     *slog.Logger
	meta    bool            // write-back routes: respite_versions is checked (connect)
	capture *capture        // postgres.invalidation.mode logical or notify; nil when off
	bg      context.Context // the background work's, cancelled by Stop
}

// Open builds the route set of cfg (at start-up and on every reload):
// it checks the upstream Redis' eviction and persistence settings for
// write-back routes (durability.go), connects to PostgreSQL and checks
// every route's table, columns and privileges; a configuration error
// names the route, table and column. PostgreSQL unreachable is not an
// error: the set starts with its routes degraded (every command on their
// keys answers an error naming the route and the cause; Ready says why)
// and connects in the background, serving each route once its table is
// described. Redis unreachable is not one either (logged; write-back
// writes wait for the settings to be checked). Without routes it returns
// nil and no error.
func Open(cfg config.Config, cache Cache, rdb redis.UniversalClient, log *slog.Logger) (*Set, error) {
	if len(cfg.Routes) == 0 {
		return nil, nil
	}
	var wbRoutes, wtRoutes, caRoutes []string
	for _, rc := range cfg.Routes {
		switch rc.Policy {
		case config.WriteBack:
			wbRoutes = append(wbRoutes, rc.Name)
		case config.WriteThrough:
			wtRoutes = append(wtRoutes, rc.Name)
		case config.CacheAside:
			caRoutes = append(caRoutes, rc.Name)
		}
	}
	sh := newShared(cfg.WriteBack.Consumer)
	sh.cluster = cfg.Upstream.Mode == config.ModeCluster
	if n := cfg.WriteBack.Replicas(cfg.Upstream.Mode); n > 0 {
		sh.replicas = replicaWait{n: n, timeout: cfg.WriteBack.WaitTimeout(), log: newBurstLog(log)}
	}
	sh.guard = newGuard(rdb, cfg.WriteBack, len(wbRoutes) > 0, log)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	d := sh.guard.check(ctx, true)
	cancel()
	if len(wbRoutes) > 0 && !d.Unreachable && d.Refusal != nil {
		return nil, fmt.Errorf("write-back routes %s refused: %w", strings.Join(wbRoutes, ", "), d.Refusal)
	}
	db, err := backend.OpenWith(context.Background(), cfg.Postgres.DSN, backend.Options{
		LoadConns: cfg.Postgres.MaxConns, FlushConns: cfg.Postgres.FlushConns,
		StatementTimeout: time.Duration(cfg.Postgres.StatementTimeout),
	})
	if err != nil {
		return nil, err // backend errors already name PostgreSQL
	}
	s := &Set{db: db, cache: cache, sh: sh, log: log}
	var facts []router.Route
	for _, rc := range cfg.Routes {
		r := newRoute(rc, db, nil, cache, rdb, log, sh)
		why := "not ready: PostgreSQL is not connected yet"
		r.down.Store(&why)
		s.list = append(s.list, r)
		facts = append(facts, router.Route{Name: rc.Name, Prefix: rc.Prefix, Policy: rc.Policy, Format: rc.Format})
	}
	s.routes = router.NewRoutes(facts)
	ctx, cancel = context.WithTimeout(context.Background(), 15*time.Second)
	err = s.connect(ctx)
	cancel()
	if err != nil && !backend.Unreachable(err) {
		db.Close()
		return nil, err
	}
	bg, stop := context.WithCancel(context.Background())
	s.cancel, s.bg = stop, bg
	if err != nil {
		s.degrade(err)
		log.Error("PostgreSQL unreachable at start-up: the routes answer an error until it is back; the proxy connects in the background, plain keys are not affected",
			"err", LogDetail(err), "routes", len(s.list))
		go s.reconnect(bg)
	}
	go ListenInvalidations(bg, rdb, s.list)
	if m := cfg.Postgres.Invalidation.Mode; m == config.InvalidationLogical || m == config.InvalidationNotify {
		s.capture = newCapture(cfg, db, rdb, cache, s.list, sh, log)
		go s.capture.run(bg)
	}
	go sh.guard.run(bg)
	if len(wtRoutes) > 0 || len(caRoutes) > 0 {
		// This instance's intents from before its restart are dead:
		// resolve them before serving (writethrough.go). The sweep also
		// settles keys whose cache step failed (unsettled.go).
		own := d.Unreachable || !s.resolve(bg, true)
		go s.sweep(bg, own)
	}
	if len(wbRoutes) > 0 {
		s.flusher = NewFlusher(s.list, rdb, cfg.WriteBack.Consumer, log)
		s.flusher.ClaimIdle = time.Duration(cfg.WriteBack.ClaimIdle)
		s.flusher.flushedBefore = db.Flushed
		go s.flusher.Run(bg)
	}
	return s, nil
}

// connect describes and checks the table of every route not ready yet,
// making each ready as it goes. The first error stops it.
func (s *Set) connect(ctx context.Context) error {
	if err := s.db.Ping(ctx); err != nil {
		return err
	}
	for _, r := range s.list {
		rc := r.cfg
		if r.Unready() == nil {
			continue
		}
		if r.queued && !s.meta {
			// The version side table: created here when the role may
			// (a single-role deployment), else set up once with
			// respite -setup-db; the error says which.
			if err := s.db.EnsureMeta(ctx); err != nil {
				return fmt.Errorf("route %q: %w", rc.Name, err)
			}
			s.meta = true
		}
		t, err := s.db.DescribeKey(ctx, rc.Table, backend.Key{Columns: rc.Keys(), Separator: rc.KeySeparator}, rc.ValueColumn)
		if err != nil {
			return fmt.Errorf("route %q: %w", rc.Name, err)
		}
		// Every policy writes (cache-aside takes writes too): the role
		// needs what the route's writes and flushes do.
		if err := t.CheckAccess(ctx, backend.Access{Route: rc.Name, ValueOnly: rc.Format == config.FormatValue,
			Write: true, WriteBack: r.queued}); err != nil {
			return err
		}
		r.table = t
		r.down.Store(nil)
	}
	return nil
}

// degrade records err as the reason of every route not ready yet.
func (s *Set) degrade(err error) {
	why := "not ready: PostgreSQL is unreachable (" + oneLine(err.Error()) + "); the proxy connects in the background and serves this route once it answers"
	if !backend.Unreachable(err) {
		why = "not ready: " + oneLine(err.Error()) + "; the proxy checks again in the background"
	}
	for _, r := range s.list {
		if r.Unready() != nil {
			r.down.Store(&why)
		}
	}
}

// reconnectMax bounds the wait between two background connection
// attempts: a route is served at most this long after PostgreSQL answers.
const reconnectMax = 2 * time.Second

// reconnect retries connect with backoff until every route is ready or
// ctx ends, logging each new error once.
func (s *Set) reconnect(ctx context.Context) {
	wait, last := 100*time.Millisecond, ""
	for ctx.Err() == nil {
		sleepCtx(ctx, wait)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := s.connect(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			s.log.Info("PostgreSQL connected: every route is served", "routes", len(s.list))
			return
		}
		s.degrade(err)
		if text := LogDetail(err); text != last {
			last = text
			if backend.Unreachable(err) {
				s.log.Warn("PostgreSQL still unreachable; routes stay degraded", "err", text)
			} else {
				s.log.Error("routes stay degraded: PostgreSQL answers but a route cannot be served; fix it, the proxy checks again", "err", text)
			}
		}
		wait = min(2*wait, reconnectMax)
	}
}

// sweep resolves dead write-through intents (writethrough.go) every
// intentSweep: those past their lease and, while own, this instance's
// earlier runs' (until one pass succeeded); and settles the keys whose
// cache step failed after a write (unsettled.go).
func (s *Set) sweep(ctx context.Context, own bool) {
	for ctx.Err() == nil {
		sleepCtx(ctx, intentSweep)
		own = !s.resolve(ctx, own) && own
	}
}

// resolve makes one pass of sweep over the write-through routes and
// reports whether it reached Redis for all of them.
func (s *Set) resolve(ctx context.Context, own bool) bool {
	ok := true
	for _, r := range s.list {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r.settleAll(cctx)
		n, err := r.ResolveIntents(cctx, own)
		cancel()
		if err != nil {
			ok = false
			continue
		}
		if n > 0 {
			s.log.Warn("write-through writes of a proxy that died were resolved: their keys' cached copies were invalidated",
				"route", r.cfg.Name, "keys", n, "earlier_run", own)
		}
	}
	return ok
}

// Routes is the router snapshot of the set's routes.
func (s *Set) Routes() *router.Routes {
	if s == nil {
		return nil
	}
	return s.routes
}

// List returns the routes.
func (s *Set) List() []*Route {
	if s == nil {
		return nil
	}
	return s.list
}

// RouteFor returns the route of key, or nil.
func (s *Set) RouteFor(key []byte) *Route {
	if s == nil {
		return nil
	}
	if i := s.routes.Match(key); i >= 0 {
		return s.list[i]
	}
	return nil
}

// Flusher returns the write-back flusher (nil without write-back routes).
func (s *Set) Flusher() *Flusher {
	if s == nil {
		return nil
	}
	return s.flusher
}

// Stop ends the set's background work (flusher, invalidation listener);
// a newer set takes over what this one had pending.
func (s *Set) Stop() {
	if s != nil {
		s.cancel()
	}
}

// Close stops the set and closes its PostgreSQL pools.
func (s *Set) Close() {
	if s == nil {
		return
	}
	s.cancel()
	s.db.Close()
}

// Drain flushes the write-back queues until they are empty or ctx ends
// and returns how many entries are left in them (still durable).
func (s *Set) Drain(ctx context.Context) (int64, error) {
	if s == nil || s.flusher == nil {
		return 0, nil
	}
	s.cancel() // stop the background loop; Drain takes over
	return s.flusher.Drain(ctx)
}

// Ready reports whether PostgreSQL answers and every route is served;
// the error names each degraded route and why.
func (s *Set) Ready(ctx context.Context) error {
	if s == nil {
		return nil
	}
	var errs []error
	for _, r := range s.list {
		if err := r.Unready(); err != nil {
			errs = append(errs, fmt.Errorf("route '%s' %w", r.cfg.Name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return s.db.Ping(ctx)
}

// Degraded returns the names of the routes that cannot serve yet.
func (s *Set) Degraded() []string {
	var out []string
	for _, r := range s.List() {
		if r.Unready() != nil {
			out = append(out, r.cfg.Name)
		}
	}
	return out
}

// Capture is what the change capture did (postgres.invalidation), nil
// when it is off.
func (s *Set) Capture() *CaptureStats {
	if s == nil || s.capture == nil {
		return nil
	}
	return &s.capture.Stats
}

// Durability is the last reading of the upstream Redis' eviction and
// persistence settings (durability.go), nil without routes.
func (s *Set) Durability() *Durability {
	if s == nil {
		return nil
	}
	return s.sh.guard.Current()
}

// PoolStats reports the PostgreSQL connections open and idle.
func (s *Set) PoolStats() (total, idle int64) {
	if s == nil {
		return 0, 0
	}
	return s.db.PoolStats()
}

// ErrorText is an error as a client should see it: one line, starting
// with its Redis error code.
func ErrorText(err error) string { return oneLine(err.Error()) }

var cmdSet = []byte("SET")

// route returns the route of cmd's key i (an index into cmd.Keys).
func (s *Set) route(cmd *router.Command, i int) *Route {
	if r := cmd.KeyRoute[i]; r >= 0 {
		return s.list[r]
	}
	return nil
}

// Do answers cmd, a command with routed keys outside MULTI, for a client
// speaking proto. A multi-key command (MGET, MSET, DEL, UNLINK, EXISTS,
// TOUCH) is split between its routes and the plain keyspace and merged in
// the client's order; any other command must have all its keys in one
// route, and the route's policy answers it.
func (s *Set) Do(ctx context.Context, proto int, cmd *router.Command) resp.Reply {
	s.versioned(cmd)
	if cmd.Guarded {
		return s.flush(ctx, cmd)
	}
	switch cmd.Split {
	case router.SplitArray:
		return s.mget(ctx, proto, cmd)
	case router.SplitPairs:
		return s.mset(ctx, proto, cmd)
	case router.SplitSum:
		return s.sum(ctx, proto, cmd)
	}
	if cmd.Route == router.MixedRoutes || !cmd.AllRouted() {
		return resp.Err(fmt.Sprintf("ERR command '%s' mixes keys of different routes", strings.ToUpper(cmd.Name())))
	}
	r := s.list[cmd.Route]
	if len(cmd.Keys) != 1 || cmd.Keys[0] != 1 {
		return resp.Err(r.Refusal(cmd.Name()))
	}
	return r.Do(ctx, Op{ID: cmd.ID, Args: cmd.Args, Proto: proto})
}

// plainRun runs plain, a command over plain keys only whose keys are
// step arguments apart (MGET, DEL, UNLINK, EXISTS, TOUCH: 1; MSET: 2), on
// the cache tier in one round trip: as one command, or on a cluster one
// per key (the keys may be in other slots; Redis Cluster's own MSET is
// per slot too). It returns each command's reply as Redis sent it.
func (s *Set) plainRun(ctx context.Context, proto int, plain [][]byte, step int) ([][]byte, error) {
	cmds := [][][]byte{plain}
	if s.sh.cluster {
		cmds = make([][][]byte, 0, (len(plain)-1)/step)
		for j := 1; j+step <= len(plain); j += step {
			cmds = append(cmds, append([][]byte{plain[0]}, plain[j:j+step]...))
		}
	}
	return s.cache.Do(ctx, proto, cmds...)
}

// unavailable is the reply when the cache tier could not be reached.
func unavailable(err error) resp.Reply { return resp.Err("ERR upstream unavailable: " + err.Error()) }

// mget answers MGET: each route's keys in one round trip for its hits
// (Route.getMany), the plain keys with one MGET upstream; the array keeps
// the client's order. An error from a route is the whole reply: Redis'
// MGET never has one inside its array.
func (s *Set) mget(ctx context.Context, proto int, cmd *router.Command) resp.Reply {
	args := cmd.Args
	parts := make([]resp.Reply, len(cmd.Keys))
	plain := [][]byte{args[0]}
	var plainAt []int
	byRoute := map[int16][]int{} // route → positions in cmd.Keys
	for i, k := range cmd.Keys {
		if r := cmd.KeyRoute[i]; r >= 0 {
			byRoute[r] = append(byRoute[r], i)
			continue
		}
		plain = append(plain, args[k])
		plainAt = append(plainAt, i)
	}
	for r, at := range byRoute {
		route := s.list[r]
		if !Supported(route.cfg.Format, router.CmdGet) {
			return resp.Err(route.Refusal("get"))
		}
		if err := route.Unready(); err != nil {
			return route.fail(err)
		}
		keys := make([][]byte, len(at))
		for j, i := range at {
			keys[j] = args[cmd.Keys[i]]
		}
		for j, reply := range route.getMany(ctx, proto, keys) {
			if reply.IsError() {
				return reply
			}
			parts[at[j]] = reply
		}
	}
	if len(plain) > 1 {
		out, err := s.plainRun(ctx, proto, plain, 1)
		if err != nil {
			return unavailable(err)
		}
		var elems [][]byte
		for _, o := range out {
			e, ok := resp.Elements(o)
			if !ok {
				return resp.Raw(o)
			}
			elems = append(elems, e...)
		}
		if len(elems) != len(plainAt) {
			return resp.Raw(out[0])
		}
		for j, at := range plainAt {
			parts[at] = resp.Raw(elems[j])
		}
	}
	return resp.Array(parts...)
}

// mset answers MSET. Redis' MSET is all or nothing; across Redis and
// PostgreSQL, with no transaction spanning both, it means this: every part
// is checked before any is applied (the arity; for each routed pair that
// the route serves SET and is ready, that the key is canonical and a value
// of the key column, that the value is one the row accepts, that a
// write-back route takes writes), so any part Redis, PostgreSQL or the
// proxy would refuse fails the whole MSET with nothing applied. Then the
// plain pairs go in one MSET upstream (atomic in Redis) and each routed
// pair through its route's SET. Only a backend failing in between (Redis
// or PostgreSQL becoming unreachable, a constraint another writer just
// made fail) can leave the parts before it applied; the error then names
// them.
func (s *Set) mset(ctx context.Context, proto int, cmd *router.Command) resp.Reply {
	args := cmd.Args
	if len(args) < 3 || len(args)%2 == 0 {
		return resp.Err(arity(cmd.Name()).Error())
	}
	plain := [][]byte{args[0]}
	var routed []int // positions in cmd.Keys
	for i, k := range cmd.Keys {
		r := s.route(cmd, i)
		if r == nil {
			plain = append(plain, args[k], args[k+1])
			continue
		}
		if err := r.checkSet(ctx, string(args[k]), args[k+1]); err != nil {
			return r.fail(err)
		}
		routed = append(routed, i)
	}
	var applied []string
	if len(plain) > 1 {
		out, err := s.plainRun(ctx, proto, plain, 2)
		if err != nil {
			return unavailable(err)
		}
		for _, o := range out {
			if len(o) > 0 && o[0] == '-' {
				return resp.Raw(o)
			}
		}
		if len(routed) == 0 {
			return resp.OK()
		}
		for j := 1; j < len(plain); j += 2 {
			applied = append(applied, string(plain[j]))
		}
	}
	for _, i := range routed {
		k := cmd.Keys[i]
		r := s.route(cmd, i)
		reply := r.Do(ctx, Op{ID: router.CmdSet, Args: [][]byte{cmdSet, args[k], args[k+1]}, Proto: proto})
		if reply.IsError() {
			if len(applied) == 0 {
				return reply
			}
			return resp.Err(fmt.Sprintf("ERR MSET applied %s, then failed on %q: %s", quoteList(applied), args[k], strings.TrimPrefix(reply.ErrorText(), "ERR ")))
		}
		applied = append(applied, string(args[k]))
	}
	return resp.OK()
}

// quoteList quotes keys for an error, at most ten of them.
func quoteList(keys []string) string {
	var b strings.Builder
	for i, k := range keys {
		if i == 10 {
			fmt.Fprintf(&b, " and %d more", len(keys)-10)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", k)
	}
	return b.String()
}

// sum answers DEL, UNLINK, EXISTS and TOUCH: the sum over routed keys and
// one upstream command for the others. EXISTS over one route's keys takes
// one round trip for the cached ones (Route.existsMany); writes go key by
// key through their route's policy.
func (s *Set) sum(ctx context.Context, proto int, cmd *router.Command) resp.Reply {
	args := cmd.Args
	var total int64
	plain := [][]byte{args[0]}
	byRoute := map[int16][][]byte{}
	for i, k := range cmd.Keys {
		r := cmd.KeyRoute[i]
		if r < 0 {
			plain = append(plain, args[k])
			continue
		}
		if cmd.ID == router.CmdExists && Supported(s.list[r].cfg.Format, cmd.ID) {
			if err := s.list[r].Unready(); err != nil {
				return s.list[r].fail(err)
			}
			byRoute[r] = append(byRoute[r], args[k])
			continue
		}
		reply := s.list[r].Do(ctx, Op{ID: cmd.ID, Args: [][]byte{args[0], args[k]}, Proto: proto})
		n, ok := reply.AsInt()
		if !ok {
			return reply
		}
		total += n
	}
	for r, keys := range byRoute {
		n, err := s.list[r].existsMany(ctx, keys)
		if err != nil {
			return s.list[r].fail(err)
		}
		total += n
	}
	if len(plain) > 1 {
		out, err := s.plainRun(ctx, proto, plain, 1)
		if err != nil {
			return unavailable(err)
		}
		for _, o := range out {
			n, ok := resp.Raw(o).AsInt()
			if !ok {
				return resp.Raw(o)
			}
			total += n
		}
	}
	return resp.Int(total)
}

// Ensure loads every routed key of cmd into the cache (or the negative
// cache) unless it is there already, so that a WATCH on it is not aborted
// by the proxy's own fill.
func (s *Set) Ensure(ctx context.Context, cmd *router.Command) error {
	s.versioned(cmd)
	for i, k := range cmd.Keys {
		if r := s.route(cmd, i); r != nil {
			if err := r.Ensure(ctx, string(cmd.Args[k])); err != nil {
				return err
			}
		}
	}
	return nil
}

// Queue prepares cmd, a command on routed keys inside MULTI: a read is
// queued as it is, its keys loaded first; a write as its route's policy
// queues it. An error means the command must not be queued: the session
// then makes Redis abort the transaction (EXECABORT), as Redis does for a
// command it refuses while queueing.
func (s *Set) Queue(ctx context.Context, cmd *router.Command) (*Queued, error) {
	s.versioned(cmd)
	if IsRead(cmd.ID) {
		q := &Queued{Cmd: cmd.Args, read: true}
		for i, k := range cmd.Keys {
			if r := s.route(cmd, i); r != nil && Supported(r.Config().Format, cmd.ID) {
				if err := r.Unready(); err != nil {
					return nil, redisErr(r.errorText(err))
				}
				r.Ensure(ctx, string(cmd.Args[k]))
				if len(cmd.Keys) == 1 && k == 1 && r.canonical(string(cmd.Args[1])) {
					q.r, q.op = r, Op{ID: cmd.ID, Args: cloneArgs(cmd.Args), Proto: 2}
				}
			}
		}
		return q, nil
	}
	if len(cmd.Keys) != 1 || cmd.Keys[0] != 1 || cmd.Route < 0 {
		return nil, redisErr("ERR command '" + strings.ToUpper(cmd.Name()) + "' on several routed keys is not supported inside MULTI")
	}
	r := s.list[cmd.Route]
	if !Supported(r.cfg.Format, cmd.ID) {
		return nil, redisErr(r.Refusal(cmd.Name()))
	}
	if err := r.Unready(); err != nil {
		return nil, redisErr(r.errorText(err))
	}
	if len(cmd.Args) > 1 && !r.canonical(string(cmd.Args[1])) {
		return nil, redisErr(r.errorText(r.nonCanonical(ctx, string(cmd.Args[1]))))
	}
	q, err := r.policy.Queue(ctx, Op{ID: cmd.ID, Args: cmd.Args, Proto: 2})
	if err != nil {
		return nil, redisErr(r.errorText(err))
	}
	return q, nil
}

// Txn is the route layer's side of one EXEC with routed writes queued:
// their PostgreSQL statements, run in one database transaction before
// Redis' EXEC and committed only if EXEC ran.
type Txn struct {
	s     *Set
	ops   []*Queued
	proto int
	tx    pgx.Tx // nil when no write needs PostgreSQL (write-back only)
	done  bool

	start   time.Time // Begin: the audit log's duration (audit.go)
	audited bool
}

// Begin runs the PostgreSQL side of ops in one transaction, not yet
// committed. An error means none of it happened.
func (s *Set) Begin(ctx context.Context, ops []*Queued, proto int) (*Txn, error) {
	t := &Txn{s: s, ops: ops, proto: proto, start: time.Now()}
	needDB := false
	for _, op := range ops {
		needDB = needDB || op.needsDB()
	}
	if !needDB {
		return t, nil
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL: %w", err)
	}
	t.tx = tx
	written := map[string]bool{} // route name, NUL, key
	for _, op := range ops {
		if op.read {
			if err := t.readInTx(ctx, op, written); err != nil {
				t.auditTxn(auditError, op.r.errorText(err), nil)
				t.Rollback()
				return nil, redisErr(op.r.errorText(err))
			}
			continue
		}
		if !op.needsDB() {
			continue
		}
		written[op.r.cfg.Name+"\x00"+op.Key()] = true
		op.r.Stats.Writes.Add(1)
		reply, err := op.r.policy.Prepare(ctx, tx, op)
		if execError(err) {
			// Redis fails this command alone at EXEC and runs the others;
			// nothing was written, the transaction goes on.
			reply, err = resp.Err(string(err.(redisErr))), nil
		}
		if err != nil {
			t.auditTxn(auditError, op.r.errorText(err), nil)
			t.Rollback()
			return nil, redisErr(op.r.errorText(err))
		}
		op.reply = reply
	}
	return t, nil
}

// readInTx gives a read queued after a write of its key (written) the
// reply PostgreSQL's transaction has for it then, as Redis would answer
// after its own write; other reads keep Redis' element.
func (t *Txn) readInTx(ctx context.Context, op *Queued, written map[string]bool) error {
	if !written[op.r.cfg.Name+"\x00"+op.Key()] {
		return nil
	}
	rw, err := op.r.loadRow(ctx, t.tx, op.Key())
	if err != nil {
		return err
	}
	if rep, ok := op.r.replyFromRow(op.op, rw); ok {
		op.reply, op.patch = rep, true
	}
	return nil
}

// execError reports whether err is one Redis gives for one command of an
// EXEC, found before anything was written: the row's value cannot take
// the increment (overflow, not a number).
func execError(err error) bool {
	return err == errOverflow || err == errNotInteger || err == errNotFloat
}

// Commit finishes the transaction after Redis' EXEC ran and returned
// execReply (an array): the PostgreSQL transaction commits, the queued
// writes' elements of the array become the commands' own replies, and the
// cache follows PostgreSQL. If the commit fails, the touched keys are
// invalidated and the error returned. A transaction with write-through
// writes that ran longer than their intents' lease (writethrough.go) is
// rolled back instead of committed: other proxies may have taken them
// for dead.
func (t *Txn) Commit(ctx context.Context, execReply []byte) ([]byte, error) {
	if t.tx != nil {
		t.done = true
		err := t.overdue()
		if err != nil {
			t.tx.Rollback(context.WithoutCancel(ctx))
		} else {
			err = t.tx.Commit(ctx)
		}
		if err != nil {
			for _, op := range t.ops {
				if !op.read {
					op.r.policy.Finish(ctx, op, nil, false)
				}
			}
			t.auditTxn(auditError, oneLine(err.Error()), nil)
			return nil, err
		}
	}
	elems, ok := resp.Elements(execReply)
	if !ok {
		t.auditTxn(auditAborted, "", nil)
		t.abandon()
		return execReply, nil
	}
	for _, op := range t.ops {
		if op.Pos >= len(elems) {
			continue
		}
		if op.read {
			if op.patch {
				elems[op.Pos] = op.reply.AppendTo(nil, t.proto)
			}
			continue
		}
		if !op.needsDB() {
			op.r.Stats.Writes.Add(1)
		}
		elems[op.Pos] = op.r.policy.Finish(ctx, op, elems[op.Pos], true).AppendTo(nil, t.proto)
	}
	t.auditTxn("", "", elems)
	t.abandon()
	b := resp.AppendArray(nil, len(elems))
	for _, e := range elems {
		b = append(b, e...)
	}
	return b, nil
}

// overdue says whether a write-through write of t ran past its
// writePhase.
func (t *Txn) overdue() error {
	for _, op := range t.ops {
		if in := op.intent; in != nil && time.Since(in.start) > op.r.writePhase() {
			return fmt.Errorf("the transaction ran %v, longer than write-through's %v: rolled back (docs/OPERATIONS.md, \"Write-through after a crash\")",
				time.Since(in.start).Round(time.Millisecond), op.r.writePhase())
		}
	}
	return nil
}

// abandon ends the intents of write-through writes that were prepared
// but whose PostgreSQL part did not commit: the cached copy stays.
func (t *Txn) abandon() {
	for _, op := range t.ops {
		if op.intent != nil {
			if err := op.r.finishWrite(context.Background(), op.Key(), op.intent, outcomeRefused); err != nil {
				op.r.log.Warn("ending a write-through intent failed", "err", err)
			}
			op.intent = nil
		}
	}
}

// Rollback abandons the PostgreSQL transaction unless it committed.
func (t *Txn) Rollback() {
	t.auditTxn(auditAborted, "", nil) // nothing if Commit logged them
	if t.tx != nil && !t.done {
		t.done = true
		if err := t.tx.Rollback(context.Background()); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			t.s.list[0].log.Warn("rolling back a transaction failed", "err", err)
		}
	}
	t.abandon()
}

// SetupDB creates, as the role of dsn, the schema objects the route layer
// needs in PostgreSQL (the write-back version table; backend.SetupSQL):
// the one-time step of respite -setup-db. The error is safe to show; its
// full detail for a log is backend.Detail's (see LogDetail).
func SetupDB(ctx context.Context, dsn string) error { return backend.Setup(ctx, dsn) }

// LogDetail is err with the PostgreSQL connection details a log may keep
// and a client must not see (user, database, host, port; never a
// password).
func LogDetail(err error) string { return backend.Detail(err) }
