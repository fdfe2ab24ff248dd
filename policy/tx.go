package policy

import (
	"context"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Transactions over routed keys. Inside MULTI the session asks the route
// layer how to queue each command on a routed key (Set.Queue): a read is
// queued as it is, a write as its route's policy says (Policy.Queue):
//
//   - cache-aside and write-through: the PostgreSQL write is deferred to
//     EXEC, where every such write of the transaction runs in one
//     PostgreSQL transaction (Set.Begin, Policy.Prepare) that commits only
//     if Redis' EXEC succeeds (Txn.Commit); on Redis the proxy queues
//     "DEL key", so the cached copy is invalidated atomically with the rest
//     and watchers of the key see it change.
//   - write-back: the queue script itself is queued (EVAL), so the cache
//     write and the queue append happen inside the same MULTI.

// Queued is a routed command queued inside MULTI.
type Queued struct {
	// Cmd is what the session queues on its pinned connection.
	Cmd [][]byte
	// Own, when set, is Cmd spelled for a connection logged in as the
	// restricted user of clients (upstream/clientuser.go): it declares
	// only the client's key, so Redis queues it, and it writes the
	// proxy's keys, so the session queues it between an AUTH as the
	// operator's user and one back (server/tx.go).
	Own [][]byte
	// Pos is the command's place in EXEC's reply, set by the session.
	Pos int

	read   bool // a read, queued as it is
	patch  bool // a read after a write of its key: EXEC's element is reply, read in the transaction
	r      *Route
	op     Op         // the client's command, its arguments copied
	float  bool       // write-back INCRBYFLOAT: the script's reply is the command's
	get    bool       // write-back GETSET or SET ... GET: the script's reply (the old value) is the command's
	reply  resp.Reply // Prepare's reply
	intent *intent    // write-through: the write's intent, from Prepare until Finish
}

// Write reports whether q is a write, which EXEC must apply.
func (q *Queued) Write() bool { return !q.read }

// Tracked reports whether the session hands q to Set.Begin: a write, or
// a read of one routed key, whose reply EXEC takes from the PostgreSQL
// transaction when a write of that key comes before it in the MULTI
// (Redis only has the write's queued DEL).
func (q *Queued) Tracked() bool { return !q.read || q.r != nil }

// Key is the Redis key the write touches.
func (q *Queued) Key() string { return q.op.key() }

// needsDB reports whether the write runs in PostgreSQL at EXEC.
func (q *Queued) needsDB() bool { return !q.read && !q.r.queued }

// queueDeferred queues a cache-aside or write-through write: its
// arguments are checked now (a key or value PostgreSQL would refuse makes
// the transaction fail at EXEC), its PostgreSQL write is deferred to EXEC,
// and Redis queues DEL key.
func (r *Route) queueDeferred(ctx context.Context, o Op) (*Queued, error) {
	q := &Queued{r: r, op: Op{ID: o.ID, Args: cloneArgs(o.Args), Proto: o.Proto}}
	if err := r.table.CheckKey(ctx, r.id(o.key())); err != nil {
		return nil, err
	}
	switch o.ID {
	case router.CmdSet, router.CmdSetex, router.CmdGetset:
		value, _, err := parseSet(o)
		if err != nil {
			return nil, err
		}
		if r.cfg.Format == config.FormatJSON {
			if err := r.table.CheckObject(value); err != nil {
				return nil, err
			}
		}
	case router.CmdIncr, router.CmdDecr, router.CmdIncrby, router.CmdDecrby, router.CmdIncrbyfloat:
		if _, _, err := parseIncr(o); err != nil {
			return nil, err
		}
	}
	q.Cmd = [][]byte{cmdDel, o.Args[1]}
	return q, nil
}

func cloneArgs(args [][]byte) [][]byte {
	out := make([][]byte, len(args))
	for i, a := range args {
		out[i] = append([]byte(nil), a...)
	}
	return out
}
