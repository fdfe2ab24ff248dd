// Package router holds Respite's command table: for each Redis command, how
// the proxy must carry it (forwarded on the shared upstream, pinned to a
// connection of its own, answered locally, or refused).
//
// The classification follows the Redis command docs
// (https://redis.io/commands) and twemproxy's notes/redis.md: any command
// that leaves state on the server connection (MULTI, WATCH, SELECT,
// SUBSCRIBE, CLIENT TRACKING, ...) must not run on a shared connection.
package router

import "strings"

// Class says how the proxy carries a command.
type Class uint8

const (
	// Forward: stateless on the connection; sent on the shared, multiplexed
	// upstream and the reply returned byte for byte. Unknown commands are
	// forwarded too, so the upstream produces Redis' own error.
	Forward Class = iota
	// Transaction: WATCH and MULTI start a pinned session; EXEC, DISCARD
	// and UNWATCH end one (outside a session they are forwarded).
	Transaction
	// Blocking: may block the connection (BLPOP, WAIT, XREAD BLOCK, ...);
	// runs on a connection of its own that the proxy can cancel.
	Blocking
	// PubSub: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE and their UNSUBSCRIBEs.
	PubSub
	// Monitor: MONITOR streams every command; runs on its own connection.
	Monitor
	// Select: SELECT changes the connection's database.
	Select
	// Client: CLIENT subcommands; see ClientSub.
	Client
	// Local: answered by the proxy itself (HELLO, AUTH, QUIT, RESET).
	Local
	// Refused: cannot work through a proxy sharing connections (SYNC,
	// PSYNC, REPLCONF); answered with an error.
	Refused
)

// table maps lower-case command names to their class. Commands not listed
// are Forward.
var table = map[string]Class{
	"watch": Transaction, "multi": Transaction, "exec": Transaction,
	"discard": Transaction, "unwatch": Transaction,

	"blpop": Blocking, "brpop": Blocking, "brpoplpush": Blocking,
	"blmove": Blocking, "blmpop": Blocking, "bzpopmin": Blocking,
	"bzpopmax": Blocking, "bzmpop": Blocking, "wait": Blocking,
	"waitaof": Blocking, "xread": Blocking, "xreadgroup": Blocking,

	"subscribe": PubSub, "psubscribe": PubSub, "ssubscribe": PubSub,
	"unsubscribe": PubSub, "punsubscribe": PubSub, "sunsubscribe": PubSub,

	"monitor": Monitor,
	"select":  Select,
	"client":  Client,

	"hello": Local, "auth": Local, "quit": Local, "reset": Local,
	"respite": Local, // the proxy's admin commands
	"info":    Local, // upstream INFO plus a "# Respite" section

	"sync": Refused, "psync": Refused, "replconf": Refused,
}

// Lookup returns the class of the command whose name is name, in any case.
// It does not allocate.
func Lookup(name []byte) Class { return lookup(table, name) }

// lookup finds name in m (whose keys are lower case) without allocating.
func lookup[V any](m map[string]V, name []byte) V {
	var buf [16]byte
	if len(name) > len(buf) {
		var zero V
		return zero
	}
	for i, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return m[string(buf[:len(name)])]
}

// Name returns the lower-case name of a command, without allocating for
// the commands in the command table and those routes serve.
func Name(name []byte) string {
	if s := lookup(names, name); s != "" {
		return s
	}
	return strings.ToLower(string(name))
}

var names = func() map[string]string {
	m := map[string]string{}
	for k := range table {
		m[k] = k
	}
	for _, k := range []string{"get", "set", "setex", "getdel", "getset", "mget", "mset", "del", "unlink", "exists",
		"ttl", "pttl", "expire", "incr", "incrby", "decr", "decrby", "incrbyfloat", "hget", "hmget", "hgetall",
		"hset", "hmset", "hdel", "hexists", "hlen", "hkeys", "hvals", "hincrby", "lpush", "rpush"} {
		m[k] = k
	}
	return m
}()

// Is reports whether name equals the lower-case word, ignoring case.
func Is(name []byte, word string) bool {
	if len(name) != len(word) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != word[i] {
			return false
		}
	}
	return true
}

// IsBlocking reports whether args (name first) would block when run
// outside MULTI: every Blocking command except XREAD/XREADGROUP without a
// BLOCK option.
func IsBlocking(args [][]byte) bool {
	if Lookup(args[0]) != Blocking {
		return false
	}
	if !Is(args[0], "xread") && !Is(args[0], "xreadgroup") {
		return true
	}
	for _, a := range args[1:] {
		if Is(a, "streams") {
			return false
		}
		if Is(a, "block") {
			return true
		}
	}
	return false
}

// ClientSub says how a CLIENT subcommand is carried.
type ClientSub uint8

const (
	// ClientForward: CLIENT LIST, INFO, KILL, PAUSE, ... are forwarded; they
	// describe or act on the upstream server, not on this connection.
	ClientForward ClientSub = iota
	// ClientLocal: SETNAME, GETNAME, SETINFO, ID and REPLY are per client
	// and answered by the proxy.
	ClientLocal
	// ClientPin: TRACKING, CACHING, NO-EVICT, NO-TOUCH, TRACKINGINFO and
	// GETREDIR change or read per-connection server state; they pin.
	ClientPin
)

var clientSubs = map[string]ClientSub{
	"setname": ClientLocal, "getname": ClientLocal, "setinfo": ClientLocal,
	"id": ClientLocal, "reply": ClientLocal,
	"tracking": ClientPin, "caching": ClientPin, "no-evict": ClientPin,
	"no-touch": ClientPin, "trackinginfo": ClientPin, "getredir": ClientPin,
}

// LookupClient classifies "CLIENT sub ...".
func LookupClient(sub []byte) ClientSub { return lookup(clientSubs, sub) }

// Prefixes finds the route of a key: the longest configured prefix that
// the key starts with.
type Prefixes struct {
	list  []string // longest first
	index []int    // position of list[i] in the caller's slice
}

// NewPrefixes indexes prefixes; Match returns positions in this slice.
func NewPrefixes(prefixes []string) *Prefixes {
	p := &Prefixes{}
	for i, s := range prefixes {
		p.list = append(p.list, s)
		p.index = append(p.index, i)
	}
	for i := 1; i < len(p.list); i++ { // insertion sort, longest first
		for j := i; j > 0 && len(p.list[j]) > len(p.list[j-1]); j-- {
			p.list[j], p.list[j-1] = p.list[j-1], p.list[j]
			p.index[j], p.index[j-1] = p.index[j-1], p.index[j]
		}
	}
	return p
}

// Match returns the index of the longest prefix of key, or -1.
func (p *Prefixes) Match(key []byte) int {
	for i, s := range p.list {
		if len(key) >= len(s) && string(key[:len(s)]) == s {
			return p.index[i]
		}
	}
	return -1
}
