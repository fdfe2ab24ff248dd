package policy

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Keys on Redis Cluster (upstream.mode cluster). A script's keys must
// share one hash slot, and the proxy's scripts mix a routed key with the
// keys it keeps beside it ("respite:neg:" + the key, the write-through
// intent, the fill lease: in the key's slot whenever the key's own hash
// tag decides it) and with keys it keeps per route (the write-back
// stream, the write-through pending set). So on a cluster every routed
// key's Redis key carries the route's hash tag right after the prefix:
// "user:42" of route users is cached as "user:{respite:users}42", and the
// route's own keys carry the same tag ("respite:wb:users{respite:users}").
// A route's keys are then in one slot, on one primary; the routes spread
// over the cluster. The tag goes in where a command enters the route
// layer, as the cache version's does (cacheversion.go: Route.cacheKey),
// and Route.id takes it out again. Clients see the tagged names only
// where Redis lists keys (SCAN, KEYS), as with cache_version.

// slotTag is the hash tag of route's keys on a cluster.
func slotTag(route string) string { return "{respite:" + route + "}" }

// rkey is what the route's own Redis keys are named after: its name, and
// on a cluster its hash tag.
func (r *Route) rkey() string { return r.cfg.Name + r.slotTag }

// node is the go-redis client for the route's commands that name no key
// (SCAN): on a cluster the primary of the route's slot, else rdb.
func (r *Route) node(ctx context.Context) (redis.UniversalClient, error) {
	cl, ok := r.rdb.(*redis.ClusterClient)
	if !ok {
		return r.rdb, nil
	}
	cl.ReloadState(ctx) // the slot may have moved since go-redis last looked
	return cl.MasterForKey(ctx, r.rkey())
}
