package upstream

import (
	"bufio"
	"testing"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/internal/testenv"
	"github.com/respite/respite/resp"
)

// Slot agrees with Redis' examples (cluster spec: hash tags) and with
// testenv's bit-at-a-time CRC16.
func TestSlot(t *testing.T) {
	for _, tc := range []struct {
		key  string
		slot int
	}{
		{"foo", 12182}, {"123456789", 0x31c3 & 16383}, {"", 0},
	} {
		if got := Slot([]byte(tc.key)); got != tc.slot {
			t.Errorf("Slot(%q) = %d, want %d", tc.key, got, tc.slot)
		}
	}
	same := [][2]string{
		{"{user1000}.following", "{user1000}.followers"},
		{"foo{bar}{zap}", "bar"},
		{"foo{{bar}}zap", "{bar"},
		{"foo{}{bar}", "foo{}{bar}"},
	}
	for _, p := range same {
		if Slot([]byte(p[0])) != Slot([]byte(p[1])) {
			t.Errorf("%q and %q hash to %d and %d", p[0], p[1], Slot([]byte(p[0])), Slot([]byte(p[1])))
		}
	}
	for _, k := range []string{"a", "key:1", "{x}y", "x{y", "}{", "{}", "respite:neg:{user}:1"} {
		if got, want := Slot([]byte(k)), testenv.KeySlot(k); got != want {
			t.Errorf("Slot(%q) = %d, testenv.KeySlot %d", k, got, want)
		}
	}
}

func TestRedirect(t *testing.T) {
	for _, tc := range []struct {
		reply string
		ask   bool
		slot  int
		addr  string
		ok    bool
	}{
		{"-MOVED 3999 127.0.0.1:6381\r\n", false, 3999, "127.0.0.1:6381", true},
		{"-ASK 12 10.0.0.2:7000\r\n", true, 12, "10.0.0.2:7000", true},
		{"-MOVED 3999 :6381\r\n", false, 3999, ":6381", true},
		{"-MOVED 99999 a:1\r\n", false, 0, "", false},
		{"-ERR MOVED 1 a:1\r\n", false, 0, "", false},
		{"+MOVED 1 a:1\r\n", false, 0, "", false},
		{"-MOVED 1\r\n", false, 0, "", false},
	} {
		ask, slot, addr, ok := redirect([]byte(tc.reply))
		if ok != tc.ok || ok && (ask != tc.ask || slot != tc.slot || addr != tc.addr) {
			t.Errorf("%q: %v %d %q %v", tc.reply, ask, slot, addr, ok)
		}
	}
}

// The slot map read with CLUSTER SHARDS is the one CLUSTER SLOTS (the
// fallback) describes, and names every primary.
func TestClusterTopology(t *testing.T) {
	cl, err := testenv.StartCluster()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Stop()
	cfg := config.Default().Upstream
	cfg.Mode, cfg.Addrs = config.ModeCluster, cl.Addrs()
	u, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	c := u.Cluster()
	shards, err := c.readTopology(cl.Addrs()[1])
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cl.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	owner := func(ss []shard) map[int]string {
		m := map[int]string{}
		for _, s := range ss {
			for _, r := range s.ranges {
				for i := r[0]; i <= r[1]; i++ {
					m[i] = s.addr
				}
			}
		}
		return m
	}
	fromShards := owner(shards)
	if len(fromShards) != NumSlots || len(shards) != 3 {
		t.Fatalf("CLUSTER SHARDS: %d slots on %d primaries", len(fromShards), len(shards))
	}
	for _, n := range nodes {
		for _, r := range n.Slots {
			for i := r.Start; i <= r.End; i++ {
				if fromShards[i] != n.Addr {
					t.Fatalf("slot %d: %s, CLUSTER NODES says %s", i, fromShards[i], n.Addr)
				}
			}
		}
	}
	reply, err := testenvRaw(cl.Addrs()[0], "CLUSTER", "SLOTS")
	if err != nil {
		t.Fatal(err)
	}
	slots, err := parseSlots(reply, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	fromSlots := owner(slots)
	for i := range NumSlots {
		if fromSlots[i] != fromShards[i] {
			t.Fatalf("slot %d: CLUSTER SLOTS %s, CLUSTER SHARDS %s", i, fromSlots[i], fromShards[i])
		}
	}
	addrs, err := c.Primaries()
	if err != nil || len(addrs) != 3 {
		t.Fatalf("Primaries: %v %v", addrs, err)
	}
}

// testenvRaw sends one command on a connection of its own and returns the
// raw reply.
func testenvRaw(addr string, args ...string) ([]byte, error) {
	cfg := config.Default().Upstream
	cfg.Addr = addr
	nc, br, _, err := dial(cfg, nil, 2, "", "")
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if _, err := nc.Write(appendArgs(args)); err != nil {
		return nil, err
	}
	return appendReply(br)
}

func appendArgs(args []string) []byte { return resp.AppendCommand(nil, strArgs(args...)) }

func appendReply(br *bufio.Reader) ([]byte, error) { return resp.AppendReply(nil, br) }
