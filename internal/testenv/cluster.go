package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Cluster is a throwaway Redis Cluster started by StartCluster: a number
// of primaries sharing the 16384 slots, optionally with replicas, each node
// a redis-server of its own (see Redis) with cluster mode on, its
// nodes.conf in its own Dir, and its cluster bus on a second free port. Its
// methods are safe for concurrent use.
type Cluster struct {
	// nodes are the servers in start order: the primaries, then the
	// replicas (those of primary k at primaries+k*replicas ...). Fixed
	// after start; ids[i] is the node id of nodes[i], which survives
	// Restart because nodes.conf does.
	nodes     []*Redis
	ids       []string
	primaries int

	mu      sync.Mutex // serialises the methods that change the cluster
	stopped bool
}

// ClusterNode is one node as the cluster describes it (CLUSTER NODES).
type ClusterNode struct {
	// Index is the node's position for Kill and Restart: the primaries in
	// start order, then the replicas.
	Index int
	ID    string
	// Addr is "127.0.0.1:Port", the node's client port.
	Addr string
	// Primary is the node's role now (a failover changes it).
	Primary bool
	// PrimaryID is the ID of a replica's primary, "" for a primary.
	PrimaryID string
	// Slots are the slot ranges the node serves, ascending.
	Slots []SlotRange
	// Flags are the flags CLUSTER NODES gives, such as "master", "slave",
	// "fail?" or "fail", without "myself".
	Flags []string
}

// SlotRange is a range of hash slots, both ends included.
type SlotRange struct{ Start, End int }

// ClusterOption changes what StartCluster starts.
type ClusterOption func(*clusterConfig)

type clusterConfig struct {
	primaries, replicas int
	nodeTimeout         time.Duration
	extra               []string
}

// ClusterPrimaries sets the number of primaries (default 3; at least 3,
// as redis-cli --cluster create requires).
func ClusterPrimaries(n int) ClusterOption { return func(c *clusterConfig) { c.primaries = n } }

// ClusterReplicas gives every primary n replicas (default 0).
func ClusterReplicas(n int) ClusterOption { return func(c *clusterConfig) { c.replicas = n } }

// ClusterNodeTimeout sets cluster-node-timeout, after which an unreachable
// node counts as failed and its replica may take over (default 5s, shorter
// than Redis' 15s so that failover tests stay quick, long enough not to
// see failures on a loaded machine).
func ClusterNodeTimeout(d time.Duration) ClusterOption {
	return func(c *clusterConfig) { c.nodeTimeout = d }
}

// ClusterArgs appends args to every node's command line, as StartRedis'
// extraArgs.
func ClusterArgs(args ...string) ClusterOption {
	return func(c *clusterConfig) { c.extra = append(c.extra, args...) }
}

const (
	// clusterCreateTimeout bounds redis-cli --cluster create, which polls
	// once a second until the nodes agree.
	clusterCreateTimeout = 60 * time.Second
	// clusterSettleTimeout bounds each wait for the nodes to agree.
	clusterSettleTimeout = 60 * time.Second
	// migrateBatch is how many keys one MIGRATE moves.
	migrateBatch = 100
)

// StartCluster starts the nodes on free loopback ports, creates the
// cluster with redis-cli --cluster create from the primaries (slots split
// evenly, in start order), attaches the replicas with CLUSTER MEET and
// CLUSTER REPLICATE, and returns once every node says cluster_state:ok,
// every node sees the same nodes with the same roles and slots, and every
// replica's link to its primary is up (typically two to five seconds,
// most of it redis-cli's one-second polling). Call Stop when done.
func StartCluster(opts ...ClusterOption) (*Cluster, error) {
	cfg := clusterConfig{primaries: 3, nodeTimeout: 5 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.primaries < 3 {
		return nil, fmt.Errorf("testenv: cluster of %d primaries: redis-cli --cluster create needs at least 3", cfg.primaries)
	}
	if cfg.replicas < 0 {
		return nil, fmt.Errorf("testenv: cluster with %d replicas a primary", cfg.replicas)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, notFound("redis-cli", "redis-tools")
	}
	setup := func(r *Redis) error {
		bus, err := FreePort()
		for err == nil && bus == r.Port {
			bus, err = FreePort()
		}
		if err != nil {
			return err
		}
		conf := filepath.Join(r.Dir, "nodes.conf")
		os.Remove(conf) // left by an attempt on a port that was taken
		r.extra = append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", conf,
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", strconv.FormatInt(cfg.nodeTimeout.Milliseconds(), 10),
			"--repl-diskless-sync-delay", "0", // a replica's first sync: now, not in 5s
		}, cfg.extra...)
		return nil
	}
	c := &Cluster{primaries: cfg.primaries}
	fail := func(err error) (*Cluster, error) {
		c.Stop()
		return nil, err
	}
	total := cfg.primaries * (1 + cfg.replicas)
	for i := 0; i < total; i++ {
		r, err := startRedisServer("respite-cluster-", setup)
		if err != nil {
			return fail(err)
		}
		c.nodes = append(c.nodes, r)
		id, err := redisText(r.Addr, "CLUSTER", "MYID")
		if err != nil {
			return fail(err)
		}
		c.ids = append(c.ids, id)
	}

	args := []string{"--cluster", "create"}
	for _, r := range c.nodes[:cfg.primaries] {
		args = append(args, r.Addr)
	}
	args = append(args, "--cluster-yes")
	if out, err := runTool(exec.Command(cli, args...), clusterCreateTimeout); err != nil {
		return fail(fmt.Errorf("testenv: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out))
	}

	if err := c.attachReplicas(cfg.replicas); err != nil {
		return fail(err)
	}
	if err := c.settle(); err != nil {
		return fail(err)
	}
	return c, nil
}

// attachReplicas makes the nodes after the primaries replicas, n of each
// primary in turn: each meets its primary, and once it knows the
// primary's id, replicates it.
func (c *Cluster) attachReplicas(n int) error {
	primaryOf := func(i int) int { return (i - c.primaries) / n }
	for i := c.primaries; i < len(c.nodes); i++ {
		r, pr := c.nodes[i], c.nodes[primaryOf(i)]
		bus := ""
		for j, a := range pr.extra {
			if a == "--cluster-port" {
				bus = pr.extra[j+1]
			}
		}
		if _, err := redisCall(r.Addr, "CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(pr.Port), bus); err != nil {
			return fmt.Errorf("testenv: CLUSTER MEET from %s to %s: %w", r.Addr, pr.Addr, err)
		}
	}
	for i := c.primaries; i < len(c.nodes); i++ {
		r, p := c.nodes[i], primaryOf(i)
		err := pollFor(clusterSettleTimeout, func() error {
			text, err := redisText(r.Addr, "CLUSTER", "NODES")
			if err != nil {
				return err
			}
			for _, n := range parseClusterNodes(text) {
				if n.ID == c.ids[p] && !hasFlag(n.Flags, "handshake") {
					return nil
				}
			}
			return fmt.Errorf("%s does not know %s (%s) yet", r.Addr, c.nodes[p].Addr, c.ids[p])
		})
		if err != nil {
			return fmt.Errorf("testenv: cluster replica: %w", err)
		}
		if _, err := redisCall(r.Addr, "CLUSTER", "REPLICATE", c.ids[p]); err != nil {
			return fmt.Errorf("testenv: CLUSTER REPLICATE on %s: %w", r.Addr, err)
		}
	}
	return nil
}

// settle waits until the running nodes agree, as StartCluster describes.
func (c *Cluster) settle() error {
	if err := pollFor(clusterSettleTimeout, c.agreed); err != nil {
		return fmt.Errorf("testenv: cluster not settled: %w", err)
	}
	return nil
}

// agreed checks once that every running node says cluster_state:ok, sees
// every running node without fail or handshake flags, and has the same
// view of all nodes' roles and slots as the others, and that every
// running replica of a running primary has its link up.
func (c *Cluster) agreed() error {
	running := map[string]bool{}
	for i, r := range c.nodes {
		if r.pid() != 0 {
			running[c.ids[i]] = true
		}
	}
	var want, wantFrom string
	for i, r := range c.nodes {
		if !running[c.ids[i]] {
			continue
		}
		view, err := c.viewOf(i, running)
		if err != nil {
			return err
		}
		if want == "" {
			want, wantFrom = view, r.Addr
		} else if view != want {
			return fmt.Errorf("%s and %s disagree:\n%s\nversus\n%s", wantFrom, r.Addr, want, view)
		}
	}
	if want == "" {
		return errors.New("no node is running")
	}
	return nil
}

// viewOf makes agreed's checks of node i alone, over one connection, and
// returns its view of the cluster: a line a node with its id, role,
// primary and slots, sorted.
func (c *Cluster) viewOf(i int, running map[string]bool) (string, error) {
	addr := c.nodes[i].Addr
	rc, err := dialRedis(addr)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	info, err := rc.text("CLUSTER", "INFO")
	if err != nil {
		return "", err
	}
	if st := infoField(info, "cluster_state"); st != "ok" {
		return "", fmt.Errorf("%s says cluster_state:%s", addr, st)
	}
	text, err := rc.text("CLUSTER", "NODES")
	if err != nil {
		return "", err
	}
	known := map[string]bool{}
	var view []string
	var primaryID string
	for _, n := range parseClusterNodes(text) {
		known[n.ID] = true
		if running[n.ID] {
			for _, f := range []string{"fail", "fail?", "handshake", "noaddr"} {
				if hasFlag(n.Flags, f) {
					return "", fmt.Errorf("%s sees %s as %s", addr, n.Addr, f)
				}
			}
		}
		if n.ID == c.ids[i] {
			primaryID = n.PrimaryID
		}
		view = append(view, fmt.Sprintf("%s primary=%v of=%s slots=%v", n.ID, n.Primary, n.PrimaryID, n.Slots))
	}
	for j, id := range c.ids {
		if !known[id] {
			return "", fmt.Errorf("%s does not know %s (%s)", addr, c.nodes[j].Addr, id)
		}
	}
	if primaryID != "" && running[primaryID] {
		repl, err := rc.text("INFO", "replication")
		if err != nil {
			return "", err
		}
		if st := infoField(repl, "master_link_status"); st != "up" {
			return "", fmt.Errorf("replica %s: master_link_status:%s", addr, st)
		}
	}
	sort.Strings(view)
	return strings.Join(view, "\n"), nil
}

// parseClusterNodes reads a CLUSTER NODES reply: one line a node,
// "id ip:port@cport[,hostname] flags primary ping pong epoch link slot...".
// Migrating and importing entries ("[slot->-id]") are left out of Slots;
// Index is not set.
func parseClusterNodes(text string) []ClusterNode {
	var nodes []ClusterNode
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		n := ClusterNode{ID: f[0]}
		n.Addr, _, _ = strings.Cut(f[1], "@")
		for _, fl := range strings.Split(f[2], ",") {
			if fl != "myself" {
				n.Flags = append(n.Flags, fl)
			}
		}
		n.Primary = hasFlag(n.Flags, "master")
		if f[3] != "-" {
			n.PrimaryID = f[3]
		}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") {
				continue
			}
			lo, hi, isRange := strings.Cut(s, "-")
			if !isRange {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil {
				n.Slots = append(n.Slots, SlotRange{a, b})
			}
		}
		sort.Slice(n.Slots, func(i, j int) bool { return n.Slots[i].Start < n.Slots[j].Start })
		nodes = append(nodes, n)
	}
	return nodes
}

func hasFlag(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

// Addrs returns the client addresses ("127.0.0.1:Port") of the primaries
// as started, in start order: seed addresses for a cluster client. After a
// failover Nodes tells the roles of now.
func (c *Cluster) Addrs() []string {
	var addrs []string
	for _, r := range c.nodes[:c.primaries] {
		addrs = append(addrs, r.Addr)
	}
	return addrs
}

// Nodes asks the first running node for CLUSTER NODES and returns every
// node in Index order.
func (c *Cluster) Nodes() ([]ClusterNode, error) {
	var lastErr error = errors.New("testenv: no cluster node is running")
	for _, r := range c.nodes {
		if r.pid() == 0 {
			continue
		}
		text, err := redisText(r.Addr, "CLUSTER", "NODES")
		if err != nil {
			lastErr = err
			continue
		}
		index := map[string]int{}
		for i, id := range c.ids {
			index[id] = i
		}
		var nodes []ClusterNode
		for _, n := range parseClusterNodes(text) {
			i, ok := index[n.ID]
			if !ok {
				continue // not one of ours: cannot happen unless a test adds nodes
			}
			n.Index = i
			n.Addr = c.nodes[i].Addr
			nodes = append(nodes, n)
		}
		sort.Slice(nodes, func(i, j int) bool { return nodes[i].Index < nodes[j].Index })
		return nodes, nil
	}
	return nil, lastErr
}

// Kill stops node i (a ClusterNode.Index) abruptly, as Redis.Kill does;
// its replica, if any, takes over once the node timeout has passed.
// Killing a node that is not running does nothing.
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes[i].Kill()
}

// Restart starts node i again (killing it first if it runs) on the same
// ports with the same nodes.conf, so with the same id and, unless a
// failover took them, the same slots, but with an empty data set; it
// returns once the running nodes agree as StartCluster waits for. A
// primary refuses writes for two seconds after it comes back, which this
// wait includes.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("testenv: Restart after Stop")
	}
	if err := c.nodes[i].Restart(); err != nil {
		return err
	}
	return c.settle()
}

// MigrateSlot moves slot and its keys from the primary at address from to
// the primary at address to, live, with the usual resharding steps of
// CLUSTER SETSLOT: IMPORTING on the target, MIGRATING on the
// source, CLUSTER GETKEYSINSLOT and MIGRATE in batches until the slot is
// empty on the source, then SETSLOT ... NODE on the target, the source and
// the other primaries. It returns once the running nodes agree on the new
// owner. Clients see -ASK redirects while it runs.
func (c *Cluster) MigrateSlot(slot int, from, to string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	src, dst := c.index(from), c.index(to)
	if src < 0 || dst < 0 {
		return fmt.Errorf("testenv: MigrateSlot from %s to %s: not nodes of this cluster", from, to)
	}
	s := strconv.Itoa(slot)
	do := func(addr string, args ...string) (any, error) {
		v, err := redisCall(addr, args...)
		if err != nil {
			return nil, fmt.Errorf("testenv: MigrateSlot %d: %s on %s: %w", slot, strings.Join(args, " "), addr, err)
		}
		return v, nil
	}
	if _, err := do(to, "CLUSTER", "SETSLOT", s, "IMPORTING", c.ids[src]); err != nil {
		return err
	}
	if _, err := do(from, "CLUSTER", "SETSLOT", s, "MIGRATING", c.ids[dst]); err != nil {
		return err
	}
	host, port := "127.0.0.1", strconv.Itoa(c.nodes[dst].Port)
	for {
		v, err := do(from, "CLUSTER", "GETKEYSINSLOT", s, strconv.Itoa(migrateBatch))
		if err != nil {
			return err
		}
		keys, _ := v.([]any)
		if len(keys) == 0 {
			break
		}
		args := []string{"MIGRATE", host, port, "", "0", "5000", "KEYS"}
		for _, k := range keys {
			ks, ok := k.(string)
			if !ok {
				return fmt.Errorf("testenv: MigrateSlot %d: GETKEYSINSLOT gave %T %v", slot, k, k)
			}
			args = append(args, ks)
		}
		if _, err := do(from, args...); err != nil {
			return err
		}
	}
	nodes, err := c.Nodes()
	if err != nil {
		return err
	}
	targets := []string{to, from}
	for _, n := range nodes {
		if n.Primary && n.Addr != to && n.Addr != from && c.nodes[n.Index].pid() != 0 {
			targets = append(targets, n.Addr)
		}
	}
	for _, addr := range targets {
		if _, err := do(addr, "CLUSTER", "SETSLOT", s, "NODE", c.ids[dst]); err != nil {
			return err
		}
	}
	return c.settle()
}

// index returns the Index of the node at addr, -1 if none.
func (c *Cluster) index(addr string) int {
	for i, r := range c.nodes {
		if r.Addr == addr {
			return i
		}
	}
	return -1
}

// Stop kills every node and removes their directories. It is idempotent.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.nodes {
		r.Stop()
	}
	c.stopped = true
}

// KeySlot returns the hash slot of key as Redis Cluster computes it:
// CRC16 (XMODEM) modulo 16384 of the key, or of its hash tag, the part
// between the first "{" and the first "}" after it when that part is not
// empty.
func KeySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if n := strings.IndexByte(key[open+1:], '}'); n > 0 {
			key = key[open+1 : open+1+n]
		}
	}
	return int(crc16(key) & 16383)
}

// crc16 is CRC-16/XMODEM: polynomial 0x1021, initial value 0, no
// reflection, computed a bit at a time.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
