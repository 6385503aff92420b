package store_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/quickscale/quickscale/store/storetest"
)

// BenchmarkRollupUsage times the usage analytics rollup (store.RollupUsage)
// on ten days of 100,000 spends and 100,000 today (unless the day is under
// ten minutes old): a first run over them all (each day one transaction: a
// BRIN search of usages and a GROUP BY), and a run once caught up, which
// recomputes today's spends only. A run has a
// minute (workers.rollupBudget) and runs every 5 minutes.
func BenchmarkRollupUsage(b *testing.B) {
	st, _ := benchStore(b, 4)
	ctx := context.Background()
	u := storetest.NewUser(b, st, storetest.UserOpts{})
	services := []string{
		storetest.NewService(b, st, storetest.ServiceOpts{Cost: 1}),
		storetest.NewService(b, st, storetest.ServiceOpts{Cost: 5}),
		storetest.NewService(b, st, storetest.ServiceOpts{Cost: 25}),
	}
	const days, perDay = 10, 100_000
	today := time.Now().UTC().Truncate(24 * time.Hour)
	if _, err := st.Pool().Exec(ctx, `UPDATE users SET created_at = $1`, today.AddDate(0, 0, -days)); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	// Oldest first, in time order, as spends are appended; today's up to
	// ten minutes ago (older than the rollup's lag), when the day is that
	// old.
	todays := 0
	if span := time.Since(today) - 10*time.Minute; span > 0 {
		todays = perDay
	}
	for d := days; d >= 0; d-- {
		day, span, n := today.AddDate(0, 0, -d), "24 hours", perDay
		if d == 0 {
			if todays == 0 {
				break
			}
			span = fmt.Sprintf("%d seconds", int((time.Since(today) - 10*time.Minute).Seconds()))
		}
		if _, err := st.Pool().Exec(ctx, `
WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true) AS on)
INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after, created_at)
SELECT $1, s.id, s.credit_cost, 'rollup-' || $4::text || '-' || i, 'bench', 0, $2::timestamptz + i * ($3::interval / $5::int)
  FROM cfg, generate_series(0, $5::int - 1) i
  JOIN services s ON s.slug = ($6::text[])[1 + i % 3]`,
			u.ID, day, span, day.Format("2006-01-02"), n, services); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := st.Pool().Exec(ctx, `VACUUM ANALYZE usages`); err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "(rollup setup: %d spends over %d days and %d today seeded in %s)\n", days*perDay, days, todays, time.Since(t0).Round(time.Second))

	t0 = time.Now()
	res, err := st.RollupUsage(ctx, time.Now().Add(10*time.Minute))
	first := time.Since(t0)
	if err != nil || !res.CaughtUp {
		b.Fatalf("first rollup: %+v, %v", res, err)
	}
	ua, err := st.UsageBetween(ctx, today.AddDate(0, 0, -days), today)
	if err != nil || ua.Uses != int64(days*perDay+todays) {
		b.Fatalf("rolled up %d spends, want %d (%v)", ua.Uses, days*perDay+todays, err)
	}
	t0 = time.Now()
	if _, err := st.RollupUsage(ctx, time.Now().Add(time.Minute)); err != nil {
		b.Fatal(err)
	}
	again := time.Since(t0)
	fmt.Fprintf(os.Stdout, "%-44s %10s  (%d days, %d spends; %s a day; a run has 1 minute)\n",
		"usage rollup, first run", first.Round(time.Millisecond), res.Days, days*perDay+todays, (first / time.Duration(res.Days)).Round(time.Millisecond))
	fmt.Fprintf(os.Stdout, "%-44s %10s  (today only: %d spends)\n", "usage rollup, a run caught up", again.Round(time.Millisecond), todays)
	b.ReportMetric(first.Seconds(), "first-run-s")
	b.ReportMetric(float64(again.Milliseconds()), "caught-up-ms")
}
