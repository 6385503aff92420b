package api

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/quickscale/quickscale/store"
)

// Readiness answers /readyz: Postgres answers and both migration sets are
// current. Once migrations were seen current they are not re-read (they
// only move forward), so later checks cost one ping.
type Readiness struct {
	store           *store.Store
	migrationsReady atomic.Bool
	// draining: the process is shutting down (finishing the requests in
	// flight); it takes no new work, so a load balancer should send none.
	draining atomic.Bool
}

// Drain makes Check answer "shutting down" from now on.
func (rd *Readiness) Drain() { rd.draining.Store(true) }

// NewReadiness checks st.
func NewReadiness(st *store.Store) *Readiness { return &Readiness{store: st} }

// Check returns "" when ready, else the reason.
func (rd *Readiness) Check(ctx context.Context) string {
	if rd.draining.Load() {
		return "shutting down"
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := rd.store.Ping(ctx); err != nil {
		return "database unavailable"
	}
	if rd.migrationsReady.Load() {
		return ""
	}
	st, err := store.Status(ctx, rd.store.Pool())
	if err != nil {
		return "cannot read migration status"
	}
	if !st.Current() {
		return "migrations not current: " + st.Problem()
	}
	rd.migrationsReady.Store(true)
	return ""
}

// Healthz answers 200 while the process runs.
func Healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write([]byte("ok\n"))
	})
}

// Readyz answers 200 when rd is ready to serve, else 503 with the reason.
func Readyz(rd *Readiness) http.Handler {
	return readyzHandler(rd)
}

func readyzHandler(rd *Readiness) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if reason := rd.Check(r.Context()); reason != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + reason + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
}
