package observability

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// InstrumentHTTP counts and times requests by chi route pattern (never the
// raw path, which would make label values unbounded).
func (m *Metrics) InstrumentHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		m.HTTPInFlight.Inc()
		defer m.HTTPInFlight.Dec()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		defer func() {
			// Runs after a panic was turned into a 500 further in, too.
			route := RoutePattern(r)
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK
			}
			m.HTTPRequests.WithLabelValues(route, methodLabel(r.Method), CodeClass(status)).Inc()
			m.HTTPDuration.WithLabelValues(route, methodLabel(r.Method)).Observe(time.Since(start).Seconds())
		}()
		next.ServeHTTP(ww, r)
	})
}

// RoutePattern returns the chi pattern that matched r, or "unmatched".
func RoutePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return p
		}
	}
	return "unmatched"
}

func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}
