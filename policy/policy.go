package policy

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Op is one command on one routed key: what a Policy is asked to carry.
// Multi-key commands reach a policy one key at a time (Set splits them).
type Op struct {
	ID    router.ID
	Args  [][]byte // the command, name first; Args[1] is the key
	Proto int      // the client's RESP version (2 or 3)
}

func (o Op) key() string  { return string(o.Args[1]) }
func (o Op) name() string { return o.ID.Name() }

// Policy is a route's caching policy. Each has its type and its file:
// cacheAside (cacheaside.go), writeThrough (writethrough.go), writeBack
// (writeback.go). Reads are the same for all (read.go, with the stampede
// protection of stampede.go); writes are what tells them apart.
//
// Replies are typed (resp.Reply): the session encodes them once for the
// client's protocol. Hits carry Redis' own bytes (resp.Raw), which are
// already in that protocol.
type Policy interface {
	// Read answers a read command (GET, HGET, HGETALL, EXISTS, TTL, ...).
	Read(ctx context.Context, o Op) resp.Reply
	// Write carries a write command outside MULTI.
	Write(ctx context.Context, o Op) resp.Reply
	// Queue prepares a write command inside MULTI: what the session
	// queues on its pinned connection, and what EXEC must do. An error
	// means the transaction must fail at EXEC (EXECABORT), as for a
	// command Redis refuses while queueing.
	Queue(ctx context.Context, o Op) (*Queued, error)
	// Prepare runs q's PostgreSQL part inside tx, before Redis' EXEC, and
	// returns the command's reply (policies that write PostgreSQL later
	// do nothing and return a zero Reply).
	Prepare(ctx context.Context, tx pgx.Tx, q *Queued) (resp.Reply, error)
	// Finish is called after EXEC: committed reports whether the
	// transaction took effect in Redis and PostgreSQL (the cache then
	// follows PostgreSQL); elem is the command's element of EXEC's reply.
	// It returns the command's reply.
	Finish(ctx context.Context, q *Queued, elem []byte, committed bool) resp.Reply
}

// traits are what a route's policy decides for the code every policy
// shares (the fill, the write's steps, transactions, flushes), decided
// once, with the policy, by newPolicy: nothing else looks at the
// configured policy's name.
type traits struct {
	// queued: a write is acknowledged once it is in the route's durable
	// queue and reaches PostgreSQL later, from the flusher (write-back).
	queued bool
	// stores: a write stores the written row in the cache, and a fill is
	// guarded by the key's write generation so that it never replaces a
	// newer write (write-through). Without it a write deletes the cached
	// copy (cache-aside).
	stores bool
}

// newPolicy builds route r's policy and its traits.
func newPolicy(r *Route) (Policy, traits) {
	switch r.cfg.Policy {
	case config.WriteThrough:
		return &writeThrough{reader{r}}, traits{stores: true}
	case config.WriteBack:
		return newWriteBack(r), traits{queued: true}
	default:
		return &cacheAside{reader{r}}, traits{}
	}
}

// The commands a route serves, by format: json (one JSON object per row),
// hash (one field per column) and value (one column).
var formatCommands = map[config.Format]map[router.ID]bool{
	config.FormatJSON: ids(router.CmdGet, router.CmdSet, router.CmdSetex, router.CmdGetdel, router.CmdMget,
		router.CmdMset, router.CmdDel, router.CmdUnlink, router.CmdExists, router.CmdTtl, router.CmdPttl, router.CmdExpire, router.CmdType),
	config.FormatHash: ids(router.CmdHget, router.CmdHmget, router.CmdHgetall, router.CmdHset, router.CmdHmset,
		router.CmdHdel, router.CmdHexists, router.CmdHlen, router.CmdHkeys, router.CmdHvals, router.CmdHincrby,
		router.CmdDel, router.CmdUnlink, router.CmdExists, router.CmdType),
	config.FormatValue: ids(router.CmdGet, router.CmdSet, router.CmdMget, router.CmdMset, router.CmdDel,
		router.CmdUnlink, router.CmdExists, router.CmdIncr, router.CmdIncrby, router.CmdDecr, router.CmdDecrby,
		router.CmdIncrbyfloat, router.CmdGetset, router.CmdType),
}

// readCommands only read.
var readCommands = ids(router.CmdGet, router.CmdMget, router.CmdHget, router.CmdHmget, router.CmdHgetall,
	router.CmdHexists, router.CmdHlen, router.CmdHkeys, router.CmdHvals, router.CmdExists, router.CmdTtl, router.CmdPttl,
	router.CmdType)

func ids(list ...router.ID) map[router.ID]bool {
	m := make(map[router.ID]bool, len(list))
	for _, id := range list {
		m[id] = true
	}
	return m
}

// Supported reports whether a route of format serves command id.
func Supported(format config.Format, id router.ID) bool { return formatCommands[format][id] }

// IsRead reports whether command id only reads.
func IsRead(id router.ID) bool { return readCommands[id] }
