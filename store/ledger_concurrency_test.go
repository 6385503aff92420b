package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// TestLedgerInvariantsHoldUnderConcurrentLoad runs many goroutines that
// consume, grant, adjust and sweep on one hot user and several others at
// once, with grants expiring during the run, then checks the invariants of
// ARCHITECTURE.md and that exactly what clients were told succeeded was
// charged.
func TestLedgerInvariantsHoldUnderConcurrentLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	admin := storetest.NewUser(t, st, storetest.UserOpts{Admin: true})
	var users []store.User
	for range 6 {
		users = append(users, storetest.NewUser(t, st, storetest.UserOpts{}))
	}
	services := []string{
		storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1}),
		storetest.NewService(t, st, storetest.ServiceOpts{Cost: 7}),
		storetest.NewService(t, st, storetest.ServiceOpts{Cost: 25}),
		storetest.NewService(t, st, storetest.ServiceOpts{Cost: storetest.NoCost}),
	}
	costs := map[string]int64{services[0]: 1, services[1]: 7, services[2]: 25, services[3]: 0}
	start := time.Now()
	for i, u := range users {
		storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 200})
		// Subscription credits that expire in the middle of the run. They
		// are dated from start, not from when this line runs: on a loaded
		// machine setting up the users may take longer than 100 ms, and a
		// grant created after its expiry would be refused (the test then
		// failed in setup). Such a grant is simply overdue from the start.
		exp := start.Add(time.Duration(100+50*i) * time.Millisecond)
		storetest.BackdatedGrant(t, st.Pool(), u.ID, store.GrantSubscription, 150, start, exp)
		// And one already overdue, unswept: unspendable from the start.
		storetest.BackdatedGrant(t, st.Pool(), u.ID, store.GrantSubscription, 40, start.Add(-30*24*time.Hour), start.Add(-time.Second))
		later := start.Add(time.Hour)
		storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 50, ExpiresAt: &later})
	}

	const workers = 16
	const opsPerWorker = 120
	var (
		mu       sync.Mutex
		charged  = map[int64]int64{} // per user: credits of successful first-time consumes
		keysSeen = map[string]store.Usage{}
		// Replays are checked against the first usage after the load: the
		// creator records its usage only after its commit, and a replay
		// may be answered in between.
		replaysOf = map[string][]int64{}
		replays   atomic.Int64
		shortages atomic.Int64
		sweeps    atomic.Int64
	)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for i := range opsPerWorker {
				// Half the traffic goes to one hot user.
				u := users[0]
				if rng.IntN(2) == 1 {
					u = users[1+rng.IntN(len(users)-1)]
				}
				switch op := rng.IntN(100); {
				case op < 70:
					svc := services[rng.IntN(len(services))]
					// Some keys repeat across workers to exercise replays.
					key := fmt.Sprintf("w%d-%d", w, i)
					if rng.IntN(10) == 0 {
						key = fmt.Sprintf("shared-%d-%d", u.ID, rng.IntN(5))
						svc = services[0] // a shared key is always the same request
					}
					usage, replayed, err := st.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: key})
					var short *store.InsufficientCreditsError
					switch {
					case errors.As(err, &short):
						shortages.Add(1)
					case err != nil:
						errs <- fmt.Errorf("consume: %w", err)
						return
					default:
						mu.Lock()
						if replayed {
							replays.Add(1)
							replaysOf[fmt.Sprint(u.ID, key)] = append(replaysOf[fmt.Sprint(u.ID, key)], usage.ID)
						} else {
							if first, ok := keysSeen[fmt.Sprint(u.ID, key)]; ok {
								mu.Unlock()
								errs <- fmt.Errorf("key %s created usage %d and usage %d", key, first.ID, usage.ID)
								return
							}
							keysSeen[fmt.Sprint(u.ID, key)] = usage
							charged[u.ID] += costs[svc]
						}
						mu.Unlock()
					}
				case op < 80:
					if _, err := st.Grant(ctx, store.NewGrant{UserID: u.ID, Kind: store.GrantPack, Amount: int64(1 + rng.IntN(20)),
						SourceKind: "load", SourceID: fmt.Sprintf("w%d-%d", w, i)}); err != nil {
						errs <- fmt.Errorf("grant: %w", err)
						return
					}
				case op < 90:
					delta := int64(rng.IntN(30) - 15)
					if delta == 0 {
						delta = 1
					}
					_, err := st.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: delta, Actor: &admin.ID, Reason: "load test"})
					var short *store.InsufficientCreditsError
					if err != nil && !errors.As(err, &short) {
						errs <- fmt.Errorf("adjust: %w", err)
						return
					}
				default:
					if _, err := st.ExpireOverdueBatch(ctx, 1+rng.IntN(4)); err != nil {
						errs <- fmt.Errorf("sweep: %w", err)
						return
					}
					sweeps.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for k, ids := range replaysOf {
		for _, id := range ids {
			if first, ok := keysSeen[k]; !ok || first.ID != id {
				t.Errorf("replay of %s returned usage %d, first was %+v", k, id, first)
			}
		}
	}
	// Sweep whatever is overdue by now.
	for {
		res, err := st.ExpireOverdueBatch(ctx, 100)
		require.NoError(t, err)
		if res.Grants == 0 {
			break
		}
	}

	if v := storetest.Violations(t, st); len(v) > 0 {
		t.Fatalf("invariants violated: %v", v)
	}
	pool := st.Pool()
	for _, u := range users {
		var consumed, usageCredits int64
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(-sum(amount), 0) FROM ledger_entries WHERE user_id = $1 AND kind = 'consume'`, u.ID).Scan(&consumed))
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(sum(credits), 0) FROM usages WHERE user_id = $1`, u.ID).Scan(&usageCredits))
		if consumed != charged[u.ID] || usageCredits != charged[u.ID] {
			t.Errorf("user %d: ledger consumed %d, usages %d, clients were charged %d", u.ID, consumed, usageCredits, charged[u.ID])
		}
		bal, err := st.Balance(ctx, u.ID)
		require.NoError(t, err)
		var live int64
		require.NoError(t, pool.QueryRow(ctx, `SELECT coalesce(sum(remaining), 0) FROM grants WHERE user_id = $1 AND (expires_at IS NULL OR expires_at > now())`, u.ID).Scan(&live))
		if bal.Total < 0 || bal.Total != live {
			t.Errorf("user %d: balance %d, live grants %d", u.ID, bal.Total, live)
		}
	}
	var lateDraws, overdueLeft int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM ledger_entries e JOIN grants g ON g.id = e.grant_id
 WHERE e.kind = 'consume' AND g.expires_at IS NOT NULL AND e.created_at >= g.expires_at`).Scan(&lateDraws))
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM grants WHERE expires_at <= now() AND (remaining > 0 OR closed_at IS NULL)`).Scan(&overdueLeft))
	if lateDraws != 0 {
		t.Errorf("%d consume entries drew from a grant at or after its expiry", lateDraws)
	}
	if overdueLeft != 0 {
		t.Errorf("%d overdue grants still hold credits after the final sweep", overdueLeft)
	}
	var expireEntries int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM ledger_entries WHERE kind = 'expire'`).Scan(&expireEntries))
	if expireEntries == 0 || shortages.Load() == 0 || replays.Load() == 0 || sweeps.Load() == 0 {
		t.Errorf("the load did not exercise every path: expire entries %d, shortages %d, replays %d, sweeps %d",
			expireEntries, shortages.Load(), replays.Load(), sweeps.Load())
	}
	t.Logf("ops %d, replays %d, insufficient %d, sweeps %d, expire entries %d", workers*opsPerWorker, replays.Load(), shortages.Load(), sweeps.Load(), expireEntries)
}

// A user's spends (usages and their entries) are stamped in the order they
// were made: spends that waited for the account lock used to carry the time
// their transaction began, earlier than the spend they waited for, so a
// client reading "usages since T" could miss some. Replays answer the
// stored time.
func TestLedgerTimesFollowIdsUnderConcurrentSpends(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	// A second process's pool: its batches contend with this one's too.
	pool, err := store.OpenPool(ctx, st.Pool().Config().ConnString(), store.PoolOptions{MaxConns: 8, AppName: "quickscale-test-2"})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	other := store.New(pool, slog.New(slog.DiscardHandler))
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 5000})

	type answer struct {
		key string
		at  time.Time
	}
	answers := make(chan answer, 2000)
	var wg sync.WaitGroup
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			on := st
			if c%2 == 1 {
				on = other
			}
			for i := range 60 {
				key := fmt.Sprintf("c%d-%d", c, i)
				if c == 0 && i%10 == 0 {
					// Adjustments write entries of their own.
					_, err := on.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 1, Reason: "goodwill"})
					require.NoError(t, err)
				}
				usage, _, err := on.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: key})
				require.NoError(t, err)
				answers <- answer{key, usage.CreatedAt}
			}
		}()
	}
	wg.Wait()
	close(answers)

	for what, rows := range map[string]string{
		"usages":              `SELECT id, created_at FROM usages WHERE user_id = $1`,
		"the spends' entries": `SELECT id, created_at FROM ledger_entries WHERE user_id = $1 AND usage_id IS NOT NULL`,
	} {
		var back, n int
		require.NoError(t, st.Pool().QueryRow(ctx, `
SELECT count(*) FILTER (WHERE created_at < prev), count(*)
  FROM (SELECT created_at, lag(created_at) OVER (ORDER BY id) AS prev FROM (`+rows+`) r) x`, u.ID).Scan(&back, &n))
		require.Greater(t, n, 900, what)
		require.Zero(t, back, "%s: stamped earlier than the one before them", what)
	}
	n := 0
	for a := range answers {
		if n++; n%50 != 0 {
			continue
		}
		again, replayed, err := st.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: a.key})
		require.NoError(t, err)
		require.True(t, replayed)
		require.True(t, again.CreatedAt.Equal(a.at), "replay of %s: %s, first answer %s", a.key, again.CreatedAt, a.at)
	}
}
