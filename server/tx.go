package server

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Transactions. A session's WATCH/MULTI state lives on its pinned
// connection, where Redis keeps it; this file adds what the proxy itself
// does around it: routed keys are loaded before a WATCH (so the proxy's own
// fill cannot abort the transaction), routed commands inside MULTI are
// queued by the route layer, commands the proxy answers itself are queued
// as placeholders and answered at EXEC, the route layer's PostgreSQL
// transaction runs around EXEC, and every optimistic transaction's outcome
// is recorded (conflicts.go, gate.go).

// txState is a session's optimistic-transaction metadata.
type txState struct {
	keyset    string     // watched keys of the last optimistic transaction
	attempt   int        // consecutive WATCH aborts on keyset
	lastAbort *abortInfo // retry metadata of the last abort (RESPITE LASTABORT)
	gated     []string   // keys whose contention gate this session holds
	idle      idleState  // transactions.idle_timeout
	inTx      bool       // counted in counts.pinnedTx
	detach    bool       // the EXEC just run subscribed or turned tracking on
	// confirms are the subscription confirmations among that EXEC's
	// elements, for the relay's counts (the relay reads only what comes
	// after EXEC's reply).
	confirms [][]byte
}

// queuedLocal is a command the proxy answers itself, queued inside MULTI:
// a placeholder PING holds its place in EXEC's reply.
type queuedLocal struct {
	pos  int
	args [][]byte
}

// txContext bounds the proxy's own work for one transaction command.
func (c *session) txContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.s.up.Timeout())
}

// watch carries WATCH: routed keys are loaded into the cache first, and
// keys whose conflict rate passed the gate's threshold are taken in FIFO
// order.
func (c *session) watch(set *policy.Set, cmd *router.Command) {
	if cmd.Routed > 0 && !c.state().OtherDB {
		ctx, cancel := c.txContext()
		err := set.Ensure(ctx, cmd)
		cancel()
		if err != nil {
			c.sendError(upstreamError(err))
			return
		}
	}
	c.s.gate.enter(c, cmd.Args[1:])
	c.forwardPinned([]router.Command{*cmd})
}

// queueRouted queues a command on routed keys inside MULTI, as the route
// layer says: reads as they are (their keys loaded first), writes as the
// route's policy queues them. A command the route refuses makes EXEC fail
// (EXECABORT), as a command Redis refuses while queueing does.
func (c *session) queueRouted(set *policy.Set, cmd *router.Command) {
	ctx, cancel := c.txContext()
	defer cancel()
	q, err := set.Queue(ctx, cmd)
	if err != nil {
		c.abortQueue(policy.ErrorText(err))
		return
	}
	if !c.placeRouted(cmd) {
		return
	}
	var reply []byte
	if q.Own != nil && c.ownStepNeeded() {
		reply, err = c.queueOwn(q.Own)
	} else {
		reply, err = c.roundTrip(q.Cmd)
	}
	if err != nil {
		c.pinLost(err)
		return
	}
	if cl := c.s.up.Cluster(); cl != nil {
		reply = c.pinnedRedirect(cl, reply)
	}
	if string(reply) != "+QUEUED\r\n" {
		c.send(reply)
		return
	}
	if q.Tracked() {
		q.Pos = c.pin.queued
		c.pin.ops = append(c.pin.ops, q)
	}
	c.pin.queued++
	c.sendStatus("QUEUED")
}

// ownStepNeeded reports whether the session's connection is logged in as
// the restricted user of clients, so that a routed write queued in its
// MULTI must run as the operator's user.
func (c *session) ownStepNeeded() bool {
	if c.client.user != "" {
		return false // logged in as the client's own user: its rights apply
	}
	user, _ := c.s.up.ClientUser()
	return user != ""
}

// queueOwn queues cmd, a step of the proxy's that writes its own keys,
// inside the client's MULTI on a connection logged in as the restricted
// user: AUTH as the operator's user before it, AUTH as the restricted user
// after it, both run at EXEC, and their replies are taken out of EXEC's
// before the client sees it (pinned.hidden). The reply is cmd's.
func (c *session) queueOwn(cmd [][]byte) ([]byte, error) {
	p := c.pin
	user, pass := c.s.up.ClientUser()
	steps := [][][]byte{c.s.up.OwnLogin(), cmd, {[]byte("AUTH"), []byte(user), []byte(pass)}}
	base := p.queued + len(p.hidden) // the first AUTH's place in EXEC's array
	var reply []byte
	for i, step := range steps {
		got, err := c.roundTrip(step)
		if err != nil {
			return nil, err
		}
		if i == 1 {
			reply = got
			continue
		}
		if string(got) != "+QUEUED\r\n" {
			// Refused while queueing: Redis flags the transaction, and
			// EXEC runs none of it.
			if reply == nil {
				reply = got
			}
			continue
		}
		p.hidden = append(p.hidden, base+i)
	}
	return reply, nil
}

// dropHidden takes the elements at the positions hidden (the replies of
// the AUTHs queueOwn added, ascending) out of EXEC's reply; ok is false
// when one of them is not +OK.
func dropHidden(reply []byte, hidden []int) ([]byte, bool) {
	elems, ok := resp.Elements(reply)
	if !ok {
		return reply, true
	}
	out := resp.AppendArray(nil, len(elems)-len(hidden))
	h := 0
	for i, e := range elems {
		if h < len(hidden) && hidden[h] == i {
			h++
			if string(e) != "+OK\r\n" {
				ok = false
			}
			continue
		}
		out = append(out, e...)
	}
	return out, ok
}

// queueLocal queues a command the proxy answers itself (CLIENT ID, CLIENT
// REPLY, HELLO, ...) inside MULTI: a PING holds its place upstream, and the
// proxy's answer replaces PING's at EXEC, computed then, as Redis would.
func (c *session) queueLocal(cmd *router.Command) {
	reply, err := c.roundTrip([][]byte{[]byte("PING")})
	if err != nil {
		c.pinLost(err)
		return
	}
	if string(reply) != "+QUEUED\r\n" {
		c.send(reply)
		return
	}
	c.pin.locals = append(c.pin.locals, queuedLocal{pos: c.pin.queued, args: cloneArgs(cmd.Args)})
	c.pin.queued++
	c.sendStatus("QUEUED")
}

// abortQueue answers msg and makes Redis discard the transaction at EXEC
// (EXECABORT): an unknown command queued on the pinned connection flags it.
func (c *session) abortQueue(msg string) {
	if _, err := c.roundTrip([][]byte{[]byte("RESPITE-REFUSED-IN-MULTI")}); err != nil {
		c.pinLost(err)
		return
	}
	c.sendError(msg)
}

// exec carries EXEC of a MULTI. With routed writes queued, the route
// layer's PostgreSQL transaction runs them first, and commits only if
// Redis' EXEC ran (an EXEC aborted by WATCH rolls it back); a failed commit
// invalidates the touched keys and answers an error instead of the array.
func (c *session) exec(set *policy.Set, cmd *router.Command) {
	defer c.countPin()
	p := c.pin
	ctx, cancel := c.txContext()
	defer cancel()
	var txn *policy.Txn
	if len(p.ops) > 0 {
		t, err := set.Begin(ctx, p.ops, c.proto)
		if err != nil {
			c.discardWith("EXECABORT Transaction discarded because a routed write failed: " + policy.ErrorText(err))
			return
		}
		txn = t
		defer txn.Rollback()
	}
	locals, hidden := p.locals, p.hidden
	reply, err := c.roundTrip(cmd.Args)
	if err != nil {
		c.pinLost(err)
		return
	}
	if len(hidden) > 0 && reply[0] == '*' {
		var ok bool
		if reply, ok = dropHidden(reply, hidden); !ok {
			// An AUTH of the proxy's own steps failed: the connection may
			// be left logged in as the operator's user. It is not kept.
			c.s.log.Warn("a client's transaction queued write-back writes, and an AUTH the proxy queued around them failed; closing the client", "client", c.id)
			c.send(reply)
			c.pinLost(errors.New("AUTH around the proxy's own steps failed"))
			return
		}
	}
	aborted := resp.IsNull(reply)
	if txn != nil && !aborted && reply[0] != '-' {
		out, err := txn.Commit(ctx, reply)
		if err != nil {
			c.record(aborted, reply)
			c.follow(cmd, reply)
			c.maybeUnpin()
			c.sendError("ERR transaction ran in Redis but the PostgreSQL commit failed; touched keys were invalidated: " + policy.ErrorText(err))
			return
		}
		reply = out
		if n, timeout := txn.ReplicaWait(); n > 0 {
			// Write-back writes ran in this EXEC: acknowledged only once
			// write_back.min_replicas replicas hold their queue entries
			// (policy/replicas.go). WAIT on the EXEC's own connection
			// counts them.
			got, err := c.roundTrip([][]byte{[]byte("WAIT"), []byte(strconv.Itoa(n)), []byte(strconv.FormatInt(timeout.Milliseconds(), 10))})
			if err != nil {
				txn.NoReplicas(0, err) // counted; the client's connection is closed
				c.pinLost(err)
				return
			}
			k, isInt := resp.Raw(got).AsInt()
			if !isInt || k < int64(n) {
				var werr error
				if !isInt {
					werr = errors.New(resp.Raw(got).ErrorText())
				}
				c.record(aborted, reply)
				c.follow(cmd, reply)
				c.maybeUnpin()
				c.sendError(txn.NoReplicas(k, werr))
				return
			}
		}
	}
	out := c.record(aborted, reply)
	c.tx.detach = p.detachAfterExec && !aborted && reply[0] != '-'
	if c.tx.detach {
		c.tx.confirms = confirmsIn(reply)
	}
	c.follow(cmd, reply)
	if len(locals) > 0 && !aborted && reply[0] == '*' {
		if c.answerLocals(set, out, locals) {
			c.maybeUnpin()
			return
		}
	}
	c.maybeUnpin()
	c.send(out)
}

// answerLocals writes EXEC's reply with the proxy's answers in place of
// the placeholders, applying CLIENT REPLY inside the transaction as Redis
// does (each element is a command's reply: OFF drops the rest, SKIP the
// next one). It reports false, having written nothing, if the reply cannot
// be split.
func (c *session) answerLocals(set *policy.Set, reply []byte, locals []queuedLocal) bool {
	elems, ok := resp.Elements(reply)
	if !ok {
		return false
	}
	replyCmds := map[int][]byte{}
	for _, l := range locals {
		if l.pos >= len(elems) {
			continue
		}
		var cmd router.Command
		router.Classify(&cmd, l.args, nil)
		if cmd.ID == router.CmdClientReply {
			replyCmds[l.pos] = l.args[2]
			continue
		}
		elems[l.pos] = c.captureLocal(set, &cmd)
	}
	out := []byte(nil)
	header := resp.AppendArray(nil, len(elems))
	mode := c.reply
	emit := func(b []byte) {
		switch mode {
		case replyOn:
			out = append(out, b...)
		case replySkip:
			mode = replyOn
		}
	}
	emit(header)
	skipNext := false
	for i, e := range elems {
		if m, ok := replyCmds[i]; ok {
			switch {
			case router.IsOption(m, "on"):
				mode = replyOn
				out = append(out, "+OK\r\n"...)
			case router.IsOption(m, "off"):
				mode = replyOff
			case router.IsOption(m, "skip"):
				if mode != replyOff {
					skipNext = true
				}
			default:
				emit(resp.AppendError(nil, errSyntax))
			}
			continue
		}
		if skipNext {
			skipNext = false
			continue
		}
		emit(e)
	}
	c.reply = mode
	if skipNext {
		c.reply = replySkip
	}
	c.w.WriteRaw(out)
	return true
}

// captureLocal runs a local command and returns its reply instead of
// sending it.
func (c *session) captureLocal(set *policy.Set, cmd *router.Command) []byte {
	w, mode := c.w, c.reply
	buf := &bufWriter{}
	c.w, c.reply = buf, replyOn
	c.local(set, cmd)
	c.w, c.reply = w, mode
	if len(buf.b) == 0 {
		return resp.AppendStatus(nil, "OK")
	}
	return buf.b
}

// bufWriter collects replies.
type bufWriter struct{ b []byte }

func (w *bufWriter) WriteRaw(data []byte) { w.b = append(w.b, data...) }
func (w *bufWriter) Close() error         { return nil }

// discardWith ends the transaction upstream and answers msg.
func (c *session) discardWith(msg string) {
	args := [][]byte{[]byte("DISCARD")}
	reply, err := c.roundTrip(args)
	if err != nil {
		c.pinLost(err)
		return
	}
	var cmd router.Command
	router.Classify(&cmd, args, nil)
	c.follow(&cmd, reply)
	c.maybeUnpin()
	c.sendError(msg)
}

// record files one EXEC outcome of the session's optimistic transaction
// and returns the reply to send: for a RESP3 client that asked for it, an
// aborted EXEC carries the retry metadata as an attribute (|) before the
// null.
func (c *session) record(aborted bool, reply []byte) []byte {
	p := c.pin
	if p == nil || len(p.watched) == 0 {
		return reply
	}
	keyset := strings.Join(dedup(p.watched), "\x00")
	if keyset != c.tx.keyset {
		c.tx.keyset, c.tx.attempt = keyset, 0
	}
	c.s.conflicts.record(p.watched, aborted)
	if !aborted {
		c.tx.attempt = 0
		return reply
	}
	c.tx.attempt++
	info := &abortInfo{attempt: c.tx.attempt, retryAfter: retryDelay(c.tx.attempt), watchedKeys: dedup(p.watched)}
	if changed := c.s.conflicts.changedSince(p.watched, p.watchedAt); len(changed) > 0 {
		info.keys, info.known = changed, true
	} else {
		info.keys = info.watchedKeys
	}
	c.tx.lastAbort = info
	if c.proto != 3 || !(c.admin.attributes || c.s.live.Load().Transactions.AbortAttribute) {
		return reply
	}
	b := []byte("|1\r\n")
	b = resp.AppendBulk(b, "respite")
	b = appendAbortInfo(b, info, 3)
	return append(b, reply...)
}
