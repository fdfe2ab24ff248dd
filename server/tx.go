package server

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/tidwall/redcon"

	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Transactions over routed keys and optimistic-locking metadata
// (PRODUCT.md §6). A session's WATCH/MULTI state lives on its pin; this
// file adds what the proxy itself must do: load watched routed keys before
// the WATCH, queue routed writes, run their PostgreSQL side at EXEC in one
// database transaction, and record every optimistic transaction's outcome.

// queued is a routed write inside MULTI and its place in EXEC's reply.
type queued struct {
	pos int
	q   *policy.Queued
}

// watch carries WATCH: routed keys are loaded into the cache first, so the
// proxy's own fill cannot abort the client's transaction; keys whose
// conflict rate passed the gate's threshold are taken in FIFO order.
func (c *session) watch(args [][]byte) {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
	defer cancel()
	if c.pin == nil || !c.pin.multi {
		for _, k := range args[1:] {
			if r := c.s.routes.Load().match(k); r != nil {
				if err := r.Ensure(ctx, string(k)); err != nil {
					c.sendError(upstreamError(err))
					return
				}
			}
		}
	}
	c.pinUp()
	if c.pin.multi { // Redis refuses WATCH inside MULTI; let it say so
		c.forwardPinned([]redcon.Command{{Args: args}})
		return
	}
	c.s.gate.enter(c, args[1:])
	c.forwardPinned([]redcon.Command{{Args: args}})
}

// queueRouted queues a command on a routed key inside MULTI: reads are
// queued as they are (their keys loaded first); writes as the route says.
// A command the route refuses aborts the transaction, as a command Redis
// refuses while queueing does.
func (c *session) queueRouted(ctx context.Context, name string, args [][]byte, keys []int) {
	ctx, cancel := context.WithTimeout(ctx, c.s.up.timeout)
	defer cancel()
	if policy.IsRead(name) {
		for _, k := range keys {
			if r := c.s.routes.Load().match(args[k]); r != nil {
				if policy.Supported(r.Config().Format, name) {
					r.Ensure(ctx, string(args[k]))
				}
			}
		}
		c.forwardPinned([]redcon.Command{{Args: args}})
		return
	}
	r := c.s.routes.Load().match(args[keys[0]])
	if len(keys) != 1 || keys[0] != 1 || r == nil {
		c.abortQueue("ERR command '" + strings.ToUpper(name) + "' on several routed keys is not supported inside MULTI")
		return
	}
	q, err := r.QueueWrite(ctx, name, args)
	if err != nil {
		c.abortQueue(string(trimCRLF(r.Fail(err)[1:])))
		return
	}
	raw := redis.NewRawCmd(ctx, toArgs(q.Cmd)...)
	c.pin.conn.Process(ctx, raw)
	if v, err := raw.Result(); err != nil || string(v) != "+QUEUED\r\n" {
		c.sendRaw(raw)
		if err != nil {
			c.unpin()
		}
		return
	}
	c.pin.ops = append(c.pin.ops, queued{pos: c.pin.queued, q: q})
	c.pin.queued++
	c.sendStatus("QUEUED")
}

// abortQueue answers msg and makes Redis discard the transaction at EXEC
// (EXECABORT): an unknown command queued on the pinned connection flags it.
func (c *session) abortQueue(msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
	defer cancel()
	c.pin.conn.Do(ctx, "RESPITE-REFUSED-IN-MULTI")
	c.sendError(msg)
}

func trimCRLF(b []byte) []byte { return []byte(strings.TrimRight(string(b), "\r\n")) }

// exec carries EXEC on a pinned session. Without routed writes it is
// forwarded. With them: the PostgreSQL writes run first in one database
// transaction, then Redis' EXEC; the database commits only if EXEC ran
// (an EXEC aborted by WATCH rolls it back), and a failed commit invalidates
// the touched keys and answers an error instead of the array.
func (c *session) exec(args [][]byte) {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
	defer cancel()
	defer c.countPin()
	p := c.pin
	ops := p.ops
	var dbOps bool
	for _, op := range ops {
		dbOps = dbOps || op.q.NeedsDB()
	}
	replies := make([][]byte, len(ops))
	var txn pgx.Tx
	if dbOps && p.multi {
		t, err := c.s.routes.Load().db.Begin(ctx)
		if err != nil {
			c.discardWith("EXECABORT Transaction discarded: PostgreSQL: " + oneLine(err.Error()))
			return
		}
		txn = t
		defer t.Rollback(context.WithoutCancel(ctx))
		for i, op := range ops {
			if !op.q.NeedsDB() {
				continue
			}
			reply, err := op.q.Apply(ctx, t, c.proto, nil)
			if err != nil {
				c.discardWith("EXECABORT Transaction discarded because a routed write failed: " + oneLine(err.Error()))
				return
			}
			replies[i] = reply
		}
	}
	raw := redis.NewRawCmd(ctx, toArgs(args)...)
	p.conn.Process(ctx, raw)
	reply, err := raw.Result()
	if err != nil {
		c.sendRaw(raw)
		c.unpin()
		return
	}
	aborted := isNullReply(reply)
	if len(ops) > 0 && !aborted && reply[0] != '-' {
		if txn != nil {
			if err := txn.Commit(ctx); err != nil {
				for _, op := range ops {
					op.q.Abandoned(ctx)
				}
				c.record(aborted, reply)
				c.follow(args, reply)
				c.maybeUnpin()
				c.sendError("ERR transaction ran in Redis but the PostgreSQL commit failed; touched keys were invalidated: " + oneLine(err.Error()))
				return
			}
		}
		elems, ok := splitArray(reply)
		if ok {
			for i, op := range ops {
				if op.pos >= len(elems) {
					continue
				}
				if replies[i] == nil {
					replies[i], _ = op.q.Apply(ctx, nil, c.proto, elems[op.pos])
				}
				elems[op.pos] = replies[i]
			}
			b := resp.AppendArray(nil, len(elems))
			for _, e := range elems {
				b = append(b, e...)
			}
			reply = b
		}
		for _, op := range ops {
			op.q.Committed(ctx)
		}
	}
	out := c.record(aborted, reply)
	c.follow(args, reply)
	c.maybeUnpin()
	c.send(out)
}

// discardWith ends the transaction upstream and answers msg.
func (c *session) discardWith(msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
	defer cancel()
	discard := [][]byte{[]byte("DISCARD")}
	c.pin.conn.Do(ctx, "DISCARD")
	c.follow(discard, []byte("+OK\r\n"))
	c.maybeUnpin()
	c.sendError(msg)
}

func isNullReply(b []byte) bool {
	return string(b) == "*-1\r\n" || string(b) == "_\r\n"
}

func oneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }

// isExec reports whether args is EXEC.
func isExec(args [][]byte) bool { return len(args) > 0 && router.Is(args[0], "exec") }
