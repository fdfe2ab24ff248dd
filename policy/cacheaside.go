package policy

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/resp"
)

// Cache-aside (lazy loading): reads load the row on a miss (read.go); a
// write goes to PostgreSQL first and then invalidates the cached copy, so
// the next read loads the new row. A failed write leaves the cache
// untouched and answers the error.
type cacheAside struct{ reader }

// Write writes PostgreSQL, then invalidates the cached copy.
func (p *cacheAside) Write(ctx context.Context, o Op) resp.Reply { return p.r.writeDirect(ctx, o) }

// Queue defers the PostgreSQL write to EXEC; Redis queues DEL key.
func (p *cacheAside) Queue(ctx context.Context, o Op) (*Queued, error) {
	return p.r.queueDeferred(ctx, o)
}

// Prepare announces the write (its intent, as write-through's) and runs
// its statements inside the EXEC transaction.
func (p *cacheAside) Prepare(ctx context.Context, tx pgx.Tx, q *Queued) (resp.Reply, error) {
	in, err := p.r.beginIntent(ctx, q.Key())
	if err != nil {
		return resp.Reply{}, err
	}
	q.intent = in
	return p.r.dbWrite(ctx, tx, q.op)
}

// Finish invalidates the cached copy again, whatever the outcome (a read
// between EXEC and the commit may have cached the old row), and ends the
// intent.
func (p *cacheAside) Finish(ctx context.Context, q *Queued, _ []byte, _ bool) resp.Reply {
	if err := p.r.finishWrite(ctx, q.Key(), q.intent, outcomeInvalidate); err != nil {
		p.r.log.Warn("invalidating after a transaction failed", "err", err)
		p.r.afterFailedStep(q.Key(), q.intent)
	}
	q.intent = nil
	return q.reply
}
