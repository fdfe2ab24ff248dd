package server

import (
	"crypto/subtle"
	"strconv"

	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// Error texts copied from Redis 7.0 (src/server.c, src/networking.c,
// src/acl.c), so clients see what Redis would send.
const (
	errNoPassword = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
	errWrongPass  = "WRONGPASS invalid username-password pair or user is disabled."
	errHelloAuth  = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
	errBadName    = "ERR Client names cannot contain spaces, newlines or special characters."
	errSyntax     = "ERR syntax error"
)

func errArity(cmd string) string {
	return "ERR wrong number of arguments for '" + cmd + "' command"
}

// local answers the commands that concern the client's connection to the
// proxy rather than the upstream's (HELLO, AUTH with requirepass, QUIT,
// RESET, CLIENT ID, SETNAME, GETNAME, SETINFO, REPLY, LIST, INFO, KILL,
// UNBLOCK), or add the proxy's own data (INFO, RESPITE).
func (c *session) local(set *policy.Set, cmd *router.Command) {
	if router.IsRespite(cmd.ID) {
		c.respite(set, cmd)
		return
	}
	if router.IsClusterAnswer(cmd.ID) && c.state().ClusterAnswers {
		c.clusterAnswer(cmd)
		return
	}
	switch cmd.ID {
	case router.CmdQuit:
		c.sendStatus("OK")
		c.quit.Store(true)
		c.w.Close()
	case router.CmdReset:
		c.reset()
		c.sendStatus("RESET")
	case router.CmdAuth:
		c.auth(cmd)
	case router.CmdHello:
		c.hello(cmd)
	case router.CmdInfo:
		c.info(set, cmd)
	case router.CmdClientId:
		c.sendInt(c.id)
	case router.CmdClientSetname:
		if !validName(cmd.Args[2]) {
			c.sendError(errBadName)
			return
		}
		c.client.name = string(cmd.Args[2])
		c.sendStatus("OK")
	case router.CmdClientGetname:
		if c.client.name == "" {
			c.send(resp.AppendNull(c.out[:0], c.proto))
		} else {
			c.send(resp.AppendBulk(c.out[:0], c.client.name))
		}
	case router.CmdClientSetinfo:
		c.setinfo(cmd.Args)
	case router.CmdClientReply:
		c.clientReply(cmd.Args[2])
	case router.CmdClientList:
		c.clientList(cmd)
	case router.CmdClientInfo:
		c.clientInfoReply(cmd)
	case router.CmdClientKill:
		c.clientKill(cmd)
	case router.CmdClientUnblock:
		c.clientUnblock(cmd)
	case router.CmdAclWhoami:
		// The session's connection is logged in as the restricted user
		// (clientuser.go); Redis would name the operator's.
		user := c.s.cfg.Upstream.Username
		if user == "" {
			user = "default"
		}
		c.send(resp.AppendBulk(c.out[:0], user))
	}
}

// clientReply is CLIENT REPLY ON|OFF|SKIP.
func (c *session) clientReply(mode []byte) {
	switch {
	case router.IsOption(mode, "on"):
		c.reply = replyOn
		c.sendStatus("OK")
	case router.IsOption(mode, "off"):
		c.reply = replyOff
	case router.IsOption(mode, "skip"):
		if c.reply == replyOn {
			c.reply = replySkip
		}
	default:
		c.sendError(errSyntax)
	}
}

// auth follows AUTH [username] password when the proxy checks passwords
// (requirepass): only the default user exists.
func (c *session) auth(cmd *router.Command) {
	var ok bool
	switch len(cmd.Args) {
	case 2:
		ok = c.login("default", cmd.Args[1])
	case 3:
		ok = c.login(string(cmd.Args[1]), cmd.Args[2])
	default:
		c.sendError(errArity("auth"))
		return
	}
	if ok {
		c.sendStatus("OK")
	} else {
		c.sendError(errWrongPass)
	}
}

// login checks credentials for the default user against requirepass;
// success authenticates the client, failure leaves its state as it was (as
// in Redis).
func (c *session) login(user string, pass []byte) bool {
	ok := user == "default" && subtle.ConstantTimeCompare(pass, []byte(c.s.cfg.RequirePass)) == 1
	if ok {
		c.authed = true
	}
	return ok
}

// hello answers HELLO [protover [AUTH user pass] [SETNAME name]] the way
// Redis 7.0 does (src/networking.c helloCommand), checking options in
// Redis' order. Without requirepass, AUTH logs in upstream, on the
// session's own connection; a pinned connection is switched to the new
// protocol too, so its replies come in it. The reply is the proxy's:
// the client's id and the upstream's version.
func (c *session) hello(cmd *router.Command) {
	args := cmd.Args
	proto := c.proto
	next := 1
	if len(args) >= 2 {
		v, err := strconv.ParseInt(string(args[1]), 10, 64)
		if err != nil {
			c.sendError("ERR Protocol version is not an integer or out of range")
			return
		}
		if v < 2 || v > 3 {
			c.sendError("NOPROTO unsupported protocol version")
			return
		}
		proto, next = int(v), 2
	}
	for i := next; i < len(args); i++ {
		more := len(args) - 1 - i
		switch {
		case router.IsOption(args[i], "auth") && more >= 2:
			if !c.helloAuth(args[i+1], args[i+2]) {
				return
			}
			i += 2
		case router.IsOption(args[i], "setname") && more >= 1:
			if !validName(args[i+1]) {
				c.sendError(errBadName)
				return
			}
			c.client.name = string(args[i+1])
			i++
		default:
			c.sendError("ERR Syntax error in HELLO option '" + string(args[i]) + "'")
			return
		}
	}
	if !c.authed {
		c.sendError(errHelloAuth)
		return
	}
	if c.pin != nil && c.pin.conn.Proto() != proto {
		reply, err := c.roundTrip([][]byte{[]byte("HELLO"), []byte(strconv.Itoa(proto))})
		if err != nil {
			c.pinLost(err)
			return
		}
		if reply[0] == '-' {
			c.send(reply)
			return
		}
		c.pin.conn.SetProto(proto)
	}
	c.proto = proto
	version := c.s.up.Version()
	if version == "" {
		version = "7.0.0"
	}
	b := resp.AppendMap(c.out[:0], 7, proto)
	b = resp.AppendBulk(b, "server")
	b = resp.AppendBulk(b, "redis")
	b = resp.AppendBulk(b, "version")
	b = resp.AppendBulk(b, version)
	b = resp.AppendBulk(b, "proto")
	b = resp.AppendInt(b, int64(proto))
	b = resp.AppendBulk(b, "id")
	b = resp.AppendInt(b, c.id)
	b = resp.AppendBulk(b, "mode")
	b = resp.AppendBulk(b, "standalone")
	b = resp.AppendBulk(b, "role")
	b = resp.AppendBulk(b, "master")
	b = resp.AppendBulk(b, "modules")
	b = resp.AppendArray(b, 0)
	c.out = b
	c.send(b)
}

// helloAuth is HELLO's AUTH option: checked by the proxy with requirepass,
// otherwise by Redis, on the session's own connection (so the client gets
// that user's permissions). False means the error is sent.
func (c *session) helloAuth(user, pass []byte) bool {
	if c.s.cfg.RequirePass != "" {
		if !c.login(string(user), pass) {
			c.sendError(errWrongPass)
			return false
		}
		return true
	}
	if !c.pinUp(1) {
		return false
	}
	reply, err := c.roundTrip([][]byte{[]byte("AUTH"), user, pass})
	if err != nil {
		c.pinLost(err)
		return false
	}
	if reply[0] == '-' {
		c.sendError(errWrongPass)
		c.maybeUnpin()
		return false
	}
	var cmd router.Command
	router.Classify(&cmd, [][]byte{[]byte("AUTH"), user, pass}, nil)
	c.follow(&cmd, reply)
	c.noteUser(&cmd)
	return true
}

// noteAuth runs after a batch that may have changed what Redis asks of a
// new connection (changesAuth; queued in a MULTI, once the transaction
// ended): a connection set up as the proxy sets up its own is asked PING.
// -NOAUTH means Redis' default user has a password the proxy does not
// hold: the proxy's connections, logged in before, must not answer for
// clients that connect from now on, who get Redis' NOAUTH until they log
// in to Redis themselves, as on Redis.
func (c *session) noteAuth(cmds []router.Command) {
	if c.pin != nil && c.pin.multi {
		return // queued: asked once the transaction ended (authQueued)
	}
	ask := c.authQueued
	for i := 0; i < len(cmds) && !ask; i++ {
		ask = c.changesAuth(&cmds[i])
	}
	if !ask {
		return
	}
	c.authQueued = false
	if needs, ok := c.s.up.NeedsAuth(); ok && needs != c.s.upNoAuth.Load() {
		c.s.upNoAuth.Store(needs)
		c.s.log.Info("whether Redis' default user needs a password the proxy does not hold (then new clients must AUTH to Redis) changed", "needs_auth", needs)
	}
}

// changesAuth reports whether cmd may change what Redis asks of a new
// connection: CONFIG SET of requirepass, ACL SETUSER or DELUSER of the
// default user (or the one the proxy logs in as), ACL LOAD.
func (c *session) changesAuth(cmd *router.Command) bool {
	args := cmd.Args
	switch cmd.ID {
	case router.CmdConfigSet:
		for i := 2; i < len(args); i += 2 {
			if router.IsOption(args[i], "requirepass") {
				return true
			}
		}
	case router.CmdAclSetuser, router.CmdAclDeluser:
		users := args[2:]
		if cmd.ID == router.CmdAclSetuser {
			users = args[2:min(3, len(args))]
		}
		for _, u := range users {
			if string(u) == "default" || c.s.cfg.Upstream.Username != "" && string(u) == c.s.cfg.Upstream.Username {
				return true
			}
		}
	case router.CmdAclLoad:
		return true
	}
	return false
}

// noteUser records the upstream user a successful AUTH logged in as.
func (c *session) noteUser(cmd *router.Command) {
	if c.sameUser(cmd) {
		c.client.user = ""
		return
	}
	c.client.user = "default" // AUTH password
	if len(cmd.Args) == 3 {
		c.client.user = string(cmd.Args[1])
	}
}

// validName follows Redis' rule for client names: printable ASCII, no
// spaces (src/networking.c validateClientName).
func validName(name []byte) bool {
	for _, ch := range name {
		if ch < '!' || ch > '~' {
			return false
		}
	}
	return true
}

// reset is RESET (https://redis.io/commands/reset): leave MULTI/WATCH,
// subscriptions and MONITOR, back to RESP2, the default database, no name,
// replies on and, with requirepass, not authenticated; the admin rights of
// RESPITE AUTH end too, as Redis' RESET ends the user's.
func (c *session) reset() {
	c.releasePin()
	c.proto = 2
	c.db = c.s.cfg.Upstream.DB
	c.client.name, c.client.user, c.client.upstreamAuthed = "", "", false
	c.reply = replyOn
	c.authed = c.s.cfg.RequirePass == "" && !c.s.upNoAuth.Load()
	c.admin.ok, c.admin.attributes = false, false
	c.tx.idle.lost = lostNone
}

// setinfo is CLIENT SETINFO LIB-NAME|LIB-VER value, which Redis added in
// 7.2; against an older upstream the proxy answers as that upstream would.
func (c *session) setinfo(args [][]byte) {
	if !versionAtLeast(c.s.up.Version(), 7, 2) {
		c.sendError("ERR unknown subcommand '" + string(args[1]) + "'. Try CLIENT HELP.")
		return
	}
	switch {
	case router.IsOption(args[2], "lib-name"):
		c.client.libName = string(args[3])
	case router.IsOption(args[2], "lib-ver"):
		c.client.libVer = string(args[3])
	default:
		c.sendError("ERR Unrecognized option '" + string(args[2]) + "'")
		return
	}
	c.sendStatus("OK")
}

// versionAtLeast compares a "major.minor.patch" version.
func versionAtLeast(v string, major, minor int) bool {
	var parts [2]int
	n := 0
	start := 0
	for i := 0; i <= len(v) && n < 2; i++ {
		if i == len(v) || v[i] == '.' {
			parts[n], _ = strconv.Atoi(v[start:i])
			n++
			start = i + 1
		}
	}
	return parts[0] > major || parts[0] == major && parts[1] >= minor
}
