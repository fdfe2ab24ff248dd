package server

import (
	"context"
	"time"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/policy"
	"github.com/respite/respite/router"
)

// routed carries a command with routed keys outside MULTI: the route
// layer answers it (splitting a multi-key command between routes and the
// plain keyspace, and merging the replies in the client's order).
func (c *session) routed(set *policy.Set, cmd *router.Command) {
	if c.s.metrics != nil {
		class := admin.ClassRoutedRead
		if cmd.Write() {
			class = admin.ClassRoutedWrite
		}
		defer c.observe(class, time.Now())
	}
	c.s.conflicts.noteWrites([]router.Command{*cmd})
	// The policies bound what can block (loads, writes) themselves.
	c.sendReply(set.Do(context.Background(), c.proto, cmd))
}
