package router

import (
	"strings"
	"testing"

	"github.com/respite/respite/internal/config"
)

// The states of the dispatch table, one column each.
var dispatchStates = []struct {
	name string
	st   State
}{
	{"fresh", State{Proto: 2}},
	{"noauth", State{ProxyAuth: true, Proto: 2}},
	{"pinned", State{Pinned: true, Proto: 2}},
	{"watching", State{Pinned: true, Watching: true, Proto: 2}},
	{"multi", State{Pinned: true, Multi: true, Proto: 2}},
	{"sub2", State{Pinned: true, Subscribed: true, Proto: 2}},
	{"sub3", State{Pinned: true, Subscribed: true, Proto: 3}},
	{"otherdb", State{Pinned: true, OtherDB: true, Proto: 2}},
	{"replyoff", State{ReplyOff: true, Proto: 2}},
	{"authed", State{ProxyAuth: true, Authed: true, Proto: 3}},
}

// Short names for the expected paths.
const (
	sh = "shared"
	pi = "pinned"
	bl = "blocking"
	de = "detach"
	wa = "watch"
	lo = "local"
	ro = "routed"
	qu = "queue"
	ql = "queue-local"
	ex = "exec"
	na = "refused:NOAUTH"
	ce = "refused:ERR Can't"
	rf = "refused:ERR command"
)

// TestDispatchTable is the dispatch rule set as a table: every kind of
// command (plain, routed, multi-key across routes, blocking, each
// transaction command, pub/sub, MONITOR, SELECT, connection state, each
// local command, refused, unknown, wrong arity) in every session state.
func TestDispatchTable(t *testing.T) {
	rs := NewRoutes([]Route{{Name: "users", Prefix: "user:", Policy: config.CacheAside, Format: config.FormatJSON}})
	//               fresh noauth pinned watching multi sub2 sub3 otherdb replyoff authed
	rows := []struct {
		cmd  string
		want [10]string
	}{
		{"GET k", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"GET user:1", [10]string{ro, na, ro, ro, qu, ce, ro, pi, ro, ro}},
		{"MGET user:1 k", [10]string{ro, na, ro, ro, qu, ce, ro, pi, ro, ro}},
		{"SET user:1 {}", [10]string{ro, na, ro, ro, qu, ce, ro, pi, ro, ro}},
		{"BLPOP k 0", [10]string{bl, na, bl, bl, pi, pi, bl, bl, bl, bl}},
		{"BLPOP user:1 0", [10]string{ro, na, ro, ro, qu, ce, ro, bl, ro, ro}},
		{"XREAD STREAMS s 0", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"XREAD BLOCK 0 STREAMS s 0", [10]string{bl, na, bl, bl, pi, pi, bl, bl, bl, bl}},
		{"MULTI", [10]string{pi, na, pi, pi, pi, pi, pi, pi, pi, pi}},
		{"EXEC", [10]string{sh, na, pi, pi, ex, pi, pi, pi, sh, sh}},
		{"DISCARD", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"WATCH k", [10]string{wa, na, wa, wa, pi, pi, wa, wa, wa, wa}},
		{"WATCH user:1", [10]string{wa, na, wa, wa, pi, ce, wa, wa, wa, wa}},
		{"UNWATCH", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"SUBSCRIBE c", [10]string{de, na, de, de, pi, de, de, de, de, de}},
		{"PSUBSCRIBE p*", [10]string{de, na, de, de, pi, de, de, de, de, de}},
		{"SSUBSCRIBE c", [10]string{de, na, de, de, pi, de, de, de, de, de}},
		{"UNSUBSCRIBE", [10]string{de, na, de, de, pi, de, de, de, de, de}},
		{"MONITOR", [10]string{de, na, de, de, pi, pi, de, de, de, de}},
		{"SELECT 0", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"SELECT 1", [10]string{pi, na, pi, pi, pi, pi, pi, pi, pi, pi}},
		{"CLIENT TRACKING ON", [10]string{de, na, de, de, pi, pi, de, de, de, de}},
		{"CLIENT TRACKING OFF", [10]string{pi, na, pi, pi, pi, pi, pi, pi, pi, pi}},
		{"CLIENT CACHING YES", [10]string{pi, na, pi, pi, pi, pi, pi, pi, pi, pi}},
		{"CLIENT NO-EVICT ON", [10]string{pi, na, pi, pi, pi, pi, pi, pi, pi, pi}},
		{"CLIENT GETREDIR", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"HELLO 3", [10]string{lo, lo, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"AUTH u p", [10]string{pi, lo, pi, pi, pi, ce, pi, pi, pi, lo}},
		{"QUIT", [10]string{lo, lo, lo, lo, lo, lo, lo, lo, lo, lo}},
		{"RESET", [10]string{lo, lo, lo, lo, lo, lo, lo, lo, lo, lo}},
		{"PING", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"CLIENT ID", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"CLIENT SETNAME n", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"CLIENT REPLY OFF", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"CLIENT LIST", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"CLIENT KILL ID 5", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"CLIENT UNBLOCK 5", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"CLIENT PAUSE 10", [10]string{sh, na, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"INFO", [10]string{lo, na, lo, lo, pi, ce, lo, lo, lo, lo}},
		{"RESPITE STATS", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"RESPITE", [10]string{lo, na, lo, lo, ql, ce, lo, lo, lo, lo}},
		{"SYNC", [10]string{rf, rf, rf, rf, rf, rf, rf, rf, rf, rf}},
		{"NOSUCHCOMMAND x", [10]string{sh, sh, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"GET", [10]string{sh, sh, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"CLIENT", [10]string{sh, sh, pi, pi, pi, pi, pi, pi, sh, sh}},
		{"CLIENT NOSUCHSUB", [10]string{sh, sh, pi, pi, pi, pi, pi, pi, sh, sh}},
	}
	for _, row := range rows {
		var cmd Command
		Classify(&cmd, split(row.cmd), rs)
		for i, col := range dispatchStates {
			st := col.st
			st.DefaultDB = "0"
			d := Dispatch(st, &cmd)
			got := d.Path.String()
			if d.Path == PathRefused {
				got = "refused:" + d.Err
			}
			if want := row.want[i]; !decided(got, want) {
				t.Errorf("%-24s in %-8s: %s, want %s", row.cmd, col.name, got, want)
			}
		}
	}
}

// TestDispatchIgnoresWatchingAndReplyMode: WATCH armed and CLIENT REPLY
// OFF never change a command's path.
func TestDispatchIgnoresWatchingAndReplyMode(t *testing.T) {
	rs := NewRoutes([]Route{{Name: "users", Prefix: "user:"}})
	for _, line := range []string{"GET k", "GET user:1", "EXEC", "BLPOP k 0", "SUBSCRIBE c", "HELLO 3", "CLIENT ID", "SELECT 1"} {
		var cmd Command
		Classify(&cmd, split(line), rs)
		for _, col := range dispatchStates {
			base := col.st
			base.Watching, base.ReplyOff = false, false
			for _, flip := range []State{{Watching: true}, {ReplyOff: true}} {
				st := base
				st.Watching, st.ReplyOff = flip.Watching, flip.ReplyOff
				if a, b := Dispatch(base, &cmd), Dispatch(st, &cmd); a != b {
					t.Errorf("%s in %s: %v, with %+v: %v", line, col.name, a, flip, b)
				}
			}
		}
	}
}

// TestNextFollowsMulti: MULTI enters, EXEC and DISCARD leave.
func TestNextFollowsMulti(t *testing.T) {
	st := State{Pinned: true}
	for _, step := range []struct {
		cmd   string
		multi bool
	}{{"GET a", false}, {"MULTI", true}, {"SET a b", true}, {"MULTI", true}, {"EXEC", false}, {"EXEC", false}, {"MULTI", true}, {"DISCARD", false}} {
		var cmd Command
		Classify(&cmd, split(step.cmd), nil)
		if st = st.Next(&cmd); st.Multi != step.multi {
			t.Fatalf("after %s: multi %v, want %v", step.cmd, st.Multi, step.multi)
		}
	}
}

// TestClassify checks the record of a few commands.
func TestClassify(t *testing.T) {
	rs := NewRoutes([]Route{{Name: "users", Prefix: "user:"}, {Name: "vip", Prefix: "user:vip:"}})
	for _, tc := range []struct {
		cmd    string
		id     ID
		kind   Kind
		split  Split
		keys   []int
		routes []int16
		route  int16
	}{
		{"get user:1", CmdGet, KindPlain, SplitNone, []int{1}, []int16{0}, 0},
		{"GET user:vip:1", CmdGet, KindPlain, SplitNone, []int{1}, []int16{1}, 1},
		{"MGET a user:1 user:vip:2", CmdMget, KindPlain, SplitArray, []int{1, 2, 3}, []int16{-1, 0, 1}, MixedRoutes},
		{"mset a 1 user:2 x", CmdMset, KindPlain, SplitPairs, []int{1, 3}, []int16{-1, 0}, 0},
		{"DEL user:1 user:2", CmdDel, KindPlain, SplitSum, []int{1, 2}, []int16{0, 0}, 0},
		{"client KILL id 3", CmdClientKill, KindLocal, SplitNone, nil, nil, NoRoute},
		{"SUBSCRIBE user:1", CmdSubscribe, KindSubscribe, SplitNone, nil, nil, NoRoute},
		{"xreadgroup GROUP g c STREAMS user:1 >", CmdXreadgroup, KindPlain, SplitNone, []int{5}, []int16{0}, 0},
		{"BLPOP a b 0", CmdBlpop, KindBlocking, SplitNone, []int{1, 2}, []int16{-1, -1}, NoRoute},
		{"nosuch a", CmdUnknown, KindPlain, SplitNone, nil, nil, NoRoute},
	} {
		var cmd Command
		Classify(&cmd, split(tc.cmd), rs)
		if cmd.ID != tc.id || cmd.Kind != tc.kind || cmd.Split != tc.split || cmd.Route != tc.route ||
			!equalInts(cmd.Keys, tc.keys) || !equalInt16s(cmd.KeyRoute, tc.routes) {
			t.Errorf("%s: id %v %s kind %v split %v keys %v routes %v route %d", tc.cmd, cmd.ID, cmd.Name(), cmd.Kind, cmd.Split, cmd.Keys, cmd.KeyRoute, cmd.Route)
		}
	}
}

// TestClassifyDoesNotAllocate: a reused record classifies without
// allocating, routes or not.
func TestClassifyDoesNotAllocate(t *testing.T) {
	rs := NewRoutes([]Route{{Name: "users", Prefix: "user:"}})
	var cmd Command
	for _, line := range []string{"GET user:1", "MGET a user:1 b", "CLIENT KILL ID 1", "SET k v"} {
		args := split(line)
		Classify(&cmd, args, rs)
		if n := testing.AllocsPerRun(100, func() { Classify(&cmd, args, rs) }); n != 0 {
			t.Errorf("%s: %v allocations", line, n)
		}
	}
}

// TestIDNames: every id has its name, and looking the name up gives the id.
func TestIDNames(t *testing.T) {
	for id := ID(1); id < numIDs; id++ {
		name := id.Name()
		if name == "" {
			t.Fatalf("id %d has no name", id)
		}
		c, sub, ok := strings.Cut(name, "|")
		args := [][]byte{[]byte(strings.ToUpper(c))}
		if ok {
			args = append(args, []byte(strings.ToUpper(sub)))
		}
		if got := Lookup(args); got != id {
			t.Errorf("Lookup(%q) = %d (%s), want %d", name, got, got.Name(), id)
		}
	}
	if CmdClientKill.Container() != CmdClient || CmdGet.Container() != CmdGet {
		t.Errorf("Container: %v %v", CmdClientKill.Container(), CmdGet.Container())
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalInt16s(a, b []int16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDispatchPermissions: the proxy's own keyspace is refused in every
// state of the default database, administration only for clients without
// admin rights (and not for the commands the operator lets through), and
// FLUSHALL/FLUSHDB go to the route layer while write-back routes queue in
// Redis.
func TestDispatchPermissions(t *testing.T) {
	wb := NewRoutes([]Route{{Name: "pv", Prefix: "pv:", Policy: config.WriteBack, Format: config.FormatValue}})
	plain := NewRoutes([]Route{{Name: "users", Prefix: "user:", Policy: config.CacheAside, Format: config.FormatJSON}})
	denied := State{Proto: 2, AdminDenied: true, AdminAllowed: []ID{CmdSlowlog}}
	for _, tc := range []struct {
		cmd  string
		rs   *Routes
		st   State
		want string
	}{
		{"GET respite:neg:user:1", plain, State{Proto: 2}, "refused:" + ErrNoPermKey},
		{"DEL respite:wb:pv", plain, State{Proto: 2, Pinned: true, Multi: true}, "refused:" + ErrNoPermKey},
		{"XADD respite:wb:pv * k v", wb, State{Proto: 2}, "refused:" + ErrNoPermKey},
		{"GET respite:x", plain, State{Proto: 2, Pinned: true, OtherDB: true}, "pinned"},
		{"SUBSCRIBE respite:invalidate", plain, State{Proto: 2}, "refused:" + ErrNoPermChannel},
		{"PUBLISH respite:invalidate x", plain, State{Proto: 2}, "refused:" + ErrNoPermChannel},
		{"GET respitex", plain, State{Proto: 2}, "shared"},
		{"CONFIG GET requirepass", plain, denied, "refused:NOPERM this user has no permissions to run the 'config|get' command"},
		{"CONFIG GET requirepass", plain, State{Proto: 2}, "shared"},
		{"SHUTDOWN", plain, denied, "refused:NOPERM this user has no permissions to run the 'shutdown' command"},
		{"SLOWLOG GET", plain, denied, "shared"},
		{"ACL WHOAMI", plain, denied, "shared"},
		// Clients' connections log in as the restricted user: the proxy
		// names the operator's, as Redis would; refused where Redis is.
		{"ACL WHOAMI", plain, State{Proto: 2, Restricted: true}, "local"},
		{"ACL WHOAMI", plain, State{Proto: 2, Pinned: true, Restricted: true}, "local"},
		{"ACL WHOAMI", plain, State{Proto: 2, Pinned: true, Multi: true, Restricted: true}, "queue-local"},
		{"ACL WHOAMI", plain, State{Proto: 2, Pinned: true, Subscribed: true, Restricted: true}, "pinned"},
		{"ACL WHOAMI x", plain, State{Proto: 2, Restricted: true}, "shared"},
		{"SORT l BY w_* GET o:*->name", plain, State{Proto: 2, Restricted: true}, "own"},
		{"SORT_RO l GET # GET x", plain, State{Proto: 2, Restricted: true}, "own"},
		{"SORT l BY nosort LIMIT 0 1", plain, State{Proto: 2, Restricted: true}, "shared"},
		{"SORT l BY w_* STORE dst", plain, State{Proto: 2, Restricted: true}, "own"},
		{"SORT l BY w_*", plain, State{Proto: 2, Pinned: true, Restricted: true}, "pinned"},
		{"SORT l BY w_*", plain, State{Proto: 2}, "shared"},
		{"SORT l GET *", plain, State{Proto: 2, Restricted: true}, "refused:" + ErrNoPermKey},
		{"SORT l BY res*", plain, State{Proto: 2, Restricted: true}, "refused:" + ErrNoPermKey},
		{"SORT l GET respite:neg:*", plain, State{Proto: 2, Restricted: true}, "refused:" + ErrNoPermKey},
		{"SORT l BY respitex*", plain, State{Proto: 2, Restricted: true}, "own"},
		{"SORT user:1 BY w_*", plain, State{Proto: 2, Restricted: true}, "routed"},
		{"ACL LIST", plain, denied, "refused:NOPERM this user has no permissions to run the 'acl|list' command"},
		{"FLUSHALL", wb, State{Proto: 2}, "routed"},
		{"FLUSHDB", wb, State{Proto: 2, Pinned: true}, "routed"},
		{"FLUSHALL", wb, State{Proto: 2, Pinned: true, Multi: true}, "refused:ERR FLUSHALL inside MULTI"},
		{"FLUSHDB", wb, State{Proto: 2, Pinned: true, OtherDB: true}, "pinned"},
		// With any route the route layer carries flushes (clients' own
		// connections may not flush: upstream/clientuser.go); without, Redis.
		{"FLUSHALL", plain, State{Proto: 2}, "routed"},
		{"FLUSHDB ASYNC", plain, State{Proto: 2, Restricted: true}, "routed"},
		{"FLUSHALL", nil, State{Proto: 2}, "shared"},
		{"FLUSHDB", nil, State{Proto: 2}, "shared"},
		// From another database: FLUSHALL empties the proxy's too, MOVE
		// and COPY ... DB write into it; SWAPDB would move its keys away.
		{"FLUSHALL", wb, State{Proto: 2, Pinned: true, OtherDB: true, DefaultDB: "0"}, "routed"},
		{"FLUSHALL ASYNC", wb, State{Proto: 2, Pinned: true, OtherDB: true, Multi: true, DefaultDB: "0"}, "refused:ERR FLUSHALL inside MULTI"},
		{"MOVE respite:neg:user:7 0", plain, State{Proto: 2, Pinned: true, OtherDB: true, DefaultDB: "0"}, "refused:" + ErrNoPermKey},
		{"MOVE respite:neg:user:7 4", plain, State{Proto: 2, Pinned: true, OtherDB: true, DefaultDB: "0"}, "pinned"},
		{"COPY x respite:neg:user:8 DB 0", plain, State{Proto: 2, Pinned: true, OtherDB: true, DefaultDB: "0"}, "refused:" + ErrNoPermKey},
		{"COPY x respite:neg:user:8 db 4 REPLACE", plain, State{Proto: 2, Pinned: true, OtherDB: true, DefaultDB: "0"}, "pinned"},
		{"SWAPDB 0 3", plain, State{Proto: 2, DefaultDB: "0"}, "refused:" + ErrSwapDefaultDB},
		{"SWAPDB 3 0", plain, State{Proto: 2, Pinned: true, OtherDB: true, DefaultDB: "0"}, "refused:" + ErrSwapDefaultDB},
		{"SWAPDB 3 4", plain, State{Proto: 2, DefaultDB: "0"}, "shared"},
		{"SWAPDB 3 4", plain, State{Proto: 2, DefaultDB: "0", Restricted: true}, "own"},
		{"SWAPDB 3 4", plain, State{Proto: 2, DefaultDB: "0", Restricted: true, Pinned: true, Multi: true}, "pinned"},
		{"SWAPDB 0 3", plain, State{Proto: 2, DefaultDB: "0", Restricted: true}, "refused:" + ErrSwapDefaultDB},
		{"SWAPDB 0 3", nil, State{Proto: 2, DefaultDB: "0"}, "shared"},
	} {
		var cmd Command
		Classify(&cmd, split(tc.cmd), tc.rs)
		d := Dispatch(tc.st, &cmd)
		got := d.Path.String()
		if d.Path == PathRefused {
			got = "refused:" + d.Err
		}
		if !decided(got, tc.want) {
			t.Errorf("%s in %+v: %s, want %s", tc.cmd, tc.st, got, tc.want)
		}
	}
}

// TestDispatchUpstreamNoAuth: once Redis' default user needs a password the
// proxy does not hold, a client that has not logged in gets Redis' NOAUTH
// for everything but what Redis allows before AUTH; AUTH goes to Redis on
// the client's own connection, HELLO is the proxy's (it refuses HELLO
// without AUTH itself), and an unknown command is still Redis' to refuse.
func TestDispatchUpstreamNoAuth(t *testing.T) {
	st := State{UpstreamNoAuth: true, Proto: 2}
	for _, tc := range []struct{ cmd, want string }{
		{"PING", na}, {"GET k", na}, {"SET k v", na}, {"SELECT 1", na}, {"SUBSCRIBE c", na}, {"MULTI", na},
		{"CLIENT ID", na}, {"ECHO x", na},
		{"AUTH pw", pi}, {"AUTH user pw", pi}, {"HELLO 3 AUTH user pw", lo}, {"HELLO 3", lo},
		{"QUIT", lo}, {"RESET", lo}, {"NOSUCHCMD", sh},
	} {
		var cmd Command
		Classify(&cmd, split(tc.cmd), nil)
		d := Dispatch(st, &cmd)
		got := d.Path.String()
		if d.Path == PathRefused {
			got = "refused:" + d.Err
		}
		if !decided(got, tc.want) {
			t.Errorf("%s: %s, want %s", tc.cmd, got, tc.want)
		}
	}
}

// decided reports whether Dispatch's decision got (a path, or "refused:"
// and the error) is want: the same path, or for a refusal, an error that
// starts with want's.
func decided(got, want string) bool {
	if strings.HasPrefix(want, "refused:") {
		return strings.HasPrefix(got, want)
	}
	return got == want
}
