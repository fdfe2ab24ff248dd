package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
)

// What write-back promises depends on the upstream Redis (docs/OPERATIONS.md,
// "Durability of write-back"): its queue, the dirty keys and the
// tombstones live there. The guard reads Redis' eviction policy and
// persistence when the route set opens (start-up and every reload) and
// every durabilityEvery after, says what they mean (one log line at
// start-up, the metrics respite_upstream_persistence and
// respite_upstream_maxmemory_policy) and refuses write-back writes under
// settings that can lose them, unless the operator opted in by name:
//
//   - maxmemory-policy: noeviction and the volatile-* policies are safe:
//     the proxy never puts a TTL on a queue (respite:wb:*, respite:dlq:*),
//     a dirty write-back key (written without TTL, or PERSISTed) or a
//     tombstone, so volatile-* never evict them, and once nothing volatile
//     is left Redis refuses writes (OOM), which the client sees. Any other
//     policy (allkeys-lru, allkeys-lfu, allkeys-random, or one this code
//     does not know) can evict the queue with the acknowledged writes in
//     it: refused unless write_back.allow_evicting_policy names it. The
//     refusal does not depend on maxmemory: CONFIG SET can give Redis a
//     limit at any time, and the guard looks only every durabilityEvery.
//   - persistence: reported; refused without AOF only with
//     write_back.require_aof.
//   - settings that cannot be read: CONFIG GET refused (ACL, or CONFIG
//     renamed) falls back to INFO, which tells the policy and whether AOF
//     is on (not appendfsync or the snapshot points); with INFO refused
//     too nothing is known, and write-back writes are refused unless
//     write_back.allow_evicting_policy is "unverified" (and require_aof is
//     off). Redis unreachable: nothing is known yet, writes are refused
//     (they could not be queued anyway) until a check succeeds.
//
// At start-up and on reload, settings Redis reports that refuse writes
// refuse the route set itself (the error names the setting and the opt-in).

// shared is what the routes of one Set share.
type shared struct {
	instance string // this proxy's name: write_back.consumer, else the host name
	cluster  bool   // upstream.mode cluster: the routes' keys carry slot tags (clusterkeys.go)
	guard    *guard // nil: write-back writes are not checked (routes built by New)
	// tag is set when the change capture runs and the role may emit
	// logical messages: write-through writes of tracked routes tag their
	// transactions (tag.go).
	tag atomic.Bool
	// tracked is set once the server keeps a tracking connection for
	// the in-process tiers (tracking.go); trackOn is its probe while it
	// is in place (nil otherwise).
	tracked atomic.Bool
	trackOn atomic.Pointer[func() bool]
	// replicas: write-back writes wait for write_back.min_replicas
	// replicas to hold their queue entry (replicas.go); zero: they don't.
	replicas replicaWait
}

func newShared(instance string) *shared {
	if instance == "" {
		instance, _ = os.Hostname()
		if instance == "" {
			instance = "respite"
		}
	}
	return &shared{instance: instance}
}

// Persistence modes of the upstream, as respite_upstream_persistence's
// mode label and Durability.Mode.
const (
	ModeAOFAlways   = "aof-always"   // appendonly yes, appendfsync always
	ModeAOFEverysec = "aof-everysec" // appendonly yes, appendfsync everysec
	ModeAOFNo       = "aof-no"       // appendonly yes, appendfsync no
	ModeAOF         = "aof"          // appendonly yes, appendfsync unknown (CONFIG GET refused)
	ModeRDB         = "rdb"          // no AOF, RDB snapshots (save points)
	ModeNone        = "none"         // no AOF, no snapshots
	ModeNoAOF       = "no-aof"       // no AOF, snapshots unknown (CONFIG GET refused)
	ModeUnknown     = "unknown"      // nothing known (Redis unreachable, or CONFIG and INFO refused)
)

// PersistenceModes lists every mode.
var PersistenceModes = []string{ModeAOFAlways, ModeAOFEverysec, ModeAOFNo, ModeAOF, ModeRDB, ModeNone, ModeNoAOF, ModeUnknown}

// modeMeaning is what a mode means for acknowledged write-back writes.
var modeMeaning = map[string]string{
	ModeAOFAlways:   "AOF with appendfsync always: nothing acknowledged is lost, also when Redis or its host crashes",
	ModeAOFEverysec: "AOF with appendfsync everysec: a crash of Redis or its host can lose about the last second of acknowledged write-back writes; a clean restart loses nothing",
	ModeAOFNo:       "AOF with appendfsync no: the OS writes the file when it likes (about every 30 s): a host crash can lose that much of the acknowledged write-back writes",
	ModeAOF:         "AOF on, appendfsync unknown (CONFIG GET is refused): a crash can lose what the fsync policy allows (about 1 s with everysec)",
	ModeRDB:         "no AOF, RDB snapshots only: a crash loses every write-back write acknowledged since the last snapshot (a clean SHUTDOWN saves one)",
	ModeNone:        "no persistence: a Redis restart loses the write-back queues, with every acknowledged write not yet in PostgreSQL",
	ModeNoAOF:       "AOF off, snapshot settings unknown (CONFIG GET is refused): a crash loses the writes since the last snapshot, a restart without snapshots loses the queues",
	ModeUnknown:     "the upstream's persistence is unknown",
}

// evictionSafe are the maxmemory policies that cannot evict a key without
// TTL, which every key the write-back queue relies on is.
var evictionSafe = map[string]bool{"noeviction": true, "volatile-lru": true, "volatile-lfu": true, "volatile-random": true, "volatile-ttl": true}

// AllowUnverified is write_back.allow_evicting_policy's value that accepts
// settings the proxy may not read.
const AllowUnverified = "unverified"

// Durability is what the upstream Redis' settings mean for write-back.
type Durability struct {
	// Known: the eviction policy could be read (CONFIG GET, or INFO).
	Known bool
	// Err says why something is unknown: Redis unreachable, CONFIG GET
	// refused, INFO refused.
	Err error
	// Unreachable: Redis could not be reached at all.
	Unreachable bool
	Policy      string // maxmemory-policy, "" unknown
	MaxMemory   int64  // maxmemory in bytes (0: no limit), -1 unknown
	AOF         bool   // appendonly, when AOFKnown
	AOFKnown    bool
	Fsync       string // appendfsync, "" unknown
	Save        string // RDB save points, when SaveKnown ("" none)
	SaveKnown   bool
	Mode        string // one of PersistenceModes
	RunID       string // INFO server run_id: changes when Redis restarts
	// Refusal, when set, is why write-back writes are refused.
	Refusal error
}

// Meaning is Mode in words, for logs.
func (d *Durability) Meaning() string { return modeMeaning[d.Mode] }

// readDurability reads the upstream's settings: CONFIG GET for the
// policy, appendfsync and the save points, INFO for the rest (and for
// the policy when CONFIG is refused).
func readDurability(ctx context.Context, rdb redis.UniversalClient) *Durability {
	d := &Durability{MaxMemory: -1}
	p := rdb.Pipeline()
	pol := p.ConfigGet(ctx, "maxmemory-policy")
	fsync := p.ConfigGet(ctx, "appendfsync")
	save := p.ConfigGet(ctx, "save")
	info := p.Info(ctx)
	p.Exec(ctx)
	var errs []error
	if err := info.Err(); err != nil {
		if !isReply(err) {
			d.Err, d.Unreachable, d.Mode = fmt.Errorf("upstream Redis unreachable: %w", err), true, ModeUnknown
			return d
		}
		errs = append(errs, fmt.Errorf("INFO refused: %w", err))
	} else {
		fields := infoFields(info.Val())
		d.RunID = fields["run_id"]
		if v, ok := fields["maxmemory_policy"]; ok {
			d.Policy, d.Known = v, true
		}
		if v, err := strconv.ParseInt(fields["maxmemory"], 10, 64); err == nil {
			d.MaxMemory = v
		}
		if v, ok := fields["aof_enabled"]; ok {
			d.AOF, d.AOFKnown = v == "1", true
		}
	}
	if m, err := pol.Result(); err == nil && m["maxmemory-policy"] != "" {
		d.Policy, d.Known = m["maxmemory-policy"], true
	} else if err != nil {
		errs = append(errs, fmt.Errorf("CONFIG GET refused: %w", err))
	}
	if m, err := fsync.Result(); err == nil {
		d.Fsync = m["appendfsync"]
	}
	if m, err := save.Result(); err == nil {
		if v, ok := m["save"]; ok {
			d.Save, d.SaveKnown = v, true
		}
	}
	d.Err = errors.Join(errs...)
	switch {
	case !d.AOFKnown:
		d.Mode = ModeUnknown
	case d.AOF:
		d.Mode = map[string]string{"always": ModeAOFAlways, "everysec": ModeAOFEverysec, "no": ModeAOFNo}[d.Fsync]
		if d.Mode == "" {
			d.Mode = ModeAOF
		}
	case !d.SaveKnown:
		d.Mode = ModeNoAOF
	case strings.TrimSpace(d.Save) != "":
		d.Mode = ModeRDB
	default:
		d.Mode = ModeNone
	}
	return d
}

// readDurabilityAll is readDurability of the upstream: on a cluster,
// of the weakest primary (the write-back queues live on several), with
// every primary's run_id in RunID, so a restart of any one is seen.
func readDurabilityAll(ctx context.Context, rdb redis.UniversalClient) *Durability {
	cl, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return readDurability(ctx, rdb)
	}
	var mu sync.Mutex
	var all []*Durability
	var addrs []string
	err := cl.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		d := readDurability(ctx, c)
		mu.Lock()
		all, addrs = append(all, d), append(addrs, c.Options().Addr)
		mu.Unlock()
		return nil
	})
	if err != nil || len(all) == 0 {
		return &Durability{MaxMemory: -1, Mode: ModeUnknown, Unreachable: true, Err: fmt.Errorf("upstream Redis Cluster unreachable: %w", err)}
	}
	ids := make([]string, len(all))
	weakest := all[0]
	for i, d := range all {
		ids[i] = addrs[i] + "=" + d.RunID
		if weakness(d) > weakness(weakest) {
			weakest = d
		}
	}
	slices.Sort(ids)
	d := *weakest
	d.RunID = strings.Join(ids, ",")
	return &d
}

// weakness ranks what a node's settings risk for write-back: unreachable,
// then an eviction policy unknown or not safe, then the persistence mode
// from none to AOF always.
func weakness(d *Durability) int {
	switch {
	case d.Unreachable:
		return 100
	case !d.Known:
		return 90
	case !evictionSafe[d.Policy]:
		return 80
	}
	return modeWeakness[d.Mode]
}

// modeWeakness ranks the persistence modes from none (the weakest) up.
var modeWeakness = map[string]int{ModeNone: 9, ModeUnknown: 8, ModeNoAOF: 7, ModeRDB: 6, ModeAOFNo: 5, ModeAOF: 4, ModeAOFEverysec: 3, ModeAOFAlways: 2}

// isReply reports an error Redis answered (NOPERM, unknown command), as
// opposed to one reaching it.
func isReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && err != redis.Nil
}

// infoFields parses INFO's "name:value" lines.
func infoFields(info string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && !strings.HasPrefix(k, "#") {
			out[k] = v
		}
	}
	return out
}

// evaluate sets d.Refusal for write-back writes under opts.
func (d *Durability) evaluate(opts config.Queue) {
	d.Refusal = nil
	switch {
	case d.Unreachable:
		d.Refusal = fmt.Errorf("write-back writes wait for the upstream Redis' eviction and persistence settings to be checked (%v)", d.Err)
	case !d.Known && opts.AllowEvictingPolicy != AllowUnverified:
		d.Refusal = fmt.Errorf("cannot read the upstream Redis' maxmemory-policy (%v), so write-back cannot tell whether Redis may evict its queue: "+
			"let the proxy's Redis user run CONFIG GET or INFO (ACL: +config|get +info), or accept the risk with write_back.allow_evicting_policy: %s", d.Err, AllowUnverified)
	case d.Known && !evictionSafe[d.Policy] && opts.AllowEvictingPolicy != d.Policy:
		d.Refusal = fmt.Errorf("the upstream Redis' maxmemory-policy is %s: Redis may evict the write-back queues (respite:wb:*) and the acknowledged writes in them: "+
			"set maxmemory-policy noeviction or volatile-lru in Redis (CONFIG SET maxmemory-policy noeviction, and in redis.conf), or accept the risk with write_back.allow_evicting_policy: %s",
			d.Policy, d.Policy)
	case opts.RequireAOF && !(d.AOFKnown && d.AOF):
		what := "has AOF off (appendonly no)"
		if !d.AOFKnown {
			what = fmt.Sprintf("does not say whether AOF is on (%v)", d.Err)
		}
		d.Refusal = fmt.Errorf("write_back.require_aof is set and the upstream Redis %s: turn AOF on (CONFIG SET appendonly yes, and appendonly yes in redis.conf), or remove write_back.require_aof", what)
	}
}

// durabilityEvery is how often the guard reads the settings again.
const durabilityEvery = 5 * time.Second

// guard holds the upstream's durability for the routes of one Set.
type guard struct {
	rdb   redis.UniversalClient
	opts  config.Queue
	log   *slog.Logger
	every time.Duration
	wb    bool // the set has write-back routes: refusals and the start-up line matter
	cur   atomic.Pointer[Durability]
	told  bool // the durability line was logged (check runs in Open, then in run only)
}

func newGuard(rdb redis.UniversalClient, opts config.Queue, wb bool, log *slog.Logger) *guard {
	g := &guard{rdb: rdb, opts: opts, log: log, every: durabilityEvery, wb: wb}
	d := &Durability{Mode: ModeUnknown, MaxMemory: -1, Unreachable: true, Err: errors.New("not checked yet")}
	d.evaluate(opts)
	g.cur.Store(d)
	return g
}

// Current returns the last reading.
func (g *guard) Current() *Durability { return g.cur.Load() }

// writeErr is why write-back writes are refused now, nil if they are not.
func (g *guard) writeErr() error {
	if g == nil {
		return nil
	}
	if d := g.cur.Load(); d.Refusal != nil {
		return d.Refusal
	}
	return nil
}

// check reads the settings, stores them and logs what changed since the
// last reading (first: the start-up lines).
func (g *guard) check(ctx context.Context, first bool) *Durability {
	d := readDurabilityAll(ctx, g.rdb)
	d.evaluate(g.opts)
	old := g.cur.Swap(d)
	switch {
	case first && d.Unreachable:
		g.log.Error("upstream Redis unreachable at start-up: the proxy starts, commands get an error until Redis answers, write-back writes are refused until its settings are checked", "err", d.Err)
		return d
	case d.Unreachable:
		return d // Redis down: every command says so; nothing changed that we know
	case !g.told:
		g.told = true
		if d.Err != nil {
			g.log.Warn("some upstream Redis settings cannot be read; what INFO tells is used", "err", d.Err)
		}
		if g.wb {
			level := slog.LevelWarn
			if d.Mode == ModeAOFAlways {
				level = slog.LevelInfo
			}
			g.log.Log(ctx, level, "write-back durability", "persistence", d.Mode, "maxmemory_policy", d.Policy, "meaning", d.Meaning())
			if d.Refusal != nil && !first {
				g.log.Error("write-back writes refused", "reason", d.Refusal)
			}
		}
		return d
	}
	if old.RunID != "" && d.RunID != "" && old.RunID != d.RunID && g.wb {
		what := "upstream Redis restarted"
		if strings.Contains(d.RunID, "=") {
			what = "a primary of the upstream cluster restarted, or another node took its place (failover)"
		}
		g.log.Warn(what, "persistence", d.Mode, "meaning", d.Meaning())
	}
	if !old.Unreachable && old.Mode != d.Mode && g.wb {
		g.log.Warn("upstream persistence changed", "from", old.Mode, "to", d.Mode, "meaning", d.Meaning())
	}
	if g.wb {
		switch {
		case d.Refusal != nil && (old.Refusal == nil || old.Refusal.Error() != d.Refusal.Error()):
			g.log.Error("write-back writes refused", "reason", d.Refusal)
		case d.Refusal == nil && old.Refusal != nil:
			g.log.Info("write-back writes accepted: the upstream's settings are checked", "persistence", d.Mode, "maxmemory_policy", d.Policy)
		}
	}
	return d
}

// run checks again every g.every (every second while Redis is
// unreachable) until ctx ends.
func (g *guard) run(ctx context.Context) {
	for {
		wait := g.every
		if g.cur.Load().Unreachable {
			wait = min(wait, time.Second)
		}
		sleepCtx(ctx, wait)
		if ctx.Err() != nil {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		g.check(cctx, false)
		cancel()
	}
}
