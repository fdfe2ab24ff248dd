package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/respite/respite/resp"
)

// Invalidations receives what Redis' client-side caching reports on the
// tracking connection (Track): the route layer's in-process tiers.
type Invalidations interface {
	// Invalidate: keys were written in Redis (by anyone).
	Invalidate(keys []string)
	// Purge: every key may have changed (FLUSHALL, FLUSHDB, or the
	// tracking connection lost: pushes may have been missed).
	Purge()
	// Tracking tells whether tracking is in place: quiet, when not nil,
	// reports whether the connection is still open with no push waiting
	// to be read (a local copy may be served); nil: tracking is not in
	// place, nothing local may be served or stored.
	Tracking(quiet func() bool)
}

// Track keeps one dedicated RESP3 connection to the upstream (never a
// multiplexed one: its pushes would interleave with replies) with CLIENT
// TRACKING ON BCAST PREFIX ... for prefixes, and hands every invalidation
// push to h until ctx ends. Prefixes that another one covers are dropped
// (Redis refuses overlapping prefixes; the shorter one reports the longer
// one's keys too). When the connection is lost, h is told at once
// (Tracking(nil), Purge) and Track reconnects with backoff; once
// tracking is on again, h.Purge then h.Tracking(quiet): what was cached
// before may have changed unseen. quiet peeks at the connection's socket
// without waiting: Redis closes a killed connection (CLIENT KILL) before
// it answers the killer, and writes a push before it answers the writer,
// so a local copy served while quiet says yes is not older than any
// write the client saw acknowledged. In upstream.mode sentinel the
// connection is to the primary the sentinels name, and a failover
// closes it (a loss as above) so that tracking moves to the new primary.
func (u *Upstream) Track(ctx context.Context, prefixes []string, h Invalidations) {
	prefixes = disjointPrefixes(prefixes)
	if len(prefixes) == 0 {
		return
	}
	wait := 50 * time.Millisecond
	for ctx.Err() == nil {
		if on, _ := u.track(ctx, prefixes, h); on {
			wait = 50 * time.Millisecond // it worked: a new loss starts over
		}
		h.Tracking(nil)
		h.Purge()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		wait = min(2*wait, 2*time.Second)
	}
}

// TrackingClientName is CLIENT SETNAME of the tracking connection, so an
// operator can tell it in CLIENT LIST.
const TrackingClientName = "respite-tracking"

// track runs one tracking connection until it fails or ctx ends; on
// says whether tracking was in place.
func (u *Upstream) track(ctx context.Context, prefixes []string, h Invalidations) (on bool, err error) {
	// The primary, as every other connection dials it: in mode sentinel
	// the one the sentinels name (upstream.addr is not used there).
	cfg, ok := u.primaryConfig()
	if !ok {
		u.sentinel.lost()
		return false, errNoPrimary
	}
	nc, hbr, _, err := dial(cfg, u.tls, 3, u.cfg.Username, u.cfg.Password)
	if err != nil {
		if u.sentinel != nil {
			u.sentinel.lost()
		}
		return on, err
	}
	defer nc.Close()
	if u.sentinel != nil {
		// Closed when Sentinel names another primary: writes go there
		// from then on, and this connection would never hear of them.
		if !u.sentinel.follow(nc, cfg.Addr) {
			return false, errSwitched
		}
		defer u.sentinel.unfollow(nc)
	}
	if hbr.Buffered() > 0 {
		return false, errors.New("upstream handshake: unexpected bytes after HELLO")
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	cr := &countingReader{r: nc}
	br := bufio.NewReaderSize(cr, 64<<10)
	cmd := strArgs("CLIENT", "TRACKING", "ON", "BCAST")
	for _, p := range prefixes {
		cmd = append(cmd, []byte("PREFIX"), []byte(p))
	}
	req := resp.AppendCommand(nil, strArgs("CLIENT", "SETNAME", TrackingClientName))
	req = resp.AppendCommand(req, cmd)
	nc.SetDeadline(time.Now().Add(u.timeout))
	if _, err := nc.Write(req); err != nil {
		return on, err
	}
	for range 2 {
		reply, err := resp.AppendReply(nil, br)
		if err != nil {
			return on, err
		}
		if string(reply) != "+OK\r\n" {
			return false, errors.New("upstream CLIENT TRACKING: " + oneLine(reply))
		}
	}
	nc.SetDeadline(time.Time{})
	var consumed atomic.Int64 // bytes read and applied
	consumed.Store(cr.n.Load() - int64(br.Buffered()))
	peek := peekQuiet(nc)
	quiet := func() bool {
		// Read, then peek, then read again: a push on its way from the
		// kernel to the reader shows in one of them (but for the
		// instant between the read syscall and its count).
		n := cr.n.Load()
		return consumed.Load() == n && peek() && cr.n.Load() == n
	}
	h.Purge()
	h.Tracking(quiet)
	on = true
	var buf []byte
	for {
		buf, err = resp.AppendReply(buf[:0], br)
		if err != nil {
			return on, err
		}
		if keys, all, ok := invalidation(buf); ok {
			if all {
				h.Purge()
			} else {
				h.Invalidate(keys)
			}
		}
		consumed.Store(cr.n.Load() - int64(br.Buffered()))
	}
}

// countingReader counts the bytes read from r.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// invalidation parses a RESP3 push ">2 invalidate <keys>": the keys, or
// all for a null (FLUSHALL, FLUSHDB).
func invalidation(b []byte) (keys []string, all, ok bool) {
	if len(b) == 0 || b[0] != '>' {
		return nil, false, false
	}
	elems, ok := resp.Elements(b)
	if !ok || len(elems) != 2 || !bytes.Equal(elems[0], []byte("$10\r\ninvalidate\r\n")) {
		return nil, false, false
	}
	if elems[1][0] == '_' || string(elems[1]) == "*-1\r\n" {
		return nil, true, true
	}
	list, ok := resp.Elements(elems[1])
	if !ok {
		return nil, false, false
	}
	for _, k := range list {
		if s, ok := bulkText(k); ok {
			keys = append(keys, s)
		}
	}
	return keys, false, true
}

// bulkText is the string inside a raw bulk reply.
func bulkText(b []byte) (string, bool) {
	if len(b) < 4 || b[0] != '$' {
		return "", false
	}
	i := bytes.IndexByte(b, '\r')
	n, err := strconv.Atoi(string(b[1:i]))
	if err != nil || n < 0 || i+2+n+2 != len(b) {
		return "", false
	}
	return string(b[i+2 : i+2+n]), true
}

// disjointPrefixes drops every prefix another one starts (and
// duplicates): Redis refuses prefixes that overlap.
func disjointPrefixes(prefixes []string) []string {
	s := slices.Clone(prefixes)
	slices.Sort(s)
	s = slices.Compact(s)
	var out []string
	for _, p := range s {
		if len(out) > 0 && strings.HasPrefix(p, out[len(out)-1]) {
			continue
		}
		out = append(out, p)
	}
	return out
}
