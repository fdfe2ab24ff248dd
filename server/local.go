package server

import (
	"crypto/subtle"
	"strconv"

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
)

func errArity(cmd string) string {
	return "ERR wrong number of arguments for '" + cmd + "' command"
}

// local answers HELLO, AUTH, QUIT and RESET, which concern the client's
// connection to the proxy, not the upstream's.
func (c *session) local(args [][]byte) {
	name := args[0]
	switch {
	case router.Is(name, "quit"):
		c.sendStatus("OK")
		c.quit = true
		c.w.Close()
	case router.Is(name, "reset"):
		c.reset()
		c.sendStatus("RESET")
	case router.Is(name, "auth"):
		c.auth(args)
	case router.Is(name, "hello"):
		c.hello(args)
	case router.Is(name, "info"):
		if !c.authed {
			c.sendError("NOAUTH Authentication required.")
			return
		}
		c.info(args)
	case router.Is(name, "respite"):
		if !c.authed {
			c.sendError("NOAUTH Authentication required.")
			return
		}
		c.respite(args)
	}
}

// auth follows AUTH [username] password. Without requirepass the default
// user has "nopass": AUTH default <any> succeeds and the one-argument form
// is an error, as on Redis.
func (c *session) auth(args [][]byte) {
	var ok bool
	switch len(args) {
	case 2:
		if c.s.cfg.RequirePass == "" {
			c.sendError(errNoPassword)
			return
		}
		ok = c.login("default", args[1])
	case 3:
		ok = c.login(string(args[1]), args[2])
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

// login checks credentials for the default user; success authenticates
// the client, failure leaves its state as it was (as in Redis).
func (c *session) login(user string, pass []byte) bool {
	want := c.s.cfg.RequirePass
	ok := user == "default" && (want == "" || subtle.ConstantTimeCompare(pass, []byte(want)) == 1)
	if ok {
		c.authed = true
	}
	return ok
}

// hello answers HELLO [protover [AUTH user pass] [SETNAME name]] the way
// Redis 7.0 does (src/networking.c helloCommand): the reply is a map of
// server facts in the new protocol; the upstream's version is reported.
func (c *session) hello(args [][]byte) {
	proto := c.proto
	if len(args) > 1 {
		v, err := strconv.Atoi(string(args[1]))
		if err != nil {
			c.sendError("ERR Protocol version is not an integer or out of range")
			return
		}
		if v < 2 || v > 3 {
			c.sendError("NOPROTO unsupported protocol version")
			return
		}
		proto = v
	}
	var user, pass []byte
	var setname []byte
	for i := 2; i < len(args); i++ {
		more := len(args) - i - 1
		switch {
		case router.Is(args[i], "auth") && more >= 2:
			user, pass = args[i+1], args[i+2]
			i += 2
		case router.Is(args[i], "setname") && more >= 1:
			setname = args[i+1]
			i++
		default:
			c.sendError("ERR Syntax error in HELLO option '" + string(args[i]) + "'")
			return
		}
	}
	if user != nil {
		if !c.login(string(user), pass) {
			c.sendError(errWrongPass)
			return
		}
	}
	if !c.authed {
		c.sendError(errHelloAuth)
		return
	}
	if setname != nil {
		if !validName(setname) {
			c.sendError(errBadName)
			return
		}
		c.name = string(setname)
	}
	c.proto = proto
	b := resp.AppendMap(c.out[:0], 7, proto)
	b = resp.AppendBulk(b, "server")
	b = resp.AppendBulk(b, "redis")
	b = resp.AppendBulk(b, "version")
	b = resp.AppendBulk(b, c.s.upstreamVersion())
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
// replies on and, with requirepass, not authenticated.
func (c *session) reset() {
	c.releasePin()
	if c.sub != nil {
		c.sub.unsubscribeAll()
	}
	c.proto = 2
	c.db = c.s.cfg.Upstream.DB
	c.name = ""
	c.reply = replyOn
	c.authed = c.s.cfg.RequirePass == ""
}

// clientLocal answers CLIENT SETNAME, GETNAME, SETINFO, ID and REPLY, which
// are per client: forwarding them would set them on a shared connection.
func (c *session) clientLocal(args [][]byte) {
	sub := args[1]
	switch {
	case router.Is(sub, "setname"):
		if len(args) != 3 {
			c.sendError(errArity("client|setname"))
		} else if !validName(args[2]) {
			c.sendError(errBadName)
		} else {
			c.name = string(args[2])
			c.sendStatus("OK")
		}
	case router.Is(sub, "getname"):
		if len(args) != 2 {
			c.sendError(errArity("client|getname"))
		} else if c.name == "" {
			c.send(resp.AppendNull(c.out[:0], c.proto))
		} else {
			c.send(resp.AppendBulk(c.out[:0], c.name))
		}
	case router.Is(sub, "id"):
		if len(args) != 2 {
			c.sendError(errArity("client|id"))
		} else {
			c.send(resp.AppendInt(c.out[:0], c.id))
		}
	case router.Is(sub, "setinfo"):
		c.setinfo(args)
	case router.Is(sub, "reply"):
		switch {
		case len(args) != 3:
			c.sendError(errArity("client|reply"))
		case router.Is(args[2], "on"):
			c.reply = replyOn
			c.sendStatus("OK")
		case router.Is(args[2], "off"):
			c.reply = replyOff
		case router.Is(args[2], "skip"):
			if c.reply == replyOn {
				c.reply = replySkip
			}
		default:
			c.sendError("ERR syntax error")
		}
	}
}

// setinfo is CLIENT SETINFO LIB-NAME|LIB-VER value, which Redis added in
// 7.2; against an older upstream the proxy answers as that upstream would.
func (c *session) setinfo(args [][]byte) {
	if !versionAtLeast(c.s.upstreamVersion(), 7, 2) {
		c.sendError("ERR unknown subcommand '" + string(args[1]) + "'. Try CLIENT HELP.")
		return
	}
	if len(args) != 4 {
		c.sendError(errArity("client|setinfo"))
		return
	}
	switch {
	case router.Is(args[2], "lib-name"):
		c.libName = string(args[3])
	case router.Is(args[2], "lib-ver"):
		c.libVer = string(args[3])
	default:
		c.sendError("ERR Unrecognized option '" + string(args[2]) + "'")
		return
	}
	c.sendStatus("OK")
}

// versionAtLeast compares a "major.minor.patch" version.
func versionAtLeast(v string, major, minor int) bool {
	var parts [2]int
	for i, f := range splitDots(v) {
		if i < 2 {
			parts[i], _ = strconv.Atoi(f)
		}
	}
	return parts[0] > major || parts[0] == major && parts[1] >= minor
}

func splitDots(v string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(v); i++ {
		if i == len(v) || v[i] == '.' {
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return out
}
