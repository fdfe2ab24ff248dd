package router

import "strings"

// State is what Dispatch needs to know about a session: a value the
// session builds before each decision.
type State struct {
	// ProxyAuth: the proxy itself checks passwords (requirepass); without
	// it AUTH goes to Redis on the session's own connection, so a client
	// can log in as any upstream ACL user.
	ProxyAuth bool
	// Authed: with ProxyAuth, the client has authenticated.
	Authed bool
	// UpstreamNoAuth: Redis' default user now needs a password the proxy
	// does not hold (a client's CONFIG SET requirepass), and the client
	// has not logged in to Redis since: the proxy's own connections,
	// logged in before, must not answer for it, so it gets Redis' NOAUTH
	// for everything but the commands Redis allows before AUTH (AUTH
	// itself goes to Redis on the client's own connection).
	UpstreamNoAuth bool
	// Proto is the RESP version the client chose with HELLO (2 or 3).
	Proto int
	// Pinned: the session holds an upstream connection of its own.
	Pinned bool
	// Multi: the session is inside MULTI (as far as the commands before
	// this one tell: Next predicts it).
	Multi bool
	// Subscribed: the session's connection is subscribed to a channel,
	// pattern or shard channel.
	Subscribed bool
	// OtherDB: the session has SELECTed a database other than the one
	// routes live in; its keys are never routed.
	OtherDB bool
	// DefaultDB is the database clients start in, as SELECT's argument
	// spells it ("0").
	DefaultDB string
	// AdminDenied: server-administration commands (COMMAND flag admin:
	// CONFIG, ACL SETUSER/LIST, SHUTDOWN, DEBUG, MODULE, REPLICAOF, SAVE,
	// CLIENT KILL/PAUSE, MONITOR, ...) are refused for this client: the
	// proxy logs in to Redis with credentials the client does not have,
	// and the client has no admin rights. AdminAllowed are the commands
	// that pass for it anyway (the operator's list).
	AdminDenied  bool
	AdminAllowed []ID
	// ClusterAnswers: the proxy answers CLUSTER SLOTS/SHARDS/NODES/INFO/
	// MYID/KEYSLOT, ASKING, READONLY and READWRITE itself, as a one-node
	// cluster (config cluster_answers).
	ClusterAnswers bool
	// Restricted: the session's upstream connections are logged in as the
	// restricted user the proxy gives clients while routes are configured
	// (every key but its own, so that Lua scripts cannot reach them). ACL
	// WHOAMI is then answered by the proxy (Redis would name the operator's
	// user), and a SORT with BY or GET patterns, which Redis allows only a
	// user with every key, runs on the proxy's own connections if no
	// pattern can name a key of the proxy's (PathOwn; refused otherwise).
	Restricted bool
	// Watching (WATCH armed) and ReplyOff (CLIENT REPLY OFF or SKIP) are
	// part of a session's state but choose no path: a WATCHing session is
	// pinned, and replies that are not sent are still produced where they
	// would have been. The dispatch test checks that they change nothing.
	Watching, ReplyOff bool
}

// Path is where a command goes.
type Path uint8

const (
	// PathShared: the shared multiplexed upstream connections.
	PathShared Path = iota
	// PathPinned: the session's own upstream connection, taken first if
	// it has none; the command is pipelined with its neighbours.
	PathPinned
	// PathBlocking: the session's own connection, the command alone,
	// waiting as long as it blocks; a client that leaves meanwhile has it
	// ended upstream.
	PathBlocking
	// PathWatch: WATCH outside MULTI: the session's own connection, after
	// the route layer loaded the routed keys (so the proxy's own fill
	// cannot abort the transaction) and the contention gate let it in.
	PathWatch
	// PathDetach: the session's own connection, whose replies and pushes
	// are relayed to the client as they arrive from then on (pub/sub,
	// MONITOR, CLIENT TRACKING ON).
	PathDetach
	// PathLocal: answered by the proxy.
	PathLocal
	// PathRouted: the keys belong to routes: the route layer answers.
	PathRouted
	// PathQueue: a command on routed keys inside MULTI: the route layer
	// queues it.
	PathQueue
	// PathQueueLocal: a command the proxy answers itself, inside MULTI: a
	// placeholder is queued upstream, and the proxy's answer takes its
	// place in EXEC's reply.
	PathQueueLocal
	// PathExec: EXEC of a MULTI: the route layer commits around it.
	PathExec
	// PathRefused: answered with Decision.Err.
	PathRefused
	// PathOwn: a stateless command Redis allows only a user with every
	// key, checked by the proxy: on the route layer's connections, logged
	// in as the operator's user (State.Restricted).
	PathOwn
)

var pathNames = [...]string{"shared", "pinned", "blocking", "watch", "detach", "local", "routed", "queue", "queue-local", "exec", "refused", "own"}

func (p Path) String() string { return pathNames[p] }

// Decision is Dispatch's answer.
type Decision struct {
	Path Path
	Err  string // PathRefused: the error reply, without the leading '-'
}

// Errors Dispatch answers with, as Redis words them (src/server.c).
const (
	ErrNoAuth          = "NOAUTH Authentication required."
	ErrNoPermKey       = "NOPERM this user has no permissions to access one of the keys used as arguments"
	ErrSwapDefaultDB   = "ERR SWAPDB of the proxy's database is not supported while routes keep rows and write queues in it"
	ErrNoPermChannel   = "NOPERM this user has no permissions to access one of the channels used as arguments"
	errNoPermRunPrefix = "NOPERM this user has no permissions to run the '"
)

// Dispatch chooses the path of cmd for a session in state st. It is a pure
// function of its arguments; the rules follow the order in which Redis'
// processCommand checks a command (unknown name and arity first, then
// authentication, then the pub/sub context, then MULTI queueing), so that
// every error a client can see is Redis' own, produced by Redis wherever
// the command can safely go upstream.
func Dispatch(st State, cmd *Command) Decision {
	if cmd.Kind == KindRefused {
		return Decision{Path: PathRefused, Err: "ERR command '" + cmd.Name() + "' is not supported by the proxy"}
	}
	if (cmd.ID == CmdUnknown || cmd.UnknownSub || !cmd.ArityOK()) && !IsRespite(cmd.ID) {
		// Redis refuses these before anything else and runs nothing:
		// let it say so, on the connection that keeps the reply in order.
		return upstream(st)
	}
	if (st.ProxyAuth && !st.Authed || st.UpstreamNoAuth) && cmd.Flags&FlagNoAuth == 0 {
		return Decision{Path: PathRefused, Err: ErrNoAuth}
	}
	// Then permissions, as Redis' ACL check comes next: the proxy's own
	// keyspace, and administration for clients without the rights.
	if cmd.Reserved && (!st.OtherDB || intoDefaultDB(st, cmd)) {
		if cmd.Kind == KindSubscribe || cmd.Kind == KindUnsubscribe || cmd.ID == CmdPublish || cmd.ID == CmdSpublish {
			return Decision{Path: PathRefused, Err: ErrNoPermChannel}
		}
		return Decision{Path: PathRefused, Err: ErrNoPermKey}
	}
	if st.AdminDenied && cmd.Flags&FlagAdmin != 0 && !allowed(st.AdminAllowed, cmd.ID) {
		return Decision{Path: PathRefused, Err: errNoPermRunPrefix + cmd.Name() + "' command"}
	}
	if st.ClusterAnswers && !st.Multi && IsClusterAnswer(cmd.ID) {
		return Decision{Path: PathLocal}
	}
	guarded := false // the route layer checks the write-back queues first
	if cmd.Guarded {
		switch cmd.ID {
		case CmdSwapdb:
			if len(cmd.Args) == 3 && (string(cmd.Args[1]) == st.DefaultDB || string(cmd.Args[2]) == st.DefaultDB) {
				return Decision{Path: PathRefused, Err: ErrSwapDefaultDB}
			}
			if st.Restricted && !st.Multi {
				// Clients' own connections may not swap (a script could
				// move the proxy's keys away); it names its databases, so
				// the proxy's connections carry it.
				return Decision{Path: PathOwn}
			}
		case CmdFlushall:
			guarded = true // it empties the proxy's database from any database
		default:
			guarded = !st.OtherDB
		}
	}
	routed := cmd.Routed > 0 && !st.OtherDB
	if st.Subscribed && st.Proto == 2 && !allowedSubscribed(cmd) {
		// RESP2 pub/sub context: Redis refuses the command; the proxy says
		// the same where it would otherwise answer itself.
		if routed || cmd.Kind == KindLocal {
			return Decision{Path: PathRefused, Err: "ERR Can't execute '" + cmd.Name() +
				"': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"}
		}
		return Decision{Path: PathPinned}
	}
	if st.Multi {
		if guarded {
			return Decision{Path: PathRefused, Err: "ERR " + strings.ToUpper(cmd.Name()) + " inside MULTI is not supported while routes are configured (the proxy checks its write-back queues first): run it outside the transaction"}
		}
		return inMulti(st, cmd, routed)
	}
	if guarded {
		return Decision{Path: PathRouted} // the route layer checks the write-back queues first
	}
	if st.Restricted {
		switch cmd.ID {
		case CmdAclWhoami:
			return Decision{Path: PathLocal}
		case CmdSort, CmdSortRo:
			if fullKeys, reserved := sortPatterns(cmd); reserved {
				return Decision{Path: PathRefused, Err: ErrNoPermKey}
			} else if fullKeys && !st.Pinned && !routed {
				return Decision{Path: PathOwn}
			}
		}
	}
	switch cmd.Kind {
	case KindLocal:
		if cmd.ID == CmdAuth && !st.ProxyAuth {
			return Decision{Path: PathPinned}
		}
		return Decision{Path: PathLocal}
	case KindSelect:
		if !st.Pinned && len(cmd.Args) == 2 && string(cmd.Args[1]) == st.DefaultDB {
			return Decision{Path: PathShared}
		}
		return Decision{Path: PathPinned}
	case KindSubscribe, KindUnsubscribe, KindMonitor:
		return Decision{Path: PathDetach}
	case KindConnState:
		if cmd.ID == CmdClientTracking && cmd.Arg(2, "on") {
			return Decision{Path: PathDetach}
		}
		return Decision{Path: PathPinned}
	case KindTransaction:
		switch cmd.ID {
		case CmdMulti:
			return Decision{Path: PathPinned}
		case CmdWatch:
			return Decision{Path: PathWatch}
		}
		return upstream(st) // EXEC, DISCARD, UNWATCH without MULTI
	}
	if routed {
		return Decision{Path: PathRouted}
	}
	if cmd.Kind == KindBlocking {
		return Decision{Path: PathBlocking}
	}
	return upstream(st)
}

func allowed(list []ID, id ID) bool {
	for _, a := range list {
		if a == id || a == id.Container() {
			return true
		}
	}
	return false
}

// upstream is the path of a command that needs nothing from the proxy.
func upstream(st State) Decision {
	if st.Pinned {
		return Decision{Path: PathPinned}
	}
	return Decision{Path: PathShared}
}

// inMulti is Dispatch inside MULTI, where Redis queues every command but
// EXEC, DISCARD, MULTI, WATCH, QUIT and RESET.
func inMulti(st State, cmd *Command, routed bool) Decision {
	switch cmd.ID {
	case CmdExec:
		return Decision{Path: PathExec}
	case CmdQuit, CmdReset:
		return Decision{Path: PathLocal}
	case CmdDiscard, CmdMulti, CmdWatch:
		return Decision{Path: PathPinned}
	case CmdClientId, CmdClientSetname, CmdClientGetname, CmdClientReply, CmdClientSetinfo,
		CmdClientList, CmdClientInfo, CmdClientKill, CmdClientUnblock, CmdHello:
		return Decision{Path: PathQueueLocal}
	case CmdAuth:
		if st.ProxyAuth {
			return Decision{Path: PathQueueLocal}
		}
	case CmdAclWhoami:
		if st.Restricted {
			return Decision{Path: PathQueueLocal}
		}
	}
	if IsRespite(cmd.ID) {
		return Decision{Path: PathQueueLocal}
	}
	if routed {
		switch cmd.Kind {
		case KindPlain, KindBlocking:
			return Decision{Path: PathQueue}
		}
	}
	return Decision{Path: PathPinned}
}

// allowedSubscribed reports whether Redis accepts cmd from a RESP2 client
// in the pub/sub context.
func allowedSubscribed(cmd *Command) bool {
	switch cmd.Kind {
	case KindSubscribe, KindUnsubscribe:
		return true
	}
	switch cmd.ID {
	case CmdPing, CmdQuit, CmdReset:
		return true
	}
	return false
}

// Next is the state after cmd ran, as far as Redis' rules decide it
// without the reply: MULTI enters a transaction, EXEC and DISCARD leave it,
// whatever their replies; none of them does anything with the wrong number
// of arguments or in the RESP2 pub/sub context, where Redis refuses them.
// The session corrects the rest of its state from replies.
func (st State) Next(cmd *Command) State {
	if !cmd.ArityOK() || st.Subscribed && st.Proto == 2 {
		return st
	}
	switch cmd.ID {
	case CmdMulti:
		st.Multi = true
	case CmdExec, CmdDiscard:
		st.Multi = false
	}
	return st
}

// intoDefaultDB reports whether cmd, run in another database, writes its
// key into the proxy's database: MOVE key db, COPY src dst DB db.
func intoDefaultDB(st State, cmd *Command) bool {
	switch cmd.ID {
	case CmdMove:
		return len(cmd.Args) == 3 && string(cmd.Args[2]) == st.DefaultDB
	case CmdCopy:
		for i := 3; i+1 < len(cmd.Args); i++ {
			if cmd.Arg(i, "db") {
				return string(cmd.Args[i+1]) == st.DefaultDB
			}
		}
	}
	return false
}

// sortPatterns looks at SORT's BY and GET options: fullKeys when one has
// a pattern (BY with a '*', any GET but "#"), which Redis runs only for a
// user with every key; reserved when a pattern may name a key of the
// proxy's: the key part before the '*' is a prefix of ReservedPrefix (so
// an element may complete it; "*" alone too) or starts with it.
func sortPatterns(cmd *Command) (fullKeys, reserved bool) {
	for i := 2; i+1 < len(cmd.Args); i++ {
		by, get := cmd.Arg(i, "by"), cmd.Arg(i, "get")
		if !by && !get {
			continue
		}
		i++
		pat := string(cmd.Args[i])
		star := strings.IndexByte(pat, '*')
		if get && pat == "#" || star < 0 && by {
			continue // the element itself; BY without '*' does not sort
		}
		fullKeys = true
		if star < 0 {
			continue // GET of a pattern without '*' reads no key
		}
		prefix := pat[:star]
		if strings.HasPrefix(prefix, ReservedPrefix) || strings.HasPrefix(ReservedPrefix, prefix) {
			reserved = true
		}
	}
	return fullKeys, reserved
}
