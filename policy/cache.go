package policy

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// RedisCache is a Cache over go-redis clients, one per RESP version
// (index 0: RESP2, 1: RESP3). The server passes its faster multiplexed
// path instead; tests and tools use this one.
type RedisCache [2]*redis.Client

// Do sends cmds as one go-redis pipeline of raw commands.
func (c RedisCache) Do(ctx context.Context, proto int, cmds ...[][]byte) ([][]byte, error) {
	cl := c[0]
	if proto == 3 {
		cl = c[1]
	}
	raws := make([]*redis.RawCmd, len(cmds))
	p := cl.Pipeline()
	for i, cmd := range cmds {
		args := make([]any, len(cmd))
		for j, a := range cmd {
			args[j] = a
		}
		raws[i] = redis.NewRawCmd(ctx, args...)
		p.Process(ctx, raws[i])
	}
	if _, err := p.Exec(ctx); err != nil {
		return nil, err
	}
	out := make([][]byte, len(cmds))
	for i, r := range raws {
		out[i] = r.Val()
	}
	return out, nil
}
