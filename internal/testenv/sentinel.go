package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// Sentinel is a throwaway Redis Sentinel setup started by StartSentinel:
// two redis-servers (see Redis), one the primary and one its replica, and
// one sentinel monitoring them under the name "respite" with a quorum of
// 1. Its methods are safe for concurrent use.
type Sentinel struct {
	servers  [2]*Redis // started as primary, replica
	sentinel *Redis    // its Dir holds sentinel.conf, which it rewrites
	name     string

	mu sync.Mutex // serialises Failover and Stop
}

const (
	// sentinelMasterName is the name the sentinel monitors the primary by.
	sentinelMasterName = "respite"
	// sentinelDownAfter is down-after-milliseconds: how long the primary
	// may not answer before the sentinel fails it over on its own.
	sentinelDownAfter = 1000
	// sentinelFailoverTimeout is failover-timeout, in milliseconds.
	sentinelFailoverTimeout = 10000
	// sentinelSettleTimeout bounds each wait for replication or the
	// sentinel to catch up.
	sentinelSettleTimeout = 30 * time.Second
)

// StartSentinel starts a primary, a replica of it (--replicaof) and a
// sentinel (redis-server sentinel.conf --sentinel, with
// down-after-milliseconds 1000 and failover-timeout 10000), and returns
// once the replica is in sync (master_link_status:up) and the sentinel
// names the primary and lists the replica as a healthy replica. Call Stop
// when done.
func StartSentinel() (*Sentinel, error) {
	s := &Sentinel{name: sentinelMasterName}
	fail := func(err error) (*Sentinel, error) {
		s.Stop()
		return nil, err
	}
	// The replica's first sync starts at once, not after the default 5s
	// wait for more replicas; the flag goes on both, which swap roles.
	const noSyncDelay = "--repl-diskless-sync-delay"
	primary, err := StartRedis(noSyncDelay, "0")
	if err != nil {
		return fail(err)
	}
	s.servers[0] = primary
	replica, err := StartRedis(noSyncDelay, "0", "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port))
	if err != nil {
		return fail(err)
	}
	s.servers[1] = replica
	if err := pollFor(sentinelSettleTimeout, func() error { return linkUp(replica.Addr) }); err != nil {
		return fail(fmt.Errorf("testenv: sentinel setup: replica: %w", err))
	}

	s.sentinel, err = startRedisServer("respite-sentinel-", func(r *Redis) error {
		r.conf = filepath.Join(r.Dir, "sentinel.conf")
		conf := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 1\n"+
			"sentinel down-after-milliseconds %[1]s %[3]d\n"+
			"sentinel failover-timeout %[1]s %[4]d\n",
			s.name, primary.Port, sentinelDownAfter, sentinelFailoverTimeout)
		r.extra = []string{"--sentinel"}
		return os.WriteFile(r.conf, []byte(conf), 0o644)
	})
	if err != nil {
		return fail(err)
	}
	if err := pollFor(sentinelSettleTimeout, func() error { return s.knows(primary.Addr, replica.Addr) }); err != nil {
		return fail(fmt.Errorf("testenv: sentinel setup: %w", err))
	}
	return s, nil
}

// knows checks that the sentinel names primary as the primary, with no
// failover under way, and lists replica as a replica it reaches whose link
// is up.
func (s *Sentinel) knows(primary, replica string) error {
	got, err := s.PrimaryAddr()
	if err != nil {
		return err
	}
	if got != primary {
		return fmt.Errorf("sentinel names %s as the primary, want %s", got, primary)
	}
	v, err := redisCall(s.sentinel.Addr, "SENTINEL", "MASTER", s.name)
	if err != nil {
		return fmt.Errorf("SENTINEL MASTER: %w", err)
	}
	if m := pairs(v); m["flags"] != "master" {
		return fmt.Errorf("sentinel has the primary's flags as %q, want \"master\"", m["flags"])
	}
	v, err = redisCall(s.sentinel.Addr, "SENTINEL", "REPLICAS", s.name)
	if err != nil {
		return fmt.Errorf("SENTINEL REPLICAS: %w", err)
	}
	list, _ := v.([]any)
	for _, item := range list {
		m := pairs(item)
		if net.JoinHostPort(m["ip"], m["port"]) != replica {
			continue
		}
		if m["flags"] != "slave" || m["master-link-status"] != "ok" {
			return fmt.Errorf("sentinel has replica %s with flags %q, master-link-status %q",
				replica, m["flags"], m["master-link-status"])
		}
		return nil
	}
	return fmt.Errorf("sentinel does not list %s as a replica yet", replica)
}

// pairs turns a flat array of field names and values, as SENTINEL MASTER
// gives, into a map.
func pairs(v any) map[string]string {
	m := map[string]string{}
	list, _ := v.([]any)
	for i := 0; i+1 < len(list); i += 2 {
		k, _ := list[i].(string)
		val, _ := list[i+1].(string)
		m[k] = val
	}
	return m
}

// SentinelAddr is the sentinel's address, "127.0.0.1:Port".
func (s *Sentinel) SentinelAddr() string { return s.sentinel.Addr }

// MasterName is the name the sentinel monitors the primary by, for
// SENTINEL get-master-addr-by-name and sentinel clients.
func (s *Sentinel) MasterName() string { return s.name }

// PrimaryAddr asks the sentinel (SENTINEL get-master-addr-by-name) for the
// primary's address, "127.0.0.1:Port".
func (s *Sentinel) PrimaryAddr() (string, error) {
	v, err := redisCall(s.sentinel.Addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.name)
	if err != nil {
		return "", fmt.Errorf("testenv: SENTINEL get-master-addr-by-name: %w", err)
	}
	list, _ := v.([]any)
	if len(list) != 2 {
		return "", fmt.Errorf("testenv: SENTINEL get-master-addr-by-name answered %v", v)
	}
	host, _ := list[0].(string)
	port, _ := list[1].(string)
	return net.JoinHostPort(host, port), nil
}

// Replica is the server the sentinel does not name as the primary (the
// replica; the roles swap at each Failover), e.g. to Freeze it.
func (s *Sentinel) Replica() (*Redis, error) {
	primary, err := s.PrimaryAddr()
	if err != nil {
		return nil, err
	}
	switch primary {
	case s.servers[0].Addr:
		return s.servers[1], nil
	case s.servers[1].Addr:
		return s.servers[0], nil
	}
	return nil, fmt.Errorf("testenv: the sentinel names %s, not one of the two servers", primary)
}

// Failover makes the sentinel fail over (SENTINEL FAILOVER, retried while
// the sentinel answers -INPROG or -NOGOODSLAVE) and waits until it names
// the other server, which reports role:master, and the failover is over.
// The sentinel would turn the former primary into a replica only on its
// next INFO round, some ten seconds later; Failover does it itself
// (REPLICAOF the new primary, the very command the sentinel sends) and
// waits until that link is up, so the setup is again a primary with an
// in-sync replica and a second Failover can follow at once. ctx bounds the
// whole; without a deadline, Failover allows 30 seconds.
func (s *Sentinel) Failover(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, sentinelSettleTimeout)
		defer cancel()
	}
	old, err := s.PrimaryAddr()
	if err != nil {
		return err
	}
	var next *Redis
	for _, r := range s.servers {
		if r.Addr != old {
			next = r
		}
	}
	if next == nil {
		return fmt.Errorf("testenv: Failover: the sentinel names %s, not one of the two servers", old)
	}
	wrap := func(what string, err error) error {
		return fmt.Errorf("testenv: Failover from %s to %s: %s: %w", old, next.Addr, what, err)
	}
	err = poll(ctx, func() error {
		_, err := redisCall(s.sentinel.Addr, "SENTINEL", "FAILOVER", s.name)
		return err
	})
	if err != nil {
		return wrap("SENTINEL FAILOVER", err)
	}
	err = poll(ctx, func() error {
		got, err := s.PrimaryAddr()
		if err != nil {
			return err
		}
		if got != next.Addr {
			return fmt.Errorf("sentinel still names %s", got)
		}
		info, err := redisText(next.Addr, "INFO", "replication")
		if err != nil {
			return err
		}
		if role := infoField(info, "role"); role != "master" {
			return fmt.Errorf("%s has role:%s", next.Addr, role)
		}
		v, err := redisCall(s.sentinel.Addr, "SENTINEL", "MASTER", s.name)
		if err != nil {
			return err
		}
		if m := pairs(v); m["flags"] != "master" {
			return fmt.Errorf("sentinel has flags %q for the primary", m["flags"])
		}
		return nil
	})
	if err != nil {
		return wrap("the sentinel's switch", err)
	}
	host, port, _ := net.SplitHostPort(next.Addr)
	if _, err := redisCall(old, "REPLICAOF", host, port); err != nil {
		return wrap("REPLICAOF on the former primary", err)
	}
	if err := poll(ctx, func() error { return linkUp(old) }); err != nil {
		return wrap("the former primary's sync", err)
	}
	return nil
}

// Stop kills the sentinel, then both servers, and removes their
// directories. It is idempotent.
func (s *Sentinel) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range []*Redis{s.sentinel, s.servers[0], s.servers[1]} {
		if r != nil {
			r.Stop()
		}
	}
}
