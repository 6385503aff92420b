package workers

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/riverqueue/river"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
)

// expireBatch is how many grants one sweep transaction closes: about 1.3 ms
// of database time on the benchmark machine. Short batches keep the locks
// they hold brief and, more importantly, keep the sweep from holding a core
// for long at a time, which is what slows the spends sharing the database
// (README, "A fifth measurement day").
const expireBatch = 50

// ExpireCreditsWorker sweeps overdue grants in small transactions until
// none is left, writing an expire entry (breakage) for each. Its cost grows
// with what expired, not with all grants.
type ExpireCreditsWorker struct {
	river.WorkerDefaults[jobs.ExpireCredits]
	logger  *slog.Logger
	store   *store.Store
	metrics *observability.Metrics
	// period is the time between two scheduled sweeps (0: unscheduled).
	period time.Duration
}

// Timeout implements river.Worker: a large backlog is swept over several runs.
func (w *ExpireCreditsWorker) Timeout(*river.Job[jobs.ExpireCredits]) time.Duration {
	return 10 * time.Minute
}

// sweepPause is how long the sweep rests after each batch, relative to the
// batch's duration: a big backlog is swept at up to a third of full speed,
// spread over its budget, so that spends sharing the database stay fast;
// it rests less when resting would take it past the budget. Measured on
// the benchmark machine (README, "An eighth measurement day"): resting up
// to twice a batch's time kept spends' p99 during a 1,000,000-grant sweep
// at 1.42-1.70x idle, against 1.86-2.09x when resting half of it.
const sweepPause = 2

// sweepBudget is the share of the schedule's period a sweep aims to finish
// in: it rests less when resting would carry it past that (54 s of the
// default one-minute period).
const sweepBudget = 0.9

// Work implements river.Worker.
func (w *ExpireCreditsWorker) Work(ctx context.Context, job *river.Job[jobs.ExpireCredits]) error {
	opts := store.SweepOptions{BatchSize: expireBatch, BatchGrants: expireBatch, Pause: sweepPause}
	if w.period > 0 {
		opts.Deadline = time.Now().Add(time.Duration(float64(w.period) * sweepBudget))
	}
	total, err := w.store.ExpireOverdue(ctx, opts, func(res store.ExpireResult) {
		if w.metrics == nil {
			return
		}
		for kind, n := range res.ByKind {
			w.metrics.CreditsExpired.WithLabelValues(kind).Add(float64(n))
		}
	})
	if errors.Is(err, store.ErrSweepRunning) {
		// The sweep still running (a long backlog) goes on with what
		// this one would have done.
		w.logger.InfoContext(ctx, "expiry sweep skipped: another sweep is running")
		return nil
	}
	if total.Grants > 0 {
		w.logger.InfoContext(ctx, "expired credits", "grants", total.Grants, "credits", total.Credits)
	}
	if len(total.Held) > 0 {
		// A transaction left open holds these accounts: their expired
		// grants stay open (and unspendable) until a later sweep.
		w.logger.WarnContext(ctx, "expiry sweep left users whose account another transaction holds",
			"user_ids", total.Held, "waited", store.HeldAccountWait)
	}
	return err
}

// PruneExpiredWorker deletes expired sessions, used or expired one-time
// tokens and finished rate-limit windows.
type PruneExpiredWorker struct {
	river.WorkerDefaults[jobs.PruneExpired]
	logger *slog.Logger
	store  *store.Store
}

// Work implements river.Worker.
func (w *PruneExpiredWorker) Work(ctx context.Context, job *river.Job[jobs.PruneExpired]) error {
	n, err := w.store.PruneExpired(ctx)
	if err != nil {
		return err
	}
	w.logger.DebugContext(ctx, "pruned expired rows", "rows", n)
	return nil
}
