// Package workers does QuickScale's background work, one file per job kind:
// applying Stripe events, sending email, sweeping expired credits and
// pruning expired rows; plus the periodic schedules and the leader-only
// gauges. Only workers send email and render receipts.
package workers

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/riverqueue/river"
	"github.com/robfig/cron/v3"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
)

// Config is what the workers need to know.
type Config struct {
	BaseURL  string
	MailFrom string
	// ExpireSchedule is a five-field cron spec, evaluated in UTC.
	ExpireSchedule string
	// Gateway is the payment provider (Stripe or the simulator), for jobs
	// that tell it something; nil leaves those jobs unregistered.
	Gateway billing.Gateway
}

// Register adds every worker to ws.
func Register(ws *river.Workers, logger *slog.Logger, cfg Config, st *store.Store, inserter jobs.Inserter, mailer Mailer, metrics *observability.Metrics) error {
	tmpl, err := loadEmailTemplates()
	if err != nil {
		return err
	}
	if err := river.AddWorkerSafely(ws, &SendEmailWorker{logger: logger, store: st, mailer: mailer, from: cfg.MailFrom, baseURL: strings.TrimRight(cfg.BaseURL, "/"), templates: tmpl}); err != nil {
		return err
	}
	if err := river.AddWorkerSafely(ws, &StripeEventWorker{logger: logger, store: st, inserter: inserter, metrics: metrics, baseURL: cfg.BaseURL}); err != nil {
		return err
	}
	period, err := schedulePeriod(cfg.ExpireSchedule)
	if err != nil {
		return fmt.Errorf("expire schedule: %w", err)
	}
	if err := river.AddWorkerSafely(ws, &ExpireCreditsWorker{logger: logger, store: st, metrics: metrics, period: period}); err != nil {
		return err
	}
	if err := river.AddWorkerSafely(ws, &RollupUsageWorker{logger: logger, store: st}); err != nil {
		return err
	}
	if cfg.Gateway != nil {
		if err := river.AddWorkerSafely(ws, &SyncCustomerEmailWorker{store: st, gateway: cfg.Gateway}); err != nil {
			return err
		}
		if err := river.AddWorkerSafely(ws, &CancelSubscriptionWorker{store: st, gateway: cfg.Gateway}); err != nil {
			return err
		}
		if err := river.AddWorkerSafely(ws, &CloseCheckoutWorker{store: st, gateway: cfg.Gateway, metrics: metrics}); err != nil {
			return err
		}
	}
	return river.AddWorkerSafely(ws, &PruneExpiredWorker{logger: logger, store: st})
}

// schedulePeriod is the time between the next two runs of a five-field cron
// spec in UTC (0 for no spec).
func schedulePeriod(spec string) (time.Duration, error) {
	if spec == "" {
		return 0, nil
	}
	sched, err := cron.ParseStandard("CRON_TZ=UTC " + spec)
	if err != nil {
		return 0, err
	}
	next := sched.Next(time.Now())
	return sched.Next(next).Sub(next), nil
}

// LongestScheduleGap is the longest time between two consecutive runs of a
// five-field cron spec in UTC, looking five years ahead from from: one
// tick apart for regular specs, over the weekend for "0 9 * * 1-5", eleven
// months for "* * * 2 *". The gaps of the first 20,000 runs are measured
// exactly; beyond them it measures the wait for the next run from every
// hour (and from each run, where runs are further apart), so a gap found
// there may be short by up to an hour. A spec that does not run within
// five years is an error.
func LongestScheduleGap(spec string, from time.Time) (time.Duration, error) {
	sched, err := cron.ParseStandard("CRON_TZ=UTC " + spec)
	if err != nil {
		return 0, err
	}
	const horizon = 5 * 366 * 24 * time.Hour
	end := from.Add(horizon)
	first := sched.Next(from)
	if first.IsZero() || first.After(end) {
		return 0, fmt.Errorf("%q does not run within five years", spec)
	}
	var longest time.Duration
	prev := first
	for range 20_000 {
		next := sched.Next(prev)
		if next.IsZero() { // none within five years of prev
			return horizon, nil
		}
		longest = max(longest, next.Sub(prev))
		if next.After(end) {
			return longest, nil
		}
		prev = next
	}
	for x := prev; !x.After(end); {
		next := sched.Next(x)
		if next.IsZero() {
			return horizon, nil
		}
		longest = max(longest, next.Sub(x))
		if x = x.Add(time.Hour); next.After(x) {
			x = next
		}
	}
	return longest, nil
}

// PeriodicJobs are the schedules the River leader enqueues (once across all
// worker processes).
func PeriodicJobs(cfg Config) ([]*river.PeriodicJob, error) {
	expire, err := cron.ParseStandard("CRON_TZ=UTC " + cfg.ExpireSchedule)
	if err != nil {
		return nil, fmt.Errorf("expire schedule: %w", err)
	}
	return []*river.PeriodicJob{
		river.NewPeriodicJob(expire, func() (river.JobArgs, *river.InsertOpts) { return jobs.ExpireCredits{}, nil },
			&river.PeriodicJobOpts{ID: "expire_credits", RunOnStart: true}),
		river.NewPeriodicJob(river.PeriodicInterval(jobs.RollupInterval), func() (river.JobArgs, *river.InsertOpts) { return jobs.RollupUsage{}, nil },
			&river.PeriodicJobOpts{ID: "rollup_usage", RunOnStart: true}),
		river.NewPeriodicJob(river.PeriodicInterval(jobs.PruneInterval), func() (river.JobArgs, *river.InsertOpts) { return jobs.PruneExpired{}, nil },
			&river.PeriodicJobOpts{ID: "prune_expired", RunOnStart: true}),
	}, nil
}
