package server

import (
	"crypto/sha1"
	"encoding/hex"
	"net"
	"strconv"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// The proxy as a one-node Redis Cluster (cluster_answers): it serves
// every slot at the advertised address, so a cluster-aware client sends
// it everything and never sees a redirect (the proxy follows the real
// ones, if the upstream is a cluster, itself).

// advertise is the host and port clients are told: cluster_answers.
// advertise, else the address the proxy listens on.
func (c *session) advertise() (string, int) {
	a := c.s.cfg.ClusterAnswers.Advertise
	if a == "" {
		if p := c.s.listenAddr.Load(); p != nil {
			a = *p
		} else {
			a = c.s.cfg.Listen
		}
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return a, 0
	}
	n, _ := strconv.Atoi(port)
	return host, n
}

// nodeID is the 40-hex-digit id of the one node: a hash of the advertised
// address, the same on every proxy that advertises it.
func nodeID(host string, port int) string {
	sum := sha1.Sum([]byte("respite " + net.JoinHostPort(host, strconv.Itoa(port))))
	return hex.EncodeToString(sum[:])
}

// clusterAnswer answers a command IsClusterAnswer names.
func (c *session) clusterAnswer(cmd *router.Command) {
	host, port := c.advertise()
	id := nodeID(host, port)
	last := int64(upstream.NumSlots - 1)
	switch cmd.ID {
	case router.CmdAsking, router.CmdReadonly, router.CmdReadwrite:
		c.sendStatus("OK")
	case router.CmdClusterMyid:
		c.sendReply(resp.Bulk(id))
	case router.CmdClusterKeyslot:
		c.sendInt(int64(upstream.Slot(cmd.Args[2])))
	case router.CmdClusterSlots:
		c.sendReply(resp.Array(resp.Array(resp.Int(0), resp.Int(last),
			resp.Array(resp.Bulk(host), resp.Int(int64(port)), resp.Bulk(id), resp.Map()))))
	case router.CmdClusterShards:
		node := resp.Map(
			resp.Bulk("id"), resp.Bulk(id),
			resp.Bulk("port"), resp.Int(int64(port)),
			resp.Bulk("ip"), resp.Bulk(host),
			resp.Bulk("endpoint"), resp.Bulk(host),
			resp.Bulk("role"), resp.Bulk("master"),
			resp.Bulk("replication-offset"), resp.Int(0),
			resp.Bulk("health"), resp.Bulk("online"))
		c.sendReply(resp.Array(resp.Map(
			resp.Bulk("slots"), resp.Array(resp.Int(0), resp.Int(last)),
			resp.Bulk("nodes"), resp.Array(node))))
	case router.CmdClusterNodes:
		line := id + " " + host + ":" + strconv.Itoa(port) + "@" + strconv.Itoa(port+10000) +
			" myself,master - 0 0 1 connected 0-" + strconv.FormatInt(last, 10) + "\n"
		c.sendVerbatim([]byte(line))
	case router.CmdClusterInfo:
		c.sendVerbatim([]byte("cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n" +
			"cluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\n" +
			"cluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n"))
	}
}
