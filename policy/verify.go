package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/internal/config"
)

// RESPITE VERIFY route [count] [REPAIR]: after an incident, does the cache
// agree with PostgreSQL? Verify samples up to count cached rows of a
// route (SCAN over the route's prefix, the keys of its current cache
// version only), reads each cached copy and its row, and reports the
// copies that differ: the value, JSON object (compared as JSON) or hash
// fields differ, the row is gone, or the copy has another Redis type.
// A difference is read twice, so that a write caught between the two
// reads is not reported.
//
// REPAIR deletes each divergent copy, only if it is still the copy that
// was compared (DUMP before and inside the deleting script), so a write
// that came in meanwhile is never undone; the next read loads the row.
// On write-back routes the cache is ahead of PostgreSQL until the queue is
// flushed: Verify refuses while the route's queue holds entries (RESPITE
// FLUSH first), and the repair script checks again that it is empty.
//
// Negative-cache markers are not sampled. Counted in the route's Stats
// (respite_route_verify_*_total).

// Divergence is one cached copy that disagrees with its row.
type Divergence struct {
	Key      string // the client's key
	Reason   string
	Repaired bool
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Route                        string
	Checked, Divergent, Repaired int
	Divergences                  []Divergence
}

// verifyRepair deletes KEYS[1] if DUMP still gives ARGV[1] and, when
// KEYS[2] (a write-back stream) is given, the queue is empty: 1 deleted,
// 0 changed meanwhile, -1 writes queued.
var verifyRepair = redis.NewScript(`
if #KEYS > 1 and redis.call('XLEN', KEYS[2]) > 0 then return -1 end
if redis.call('DUMP', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])`)

// Verify checks up to count cached rows of route name, repairing the
// divergent ones with repair.
func (s *Set) Verify(ctx context.Context, name string, count int, repair bool) (VerifyReport, error) {
	ri := -1
	for i, r := range s.list {
		if r.cfg.Name == name {
			ri = i
		}
	}
	if ri < 0 {
		return VerifyReport{}, fmt.Errorf("no route named '%s'", name)
	}
	r := s.list[ri]
	if err := r.Unready(); err != nil {
		return VerifyReport{}, err
	}
	rep := VerifyReport{Route: name}
	var stream []string
	if r.queued {
		stream = []string{StreamKey(r.rkey())}
		n, err := r.rdb.XLen(ctx, stream[0]).Result()
		if err != nil {
			return rep, err
		}
		if n > 0 {
			return rep, fmt.Errorf("write-back route '%s' has %d queued writes PostgreSQL does not have yet: RESPITE FLUSH, then VERIFY", name, n)
		}
	}
	keys, err := s.sample(ctx, ri, count)
	if err != nil {
		return rep, err
	}
	for _, key := range keys {
		reason, dump, err := r.compare(ctx, key)
		if err == nil && reason != "" {
			// Again: a write between the two reads is not a divergence.
			reason, dump, err = r.compare(ctx, key)
		}
		if err != nil {
			return rep, err
		}
		rep.Checked++
		r.Stats.VerifyChecked.Add(1)
		if reason == "" {
			continue
		}
		rep.Divergent++
		r.Stats.VerifyDivergent.Add(1)
		d := Divergence{Key: r.cfg.Prefix + r.id(key), Reason: reason}
		if repair {
			n, err := verifyRepair.Run(ctx, r.rdb, append([]string{key}, stream...), dump).Int()
			if err != nil {
				return rep, err
			}
			if n == 1 {
				d.Repaired = true
				rep.Repaired++
				r.Stats.VerifyRepaired.Add(1)
				r.invalidated(key)
			}
		}
		rep.Divergences = append(rep.Divergences, d)
	}
	if rep.Divergent > 0 {
		r.log.Warn("RESPITE VERIFY found cached rows that disagree with PostgreSQL", "checked", rep.Checked, "divergent", rep.Divergent, "repaired", rep.Repaired)
	}
	return rep, nil
}

// sample returns up to count cached keys of route ri (its current cache
// version, canonical keys only, not those of a route with a longer
// prefix).
func (s *Set) sample(ctx context.Context, ri, count int) ([]string, error) {
	r := s.list[ri]
	pattern := globEscape(r.cfg.Prefix) + globEscape(r.slotTag)
	if v := r.cfg.CacheVersion; v > 0 {
		pattern += globEscape(versionTag(v))
	}
	pattern += "*"
	rdb, err := r.node(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	var cursor uint64
	for len(out) < count {
		keys, next, err := rdb.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if len(out) == count {
				break
			}
			rest := strings.TrimPrefix(k[len(r.cfg.Prefix):], r.slotTag)
			if r.cfg.CacheVersion == 0 && strings.HasPrefix(rest, versionMark) {
				continue // an older version's copy
			}
			if s.routes.MatchString(k) != ri || !r.canonical(k) {
				continue
			}
			out = append(out, k)
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	return out, nil
}

// compare reads key's cached copy (with its DUMP) and its row: reason is
// "" when they agree, "" and no dump when the copy is gone.
func (r *Route) compare(ctx context.Context, key string) (reason, dump string, err error) {
	p := r.rdb.Pipeline()
	typ := p.Type(ctx, key)
	dumpCmd := p.Dump(ctx, key)
	var str *redis.StringCmd
	var hash *redis.MapStringStringCmd
	if r.cfg.Format == config.FormatHash {
		hash = p.HGetAll(ctx, key)
	} else {
		str = p.Get(ctx, key)
	}
	p.Exec(ctx)
	t, err := typ.Result()
	if err != nil {
		return "", "", err
	}
	if t == "none" {
		return "", "", nil // expired or deleted since the scan
	}
	dump, err = dumpCmd.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", "", err
	}
	want := "string"
	if r.cfg.Format == config.FormatHash {
		want = "hash"
	}
	if t != want {
		return fmt.Sprintf("cached as a %s, the route's format is a %s", t, want), dump, nil
	}
	rw, err := r.loadRow(ctx, r.db.Pool(), key)
	if err != nil {
		return "", "", err
	}
	if !rw.found {
		return "cached, but PostgreSQL has no such row", dump, nil
	}
	switch r.cfg.Format {
	case config.FormatHash:
		cached, err := hash.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return "", "", err
		}
		row := make(map[string]string, len(rw.fields))
		for _, f := range rw.fields {
			row[f.Name] = f.Value
		}
		if !reflect.DeepEqual(cached, row) {
			return fmt.Sprintf("hash fields differ: cached %v, PostgreSQL %v", cached, row), dump, nil
		}
	case config.FormatJSON:
		cached, err := str.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return "", "", err
		}
		if !sameJSON([]byte(cached), rw.json) {
			return fmt.Sprintf("cached %s, PostgreSQL %s", cached, rw.json), dump, nil
		}
	default:
		cached, err := str.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return "", "", err
		}
		if cached != rw.value {
			return fmt.Sprintf("cached %q, PostgreSQL %q", cached, rw.value), dump, nil
		}
	}
	return "", dump, nil
}

// sameJSON reports whether a and b are the same JSON value (numbers
// compared as written).
func sameJSON(a, b []byte) bool {
	var va, vb any
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	if da.Decode(&va) != nil || db.Decode(&vb) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(va, vb)
}
