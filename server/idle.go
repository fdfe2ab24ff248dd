package server

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/respite/respite/router"
)

// Idle WATCH/MULTI sessions (transactions.idle_timeout, default off): a
// client that leaves a WATCH or MULTI open longer than the timeout has its
// pinned upstream connection killed (CLIENT KILL ID, which ends MULTI and
// WATCH on Redis), a log line says so, and the transaction it thought it
// had fails clearly at its EXEC instead of running without its guarantees.

// idleState is a session's idle-timeout bookkeeping.
type idleState struct {
	timer *time.Timer
	fired atomic.Bool // set by the timer's goroutine
	armed lostState   // what the running timer would end
	// lost is what an expired session had: lostMulti (commands until EXEC
	// or DISCARD are refused) or lostWatch (its next EXEC fails).
	lost lostState
}

// lostState is the transaction state an idle timeout ended.
type lostState uint8

const (
	lostNone lostState = iota
	lostMulti
	lostWatch
)

func (l lostState) String() string { return [...]string{"", "multi", "watch"}[l] }

const errIdle = "ERR transaction ended by the proxy: WATCH/MULTI idle longer than transactions.idle_timeout"

// armIdle starts the timer after a batch that left WATCH or MULTI open.
func (c *session) armIdle() {
	d := time.Duration(c.s.live.Load().Transactions.IdleTimeout)
	p := c.pin
	if d <= 0 || p == nil || !(p.multi || p.watch) {
		return
	}
	lost := lostWatch
	if p.multi {
		lost = lostMulti
	}
	if conn := p.conn; conn.Addr() != "" {
		// A cluster node's connection: closed, which ends it on that node
		// (an id is only unique per node).
		c.tx.idle.timer = time.AfterFunc(d, func() {
			c.tx.idle.fired.Store(true)
			conn.Close()
			c.s.log.Warn("ended a WATCH/MULTI left open past transactions.idle_timeout", "client", c.id, "state", lost.String(), "idle", d)
		})
		c.tx.idle.armed = lost
		return
	}
	if p.conn.ID() == 0 {
		return // the handshake did not tell the connection's id
	}
	id := p.conn.ID()
	c.tx.idle.timer = time.AfterFunc(d, func() {
		c.tx.idle.fired.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), c.s.up.Timeout())
		defer cancel()
		c.s.up.Redis().ClientKillByFilter(ctx, "ID", formatID(id))
		c.s.log.Warn("ended a WATCH/MULTI left open past transactions.idle_timeout", "client", c.id, "state", lost.String(), "idle", d)
	})
	c.tx.idle.armed = lost
}

// checkIdle runs before a batch: it stops the timer and, if it fired,
// drops the dead pin. It returns the commands the session may still run.
func (c *session) checkIdle() {
	if c.tx.idle.timer == nil {
		return
	}
	c.tx.idle.timer.Stop()
	c.tx.idle.timer = nil
	if c.tx.idle.fired.Swap(false) {
		c.discardPin()
		c.tx.idle.lost = c.tx.idle.armed
	}
}

// idleRefusal answers a command of a session whose transaction expired,
// and reports whether it did.
func (c *session) idleRefusal(cmd *router.Command) bool {
	switch c.tx.idle.lost {
	case lostMulti:
		switch cmd.ID {
		case router.CmdExec:
			c.tx.idle.lost = lostNone
			c.sendError(errIdle)
		case router.CmdDiscard:
			c.tx.idle.lost = lostNone
			c.sendStatus("OK")
		case router.CmdQuit, router.CmdReset:
			c.tx.idle.lost = lostNone
			return false
		default:
			c.sendError(errIdle)
		}
		return true
	case lostWatch:
		switch cmd.ID {
		case router.CmdExec:
			c.tx.idle.lost = lostNone
			if c.pin != nil && c.pin.multi {
				c.discardWith(errIdle)
			} else {
				c.sendError(errIdle)
			}
			return true
		case router.CmdUnwatch, router.CmdDiscard, router.CmdReset:
			c.tx.idle.lost = lostNone
		}
	}
	return false
}

func formatID(id int64) string { return strconv.FormatInt(id, 10) }
