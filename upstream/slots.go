package upstream

import (
	"errors"
	"net"
	"strconv"

	"github.com/respite/respite/resp"
)

// NumSlots is the number of hash slots of a Redis Cluster.
const NumSlots = 16384

// AnySlot is the slot of a command without keys: any primary serves it.
const AnySlot = -1

// Slot is the hash slot of key as Redis Cluster computes it
// (https://redis.io/docs/reference/cluster-spec/#hash-tags): CRC16
// (XMODEM) of the key, or of its hash tag, the bytes between the first
// '{' and the first '}' after it when there are any, modulo 16384.
func Slot(key []byte) int {
	for i, b := range key {
		if b != '{' {
			continue
		}
		for j := i + 1; j < len(key); j++ {
			if key[j] == '}' {
				if j > i+1 {
					key = key[i+1 : j]
				}
				return int(crc16(key) & (NumSlots - 1))
			}
		}
		break
	}
	return int(crc16(key) & (NumSlots - 1))
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial 0), as Redis'
// crc16.c, table-driven.
func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc = crc<<8 ^ crcTable[byte(crc>>8)^c]
	}
	return crc
}

var crcTable = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

// shard is one primary and the slot ranges it serves, as the cluster
// describes it.
type shard struct {
	addr   string   // the primary's host:port
	ranges [][2]int // slot ranges, both ends included
}

// errNoTopology: a reply that describes no usable slot map.
var errNoTopology = errors.New("upstream cluster: the node described no slot map")

// parseShards reads a raw CLUSTER SHARDS reply (Redis 7.0+, RESP2 or
// RESP3): per shard, "slots" (start, end pairs) and "nodes" (maps with
// "endpoint" or "ip", "port" or "tls-port", "role"); the shard's node
// whose role is master is its primary. host is the address the reply came
// from: an endpoint of "?" or "" means the same host, as in Redis' docs.
func parseShards(reply []byte, host string, useTLS bool) ([]shard, error) {
	list, ok := resp.Elements(reply)
	if !ok {
		return nil, errNoTopology
	}
	var out []shard
	for _, sh := range list {
		fields, ok := resp.Elements(sh)
		if !ok || len(fields)%2 != 0 {
			return nil, errNoTopology
		}
		var s shard
		for i := 0; i < len(fields); i += 2 {
			switch scalar(fields[i]) {
			case "slots":
				nums, ok := resp.Elements(fields[i+1])
				if !ok || len(nums)%2 != 0 {
					return nil, errNoTopology
				}
				for j := 0; j < len(nums); j += 2 {
					a, err1 := strconv.Atoi(scalar(nums[j]))
					b, err2 := strconv.Atoi(scalar(nums[j+1]))
					if err1 != nil || err2 != nil || a < 0 || b >= NumSlots || a > b {
						return nil, errNoTopology
					}
					s.ranges = append(s.ranges, [2]int{a, b})
				}
			case "nodes":
				nodes, ok := resp.Elements(fields[i+1])
				if !ok {
					return nil, errNoTopology
				}
				for _, n := range nodes {
					kv, ok := resp.Elements(n)
					if !ok {
						return nil, errNoTopology
					}
					m := map[string]string{}
					for k := 0; k+1 < len(kv); k += 2 {
						m[scalar(kv[k])] = scalar(kv[k+1])
					}
					if m["role"] != "master" || m["health"] == "fail" {
						continue
					}
					ep := m["endpoint"]
					if ep == "" || ep == "?" {
						ep = m["ip"]
					}
					if ep == "" || ep == "?" {
						ep = host
					}
					port := m["port"]
					if useTLS && m["tls-port"] != "" {
						port = m["tls-port"]
					}
					s.addr = net.JoinHostPort(ep, port)
				}
			}
		}
		if s.addr != "" && len(s.ranges) > 0 {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, errNoTopology
	}
	return out, nil
}

// parseSlots reads a raw CLUSTER SLOTS reply (the fallback before Redis
// 7.0): per range, start, end, then the primary as [ip, port, id, ...].
func parseSlots(reply []byte, host string) ([]shard, error) {
	list, ok := resp.Elements(reply)
	if !ok {
		return nil, errNoTopology
	}
	byAddr := map[string]int{}
	var out []shard
	for _, r := range list {
		f, ok := resp.Elements(r)
		if !ok || len(f) < 3 {
			return nil, errNoTopology
		}
		a, err1 := strconv.Atoi(scalar(f[0]))
		b, err2 := strconv.Atoi(scalar(f[1]))
		node, ok := resp.Elements(f[2])
		if err1 != nil || err2 != nil || !ok || len(node) < 2 || a < 0 || b >= NumSlots || a > b {
			return nil, errNoTopology
		}
		ip := scalar(node[0])
		if ip == "" || ip == "?" {
			ip = host
		}
		addr := net.JoinHostPort(ip, scalar(node[1]))
		i, seen := byAddr[addr]
		if !seen {
			i = len(out)
			byAddr[addr] = i
			out = append(out, shard{addr: addr})
		}
		out[i].ranges = append(out[i].ranges, [2]int{a, b})
	}
	if len(out) == 0 {
		return nil, errNoTopology
	}
	return out, nil
}

// scalar is the text of a raw simple string, bulk string, verbatim
// string or integer reply; "" for anything else.
func scalar(b []byte) string {
	if len(b) < 3 {
		return ""
	}
	switch b[0] {
	case '+', ':', '-':
		return string(b[1 : len(b)-2])
	case '$', '=':
		i := 1
		for i < len(b) && b[i] != '\r' {
			i++
		}
		if i+2 > len(b)-2 {
			return ""
		}
		s := b[i+2 : len(b)-2]
		if b[0] == '=' && len(s) >= 4 {
			s = s[4:]
		}
		return string(s)
	}
	return ""
}

// redirect parses a -MOVED or -ASK error reply ("-MOVED 3999
// 127.0.0.1:6381\r\n"): ask is true for ASK; ok false for any other reply.
func redirect(reply []byte) (ask bool, slot int, addr string, ok bool) {
	var rest []byte
	switch {
	case len(reply) > 7 && string(reply[:7]) == "-MOVED ":
		rest = reply[7:]
	case len(reply) > 5 && string(reply[:5]) == "-ASK ":
		rest, ask = reply[5:], true
	default:
		return false, 0, "", false
	}
	if len(rest) < 2 || rest[len(rest)-2] != '\r' {
		return false, 0, "", false
	}
	rest = rest[:len(rest)-2]
	sp := -1
	for i, c := range rest {
		if c == ' ' {
			sp = i
			break
		}
	}
	if sp <= 0 || sp == len(rest)-1 {
		return false, 0, "", false
	}
	n, err := strconv.Atoi(string(rest[:sp]))
	if err != nil || n < 0 || n >= NumSlots {
		return false, 0, "", false
	}
	// "-MOVED 3999 :6381" (an unknown endpoint) leaves the host to the
	// caller: the node that answered.
	return ask, n, string(rest[sp+1:]), true
}
