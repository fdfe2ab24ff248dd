package policy

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/backend"
	"github.com/respite/respite/resp"
)

// The proxy's own writes in the change stream. A write-through write on a
// tracked route stores the committed row in the cache itself
// (writethrough.go); its commit, arriving in the stream, must not evict
// what it just stored. So the write tags its transaction with a
// transactional logical message (backend.Tag: pg_logical_emit_message)
// naming the route, the key and its intent's token, and the capture skips
// the tagged key's change when the intent has ended (the token is gone
// from the key's marker): the writer then stored the row it read back
// after its commit, under a fill lease, or deleted the cached copy. While
// the intent is live (the writer still at work, or dead) the change is
// applied like any other. Other changes of a tagged transaction (a
// trigger's, another route's) are applied.

// tagText is the message of one write: route, key and intent token.
func tagText(route, key, token string) string { return route + "\x00" + key + "\x00" + token }

// tags maps route\x00key to the tokens the transaction's messages name.
func tagsOf(txn *backend.Txn) map[string][]string {
	if len(txn.Tags) == 0 {
		return nil
	}
	m := map[string][]string{}
	for _, t := range txn.Tags {
		if i := strings.LastIndexByte(t, 0); i > 0 {
			m[t[:i]] = append(m[t[:i]], t[i+1:])
		}
	}
	return m
}

// tagged reports whether the write of o on a tracked write-through route
// tags its transaction.
func (r *Route) tagged() bool {
	return r.cfg.TrackChanges && r.stores && r.sh.tag.Load()
}

// dbWriteTagged is dbWrite in a transaction of its own that carries the
// write's tag (in: its intent).
func (r *Route) dbWriteTagged(ctx context.Context, o Op, in *intent) (resp.Reply, error) {
	tx, err := r.db.Begin(ctx)
	if err != nil {
		return resp.Reply{}, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := backend.Tag(ctx, tx, tagText(r.cfg.Name, o.key(), in.token)); err != nil {
		return resp.Reply{}, err
	}
	reply, err := r.dbWrite(ctx, tx, o)
	if err != nil {
		return reply, err
	}
	return reply, tx.Commit(ctx)
}

// tagTx tags tx (a MULTI/EXEC transaction) with a write of key.
func (r *Route) tagTx(ctx context.Context, tx pgx.Tx, key string, in *intent) error {
	if !r.tagged() {
		return nil
	}
	return backend.Tag(ctx, tx, tagText(r.cfg.Name, key, in.token))
}

// ownWait bounds how long the capture waits for a tagged write's intent
// to end: the writer finishes right after its commit; one that has not
// by then is taken for dead, and its change applied.
const ownWait = 200 * time.Millisecond

// ownFinished reports whether the writes with tokens on key have ended
// their intents, waiting up to ownWait (the commit often reaches the
// stream before the writer stored its row): the cache then holds what
// they committed, or nothing.
func (c *capture) ownFinished(ctx context.Context, key string, tokens []string) (bool, error) {
	deadline := time.Now().Add(ownWait)
	for _, tok := range tokens {
		for {
			live, err := c.rdb.HExists(ctx, markerKey(key), "w:"+tok).Result()
			if err != nil {
				return false, err
			}
			if !live {
				break
			}
			if time.Now().After(deadline) {
				return false, nil
			}
			sleepCtx(ctx, time.Millisecond)
		}
	}
	return len(tokens) > 0, nil
}

// canTag reports whether the role may emit logical messages.
func (c *capture) canTag(ctx context.Context) bool {
	ok, err := c.db.CanTag(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		c.log.Warn("cannot tell whether the role may run pg_logical_emit_message: write-through writes are not tagged", "err", LogDetail(err))
	}
	return ok
}
