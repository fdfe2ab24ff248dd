package server

import (
	"context"
	"errors"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// restrictClients makes the connections that carry clients' commands log
// in to Redis as a user that cannot reach the proxy's keys (respite:*),
// so that a Lua script cannot write them either (upstream/clientuser.go).
// It runs at start when routes are configured; without routes nothing
// changes. When it cannot be done, the proxy starts anyway and says what
// is at risk and how to fix it.
func (s *Server) restrictClients(cfg config.Config) {
	if len(cfg.Routes) == 0 {
		return
	}
	u := cfg.Upstream
	risk := "clients' Lua scripts (EVAL, EVALSHA, FCALL) can write the proxy's keys (respite:*: negative cache, write-back queues)"
	s.up.OnClientFallback(func(err error) {
		s.log.Warn(risk+": the restricted user "+upstream.ClientUserName+" could not be created again, so clients' connections log in as upstream.username; give it the right to run ACL SETUSER, or create a user and set upstream.client_user", "err", err)
	})
	ctx, cancel := context.WithTimeout(context.Background(), s.up.Timeout())
	defer cancel()
	err := s.up.RestrictClients(ctx, u.ClientUser, u.ClientPassword)
	user, _ := s.up.ClientUser()
	switch {
	case err == nil:
		s.log.Info("clients' connections log in to Redis as a user without access to respite:* keys", "user", user)
	case errors.Is(err, upstream.ErrUnreachable):
		s.log.Info("clients' connections will log in to Redis as a user without access to respite:* keys; Redis did not answer yet, it is checked (or created) when it does", "user", user, "err", err)
	case u.ClientUser != "":
		s.log.Warn(risk+": upstream.client_user is not usable, so clients' connections log in as upstream.username; fix the user (every key but respite:*, e.g. ACL SETUSER "+u.ClientUser+" on >... ~[^r]* ... &* +@all, see docs/OPERATIONS.md)", "err", err)
	default:
		s.log.Warn(risk+": upstream.username may not create the user "+upstream.ClientUserName+" (ACL SETUSER), so clients' connections log in as upstream.username; give it that right, or create a user and set upstream.client_user (docs/OPERATIONS.md)", "err", err)
	}
}

// forwardFullKeys carries a command Redis allows only a user with every key,
// which the router checked names none of the proxy's (PathOwn: SORT with
// BY or GET patterns): on the route layer's connections, logged in as the
// operator's user; the reply is Redis' as it is.
func (c *session) forwardFullKeys(cmd *router.Command) {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.Timeout())
	defer cancel()
	replies, err := c.s.up.Cache().Do(ctx, c.proto, cmd.Args)
	c.sent()
	if err != nil {
		c.s.counts.upErrors.Add(1)
		c.sendError(upstreamError(err))
		return
	}
	c.send(replies[0])
}
