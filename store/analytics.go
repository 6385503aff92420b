package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// RollupLag is how far behind now usage analytics are rolled up: a spend's
// usage carries its transaction's start time and commits within its
// request's deadline (30 s), so by then every spend of the window is in.
const RollupLag = 5 * time.Minute

// RollupResult says what one RollupUsage call did.
type RollupResult struct {
	// Days is how many days it recomputed (each in its own transaction).
	Days int
	// FinalThrough: the days before it are final; AsOf: the figures count
	// every spend made before it (today's less the lag, once caught up).
	FinalThrough time.Time
	AsOf         time.Time
	// CaughtUp: every day up to AsOf's is rolled up.
	CaughtUp bool
}

// RollupUsage recomputes the daily usage rollup (spends and credits by day,
// in UTC, and service) from the first day not final up to now less
// RollupLag, one day per transaction, until it is caught up or deadline
// passes (a first run over a long history goes on in the next run). Runs
// at once take turns on the state row.
func (s *Store) RollupUsage(ctx context.Context, deadline time.Time) (RollupResult, error) {
	var res RollupResult
	// Pages not yet summarised by the BRIN index are read by every search
	// of it; autovacuum summarises full ranges (autosummarize), but not
	// where it is off or behind. Summarising is incremental; it waits a
	// second at most for a vacuum of usages, and is skipped then.
	if err := s.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '1s'`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT brin_summarize_new_values('usages_created_at_brin')`)
		return err
	}); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" { // lock_not_available
			return res, err
		}
	}
	for {
		var done bool
		err := s.InTx(ctx, func(tx pgx.Tx) error {
			var final *time.Time
			var asOf time.Time
			if err := tx.QueryRow(ctx, `SELECT final_through::timestamp FROM analytics_rollup_state FOR UPDATE`).Scan(&final); err != nil {
				return err
			}
			// The time is read once the state is ours: a run that waited
			// for another must not roll up to an earlier instant than it.
			if err := tx.QueryRow(ctx, `SELECT clock_timestamp() - $1::interval`, RollupLag.String()).Scan(&asOf); err != nil {
				return err
			}
			asOf = asOf.UTC()
			asOfDay := asOf.Truncate(24 * time.Hour)
			day := asOfDay
			if final != nil {
				day = final.UTC()
			} else {
				// The first run starts on the day of the first account:
				// no spend is older.
				var first *time.Time
				if err := tx.QueryRow(ctx, `SELECT (SELECT created_at FROM users ORDER BY id LIMIT 1)`).Scan(&first); err != nil {
					return err
				}
				if first != nil && first.Before(asOfDay) {
					day = first.UTC().Truncate(24 * time.Hour)
				}
			}
			if day.After(asOfDay) {
				// (Only with a clock gone back.) Nothing is recomputed
				// with fewer spends than before.
				done = true
				res.CaughtUp = true
				return nil
			}
			end := day.Add(24 * time.Hour)
			if end.After(asOf) {
				end = asOf
			}
			if _, err := tx.Exec(ctx, `DELETE FROM analytics_daily_usage WHERE day = $1::date`, day); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
INSERT INTO analytics_daily_usage (day, service_id, uses, credits)
SELECT $1::date, service_id, count(*), sum(credits) FROM usages
 WHERE created_at >= $2 AND created_at < $3 GROUP BY service_id`, day, day, end); err != nil {
				return err
			}
			next := day
			if !end.Before(day.Add(24 * time.Hour)) {
				next = day.Add(24 * time.Hour) // the whole day is in: final
			}
			// The figures now count every spend made before end: all of
			// an old day's while catching up, today's up to now less the
			// lag.
			if _, err := tx.Exec(ctx, `UPDATE analytics_rollup_state SET final_through = $1::date, as_of = $2, rolled_at = now()`, next, end); err != nil {
				return err
			}
			res.Days++
			res.FinalThrough, res.AsOf = next, end
			done = day.Equal(asOfDay)
			res.CaughtUp = done
			return nil
		})
		if err != nil || done || !time.Now().Before(deadline) {
			return res, err
		}
	}
}

// UsageAnalytics is the rolled-up usage of a range of days.
type UsageAnalytics struct {
	// ByService: uses and credits per service over the range, most
	// credits first.
	ByService []ServiceUsage
	// ByDay: credits and uses per day, newest first (days without spends
	// left out).
	ByDay         []DayUsage
	Uses, Credits int64
	// FinalThrough and AsOf are the rollup's state (nil: it never ran).
	FinalThrough, AsOf *time.Time
}

// ServiceUsage is one service's usage over a range.
type ServiceUsage struct {
	ServiceID int64  `db:"service_id"`
	Slug      string `db:"slug"`
	Name      string `db:"name"`
	Uses      int64  `db:"uses"`
	Credits   int64  `db:"credits"`
}

// DayUsage is one day's usage.
type DayUsage struct {
	Day     time.Time `db:"day"`
	Uses    int64     `db:"uses"`
	Credits int64     `db:"credits"`
}

// UsageBetween reads the usage rollup of the days from first to last
// (dates in UTC, both included).
func (s *Store) UsageBetween(ctx context.Context, first, last time.Time) (UsageAnalytics, error) {
	var ua UsageAnalytics
	if err := s.pool.QueryRow(ctx, `SELECT final_through::timestamp, as_of FROM analytics_rollup_state`).Scan(&ua.FinalThrough, &ua.AsOf); err != nil {
		return ua, err
	}
	rows, err := s.pool.Query(ctx, `
SELECT a.service_id, sv.slug, sv.name, sum(a.uses)::bigint AS uses, sum(a.credits)::bigint AS credits
  FROM analytics_daily_usage a JOIN services sv ON sv.id = a.service_id
 WHERE a.day BETWEEN $1::date AND $2::date
 GROUP BY a.service_id, sv.slug, sv.name ORDER BY credits DESC, uses DESC, sv.slug`, first, last)
	if err != nil {
		return ua, err
	}
	if ua.ByService, err = pgx.CollectRows(rows, pgx.RowToStructByName[ServiceUsage]); err != nil {
		return ua, err
	}
	rows, err = s.pool.Query(ctx, `
SELECT day::timestamp AS day, sum(uses)::bigint AS uses, sum(credits)::bigint AS credits
  FROM analytics_daily_usage WHERE day BETWEEN $1::date AND $2::date
 GROUP BY day ORDER BY day DESC`, first, last)
	if err != nil {
		return ua, err
	}
	if ua.ByDay, err = pgx.CollectRows(rows, pgx.RowToStructByName[DayUsage]); err != nil {
		return ua, err
	}
	for _, d := range ua.ByDay {
		ua.Uses += d.Uses
		ua.Credits += d.Credits
	}
	return ua, nil
}

// DayRevenue is one day's money in one currency: payments paid that day
// and refunds made that day (of payments of any day).
type DayRevenue struct {
	Day          time.Time `db:"day"`
	Currency     string    `db:"currency"`
	Payments     int64     `db:"payments"`
	RevenueMinor int64     `db:"revenue_minor"`
	// SubscriptionMinor is the part of RevenueMinor paid for plans.
	SubscriptionMinor int64 `db:"subscription_minor"`
	Refunds           int64 `db:"refunds"`
	RefundedMinor     int64 `db:"refunded_minor"`
}

// RevenueBetween reads, live, each day's payments and refunds from first
// to last (dates in UTC, both included), newest first; days without either
// are left out. A refund counts on its own day (Stripe's time of it; for
// refunds recorded before migration 00020, when it was recorded).
func (s *Store) RevenueBetween(ctx context.Context, first, last time.Time) ([]DayRevenue, error) {
	rows, err := s.pool.Query(ctx, `
WITH w AS (SELECT $1::date::timestamp AT TIME ZONE 'UTC' AS lo, ($2::date + 1)::timestamp AT TIME ZONE 'UTC' AS hi)
SELECT day::timestamp AS day, currency, sum(payments)::bigint AS payments, sum(revenue)::bigint AS revenue_minor,
       sum(subscription)::bigint AS subscription_minor, sum(refunds)::bigint AS refunds, sum(refunded)::bigint AS refunded_minor
  FROM (SELECT (p.paid_at AT TIME ZONE 'UTC')::date AS day, p.currency, count(*) AS payments, sum(p.amount_minor) AS revenue,
               coalesce(sum(p.amount_minor) FILTER (WHERE p.product = 'subscription'), 0) AS subscription,
               0 AS refunds, 0 AS refunded
          FROM payments p, w WHERE p.paid_at >= w.lo AND p.paid_at < w.hi
         GROUP BY 1, 2
        UNION ALL
        SELECT (coalesce(r.refunded_at, r.recorded_at) AT TIME ZONE 'UTC')::date, p.currency, 0, 0, 0, count(*), sum(r.amount_minor)
          FROM payment_refunds r JOIN payments p ON p.id = r.payment_id, w
         WHERE coalesce(r.refunded_at, r.recorded_at) >= w.lo AND coalesce(r.refunded_at, r.recorded_at) < w.hi
         GROUP BY 1, 2) x
 GROUP BY day, currency ORDER BY day DESC, currency`, first, last)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[DayRevenue])
}

// PlanSubscriptions counts one plan's subscriptions in one currency: those
// live now, and those that started (their first invoice was paid) and
// ended since a day.
type PlanSubscriptions struct {
	PlanCode string `db:"plan_code"`
	PlanName string `db:"plan_name"`
	Currency string `db:"currency"`
	Active   int64  `db:"active"`
	PastDue  int64  `db:"past_due"`
	// Canceling are live subscriptions set to end with their period.
	Canceling int64 `db:"canceling"`
	// MonthlyMinor is what the live subscriptions bill a month: the sum
	// of their prices (monthly recurring revenue), canceling ones included
	// until they end.
	MonthlyMinor int64 `db:"monthly_minor"`
	Started      int64 `db:"started"`
	Ended        int64 `db:"ended"`
}

// Live counts the plan's live subscriptions: active and past due.
func (p PlanSubscriptions) Live() int64 { return p.Active + p.PastDue }

// SubscriptionsSince counts, by plan and currency, the subscriptions live
// now and those started and ended since the day first (a date in UTC). A
// start counts under the plan its first invoice paid for (a subscription
// may switch plans later); live ones and ends under the plan they are on.
// An end is counted by its provider's time, which the simulator's clock
// may date after today (it ends a period ahead of time). Every plan for
// sale has a row in its own currency, with noughts when nothing counts; a
// plan no longer sold has one only when something does.
func (s *Store) SubscriptionsSince(ctx context.Context, first time.Time) ([]PlanSubscriptions, error) {
	lo := time.Date(first.Year(), first.Month(), first.Day(), 0, 0, 0, 0, time.UTC)
	return s.subscriptionCounts(ctx, &lo)
}

// LiveSubscriptions counts the live subscriptions by plan and currency
// (SubscriptionsSince without starts and ends: the leader's gauges).
func (s *Store) LiveSubscriptions(ctx context.Context) ([]PlanSubscriptions, error) {
	return s.subscriptionCounts(ctx, nil)
}

func (s *Store) subscriptionCounts(ctx context.Context, lo *time.Time) ([]PlanSubscriptions, error) {
	// lo is a parameter, not a CTE's column, so that the planner sees the
	// range: a day's first payments are then found through the paid_at
	// index and each checked against its subscription's earlier ones.
	rows, err := s.pool.Query(ctx, `
WITH live AS (
  SELECT plan_code, currency, count(*) FILTER (WHERE status = 'active') AS active,
         count(*) FILTER (WHERE status = 'past_due') AS past_due,
         count(*) FILTER (WHERE cancel_at_period_end) AS canceling, sum(price_minor) AS monthly
    FROM subscriptions WHERE status IN ('active', 'past_due') GROUP BY 1, 2),
started AS (
  SELECT p.plan_code, p.currency, count(*) AS n
    FROM payments p
   WHERE $1::timestamptz IS NOT NULL AND p.paid_at >= $1 AND p.subscription_id IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM payments q
                      WHERE q.subscription_id = p.subscription_id AND q.paid_at IS NOT NULL
                        AND (q.paid_at, q.id) < (p.paid_at, p.id))
   GROUP BY 1, 2),
ended AS (
  SELECT plan_code, currency, count(*) AS n FROM subscriptions
   WHERE $1::timestamptz IS NOT NULL AND canceled_at >= $1 GROUP BY 1, 2),
k AS (
  SELECT code AS plan_code, currency FROM plans WHERE active
  UNION SELECT plan_code, currency FROM live
  UNION SELECT plan_code, currency FROM started
  UNION SELECT plan_code, currency FROM ended)
SELECT k.plan_code, pl.name AS plan_name, k.currency,
       coalesce(l.active, 0)::bigint AS active, coalesce(l.past_due, 0)::bigint AS past_due,
       coalesce(l.canceling, 0)::bigint AS canceling, coalesce(l.monthly, 0)::bigint AS monthly_minor,
       coalesce(st.n, 0)::bigint AS started, coalesce(e.n, 0)::bigint AS ended
  FROM k JOIN plans pl ON pl.code = k.plan_code
  LEFT JOIN live l ON l.plan_code = k.plan_code AND l.currency = k.currency
  LEFT JOIN started st ON st.plan_code = k.plan_code AND st.currency = k.currency
  LEFT JOIN ended e ON e.plan_code = k.plan_code AND e.currency = k.currency
 ORDER BY pl.sort, pl.credits_per_period, k.currency`, lo)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[PlanSubscriptions])
}
