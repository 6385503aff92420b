package store_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/migrations"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Migration 00005 retypes the ledger's columns and replaces its CHECKs and
// ledger_consume on tables that may already hold a ledger: everything
// written before it must read the same after it, and keep working.
func TestLedgerMigration5KeepsALedgerWrittenBeforeIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := emptyDatabase(t)
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithDisableGlobalRegistry(true))
	require.NoError(t, err)
	_, err = provider.UpTo(ctx, 4)
	require.NoError(t, err)

	// A ledger of every kind of entry, written by the version-4 functions.
	st := store.New(pool, nil)
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 7})
	free := storetest.NewService(t, st, storetest.ServiceOpts{Cost: storetest.NoCost})
	admin := storetest.NewUser(t, st, storetest.UserOpts{Admin: true})
	var users []int64
	for range 3 {
		u := storetest.NewUser(t, st, storetest.UserOpts{})
		users = append(users, u.ID)
		storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 5})
		pack := storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 40})
		storetest.BackdatedGrant(t, pool, u.ID, store.GrantPromo, 3, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
		for _, key := range []string{"a", "b"} {
			_, _, err := store.Consume(ctx, pool, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: key})
			require.NoError(t, err)
		}
		_, _, err := store.Consume(ctx, pool, store.ConsumeRequest{UserID: u.ID, Service: free, IdempotencyKey: "free"})
		require.NoError(t, err)
		_, err = st.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: -2, Actor: &admin.ID, Reason: "correction"})
		require.NoError(t, err)
		_, err = store.Clawback(ctx, pool, pack.GrantID, 1, "refund")
		require.NoError(t, err)
	}
	_, err = pool.Exec(ctx, `SELECT count(*) FROM ledger_expire_due(100)`) // the version-4 sweep
	require.NoError(t, err)

	type snapshot struct {
		balances       []store.Balance
		usages         []store.Usage
		entries, kinds int64
	}
	take := func() snapshot {
		var s snapshot
		for _, id := range users {
			b, err := st.Balance(ctx, id)
			require.NoError(t, err)
			s.balances = append(s.balances, b)
			// ledger_consume itself: the batched path needs migration 00006.
			u, replayed, err := store.Consume(ctx, pool, store.ConsumeRequest{UserID: id, Service: svc, IdempotencyKey: "a"})
			require.NoError(t, err)
			require.True(t, replayed)
			s.usages = append(s.usages, u)
		}
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT kind) FROM ledger_entries`).Scan(&s.entries, &s.kinds))
		return s
	}
	before := take()
	require.EqualValues(t, 5, before.kinds, "the ledger before the migration should hold every kind of entry")

	res, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Contains(t, res.App, "00005_ledger_lean_consume.sql")
	// The retyped columns change the result types of statements prepared
	// before the migration: on the connections that prepared them they fail
	// once ("cached plan must not change result type"). Processes are
	// restarted after migrating (README); new connections stand for that.
	pool.Reset()
	after := take()
	require.Equal(t, before, after)
	require.Empty(t, storetest.Violations(t, st))

	// And it goes on: a new spend draws subscription credits first.
	u, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: users[0], Service: svc, IdempotencyKey: "after"})
	require.NoError(t, err)
	require.Equal(t, before.balances[0].Total-7, u.Balance)
	require.Empty(t, storetest.Violations(t, st))
}
