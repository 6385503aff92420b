package store_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

func TestMigrateIsCurrentAfterTemplateClone(t *testing.T) {
	t.Parallel()
	pool := storetest.NewPool(t)
	st, err := store.Status(context.Background(), pool)
	require.NoError(t, err)
	if !st.Current() {
		t.Fatalf("fresh test database not current: %s", st.Problem())
	}
	if st.RiverTarget == 0 || st.AppTarget == 0 {
		t.Fatalf("targets not read: %+v", st)
	}
}

func TestMigrateConcurrentRunsApplyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := emptyDatabase(t)
	st, err := store.Status(ctx, pool)
	require.NoError(t, err)
	require.False(t, st.Current(), "empty database reported current")
	require.Contains(t, st.Problem(), "migrate up")

	const runners = 4
	results := make([]store.MigrateResult, runners)
	errs := make([]error, runners)
	var wg sync.WaitGroup
	for i := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
		}()
	}
	wg.Wait()
	appliedApp, appliedRiver := 0, 0
	for i := range runners {
		require.NoError(t, errs[i])
		appliedApp += len(results[i].App)
		appliedRiver += len(results[i].River)
	}
	st, err = store.Status(ctx, pool)
	require.NoError(t, err)
	require.True(t, st.Current(), st.Problem())
	if appliedApp != len(st.AppApplied) {
		t.Errorf("app migrations applied %d times in total, want each once (%d)", appliedApp, len(st.AppApplied))
	}
	if appliedRiver != st.RiverTarget {
		t.Errorf("river migrations applied %d times in total, want %d", appliedRiver, st.RiverTarget)
	}
	// A re-run finds nothing to do.
	again, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Empty(t, again.App)
	require.Empty(t, again.River)
}

// emptyDatabase is a test database with nothing in it: everything the
// migrated template brought is dropped.
func emptyDatabase(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool := storetest.NewPool(t)
	_, err := pool.Exec(context.Background(), `DROP SCHEMA public CASCADE; CREATE SCHEMA public`)
	require.NoError(t, err)
	return pool
}
