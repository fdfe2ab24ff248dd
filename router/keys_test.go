package router

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/respite/respite/internal/testenv"
)

// split turns "SET k v" into args; the token "" stands for an empty
// argument.
func split(s string) [][]byte {
	var args [][]byte
	for _, f := range strings.Fields(s) {
		if f == `""` {
			f = ""
		}
		args = append(args, []byte(f))
	}
	return args
}

type keyCase struct {
	cmd   string
	want  []int
	known bool
	// notRedis: COMMAND GETKEYS answers differently, on purpose (see the
	// comment on the case); TestKeyPositionsMatchRedis skips it.
	notRedis bool
}

var keyCases = []keyCase{
	// Fixed ranges from the table.
	{cmd: "GET a", want: []int{1}, known: true},
	{cmd: "SET a v EX 10", want: []int{1}, known: true},
	{cmd: "INCR a", want: []int{1}, known: true},
	{cmd: "HSET h f v f2 v2", want: []int{1}, known: true},
	{cmd: "HGETALL h", want: []int{1}, known: true},
	{cmd: "EXPIRE a 10", want: []int{1}, known: true},
	{cmd: "DEL a b c", want: []int{1, 2, 3}, known: true},
	{cmd: "UNLINK a b", want: []int{1, 2}, known: true},
	{cmd: "EXISTS a b c d", want: []int{1, 2, 3, 4}, known: true},
	{cmd: "MGET a b c", want: []int{1, 2, 3}, known: true},
	{cmd: "TOUCH a", want: []int{1}, known: true},
	{cmd: "WATCH a b c", want: []int{1, 2, 3}, known: true},
	{cmd: "MSET a 1 b 2 c 3", want: []int{1, 3, 5}, known: true},
	{cmd: "MSETNX a 1 b 2", want: []int{1, 3}, known: true},
	{cmd: "BITOP AND dest s1 s2", want: []int{2, 3, 4}, known: true},
	{cmd: "BITOP NOT dest s1", want: []int{2, 3}, known: true},
	{cmd: "RENAME a b", want: []int{1, 2}, known: true},
	{cmd: "COPY a b DB 1", want: []int{1, 2}, known: true},
	{cmd: "LMOVE a b LEFT RIGHT", want: []int{1, 2}, known: true},
	{cmd: "BLPOP a b c 0", want: []int{1, 2, 3}, known: true},
	{cmd: "BZPOPMIN a b 1.5", want: []int{1, 2}, known: true},
	{cmd: "SUNIONSTORE d a b", want: []int{1, 2, 3}, known: true},
	{cmd: "PFMERGE d a b", want: []int{1, 2, 3}, known: true},
	{cmd: "GEOSEARCHSTORE d src FROMMEMBER m BYRADIUS 1 km", want: []int{1, 2}, known: true},
	{cmd: "PING", known: true},
	{cmd: "KEYS *", known: true},
	{cmd: "FLUSHALL", known: true},
	{cmd: "PUBLISH ch msg", known: true},
	// Shard channels are not keys (COMMAND GETKEYS reports the channel).
	{cmd: "SPUBLISH ch msg", known: true, notRedis: true},

	// Subcommands.
	{cmd: "OBJECT ENCODING a", want: []int{2}, known: true},
	{cmd: "object freq a", want: []int{2}, known: true},
	{cmd: "XINFO STREAM s FULL", want: []int{2}, known: true},
	{cmd: "XINFO GROUPS s", want: []int{2}, known: true},
	{cmd: "MEMORY USAGE a SAMPLES 5", want: []int{2}, known: true},
	{cmd: "XGROUP CREATE s g $ MKSTREAM", want: []int{2}, known: true},
	{cmd: "CONFIG GET maxmemory", known: true},
	{cmd: "OBJECT HELP", known: true},
	{cmd: "OBJECT", known: true},                                     // arity error
	{cmd: "OBJECT NOSUCH a", known: false, notRedis: true},           // unknown subcommand
	{cmd: "OBJECT ENCODING", known: true},                            // arity error
	{cmd: "OBJECT ENCODING a b", known: true},                        // arity error
	{cmd: "XINFO " + strings.Repeat("x", 60) + " s", notRedis: true}, // too long: unknown

	// Scripts and functions: numkeys at args[2].
	{cmd: "EVAL script 2 a b arg1", want: []int{3, 4}, known: true},
	{cmd: "EVALSHA sha 1 a arg1 arg2", want: []int{3}, known: true},
	{cmd: "EVAL_RO script 1 a", want: []int{3}, known: true},
	{cmd: "EVALSHA_RO sha 3 a b c", want: []int{3, 4, 5}, known: true},
	{cmd: "FCALL fn 2 a b x", want: []int{3, 4}, known: true},
	{cmd: "FCALL_RO fn 1 a", want: []int{3}, known: true},
	{cmd: "EVAL script 0", known: true},
	{cmd: "EVAL script 0 arg", known: true},
	{cmd: "EVAL script 3 a b", known: true},                  // more keys than arguments: error
	{cmd: "EVAL script -1 a", known: true},                   // negative: error
	{cmd: "EVAL script x a", known: true},                    // not a number: error
	{cmd: "EVAL script 99999999999999999999 a", known: true}, // overflow: error
	{cmd: "EVAL script", known: true},                        // arity

	// Destination plus numkeys.
	{cmd: "ZUNIONSTORE d 2 a b WEIGHTS 1 2", want: []int{1, 3, 4}, known: true},
	{cmd: "ZINTERSTORE d 1 a", want: []int{1, 3}, known: true},
	{cmd: "ZDIFFSTORE d 3 a b c", want: []int{1, 3, 4, 5}, known: true},
	{cmd: "ZUNIONSTORE d 0 a", known: true},
	{cmd: "ZUNIONSTORE d 5 a", known: true},

	// numkeys at args[1].
	{cmd: "ZUNION 2 a b WITHSCORES", want: []int{2, 3}, known: true},
	{cmd: "ZINTER 1 a", want: []int{2}, known: true},
	{cmd: "ZDIFF 2 a b", want: []int{2, 3}, known: true},
	{cmd: "ZINTERCARD 2 a b LIMIT 1", want: []int{2, 3}, known: true},
	{cmd: "SINTERCARD 3 a b c", want: []int{2, 3, 4}, known: true},
	{cmd: "LMPOP 2 a b LEFT COUNT 2", want: []int{2, 3}, known: true},
	{cmd: "ZMPOP 1 a MIN", want: []int{2}, known: true},
	{cmd: "LMPOP 3 a b LEFT", want: []int{2, 3, 4}, known: true}, // LEFT as a key: Redis agrees
	{cmd: "ZMPOP 0 a MIN", known: true},

	// numkeys at args[2].
	{cmd: "BLMPOP 0 2 a b LEFT", want: []int{3, 4}, known: true},
	{cmd: "BZMPOP 1.5 1 a MAX COUNT 3", want: []int{3}, known: true},
	{cmd: "BLMPOP 0 9 a b LEFT", known: true},

	// Streams.
	{cmd: "XREAD STREAMS a b 0 0", want: []int{2, 3}, known: true},
	{cmd: "XREAD COUNT 10 BLOCK 5 STREAMS a 0", want: []int{6}, known: true},
	{cmd: "XREAD STREAMS streams 0", want: []int{2}, known: true},
	{cmd: "XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a b > >", want: []int{8, 9}, known: true},
	// A group named "streams" is not the STREAMS option.
	{cmd: "XREADGROUP GROUP streams c STREAMS a >", want: []int{5}, known: true},
	// Unbalanced: XREAD fails; GETKEYS (by key spec) still reports a.
	{cmd: "XREAD STREAMS a b 0", known: true, notRedis: true},
	{cmd: "XREAD COUNT 1 a 0 0", known: true},   // no STREAMS
	{cmd: "XREAD BLOCK 0 STREAMS", known: true}, // nothing after STREAMS
	// An option Redis 7.0 does not know (a syntax error to it) does not hide
	// the keys, in case a later Redis adds one.
	{cmd: "XREAD NEWOPTION STREAMS a 0", want: []int{3}, known: true},
	{cmd: "XREADGROUP GROUP g c NEWOPTION 5 STREAMS a b > >", want: []int{7, 8}, known: true},

	// SORT: the key and STORE; BY and GET patterns are not keys.
	{cmd: "SORT a", want: []int{1}, known: true},
	{cmd: "SORT a BY w_* GET o_* GET # LIMIT 0 10 DESC ALPHA", want: []int{1}, known: true},
	{cmd: "SORT a BY store LIMIT 0 10 GET store STORE d", want: []int{1, 10}, known: true},
	{cmd: "sort a store d", want: []int{1, 3}, known: true},
	// Several STOREs: SORT writes the last; all are reported (GETKEYS
	// reports only the last).
	{cmd: "SORT a STORE d1 STORE d2", want: []int{1, 3, 5}, known: true, notRedis: true},
	{cmd: "SORT_RO a BY w_* GET o_*", want: []int{1}, known: true},

	// MIGRATE.
	{cmd: "MIGRATE host 6379 a 0 1000", want: []int{3}, known: true},
	{cmd: "MIGRATE host 6379 a 0 1000 COPY REPLACE", want: []int{3}, known: true},
	{cmd: `MIGRATE host 6379 "" 0 1000 COPY KEYS a b c`, want: []int{8, 9, 10}, known: true},
	{cmd: `MIGRATE host 6379 "" 0 1000 AUTH keys AUTH2 keys keys KEYS a`, want: []int{12}, known: true},
	{cmd: `MIGRATE host 6379 x 0 1000 KEYS a b`, known: true}, // KEYS wants "" at args[3]

	// GEORADIUS STORE / STOREDIST.
	{cmd: "GEORADIUS g 15 37 200 km", want: []int{1}, known: true},
	{cmd: "GEORADIUS g 15 37 200 km WITHDIST COUNT 5 ASC STORE d", want: []int{1, 11}, known: true},
	{cmd: "GEORADIUS g 15 37 200 km STOREDIST d", want: []int{1, 7}, known: true},
	{cmd: "GEORADIUSBYMEMBER g m 200 km STORE d", want: []int{1, 6}, known: true},
	{cmd: "GEORADIUSBYMEMBER g m 200 km STOREDIST d", want: []int{1, 6}, known: true},
	{cmd: "GEORADIUS g 15 37 200 km STORE", want: []int{1}, known: true},
	{cmd: "GEORADIUS_RO g 15 37 200 km", want: []int{1}, known: true},

	// Case.
	{cmd: "get a", want: []int{1}, known: true},
	{cmd: "GeT a", want: []int{1}, known: true},
	{cmd: "mSeT a 1 b 2", want: []int{1, 3}, known: true},
	{cmd: "eval s 1 a", want: []int{3}, known: true},
	{cmd: "xread streams a 0", want: []int{2}, known: true},
	{cmd: "oBjEcT eNcOdInG a", want: []int{2}, known: true},

	// Wrong arity: no keys, still known.
	{cmd: "GET", known: true},
	{cmd: "GET a b", known: true},
	{cmd: "MSET a", known: true},
	{cmd: "MSET a 1 b", want: []int{1, 3}, known: true}, // odd count: Redis checks later, as GETKEYS
	{cmd: "SET a", known: true},
	{cmd: "EVAL", known: true},
	{cmd: "ZUNIONSTORE d", known: true},
	{cmd: "XREAD", known: true},
	{cmd: "MIGRATE", known: true},
	{cmd: "SORT", known: true},
	{cmd: "GEORADIUS g", known: true},
	{cmd: "BITOP AND d", known: true},

	// Unknown.
	{cmd: "NOSUCHCOMMAND a b", notRedis: true},
	{cmd: strings.Repeat("G", 100) + " a", notRedis: true},
	{cmd: "", notRedis: true},
}

func TestKeyPositions(t *testing.T) {
	for _, c := range keyCases {
		got, known := KeyPositions(nil, split(c.cmd))
		if known != c.known || !slices.Equal(got, c.want) {
			t.Errorf("KeyPositions(%q) = %v, %v; want %v, %v", c.cmd, got, known, c.want, c.known)
		}
	}
}

func TestKeyPositionsAppends(t *testing.T) {
	dst := []int{42}
	got, known := KeyPositions(dst, split("MSET a 1 b 2"))
	if !known || !slices.Equal(got, []int{42, 1, 3}) {
		t.Fatalf("got %v, %v", got, known)
	}
	got, known = KeyPositions(dst[:1], split("NOSUCH a"))
	if known || !slices.Equal(got, []int{42}) {
		t.Fatalf("unknown: got %v, %v", got, known)
	}
}

func TestKeyPositionsNilArgs(t *testing.T) {
	for _, args := range [][][]byte{nil, {}, {nil}, {{}}, {[]byte("GET"), nil}, {nil, nil, nil}} {
		KeyPositions(nil, args)
		IsWrite(args)
	}
	if _, known := KeyPositions(nil, nil); known {
		t.Error("nil args known")
	}
	if got, known := KeyPositions(nil, [][]byte{[]byte("get"), nil}); !known || !slices.Equal(got, []int{1}) {
		t.Errorf("GET with a nil key: %v, %v", got, known)
	}
}

// TestKeyPositionsNoPanic calls every command and subcommand in the table
// with 0 to 12 arguments drawn from words that mean something to the
// movable-key rules, and checks positions are in range and increasing.
func TestKeyPositionsNoPanic(t *testing.T) {
	words := []string{"1", "2", "0", "-1", "3", "streams", "STREAMS", "keys", "store", "storedist",
		"limit", "by", "get", "group", "block", "count", "auth", "auth2", "", "x", "99999999999"}
	n := 0
	for name := range keySpecs {
		base := strings.Split(name, "|")
		for argc := 0; argc <= 12; argc++ {
			for w := range words {
				args := make([][]byte, 0, len(base)+argc)
				for _, b := range base {
					args = append(args, []byte(strings.ToUpper(b)))
				}
				for i := 0; i < argc; i++ {
					args = append(args, []byte(words[(w+i*7)%len(words)]))
				}
				checkPositions(t, args)
				n++
			}
		}
	}
	t.Logf("%d calls", n)
}

func checkPositions(t *testing.T, args [][]byte) {
	t.Helper()
	got, _ := KeyPositions(nil, args)
	for i, p := range got {
		if p < 1 || p >= len(args) || i > 0 && p <= got[i-1] {
			t.Fatalf("KeyPositions(%q) = %v: out of range or not increasing", args, got)
		}
	}
	IsWrite(args)
}

func FuzzKeyPositions(f *testing.F) {
	for _, c := range keyCases {
		f.Add(strings.ReplaceAll(c.cmd, `""`, ""))
	}
	f.Fuzz(func(t *testing.T, s string) {
		var args [][]byte
		for _, a := range strings.Split(s, " ") {
			args = append(args, []byte(a))
		}
		checkPositions(t, args)
	})
}

func TestIsWrite(t *testing.T) {
	for _, c := range []struct {
		cmd  string
		want bool
	}{
		{"GET a", false},
		{"get a", false},
		{"SET a v", true},
		{"set a v", true},
		{"INCR a", true},
		{"HGETALL h", false},
		{"HSET h f v", true},
		{"DEL a", true},
		{"EXPIRE a 10", true},
		{"EVAL s 0", true},
		{"EVALSHA s 0", true},
		{"FCALL f 0", true},
		{"EVAL_RO s 0", false},
		{"FCALL_RO f 0", false},
		{"PFCOUNT a", false},
		{"MGET a b", false},
		{"MSET a 1", true},
		{"SORT a", true},
		{"SORT_RO a", false},
		{"XREAD STREAMS a 0", false},
		{"XREADGROUP GROUP g c STREAMS a >", true},
		{"FLUSHALL", true},
		{"PING", false},
		{"OBJECT ENCODING a", false},
		{"XINFO STREAM s", false},
		{"XGROUP CREATE s g $", true},
		{"xgroup destroy s g", true},
		{"FUNCTION LOAD code", true},
		{"OBJECT", false},
		{"GET", false}, // wrong arity: the flag still answers
		{"NOSUCH a", true},
		{"OBJECT NOSUCH a", true},
		{"", false},
	} {
		if got := IsWrite(split(c.cmd)); got != c.want {
			t.Errorf("IsWrite(%q) = %v, want %v", c.cmd, got, c.want)
		}
	}
}

func TestKeyPositionsDoesNotAllocate(t *testing.T) {
	dst := make([]int, 0, 16)
	for _, cmd := range []string{
		"GET a", "mset a 1 b 2 c 3", "EVAL s 2 a b", "ZUNIONSTORE d 2 a b",
		"XREADGROUP GROUP g c STREAMS a b > >", "SORT a BY x STORE d", "OBJECT ENCODING a",
		`MIGRATE h 1 "" 0 1000 KEYS a b`, "GEORADIUS g 1 2 3 km STORE d", "NOSUCH a",
		"xinfo stream s",
	} {
		args := split(cmd)
		if n := testing.AllocsPerRun(100, func() {
			KeyPositions(dst, args)
			IsWrite(args)
		}); n != 0 {
			t.Errorf("%s: %v allocations", cmd, n)
		}
	}
}

// TestMovableRulesCoverTable: every movablekeys command has a rule, and
// every rule is for a movablekeys command.
func TestMovableRulesCoverTable(t *testing.T) {
	for name, s := range keySpecs {
		if _, ok := movableRules[name]; s.movablekeys && !ok {
			t.Errorf("%s is movablekeys but has no rule in movableRules", name)
		}
	}
	for name := range movableRules {
		if !keySpecs[name].movablekeys {
			t.Errorf("movableRules has %s, which is not a movablekeys command in the table", name)
		}
	}
}

func TestTable(t *testing.T) {
	if len(keySpecs) < 200 {
		t.Fatalf("only %d commands", len(keySpecs))
	}
	for name, s := range keySpecs {
		if len(name) > maxName || strings.ToLower(name) != name {
			t.Errorf("%q: too long or not lower case", name)
		}
		if s.arity == 0 || s.first < 0 || s.first > 0 && s.step < 1 {
			t.Errorf("%s: odd entry %+v", name, s)
		}
		if container, _, ok := strings.Cut(name, "|"); ok && !keySpecs[container].subcommands {
			t.Errorf("%s: %s is not marked as a container", name, container)
		}
	}
	want := map[string]keySpec{
		"watch":  {arity: -2, first: 1, last: -1, step: 1},
		"mset":   {arity: -3, first: 1, last: -1, step: 2, write: true, keyWrite: true},
		"msetnx": {arity: -3, first: 1, last: -1, step: 2, write: true, keyWrite: true},
		"bitop":  {arity: -4, first: 2, last: -1, step: 1, write: true, keyWrite: true},
		"get":    {arity: 2, first: 1, last: 1, step: 1, readonly: true},
	}
	for name, w := range want {
		if got := keySpecs[name]; got != w {
			t.Errorf("%s: %+v, want %+v", name, got, w)
		}
	}
	// Every command the proxy's class table names is in the key table,
	// except those newer than the redis-server the table came from and
	// the proxy's own RESPITE.
	newer := map[string]bool{"waitaof": true, "respite": true, "client|setinfo": true, "client|no-touch": true} // Redis 7.2
	for id := range kinds {
		if name := id.Name(); !newer[name] {
			if _, ok := keySpecs[name]; !ok {
				t.Errorf("%s (in table) is missing from keySpecs", name)
			}
		}
	}
}

// TestKeyPositionsMatchRedis asks a throwaway redis-server's COMMAND
// GETKEYS about every case (except those marked notRedis) and compares.
func TestKeyPositionsMatchRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	c, err := net.DialTimeout("tcp", r.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	version := ""
	if info, err := redisCall(c, br, []byte("INFO"), []byte("server")); err == nil {
		for _, line := range strings.Split(string(info.([]byte)), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				version = v
			}
		}
	}
	if version != keySpecsRedisVersion {
		t.Logf("redis-server %s, table from %s: differences may be version changes", version, keySpecsRedisVersion)
	}
	for _, kc := range keyCases {
		if kc.notRedis {
			continue
		}
		args := split(kc.cmd)
		got, known := KeyPositions(nil, args)
		req := append([][]byte{[]byte("COMMAND"), []byte("GETKEYS")}, args...)
		reply, err := redisCall(c, br, req...)
		var want []int
		if err == nil {
			for _, k := range reply.([]any) {
				i := slices.IndexFunc(args, func(a []byte) bool { return bytes.Equal(a, k.([]byte)) })
				if i < 1 {
					t.Fatalf("%q: GETKEYS returned %q, not an argument", kc.cmd, k)
				}
				if slices.ContainsFunc(args[i+1:], func(a []byte) bool { return bytes.Equal(a, k.([]byte)) }) {
					t.Fatalf("%q: key %q is not unique among the arguments; the test cannot map it", kc.cmd, k)
				}
				want = append(want, i)
			}
			slices.Sort(want)
		} else if strings.Contains(err.Error(), "Invalid command") {
			if known {
				t.Errorf("%q: known, but Redis says %v", kc.cmd, err)
			}
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("%q: KeyPositions %v, COMMAND GETKEYS %v (err %v)", kc.cmd, got, want, err)
		}
	}
}

// TestKeyPositionsCoverRedisGetkeys calls COMMAND GETKEYS on a throwaway
// redis-server for every command with keys, with 0 to 9 arguments drawn
// from words that matter to the movable-key rules, and checks that every
// key Redis reports, KeyPositions reports too (it may report more: every
// STORE destination, PFMERGE's destination without sources, ...). The one
// deliberate exception: XREAD/XREADGROUP without a STREAMS option (the word
// may be an option's argument: a group or consumer name) or with an odd
// number of arguments after it, which Redis rejects but whose key spec
// still yields keys.
func TestKeyPositionsCoverRedisGetkeys(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	r, err := testenv.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	c, err := net.DialTimeout("tcp", r.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(120 * time.Second))
	br := bufio.NewReader(c)
	words := []string{"1", "2", "0", "-1", "3", "streams", "STREAMS", "keys", "store", "storedist",
		"limit", "by", "get", "group", "block", "count", "auth", "auth2", "", "x", "99999999999"}
	calls, bad := 0, map[string]int{}
	for name, s := range keySpecs {
		if s.first == 0 && !s.movablekeys || s.notKey {
			continue
		}
		base := strings.Split(name, "|")
		for argc := 0; argc <= 9; argc++ {
			for w := range words {
				args := [][]byte{}
				for _, b := range base {
					args = append(args, []byte(b))
				}
				for i := 0; i < argc; i++ {
					args = append(args, []byte(words[(w+i*7)%len(words)]))
				}
				got, _ := KeyPositions(nil, args)
				reply, err := redisCall(c, br, append([][]byte{[]byte("COMMAND"), []byte("GETKEYS")}, args...)...)
				calls++
				if err != nil {
					continue // no keys
				}
				for _, k := range reply.([]any) {
					if slices.ContainsFunc(got, func(p int) bool { return bytes.Equal(args[p], k.([]byte)) }) {
						continue
					}
					if (name == "xread" || name == "xreadgroup") && streamsInvalid(args) {
						continue
					}
					if bad[name]++; bad[name] <= 3 {
						t.Errorf("%q: Redis reports key %q, KeyPositions %v", args, k, got)
					}
				}
			}
		}
	}
	t.Logf("%d GETKEYS calls", calls)
}

// streamsInvalid reports whether XREAD(GROUP) args have no STREAMS option
// (found as xreadCommand finds it) or an odd number of arguments after it.
func streamsInvalid(args [][]byte) bool {
	for i := 1; i < len(args); i++ {
		switch more := len(args) - i - 1; {
		case (equalFold(args[i], "block") || equalFold(args[i], "count")) && more >= 1:
			i++
		case equalFold(args[i], "group") && more >= 2:
			i += 2
		case equalFold(args[i], "streams") && more >= 1:
			return more%2 != 0
		}
	}
	return true
}

// TestGeneratedTableUpToDate reruns the generator and compares its output
// with keys_table.go, when the local redis-server is the version the table
// came from.
func TestGeneratedTableUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found: install it with \"apt-get install -y redis-server\"")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("no go command on PATH")
	}
	out := filepath.Join(t.TempDir(), "keys_table.go")
	cmd := exec.Command(gobin, "run", "./gen", "-o", out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./gen: %v\n%s", err, msg)
	}
	fresh, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	committed, err := os.ReadFile("keys_table.go")
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("const keySpecsRedisVersion = %q", keySpecsRedisVersion)
	if !bytes.Contains(fresh, []byte(marker)) {
		t.Skipf("local redis-server is not %s; not comparing", keySpecsRedisVersion)
	}
	if !bytes.Equal(fresh, committed) {
		t.Errorf("keys_table.go differs from what go run ./gen writes; run go generate ./router/")
	}
}

// redisCall sends one command and reads its RESP2 reply: bulk and simple
// strings as []byte, integers as int64, arrays as []any, errors returned.
func redisCall(w io.Writer, br *bufio.Reader, args ...[]byte) (any, error) {
	var b []byte
	b = fmt.Appendf(b, "*%d\r\n", len(args))
	for _, a := range args {
		b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	return redisRead(br)
}

func redisRead(br *bufio.Reader) (any, error) {
	line, err := br.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 {
		return nil, fmt.Errorf("bad reply %q", line)
	}
	body := string(line[1 : len(line)-2])
	switch line[0] {
	case '+':
		return []byte(body), nil
	case '-':
		return nil, errors.New(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		_, err = io.ReadFull(br, buf)
		return buf[:n], err
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = redisRead(br); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	return nil, fmt.Errorf("bad reply %q", line)
}

func BenchmarkKeyPositions(b *testing.B) {
	for _, bc := range []struct{ name, cmd string }{
		{"GET", "GET user:1"},
		{"MSET10", "MSET k0 v k1 v k2 v k3 v k4 v k5 v k6 v k7 v k8 v k9 v"},
		{"EVAL2", "EVAL script 2 a b"},
		{"XREADGROUP", "XREADGROUP GROUP g c COUNT 10 STREAMS a b > >"},
		{"OBJECT_ENCODING", "OBJECT ENCODING a"},
	} {
		args := split(bc.cmd)
		dst := make([]int, 0, 16)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				dst, _ = KeyPositions(dst[:0], args)
			}
		})
	}
}
