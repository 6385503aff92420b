package workers

import (
	"context"
	"log/slog"
	"time"

	"github.com/riverqueue/river"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// rollupBudget is how long one run recomputes days: a first run over a
// long history stops after it and the next run (jobs.RollupInterval later)
// goes on where it stopped.
const rollupBudget = time.Minute

// RollupUsageWorker keeps the daily usage analytics current
// (store.RollupUsage).
type RollupUsageWorker struct {
	river.WorkerDefaults[jobs.RollupUsage]
	logger *slog.Logger
	store  *store.Store
}

// Timeout implements river.Worker: the budget, and time for its last day.
func (w *RollupUsageWorker) Timeout(*river.Job[jobs.RollupUsage]) time.Duration {
	return rollupBudget + 2*time.Minute
}

// Work implements river.Worker.
func (w *RollupUsageWorker) Work(ctx context.Context, job *river.Job[jobs.RollupUsage]) error {
	res, err := w.store.RollupUsage(ctx, time.Now().Add(rollupBudget))
	if err != nil {
		return err
	}
	level := slog.LevelDebug
	if !res.CaughtUp {
		level = slog.LevelInfo
	}
	w.logger.Log(ctx, level, "usage analytics rolled up", "days", res.Days, "final_through", res.FinalThrough.Format("2006-01-02"),
		"as_of", res.AsOf, "caught_up", res.CaughtUp)
	return nil
}
