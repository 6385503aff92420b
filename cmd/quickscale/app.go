package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"
	"riverqueue.com/riverui"

	"github.com/quickscale/quickscale/api"
	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/web"
	"github.com/quickscale/quickscale/workers"
)

// app is one wired process: the only place where the packages meet.
type app struct {
	mode    string // dev, api or worker
	cfg     Config
	logger  *slog.Logger
	pool    *pgxpool.Pool
	store   *store.Store
	metrics *observability.Metrics
	river   *river.Client[pgx.Tx]
	gateway billing.Gateway
	handler http.Handler // nil for worker
	riverUI *riverui.Handler
	gauges  *workers.Gauges
	// readiness answers /readyz on both addresses and quickscale_ready.
	readiness *api.Readiness
}

// runsWorkers reports whether this process works jobs.
func (a *app) runsWorkers() bool { return a.mode == "dev" || a.mode == "worker" }

// newApp wires a process on an open pool.
func newApp(ctx context.Context, mode string, cfg Config, logger *slog.Logger, pool *pgxpool.Pool) (*app, error) {
	a := &app{mode: mode, cfg: cfg, logger: logger, pool: pool}
	a.store = store.New(pool, logger)
	a.metrics = observability.NewMetrics()
	a.metrics.RegisterPool(pool.Stat)
	a.store.ObserveConsumeBatches(func(n int) { a.metrics.ConsumeBatch.Observe(float64(n)) })
	readiness := api.NewReadiness(a.store)
	a.readiness = readiness
	a.metrics.RegisterReady(func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return readiness.Check(ctx) == ""
	})

	if cfg.Simulated() {
		a.gateway = billing.NewSimulator(a.store, cfg.BaseURL, cfg.StripeWebhookSecret, logger).DeliverTo(cfg.SimulatorWebhookURL)
	} else {
		a.gateway = billing.NewStripe(billing.StripeConfig{SecretKey: cfg.StripeSecretKey, APIURL: cfg.StripeAPIURL})
	}

	riverCfg := &river.Config{
		Logger: riverLogger(cfg, logger),
		// Also the minimum gap between insert notifications per queue:
		// River's 100ms default would add up to 100ms to every webhook's
		// way to credits.
		FetchCooldown: 10 * time.Millisecond,
		// A job whose worker died mid-run (SIGKILL, a crash, a stop that
		// overran its grace period) is retried after this long rather than
		// River's default hour. It must exceed the longest job timeout (the
		// sweep's 10 minutes), or running jobs would be retried twice.
		RescueStuckJobsAfter: 15 * time.Minute,
	}
	if a.runsWorkers() {
		ws := river.NewWorkers()
		mailer, err := newMailer(cfg, a.store)
		if err != nil {
			return nil, err
		}
		if cfg.SMTPURL == "" && mode == "worker" {
			logger.Warn("DEV_MAILBOX: mail is kept in the database's dev mailbox, not delivered (demos only)")
		}
		wcfg := workers.Config{BaseURL: cfg.BaseURL, MailFrom: cfg.MailFrom, ExpireSchedule: cfg.ExpireCreditsSchedule, Gateway: a.gateway}
		// The workers enqueue follow-up jobs (emails) through the client
		// being built; the indirection breaks the construction cycle.
		inserter := &lateInserter{}
		if err := workers.Register(ws, logger, wcfg, a.store, inserter, mailer, a.metrics); err != nil {
			return nil, err
		}
		periodic, err := workers.PeriodicJobs(wcfg)
		if err != nil {
			return nil, err
		}
		queues := map[string]river.QueueConfig{}
		for q, n := range jobs.Queues() {
			qc := river.QueueConfig{MaxWorkers: n}
			if q == jobs.QueueWebhooks {
				qc.FetchCooldown = 10 * time.Millisecond
				// Insert notifications are rate-limited, so the last
				// events of a burst may get none: poll often enough that
				// they wait 100ms at most, not River's default second.
				qc.FetchPollInterval = 100 * time.Millisecond
			}
			queues[q] = qc
		}
		riverCfg.Workers = ws
		riverCfg.Queues = queues
		riverCfg.PeriodicJobs = periodic
		riverCfg.Middleware = []rivertype.Middleware{observability.NewRiverMiddleware(a.metrics)}
		client, err := river.NewClient(riverpgxv5.New(pool), riverCfg)
		if err != nil {
			return nil, fmt.Errorf("river client: %w", err)
		}
		inserter.client = client
		a.river = client
		sweepGap, err := workers.LongestScheduleGap(cfg.ExpireCreditsSchedule, time.Now())
		if err != nil {
			return nil, fmt.Errorf("expire schedule: %w", err)
		}
		a.gauges = workers.NewGauges(repeatsLimited(cfg, logger), a.store, a.metrics, client.ID, cfg.LiabilityRefreshInterval, sweepGap)
	} else {
		client, err := river.NewClient(riverpgxv5.New(pool), riverCfg)
		if err != nil {
			return nil, fmt.Errorf("river client: %w", err)
		}
		a.river = client
	}

	if mode == "worker" {
		return a, nil
	}

	uiHandler, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints:                riverui.NewEndpoints(a.river, nil),
		JobListHideArgsByDefault: true,
		Logger:                   repeatsLimited(cfg, logger).With("component", "riverui"),
		Prefix:                   "/admin/river",
	})
	if err != nil {
		return nil, fmt.Errorf("river ui: %w", err)
	}
	a.riverUI = uiHandler

	webCfg := web.Config{
		BaseURL: cfg.BaseURL, Dev: mode == "dev", ContactEmail: cfg.ContactEmail,
		SessionIdleTimeout: cfg.SessionIdleTimeout, SessionLifetime: cfg.SessionLifetime, TrustProxy: cfg.TrustProxy,
	}
	if mode == "dev" {
		if fi, err := os.Stat("web/templates"); err == nil && fi.IsDir() {
			webCfg.TemplateDir = "web/templates"
		}
	}
	site, err := web.NewSite(logger, webCfg, a.store, a.river, a.gateway, a.metrics)
	if err != nil {
		return nil, err
	}
	if mode != "dev" && cfg.StripeIgnoreAPIVersion {
		logger.Warn("STRIPE_WEBHOOK_IGNORE_API_VERSION is for dev only: ignored, events of another API version are refused", "mode", mode)
	}
	a.handler = api.NewServer(logger, api.Config{
		Dev: mode == "dev", BaseURL: cfg.BaseURL, WebhookSecret: cfg.StripeWebhookSecret,
		IgnoreAPIVersion: mode == "dev" && cfg.StripeIgnoreAPIVersion, TrustProxy: cfg.TrustProxy,
		Readiness: readiness,
	}, a.store, a.river, a.gateway, site, a.metrics, uiHandler)
	return a, nil
}

// lateInserter forwards to the River client once it exists.
type lateInserter struct {
	client *river.Client[pgx.Tx]
}

func (l *lateInserter) InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error) {
	if l.client == nil {
		return nil, errors.New("river client not ready")
	}
	return l.client.InsertTx(ctx, tx, args, opts)
}

func (l *lateInserter) InsertManyTx(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error) {
	if l.client == nil {
		return nil, errors.New("river client not ready")
	}
	return l.client.InsertManyTx(ctx, tx, params)
}

func newMailer(cfg Config, st *store.Store) (workers.Mailer, error) {
	if cfg.SMTPURL == "" {
		return workers.NewMailboxMailer(st), nil
	}
	return workers.NewSMTPMailer(cfg.SMTPURL)
}

// riverLogger quiets River's periodic info lines unless LOG_LEVEL=debug,
// and says a repeated warning or error once per riverRepeatWindow: while
// the database is unreachable River logs each failed poll (about 14 lines
// a second), which would fill a disk in a long outage.
func riverLogger(cfg Config, base *slog.Logger) *slog.Logger {
	if cfg.LogLevel <= slog.LevelDebug {
		return base.With("component", "river")
	}
	h := &repeatLimiter{Handler: minLevel{base.Handler(), slog.LevelWarn}, window: riverRepeatWindow, state: &repeatState{last: map[string]repeatSeen{}}}
	return slog.New(h).With("component", "river")
}

const riverRepeatWindow = 30 * time.Second

// repeatsLimited is base saying a repeated warning or error (same level
// and message) once per riverRepeatWindow, with how many it dropped, for
// the loops that log each failed poll of an unreachable database: the
// leader's gauges (every 2 s) and River UI's query cache (every 10 s).
// At LOG_LEVEL=debug everything is said.
func repeatsLimited(cfg Config, base *slog.Logger) *slog.Logger {
	if cfg.LogLevel <= slog.LevelDebug {
		return base
	}
	return slog.New(&repeatLimiter{Handler: base.Handler(), window: riverRepeatWindow, state: &repeatState{last: map[string]repeatSeen{}}, from: slog.LevelWarn})
}

// repeatLimiter passes a record on, then drops records of the same level
// and message for window; the next one passed on says how many it dropped
// ("repeated"). Handlers derived with WithAttrs or WithGroup share one
// count.
type repeatLimiter struct {
	slog.Handler
	window time.Duration
	state  *repeatState
	// from is the lowest level limited; records below it pass.
	from slog.Level
}

type repeatState struct {
	mu   sync.Mutex
	last map[string]repeatSeen
}

type repeatSeen struct {
	at      time.Time
	dropped int
}

func (h *repeatLimiter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < h.from {
		return h.Handler.Handle(ctx, r)
	}
	key := r.Level.String() + "\x00" + r.Message
	h.state.mu.Lock()
	seen, ok := h.state.last[key]
	if ok && r.Time.Sub(seen.at) < h.window {
		seen.dropped++
		h.state.last[key] = seen
		h.state.mu.Unlock()
		return nil
	}
	if len(h.state.last) > 1000 { // bounded: messages with ids in them
		clear(h.state.last)
	}
	h.state.last[key] = repeatSeen{at: r.Time}
	h.state.mu.Unlock()
	if seen.dropped > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("repeated", seen.dropped))
	}
	return h.Handler.Handle(ctx, r)
}

func (h *repeatLimiter) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &repeatLimiter{h.Handler.WithAttrs(attrs), h.window, h.state, h.from}
}

func (h *repeatLimiter) WithGroup(name string) slog.Handler {
	return &repeatLimiter{h.Handler.WithGroup(name), h.window, h.state, h.from}
}

// minLevel drops records below a level.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(attrs), h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.min}
}

// newLogger builds the process logger from the config.
func newLogger(cfg Config, w io.Writer) *slog.Logger {
	return observability.NewLogger(w, cfg.LogLevel, cfg.LogFormat)
}
