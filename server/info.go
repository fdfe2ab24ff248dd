package server

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/respite/respite/policy"
	"github.com/respite/respite/resp"
	"github.com/respite/respite/router"
	"github.com/respite/respite/upstream"
)

// info answers INFO: the upstream's reply with a "# Respite" section
// appended (for INFO, INFO default, all or everything), or only that
// section for INFO respite. Redis answers on the connection the session's
// commands use (its own, when pinned).
func (c *session) info(set *policy.Set, cmd *router.Command) {
	args := cmd.Args
	want := "default"
	if len(args) == 2 {
		want = strings.ToLower(string(args[1]))
	}
	if want == "respite" {
		c.send(resp.AppendBulk(nil, c.s.infoSection(set)))
		return
	}
	if len(args) > 2 || (want != "default" && want != "all" && want != "everything") {
		c.forwardOwn(args)
		return
	}
	var raw []byte
	if c.pin != nil {
		var err error
		if raw, err = c.roundTrip(args); err != nil {
			c.pinLost(err)
			return
		}
	} else {
		cl := upstream.NewCall()
		cl.Add(args)
		c.s.up.Shared(c.proto).Do(cl, uint32(c.id))
		if cl.Err != nil {
			c.s.counts.upErrors.Add(1)
			c.sendError(upstreamError(cl.Err))
			return
		}
		raw = cl.Reply(0)
	}
	i := strings.IndexByte(string(raw), '\n')
	if i < 0 || (raw[0] != '$' && raw[0] != '=') {
		c.send(raw)
		return
	}
	body := string(raw[i+1 : len(raw)-2])
	body += "\r\n" + c.s.infoSection(set)
	if raw[0] == '=' { // RESP3 verbatim string: "txt:" + text
		c.send([]byte("=" + strconv.Itoa(len(body)) + "\r\n" + body + "\r\n"))
		return
	}
	c.send(resp.AppendBulk(nil, body))
}

// infoSection is the "# Respite" INFO section: totals for the proxy.
func (s *Server) infoSection(set *policy.Set) string {
	var b strings.Builder
	b.WriteString("# Respite\r\n")
	fmt.Fprintf(&b, "respite_clients:%d\r\n", s.counts.clients.Load())
	fmt.Fprintf(&b, "respite_pinned_sessions:%d\r\n", s.counts.pinned.Load())
	fmt.Fprintf(&b, "respite_detached_sessions:%d\r\n", s.counts.detached.Load())
	fmt.Fprintf(&b, "respite_watch_commits:%d\r\n", s.conflicts.Commits.Load())
	fmt.Fprintf(&b, "respite_watch_aborts:%d\r\n", s.conflicts.Aborts.Load())
	fmt.Fprintf(&b, "respite_gate_waits:%d\r\n", s.gate.Waits.Load())
	fmt.Fprintf(&b, "respite_gomaxprocs:%d\r\n", runtime.GOMAXPROCS(0))
	fmt.Fprintf(&b, "respite_routes:%d\r\n", len(set.List()))
	if len(set.List()) > 0 {
		fmt.Fprintf(&b, "respite_routes_degraded:%d\r\n", len(set.Degraded()))
	}
	if d := set.Durability(); d != nil {
		policy := d.Policy
		if policy == "" {
			policy = "unknown"
		}
		fmt.Fprintf(&b, "respite_upstream_persistence:%s\r\n", d.Mode)
		fmt.Fprintf(&b, "respite_upstream_maxmemory_policy:%s\r\n", policy)
		if set.Flusher() != nil {
			fmt.Fprintf(&b, "respite_writeback_writes_refused:%d\r\n", boolInt(d.Refusal != nil))
		}
	}
	for _, r := range set.List() {
		st := &r.Stats
		hits, misses := st.Hits.Load(), st.Misses.Load()
		rate := 0.0
		if hits+misses > 0 {
			rate = float64(hits) / float64(hits+misses)
		}
		fmt.Fprintf(&b, "respite_route_%s:policy=%s,hits=%d,misses=%d,hit_rate=%.4f,db_loads=%d,negative_hits=%d,writes=%d,errors=%d,ready=%d\r\n",
			r.Config().Name, r.Config().Policy, hits, misses, rate, st.Loads.Load(), st.NegativeHits.Load(), st.Writes.Load(), st.Errors.Load(),
			boolInt(r.Unready() == nil))
	}
	return b.String()
}
