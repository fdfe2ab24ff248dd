package policy

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Write-through: a write goes to PostgreSQL and, once it committed, the
// cache gets the row as PostgreSQL now holds it, all before the client's
// reply. A failed PostgreSQL write leaves the cache as it was and answers
// the error; with Redis unreachable, writes are refused (the cache could
// not follow). Writers of one key are serialized in the process and, for
// read-modify-write commands, across processes by an advisory lock
// (sqlwrite.go). Reads are cache-aside's.
type writeThrough struct{ reader }

// Write writes PostgreSQL, then stores the row as it is there now.
func (p *writeThrough) Write(ctx context.Context, o Op) resp.Reply { return p.r.writeDirect(ctx, o) }

// Queue defers the PostgreSQL write to EXEC; Redis queues DEL key.
func (p *writeThrough) Queue(ctx context.Context, o Op) (*Queued, error) {
	return p.r.queueDeferred(ctx, o)
}

// Prepare runs the write's statements inside the EXEC transaction.
func (p *writeThrough) Prepare(ctx context.Context, tx pgx.Tx, q *Queued) (resp.Reply, error) {
	return p.r.dbWrite(ctx, tx, q.op)
}

// Finish stores the committed row in the cache, or invalidates the key of
// a transaction that failed after Redis ran it.
func (p *writeThrough) Finish(ctx context.Context, q *Queued, _ []byte, committed bool) resp.Reply {
	var err error
	if committed {
		err = p.r.afterWrite(ctx, q.Key())
	} else {
		err = p.r.invalidate(ctx, q.Key())
	}
	if err != nil {
		p.r.log.Warn("cache update after a transaction failed", "err", err)
	}
	return q.reply
}

// afterWrite brings the cache in line with PostgreSQL after a committed
// write: cache-aside invalidates; write-through stores the row as it is
// now in PostgreSQL (reloaded, so cache == DB even when PostgreSQL
// normalizes the value), falling back to invalidation.
func (r *Route) afterWrite(ctx context.Context, key string) error {
	if r.cfg.Policy != config.WriteThrough {
		return r.invalidate(ctx, key)
	}
	r.invalidated(key)
	rw, err := r.loadRow(ctx, r.db.Pool(), key)
	if err == nil {
		if _, err = r.cache.Do(ctx, 2, [][]byte{cmdDel, []byte(negKey(key))}); err == nil {
			if rw.found {
				err = r.fill(ctx, key, rw, true)
			} else {
				_, err = r.cache.Do(ctx, 2, [][]byte{cmdDel, []byte(key)})
			}
		}
	}
	if err != nil {
		return errors.Join(err, r.invalidate(ctx, key))
	}
	return nil
}
