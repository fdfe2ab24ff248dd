package router

//go:generate go run ./gen -o keys_table.go

// Key positions. keys_table.go (generated from a redis-server's COMMAND
// reply by ./gen) gives, per command and per "container|sub" subcommand,
// the arity and the legacy key range (first, last, step), which describes
// every command whose keys sit at fixed places. Commands flagged
// movablekeys have their keys found by the hand-written rules below, which
// follow how Redis itself parses those commands (db.c's *GetKeys functions
// and the commands' option parsers); see
// https://redis.io/docs/reference/key-specs/.
//
// What KeyPositions cannot see, and a caller routing by key must keep in
// mind:
//   - SORT's BY and GET patterns ("weight_*", "obj_*->field") name keys
//     that SORT reads, derived from the sorted elements; they are not key
//     arguments and are not reported (Redis' COMMAND GETKEYS does not
//     report them either). Only the sorted key and the STORE destination
//     are.
//   - Scripts and functions (EVAL, FCALL, ...) may touch keys they did not
//     declare in numkeys.
//   - Commands without key arguments act on the whole keyspace: KEYS, SCAN,
//     RANDOMKEY, FLUSHDB, FLUSHALL, SWAPDB, DBSIZE, ...
//   - SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE take shard channels where other
//     commands take keys (key-spec flag not_key); no keys are reported.

// keySpec is what keys_table.go records about one command.
type keySpec struct {
	// arity as in COMMAND, counting the name: N means exactly N arguments,
	// -N at least N. Subcommands count the container name too.
	arity int16
	// first, last and step: keys are args[first], args[first+step], ...
	// up to args[last]; a negative last counts from the end (-1 is the
	// last argument). first == 0: no keys at fixed places.
	first, last, step int16
	// write, readonly, movablekeys: the COMMAND flags of the same names.
	write, readonly, movablekeys bool
	// keyWrite: one of the command's key specs has the RW, OW or RM flag
	// (EVAL, EVALSHA and FCALL have it but not the "write" flag).
	keyWrite bool
	// notKey: the range names shard channels, not keys (key-spec flag
	// not_key: SPUBLISH, SSUBSCRIBE, SUNSUBSCRIBE).
	notKey bool
	// subcommands: a container (OBJECT, XINFO, ...); the entry that
	// describes a call is "name|sub", sub being args[1] in lower case.
	subcommands bool
}

// arityOK reports whether argc arguments satisfy arity.
func arityOK(arity int16, argc int) bool {
	if arity >= 0 {
		return argc == int(arity)
	}
	return argc >= -int(arity)
}

// KeyPositions appends to dst the indexes in args (args[0] is the command
// name) of every key argument, and reports whether the command is known. It
// never panics on short or malformed args (wrong arity: return no keys;
// Redis will reply with its arity error). It does not allocate when dst has
// room. Case-insensitive names.
//
// Subcommands with keys (OBJECT ENCODING key, XINFO STREAM key, MEMORY
// USAGE key, XGROUP CREATE key ...) are covered; a container with an
// unknown subcommand is not known. For movable-key commands whose syntax
// is wrong in a way that makes Redis reject them (numkeys not a number or
// larger than the arguments, XREAD without STREAMS or with unbalanced
// IDs), no keys are reported, as COMMAND GETKEYS does. Where in doubt
// otherwise, the rules report more rather than fewer: every SORT STORE and
// GEORADIUS STORE/STOREDIST destination, not only the last, which is the
// one Redis writes. Positions come in
// increasing order, none twice.
func KeyPositions(dst []int, args [][]byte) (positions []int, known bool) {
	id := lookup(args)
	if id == CmdUnknown || specs[id].keys.subcommands && len(args) >= 2 {
		return dst, false // unknown, or a container with an unknown subcommand
	}
	return keyPositions(dst, id, args), true
}

// keyPositions is KeyPositions for a command whose id is known.
func keyPositions(dst []int, id ID, args [][]byte) []int {
	s := &specs[id].keys
	if s.notKey || !arityOK(s.arity, len(args)) {
		return dst
	}
	if s.movablekeys {
		if r, ok := movableRules[specs[id].Name]; ok {
			return r.appendKeys(dst, args)
		}
		// A movable command without a rule: tests make sure there is none
		// in the table; fall through to its fixed range, if any.
	}
	if s.first <= 0 || s.step <= 0 {
		return dst
	}
	last := int(s.last)
	if last < 0 {
		last += len(args)
	}
	for i := int(s.first); i <= last && i < len(args); i += int(s.step) {
		dst = append(dst, i)
	}
	return dst
}

// IsWrite reports whether the command may modify data (COMMAND flag
// "write"). EVAL, EVALSHA and FCALL, which lack the flag but whose key
// specs say they may write keys, count as writes too; their _RO forms
// (flag "readonly") do not, nor does PFCOUNT (readonly, though it may
// refresh a HyperLogLog's cached cardinality). For a container, the
// subcommand decides (XGROUP CREATE writes, XINFO STREAM does not).
//
// An unknown command or subcommand may modify data as far as the table can
// tell: IsWrite reports true. Empty args report false.
func IsWrite(args [][]byte) bool {
	if len(args) == 0 {
		return false
	}
	id := lookup(args)
	if id == CmdUnknown || specs[id].keys.subcommands && len(args) >= 2 {
		return true
	}
	return isWrite(id)
}

func isWrite(id ID) bool {
	s := &specs[id].keys
	return s.write || s.keyWrite && !s.readonly
}

// movableKind selects the rule for a movablekeys command.
type movableKind uint8

const (
	// numKeys: args[count] is a number of keys, which follow from
	// args[count+1]; args[store], if store is not 0, is a destination key.
	// EVAL script numkeys key..., ZUNION numkeys key..., ZUNIONSTORE dest
	// numkeys key..., BLMPOP timeout numkeys key..., ...
	numKeys movableKind = iota + 1
	// streams: XREAD/XREADGROUP [BLOCK ms] [COUNT n] [GROUP g c] [NOACK]
	// STREAMS key... id...: the first half of what follows STREAMS.
	streams
	// sortKeys: SORT key [BY p] [LIMIT o c] [GET p ...] [ASC|DESC] [ALPHA]
	// [STORE dest]: the key and the STORE destination. SORT writes only the
	// last of several STOREs; all are reported, erring on the side of
	// refusing. BY and GET patterns are not reported; see the notes above.
	sortKeys
	// firstOnly: SORT_RO key ...: only args[1].
	firstOnly
	// migrate: MIGRATE host port key|"" db timeout [COPY] [REPLACE]
	// [AUTH pw | AUTH2 user pw] [KEYS key...]: args[3], or with KEYS (and
	// args[3] empty) the keys after KEYS.
	migrate
	// geoStore: GEORADIUS(BYMEMBER) key ... [STORE dest] [STOREDIST dest]:
	// args[1] and the STORE/STOREDIST destinations, options scanned from
	// args[start]. Redis writes only the last one; all are reported, as
	// SORT's.
	geoStore
)

// movableRule is how keys are found in one movablekeys command.
type movableRule struct {
	kind         movableKind
	count, store int8 // numKeys
	start        int8 // geoStore: first argument that may be an option
}

// movableRules covers every command flagged movablekeys in keySpecs
// (TestMovableRulesCoverTable checks it).
var movableRules = map[string]movableRule{
	"eval":       {kind: numKeys, count: 2},
	"evalsha":    {kind: numKeys, count: 2},
	"eval_ro":    {kind: numKeys, count: 2},
	"evalsha_ro": {kind: numKeys, count: 2},
	"fcall":      {kind: numKeys, count: 2},
	"fcall_ro":   {kind: numKeys, count: 2},

	"zunionstore": {kind: numKeys, count: 2, store: 1},
	"zinterstore": {kind: numKeys, count: 2, store: 1},
	"zdiffstore":  {kind: numKeys, count: 2, store: 1},

	"zunion":     {kind: numKeys, count: 1},
	"zinter":     {kind: numKeys, count: 1},
	"zdiff":      {kind: numKeys, count: 1},
	"zintercard": {kind: numKeys, count: 1},
	"sintercard": {kind: numKeys, count: 1},
	"lmpop":      {kind: numKeys, count: 1},
	"zmpop":      {kind: numKeys, count: 1},

	"blmpop": {kind: numKeys, count: 2},
	"bzmpop": {kind: numKeys, count: 2},

	"xread":      {kind: streams},
	"xreadgroup": {kind: streams},

	"sort":    {kind: sortKeys},
	"sort_ro": {kind: firstOnly},

	"migrate": {kind: migrate},

	// Options start after "key longitude latitude radius unit" and after
	// "key member radius unit".
	"georadius":         {kind: geoStore, start: 6},
	"georadiusbymember": {kind: geoStore, start: 5},
}

// appendKeys appends the key positions of args (arity already checked).
func (r movableRule) appendKeys(dst []int, args [][]byte) []int {
	switch r.kind {
	case numKeys:
		count := int(r.count)
		num, ok := parseCount(args[count])
		first := count + 1
		if !ok || num < 1 || num > len(args)-first {
			return dst // Redis replies with an error (or, numkeys 0, touches no key)
		}
		if r.store != 0 {
			dst = append(dst, int(r.store))
		}
		for i := first; i < first+num; i++ {
			dst = append(dst, i)
		}
		return dst

	case streams:
		// As xreadCommand parses its options, except that an unknown
		// argument (a syntax error to Redis 7.0, perhaps an option a later
		// Redis added) is skipped rather than ending the search.
		for i := 1; i < len(args); i++ {
			more := len(args) - i - 1
			a := args[i]
			switch {
			case equalFold(a, "block") && more >= 1, equalFold(a, "count") && more >= 1:
				i++
			case equalFold(a, "group") && more >= 2:
				i += 2
			case equalFold(a, "noack"):
			case equalFold(a, "streams") && more >= 1:
				if more%2 != 0 {
					return dst // unbalanced: error
				}
				for j := i + 1; j <= i+more/2; j++ {
					dst = append(dst, j)
				}
				return dst
			}
		}
		return dst

	case sortKeys:
		// As sortCommandGeneric parses its options. Where it stops at a
		// syntax error (and nothing runs), this goes on, skipping one
		// argument, as sortGetKeys does: more STOREs may be reported.
		dst = append(dst, 1)
		for i := 2; i < len(args); i++ {
			more := len(args) - i - 1
			a := args[i]
			switch {
			case equalFold(a, "limit") && more >= 2:
				i += 2
			case equalFold(a, "store") && more >= 1:
				i++
				dst = append(dst, i)
			case equalFold(a, "by") && more >= 1, equalFold(a, "get") && more >= 1:
				i++
			}
		}
		return dst

	case firstOnly:
		return append(dst, 1)

	case migrate:
		// As migrateGetKeys: KEYS is looked for from args[6], skipping
		// the arguments of AUTH and AUTH2.
		for i := 6; i < len(args); i++ {
			a := args[i]
			switch {
			case equalFold(a, "keys"):
				if len(args[3]) != 0 {
					return dst // error: KEYS wants an empty key argument
				}
				for j := i + 1; j < len(args); j++ {
					dst = append(dst, j)
				}
				return dst
			case equalFold(a, "auth"):
				i++
			case equalFold(a, "auth2"):
				i += 2
			}
		}
		return append(dst, 3)

	case geoStore:
		// As georadiusGetKeys scans; COUNT's argument, which it does not
		// skip, must be a number for the command to run.
		dst = append(dst, 1)
		for i := int(r.start); i < len(args)-1; i++ {
			if equalFold(args[i], "store") || equalFold(args[i], "storedist") {
				i++
				dst = append(dst, i)
			}
		}
		return dst
	}
	return dst
}

// parseCount parses a decimal integer ("-" and digits, as Redis' string2ll
// accepts and more); false for anything else or beyond 9 digits, which no
// argument list can satisfy as a key count.
func parseCount(b []byte) (int, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg, b = true, b[1:]
	}
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}
