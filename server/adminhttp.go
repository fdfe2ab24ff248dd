package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/respite/respite/internal/admin"
	"github.com/respite/respite/policy"
)

// startAdmin serves /metrics, /healthz and /readyz on l, New's listener
// on cfg.Admin.
func (s *Server) startAdmin(l net.Listener) {
	s.metrics = admin.NewMetrics(s)
	s.adminSrv = &http.Server{Handler: admin.Handler(s.metrics, s), ReadHeaderTimeout: 5 * time.Second}
	s.adminAddr = l.Addr().String()
	go s.adminSrv.Serve(l)
}

// AdminListenError is New's error when the admin listener (cfg.Admin)
// did not open: Err is net.Listen's.
type AdminListenError struct{ Err error }

func (e *AdminListenError) Error() string { return "admin listener: " + e.Err.Error() }
func (e *AdminListenError) Unwrap() error { return e.Err }

// AdminAddr is the admin listener's address ("" when it is off).
func (s *Server) AdminAddr() string { return s.adminAddr }

// Snapshot reports the proxy's counters (admin.Source).
func (s *Server) Snapshot() admin.Snapshot {
	snap := admin.Snapshot{
		Clients:           s.counts.clients.Load(),
		PinnedTransaction: s.counts.pinnedTx.Load(),
		PinnedPubSub:      s.counts.detached.Load(),
		PinnedBlocking:    s.counts.blocked.Load(),
		UpstreamErrors:    s.counts.upErrors.Load(),
		WatchAborts:       s.conflicts.Aborts.Load(),
		WatchCommits:      s.conflicts.Commits.Load(),
		GateWaits:         s.gate.Waits.Load(),
		ClosedOutputLimit: s.counts.outputLimit.Load(),
		ClosedQueryLimit:  s.counts.queryLimit.Load(),
		ClosedIdle:        s.counts.idleClosed.Load(),
	}
	snap.PinnedOther = max(0, s.counts.pinned.Load()-snap.PinnedTransaction-snap.PinnedBlocking)
	if cl := s.up.Cluster(); cl != nil {
		st := cl.Stats()
		snap.TopologyRefreshes, snap.Moved, snap.Asked, snap.TryAgain = st.Refreshes, st.Moved, st.Asked, st.TryAgain
	}
	open, idle := s.up.Pinned()
	sh := s.up.Redis().PoolStats()
	snap.UpstreamPool = admin.PoolStats{Total: open + int64(sh.TotalConns), Idle: idle + int64(sh.IdleConns)}
	set := s.routes.Load()
	snap.PostgresPool.Total, snap.PostgresPool.Idle = set.PoolStats()
	if f := set.Flusher(); f != nil {
		st := &f.Stats
		snap.FlushStatements, snap.FlushErrors, snap.FlushCoalesced = st.Statements.Load(), st.Errors.Load(), st.Coalesced.Load()
	}
	for _, r := range set.List() {
		st := &r.Stats
		snap.Routes = append(snap.Routes, admin.RouteStats{
			Name: r.Config().Name, Policy: string(r.Config().Policy),
			Hits: st.Hits.Load(), Misses: st.Misses.Load(), NegativeHits: st.NegativeHits.Load(),
			LocalHits: st.LocalHits.Load(), Loads: st.Loads.Load(), Coalesced: st.Coalesced.Load(),
			EarlyRefreshes: st.EarlyRefreshes.Load(), Degraded: st.Degraded.Load(),
			Writes: st.Writes.Load(), Errors: st.Errors.Load(),
			VerifyChecked: st.VerifyChecked.Load(), VerifyDivergent: st.VerifyDivergent.Load(), VerifyRepaired: st.VerifyRepaired.Load(),
			FillsRefused: st.FillsRefused.Load(), Invalidations: st.Invalidations.Load(), LocalPurges: st.LocalPurges.Load(),
			NoReplicas: st.NoReplicas.Load(),
		})
	}
	if c := set.Capture(); c != nil {
		snap.Invalidation = admin.InvalidationStats{Leader: c.Leader.Load(), Stale: c.Stale.Load(), LagBytes: c.LagBytes.Load(),
			Transactions: c.Txns.Load(), Flushes: c.Flushes.Load(), Skipped: c.Skipped.Load(), Errors: c.Errors.Load()}
	}
	if f := set.Flusher(); f != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, q := range f.Queues(ctx) {
			snap.Queues = append(snap.Queues, queueStats(q))
		}
	}
	snap.RoutesDegraded = int64(len(set.Degraded()))
	if d := set.Durability(); d != nil {
		snap.Persistence, snap.MaxMemoryPolicy = d.Mode, d.Policy
		if snap.MaxMemoryPolicy == "" {
			snap.MaxMemoryPolicy = "unknown"
		}
		snap.WritebackRefused = d.Refusal != nil && set.Flusher() != nil
	}
	return snap
}

func queueStats(q policy.QueueStats) admin.QueueStats {
	return admin.QueueStats{Route: q.Route, Length: q.Length, OldestAgeSeconds: q.OldestAge.Seconds(),
		InFlight: q.InFlight, DeadLetters: q.DeadLetters, Lost: q.Lost}
}

// Ready reports whether the upstream Redis and PostgreSQL answer and
// every route is served (a degraded route is named with its reason).
func (s *Server) Ready(ctx context.Context) error {
	var errs []error
	if err := s.up.Redis().Ping(ctx).Err(); err != nil {
		errs = append(errs, errors.New("upstream redis: "+err.Error()))
	}
	set := s.routes.Load()
	if len(set.Degraded()) > 0 {
		errs = append(errs, set.Ready(ctx)) // names each degraded route and why
	} else if err := set.Ready(ctx); err != nil {
		msg := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			msg = "no answer within the readiness check's deadline (PostgreSQL hung or overloaded)"
		}
		if !strings.HasPrefix(msg, "postgres:") {
			msg = "postgres: " + msg
		}
		errs = append(errs, errors.New(msg))
	}
	return errors.Join(errs...)
}

// observe records a command class's latency when metrics are on.
func (c *session) observe(class string, start time.Time) {
	c.s.metrics.ObserveCommand(class, time.Since(start))
}
