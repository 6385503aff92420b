package workers

import (
	"context"
	"log/slog"
	"time"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
)

// Gauges keeps the leader-only gauges fresh: queue depth and oldest job age
// (a bounded, time-limited query), the expiry sweep's watermark, the
// credit liability and the live subscriptions. Only the River leader
// queries, so N workers cost one
// query, not N; the others clear their gauges so dashboards never add
// stale copies.
type Gauges struct {
	logger            *slog.Logger
	store             *store.Store
	metrics           *observability.Metrics
	clientID          func() string
	queueInterval     time.Duration
	liabilityInterval time.Duration
	sweepGap          time.Duration
}

// NewGauges builds the gauge loop; clientID is the River client's ID and
// sweepGap the longest time between two scheduled expiry sweeps
// (LongestScheduleGap), exported beside the sweep's watermark so the lag
// alert scales with EXPIRE_CREDITS_SCHEDULE.
func NewGauges(logger *slog.Logger, st *store.Store, m *observability.Metrics, clientID func() string, liabilityInterval, sweepGap time.Duration) *Gauges {
	return &Gauges{logger: logger, store: st, metrics: m, clientID: clientID, queueInterval: 15 * time.Second, liabilityInterval: liabilityInterval, sweepGap: sweepGap}
}

// Run refreshes the gauges until ctx ends.
func (g *Gauges) Run(ctx context.Context) {
	queueTick := time.NewTicker(g.queueInterval)
	defer queueTick.Stop()
	liabilityTick := time.NewTicker(g.liabilityInterval)
	defer liabilityTick.Stop()
	// Leadership is checked more often than the gauges are refreshed, so
	// a newly elected leader exports them at once rather than a whole
	// interval later.
	leaderTick := time.NewTicker(2 * time.Second)
	defer leaderTick.Stop()
	g.RefreshQueues(ctx)
	g.RefreshSweep(ctx)
	g.RefreshLiability(ctx)
	wasLeader := g.leader(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-queueTick.C:
			g.RefreshQueues(ctx)
			g.RefreshSweep(ctx)
		case <-liabilityTick.C:
			g.RefreshLiability(ctx)
		case <-leaderTick.C:
			isLeader := g.leader(ctx)
			if isLeader && !wasLeader {
				g.RefreshQueues(ctx)
				g.RefreshSweep(ctx)
				g.RefreshLiability(ctx)
			}
			wasLeader = isLeader
		}
	}
}

func (g *Gauges) leader(ctx context.Context) bool {
	id, err := g.store.RiverLeaderID(ctx)
	if err != nil {
		g.logger.WarnContext(ctx, "read river leader", "err", err)
		return false
	}
	return id != "" && id == g.clientID()
}

// RefreshQueues updates queue depth and oldest-job age when leader.
func (g *Gauges) RefreshQueues(ctx context.Context) {
	if !g.leader(ctx) {
		// Not (or no longer) the leader: export nothing, its refresh
		// time included, so no panel shows a former leader's stale age.
		g.metrics.QueueJobs.Reset()
		g.metrics.QueueOldestAge.Reset()
		g.metrics.MetricsRefreshAge.DeleteLabelValues("queues")
		return
	}
	stats, oldest, err := g.store.QueueStats(ctx, 100_000, 2*time.Second)
	if err != nil {
		g.logger.WarnContext(ctx, "queue stats", "err", err)
		return
	}
	g.metrics.QueueJobs.Reset()
	// Known queues always have a series, so "no backlog" reads as 0, not absent.
	for q := range jobs.Queues() {
		for _, st := range []string{"available", "scheduled", "retryable", "running"} {
			g.metrics.QueueJobs.WithLabelValues(q, st).Set(0)
		}
		g.metrics.QueueOldestAge.WithLabelValues(q).Set(0)
	}
	for _, s := range stats {
		g.metrics.QueueJobs.WithLabelValues(s.Queue, s.State).Set(float64(s.Jobs))
	}
	for q, age := range oldest {
		g.metrics.QueueOldestAge.WithLabelValues(q).Set(age)
	}
	g.metrics.MetricsRefreshAge.WithLabelValues("queues").SetToCurrentTime()
}

// RefreshSweep updates the expiry sweep's watermark when leader. A failed
// read (within 2 s) leaves the last value, which then ages like a sweep
// that is behind, so a watermark query that keeps failing shows as a lag;
// but while the database cannot be reached at all no worker knows it
// leads, and every worker clears these gauges (other alerts fire then).
func (g *Gauges) RefreshSweep(ctx context.Context) {
	if !g.leader(ctx) {
		g.metrics.SweptThrough.Reset()
		g.metrics.SweepScheduleGap.Reset()
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	at, err := g.store.SweptThrough(qctx)
	if err != nil {
		g.logger.WarnContext(ctx, "expiry sweep watermark", "err", err)
		return
	}
	g.metrics.SweptThrough.WithLabelValues().Set(float64(at.UnixMilli()) / 1000)
	g.metrics.SweepScheduleGap.WithLabelValues().Set(g.sweepGap.Seconds())
}

// RefreshLiability updates the money gauges when leader: the
// outstanding credits ("liability" refresh time) and the live
// subscriptions ("subscriptions"), each stamped only when it was read.
func (g *Gauges) RefreshLiability(ctx context.Context) {
	m := g.metrics
	if !g.leader(ctx) {
		m.CreditsOutstanding.Reset()
		m.CreditsExpiring7d.Reset()
		m.Subscriptions.Reset()
		m.SubscriptionsCanceling.Reset()
		m.SubscriptionsMonthlyMinor.Reset()
		m.MetricsRefreshAge.DeleteLabelValues("liability")
		m.MetricsRefreshAge.DeleteLabelValues("subscriptions")
		return
	}
	if l, err := g.store.CreditLiability(ctx); err != nil {
		g.logger.WarnContext(ctx, "credit liability", "err", err)
	} else {
		for kind, n := range l.ByKind {
			m.CreditsOutstanding.WithLabelValues(kind).Set(float64(n))
		}
		m.CreditsExpiring7d.WithLabelValues().Set(float64(l.Expiring7d))
		m.MetricsRefreshAge.WithLabelValues("liability").SetToCurrentTime()
	}
	plans, err := g.store.LiveSubscriptions(ctx)
	if err != nil {
		g.logger.WarnContext(ctx, "live subscriptions", "err", err)
		return
	}
	// Every plan for sale has its series (0 when it has no subscriber);
	// a plan that is neither sold nor live any more loses its own.
	// A plan sold in two currencies has a row for each.
	type counts struct{ active, pastDue, canceling int64 }
	byPlan, monthly := map[string]counts{}, map[string]int64{}
	for _, p := range plans {
		c := byPlan[p.PlanCode]
		c.active += p.Active
		c.pastDue += p.PastDue
		c.canceling += p.Canceling
		byPlan[p.PlanCode] = c
		monthly[p.Currency] += p.MonthlyMinor
	}
	m.Subscriptions.Reset()
	m.SubscriptionsCanceling.Reset()
	m.SubscriptionsMonthlyMinor.Reset()
	for plan, c := range byPlan {
		m.Subscriptions.WithLabelValues(plan, store.SubActive).Set(float64(c.active))
		m.Subscriptions.WithLabelValues(plan, store.SubPastDue).Set(float64(c.pastDue))
		m.SubscriptionsCanceling.WithLabelValues(plan).Set(float64(c.canceling))
	}
	for cur, n := range monthly {
		m.SubscriptionsMonthlyMinor.WithLabelValues(cur).Set(float64(n))
	}
	m.MetricsRefreshAge.WithLabelValues("subscriptions").SetToCurrentTime()
}
