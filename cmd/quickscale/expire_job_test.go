package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A worker killed mid-sweep leaves its job "running" until River rescues it
// (15 minutes). The sweeps scheduled meanwhile must run all the same: the
// job is unique per scheduled minute, not across minutes. Sweeps still do
// not overlap: one that starts while another holds the sweep lock completes
// without sweeping, and the next goes ahead once the holder is gone.
func TestSweepsGoOnAfterAWorkerDiedMidSweep(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	ctx := context.Background()
	pool := ta.store.Pool()
	ta.waitJob("expire_credits", 20*time.Second) // the run on start
	open := func(grantID int64) bool {
		var closed bool
		require.NoError(t, pool.QueryRow(ctx, `SELECT closed_at IS NOT NULL FROM grants WHERE id = $1`, grantID).Scan(&closed))
		return !closed
	}
	// Inserts an expire_credits job as River's periodic enqueuer does, for
	// the run scheduled at minute at.
	scheduled := func(at time.Time, pending bool) *insertedJob {
		res, err := ta.app.river.Insert(ctx, jobs.ExpireCredits{}, &river.InsertOpts{ScheduledAt: at, Pending: pending})
		require.NoError(t, err)
		return &insertedJob{id: res.Job.ID, skipped: res.UniqueSkippedAsDuplicate}
	}
	// Waits for job id to finish and returns how.
	finished := func(id int64) river.EventKind {
		for {
			if ev := ta.waitJob("expire_credits", 20*time.Second); ev.Job.ID == id {
				return ev.Kind
			}
		}
	}
	minute := time.Now().UTC().Truncate(time.Minute)

	// The job of a worker killed mid-sweep: running, and no process works it.
	dead := scheduled(minute.Add(-2*time.Minute), true)
	require.False(t, dead.skipped)
	_, err := pool.Exec(ctx, `UPDATE river_job SET state = 'running', attempt = 1, attempted_at = now(), attempted_by = ARRAY['killed-worker'] WHERE id = $1`, dead.id)
	require.NoError(t, err)
	require.True(t, scheduled(minute.Add(-2*time.Minute), false).skipped, "a second job for the dead job's own minute")

	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	first := storetest.BackdatedGrant(t, pool, u.ID, store.GrantPromo, 7, time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
	next := scheduled(minute.Add(-time.Minute), false)
	require.False(t, next.skipped, "the next minute's sweep was held back by the dead worker's job")
	require.Equal(t, river.EventKindJobCompleted, finished(next.id))
	require.False(t, open(first), "the next minute's sweep did not expire the overdue grant")

	// Another sweep holds the lock (a long backlog): the job completes, and
	// sweeps nothing.
	holder, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	require.NoError(t, err)
	t.Cleanup(func() { holder.Close(context.Background()) })
	// The minute's scheduled sweep may hold the lock for a moment.
	eventually(t, 20*time.Second, "the sweep lock", func() bool {
		var got bool
		require.NoError(t, holder.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+store.SweepLockKey+`)`).Scan(&got))
		return got
	})
	second := storetest.BackdatedGrant(t, pool, u.ID, store.GrantPromo, 9, time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
	beside := scheduled(minute.Add(-3*time.Minute), false)
	require.False(t, beside.skipped)
	require.Equal(t, river.EventKindJobCompleted, finished(beside.id), "a sweep finding another running must not fail (and be retried)")
	require.True(t, open(second), "two sweeps ran at once")

	// The holder's process dies: its connection goes, and the lock with it.
	require.NoError(t, holder.Close(ctx))
	after := scheduled(minute.Add(-4*time.Minute), false)
	require.False(t, after.skipped)
	require.Equal(t, river.EventKindJobCompleted, finished(after.id))
	require.False(t, open(second), "the sweep after the holder died did not expire the overdue grant")
}

type insertedJob struct {
	id      int64
	skipped bool
}
