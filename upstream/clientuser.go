package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/resp"
)

// The restricted user of clients' connections. The proxy keeps its
// bookkeeping in Redis under "respite:" (negative markers, write-back
// queues, leases, versions). The proxy refuses a client's command whose
// declared keys are such keys, but a Lua script (EVAL, EVALSHA, FCALL)
// can compute key names it does not declare. So while routes are
// configured, the connections that carry clients' commands (the shared
// multiplexed ones, the pinned ones) log in to Redis as a user whose key
// patterns match every key but those starting with "respite:", and Redis
// refuses the script's call itself. The proxy's own connections (the
// route layer's Cache, go-redis, the tracking connection) keep the
// operator's credentials.
//
// Redis' ACL key patterns have no negation, so the complement of
// "respite:*" is spelled as globs: a key that differs from "respite:" at
// its first byte, or its second, ... (~[^r]* ~r[^e]* ... ~respite[^:]*),
// and the keys that are proper prefixes of "respite:" (~ for the empty
// key, ~r, ~re, ..., ~respite).

// ClientUserName is the user the proxy creates for clients' connections
// (ACL SETUSER) unless upstream.client_user names one the operator made.
const ClientUserName = "respite-client"

// ReservedPrefix is the prefix of the proxy's own keys.
const ReservedPrefix = "respite:"

// login is a user and password to log in to Redis as.
type login struct {
	user, pass string
	// managed: the proxy creates the user (ACL SETUSER), and creates it
	// again when Redis no longer knows it (a restart, a failover to a
	// replica, which does not replicate ACL users).
	managed bool
}

// clientKeyPatterns are the ACL key patterns of every key that does not
// start with ReservedPrefix.
func clientKeyPatterns() []string {
	var out []string
	for i := 0; i < len(ReservedPrefix); i++ {
		out = append(out, "~"+ReservedPrefix[:i]+"[^"+ReservedPrefix[i:i+1]+"]*")
	}
	for i := 0; i < len(ReservedPrefix); i++ {
		out = append(out, "~"+ReservedPrefix[:i])
	}
	return out
}

// clientPassword is the managed user's password: derived from the
// operator's credentials, so every proxy that logs in as the same
// operator's user sets the same one (proxies sharing a Redis neither
// replace each other's password nor pile up new ones at each start). It
// grants nothing a client of the proxy does not have: the user's rights
// are a subset of the operator's.
func clientPassword(cfg config.Upstream) string {
	h := sha256.Sum256([]byte("respite-client\x00" + cfg.Username + "\x00" + cfg.Password))
	return hex.EncodeToString(h[:])
}

// clientLogin is whom the connections carrying clients' commands log in
// as.
func (u *Upstream) clientLogin() (user, password string) {
	if l := u.client.Load(); l != nil {
		return l.user, l.pass
	}
	return u.cfg.Username, u.cfg.Password
}

// ClientUser is the restricted user clients' connections log in as, ""
// when they log in as the operator's user.
func (u *Upstream) ClientUser() (user, password string) {
	if l := u.client.Load(); l != nil {
		return l.user, l.pass
	}
	return "", ""
}

// Restricted reports whether clients' connections log in as the
// restricted user (now: after a fall back to the operator's user, new
// ones no longer do).
func (u *Upstream) Restricted() bool { return u.client.Load() != nil }

// OwnLogin is the AUTH arguments of the operator's user, for the proxy's
// own steps queued on a client's pinned connection.
func (u *Upstream) OwnLogin() [][]byte {
	user := u.cfg.Username
	if user == "" {
		user = "default"
	}
	return [][]byte{[]byte("AUTH"), []byte(user), []byte(u.cfg.Password)}
}

// ownShared is the multiplexer of the route layer's commands.
func (u *Upstream) ownShared(proto int) *Mux {
	if u.restricted.Load() {
		return u.own[index(proto)]
	}
	return u.mux[index(proto)]
}

// ErrUnreachable wraps the error of RestrictClients when Redis could not
// be asked: the restriction is on, and the managed user is created when
// Redis answers.
var ErrUnreachable = errors.New("redis unreachable")

// RestrictClients makes the connections that carry clients' commands log
// in as a user that cannot reach the proxy's keys, from now on: the
// operator's user named user (upstream.client_user, checked: it must log
// in, reach a plain key and be refused a "respite:" key), or with user
// "" the proxy's own ClientUserName, created or updated with ACL SETUSER.
// It must be called before clients' commands are carried. An error but
// one wrapping ErrUnreachable means nothing changed: clients' connections
// log in as the operator's user, as before.
func (u *Upstream) RestrictClients(ctx context.Context, user, password string) error {
	if user != "" {
		err := u.probe(user, password)
		if err != nil && !errors.Is(err, ErrUnreachable) {
			return err
		}
		u.restricted.Store(true)
		u.client.Store(&login{user: user, pass: password})
		return err
	}
	l := &login{user: ClientUserName, pass: clientPassword(u.cfg), managed: true}
	err := u.createClientUser(ctx, l)
	var rerr redisError
	if errors.As(err, &rerr) {
		return err
	}
	u.restricted.Store(true)
	u.client.Store(l)
	if err != nil {
		return errors.Join(ErrUnreachable, err)
	}
	return nil
}

// redisError is an error reply of Redis (not a failure to reach it).
type redisError struct{ msg string }

func (e redisError) Error() string { return e.msg }

// createClientUser runs ACL SETUSER for l with the operator's
// credentials. It never resets the user (which would cut other proxies'
// connections): it adds l's password and sets the key patterns, all
// channels and all commands but FLUSHALL, FLUSHDB and SWAPDB.
func (u *Upstream) createClientUser(ctx context.Context, l *login) error {
	args := []any{"ACL", "SETUSER", l.user, "on", ">" + l.pass, "resetkeys"}
	for _, p := range clientKeyPatterns() {
		args = append(args, p)
	}
	// FLUSHALL, FLUSHDB and SWAPDB would empty or move the proxy's keys
	// (write-back queues) from a script; the proxy runs clients' flushes
	// itself (policy/flushall.go), on its own connections.
	args = append(args, "resetchannels", "&*", "clearselectors", "+@all", "-flushall", "-flushdb", "-swapdb")
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	var err error
	if cl, ok := u.routes.(*redis.ClusterClient); ok {
		// Every node, replicas too: a failover must find the user.
		err = cl.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Do(ctx, args...).Err()
		})
	} else {
		err = u.redis.Do(ctx, args...).Err()
	}
	if err != nil && isRedisError(err) {
		return redisError{"ACL SETUSER " + l.user + ": " + err.Error()}
	}
	return err
}

// isRedisError reports whether err is Redis' error reply.
func isRedisError(err error) bool {
	type redisErr interface{ RedisError() }
	var re redisErr
	return errors.As(err, &re)
}

// probe checks that an operator-made user logs in, may access a plain key
// and is refused a key of the proxy's.
func (u *Upstream) probe(user, password string) error {
	cfg, ok := u.primaryConfig()
	if !ok {
		return ErrUnreachable
	}
	cfg.DB = 0
	nc, br, _, err := dial(cfg, u.tls, 2, user, password)
	if err != nil {
		if strings.Contains(err.Error(), "upstream handshake") {
			return errors.New("upstream.client_user " + user + " cannot log in: " + err.Error())
		}
		return errors.Join(ErrUnreachable, err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(u.timeout))
	req := resp.AppendCommand(nil, strArgs("EXISTS", "respite-acl-probe"))
	req = resp.AppendCommand(req, strArgs("DEL", ReservedPrefix+"acl-probe"))
	if _, err := nc.Write(req); err != nil {
		return errors.Join(ErrUnreachable, err)
	}
	plain, err := resp.AppendReply(nil, br)
	if err != nil {
		return errors.Join(ErrUnreachable, err)
	}
	own, err := resp.AppendReply(nil, br)
	if err != nil {
		return errors.Join(ErrUnreachable, err)
	}
	if plain[0] != ':' {
		return errors.New("upstream.client_user " + user + " may not access plain keys: EXISTS answered " + oneLine(plain))
	}
	if !strings.HasPrefix(string(own), "-NOPERM") {
		return errors.New("upstream.client_user " + user + " may write the proxy's keys (DEL " + ReservedPrefix + "acl-probe answered " + oneLine(own) + "); give it key patterns that exclude " + ReservedPrefix + "*")
	}
	return nil
}

// heal runs after a failed dial of a client's connection: when Redis no
// longer knows the managed user (WRONGPASS: Redis restarted, or a failover
// made a replica the primary), it is created again, at most once a second.
// If the operator's user may not create it, clients' connections log in
// as the operator's user from then on. It reports whether to dial again.
func (u *Upstream) heal(err error) bool {
	l := u.client.Load()
	if l == nil || !l.managed || !strings.Contains(err.Error(), "WRONGPASS") {
		return false
	}
	u.healMu.Lock()
	defer u.healMu.Unlock()
	if u.client.Load() != l {
		return true // fell back meanwhile
	}
	if time.Since(u.healAt) < time.Second {
		return u.healOK // another dial just tried
	}
	u.healAt = time.Now()
	cerr := u.createClientUser(context.Background(), l)
	var rerr redisError
	if errors.As(cerr, &rerr) {
		u.client.Store(nil)
		if u.onFallback != nil {
			u.onFallback(cerr)
		}
		return true
	}
	u.healOK = cerr == nil
	return u.healOK
}

// OnClientFallback sets f to be told when clients' connections stop
// logging in as the restricted user because the operator's user may not
// create it (f logs it).
func (u *Upstream) OnClientFallback(f func(error)) { u.onFallback = f }
