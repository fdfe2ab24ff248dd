package router

// Spread says how a command is carried on a Redis Cluster upstream
// (upstream.mode cluster) when its keys do not name one slot.
type Spread uint8

const (
	// SpreadOne: the command goes to one primary: its keys' slot's, or
	// any for a command without keys.
	SpreadOne Spread = iota
	// SpreadAll: to every primary (FLUSHALL, FLUSHDB, SCRIPT LOAD and
	// FLUSH, FUNCTION LOAD, DELETE, FLUSH and RESTORE); the first error,
	// else the first primary's reply.
	SpreadAll
	// SpreadSum: to every primary, the integers summed (DBSIZE).
	SpreadSum
	// SpreadConcat: to every primary, the arrays concatenated (KEYS).
	SpreadConcat
	// SpreadScan: SCAN: one primary at a time, the cursor names which.
	SpreadScan
	// SpreadRandom: RANDOMKEY: every primary; a key from the first that
	// has one, starting at a random primary.
	SpreadRandom
)

var spreads = map[ID]Spread{
	CmdFlushall: SpreadAll, CmdFlushdb: SpreadAll,
	CmdScriptLoad: SpreadAll, CmdScriptFlush: SpreadAll,
	CmdFunctionLoad: SpreadAll, CmdFunctionDelete: SpreadAll, CmdFunctionFlush: SpreadAll, CmdFunctionRestore: SpreadAll,
	CmdDbsize:    SpreadSum,
	CmdKeys:      SpreadConcat,
	CmdScan:      SpreadScan,
	CmdRandomkey: SpreadRandom,
}

// ClusterSpread is how cmd is carried on a cluster.
func (c *Command) ClusterSpread() Spread {
	if c.UnknownSub || !c.ArityOK() {
		return SpreadOne // Redis refuses it: any node says so
	}
	return spreads[c.ID]
}

// SlotArgs appends to dst the positions in Args whose hash slot chooses
// the command's primary on a cluster: its keys, or the shard channels of
// SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE (which a cluster routes by slot
// although they are not keys).
func (c *Command) SlotArgs(dst []int) []int {
	switch c.ID {
	case CmdSpublish:
		if len(c.Args) > 1 {
			return append(dst, 1)
		}
		return dst
	case CmdSsubscribe, CmdSunsubscribe:
		for i := 1; i < len(c.Args); i++ {
			dst = append(dst, i)
		}
		return dst
	}
	return append(dst, c.Keys...)
}

// ErrCrossSlot is Redis Cluster's refusal of a command whose keys hash to
// different slots (cluster.c).
const ErrCrossSlot = "CROSSSLOT Keys in request don't hash to the same slot"

// BlockTimeout is the position of a blocking command's timeout argument
// and whether it counts milliseconds (XREAD and XREADGROUP's BLOCK) or
// seconds (BLPOP and the other list and sorted-set pops); ok is false for
// a command without one (WAIT, WAITAOF, ...).
func (c *Command) BlockTimeout() (pos int, millis, ok bool) {
	switch c.ID {
	case CmdBlpop, CmdBrpop, CmdBrpoplpush, CmdBlmove, CmdBzpopmin, CmdBzpopmax:
		if len(c.Args) > 2 {
			return len(c.Args) - 1, false, true
		}
	case CmdBlmpop, CmdBzmpop:
		if len(c.Args) > 2 {
			return 1, false, true
		}
	case CmdXread, CmdXreadgroup:
		for i := 1; i+1 < len(c.Args); i++ {
			if equalFold(c.Args[i], "streams") {
				break
			}
			if equalFold(c.Args[i], "block") {
				return i + 1, true, true
			}
		}
	}
	return 0, false, false
}

// IsClusterAnswer reports whether the proxy answers id itself with
// cluster_answers on: the cluster's description and the commands a
// cluster client sends that only matter to a real node.
func IsClusterAnswer(id ID) bool {
	switch id {
	case CmdClusterSlots, CmdClusterShards, CmdClusterNodes, CmdClusterInfo, CmdClusterMyid, CmdClusterKeyslot,
		CmdAsking, CmdReadonly, CmdReadwrite:
		return true
	}
	return false
}
