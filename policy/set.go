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
}

// Open connects to PostgreSQL and checks every route's table and columns;
// the error names the route, table and column. Without routes it returns
// nil and no error.
func Open(cfg config.Config, cache Cache, rdb *redis.Client, log *slog.Logger) (*Set, error) {
	if len(cfg.Routes) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	db, err := backend.OpenWith(ctx, cfg.Postgres.DSN, backend.Options{
		LoadConns: cfg.Postgres.MaxConns, FlushConns: cfg.Postgres.FlushConns,
		StatementTimeout: time.Duration(cfg.Postgres.StatementTimeout),
	})
	if err != nil {
		return nil, err // backend errors already name PostgreSQL
	}
	if err := db.Ping(ctx); err != nil {
		db.Close()
		return nil, err
	}
	s := &Set{db: db, cache: cache}
	for _, rc := range cfg.Routes {
		if rc.Policy == config.WriteBack {
			// The version side table: created here when the role may
			// (a single-role deployment), else set up once with
			// respite -setup-db; the error says which.
			if err := db.EnsureMeta(ctx); err != nil {
				db.Close()
				return nil, fmt.Errorf("route %q: %w", rc.Name, err)
			}
			break
		}
	}
	var facts []router.Route
	for _, rc := range cfg.Routes {
		t, err := db.Describe(ctx, rc.Table, rc.KeyColumn, rc.ValueColumn)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("route %q: %w", rc.Name, err)
		}
		// Every policy writes (cache-aside takes writes too): the role
		// needs what the route's writes and flushes do.
		if err := t.CheckAccess(ctx, backend.Access{Route: rc.Name, ValueOnly: rc.Format == config.FormatValue,
			Write: true, WriteBack: rc.Policy == config.WriteBack}); err != nil {
			db.Close()
			return nil, err
		}
		s.list = append(s.list, New(rc, db, t, cache, rdb, log))
		facts = append(facts, router.Route{Name: rc.Name, Prefix: rc.Prefix, Policy: rc.Policy, Format: rc.Format})
	}
	s.routes = router.NewRoutes(facts)
	bg, stop := context.WithCancel(context.Background())
	s.cancel = stop
	go ListenInvalidations(bg, rdb, s.list)
	for _, r := range s.list {
		if r.Config().Policy == config.WriteBack {
			s.flusher = NewFlusher(s.list, rdb, cfg.WriteBack.Consumer, log)
			s.flusher.ClaimIdle = time.Duration(cfg.WriteBack.ClaimIdle)
			go s.flusher.Run(bg)
			break
		}
	}
	return s, nil
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

// Ready reports whether PostgreSQL answers.
func (s *Set) Ready(ctx context.Context) error {
	if s == nil {
		return nil
	}
	return s.db.Ping(ctx)
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

// plain runs args (a command on plain keys only) on the cache tier as it
// is and returns Redis' reply.
func (s *Set) plain(ctx context.Context, proto int, args [][]byte) resp.Reply {
	out, err := s.cache.Do(ctx, proto, args)
	if err != nil {
		return resp.Err("ERR upstream unavailable: " + err.Error())
	}
	return resp.Raw(out[0])
}

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
		reply := s.plain(ctx, proto, plain)
		elems, ok := resp.Elements(reply.Raw)
		if !ok || len(elems) != len(plainAt) {
			return reply
		}
		for j, at := range plainAt {
			parts[at] = resp.Raw(elems[j])
		}
	}
	return resp.Array(parts...)
}

// mset answers MSET: each routed pair through its route's SET, the rest
// with one MSET upstream.
func (s *Set) mset(ctx context.Context, proto int, cmd *router.Command) resp.Reply {
	args := cmd.Args
	plain := [][]byte{args[0]}
	for i, k := range cmd.Keys {
		r := s.route(cmd, i)
		if r == nil {
			plain = append(plain, args[k], args[k+1])
			continue
		}
		if reply := r.Do(ctx, Op{ID: router.CmdSet, Args: [][]byte{cmdSet, args[k], args[k+1]}, Proto: proto}); reply.IsError() {
			return reply
		}
	}
	if len(plain) > 1 {
		return s.plain(ctx, proto, plain)
	}
	return resp.OK()
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
		reply := s.plain(ctx, proto, plain)
		n, ok := reply.AsInt()
		if !ok {
			return reply
		}
		total += n
	}
	return resp.Int(total)
}

// Ensure loads every routed key of cmd into the cache (or the negative
// cache) unless it is there already, so that a WATCH on it is not aborted
// by the proxy's own fill.
func (s *Set) Ensure(ctx context.Context, cmd *router.Command) error {
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
	if IsRead(cmd.ID) {
		for i, k := range cmd.Keys {
			if r := s.route(cmd, i); r != nil && Supported(r.Config().Format, cmd.ID) {
				r.Ensure(ctx, string(cmd.Args[k]))
			}
		}
		return &Queued{Cmd: cmd.Args, read: true}, nil
	}
	if len(cmd.Keys) != 1 || cmd.Keys[0] != 1 || cmd.Route < 0 {
		return nil, redisErr("ERR command '" + strings.ToUpper(cmd.Name()) + "' on several routed keys is not supported inside MULTI")
	}
	r := s.list[cmd.Route]
	if !Supported(r.cfg.Format, cmd.ID) {
		return nil, redisErr(r.Refusal(cmd.Name()))
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
}

// Begin runs the PostgreSQL side of ops in one transaction, not yet
// committed. An error means none of it happened.
func (s *Set) Begin(ctx context.Context, ops []*Queued, proto int) (*Txn, error) {
	t := &Txn{s: s, ops: ops, proto: proto}
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
	for _, op := range ops {
		if !op.needsDB() {
			continue
		}
		op.r.Stats.Writes.Add(1)
		reply, err := op.r.policy.Prepare(ctx, tx, op)
		if err != nil {
			t.Rollback()
			return nil, redisErr(op.r.errorText(err))
		}
		op.reply = reply
	}
	return t, nil
}

// Commit finishes the transaction after Redis' EXEC ran and returned
// execReply (an array): the PostgreSQL transaction commits, the queued
// writes' elements of the array become the commands' own replies, and the
// cache follows PostgreSQL. If the commit fails, the touched keys are
// invalidated and the error returned.
func (t *Txn) Commit(ctx context.Context, execReply []byte) ([]byte, error) {
	if t.tx != nil {
		t.done = true
		if err := t.tx.Commit(ctx); err != nil {
			for _, op := range t.ops {
				op.r.policy.Finish(ctx, op, nil, false)
			}
			return nil, err
		}
	}
	elems, ok := resp.Elements(execReply)
	if !ok {
		return execReply, nil
	}
	for _, op := range t.ops {
		if op.Pos >= len(elems) {
			continue
		}
		if !op.needsDB() {
			op.r.Stats.Writes.Add(1)
		}
		elems[op.Pos] = op.r.policy.Finish(ctx, op, elems[op.Pos], true).AppendTo(nil, t.proto)
	}
	b := resp.AppendArray(nil, len(elems))
	for _, e := range elems {
		b = append(b, e...)
	}
	return b, nil
}

// Rollback abandons the PostgreSQL transaction unless it committed.
func (t *Txn) Rollback() {
	if t.tx != nil && !t.done {
		t.done = true
		if err := t.tx.Rollback(context.Background()); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			t.s.list[0].log.Warn("rolling back a transaction failed", "err", err)
		}
	}
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
