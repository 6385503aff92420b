package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The usage rollup counts each spend once, on its day (UTC), by service;
// spends younger than its lag wait for the next run; a run again changes
// nothing, and days that are final are not recomputed.
func TestRollupUsageCountsEachSpendOnItsDayOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, u, a := rollupSetup(t, 3)
	b := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	today := time.Now().UTC().Truncate(24 * time.Hour)
	d2, d1 := today.AddDate(0, 0, -2), today.AddDate(0, 0, -1)
	storetest.BackdatedUsage(t, st.Pool(), u.ID, a, 3, d2.Add(time.Second))
	storetest.BackdatedUsage(t, st.Pool(), u.ID, a, 4, d2.Add(24*time.Hour-time.Microsecond))
	storetest.BackdatedUsage(t, st.Pool(), u.ID, a, 5, d1)
	storetest.BackdatedUsage(t, st.Pool(), u.ID, b, 0, d1.Add(12*time.Hour))
	recent := time.Now().Add(-30 * time.Minute)
	storetest.BackdatedUsage(t, st.Pool(), u.ID, b, 7, recent)
	wantD1 := [2]int64{2, 5}
	if recent.Before(today) { // run in the first half hour of a day
		wantD1 = [2]int64{3, 12}
	}
	storetest.BackdatedUsage(t, st.Pool(), u.ID, b, 100, time.Now().Add(-time.Minute)) // within the lag

	res, err := st.RollupUsage(ctx, time.Now().Add(time.Minute))
	require.NoError(t, err)
	require.True(t, res.CaughtUp)
	require.GreaterOrEqual(t, res.Days, 4, "from the first account's day to today")
	check := func() {
		t.Helper()
		ua, err := st.UsageBetween(ctx, d2.AddDate(0, 0, -1), today)
		require.NoError(t, err)
		require.Equal(t, int64(5), ua.Uses, "the spend within the lag is not counted yet")
		require.Equal(t, int64(19), ua.Credits)
		require.Len(t, ua.ByService, 2)
		require.Equal(t, store.ServiceUsage{ServiceID: ua.ByService[0].ServiceID, Slug: a, Name: ua.ByService[0].Name, Uses: 3, Credits: 12}, ua.ByService[0])
		require.Equal(t, int64(2), ua.ByService[1].Uses)
		days := map[string][2]int64{}
		for _, d := range ua.ByDay {
			days[d.Day.Format("2006-01-02")] = [2]int64{d.Uses, d.Credits}
		}
		require.Equal(t, [2]int64{2, 7}, days[d2.Format("2006-01-02")], "day -2: %v", days)
		require.Equal(t, wantD1, days[d1.Format("2006-01-02")], "day -1: %v", days)
		require.NotNil(t, ua.AsOf)
		require.WithinDuration(t, time.Now().Add(-store.RollupLag), *ua.AsOf, time.Minute)
	}
	check()
	res, err = st.RollupUsage(ctx, time.Now().Add(time.Minute))
	require.NoError(t, err)
	require.True(t, res.CaughtUp)
	require.LessOrEqual(t, res.Days, 2, "a run again recomputes only the days not final (two when a day ended in between)")
	check()
	// A final day is not read again (a spend cannot land there any more).
	storetest.BackdatedUsage(t, st.Pool(), u.ID, a, 50, d2.Add(time.Hour))
	_, err = st.RollupUsage(ctx, time.Now().Add(time.Minute))
	require.NoError(t, err)
	check()
}

// A first run over a long history stops at its deadline, a day at least
// done, and the next run goes on where it stopped.
func TestRollupUsageGoesOnWhereItStopped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, u, svc := rollupSetup(t, 10)
	first := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -10)
	storetest.BackdatedUsage(t, st.Pool(), u.ID, svc, 2, first.Add(time.Hour))

	res, err := st.RollupUsage(ctx, time.Now())
	require.NoError(t, err)
	require.Equal(t, 1, res.Days)
	require.False(t, res.CaughtUp)
	require.True(t, res.FinalThrough.Equal(first.AddDate(0, 0, 1)), "final through %s", res.FinalThrough)
	ua, err := st.UsageBetween(ctx, first, time.Now().UTC())
	require.NoError(t, err)
	require.True(t, ua.AsOf.Equal(first.AddDate(0, 0, 1)), "while catching up, the figures are as of the end of the last day rolled up, not %s", ua.AsOf)
	runs := 1
	for !res.CaughtUp {
		res, err = st.RollupUsage(ctx, time.Now())
		require.NoError(t, err)
		runs++
		require.LessOrEqual(t, runs, 11)
	}
	want := int(res.AsOf.UTC().Truncate(24*time.Hour).Sub(first)/(24*time.Hour)) + 1
	require.Equal(t, want, runs, "one day a run, from the first account's day to the rollup's")
	ua, err = st.UsageBetween(ctx, first, time.Now().UTC())
	require.NoError(t, err)
	require.Equal(t, int64(2), ua.Credits)
}

// rollupSetup is a store whose first account was made days ago, and a
// service.
func rollupSetup(t *testing.T, days int) (*store.Store, store.User, string) {
	t.Helper()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	_, err := st.Pool().Exec(context.Background(), `UPDATE users SET created_at = now() - make_interval(days => $1)`, days)
	require.NoError(t, err)
	return st, u, storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
}

// A run that waited for another (which holds the rollup's state) rolls up
// to an instant read after its wait: the figures never go back to an
// earlier one.
func TestRollupUsageRunsAtOnceNeverGoBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, _, _ := rollupSetup(t, 1)
	hold, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer hold.Rollback(ctx)
	_, err = hold.Exec(ctx, `SELECT 1 FROM analytics_rollup_state FOR UPDATE`)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := st.RollupUsage(ctx, time.Now().Add(time.Minute))
		done <- err
	}()
	storetest.WaitFor(t, "the run to wait for the state", func() bool {
		var n int
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%analytics_rollup_state%'`).Scan(&n))
		return n == 1
	})
	// The other run, later, rolls up today to its own instant.
	var other time.Time
	require.NoError(t, hold.QueryRow(ctx, `
UPDATE analytics_rollup_state SET final_through = ((clock_timestamp() - interval '5 minutes') AT TIME ZONE 'UTC')::date,
       as_of = clock_timestamp() - interval '5 minutes', rolled_at = now()
RETURNING as_of`).Scan(&other))
	require.NoError(t, hold.Commit(ctx))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the run never ended")
	}
	ua, err := st.UsageBetween(ctx, time.Now().UTC().AddDate(0, 0, -1), time.Now().UTC())
	require.NoError(t, err)
	require.False(t, ua.AsOf.Before(other), "as of %s, before the other run's %s", ua.AsOf, other)
}

// A run summarises the pages of usages the BRIN index has not summarised
// yet (autovacuum does it only when it runs), so that a day's search reads
// that day's pages, not every page appended since.
func TestRollupUsageSummarisesNewUsagePages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, u, svc := rollupSetup(t, 1)
	_, err := st.Pool().Exec(ctx, `
WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true) AS on)
INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after, created_at)
SELECT $1, s.id, 1, 'summarise-' || i, 'test', 0, now() - interval '1 day' + i * interval '1 millisecond'
  FROM cfg, services s, generate_series(1, 40000) i WHERE s.slug = $2`, u.ID, svc)
	require.NoError(t, err)
	var pages int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT pg_relation_size('usages') / current_setting('block_size')::int`).Scan(&pages))
	require.Greater(t, pages, 256, "too few pages for two BRIN ranges")

	_, err = st.RollupUsage(ctx, time.Now().Add(time.Minute))
	require.NoError(t, err)
	var left int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT brin_summarize_new_values('usages_created_at_brin')`).Scan(&left))
	require.Zero(t, left, "ranges the run left unsummarised")
}
