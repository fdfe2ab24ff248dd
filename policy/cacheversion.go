package policy

import (
	"strconv"
	"strings"

	"github.com/respite/respite/router"
)

// Cache versions (cache_version: N, cache-aside and write-through routes):
// the cached copy of a row of a route at version N > 0 lives under the
// Redis key prefix + "\x00vN\x00" + the rest, not under the client's key,
// so bumping N makes every row of the route miss at once, without a
// FLUSH, and the copies of the old version expire with their TTL. No row
// id contains a NUL byte (PostgreSQL text cannot hold one), so a tagged
// key never names another row's copy of an older version. The tag goes in
// once, where a command enters the route layer (Set.Do, Set.Queue,
// Set.Ensure: the session then WATCHes and queues the tagged keys on its
// pinned connection too); Route.id takes it out again. A client's key
// that carries a tag itself ("user:\x00v1\x0031", at any version) is not
// canonical: it would name an old version's copy, or a second copy of the
// row; it is tagged like any other, and Route.canonical refuses it.

// versionMark starts a version tag in the part of a key after the prefix.
const versionMark = "\x00v"

// versionTag is the tag of version v.
func versionTag(v int) string { return versionMark + strconv.Itoa(v) + "\x00" }

// cacheKey is the Redis key of the cached copy of key (a client's key of
// r): key itself at version 0. A key the client tagged is tagged again,
// so that Route.id gives back what the client wrote.
func (r *Route) cacheKey(key []byte) []byte {
	v := r.cfg.CacheVersion
	if v <= 0 && r.slotTag == "" {
		return key
	}
	rest := key[len(r.cfg.Prefix):]
	out := make([]byte, 0, len(key)+len(r.slotTag)+8)
	out = append(out, r.cfg.Prefix...)
	out = append(out, r.slotTag...) // on a cluster (clusterkeys.go)
	if v > 0 {
		out = append(out, versionTag(v)...)
	}
	return append(out, rest...)
}

// rewritten reports whether r's keys are rewritten by cacheKey.
func (r *Route) rewritten() bool { return r.cfg.CacheVersion > 0 || r.slotTag != "" }

// untag is the part of a key after the prefix without its (first)
// version tag.
func untag(rest string) string {
	if strings.HasPrefix(rest, versionMark) {
		if i := strings.IndexByte(rest[len(versionMark):], 0); i >= 0 {
			return rest[len(versionMark)+i+1:]
		}
	}
	return rest
}

// versioned rewrites, in place, every key of cmd that belongs to a route
// with a cache version to its cache key.
func (s *Set) versioned(cmd *router.Command) {
	for i, k := range cmd.Keys {
		if ri := cmd.KeyRoute[i]; ri >= 0 && int(ri) < len(s.list) {
			if r := s.list[ri]; r.rewritten() {
				cmd.Args[k] = r.cacheKey(cmd.Args[k])
			}
		}
	}
}

// canonical reports whether key (a key of r as versioned left it) names a
// row in its canonical form: not tagged by the client, and
// Table.CanonicalKey.
func (r *Route) canonical(key string) bool {
	id := r.id(key)
	return !strings.HasPrefix(id, versionMark) && r.table.CanonicalKey(id)
}

// clientUntag is id without the version tags a client wrote in it.
func clientUntag(id string) string {
	for strings.HasPrefix(id, versionMark) {
		next := untag(id)
		if next == id {
			break
		}
		id = next
	}
	return id
}
