package admin

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyTimeout bounds one /readyz check of the upstream Redis and
// PostgreSQL.
const ReadyTimeout = 2 * time.Second

// Handler serves the admin endpoints:
//
//	/metrics  Prometheus text format (m's registry)
//	/healthz  200 "ok" while the process runs (liveness)
//	/readyz   200 "ready" when src.Ready succeeds; 503 with the error text
//	          otherwise (readiness: upstream Redis and PostgreSQL reachable)
func Handler(m *Metrics, src Source) http.Handler {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{
			Registry:          m.Registry(), // promhttp_metric_handler_errors_total
			EnableOpenMetrics: false,
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if src == nil {
			text(w, http.StatusOK, "ready")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
		defer cancel()
		if err := src.Ready(ctx); err != nil {
			text(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		text(w, http.StatusOK, "ready")
	})
	return mux
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	io.WriteString(w, body)
}
