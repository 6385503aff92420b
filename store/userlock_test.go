package store_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// smallStore is a store on a fresh database with a pool of n connections.
func smallStore(t *testing.T, n int32) (*store.Store, *pgxpool.Pool) {
	t.Helper()
	pool, err := store.OpenPool(context.Background(), storetest.NewDatabase(t), store.PoolOptions{MaxConns: n})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return store.New(pool, nil), pool
}

// One user's locked work runs one at a time; many requests at once on a
// small pool (each holder's work needing another connection) all finish:
// waiting for the lock never takes the connections the holder needs.
func TestWithUserLockRunsOneAtATimeWithoutTakingThePool(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, pool := smallStore(t, 4)

	var running, most, done atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := st.WithUserLock(ctx, "test", 42, func() error {
				n := running.Add(1)
				defer running.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				var one int
				return pool.QueryRow(ctx, `SELECT 1`).Scan(&one)
			})
			if err == nil {
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int32(8), done.Load(), "every request's work ran")
	require.Equal(t, int32(1), most.Load(), "one at a time")
	var held int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&held))
	require.Zero(t, held, "no lock left held")
}

// One user's burst of requests queues on its own: another user's runs
// while they wait, however many there are.
func TestWithUserLockQueuesOneUsersBurstApart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, _ := smallStore(t, 8)

	held, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = st.WithUserLock(ctx, "test", 1, func() error { close(held); <-release; return nil })
	}()
	<-held
	var burst atomic.Int32
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st.WithUserLock(ctx, "test", 1, func() error { return nil }) == nil {
				burst.Add(1)
			}
		}()
	}
	storetest.WaitFor(t, "the burst queued behind the first", func() bool { return st.UserLockQueued("test", 1) == 7 })
	other, cancelOther := context.WithTimeout(ctx, 10*time.Second)
	defer cancelOther()
	ran := false
	require.NoError(t, st.WithUserLock(other, "test", 2, func() error { ran = true; return nil }), "another user waited behind the burst")
	require.True(t, ran)
	require.Zero(t, burst.Load(), "the burst waits while the first holds the lock")
	close(release)
	wg.Wait()
	require.Equal(t, int32(6), burst.Load())
}
