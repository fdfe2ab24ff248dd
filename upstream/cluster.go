package upstream

import (
	"errors"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// Cluster carries the shared path to a Redis Cluster (upstream.mode
// cluster): each command goes to the primary serving its slot, on that
// primary's own multiplexer (one Mux pair per primary, as the standalone
// path has one), and redirects are followed here, so that clients see one
// Redis: -MOVED is resent to the node it names (at most maxHops times)
// and triggers one topology refresh however many commands see it; -ASK
// is resent as ASKING plus the command, written together on one
// connection of the node it names; -TRYAGAIN (keys of one command split
// by a migration) is retried after a short pause.
//
// go-redis' ClusterClient cannot do this: its DoRaw hands -MOVED back as
// the reply and never follows it (docs/UPSTREAM-BUGS.md).
//
// The slot map comes from CLUSTER SHARDS (CLUSTER SLOTS before Redis
// 7.0), asked of the known nodes and the seeds, and is swapped whole
// (an atomic pointer): a command reads one consistent map.
type Cluster struct {
	cfg      config.Upstream
	u        *Upstream
	muxConns int

	topo atomic.Pointer[topology]

	mu    sync.Mutex       // guards nodes
	nodes map[string]*node // every node ever routed to, by address

	loadMu     sync.Mutex  // serialises refreshes
	refreshing atomic.Bool // a background refresh is running
	lastFail   atomic.Int64

	refreshes atomic.Int64 // slot maps read
	moved     atomic.Int64 // -MOVED replies followed
	asked     atomic.Int64 // -ASK replies followed
	tryagain  atomic.Int64 // -TRYAGAIN replies retried
}

// maxHops bounds how often one command is resent after a redirect.
const maxHops = 5

// maxTryAgain bounds the retries of a -TRYAGAIN reply (10 ms apart).
const maxTryAgain = 50

// node is one primary and its multiplexers, one per RESP version: mux
// for clients' commands, own for the route layer's while clients'
// connections log in as the restricted user (clientuser.go).
type node struct {
	addr string
	mux  [2]*Mux
	own  [2]*Mux
	seq  int // creation order: the order in which Batch.send waits
}

// topology is one slot map: owner[s] is 1 + the index in nodes of the
// primary serving slot s, 0 when no node serves it.
type topology struct {
	nodes []*node // ordered by their first slot
	owner [NumSlots]uint16
}

func newCluster(u *Upstream, cfg config.Upstream, muxConns int) *Cluster {
	return &Cluster{cfg: cfg, u: u, muxConns: muxConns, nodes: map[string]*node{}}
}

// nodeAt returns the node at addr, creating its multiplexers on first use.
func (c *Cluster) nodeAt(addr string) *node {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[addr]
	if n == nil {
		cfg := c.cfg
		cfg.Addr = addr
		n = &node{addr: addr, seq: len(c.nodes)}
		for i, proto := range []int{2, 3} {
			n.mux[i] = newMux(cfg, proto, c.muxConns, c.u.tls)
			n.own[i] = newMux(cfg, proto, c.muxConns, c.u.tls)
			for _, mc := range n.mux[i].conns {
				mc.login, mc.heal = c.u.clientLogin, c.u.heal
			}
		}
		c.nodes[addr] = n
	}
	return n
}

// topology returns the current slot map, reading it first if there is
// none yet; nil when no node could be asked.
func (c *Cluster) topology() (*topology, error) {
	if t := c.topo.Load(); t != nil {
		return t, nil
	}
	if err := c.refresh(""); err != nil {
		return nil, err
	}
	return c.topo.Load(), nil
}

// refreshAsync starts a refresh in the background unless one is running:
// a storm of redirects costs one.
func (c *Cluster) refreshAsync(hint string) {
	if !c.refreshing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer c.refreshing.Store(false)
		c.refresh(hint)
	}()
}

// refresh reads the slot map from the first node that answers: hint (the
// node a redirect named, which knows it owns the slot), the known
// primaries, then the seeds; the new map replaces the old one whole.
func (c *Cluster) refresh(hint string) error {
	c.loadMu.Lock()
	defer c.loadMu.Unlock()
	var addrs []string
	seen := map[string]bool{}
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	add(hint)
	if t := c.topo.Load(); t != nil {
		for _, n := range t.nodes {
			add(n.addr)
		}
	}
	for _, a := range c.cfg.Addrs {
		add(a)
	}
	var lastErr error = errors.New("upstream cluster: no seed node")
	for _, a := range addrs {
		shards, err := c.readTopology(a)
		if err != nil {
			lastErr = err
			continue
		}
		t := &topology{}
		sort.Slice(shards, func(i, j int) bool { return shards[i].ranges[0][0] < shards[j].ranges[0][0] })
		for _, s := range shards {
			t.nodes = append(t.nodes, c.nodeAt(s.addr))
			for _, r := range s.ranges {
				for slot := r[0]; slot <= r[1]; slot++ {
					t.owner[slot] = uint16(len(t.nodes))
				}
			}
		}
		c.refreshes.Add(1)
		c.topo.Store(t)
		return nil
	}
	return lastErr
}

// readTopology asks the node at addr for CLUSTER SHARDS, or CLUSTER SLOTS
// when it does not know the subcommand, on a connection of its own.
func (c *Cluster) readTopology(addr string) ([]shard, error) {
	cfg := c.cfg
	cfg.Addr = addr
	cfg.DB = 0
	nc, br, _, err := dial(cfg, c.u.tls, 2, cfg.Username, cfg.Password)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	host, _, _ := net.SplitHostPort(addr)
	ask := func(args ...string) ([]byte, error) {
		nc.SetDeadline(time.Now().Add(time.Duration(c.cfg.Timeout)))
		if _, err := nc.Write(resp.AppendCommand(nil, strArgs(args...))); err != nil {
			return nil, err
		}
		return resp.AppendReply(nil, br)
	}
	reply, err := ask("CLUSTER", "SHARDS")
	if err != nil {
		return nil, err
	}
	if reply[0] != '-' {
		return parseShards(reply, host, c.u.tls != nil)
	}
	if !strings.Contains(strings.ToLower(string(reply)), "unknown subcommand") {
		return nil, errors.New("upstream cluster: CLUSTER SHARDS on " + addr + ": " + oneLine(reply[1:]))
	}
	if reply, err = ask("CLUSTER", "SLOTS"); err != nil {
		return nil, err
	}
	if reply[0] == '-' {
		return nil, errors.New("upstream cluster: CLUSTER SLOTS on " + addr + ": " + oneLine(reply[1:]))
	}
	return parseSlots(reply, host)
}

// nodeFor is the primary of slot; for AnySlot (and a slot no node
// serves, which that node will refuse with Redis' own error) the node
// that pick selects.
func (t *topology) nodeFor(slot int, pick uint32) *node {
	if slot >= 0 {
		if i := t.owner[slot]; i > 0 {
			return t.nodes[i-1]
		}
	}
	return t.nodes[pick%uint32(len(t.nodes))]
}

// NodeAddr is the address of the primary of slot (for AnySlot, the first
// primary).
func (c *Cluster) NodeAddr(slot int) (string, error) {
	t, err := c.topology()
	if err != nil {
		return "", err
	}
	return t.nodeFor(slot, 0).addr, nil
}

// Refresh reads the slot map now (hint: a node that knows it, "" for
// none), for a caller that is about to tell a client to retry.
func (c *Cluster) Refresh(hint string) error { return c.refresh(hint) }

// Redirected reports whether reply is a -MOVED or -ASK redirect, and to
// where (ask: an -ASK, for this command only); a -MOVED starts a
// topology refresh. The proxy carries pinned connections itself and
// calls it on their replies.
func (c *Cluster) Redirected(reply []byte, from string) (ask bool, addr string, ok bool) {
	ask, slot, addr, ok := redirect(reply)
	if !ok {
		return false, "", false
	}
	if strings.HasPrefix(addr, ":") {
		host, _, _ := net.SplitHostPort(from)
		addr = host + addr
	}
	if ask {
		c.asked.Add(1)
	} else {
		c.moved.Add(1)
		if cur := c.topo.Load(); cur == nil || cur.nodeFor(slot, 0).addr != addr {
			c.refreshAsync(addr)
		}
	}
	return ask, addr, true
}

// Primaries returns the addresses of the primaries in slot order (a SCAN
// cursor's shard numbers index this list).
func (c *Cluster) Primaries() ([]string, error) {
	t, err := c.topology()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(t.nodes))
	for i, n := range t.nodes {
		out[i] = n.addr
	}
	return out, nil
}

// ClusterStats are the redirect and refresh counters.
type ClusterStats struct {
	Refreshes, Moved, Asked, TryAgain int64
}

// Stats returns the counters since start.
func (c *Cluster) Stats() ClusterStats {
	return ClusterStats{c.refreshes.Load(), c.moved.Load(), c.asked.Load(), c.tryagain.Load()}
}

// Batch is a run of commands for Cluster.Do, each with its slot (AnySlot
// for a command without keys), or with a node of its own (AddTo: a
// command sent to every primary). A session reuses its Batch.
type Batch struct {
	// Own: the route layer's commands, sent on the nodes' own
	// multiplexers while clients' connections are restricted.
	Own   bool
	cmds  []batchCmd
	calls []*Call
	idx   [][]int // per group: the commands in it
	gnode []*node // per group: its node
	conns []*muxConn
	// scratch of group
	gnodes []*node
	groups []int
}

type batchCmd struct {
	args  [][]byte
	slot  int
	node  *node
	fixed bool // sent to node whatever the slot map says
	ask   bool // resend with ASKING first
	reply []byte
	err   error
	done  bool
}

// NewBatch returns an empty batch.
func NewBatch() *Batch { return &Batch{} }

// Reset empties b.
func (b *Batch) Reset() {
	for i := range b.cmds {
		b.cmds[i].args = nil
	}
	b.cmds = b.cmds[:0]
}

// Add appends a command for slot; it returns its index.
func (b *Batch) Add(args [][]byte, slot int) int {
	b.cmds = append(b.cmds, batchCmd{args: args, slot: slot, reply: b.spare()})
	return len(b.cmds) - 1
}

// AddTo appends a command for the primary at addr (from Primaries).
func (b *Batch) AddTo(args [][]byte, addr string, c *Cluster) int {
	i := b.Add(args, AnySlot)
	b.cmds[i].node, b.cmds[i].fixed = c.nodeAt(addr), true
	return i
}

func (b *Batch) spare() []byte {
	if len(b.cmds) < cap(b.cmds) {
		if r := b.cmds[:len(b.cmds)+1][len(b.cmds)].reply; cap(r) <= 1<<20 {
			return r[:0]
		}
	}
	return nil
}

// Len is the number of commands in b.
func (b *Batch) Len() int { return len(b.cmds) }

// Reply returns command i's raw reply, or the error that kept it from
// coming.
func (b *Batch) Reply(i int) ([]byte, error) { return b.cmds[i].reply, b.cmds[i].err }

// Do sends b's commands to their primaries, the commands of one primary
// as one pipeline on one multiplexed connection (pick chooses which, and
// the node for commands without keys) and the primaries' pipelines at the
// same time, follows redirects, and returns when every command has its
// reply or error.
func (c *Cluster) Do(proto int, b *Batch, pick uint32) {
	t, err := c.topology()
	for i := range b.cmds {
		cmd := &b.cmds[i]
		cmd.reply, cmd.err, cmd.done, cmd.ask = cmd.reply[:0], nil, false, false
		if err != nil {
			cmd.err, cmd.done = err, true
			continue
		}
		if !cmd.fixed {
			cmd.node = t.nodeFor(cmd.slot, pick)
		}
	}
	pi := index(proto)
	for hop, tries := 0, 0; ; {
		groups := b.group()
		if len(groups) == 0 {
			return
		}
		b.send(groups, pi, pick, b.Own && c.u.restricted.Load())
		redo, pause := false, false
		for _, g := range groups {
			for _, i := range b.idx[g] {
				cmd := &b.cmds[i]
				cmd.done = true
				if cmd.err != nil {
					c.failed()
					continue
				}
				if len(cmd.reply) > 9 && string(cmd.reply[:9]) == "-TRYAGAIN" && tries < maxTryAgain {
					c.tryagain.Add(1)
					cmd.done, redo, pause = false, true, true
					continue
				}
				if hop >= maxHops {
					continue
				}
				ask, addr, ok := c.Redirected(cmd.reply, cmd.node.addr)
				if !ok {
					continue
				}
				cmd.node, cmd.ask, cmd.done, redo = c.nodeAt(addr), ask, false, true
			}
		}
		if !redo {
			return
		}
		if pause {
			tries++
			time.Sleep(10 * time.Millisecond)
		} else {
			hop++
		}
	}
}

// failed notes a connection failure: the node may have failed over, so
// the slot map is read again (at most once a second).
func (c *Cluster) failed() {
	now := time.Now().UnixNano()
	last := c.lastFail.Load()
	if now-last > int64(time.Second) && c.lastFail.CompareAndSwap(last, now) {
		c.refreshAsync("")
	}
}

// group sorts the commands not done into one group per node, in order;
// it returns the groups' numbers (indexes into b.idx and b.calls).
func (b *Batch) group() []int {
	for i := range b.idx {
		b.idx[i] = b.idx[i][:0]
	}
	nodes, groups := b.gnodes[:0], b.groups[:0]
	defer func() { b.gnodes, b.groups = nodes[:0], groups }()
	for i := range b.cmds {
		cmd := &b.cmds[i]
		if cmd.done {
			continue
		}
		g := -1
		for j, n := range nodes {
			if n == cmd.node {
				g = j
				break
			}
		}
		if g < 0 {
			g = len(nodes)
			nodes = append(nodes, cmd.node)
			groups = append(groups, g)
			if len(b.idx) <= g {
				b.idx = append(b.idx, nil)
				b.calls = append(b.calls, NewCall())
				b.gnode = append(b.gnode, nil)
			}
			b.calls[g].Reset()
			b.gnode[g] = cmd.node
		}
		b.idx[g] = append(b.idx[g], i)
		if cmd.ask {
			b.calls[g].Add(askingCmd)
		}
		b.calls[g].Add(cmd.args)
	}
	return groups
}

var askingCmd = [][]byte{[]byte("ASKING")}

// send runs the groups' calls, each on its node: all are written first,
// then each is waited for in the nodes' creation order (see Mux.begin),
// and each command is handed its reply.
func (b *Batch) send(groups []int, pi int, pick uint32, own bool) {
	for i := 1; i < len(groups); i++ { // insertion sort: a few groups
		for j := i; j > 0 && b.gnode[groups[j]].seq < b.gnode[groups[j-1]].seq; j-- {
			groups[j], groups[j-1] = groups[j-1], groups[j]
		}
	}
	if cap(b.conns) < len(groups) {
		b.conns = make([]*muxConn, len(groups))
	}
	conns := b.conns[:len(groups)]
	for i, g := range groups {
		m := b.gnode[g].mux[pi]
		if own {
			m = b.gnode[g].own[pi]
		}
		c, wait := m.begin(b.calls[g], pick)
		if !wait {
			c = nil
		}
		conns[i] = c
	}
	for i, g := range groups {
		if conns[i] != nil {
			conns[i].finish(b.calls[g])
			conns[i] = nil
		}
		cl := b.calls[g]
		r := 0
		for _, j := range b.idx[g] {
			cmd := &b.cmds[j]
			if cmd.ask {
				r++ // ASKING's +OK
			}
			if r < cl.Got {
				cmd.reply, cmd.err = append(cmd.reply[:0], cl.Reply(r)...), nil
			} else {
				cmd.err = cl.Err
				if cmd.err == nil {
					cmd.err = errUnexpected
				}
			}
			r++
		}
	}
}

// close closes every node's connections.
func (c *Cluster) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		n.mux[0].close()
		n.mux[1].close()
		n.own[0].close()
		n.own[1].close()
	}
}
