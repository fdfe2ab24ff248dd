package server

import (
	"context"
	"crypto/subtle"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/respite/respite/internal/config"
	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
)

// respite answers the admin command family:
//
//	RESPITE STATS                    per route: hits, misses, hit rate, DB loads, ...
//	RESPITE ROUTES                   the effective route configuration
//	RESPITE CONFLICTS [count]        hottest WATCH keys: key, attempts, aborts, conflict rate
//	RESPITE LASTABORT                this connection's last WATCH abort (retry metadata)
//	RESPITE ATTRIBUTES ON|OFF        RESP3: retry metadata as an attribute on aborted EXECs
//	RESPITE QUEUE                    write-back queues: length, oldest pending age, in flight, DLQ
//	RESPITE DLQ LIST route [count] | REPLAY route [id ...] | DROP route [id ...]
//	RESPITE FLUSH                    flush write-back queues now
//	RESPITE RELOAD                   reload the configuration file (as SIGHUP)
//	RESPITE VERIFY route [count] [REPAIR]  compare cached rows with PostgreSQL (policy/verify.go)
//	RESPITE AUTH password            when admin_password is set, before the others
//
// Replies are maps in RESP3 and flat arrays in RESP2.
func (c *session) respite(set *policy.Set, cmd *router.Command) {
	args := cmd.Args
	if len(args) < 2 {
		c.sendError(errArity("respite"))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.s.up.Timeout())
	defer cancel()
	if pw := c.s.cfg.AdminPassword; pw != "" && !c.admin.ok {
		if cmd.ID == router.CmdRespiteAuth && len(args) == 3 && subtle.ConstantTimeCompare(args[2], []byte(pw)) == 1 {
			c.admin.ok = true
			c.sendStatus("OK")
		} else if cmd.ID == router.CmdRespiteAuth {
			c.sendError(errWrongPass)
		} else {
			c.sendError("NOPERM RESPITE " + strings.ToUpper(string(args[1])) + " needs RESPITE AUTH <admin_password> first")
		}
		return
	}
	switch cmd.ID {
	case router.CmdRespiteAuth:
		c.sendStatus("OK")
	case router.CmdRespiteConflicts:
		n := 10
		if len(args) > 2 {
			var err error
			if n, err = strconv.Atoi(string(args[2])); err != nil || n < 0 {
				c.sendError("ERR value is not an integer or out of range")
				return
			}
		}
		hot := c.s.conflicts.hottest(n)
		b := resp.AppendArray(nil, len(hot))
		for _, h := range hot {
			b = resp.AppendMap(b, 4, c.proto)
			b = resp.AppendBulk(b, "key")
			b = resp.AppendBulk(b, h.key)
			b = resp.AppendBulk(b, "attempts")
			b = resp.AppendInt(b, h.attempts)
			b = resp.AppendBulk(b, "aborts")
			b = resp.AppendInt(b, h.aborts)
			b = resp.AppendBulk(b, "conflict_rate_10s")
			b = resp.AppendBulk(b, strconv.FormatFloat(h.rate, 'f', 3, 64))
		}
		c.send(b)
	case router.CmdRespiteAttributes:
		switch {
		case len(args) == 3 && router.IsOption(args[2], "on"):
			c.admin.attributes = true
		case len(args) == 3 && router.IsOption(args[2], "off"):
			c.admin.attributes = false
		default:
			c.sendError("ERR syntax error: RESPITE ATTRIBUTES ON|OFF")
			return
		}
		c.sendStatus("OK")
	case router.CmdRespiteLastabort:
		if c.tx.lastAbort == nil {
			c.send(resp.AppendNull(nil, c.proto))
			return
		}
		c.send(appendAbortInfo(nil, c.tx.lastAbort, c.proto))
	case router.CmdRespiteStats:
		c.send(statsReply(set, c.proto))
	case router.CmdRespiteRoutes:
		c.send(routesReply(set, c.proto))
	case router.CmdRespiteQueue:
		c.send(queueReply(ctx, set, c.proto))
	case router.CmdRespiteFlush:
		if set.Flusher() == nil {
			c.sendError("ERR no write-back routes")
			return
		}
		if err := set.Flusher().FlushNow(ctx); err != nil {
			c.sendError("ERR flush: " + oneLine(err.Error()))
			return
		}
		c.sendStatus("OK")
	case router.CmdRespiteDlq:
		c.dlq(ctx, set, args)
	case router.CmdRespiteVerify:
		c.verify(ctx, set, args)
	case router.CmdRespiteReload:
		restart, err := c.s.ReloadFile()
		if err != nil {
			c.sendError("ERR reload refused, the old configuration keeps serving: " + oneLine(err.Error()))
			return
		}
		if len(restart) > 0 {
			c.sendStatus("OK reloaded; these settings need a restart and were not applied: " + strings.Join(restart, ", "))
			return
		}
		c.sendStatus("OK")
	default:
		c.sendError("ERR unknown subcommand '" + string(args[1]) + "'. Try RESPITE STATS, ROUTES, CONFLICTS, LASTABORT, QUEUE, DLQ, FLUSH, RELOAD, VERIFY.")
	}
}

// statsReply is RESPITE STATS: one map per route.
func statsReply(set *policy.Set, proto int) []byte {
	list := set.List()
	b := resp.AppendArray(nil, len(list))
	for _, r := range list {
		st := &r.Stats
		hits, misses := st.Hits.Load(), st.Misses.Load()
		rate := 0.0
		if hits+misses > 0 {
			rate = float64(hits) / float64(hits+misses)
		}
		fields := []struct {
			k string
			v int64
		}{
			{"hits", hits}, {"misses", misses}, {"negative_hits", st.NegativeHits.Load()},
			{"local_hits", st.LocalHits.Load()}, {"db_loads", st.Loads.Load()},
			{"coalesced_waits", st.Coalesced.Load()}, {"early_refreshes", st.EarlyRefreshes.Load()},
			{"degraded_reads", st.Degraded.Load()}, {"writes", st.Writes.Load()}, {"errors", st.Errors.Load()},
		}
		b = resp.AppendMap(b, len(fields)+3, proto)
		b = resp.AppendBulk(resp.AppendBulk(b, "route"), r.Config().Name)
		b = resp.AppendBulk(resp.AppendBulk(b, "policy"), string(r.Config().Policy))
		b = resp.AppendBulk(resp.AppendBulk(b, "hit_rate"), strconv.FormatFloat(rate, 'f', 4, 64))
		for _, f := range fields {
			b = resp.AppendInt(resp.AppendBulk(b, f.k), f.v)
		}
	}
	return b
}

// routesReply is RESPITE ROUTES: each route's effective settings.
func routesReply(set *policy.Set, proto int) []byte {
	list := set.List()
	b := resp.AppendArray(nil, len(list))
	for _, r := range list {
		cfg := r.Config()
		kv := [][2]string{
			{"name", cfg.Name}, {"prefix", cfg.Prefix}, {"policy", string(cfg.Policy)}, {"table", cfg.Table},
			{"key_column", cfg.KeyColumn}, {"format", string(cfg.Format)}, {"value_column", cfg.ValueColumn},
			{"ttl", time.Duration(cfg.TTL).String()}, {"ttl_jitter", fmt.Sprintf("%g%%", float64(cfg.TTLJitter)*100)},
			{"negative_ttl", time.Duration(*cfg.NegativeTTL).String()}, {"sliding", strconv.FormatBool(cfg.Sliding)},
			{"early_refresh", strconv.FormatBool(cfg.EarlyRefresh)}, {"distributed_lock", strconv.FormatBool(cfg.DistributedLock)},
			{"local_cache", strconv.FormatBool(cfg.LocalCache != nil)},
			{"cache_version", strconv.Itoa(cfg.CacheVersion)}, {"audit", strconv.FormatBool(cfg.Audit)},
		}
		if len(cfg.KeyColumns) > 1 {
			kv[4] = [2]string{"key_columns", strings.Join(cfg.KeyColumns, ", ")}
			kv = append(kv, [2]string{"key_separator", cfg.KeySeparator})
		}
		if cfg.Policy == config.WriteBack {
			kv = append(kv, [][2]string{{"batch_size", strconv.Itoa(cfg.BatchSize)},
				{"flush_interval", time.Duration(cfg.FlushInterval).String()},
				{"max_retries", strconv.Itoa(cfg.MaxRetries)}, {"priority", cfg.Priority}}...)
		}
		b = resp.AppendMap(b, len(kv), proto)
		for _, p := range kv {
			b = resp.AppendBulk(resp.AppendBulk(b, p[0]), p[1])
		}
	}
	return b
}

// queueReply is RESPITE QUEUE.
func queueReply(ctx context.Context, set *policy.Set, proto int) []byte {
	if set.Flusher() == nil {
		return resp.AppendArray(nil, 0)
	}
	qs := set.Flusher().Queues(ctx)
	for _, q := range qs {
		// A length read from an unreachable Redis is not 0: say so.
		if q.Err != nil {
			return resp.AppendError(nil, "ERR write-back queue of route '"+q.Route+"' cannot be read from the upstream Redis: "+oneLine(q.Err.Error()))
		}
	}
	b := resp.AppendArray(nil, len(qs))
	for _, q := range qs {
		b = resp.AppendMap(b, 5, proto)
		b = resp.AppendBulk(resp.AppendBulk(b, "route"), q.Route)
		b = resp.AppendInt(resp.AppendBulk(b, "length"), q.Length)
		b = resp.AppendBulk(resp.AppendBulk(b, "oldest_pending_seconds"), strconv.FormatFloat(q.OldestAge.Seconds(), 'f', 3, 64))
		b = resp.AppendInt(resp.AppendBulk(b, "in_flight"), q.InFlight)
		b = resp.AppendInt(resp.AppendBulk(b, "dead_letters"), q.DeadLetters)
	}
	return b
}

// verify is RESPITE VERIFY route [count] [REPAIR]: count (default 100)
// cached rows of route compared with PostgreSQL; the reply is a map of
// route, checked, divergent, repaired and divergences (key, reason,
// repaired for each).
func (c *session) verify(ctx context.Context, set *policy.Set, args [][]byte) {
	if len(args) < 3 || len(args) > 5 {
		c.sendError(errArity("respite|verify"))
		return
	}
	count, repair := 100, false
	for _, a := range args[3:] {
		if router.IsOption(a, "repair") && !repair {
			repair = true
			continue
		}
		n, err := strconv.Atoi(string(a))
		if err != nil || n <= 0 || n > 100000 {
			c.sendError("ERR syntax error: RESPITE VERIFY route [count (1 to 100000)] [REPAIR]")
			return
		}
		count = n
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	rep, err := set.Verify(ctx, string(args[2]), count, repair)
	if err != nil {
		c.sendError("ERR verify: " + oneLine(err.Error()))
		return
	}
	b := resp.AppendMap(nil, 5, c.proto)
	b = resp.AppendBulk(resp.AppendBulk(b, "route"), rep.Route)
	b = resp.AppendInt(resp.AppendBulk(b, "checked"), int64(rep.Checked))
	b = resp.AppendInt(resp.AppendBulk(b, "divergent"), int64(rep.Divergent))
	b = resp.AppendInt(resp.AppendBulk(b, "repaired"), int64(rep.Repaired))
	b = resp.AppendArray(resp.AppendBulk(b, "divergences"), len(rep.Divergences))
	for _, d := range rep.Divergences {
		b = resp.AppendMap(b, 3, c.proto)
		b = resp.AppendBulk(resp.AppendBulk(b, "key"), d.Key)
		b = resp.AppendBulk(resp.AppendBulk(b, "reason"), d.Reason)
		b = resp.AppendInt(resp.AppendBulk(b, "repaired"), boolInt(d.Repaired))
	}
	c.send(b)
}

// dlq is RESPITE DLQ LIST|REPLAY|DROP route ....
func (c *session) dlq(ctx context.Context, set *policy.Set, args [][]byte) {
	if len(args) < 4 {
		c.sendError(errArity("respite|dlq"))
		return
	}
	if set.Flusher() == nil {
		c.sendError("ERR no write-back routes")
		return
	}
	f := set.Flusher()
	route := string(args[3])
	var ids []string
	for _, a := range args[4:] {
		ids = append(ids, string(a))
	}
	switch {
	case router.IsOption(args[2], "list"):
		n := int64(100)
		if len(ids) > 0 {
			v, err := strconv.ParseInt(ids[0], 10, 64)
			if err != nil || v <= 0 {
				c.sendError("ERR value is not an integer or out of range")
				return
			}
			n = v
		}
		msgs, err := f.DeadLetters(ctx, route, n)
		if err != nil {
			c.sendError("ERR " + oneLine(err.Error()))
			return
		}
		b := resp.AppendArray(nil, len(msgs))
		for _, m := range msgs {
			keys := make([]string, 0, len(m.Values))
			for k := range m.Values {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			b = resp.AppendArray(b, 2)
			b = resp.AppendBulk(b, m.ID)
			b = resp.AppendMap(b, len(keys), c.proto)
			for _, k := range keys {
				b = resp.AppendBulk(resp.AppendBulk(b, k), fmt.Sprint(m.Values[k]))
			}
		}
		c.send(b)
	case router.IsOption(args[2], "replay"), router.IsOption(args[2], "drop"):
		var n int
		var err error
		if router.IsOption(args[2], "replay") {
			n, err = f.Replay(ctx, route, ids...)
		} else {
			n, err = f.Drop(ctx, route, ids...)
		}
		if err != nil {
			c.sendError("ERR " + oneLine(err.Error()))
			return
		}
		c.send(resp.AppendInt(nil, int64(n)))
	default:
		c.sendError("ERR unknown subcommand '" + string(args[2]) + "'. Try RESPITE DLQ LIST|REPLAY|DROP route.")
	}
}

// oneLine keeps an error text usable in a RESP error reply.
func oneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }
