package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// call runs one command and fails the test on a connection error; error
// replies come back as replyError.
func call(t *testing.T, addr string, args ...string) (any, error) {
	t.Helper()
	v, err := redisCall(addr, args...)
	var re replyError
	if err != nil && !errors.As(err, &re) {
		t.Fatalf("%s on %s: %v", strings.Join(args, " "), addr, err)
	}
	return v, err
}

// moved parses "MOVED slot addr"; ok is false for other errors.
func moved(err error) (slot int, addr string, ok bool) {
	var re replyError
	if !errors.As(err, &re) {
		return 0, "", false
	}
	f := strings.Fields(string(re))
	if len(f) != 3 || f[0] != "MOVED" {
		return 0, "", false
	}
	slot, convErr := strconv.Atoi(f[1])
	return slot, f[2], convErr == nil
}

// followMoved sends a command about key to addr and, while the answer is
// -MOVED, checks the redirect's slot against CLUSTER KEYSLOT and resends
// to the node it names. It returns the reply and the node that gave it.
func followMoved(t *testing.T, addr, key string, args ...string) (any, string) {
	t.Helper()
	want, err := redisCall(addr, "CLUSTER", "KEYSLOT", key)
	if err != nil {
		t.Fatal(err)
	}
	for hops := 0; ; hops++ {
		v, err := call(t, addr, args...)
		slot, to, ok := moved(err)
		if !ok {
			if err != nil {
				t.Fatalf("%v on %s: %v", args, addr, err)
			}
			return v, addr
		}
		if int64(slot) != want.(int64) {
			t.Fatalf("%v on %s: MOVED to slot %d, CLUSTER KEYSLOT says %d", args, addr, slot, want)
		}
		if hops > 0 {
			t.Fatalf("%v: second MOVED, from %s to %s", args, addr, to)
		}
		addr = to
	}
}

// setReplicated sets key on the primary at addr and waits until its one
// replica has the write (WAIT counts the acknowledgements of the writes
// made on its own connection, so both go on one).
func setReplicated(t *testing.T, addr, key, value string) {
	t.Helper()
	rc, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if v, err := rc.do("SET", key, value); v != "OK" {
		t.Fatalf("SET %s on %s = %v, %v", key, addr, v, err)
	}
	if v, err := rc.do("WAIT", "1", "5000"); v != int64(1) {
		t.Fatalf("WAIT on %s = %v, %v", addr, v, err)
	}
}

// ownerOf returns the address of the node serving slot.
func ownerOf(t *testing.T, nodes []ClusterNode, slot int) string {
	t.Helper()
	for _, n := range nodes {
		for _, r := range n.Slots {
			if r.Start <= slot && slot <= r.End {
				return n.Addr
			}
		}
	}
	t.Fatalf("no node serves slot %d: %+v", slot, nodes)
	return ""
}

// pidsOf returns the pids of the running servers.
func pidsOf(t *testing.T, servers []*Redis) []int {
	t.Helper()
	var pids []int
	for _, r := range servers {
		pid := r.pid()
		if pid == 0 {
			t.Fatalf("%s is not running", r.Addr)
		}
		pids = append(pids, pid)
	}
	return pids
}

// checkGone fails unless no process and no process group with these ids
// is left and the directories are gone.
func checkGone(t *testing.T, pids []int, servers []*Redis) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("process %d still there (kill 0: %v)", pid, err)
		}
		if err := syscall.Kill(-pid, 0); err != syscall.ESRCH {
			out, _ := exec.Command("ps", "-e", "-o", "pgid=,pid=,ppid=,stat=,args=").Output()
			var members []string
			for _, line := range strings.Split(string(out), "\n") {
				if f := strings.Fields(line); len(f) > 0 && f[0] == strconv.Itoa(pid) {
					members = append(members, line)
				}
			}
			t.Errorf("process group %d still there (kill 0: %v): %q", pid, err, members)
		}
	}
	for _, r := range servers {
		if _, err := os.Stat(r.Dir); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", r.Dir, err)
		}
	}
}

func TestCRC16(t *testing.T) {
	// The published check value of CRC-16/XMODEM.
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16(123456789) = %#x, want 0x31c3", got)
	}
	if KeySlot("{user1}:a") != KeySlot("user1") || KeySlot("{user1}:a") != KeySlot("{user1}:b") {
		t.Fatal("hash tag ignored")
	}
}

func TestCluster(t *testing.T) {
	start := time.Now()
	c, err := StartCluster(ClusterArgs("--maxmemory-policy", "allkeys-lru"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("cluster %v ready in %v", c.Addrs(), time.Since(start).Round(time.Millisecond))
	if v, _ := call(t, c.Addrs()[2], "CONFIG", "GET", "maxmemory-policy"); fmt.Sprint(v) != "[maxmemory-policy allkeys-lru]" {
		t.Fatalf("ClusterArgs not applied: %v", v)
	}

	nodes, err := c.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 || len(c.Addrs()) != 3 {
		t.Fatalf("nodes %+v, addrs %v", nodes, c.Addrs())
	}
	next := 0 // slots covered once each, in order
	for i, n := range nodes {
		if n.Index != i || n.Addr != c.Addrs()[i] || !n.Primary || n.PrimaryID != "" || len(n.ID) != 40 {
			t.Fatalf("node %d: %+v", i, n)
		}
		for _, r := range n.Slots {
			if r.Start != next || r.End < r.Start {
				t.Fatalf("node %d slots %v: want a range from %d", i, n.Slots, next)
			}
			next = r.End + 1
		}
	}
	if next != 16384 {
		t.Fatalf("slots covered up to %d", next)
	}
	for _, addr := range c.Addrs() {
		v, _ := call(t, addr, "CLUSTER", "INFO")
		if st := infoField(v.(string), "cluster_state"); st != "ok" {
			t.Fatalf("%s: cluster_state:%s", addr, st)
		}
	}

	t.Run("KeySlot", func(t *testing.T) {
		keys := []string{"", "a", "foo", "{user1}:a", "{user1}:b", "{}a", "a{", "a}", "}{a}", "{a}{b}",
			"{{a}}", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "a{b}c", "\x00\xff{\x01}\r\n", "\xfe\xfd\xfc", strings.Repeat("k", 1000)}
		for _, k := range keys {
			v, err := call(t, c.Addrs()[0], "CLUSTER", "KEYSLOT", k)
			if err != nil {
				t.Fatal(err)
			}
			if got := KeySlot(k); int64(got) != v.(int64) {
				t.Errorf("KeySlot(%q) = %d, CLUSTER KEYSLOT says %d", k, got, v)
			}
		}
	})

	t.Run("MovedByHand", func(t *testing.T) {
		owners := map[string]int{}
		for i := 0; i < 30; i++ {
			key := fmt.Sprintf("key:%d", i)
			// Start at every node in turn; a wrong one answers -MOVED.
			v, at := followMoved(t, c.Addrs()[i%3], key, "SET", key, "v"+key)
			if v != "OK" {
				t.Fatalf("SET %s = %v", key, v)
			}
			if want := ownerOf(t, nodes, KeySlot(key)); at != want {
				t.Fatalf("SET %s landed on %s, slot %d belongs to %s", key, at, KeySlot(key), want)
			}
			owners[at]++
			for _, addr := range c.Addrs() {
				if v, _ := followMoved(t, addr, key, "GET", key); v != "v"+key {
					t.Fatalf("GET %s from %s = %v", key, addr, v)
				}
			}
		}
		if len(owners) != 3 {
			t.Fatalf("30 keys on %d nodes only: %v", len(owners), owners)
		}
	})

	t.Run("MigrateSlot", func(t *testing.T) {
		const n = 250 // more than one MIGRATE batch
		slot := KeySlot("{mig}")
		from := ownerOf(t, nodes, slot)
		to := c.Addrs()[0]
		if to == from {
			to = c.Addrs()[1]
		}
		for i := 0; i < n; i++ {
			k := fmt.Sprintf("{mig}:%d", i)
			if _, err := call(t, from, "SET", k, strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		if err := c.MigrateSlot(slot, from, to); err != nil {
			t.Fatal(err)
		}
		t.Logf("slot %d with %d keys from %s to %s in %v", slot, n, from, to, time.Since(start).Round(time.Millisecond))

		if v, _ := call(t, to, "CLUSTER", "COUNTKEYSINSLOT", strconv.Itoa(slot)); v != int64(n) {
			t.Fatalf("%s has %v keys in slot %d, want %d", to, v, slot, n)
		}
		if v, _ := call(t, from, "CLUSTER", "COUNTKEYSINSLOT", strconv.Itoa(slot)); v != int64(0) {
			t.Fatalf("%s still has %v keys in slot %d", from, v, slot)
		}
		for i := 0; i < n; i++ {
			k := fmt.Sprintf("{mig}:%d", i)
			if v, err := call(t, to, "GET", k); err != nil || v != strconv.Itoa(i) {
				t.Fatalf("GET %s on %s = %v, %v", k, to, v, err)
			}
		}
		_, err := call(t, from, "GET", "{mig}:0")
		if s, addr, ok := moved(err); !ok || s != slot || addr != to {
			t.Fatalf("GET on the old owner: %v, want MOVED %d %s", err, slot, to)
		}
		// Every node's CLUSTER NODES names the new owner.
		toID := ""
		for i, r := range c.nodes {
			if r.Addr == to {
				toID = c.ids[i]
			}
		}
		for _, addr := range c.Addrs() {
			v, _ := call(t, addr, "CLUSTER", "NODES")
			var owner string
			for _, nd := range parseClusterNodes(v.(string)) {
				for _, r := range nd.Slots {
					if r.Start <= slot && slot <= r.End {
						owner = nd.ID
					}
				}
			}
			if owner != toID {
				t.Fatalf("%s says slot %d belongs to %s, want %s", addr, slot, owner, toID)
			}
		}
		after, err := c.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		if got := ownerOf(t, after, slot); got != to {
			t.Fatalf("Nodes: slot %d on %s, want %s", slot, got, to)
		}
	})

	t.Run("KillRestart", func(t *testing.T) {
		before, err := c.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		addr := before[1].Addr
		c.Kill(1)
		if err := pingRedis(addr); err == nil {
			t.Fatal("node 1 still answers after Kill")
		}
		start := time.Now()
		if err := c.Restart(1); err != nil {
			t.Fatal(err)
		}
		t.Logf("restart settled in %v", time.Since(start).Round(time.Millisecond))
		now, err := c.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		for i := range now {
			now[i].Flags, before[i].Flags = nil, nil
		}
		if fmt.Sprint(now) != fmt.Sprint(before) {
			t.Fatalf("after Restart:\n%+v\nbefore:\n%+v", now, before)
		}
		if v, _ := call(t, addr, "DBSIZE"); v != int64(0) {
			t.Fatalf("restarted node has %v keys, want none", v)
		}
		k := ""
		for i := 0; k == ""; i++ {
			if kk := fmt.Sprintf("r%d", i); ownerOf(t, now, KeySlot(kk)) == addr {
				k = kk
			}
		}
		if v, err := call(t, addr, "SET", k, "x"); v != "OK" {
			t.Fatalf("SET on the restarted node = %v, %v", v, err)
		}
	})

	pids := pidsOf(t, c.nodes)
	c.Stop()
	c.Stop() // idempotent
	checkGone(t, pids, c.nodes)
	if err := c.Restart(0); err == nil {
		t.Fatal("Restart after Stop succeeded")
	}
}

func TestClusterReplicasFailover(t *testing.T) {
	start := time.Now()
	c, err := StartCluster(ClusterReplicas(1), ClusterNodeTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("cluster of 6 ready in %v", time.Since(start).Round(time.Millisecond))
	nodes, err := c.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 6 {
		t.Fatalf("nodes %+v", nodes)
	}
	for i, n := range nodes {
		if i < 3 && (!n.Primary || len(n.Slots) == 0) || i >= 3 && (n.Primary || n.PrimaryID != nodes[i-3].ID || len(n.Slots) != 0) {
			t.Fatalf("node %d: %+v", i, n)
		}
	}

	// A key on node 0, written to its replica too.
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("k%d", i); ownerOf(t, nodes, KeySlot(k)) == nodes[0].Addr {
			key = k
		}
	}
	setReplicated(t, nodes[0].Addr, key, "kept")

	// Kill node 0: its replica, node 3, takes its slots over.
	start = time.Now()
	c.Kill(0)
	err = pollFor(30*time.Second, func() error {
		now, err := c.Nodes()
		if err != nil {
			return err
		}
		if !now[3].Primary || fmt.Sprint(now[3].Slots) != fmt.Sprint(nodes[0].Slots) {
			return fmt.Errorf("node 3: %+v", now[3])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replica took over in %v", time.Since(start).Round(time.Millisecond))
	if v, err := call(t, nodes[3].Addr, "GET", key); v != "kept" {
		t.Fatalf("GET %s on the new primary = %v, %v", key, v, err)
	}

	// Node 0 comes back as a replica of node 3.
	start = time.Now()
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart settled in %v", time.Since(start).Round(time.Millisecond))
	now, err := c.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if now[0].Primary || now[0].PrimaryID != nodes[3].ID {
		t.Fatalf("node 0 after Restart: %+v", now[0])
	}
	if err := linkUp(nodes[0].Addr); err != nil {
		t.Fatal(err)
	}

	pids := pidsOf(t, c.nodes)
	c.Stop()
	checkGone(t, pids, c.nodes)
}

func TestClusterOptions(t *testing.T) {
	if _, err := StartCluster(ClusterPrimaries(2)); err == nil || !strings.Contains(err.Error(), "at least 3") {
		t.Fatalf("2 primaries: %v", err)
	}
}
