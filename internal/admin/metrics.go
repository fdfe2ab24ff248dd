// Package admin is Respite's HTTP admin listener: the
// Prometheus metrics at /metrics, liveness at /healthz and readiness at
// /readyz.
//
// The proxy's counters live where the work happens (sessions, routes, the
// write-back flusher). Instead of mirroring each of them into a Prometheus
// counter on the hot path, the server implements Source, and Metrics reads
// one Snapshot per scrape and reports it as constant metrics. Only command
// latency, which needs a histogram, is observed as it happens
// (ObserveCommand).
package admin

import (
	"context"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Snapshot is what the proxy reports; the server fills it on every scrape.
// Counters (Hits, UpstreamErrors, WatchAborts, ...) only grow while the
// process runs; the others are current values.
type Snapshot struct {
	// Clients is the number of connected clients; Pinned* count the
	// clients holding a pinned upstream connection, by what pinned them
	// (WATCH/MULTI, SUBSCRIBE, a blocking command, anything else such as
	// SELECT, MONITOR or CLIENT TRACKING).
	Clients, PinnedTransaction, PinnedPubSub, PinnedBlocking, PinnedOther int64
	// UpstreamErrors counts commands that failed because the upstream
	// Redis could not be reached.
	UpstreamErrors int64
	Routes         []RouteStats
	// Queues are the write-back queues, one per write-back route.
	Queues []QueueStats
	// WatchAborts and WatchCommits count EXECs of watched transactions
	// that aborted (nil reply) and that committed; GateWaits counts WATCH
	// sessions the contention gate made wait for their turn.
	WatchAborts, WatchCommits, GateWaits int64
	// UpstreamPool is the go-redis pool for pinned sessions, fills and
	// scripts; PostgresPool the pgx pool for loads and direct writes.
	UpstreamPool, PostgresPool PoolStats
	// Flush counts the write-back flusher's statements, failed statements
	// and the entries coalescing saved from being written.
	FlushStatements, FlushErrors, FlushCoalesced int64
	// RoutesDegraded counts the routes that cannot serve yet (PostgreSQL
	// unreachable at start-up, or their table not usable).
	RoutesDegraded int64
	// Persistence is the upstream Redis' persistence mode (one of
	// PersistenceModes), MaxMemoryPolicy its maxmemory-policy ("unknown"
	// when it cannot be read); both "" without routes.
	Persistence, MaxMemoryPolicy string
	// WritebackRefused: write-back writes are refused because of the
	// upstream's settings (or while they are not checked yet).
	WritebackRefused bool
	// Clients closed for passing limits.max_output_bytes, for the total
	// query buffer (limits.max_query_bytes_total), and for being idle
	// longer than limits.client_timeout.
	ClosedOutputLimit, ClosedQueryLimit, ClosedIdle int64
	// Cluster: the upstream is a Redis Cluster; TopologyRefreshes counts
	// the slot maps read, Moved, Asked and TryAgain the -MOVED, -ASK and
	// -TRYAGAIN replies the proxy followed for clients.
	Cluster                                   bool
	TopologyRefreshes, Moved, Asked, TryAgain int64
	// Invalidation is the change capture's state (postgres.invalidation);
	// zero when it is off.
	Invalidation InvalidationStats
}

// InvalidationStats describe the change capture (policy.CaptureStats).
type InvalidationStats struct {
	Leader, Stale                  bool  // this instance consumes the stream; reads of tracked routes go to PostgreSQL
	LagBytes                       int64 // the slot's WAL behind the server (leader only)
	Transactions, Flushes, Skipped int64
	Errors                         int64
}

// PersistenceModes are the values of respite_upstream_persistence's mode
// label (policy.PersistenceModes).
var PersistenceModes = []string{"aof-always", "aof-everysec", "aof-no", "aof", "rdb", "none", "no-aof", "unknown"}

// PoolStats are a connection pool's current connections.
type PoolStats struct{ Total, Idle int64 }

// RouteStats are one route's counters (policy.Stats). Policy is for the
// server's own use: every route metric has the route label only.
type RouteStats struct {
	Name, Policy                                            string
	Hits, Misses, NegativeHits, LocalHits, Loads, Coalesced int64
	EarlyRefreshes, Degraded, Writes, Errors                int64
	// RESPITE VERIFY: cached rows compared with PostgreSQL, found to
	// differ, deleted by REPAIR.
	VerifyChecked, VerifyDivergent, VerifyRepaired int64
	FillsRefused, Invalidations, LocalPurges       int64
	// NoReplicas counts write-back writes answered -NOREPLICAS
	// (write_back.min_replicas not reached within replica_timeout).
	NoReplicas int64
}

// QueueStats describe one write-back route's durable queue
// (policy.Flusher.Queues).
type QueueStats struct {
	Route            string
	Length           int64   // entries in the queue (the route's Redis Stream)
	OldestAgeSeconds float64 // age of the oldest entry: the sync lag
	InFlight         int64   // entries read by a flusher and not yet acknowledged
	DeadLetters      int64   // entries in the dead-letter queue
	Lost             int64   // times this instance found the queue lost (its stream or group gone)
}

// Source is the running proxy as the admin listener sees it.
type Source interface {
	// Snapshot returns the current counters; it is called on every scrape.
	Snapshot() Snapshot
	// Ready reports whether the upstream Redis and PostgreSQL are
	// reachable (nil) or why not.
	Ready(ctx context.Context) error
}

// Command classes for ObserveCommand.
const (
	ClassPassthrough = "passthrough"  // unrouted commands on the shared connections
	ClassPinned      = "pinned"       // commands on a pinned connection (transactions, pub/sub, blocking, ...)
	ClassRoutedRead  = "routed_read"  // reads of routed keys
	ClassRoutedWrite = "routed_write" // writes of routed keys
	ClassLocal       = "local"        // answered by the proxy itself (HELLO, AUTH, CLIENT SETNAME, RESPITE ...)
)

// Classes lists the command classes ObserveCommand knows.
var Classes = []string{ClassPassthrough, ClassPinned, ClassRoutedRead, ClassRoutedWrite, ClassLocal}

// Metric names. Counters end in _total.
const (
	MetricClients              = "respite_clients"
	MetricPinnedSessions       = "respite_pinned_sessions"
	MetricUpstreamErrors       = "respite_upstream_errors_total"
	MetricRouteHits            = "respite_route_hits_total"
	MetricRouteMisses          = "respite_route_misses_total"
	MetricRouteNegativeHits    = "respite_route_negative_hits_total"
	MetricRouteLocalHits       = "respite_route_local_hits_total"
	MetricRouteDBLoads         = "respite_route_db_loads_total"
	MetricRouteCoalesced       = "respite_route_coalesced_total"
	MetricRouteEarlyRefreshes  = "respite_route_early_refreshes_total"
	MetricRouteDegradedReads   = "respite_route_degraded_reads_total"
	MetricRouteWrites          = "respite_route_writes_total"
	MetricRouteErrors          = "respite_route_errors_total"
	MetricRouteVerifyChecked   = "respite_route_verify_checked_total"
	MetricRouteVerifyDivergent = "respite_route_verify_divergences_total"
	MetricRouteVerifyRepaired  = "respite_route_verify_repaired_total"
	MetricRouteFillsRefused    = "respite_route_fills_refused_total"
	MetricRouteInvalidations   = "respite_route_invalidations_total"
	MetricRouteLocalPurges     = "respite_route_local_purges_total"
	MetricRouteNoReplicas      = "respite_route_noreplicas_total"
	MetricWritebackQueueLength = "respite_writeback_queue_length"
	MetricWritebackOldest      = "respite_writeback_oldest_pending_seconds"
	MetricWritebackInFlight    = "respite_writeback_in_flight"
	MetricWritebackDeadLetters = "respite_writeback_dead_letters"
	MetricWatchAborts          = "respite_watch_aborts_total"
	MetricWatchCommits         = "respite_watch_commits_total"
	MetricGateWaits            = "respite_gate_waits_total"
	MetricCommandDuration      = "respite_command_duration_seconds"
	MetricUpstreamPool         = "respite_upstream_pool_connections"
	MetricPostgresPool         = "respite_postgres_pool_connections"
	MetricFlushStatements      = "respite_writeback_statements_total"
	MetricFlushErrors          = "respite_writeback_flush_errors_total"
	MetricFlushCoalesced       = "respite_writeback_coalesced_total"
	MetricWritebackQueueLost   = "respite_writeback_queue_lost_total"
	MetricWritebackRefused     = "respite_writeback_writes_refused"
	MetricRoutesDegraded       = "respite_routes_degraded"
	MetricUpstreamPersistence  = "respite_upstream_persistence"
	MetricUpstreamEviction     = "respite_upstream_maxmemory_policy"
	MetricClientsClosed        = "respite_clients_closed_total"
	MetricInvalidationLag      = "respite_invalidation_slot_lag_bytes"
	MetricInvalidationLeader   = "respite_invalidation_leader"
	MetricInvalidationStale    = "respite_invalidation_stale"
	MetricInvalidationTxns     = "respite_invalidation_transactions_total"
	MetricInvalidationFlushes  = "respite_invalidation_route_flushes_total"
	MetricInvalidationSkipped  = "respite_invalidation_own_writes_skipped_total"
	MetricInvalidationErrors   = "respite_invalidation_errors_total"
	MetricTopologyRefreshes    = "respite_cluster_topology_refreshes_total"
	MetricClusterRedirects     = "respite_cluster_redirects_total"
)

// MetricNames returns the name of every metric Respite exports (without
// the Go and process collectors' go_* and process_* metrics), sorted.
// Histograms are listed by their base name; Prometheus also exposes
// NAME_bucket, NAME_sum and NAME_count.
func MetricNames() []string {
	names := []string{MetricCommandDuration}
	for _, d := range descs {
		names = append(names, d.name)
	}
	slices.Sort(names)
	return names
}

// desc is one snapshot metric: its name, help, type and label.
type desc struct {
	name, help string
	kind       prometheus.ValueType
	label      string // "" for none
}

// The order of descs is the order of the fields read in collect.
var descs = []desc{
	{MetricClients, "Connected clients.", prometheus.GaugeValue, ""},
	{MetricPinnedSessions, "Clients holding a pinned upstream connection, by what pinned them (transaction, pubsub, blocking, other).", prometheus.GaugeValue, "kind"},
	{MetricUpstreamErrors, "Commands that failed because the upstream Redis was unreachable.", prometheus.CounterValue, ""},
	{MetricRouteHits, "Reads of routed keys answered from the cache (Redis or the in-process tier).", prometheus.CounterValue, "route"},
	{MetricRouteMisses, "Reads of routed keys that found nothing cached and went to PostgreSQL (or waited for a load).", prometheus.CounterValue, "route"},
	{MetricRouteNegativeHits, "Reads answered \"no such row\" from the negative cache, without PostgreSQL.", prometheus.CounterValue, "route"},
	{MetricRouteLocalHits, "Hits answered by the in-process tier (also counted in hits).", prometheus.CounterValue, "route"},
	{MetricRouteDBLoads, "Rows loaded from PostgreSQL (misses, early refreshes, degraded reads).", prometheus.CounterValue, "route"},
	{MetricRouteCoalesced, "Misses that waited for another client's load of the same key instead of querying PostgreSQL.", prometheus.CounterValue, "route"},
	{MetricRouteEarlyRefreshes, "Background reloads of hot keys shortly before they expire (XFetch).", prometheus.CounterValue, "route"},
	{MetricRouteDegradedReads, "Reads served from PostgreSQL because the upstream Redis was unreachable.", prometheus.CounterValue, "route"},
	{MetricRouteWrites, "Write commands on routed keys.", prometheus.CounterValue, "route"},
	{MetricRouteErrors, "Commands on routed keys answered with an error (bad key or value, constraint violation, PostgreSQL or Redis down).", prometheus.CounterValue, "route"},
	{MetricRouteVerifyChecked, "Cached rows RESPITE VERIFY compared with their PostgreSQL row.", prometheus.CounterValue, "route"},
	{MetricRouteVerifyDivergent, "Cached rows RESPITE VERIFY found to disagree with PostgreSQL.", prometheus.CounterValue, "route"},
	{MetricRouteVerifyRepaired, "Divergent cached rows RESPITE VERIFY ... REPAIR deleted (the next read loads the row).", prometheus.CounterValue, "route"},
	{MetricRouteFillsRefused, "Cache fills refused because an invalidation from PostgreSQL's change stream took their lease after their read began (postgres.invalidation).", prometheus.CounterValue, "route"},
	{MetricRouteInvalidations, "Keys invalidated by change capture (writes that bypassed the proxy), counted by the instance that applied them.", prometheus.CounterValue, "route"},
	{MetricRouteLocalPurges, "Times the route's in-process tier was emptied (tracking connection lost or back, FLUSHALL/FLUSHDB, a route flush).", prometheus.CounterValue, "route"},
	{MetricRouteNoReplicas, "Write-back writes answered -NOREPLICAS: fewer than write_back.min_replicas replicas acknowledged their queue entry within write_back.replica_timeout (or WAIT failed). Not acknowledged, but queued on the primary: they may still apply.", prometheus.CounterValue, "route"},
	{MetricWritebackQueueLength, "Entries in the write-back route's durable queue.", prometheus.GaugeValue, "route"},
	{MetricWritebackOldest, "Age in seconds of the oldest entry in the write-back queue (how far PostgreSQL is behind); 0 when empty.", prometheus.GaugeValue, "route"},
	{MetricWritebackInFlight, "Write-back entries read by a flusher and not yet committed and acknowledged.", prometheus.GaugeValue, "route"},
	{MetricWritebackDeadLetters, "Write-back entries in the dead-letter queue (failed max_retries times); list, replay or drop them with RESPITE DLQ.", prometheus.GaugeValue, "route"},
	{MetricWatchAborts, "EXECs of watched transactions that aborted because a watched key changed.", prometheus.CounterValue, ""},
	{MetricWatchCommits, "EXECs of watched transactions that committed.", prometheus.CounterValue, ""},
	{MetricGateWaits, "WATCH sessions the contention gate made wait for their turn on a hot key.", prometheus.CounterValue, ""},
	{MetricUpstreamPool, "Connections in the go-redis pool for pinned sessions, fills and scripts, by state (total, idle).", prometheus.GaugeValue, "state"},
	{MetricPostgresPool, "Connections in the PostgreSQL pool for loads and direct writes, by state (total, idle).", prometheus.GaugeValue, "state"},
	{MetricFlushStatements, "Write-back flush statements sent to PostgreSQL (failed ones included).", prometheus.CounterValue, ""},
	{MetricFlushErrors, "Write-back flush statements that failed (PostgreSQL errors; retried, or dead-lettered after max_retries).", prometheus.CounterValue, ""},
	{MetricFlushCoalesced, "Write-back entries that coalescing saved from being written (entries minus distinct keys per batch): the DB work the queue saved.", prometheus.CounterValue, ""},
	{MetricWritebackQueueLost, "Times this instance found a write-back queue lost: its Redis Stream or consumer group disappeared (eviction, DEL/FLUSHALL, a Redis restart without persistence). Acknowledged writes not yet in PostgreSQL may be gone.", prometheus.CounterValue, "route"},
	{MetricWritebackRefused, "1 while write-back writes are refused because of the upstream Redis' settings (an evicting maxmemory-policy, AOF off with write_back.require_aof, settings not readable or not checked yet).", prometheus.GaugeValue, ""},
	{MetricRoutesDegraded, "Routes that cannot serve yet: PostgreSQL was unreachable at start-up (the proxy connects in the background) or a route's table is not usable.", prometheus.GaugeValue, ""},
	{MetricUpstreamPersistence, "The upstream Redis' persistence, 1 for the current mode (aof-always, aof-everysec, aof-no, aof, rdb, none, no-aof, unknown), 0 for the others: what a Redis crash or restart costs write-back.", prometheus.GaugeValue, "mode"},
	{MetricUpstreamEviction, "The upstream Redis' maxmemory-policy, 1 for the current one (unknown when it cannot be read).", prometheus.GaugeValue, "policy"},
	{MetricClientsClosed, "Clients the proxy closed for a limit, by reason: output_limit (limits.max_output_bytes), query_limit (limits.max_query_bytes_total), idle (limits.client_timeout).", prometheus.CounterValue, "reason"},
	{MetricInvalidationLag, "Bytes of WAL the replication slot keeps behind PostgreSQL's current position (reported by the leader; 0 elsewhere).", prometheus.GaugeValue, ""},
	{MetricInvalidationLeader, "1 while this instance consumes the change stream (holds the leader lease).", prometheus.GaugeValue, ""},
	{MetricInvalidationStale, "1 while no instance has applied the change stream within postgres.invalidation.max_lag: reads of tracked routes are served from PostgreSQL.", prometheus.GaugeValue, ""},
	{MetricInvalidationTxns, "Committed transactions (or notifications) from PostgreSQL applied by this instance.", prometheus.CounterValue, ""},
	{MetricInvalidationFlushes, "Whole-route flushes by change capture: TRUNCATE, a key the stream did not carry, a slot created or lost, a publication changed, a LISTEN (re)started.", prometheus.CounterValue, ""},
	{MetricInvalidationSkipped, "Changes of the proxy's own write-through writes the capture skipped because the cache already held their result.", prometheus.CounterValue, ""},
	{MetricInvalidationErrors, "Times the change consumer stopped on an error and started again.", prometheus.CounterValue, ""},
	{MetricTopologyRefreshes, "upstream.mode cluster: slot maps read from the cluster (CLUSTER SHARDS), at start and after redirects or failures.", prometheus.CounterValue, ""},
	{MetricClusterRedirects, "upstream.mode cluster: redirects the proxy followed for clients, by kind (moved, ask, tryagain); clients never see them.", prometheus.CounterValue, "kind"},
}

// Metrics is a prometheus.Collector over a Source plus the command latency
// histogram the server observes. Build it with NewMetrics.
type Metrics struct {
	src   Source
	descs []*prometheus.Desc // parallel to descs
	cmd   *prometheus.HistogramVec
	byCls map[string]prometheus.Observer
	reg   *prometheus.Registry
}

// commandBuckets span a pipelined cache hit (tens of µs) to a slow
// PostgreSQL write or a blocking command (seconds).
var commandBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// NewMetrics returns the metrics of src and a registry holding them, the
// command latency histogram, and the Go runtime and process collectors.
func NewMetrics(src Source) *Metrics {
	m := &Metrics{src: src, byCls: map[string]prometheus.Observer{}}
	for _, d := range descs {
		var labels []string
		if d.label != "" {
			labels = []string{d.label}
		}
		m.descs = append(m.descs, prometheus.NewDesc(d.name, d.help, labels, nil))
	}
	m.cmd = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricCommandDuration,
		Help:    "Time from a command's arrival to its reply being ready, by class (passthrough, pinned, routed_read, routed_write, local).",
		Buckets: commandBuckets,
	}, []string{"class"})
	for _, c := range Classes {
		m.byCls[c] = m.cmd.WithLabelValues(c) // every class is exported from the start
	}
	m.reg = prometheus.NewRegistry()
	m.reg.MustRegister(m, m.cmd,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveCommand records that a command of class took d. It is safe for
// concurrent use and a no-op on a nil *Metrics (admin listener off).
func (m *Metrics) ObserveCommand(class string, d time.Duration) {
	if m == nil {
		return
	}
	o, ok := m.byCls[class]
	if !ok {
		o = m.cmd.WithLabelValues(class)
	}
	o.Observe(d.Seconds())
}

// Registry returns the registry /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Describe implements prometheus.Collector for the snapshot metrics.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads one Snapshot and
// reports it.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	if m.src == nil {
		return
	}
	s := m.src.Snapshot()
	i := 0
	emit := func(v float64, label ...string) {
		ch <- prometheus.MustNewConstMetric(m.descs[i], descs[i].kind, v, label...)
	}
	next := func() { i++ }

	emit(float64(s.Clients))
	next()
	emit(float64(s.PinnedTransaction), "transaction")
	emit(float64(s.PinnedPubSub), "pubsub")
	emit(float64(s.PinnedBlocking), "blocking")
	emit(float64(s.PinnedOther), "other")
	next()
	emit(float64(s.UpstreamErrors))
	next()

	routeFields := []func(RouteStats) int64{
		func(r RouteStats) int64 { return r.Hits },
		func(r RouteStats) int64 { return r.Misses },
		func(r RouteStats) int64 { return r.NegativeHits },
		func(r RouteStats) int64 { return r.LocalHits },
		func(r RouteStats) int64 { return r.Loads },
		func(r RouteStats) int64 { return r.Coalesced },
		func(r RouteStats) int64 { return r.EarlyRefreshes },
		func(r RouteStats) int64 { return r.Degraded },
		func(r RouteStats) int64 { return r.Writes },
		func(r RouteStats) int64 { return r.Errors },
		func(r RouteStats) int64 { return r.VerifyChecked },
		func(r RouteStats) int64 { return r.VerifyDivergent },
		func(r RouteStats) int64 { return r.VerifyRepaired },
		func(r RouteStats) int64 { return r.FillsRefused },
		func(r RouteStats) int64 { return r.Invalidations },
		func(r RouteStats) int64 { return r.LocalPurges },
		func(r RouteStats) int64 { return r.NoReplicas },
	}
	routes := dedupe(s.Routes, func(r RouteStats) string { return r.Name })
	for _, f := range routeFields {
		for _, r := range routes {
			emit(float64(f(r)), r.Name)
		}
		next()
	}

	queueFields := []func(QueueStats) float64{
		func(q QueueStats) float64 { return float64(q.Length) },
		func(q QueueStats) float64 { return q.OldestAgeSeconds },
		func(q QueueStats) float64 { return float64(q.InFlight) },
		func(q QueueStats) float64 { return float64(q.DeadLetters) },
	}
	queues := dedupe(s.Queues, func(q QueueStats) string { return q.Route })
	for _, f := range queueFields {
		for _, q := range queues {
			emit(f(q), q.Route)
		}
		next()
	}

	emit(float64(s.WatchAborts))
	next()
	emit(float64(s.WatchCommits))
	next()
	emit(float64(s.GateWaits))
	next()
	emit(float64(s.UpstreamPool.Total), "total")
	emit(float64(s.UpstreamPool.Idle), "idle")
	next()
	emit(float64(s.PostgresPool.Total), "total")
	emit(float64(s.PostgresPool.Idle), "idle")
	next()
	emit(float64(s.FlushStatements))
	next()
	emit(float64(s.FlushErrors))
	next()
	emit(float64(s.FlushCoalesced))
	next()
	for _, q := range queues {
		emit(float64(q.Lost), q.Route)
	}
	next()
	if s.Persistence != "" {
		emit(float64(boolInt(s.WritebackRefused)))
	}
	next()
	emit(float64(s.RoutesDegraded))
	next()
	if s.Persistence != "" {
		known := false
		for _, mode := range PersistenceModes {
			known = known || mode == s.Persistence
			emit(float64(boolInt(mode == s.Persistence)), mode)
		}
		if !known {
			emit(1, s.Persistence)
		}
	}
	next()
	if s.MaxMemoryPolicy != "" {
		emit(1, s.MaxMemoryPolicy)
	}
	next()
	emit(float64(s.ClosedOutputLimit), "output_limit")
	emit(float64(s.ClosedQueryLimit), "query_limit")
	emit(float64(s.ClosedIdle), "idle")
	next()
	inv := s.Invalidation
	for _, v := range []int64{inv.LagBytes, boolInt(inv.Leader), boolInt(inv.Stale), inv.Transactions, inv.Flushes, inv.Skipped, inv.Errors} {
		emit(float64(v))
		next()
	}
	emit(float64(s.TopologyRefreshes)) // 0 unless upstream.mode cluster
	next()
	emit(float64(s.Moved), "moved")
	emit(float64(s.Asked), "ask")
	emit(float64(s.TryAgain), "tryagain")
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// dedupe keeps the first element of each name: a duplicate label set would
// make the whole scrape fail.
func dedupe[T any](in []T, name func(T) string) []T {
	seen := make(map[string]bool, len(in))
	out := in[:0:0]
	for _, v := range in {
		if n := name(v); !seen[n] {
			seen[n] = true
			out = append(out, v)
		}
	}
	return out
}
