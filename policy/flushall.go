package policy

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// FLUSHALL and FLUSHDB while write-back routes queue writes in Redis: a
// flush would drop acknowledged writes not yet in PostgreSQL. The route
// layer runs it as one script that refuses while any queue holds an entry
// (new or read but not acknowledged), and otherwise flushes and recreates
// the queues and their consumer group at once, so the flushers go on as
// before. Atomic in Redis: a write queued by another proxy instance
// either comes before (and the flush is refused) or after (and is kept).

// An entry stays in its stream until the flusher acknowledges and deletes
// it after the PostgreSQL commit (flushstream.go ack), so XLEN counts
// everything not yet in PostgreSQL, read or not.
//
// flushScript: KEYS are the write-back streams; ARGV[1] the group, ARGV[2]
// FLUSHALL or FLUSHDB, ARGV[3] its option (ASYNC, SYNC) or "".
var flushScript = redis.NewScript(`
for _, s in ipairs(KEYS) do
  local left = redis.call('EXISTS', s) == 1 and redis.call('XLEN', s) or 0
  if left > 0 then
    return redis.error_reply('ERR ' .. ARGV[2] .. ' refused: write-back queue ' .. s .. ' holds ' .. left .. ' entries not yet in PostgreSQL; flush them first (RESPITE FLUSH) and try again')
  end
end
if ARGV[3] ~= '' then redis.call(ARGV[2], ARGV[3]) else redis.call(ARGV[2]) end
for _, s in ipairs(KEYS) do
  redis.call('XGROUP', 'CREATE', s, ARGV[1], '$', 'MKSTREAM')
end
return 'OK'`)

// flush carries FLUSHALL or FLUSHDB (cmd) with the write-back queues
// guarded.
func (s *Set) flush(ctx context.Context, cmd *router.Command) resp.Reply {
	var streams []string
	for _, r := range s.list {
		if r.queued {
			streams = append(streams, StreamKey(r.rkey()))
		}
	}
	opt := ""
	if len(cmd.Args) > 2 {
		return resp.Err("ERR syntax error")
	}
	if len(cmd.Args) == 2 {
		opt = strings.ToUpper(string(cmd.Args[1]))
		if opt != "ASYNC" && opt != "SYNC" {
			return resp.Err("ERR syntax error")
		}
	}
	rdb := s.list[0].rdb
	name := strings.ToUpper(cmd.Name())
	if cl, ok := rdb.(*redis.ClusterClient); ok {
		return s.flushCluster(ctx, cl, name, opt, streams)
	}
	if err := flushScript.Run(ctx, rdb, streams, ConsumerGroup, name, opt).Err(); err != nil {
		return resp.Err(oneLine(err.Error()))
	}
	return resp.OK()
}

// flushCluster is flush on a cluster: the script cannot span the queues'
// slots, nor FLUSHALL every primary, so with write-back routes it is
// refused; without them every primary is flushed.
func (s *Set) flushCluster(ctx context.Context, cl *redis.ClusterClient, name, opt string, streams []string) resp.Reply {
	if len(streams) > 0 {
		return resp.Err("ERR " + name + " is refused with write-back routes on upstream.mode cluster: it cannot be atomic with the write-back queues there; delete the keys instead")
	}
	args := []any{name}
	if opt != "" {
		args = append(args, opt)
	}
	err := cl.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, args...).Err()
	})
	if err != nil {
		return resp.Err(oneLine(err.Error()))
	}
	return resp.OK()
}
