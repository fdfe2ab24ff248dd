// Package router decides how Respite carries each command. It holds the
// command table (every Redis command's id, kind, flags, key positions and
// split rule), the route snapshot a command's keys are matched against, the
// Command record that carries those facts through every later layer, and
// Dispatch, the one function that picks a command's path from the session's
// state and the record.
//
// Files: keys_table.go (generated from a redis-server's COMMAND reply by
// ./gen: ids, arity, key ranges, flags), commands.go (this file: the kinds
// and split rules the proxy adds, and lookup by name), keys.go (key
// positions, with the rules for movable-key commands), command.go (the
// Command record, filled once per command by Classify), routes.go (the
// prefix set and route snapshot), dispatch.go (State, Path and Dispatch),
// cluster.go (how a command spreads over a cluster's primaries, the
// positions that choose its slot).
//
// Only this package compares command names; every other package works with
// the ids (CmdGet, CmdClientKill, ...) and kinds a Command carries.
package router

// ID identifies a command, or a container's subcommand ("client|kill" is
// CmdClientKill). The generated ids follow the names in keys_table.go; ids
// of commands newer than that table, and the proxy's own RESPITE, follow
// below. CmdUnknown (0) is a name the table does not know.
type ID uint16

// CmdUnknown is a command the table does not know; it is forwarded so that
// Redis answers with its own error.
const CmdUnknown ID = 0

// Commands missing from the generated table: newer than the redis-server it
// was read from (Redis 7.2 added WAITAOF, CLIENT SETINFO and CLIENT
// NO-TOUCH), and the proxy's admin command family.
const (
	CmdWaitaof ID = numGenerated + iota
	CmdClientSetinfo
	CmdClientNoTouch
	CmdRespite
	CmdRespiteAuth
	CmdRespiteStats
	CmdRespiteRoutes
	CmdRespiteConflicts
	CmdRespiteLastabort
	CmdRespiteAttributes
	CmdRespiteQueue
	CmdRespiteDlq
	CmdRespiteFlush
	CmdRespiteReload
	CmdRespiteVerify
	numIDs
)

// extraNames are the names of the ids above.
var extraNames = [...]string{
	CmdWaitaof - numGenerated:           "waitaof",
	CmdClientSetinfo - numGenerated:     "client|setinfo",
	CmdClientNoTouch - numGenerated:     "client|no-touch",
	CmdRespite - numGenerated:           "respite",
	CmdRespiteAuth - numGenerated:       "respite|auth",
	CmdRespiteStats - numGenerated:      "respite|stats",
	CmdRespiteRoutes - numGenerated:     "respite|routes",
	CmdRespiteConflicts - numGenerated:  "respite|conflicts",
	CmdRespiteLastabort - numGenerated:  "respite|lastabort",
	CmdRespiteAttributes - numGenerated: "respite|attributes",
	CmdRespiteQueue - numGenerated:      "respite|queue",
	CmdRespiteDlq - numGenerated:        "respite|dlq",
	CmdRespiteFlush - numGenerated:      "respite|flush",
	CmdRespiteReload - numGenerated:     "respite|reload",
	CmdRespiteVerify - numGenerated:     "respite|verify",
}

// Flag is a COMMAND flag (or ACL category) the router keeps.
type Flag uint16

const (
	FlagWrite     Flag = 1 << iota // may modify data
	FlagReadonly                   // only reads data
	FlagAdmin                      // server administration (CONFIG, SHUTDOWN, DEBUG, ...)
	FlagNoAuth                     // allowed before AUTH (AUTH, HELLO, QUIT, RESET)
	FlagNoScript                   // not allowed in scripts
	FlagPubSub                     // pub/sub related
	FlagBlocking                   // may block the client
	FlagNoMulti                    // not allowed inside MULTI
	FlagFast                       // O(1) or O(log N)
	FlagLoading                    // allowed while Redis loads its data
	FlagStale                      // allowed on a replica with stale data
	FlagDangerous                  // in the @dangerous ACL category
)

// Kind says how the proxy carries a command, whatever its keys: the request
// kinds of the proxy, as in Envoy's redis_proxy.
type Kind uint8

const (
	// KindPlain leaves no state on the connection: forwarded as it is,
	// on the shared multiplexed connections unless the session is pinned.
	// Unknown commands are plain, so Redis answers with its own error.
	KindPlain Kind = iota
	// KindBlocking may block the connection (BLPOP, WAIT, XREAD BLOCK):
	// it runs on the session's own connection, alone, as long as it waits.
	KindBlocking
	// KindTransaction is MULTI, EXEC, DISCARD, WATCH or UNWATCH.
	KindTransaction
	// KindSubscribe is SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE.
	KindSubscribe
	// KindUnsubscribe is UNSUBSCRIBE, PUNSUBSCRIBE or SUNSUBSCRIBE.
	KindUnsubscribe
	// KindMonitor is MONITOR.
	KindMonitor
	// KindSelect is SELECT: the connection's database.
	KindSelect
	// KindConnState changes per-connection server state the proxy cannot
	// share (CLIENT TRACKING, CACHING, NO-EVICT, NO-TOUCH): it pins.
	KindConnState
	// KindLocal is answered by the proxy, because it is about the client's
	// connection to the proxy (HELLO, AUTH, QUIT, RESET, CLIENT ID, SETNAME,
	// GETNAME, SETINFO, REPLY, LIST, INFO, KILL, UNBLOCK), or adds the
	// proxy's own data (INFO, RESPITE).
	KindLocal
	// KindRefused cannot work through a proxy (SYNC, PSYNC, REPLCONF).
	KindRefused
)

var kindNames = [...]string{"plain", "blocking", "transaction", "subscribe", "unsubscribe", "monitor", "select", "connection-state", "local", "refused"}

func (k Kind) String() string { return kindNames[k] }

// Split says how a command over several keys is split between routes and
// its replies merged, in the client's order.
type Split uint8

const (
	// SplitNone: all keys must be in one route (or none).
	SplitNone Split = iota
	// SplitArray is MGET: one key per element of an array reply.
	SplitArray
	// SplitPairs is MSET: key/value pairs; all parts are validated before
	// any is applied, and the reply is +OK.
	SplitPairs
	// SplitSum is DEL, UNLINK, EXISTS and TOUCH: integer replies summed.
	SplitSum
)

// kinds is the proxy's part of the command table: every command not listed
// is KindPlain.
var kinds = map[ID]Kind{
	CmdMulti: KindTransaction, CmdExec: KindTransaction, CmdDiscard: KindTransaction,
	CmdWatch: KindTransaction, CmdUnwatch: KindTransaction,

	CmdBlpop: KindBlocking, CmdBrpop: KindBlocking, CmdBrpoplpush: KindBlocking,
	CmdBlmove: KindBlocking, CmdBlmpop: KindBlocking, CmdBzpopmin: KindBlocking,
	CmdBzpopmax: KindBlocking, CmdBzmpop: KindBlocking, CmdWait: KindBlocking,
	CmdWaitaof: KindBlocking, CmdXread: KindBlocking, CmdXreadgroup: KindBlocking,

	CmdSubscribe: KindSubscribe, CmdPsubscribe: KindSubscribe, CmdSsubscribe: KindSubscribe,
	CmdUnsubscribe: KindUnsubscribe, CmdPunsubscribe: KindUnsubscribe, CmdSunsubscribe: KindUnsubscribe,

	CmdMonitor: KindMonitor,
	CmdSelect:  KindSelect,

	CmdClientTracking: KindConnState, CmdClientCaching: KindConnState,
	CmdClientNoEvict: KindConnState, CmdClientNoTouch: KindConnState,

	CmdHello: KindLocal, CmdAuth: KindLocal, CmdQuit: KindLocal, CmdReset: KindLocal,
	CmdRespite: KindLocal, CmdInfo: KindLocal,
	CmdClientId: KindLocal, CmdClientSetname: KindLocal, CmdClientGetname: KindLocal,
	CmdClientSetinfo: KindLocal, CmdClientReply: KindLocal, CmdClientList: KindLocal,
	CmdClientInfo: KindLocal, CmdClientKill: KindLocal, CmdClientUnblock: KindLocal,

	CmdSync: KindRefused, CmdPsync: KindRefused, CmdReplconf: KindRefused,
}

// splits are the multi-key commands a route can take part of.
var splits = map[ID]Split{
	CmdMget: SplitArray, CmdMset: SplitPairs,
	CmdDel: SplitSum, CmdUnlink: SplitSum, CmdExists: SplitSum, CmdTouch: SplitSum,
}

// Spec is what the table knows about one command id.
type Spec struct {
	Name  string // lower case; "container|sub" for a subcommand
	Kind  Kind
	Flags Flag
	Split Split
	keys  keySpec
}

// specs and ids are the command table by id and by name, built once.
var (
	specs [numIDs]Spec
	ids   = make(map[string]ID, numIDs)
)

func init() {
	for id := ID(1); id < numIDs; id++ {
		s := &specs[id]
		if id < numGenerated {
			s.Name, s.Flags = generatedNames[id], generatedFlags[id]
		} else {
			s.Name = extraNames[id-numGenerated]
		}
		s.keys = keySpecs[s.Name]
		s.Kind, s.Split = kinds[id], splits[id]
		ids[s.Name] = id
	}
	// The extras, as their Redis introduced them.
	specs[CmdWaitaof].keys = keySpec{arity: 4}
	specs[CmdWaitaof].Flags = FlagNoScript
	specs[CmdClientSetinfo].keys = keySpec{arity: 4}
	specs[CmdClientSetinfo].Flags = FlagNoScript | FlagLoading | FlagStale
	specs[CmdClientNoTouch].keys = keySpec{arity: 3}
	specs[CmdClientNoTouch].Flags = FlagNoScript | FlagLoading | FlagStale
	specs[CmdRespite].keys = keySpec{arity: -2, subcommands: true}
	for id := CmdRespiteAuth; id <= CmdRespiteVerify; id++ {
		specs[id].keys = keySpec{arity: -2}
		specs[id].Kind = KindLocal
	}
}

// IsRespite reports whether id is RESPITE or one of its subcommands (the
// proxy's admin commands).
func IsRespite(id ID) bool { return id >= CmdRespite && id <= CmdRespiteVerify }

// SpecOf returns the table's entry for id (the zero Spec for CmdUnknown).
func SpecOf(id ID) *Spec { return &specs[id] }

// Name is the lower-case name of id ("client|kill"), "" for CmdUnknown.
func (id ID) Name() string { return specs[id].Name }

// Container is the id of a subcommand's container (CmdClient for
// CmdClientKill), or id itself.
func (id ID) Container() ID {
	name := specs[id].Name
	for i := 0; i < len(name); i++ {
		if name[i] == '|' {
			return ids[name[:i]]
		}
	}
	return id
}

// maxName bounds "name|sub" in lookups; the longest in the table is 29
// bytes ("cluster|count-failure-reports"). Longer names are unknown.
const maxName = 48

// lookup returns the id of the command args name, in any case, without
// allocating: the subcommand's id for a container with a known
// subcommand, the container's for a container called without one or with
// one the table does not know (Redis answers those with its own error),
// CmdUnknown for an unknown name.
func lookup(args [][]byte) ID {
	if len(args) == 0 {
		return CmdUnknown
	}
	var buf [maxName]byte
	n, ok := appendLower(&buf, 0, args[0])
	if !ok {
		return CmdUnknown
	}
	id := ids[string(buf[:n])]
	if id == CmdUnknown || !specs[id].keys.subcommands || len(args) < 2 || n >= maxName {
		return id
	}
	buf[n] = '|'
	m, ok := appendLower(&buf, n+1, args[1])
	if !ok {
		return id
	}
	if sub := ids[string(buf[:m])]; sub != CmdUnknown {
		return sub
	}
	return id
}

// Lookup returns the id of the command args names (see lookup).
func Lookup(args [][]byte) ID { return lookup(args) }

// appendLower copies name, lower-cased, into buf at n; false if it does
// not fit.
func appendLower(buf *[maxName]byte, n int, name []byte) (int, bool) {
	if len(name) > maxName-n {
		return 0, false
	}
	for _, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[n] = c
		n++
	}
	return n, true
}

// equalFold reports whether b equals the lower-case word, ignoring case.
func equalFold(b []byte, word string) bool {
	if len(b) != len(word) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != word[i] {
			return false
		}
	}
	return true
}

// IsOption reports whether an argument equals the lower-case word, ignoring
// case: for the options of a command (ON, OFF, REDIRECT, ...), never for a
// command's name, which Lookup turns into an id.
func IsOption(arg []byte, word string) bool { return equalFold(arg, word) }
