package router

// Command is one client command as every layer after the request reader
// sees it: its arguments and what the command table and the route
// snapshot say about it, filled once by Classify where the batch is read.
// Dispatch, the policies, conflict tracking, metrics and the admin
// commands take the record; none of them looks the name up again.
//
// A session keeps its Commands and reuses their slices, so classifying
// allocates nothing in the steady state.
type Command struct {
	Args  [][]byte // the name first, as the client sent it
	ID    ID
	Kind  Kind
	Flags Flag
	Split Split

	// Keys are the positions in Args of every key argument, in order.
	Keys []int
	// KeyRoute[i] is the index of the route of Args[Keys[i]] in the
	// snapshot the command was classified against, or NoRoute.
	KeyRoute []int16
	// Route is the route every routed key belongs to: NoRoute when no key
	// is routed, MixedRoutes when they belong to different routes.
	Route int16
	// Routed counts the routed keys.
	Routed int
	// UnknownSub: ID is a container (CLIENT, CONFIG, ...) called with a
	// subcommand the table does not know; Redis answers it.
	UnknownSub bool
	// Reserved: a key (or, for pub/sub commands, a channel) is in the
	// proxy's own keyspace (ReservedPrefix).
	Reserved bool
	// Guarded: FLUSHALL or FLUSHDB while write-back routes queue entries
	// in the keyspace they would empty (the route layer guards it), or
	// SWAPDB while routes keep rows and bookkeeping in Redis.
	Guarded bool
}

// ReservedPrefix is the prefix of the keys the proxy keeps for itself in
// Redis (negative-cache markers, locks, write-back queues and dead
// letters, the invalidation channel). Clients never read or write them.
const ReservedPrefix = "respite:"

func reserved(b []byte) bool {
	return len(b) >= len(ReservedPrefix) && string(b[:len(ReservedPrefix)]) == ReservedPrefix
}

// Route values of a Command that name no single route.
const (
	NoRoute     int16 = -1
	MixedRoutes int16 = -2
)

// Classify fills cmd for args against the route snapshot rs (nil: no
// routes). It never fails: an unknown command is CmdUnknown and KindPlain,
// with no keys, and Redis answers it.
func Classify(cmd *Command, args [][]byte, rs *Routes) {
	id := lookup(args)
	s := &specs[id]
	cmd.Args, cmd.ID, cmd.Kind, cmd.Flags, cmd.Split = args, id, s.Kind, s.Flags, s.Split
	cmd.Keys, cmd.KeyRoute, cmd.Route, cmd.Routed, cmd.UnknownSub = cmd.Keys[:0], cmd.KeyRoute[:0], NoRoute, 0, false
	cmd.Reserved, cmd.Guarded = false, false
	if id == CmdUnknown {
		return
	}
	if cmd.Kind == KindBlocking && (id == CmdXread || id == CmdXreadgroup) && !xreadBlocks(args) {
		cmd.Kind = KindPlain
	}
	if s.keys.subcommands && len(args) >= 2 {
		cmd.UnknownSub = true // a container with a subcommand the table does not know
		return
	}
	cmd.Keys = keyPositions(cmd.Keys, id, args)
	for _, k := range cmd.Keys {
		if reserved(args[k]) {
			cmd.Reserved = true
		}
	}
	switch cmd.Kind {
	case KindSubscribe, KindUnsubscribe:
		cmd.Reserved = anyReserved(args[1:])
	}
	switch id {
	case CmdPublish, CmdSpublish:
		cmd.Reserved = len(args) > 1 && reserved(args[1])
	case CmdFlushall, CmdFlushdb:
		// With routes the route layer carries flushes: the write-back
		// queues are checked first, and clients' own connections may not
		// flush (upstream/clientuser.go).
		cmd.Guarded = rs.Len() > 0
	case CmdSwapdb:
		cmd.Guarded = rs.Len() > 0
	}
	if rs.Len() == 0 || len(cmd.Keys) == 0 {
		return
	}
	switch cmd.Kind {
	case KindPlain, KindBlocking, KindTransaction:
	default:
		return // no data keys: pub/sub channels, connection state
	}
	for _, k := range cmd.Keys {
		r := int16(rs.Match(args[k]))
		cmd.KeyRoute = append(cmd.KeyRoute, r)
		if r == NoRoute {
			continue
		}
		cmd.Routed++
		switch cmd.Route {
		case NoRoute:
			cmd.Route = r
		case r, MixedRoutes:
		default:
			cmd.Route = MixedRoutes
		}
	}
}

func anyReserved(list [][]byte) bool {
	for _, a := range list {
		if reserved(a) {
			return true
		}
	}
	return false
}

// xreadBlocks reports whether XREAD/XREADGROUP args have a BLOCK option
// before STREAMS: without one they never block.
func xreadBlocks(args [][]byte) bool {
	for _, a := range args[1:] {
		if equalFold(a, "streams") {
			return false
		}
		if equalFold(a, "block") {
			return true
		}
	}
	return false
}

// Name is the command's lower-case name as the table spells it ("get",
// "client|kill"), or the client's own spelling, lower-cased, for a command
// the table does not know.
func (c *Command) Name() string {
	if c.ID != CmdUnknown {
		return specs[c.ID].Name
	}
	if len(c.Args) == 0 {
		return ""
	}
	b := make([]byte, len(c.Args[0]))
	for i, ch := range c.Args[0] {
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		b[i] = ch
	}
	return string(b)
}

// Write reports whether the command may modify data (COMMAND flag write,
// or a key spec that writes: EVAL, EVALSHA, FCALL). An unknown command may,
// as far as the table can tell.
func (c *Command) Write() bool {
	return c.ID == CmdUnknown || isWrite(c.ID)
}

// ArityOK reports whether the command has as many arguments as its arity
// asks (false for an unknown command).
func (c *Command) ArityOK() bool {
	return c.ID != CmdUnknown && arityOK(specs[c.ID].keys.arity, len(c.Args))
}

// Publishes reports whether the command publishes a message (PUBLISH,
// SPUBLISH): it must reach Redis after a SUBSCRIBE sent before it.
func (c *Command) Publishes() bool { return c.ID == CmdPublish || c.ID == CmdSpublish }

// AllRouted reports whether every key of the command is routed.
func (c *Command) AllRouted() bool { return c.Routed > 0 && c.Routed == len(c.Keys) }

// Arg reports whether argument i equals the lower-case word, ignoring
// case (false when there is no argument i).
func (c *Command) Arg(i int, word string) bool {
	return i < len(c.Args) && equalFold(c.Args[i], word)
}
