// Package api is QuickScale's HTTP edge: the router (routes.go lists every
// route), middleware, the JSON API under /api/v1, Stripe webhook ingest,
// health checks, and the mounting of the web dashboard and River UI.
package api

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/web"
)

// Config is what the HTTP edge needs to know about its deployment.
type Config struct {
	Dev     bool
	BaseURL string
	// WebhookSecret verifies Stripe signatures; IgnoreAPIVersion (dev only)
	// accepts events of another API version, for `stripe listen`.
	WebhookSecret    string
	IgnoreAPIVersion bool
	TrustProxy       bool
	// Readiness answers /readyz (a new one on the store when nil); the
	// process shares it so that /readyz says "shutting down" while it
	// drains.
	Readiness *Readiness
	// MaxBodyBytes caps request bodies (default 1 MiB).
	MaxBodyBytes int64
	// RequestTimeout bounds each request (default 30s).
	RequestTimeout time.Duration
}

// NewServer returns the complete HTTP handler. Every dependency is an
// argument, so the compiler tells when wiring is missing.
func NewServer(
	logger *slog.Logger,
	cfg Config,
	st *store.Store,
	inserter jobs.Inserter,
	gateway billing.Gateway,
	site *web.Site,
	metrics *observability.Metrics,
	riverUI http.Handler,
) http.Handler {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	s := &server{
		logger: logger, cfg: cfg, store: st, jobs: inserter, gateway: gateway,
		site: site, metrics: metrics, riverUI: riverUI,
		ready: cfg.Readiness,
	}
	if s.ready == nil {
		s.ready = NewReadiness(st)
	}
	s.ingest = newIngester(st, inserter, logger, cfg.RequestTimeout, ingestLanes, ingestMaxBatch)
	if metrics != nil {
		s.ingest.observe = func(n int) { metrics.WebhookIngestBatch.Observe(float64(n)) }
	}
	return s.routes()
}

type server struct {
	logger  *slog.Logger
	cfg     Config
	store   *store.Store
	jobs    jobs.Inserter
	gateway billing.Gateway
	site    *web.Site
	metrics *observability.Metrics
	riverUI http.Handler
	ready   *Readiness
	ingest  *ingester
}
