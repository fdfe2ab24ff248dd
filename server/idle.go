package server

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tidwall/redcon"

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
	armed string      // what the running timer would end: "multi" or "watch"
	// lost is what an expired session had: "multi" (commands until EXEC
	// or DISCARD are refused) or "watch" (its next EXEC fails).
	lost string
}

const errIdle = "ERR transaction ended by the proxy: WATCH/MULTI idle longer than transactions.idle_timeout"

// armIdle starts the timer after a batch that left WATCH or MULTI open.
func (c *session) armIdle() {
	d := time.Duration(c.s.live.Load().Transactions.IdleTimeout)
	p := c.pin
	if d <= 0 || p == nil || !(p.multi || p.watch) {
		return
	}
	if p.upID == 0 {
		return // pinUp could not learn the connection's id
	}
	lost := "watch"
	if p.multi {
		lost = "multi"
	}
	id := p.upID
	c.idle.timer = time.AfterFunc(d, func() {
		c.idle.fired.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
		defer cancel()
		c.s.up.shared[0].ClientKillByFilter(ctx, "ID", formatID(id))
		c.s.log.Warn("ended a WATCH/MULTI left open past transactions.idle_timeout", "client", c.id, "state", lost, "idle", d)
	})
	c.idle.armed = lost
}

// checkIdle runs before a batch: it stops the timer and, if it fired,
// drops the dead pin. It returns the commands the session may still run.
func (c *session) checkIdle() {
	if c.idle.timer == nil {
		return
	}
	c.idle.timer.Stop()
	c.idle.timer = nil
	if c.idle.fired.Swap(false) {
		c.unpin()
		c.idle.lost = c.idle.armed
	}
}

// idleRefusal answers a command of a session whose transaction expired,
// and reports whether it did.
func (c *session) idleRefusal(args [][]byte) bool {
	switch c.idle.lost {
	case "multi":
		switch {
		case router.Is(args[0], "exec"):
			c.idle.lost = ""
			c.sendError(errIdle)
		case router.Is(args[0], "discard"):
			c.idle.lost = ""
			c.sendStatus("OK")
		case router.Is(args[0], "quit"), router.Is(args[0], "reset"):
			c.idle.lost = ""
			return false
		default:
			c.sendError(errIdle)
		}
		return true
	case "watch":
		if router.Is(args[0], "exec") {
			c.idle.lost = ""
			if c.pin != nil && c.pin.multi {
				ctx, cancel := context.WithTimeout(context.Background(), c.s.up.timeout)
				c.pin.conn.Do(ctx, "DISCARD")
				cancel()
				c.follow([][]byte{[]byte("DISCARD")}, []byte("+OK\r\n"))
				c.maybeUnpin()
			}
			c.sendError(errIdle)
			return true
		}
		if router.Is(args[0], "unwatch") || router.Is(args[0], "discard") || router.Is(args[0], "reset") {
			c.idle.lost = ""
		}
	}
	return false
}

// runIdle wraps run for sessions with an idle timeout.
func (c *session) runIdle(cmds []redcon.Command) {
	c.checkIdle()
	for i := 0; i < len(cmds); i++ {
		if c.idle.lost != "" && c.idleRefusal(cmds[i].Args) {
			continue
		}
		if c.idle.lost != "" {
			c.run(cmds[i : i+1])
			continue
		}
		c.run(cmds[i:])
		break
	}
	c.armIdle()
}

func formatID(id int64) string { return strconv.FormatInt(id, 10) }
