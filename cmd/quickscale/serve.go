package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/quickscale/quickscale/api"
	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/web"
)

func serveSynopsis(mode string) string {
	switch mode {
	case "dev":
		return "dev\n\nRuns the site, the workers and the periodic jobs in one process on local defaults:\nlocal PostgreSQL (embedded if none answers), simulated payments, dev mailbox."
	case "api":
		return "api\n\nServes HTTP on ADDR (and /metrics on METRICS_ADDR) with an insert-only River client."
	}
	return "worker\n\nWorks River jobs and periodic jobs; serves /metrics, /healthz and /readyz on METRICS_ADDR.\nRun as many as needed: River's leader election makes periodic jobs fire once."
}

func runServe(ctx context.Context, mode string, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags(mode, serveSynopsis(mode), stderr)
	if err := parseFlags(fs, args, stdout); err != nil {
		return helpOK(err)
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	logger := newLogger(cfg, stderr)
	if mode == "worker" && !cfg.baseURLSet && !cfg.DevMailbox {
		return errors.New("configuration: BASE_URL is not set. A worker writes the site's address into every email's links; " +
			"set it to the public URL of the site (e.g. https://billing.example.com)")
	}
	if mode == "api" && !cfg.Simulated() && !cfg.baseURLSet {
		return errors.New("configuration: BASE_URL is not set. With Stripe, checkouts send customers back to BASE_URL " +
			"(and emails link to it); set it to the public URL of the site (e.g. https://billing.example.com)")
	}
	if mode == "worker" && cfg.SMTPURL == "" && !cfg.DevMailbox {
		return errors.New("configuration: SMTP_URL is not set. Set it to deliver mail (smtp://user:pass@host:port), " +
			"or set DEV_MAILBOX=true to keep mail in the database's dev mailbox (demos only: nothing is delivered, " +
			"and verification and reset links sit there in clear)")
	}
	if mode == "dev" && !loopbackAddr(cfg.Addr) {
		return fmt.Errorf("configuration: ADDR %q is not a loopback address. dev shows every account's emails, "+
			"with their sign-in and reset links, at /dev/mailbox to anyone who can reach it, and lets anyone \"pay\"; "+
			"it listens on 127.0.0.1, ::1 or localhost only. For a demo others reach, run api and worker "+
			"(README, Commands)", cfg.Addr)
	}
	if mode == "api" && cfg.Simulated() && !cfg.SimulatePayments {
		return errors.New("configuration: STRIPE_SECRET_KEY is not set. Set it and STRIPE_WEBHOOK_SECRET to take payments, " +
			"or set SIMULATE_PAYMENTS=true to run the local payments simulator (demos only: anyone can \"pay\" and get credits)")
	}
	// A worker calls Stripe too (it ends subscriptions, for deleted
	// accounts, support and second plans, and updates customers' emails):
	// without the key those calls would go to the simulator, which knows
	// nothing of Stripe's subscriptions and reports them ended, while
	// Stripe goes on billing them.
	// A worker's simulator posts its events to the api, which checks their
	// signature: a secret each process made up for itself would not match.
	if mode == "worker" && cfg.Simulated() && cfg.SimulatePayments && !cfg.webhookSecretSet {
		return errors.New("configuration: STRIPE_WEBHOOK_SECRET is not set. A worker running the payments simulator signs " +
			"its events for the api with it: set the same value on the api and the workers (any long random string), " +
			"and SIMULATOR_WEBHOOK_URL to the api's /webhooks/stripe as the workers reach it")
	}
	if mode == "worker" && cfg.Simulated() && !cfg.SimulatePayments {
		return errors.New("configuration: STRIPE_SECRET_KEY is not set. A worker ends subscriptions and updates customers at Stripe: " +
			"set it (the same key as the api's), or set SIMULATE_PAYMENTS=true if the api runs the local payments simulator (demos only)")
	}

	// The HTTP address is bound before any other work: a second dev (or
	// api) on a taken address stops here, having touched no database (dev
	// would otherwise migrate and reset the demo admin's password first).
	var mainLn net.Listener
	if mode != "worker" {
		if mainLn, err = net.Listen("tcp", cfg.Addr); err != nil {
			return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
		}
		defer func() { _ = mainLn.Close() }()
		// ADDR with port 0 takes a free port: the default BASE_URL (links
		// in emails, redirects, the banner) names the port taken, not 0.
		if host, port, err := net.SplitHostPort(cfg.Addr); err == nil && port == "0" && !cfg.baseURLSet {
			if _, taken, err := net.SplitHostPort(mainLn.Addr().String()); err == nil {
				cfg.BaseURL = "http://" + net.JoinHostPort(host, taken)
			}
		}
	}

	var seeded *devSeed
	if mode == "dev" {
		stop, err := prepareDevDatabase(ctx, &cfg, logger, stdout)
		if err != nil {
			return err
		}
		defer stop()
	}
	pool, err := store.OpenPool(ctx, cfg.DatabaseURL, store.PoolOptions{MaxConns: cfg.DatabaseMaxConns, AppName: "quickscale-" + mode, Logger: logger})
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	defer pool.Close()
	if mode == "dev" {
		if _, err := store.Migrate(ctx, pool, logger); err != nil {
			return err
		}
		if seeded, err = seedDev(ctx, store.New(pool, logger)); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	a, err := newApp(ctx, mode, cfg, logger, pool)
	if err != nil {
		return err
	}
	return a.serve(ctx, stdout, seeded, mainLn)
}

// serve runs the process until ctx ends (SIGINT/SIGTERM), then shuts down
// gracefully: HTTP stops taking requests and finishes the ones in flight,
// River finishes running jobs, both within SHUTDOWN_TIMEOUT.
// mainLn, when not nil, is the HTTP address already bound.
func (a *app) serve(ctx context.Context, stdout io.Writer, seeded *devSeed, mainLn net.Listener) error {
	// River and background loops get a context that a signal does not
	// cancel: they are stopped gracefully below instead.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()

	// Bind every socket before anything starts: a port in use must stop the
	// process before it serves (a half-started process would answer on one
	// port after run has returned and closed the database pool).
	var listeners []net.Listener
	closeListeners := func() {
		for _, ln := range listeners {
			_ = ln.Close()
		}
	}
	var metricsLn net.Listener
	if mainLn != nil {
		listeners = append(listeners, mainLn)
	} else if a.handler != nil {
		ln, err := net.Listen("tcp", a.cfg.Addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", a.cfg.Addr, err)
		}
		mainLn = ln
		listeners = append(listeners, ln)
	}
	if a.cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
		switch {
		case err == nil:
			metricsLn = ln
			listeners = append(listeners, ln)
		case a.mode == "dev":
			// dev also serves /metrics on its main address; a second dev
			// (or anything else) on the port is no reason to stop.
			a.logger.Warn("metrics listener not started; /metrics is still on the main address", "err", err)
		default:
			closeListeners()
			return fmt.Errorf("listen on %s: %w", a.cfg.MetricsAddr, err)
		}
	}

	if a.riverUI != nil {
		if err := a.riverUI.Start(bg); err != nil {
			closeListeners()
			return fmt.Errorf("river ui: %w", err)
		}
	}
	errCh := make(chan error, 2)
	// Requests' contexts derive from one the shutdown cancels, with
	// web.ErrShutdown as its cause, when its deadline passes with requests
	// still running: they are then logged and counted as cut short by us
	// (503), not as abandoned by their clients (499).
	base, cutRequests := context.WithCancelCause(context.Background())
	defer cutRequests(nil)
	serveOn := func(ln net.Listener, h http.Handler) *http.Server {
		srv := &http.Server{
			BaseContext:       func(net.Listener) context.Context { return base },
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      60 * time.Second,
			IdleTimeout:       120 * time.Second,
			ErrorLog:          nil,
		}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errCh <- fmt.Errorf("http server on %s: %w", ln.Addr(), err)
			}
		}()
		return srv
	}
	var mainAddr net.Addr
	var mainSrv, metricsSrv *http.Server
	if mainLn != nil {
		mainAddr = mainLn.Addr()
		mainSrv = serveOn(mainLn, a.handler)
	}
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", a.metrics.Handler())
		mux.Handle("GET /healthz", api.Healthz())
		mux.Handle("GET /readyz", api.Readyz(a.readiness))
		metricsSrv = serveOn(metricsLn, mux)
	}
	a.printBanner(stdout, mainAddr, seeded)
	addrText := ""
	if mainAddr != nil {
		addrText = mainAddr.String()
	}
	metricsText := ""
	if metricsLn != nil {
		metricsText = metricsLn.Addr().String()
	} else if a.mode == "dev" && mainAddr != nil {
		metricsText = mainAddr.String() // dev serves /metrics there too
	}
	a.logger.Info("started", "mode", a.mode, "addr", addrText, "metrics_addr", metricsText, "simulated_payments", a.cfg.Simulated())
	if sim, ok := a.gateway.(*billing.Simulator); ok && mainLn != nil {
		go expireSimulatedCheckouts(bg, sim, a.logger, time.Minute)
	}

	var runErr error
	riverStarted := false
	if a.runsWorkers() {
		// Work starts once the database is ready (migrations current): a
		// worker started before `migrate up` waits, its /readyz saying why,
		// instead of crash-looping.
		if a.waitUntilReady(ctx) {
			events, cancelEvents := a.river.Subscribe(observability.RiverEventKinds()...)
			defer cancelEvents()
			go a.metrics.ObserveRiverEvents(bg, events)
			if err := a.river.Start(bg); err != nil {
				runErr = fmt.Errorf("start river: %w", err)
			} else {
				riverStarted = true
				go a.gauges.Run(bg)
			}
		}
	}
	if runErr == nil {
		select {
		case <-ctx.Done():
			a.logger.Info("shutting down", "mode", a.mode)
		case runErr = <-errCh:
			a.logger.Error("server failed, shutting down", "err", runErr)
		}
	}
	// Not ready from now on (/readyz, quickscale_ready): the main address
	// stops taking connections; the metrics one keeps answering (and being
	// scraped) while the requests and then the jobs in flight finish.
	a.readiness.Drain()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	shutdown := func(srv *http.Server) {
		if srv == nil {
			return
		}
		if err := srv.Shutdown(shutdownCtx); err != nil {
			a.logger.Warn("http shutdown: requests still running are cut short", "err", err)
			cutRequests(web.ErrShutdown)
			_ = srv.Close()
		}
	}
	shutdown(mainSrv)
	if riverStarted {
		a.stopRiverWithin(shutdownCtx)
	}
	shutdown(metricsSrv)
	stopBG()
	a.logger.Info("stopped", "mode", a.mode)
	return runErr
}

// waitUntilReady waits until the database is ready for work (reachable,
// migrations current), saying once why it waits. false: ctx ended first.
func (a *app) waitUntilReady(ctx context.Context) bool {
	rd := api.NewReadiness(a.store)
	waiting := ""
	for {
		reason := rd.Check(ctx)
		if reason == "" {
			if waiting != "" {
				a.logger.Info("ready: starting work")
			}
			return true
		}
		if reason != waiting {
			a.logger.Warn("not starting work yet; /readyz says why", "reason", reason)
			waiting = reason
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Second):
		}
	}
}

// stopRiverWithin lets running jobs finish; past the deadline they are
// cancelled (River retries them later: every worker is idempotent).
func (a *app) stopRiverWithin(ctx context.Context) {
	if !a.runsWorkers() {
		return
	}
	if err := a.river.Stop(ctx); err != nil {
		a.logger.Warn("river did not stop in time, cancelling running jobs", "err", err)
		hard, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = a.river.StopAndCancel(hard)
	}
}

func (a *app) printBanner(w io.Writer, addr net.Addr, seeded *devSeed) {
	switch a.mode {
	case "dev":
		fmt.Fprintf(w, "\nQuickScale is running: %s\n", a.cfg.BaseURL)
		fmt.Fprintf(w, "  listening on   %s\n", addr)
		if a.cfg.Simulated() {
			fmt.Fprintf(w, "  payments       simulated (set STRIPE_SECRET_KEY for Stripe)\n")
		} else {
			fmt.Fprintf(w, "  payments       Stripe\n")
		}
		if a.cfg.SMTPURL == "" {
			fmt.Fprintf(w, "  mail           dev mailbox: %s/dev/mailbox\n", a.cfg.BaseURL)
		} else {
			fmt.Fprintf(w, "  mail           %s\n", redactURL(a.cfg.SMTPURL))
		}
		if seeded != nil {
			fmt.Fprintf(w, "  demo admin     %s / %s\n", seeded.AdminEmail, seeded.AdminPassword)
		}
		fmt.Fprintf(w, "  queues         %s/admin/river (River UI)\n", a.cfg.BaseURL)
		fmt.Fprintf(w, "  metrics        %s/metrics\n\n", a.cfg.BaseURL)
	case "api", "worker":
		metrics := a.cfg.MetricsAddr
		if metrics == "" {
			metrics = "off"
		}
		// With JSON logs, the start is one more JSON log line, so that a
		// log collector reading stdout and stderr sees JSON only.
		if a.cfg.LogFormat == "json" {
			if a.mode == "api" {
				a.logger.Info("QuickScale api listening", "addr", addr.String(), "base_url", a.cfg.BaseURL, "metrics", metrics)
			} else {
				a.logger.Info("QuickScale worker running", "metrics", metrics)
			}
			return
		}
		if a.mode == "api" {
			fmt.Fprintf(w, "QuickScale api listening on %s (%s); metrics %s\n", addr, a.cfg.BaseURL, metrics)
		} else {
			fmt.Fprintf(w, "QuickScale worker running; metrics %s\n", metrics)
		}
	}
}

// expireSimulatedCheckouts expires the simulator's abandoned checkouts (as
// Stripe does after 24 hours) and renews its subscriptions whose period
// ended, at start and then every period, until ctx
// ends. It runs in the processes that serve the simulator (dev, and api
// with SIMULATE_PAYMENTS); several replicas share the work (each
// checkout is expired once, under its row lock).
func expireSimulatedCheckouts(ctx context.Context, sim *billing.Simulator, logger *slog.Logger, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		n, err := sim.ExpireAbandoned(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			logger.Warn("simulator: expiring abandoned checkouts", "err", err, "expired", n)
		case n > 0:
			logger.Info("simulator: expired abandoned checkouts", "expired", n)
		}
		// The simulator's subscriptions whose month is over renew (or end),
		// as Stripe's would.
		n, err = sim.RenewDue(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			logger.Warn("simulator: renewing subscriptions", "err", err, "renewed", n)
		case n > 0:
			logger.Info("simulator: renewed subscriptions", "renewed", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
