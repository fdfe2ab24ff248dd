package policy

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/respite/respite/backend"
)

// Stream entries to backend entries, and stream ids to versions. See
// Versions in the design note at the top of flusher.go.

// toEntry turns a stream entry into a backend.Entry: Key = field k (the
// Redis key, which must have the route's prefix), Value = field v, or nil
// for op=del; Version from the stream id (or from field orig, the original
// id of a replayed dead letter).
func toEntry(m redis.XMessage, prefix string) (backend.Entry, error) {
	k, ok := m.Values["k"].(string)
	if !ok {
		return backend.Entry{}, &entryError{"malformed write-back entry: no field k"}
	}
	if !strings.HasPrefix(k, prefix) {
		return backend.Entry{}, &entryError{fmt.Sprintf("malformed write-back entry: key %q is not under the route's prefix %q", k, prefix)}
	}
	id := m.ID
	if o, ok := m.Values["orig"].(string); ok {
		id = o
	}
	ver, ok := Version(id)
	if !ok {
		return backend.Entry{}, &entryError{fmt.Sprintf("malformed write-back entry: bad id %q", id)}
	}
	e := backend.Entry{Key: k, Version: ver}
	if v, ok := m.Values["v"].(string); ok {
		e.Value = &v
	} else if op, _ := m.Values["op"].(string); op != "del" {
		return backend.Entry{}, &entryError{"malformed write-back entry: neither v nor op=del"}
	}
	return e, nil
}

// Version maps a stream id "ms-seq" to a write-back version, ms<<20 | seq
// (seq capped at 2^20-1), increasing with the id.
func Version(id string) (int64, bool) {
	ms, seq, ok := parseID(id)
	if !ok || ms >= 1<<43 {
		return 0, false
	}
	return ms<<20 | min(seq, 1<<20-1), true
}

func parseID(id string) (ms, seq int64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	ms, err1 := strconv.ParseInt(a, 10, 64)
	if !found {
		return ms, 0, err1 == nil && ms >= 0
	}
	seq, err2 := strconv.ParseInt(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil && ms >= 0 && seq >= 0
}

// idLess orders stream ids.
func idLess(a, b string) bool {
	am, as, _ := parseID(a)
	bm, bs, _ := parseID(b)
	return am < bm || am == bm && as < bs
}
