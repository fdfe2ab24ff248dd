package admin_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/respite/respite/internal/admin"
)

// fakeSource is a Source whose snapshot and readiness the test sets.
type fakeSource struct {
	mu    sync.Mutex
	snap  admin.Snapshot
	ready error
}

func (f *fakeSource) Snapshot() admin.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snap
	s.Routes = slices.Clone(s.Routes)
	s.Queues = slices.Clone(s.Queues)
	return s
}

func (f *fakeSource) Ready(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready
}

func (f *fakeSource) set(fn func(*admin.Snapshot)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.snap)
}

func newFake() *fakeSource {
	return &fakeSource{snap: admin.Snapshot{
		Clients: 12, PinnedTransaction: 3, PinnedPubSub: 2, PinnedBlocking: 1, PinnedOther: 4,
		UpstreamErrors: 5,
		Routes: []admin.RouteStats{
			{Name: "users", Policy: "cache-aside", Hits: 90, Misses: 10, NegativeHits: 7, LocalHits: 40, Loads: 11,
				Coalesced: 6, EarlyRefreshes: 2, Degraded: 1, Writes: 8, Errors: 3,
				FillsRefused: 13, Invalidations: 14, LocalPurges: 15},
			{Name: "pageviews", Policy: "write-back", Hits: 1, Misses: 2, Writes: 1000},
		},
		Queues:      []admin.QueueStats{{Route: "pageviews", Length: 120, OldestAgeSeconds: 1.5, InFlight: 100, DeadLetters: 2, Lost: 1}},
		WatchAborts: 4, WatchCommits: 40, GateWaits: 9,
		RoutesDegraded: 1, Persistence: "aof-everysec", MaxMemoryPolicy: "noeviction", WritebackRefused: true,
		Invalidation:      admin.InvalidationStats{Leader: true, LagBytes: 4096, Transactions: 21, Flushes: 2, Skipped: 5, Errors: 1},
		TopologyRefreshes: 3, Moved: 7, Asked: 11, TryAgain: 1,
	}}
}

// scrape fetches /metrics and parses it.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("/metrics: %s\n%s", res.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of name's sample whose labels include labels
// (name=value pairs); ok is false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), true
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), true
		case dto.MetricType_HISTOGRAM:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetricsReportSnapshot(t *testing.T) {
	src := newFake()
	m := admin.NewMetrics(src)
	srv := httptest.NewServer(admin.Handler(m, src))
	defer srv.Close()
	fams := scrape(t, srv.URL)

	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
		typ    dto.MetricType
	}{
		{"respite_clients", nil, 12, dto.MetricType_GAUGE},
		{"respite_pinned_sessions", []string{"kind", "transaction"}, 3, dto.MetricType_GAUGE},
		{"respite_pinned_sessions", []string{"kind", "pubsub"}, 2, dto.MetricType_GAUGE},
		{"respite_pinned_sessions", []string{"kind", "blocking"}, 1, dto.MetricType_GAUGE},
		{"respite_pinned_sessions", []string{"kind", "other"}, 4, dto.MetricType_GAUGE},
		{"respite_upstream_errors_total", nil, 5, dto.MetricType_COUNTER},
		{"respite_route_hits_total", []string{"route", "users"}, 90, dto.MetricType_COUNTER},
		{"respite_route_hits_total", []string{"route", "pageviews"}, 1, dto.MetricType_COUNTER},
		{"respite_route_misses_total", []string{"route", "users"}, 10, dto.MetricType_COUNTER},
		{"respite_route_negative_hits_total", []string{"route", "users"}, 7, dto.MetricType_COUNTER},
		{"respite_route_local_hits_total", []string{"route", "users"}, 40, dto.MetricType_COUNTER},
		{"respite_route_db_loads_total", []string{"route", "users"}, 11, dto.MetricType_COUNTER},
		{"respite_route_coalesced_total", []string{"route", "users"}, 6, dto.MetricType_COUNTER},
		{"respite_route_early_refreshes_total", []string{"route", "users"}, 2, dto.MetricType_COUNTER},
		{"respite_route_degraded_reads_total", []string{"route", "users"}, 1, dto.MetricType_COUNTER},
		{"respite_route_writes_total", []string{"route", "users"}, 8, dto.MetricType_COUNTER},
		{"respite_route_writes_total", []string{"route", "pageviews"}, 1000, dto.MetricType_COUNTER},
		{"respite_route_errors_total", []string{"route", "users"}, 3, dto.MetricType_COUNTER},
		{"respite_writeback_queue_length", []string{"route", "pageviews"}, 120, dto.MetricType_GAUGE},
		{"respite_writeback_oldest_pending_seconds", []string{"route", "pageviews"}, 1.5, dto.MetricType_GAUGE},
		{"respite_writeback_in_flight", []string{"route", "pageviews"}, 100, dto.MetricType_GAUGE},
		{"respite_writeback_dead_letters", []string{"route", "pageviews"}, 2, dto.MetricType_GAUGE},
		{"respite_watch_aborts_total", nil, 4, dto.MetricType_COUNTER},
		{"respite_watch_commits_total", nil, 40, dto.MetricType_COUNTER},
		{"respite_gate_waits_total", nil, 9, dto.MetricType_COUNTER},
		{"respite_writeback_queue_lost_total", []string{"route", "pageviews"}, 1, dto.MetricType_COUNTER},
		{"respite_writeback_writes_refused", nil, 1, dto.MetricType_GAUGE},
		{"respite_routes_degraded", nil, 1, dto.MetricType_GAUGE},
		{"respite_upstream_persistence", []string{"mode", "aof-everysec"}, 1, dto.MetricType_GAUGE},
		{"respite_upstream_persistence", []string{"mode", "none"}, 0, dto.MetricType_GAUGE},
		{"respite_upstream_persistence", []string{"mode", "aof-always"}, 0, dto.MetricType_GAUGE},
		{"respite_upstream_maxmemory_policy", []string{"policy", "noeviction"}, 1, dto.MetricType_GAUGE},
		{"respite_route_fills_refused_total", []string{"route", "users"}, 13, dto.MetricType_COUNTER},
		{"respite_route_invalidations_total", []string{"route", "users"}, 14, dto.MetricType_COUNTER},
		{"respite_route_local_purges_total", []string{"route", "users"}, 15, dto.MetricType_COUNTER},
		{"respite_invalidation_slot_lag_bytes", nil, 4096, dto.MetricType_GAUGE},
		{"respite_invalidation_leader", nil, 1, dto.MetricType_GAUGE},
		{"respite_invalidation_stale", nil, 0, dto.MetricType_GAUGE},
		{"respite_invalidation_transactions_total", nil, 21, dto.MetricType_COUNTER},
		{"respite_invalidation_route_flushes_total", nil, 2, dto.MetricType_COUNTER},
		{"respite_invalidation_own_writes_skipped_total", nil, 5, dto.MetricType_COUNTER},
		{"respite_invalidation_errors_total", nil, 1, dto.MetricType_COUNTER},
		{"respite_cluster_topology_refreshes_total", nil, 3, dto.MetricType_COUNTER},
		{"respite_cluster_redirects_total", []string{"kind", "moved"}, 7, dto.MetricType_COUNTER},
		{"respite_cluster_redirects_total", []string{"kind", "ask"}, 11, dto.MetricType_COUNTER},
		{"respite_cluster_redirects_total", []string{"kind", "tryagain"}, 1, dto.MetricType_COUNTER},
	} {
		got, ok := value(fams, tc.name, tc.labels...)
		if !ok {
			t.Errorf("%s%v: missing", tc.name, tc.labels)
			continue
		}
		if got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
		if typ := fams[tc.name].GetType(); typ != tc.typ {
			t.Errorf("%s is a %v, want %v", tc.name, typ, tc.typ)
		}
	}
	// Every listed name is exported, with the one label it is documented
	// with; Go and process collectors are there too.
	for _, name := range admin.MetricNames() {
		if fams[name] == nil {
			t.Errorf("%s listed by MetricNames but not exported", name)
		}
	}
	for name, f := range fams {
		if strings.HasPrefix(name, "respite_") && !slices.Contains(admin.MetricNames(), name) {
			t.Errorf("%s exported but not in MetricNames", name)
		}
		if f.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if fams[name] == nil {
			t.Errorf("%s missing: Go or process collector not registered", name)
		}
	}
}

func TestCountersMoveBetweenScrapes(t *testing.T) {
	src := newFake()
	m := admin.NewMetrics(src)
	srv := httptest.NewServer(admin.Handler(m, src))
	defer srv.Close()

	before := scrape(t, srv.URL)
	src.set(func(s *admin.Snapshot) {
		s.Routes[0].Hits += 50
		s.Routes[0].Misses += 5
		s.Routes[0].Loads += 5
		s.WatchAborts += 3
		s.Queues[0].Length = 0
		s.Queues[0].OldestAgeSeconds = 0
		s.Routes = append(s.Routes, admin.RouteStats{Name: "stock", Policy: "write-through", Writes: 1})
	})
	m.ObserveCommand(admin.ClassRoutedRead, 300*time.Microsecond)
	m.ObserveCommand(admin.ClassRoutedRead, 2*time.Millisecond)
	m.ObserveCommand(admin.ClassPassthrough, 100*time.Microsecond)
	after := scrape(t, srv.URL)

	delta := func(name string, labels ...string) float64 {
		a, _ := value(before, name, labels...)
		b, ok := value(after, name, labels...)
		if !ok {
			t.Fatalf("%s%v missing from the second scrape", name, labels)
		}
		return b - a
	}
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"respite_route_hits_total", []string{"route", "users"}, 50},
		{"respite_route_misses_total", []string{"route", "users"}, 5},
		{"respite_route_db_loads_total", []string{"route", "users"}, 5},
		{"respite_watch_aborts_total", nil, 3},
		{"respite_route_hits_total", []string{"route", "pageviews"}, 0},
		{"respite_writeback_queue_length", []string{"route", "pageviews"}, -120},
		{"respite_command_duration_seconds", []string{"class", "routed_read"}, 2},
		{"respite_command_duration_seconds", []string{"class", "passthrough"}, 1},
		{"respite_command_duration_seconds", []string{"class", "pinned"}, 0},
	} {
		if got := delta(tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v moved by %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if v, ok := value(after, "respite_route_writes_total", "route", "stock"); !ok || v != 1 {
		t.Errorf("a route that appears later is reported: %v, %v", v, ok)
	}
	// The histogram: 0.3 ms lands in the 0.5 ms bucket, 2 ms does not.
	var h *dto.Histogram
	for _, mm := range after["respite_command_duration_seconds"].GetMetric() {
		for _, l := range mm.GetLabel() {
			if l.GetName() == "class" && l.GetValue() == "routed_read" {
				h = mm.GetHistogram()
			}
		}
	}
	if h == nil {
		t.Fatal("no routed_read histogram")
	}
	if got := h.GetSampleSum(); got < 0.0022 || got > 0.0024 {
		t.Errorf("routed_read sum = %v, want 0.0023", got)
	}
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == 0.0005 && b.GetCumulativeCount() != 1 {
			t.Errorf("le=0.0005 bucket = %d, want 1", b.GetCumulativeCount())
		}
	}
	// Every class is exported before it is first observed.
	for _, c := range admin.Classes {
		if _, ok := value(before, "respite_command_duration_seconds", "class", c); !ok {
			t.Errorf("class %s not exported before its first observation", c)
		}
	}
}

// The collector's descriptions and metrics are consistent (a pedantic
// registry checks each metric against its Desc), and duplicate route names
// in a snapshot cannot break the scrape.
func TestCollectorIsConsistent(t *testing.T) {
	src := newFake()
	src.set(func(s *admin.Snapshot) { s.Routes = append(s.Routes, s.Routes[0]) })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(admin.NewMetrics(src))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(fams) != len(admin.MetricNames())-1 { // the histogram is not in the collector
		t.Errorf("collector gathered %d families, want %d", len(fams), len(admin.MetricNames())-1)
	}
	// A nil *Metrics ignores observations (admin listener off).
	var none *admin.Metrics
	none.ObserveCommand(admin.ClassLocal, time.Millisecond)
}

func TestHealthAndReadiness(t *testing.T) {
	src := newFake()
	srv := httptest.NewServer(admin.Handler(admin.NewMetrics(src), src))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || body != "ready" {
		t.Errorf("/readyz while ready = %d %q", code, body)
	}
	src.mu.Lock()
	src.ready = errors.New("postgres: dial tcp 127.0.0.1:5432: connect: connection refused")
	src.mu.Unlock()
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "postgres: dial tcp 127.0.0.1:5432: connect: connection refused") {
		t.Errorf("/readyz with PostgreSQL down = %d %q", code, body)
	}
	// Liveness does not depend on readiness.
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz while not ready = %d", code)
	}
	if code, _ := get("/nope"); code != 404 {
		t.Errorf("/nope = %d", code)
	}
}

// /readyz gives up on a Ready that hangs instead of hanging itself.
func TestReadyzTimesOut(t *testing.T) {
	src := hangingSource{}
	srv := httptest.NewServer(admin.Handler(nil, src))
	defer srv.Close()
	start := time.Now()
	res, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 503 || time.Since(start) > admin.ReadyTimeout+time.Second {
		t.Fatalf("/readyz with a hanging check: %d after %v", res.StatusCode, time.Since(start))
	}
}

type hangingSource struct{}

func (hangingSource) Snapshot() admin.Snapshot { return admin.Snapshot{} }
func (hangingSource) Ready(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestMetricNames(t *testing.T) {
	want := []string{
		"respite_clients", "respite_pinned_sessions", "respite_upstream_errors_total",
		"respite_route_hits_total", "respite_route_misses_total", "respite_route_negative_hits_total",
		"respite_route_local_hits_total", "respite_route_db_loads_total", "respite_route_coalesced_total",
		"respite_route_early_refreshes_total", "respite_route_degraded_reads_total", "respite_route_writes_total",
		"respite_route_errors_total", "respite_writeback_queue_length", "respite_writeback_oldest_pending_seconds",
		"respite_writeback_in_flight", "respite_writeback_dead_letters", "respite_watch_aborts_total",
		"respite_watch_commits_total", "respite_gate_waits_total", "respite_command_duration_seconds",
		"respite_upstream_pool_connections", "respite_postgres_pool_connections",
		"respite_writeback_statements_total", "respite_writeback_flush_errors_total", "respite_writeback_coalesced_total",
		"respite_writeback_queue_lost_total", "respite_writeback_writes_refused", "respite_routes_degraded",
		"respite_upstream_persistence", "respite_upstream_maxmemory_policy", "respite_clients_closed_total",
		"respite_route_verify_checked_total", "respite_route_verify_divergences_total", "respite_route_verify_repaired_total",
		"respite_route_fills_refused_total", "respite_route_invalidations_total", "respite_route_local_purges_total",
		"respite_route_noreplicas_total",
		"respite_invalidation_slot_lag_bytes", "respite_invalidation_leader", "respite_invalidation_stale",
		"respite_invalidation_transactions_total", "respite_invalidation_route_flushes_total",
		"respite_invalidation_own_writes_skipped_total", "respite_invalidation_errors_total",
		"respite_cluster_topology_refreshes_total", "respite_cluster_redirects_total",
	}
	slices.Sort(want)
	if got := admin.MetricNames(); !slices.Equal(got, want) {
		t.Errorf("MetricNames() = %v\nwant %v", got, want)
	}
}
