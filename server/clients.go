package server

import (
	"bytes"
	"math"
	"strconv"
	"time"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// The CLIENT commands that name clients (LIST, INFO, KILL, UNBLOCK,
// TRACKING ... REDIRECT, GETREDIR, TRACKINGINFO) see Respite's clients, the
// ones that CLIENT ID and HELLO number, and act on the upstream connection
// that serves each: one consistent view, whatever connections the proxy
// keeps to Redis. Error texts and formats follow Redis 7.0's
// src/networking.c (clientCommand, catClientInfoString).

// clientList answers CLIENT LIST [TYPE type | ID id ...].
func (c *session) clientList(cmd *router.Command) {
	args := cmd.Args
	var rows []*session
	switch {
	case len(args) == 4 && router.IsOption(args[2], "type"):
		typ, ok := clientType(args[3])
		if !ok {
			c.sendError("ERR Unknown client type '" + string(args[3]) + "'")
			return
		}
		for _, s := range c.s.sortedSessions() {
			if s.view().clientType() == typ {
				rows = append(rows, s)
			}
		}
	case len(args) > 3 && router.IsOption(args[2], "id"):
		for _, a := range args[3:] {
			id, err := strconv.ParseInt(string(a), 10, 64)
			if err != nil {
				c.sendError("ERR Invalid client ID")
				return
			}
			if s := c.s.session(id); s != nil {
				rows = append(rows, s)
			}
		}
	case len(args) != 2:
		c.sendError("ERR syntax error")
		return
	default:
		rows = c.s.sortedSessions()
	}
	c.publish()
	var b []byte
	for _, s := range rows {
		var current [][]byte
		if s == c {
			current = cmd.Args
		}
		b = appendClientInfo(b, s.view(), current)
		b = append(b, '\n')
	}
	c.sendVerbatim(b)
}

// clientInfoReply answers CLIENT INFO.
func (c *session) clientInfoReply(cmd *router.Command) {
	c.publish()
	b := appendClientInfo(nil, c.view(), cmd.Args)
	c.sendVerbatim(append(b, '\n'))
}

// sendVerbatim sends text as Redis' addReplyVerbatim does: a verbatim
// string (txt) in RESP3, a bulk string in RESP2.
func (c *session) sendVerbatim(text []byte) {
	if c.proto == 3 {
		b := append(c.out[:0], '=')
		b = strconv.AppendInt(b, int64(len(text)+4), 10)
		b = append(b, "\r\ntxt:"...)
		b = append(b, text...)
		c.out = append(b, '\r', '\n')
		c.send(c.out)
		return
	}
	c.send(resp.AppendBulk(c.out[:0], string(text)))
}

// client types of CLIENT LIST TYPE and CLIENT KILL TYPE.
const (
	typeNormal = iota
	typeReplica
	typePubSub
	typeMaster
)

func clientType(b []byte) (int, bool) {
	switch {
	case router.IsOption(b, "normal"):
		return typeNormal, true
	case router.IsOption(b, "slave"), router.IsOption(b, "replica"):
		return typeReplica, true
	case router.IsOption(b, "pubsub"):
		return typePubSub, true
	case router.IsOption(b, "master"):
		return typeMaster, true
	}
	return 0, false
}

func (v view) clientType() int {
	if v.sub+v.psub+v.ssub > 0 {
		return typePubSub
	}
	return typeNormal
}

// appendClientInfo appends the CLIENT LIST line of a session whose state
// is v; the caller's own line shows the command it is running (qbuf,
// argv-mem).
func appendClientInfo(b []byte, v view, current [][]byte) []byte {
	now := time.Now()
	flags := ""
	if v.sub+v.psub > 0 {
		flags += "P"
	}
	if v.multi >= 0 {
		flags += "x"
	}
	if v.blocked {
		flags += "b"
	}
	redir := int64(-1)
	if v.tracking {
		flags += "t"
		redir = v.redirect
	}
	if flags == "" {
		flags = "N"
	}
	qbuf, argvMem := 0, 0
	if current != nil {
		for _, a := range current {
			argvMem += len(a)
		}
		qbuf = len(resp.AppendCommand(nil, current))
	}
	cmd := "NULL"
	if v.lastCmd != router.CmdUnknown {
		cmd = v.lastCmd.Name()
	}
	b = append(b, "id="...)
	b = strconv.AppendInt(b, v.id, 10)
	b = append(b, " addr="...)
	b = append(b, v.addr...)
	b = append(b, " laddr="...)
	b = append(b, v.laddr...)
	b = append(b, " fd="...)
	b = strconv.AppendInt(b, int64(v.fd), 10)
	b = append(b, " name="...)
	b = append(b, v.name...)
	b = append(b, " age="...)
	b = strconv.AppendInt(b, int64(now.Sub(v.created)/time.Second), 10)
	b = append(b, " idle="...)
	b = strconv.AppendInt(b, int64(now.Sub(v.lastActive)/time.Second), 10)
	b = append(b, " flags="...)
	b = append(b, flags...)
	for _, f := range []struct {
		k string
		v int
	}{{"db", v.db}, {"sub", v.sub}, {"psub", v.psub}, {"ssub", v.ssub}, {"multi", v.multi}, {"qbuf", qbuf},
		{"qbuf-free", 0}, {"argv-mem", argvMem}, {"multi-mem", 0}, {"rbs", 0}, {"rbp", 0}, {"obl", 0},
		{"oll", 0}, {"omem", 0}, {"tot-mem", 0}} {
		b = append(b, ' ')
		b = append(b, f.k...)
		b = append(b, '=')
		b = strconv.AppendInt(b, int64(f.v), 10)
	}
	b = append(b, " events=r cmd="...)
	b = append(b, cmd...)
	b = append(b, " user="...)
	b = append(b, v.user...)
	b = append(b, " redir="...)
	b = strconv.AppendInt(b, redir, 10)
	b = append(b, " resp="...)
	b = strconv.AppendInt(b, int64(v.proto), 10)
	return b
}

// clientKill answers CLIENT KILL addr, and CLIENT KILL with filters (ID,
// TYPE, USER, ADDR, LADDR, SKIPME), closing the matching clients of the
// proxy.
func (c *session) clientKill(cmd *router.Command) {
	args := cmd.Args
	var addr, laddr, user string
	var id int64
	typ := -1
	skipme := true
	switch {
	case len(args) == 3:
		addr, skipme = string(args[2]), false // the old form can kill the caller itself
	case len(args) > 3:
		for i := 2; i < len(args); i += 2 {
			more := i+1 < len(args)
			switch opt := args[i]; {
			case router.IsOption(opt, "id") && more:
				n, err := strconv.ParseInt(string(args[i+1]), 10, 64)
				if err != nil || n < 1 {
					c.sendError("ERR client-id should be greater than 0")
					return
				}
				id = n
			case router.IsOption(opt, "type") && more:
				t, ok := clientType(args[i+1])
				if !ok {
					c.sendError("ERR Unknown client type '" + string(args[i+1]) + "'")
					return
				}
				typ = t
			case router.IsOption(opt, "addr") && more:
				addr = string(args[i+1])
			case router.IsOption(opt, "laddr") && more:
				laddr = string(args[i+1])
			case router.IsOption(opt, "user") && more:
				user = string(args[i+1])
			case router.IsOption(opt, "skipme") && more:
				switch {
				case router.IsOption(args[i+1], "yes"):
					skipme = true
				case router.IsOption(args[i+1], "no"):
					skipme = false
				default:
					c.sendError("ERR syntax error")
					return
				}
			default:
				c.sendError("ERR syntax error")
				return
			}
		}
	default:
		c.sendError("ERR syntax error")
		return
	}
	c.publish()
	killed, self := 0, false
	for _, s := range c.s.sortedSessions() {
		v := s.view()
		if addr != "" && v.addr != addr || laddr != "" && v.laddr != laddr ||
			typ != -1 && v.clientType() != typ || id != 0 && s.id != id ||
			user != "" && v.user != user || s == c && skipme {
			continue
		}
		if s == c {
			self = true
		} else {
			s.kill()
		}
		killed++
	}
	if len(args) == 3 {
		if killed == 0 {
			c.sendError("ERR No such client")
		} else {
			c.sendStatus("OK")
		}
	} else {
		c.sendInt(int64(killed))
	}
	if self {
		c.quit.Store(true)
		c.w.Close()
	}
}

// kill closes the session's client connection from another session's
// goroutine: its own goroutine then ends it, which closes its pinned
// connection (Redis frees that client, ending a blocked command).
func (c *session) kill() {
	if nc := c.conn.NetConn(); nc != nil {
		nc.Close()
	}
}

// clientUnblock answers CLIENT UNBLOCK id [TIMEOUT|ERROR]: the client's
// pinned connection is unblocked upstream, if it has one.
func (c *session) clientUnblock(cmd *router.Command) {
	args := cmd.Args
	if len(args) == 4 && !router.IsOption(args[3], "timeout") && !router.IsOption(args[3], "error") {
		c.sendError("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
		return
	}
	id, err := strconv.ParseInt(string(args[2]), 10, 64)
	if err != nil {
		c.sendError("ERR value is not an integer or out of range")
		return
	}
	target := c.s.session(id)
	upID := int64(0)
	if target != nil && target.view().upConn != nil {
		upID = target.view().upConn.ID()
	}
	if upID == 0 {
		c.sendInt(0)
		return
	}
	fwd := [][]byte{args[0], args[1], []byte(strconv.FormatInt(upID, 10))}
	fwd = append(fwd, args[3:]...)
	c.forwardOwn(fwd)
}

// upstreamArgs returns the arguments to send upstream for cmd: as the
// client sent them, except where they name a client (CLIENT TRACKING ...
// REDIRECT id), which is rewritten to the upstream connection serving it.
func (c *session) upstreamArgs(cmd *router.Command) [][]byte {
	if cmd.ID != router.CmdClientTracking {
		return cmd.Args
	}
	for i := 3; i+1 < len(cmd.Args); i++ {
		if !router.IsOption(cmd.Args[i], "redirect") {
			continue
		}
		id, err := strconv.ParseInt(string(cmd.Args[i+1]), 10, 64)
		if err != nil {
			return cmd.Args // Redis says what is wrong with it
		}
		upID := int64(math.MaxInt64) // no such client upstream: Redis refuses
		if t := c.s.session(id); t != nil {
			up := t.view().upConn
			if up == nil {
				// The target has no connection of its own yet: take one
				// for it, so Redis has a client to push to.
				if conn, err := c.s.up.Take(t.view().proto); err == nil {
					t.handOff(conn)
					up = conn
				}
			} else {
				t.wantRelay.Store(true)
			}
			if up != nil {
				if n := up.ID(); n != 0 {
					upID = n
				}
			}
		}
		if c.pin != nil && cmd.Arg(2, "on") {
			c.pin.redirect = id
		}
		out := append([][]byte(nil), cmd.Args...)
		out[i+1] = []byte(strconv.FormatInt(upID, 10))
		return out
	}
	return cmd.Args
}

// rewriteReply turns an upstream connection's id in a reply back into the
// proxy's client id (CLIENT GETREDIR, CLIENT TRACKINGINFO).
func (c *session) rewriteReply(cmd *router.Command, reply []byte) []byte {
	if len(reply) > 0 && reply[0] == '-' {
		if cl := c.s.up.Cluster(); cl != nil {
			return c.pinnedRedirect(cl, reply)
		}
	}
	switch cmd.ID {
	case router.CmdKeys, router.CmdScan, router.CmdRandomkey:
		return c.hideReserved(cmd, reply)
	case router.CmdClientGetredir:
		if len(reply) > 1 && reply[0] == ':' && reply[1] != '-' && string(reply) != ":0\r\n" {
			return resp.AppendInt(nil, c.pin.redirect)
		}
	case router.CmdClientTrackinginfo:
		const field = "$8\r\nredirect\r\n:"
		i := bytes.Index(reply, []byte(field))
		if i < 0 {
			break
		}
		rest := reply[i+len(field):]
		j := bytes.IndexByte(rest, '\r')
		if j <= 0 || rest[0] == '-' || string(rest[:j]) == "0" {
			break
		}
		out := append([]byte(nil), reply[:i+len(field)]...)
		out = strconv.AppendInt(out, c.pin.redirect, 10)
		return append(out, rest[j:]...)
	}
	return reply
}

// sortedSessions returns the connected sessions, oldest first, as Redis
// lists its clients.
func (s *Server) sortedSessions() []*session {
	list := s.snapshot()
	for i := 1; i < len(list); i++ {
		for j := i; j > 0 && list[j].id < list[j-1].id; j-- {
			list[j], list[j-1] = list[j-1], list[j]
		}
	}
	return list
}
