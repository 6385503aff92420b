package store_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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
	pool := migrateUpTo(t, 4)

	// A ledger of every kind of entry, written by the version-4 functions.
	st := store.New(pool, nil)
	svc, users, _ := oldLedger(t, st, 7)
	_, err := pool.Exec(ctx, `SELECT count(*) FROM ledger_expire_due(100)`) // the version-4 sweep
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

// oldLedger writes, with whatever version the schema is at, a ledger of
// every kind of entry for three users: a subscription grant of 5, a pack of
// 40 and an expired promo grant each, two spends of a service costing cost
// (keys a and b) and one of a free service (key free), an admin removal of
// 2 and a clawback of 1 from the pack. It returns the paid service's slug,
// the users and the spends made.
func oldLedger(t *testing.T, st *store.Store, cost int64) (string, []int64, []store.ConsumeRequest) {
	t.Helper()
	ctx := context.Background()
	pool := st.Pool()
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: cost})
	free := storetest.NewService(t, st, storetest.ServiceOpts{Cost: storetest.NoCost})
	admin := storetest.NewUser(t, st, storetest.UserOpts{Admin: true})
	var users []int64
	var spends []store.ConsumeRequest
	for range 3 {
		u := storetest.NewUser(t, st, storetest.UserOpts{})
		users = append(users, u.ID)
		storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 5})
		pack := storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 40})
		storetest.BackdatedGrant(t, pool, u.ID, store.GrantPromo, 3, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
		for _, r := range []store.ConsumeRequest{
			{UserID: u.ID, Service: svc, IdempotencyKey: "a"},
			{UserID: u.ID, Service: svc, IdempotencyKey: "b"},
			{UserID: u.ID, Service: free, IdempotencyKey: "free"},
		} {
			_, _, err := store.Consume(ctx, pool, r)
			require.NoError(t, err)
			spends = append(spends, r)
		}
		_, err := st.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: -2, Actor: &admin.ID, Reason: "correction"})
		require.NoError(t, err)
		_, err = store.Clawback(ctx, pool, pack.GrantID, 1, "refund")
		require.NoError(t, err)
	}
	return svc, users, spends
}

// migrateUpTo returns a database migrated up to version.
func migrateUpTo(t *testing.T, version int64) *pgxpool.Pool {
	t.Helper()
	pool := emptyDatabase(t)
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { db.Close() })
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithDisableGlobalRegistry(true))
	require.NoError(t, err)
	_, err = provider.UpTo(context.Background(), version)
	require.NoError(t, err)
	return pool
}

// Migration 00011 rebuilds the primary keys of usages and ledger entries
// and replaces ledger_consume_many on tables that may already hold a
// ledger: spends made before it must replay the same after it (through
// both spend paths), the history and usage lists must read the same, and
// new spends must go on.
func TestLedgerMigration11KeepsALedgerWrittenBeforeIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 10)

	st := store.New(pool, nil)
	// With a cost of 3, each user's second spend draws on the subscription
	// and the pack.
	svc, users, spends := oldLedger(t, st, 3)
	// Spends of several users in one call of the version-10 batch function.
	var batch []store.ConsumeRequest
	for _, id := range users {
		batch = append(batch, store.ConsumeRequest{UserID: id, Service: svc, IdempotencyKey: "batched"})
	}
	for _, r := range st.ConsumeBatch(ctx, batch) {
		require.NoError(t, r.Err)
	}
	spends = append(spends, batch...)
	_, err := st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 100}, nil)
	require.NoError(t, err)

	take := func() ledgerSnapshot { return snapshotLedger(t, st, users, spends) }
	before := take()
	require.Len(t, before.replays[1].Drawn, 2, "the second spend should draw on two grants")
	require.Empty(t, storetest.Violations(t, st))

	res, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Equal(t, "00011_ledger_keys_by_user.sql", res.App[0])
	pool.Reset() // processes restart after migrating (README)
	after := take()
	require.Equal(t, before, after)
	require.Empty(t, storetest.Violations(t, st))

	// And it goes on, in both paths.
	u, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: users[0], Service: svc, IdempotencyKey: "after"})
	require.NoError(t, err)
	require.Equal(t, before.balances[0].Total-3, u.Balance)
	r := st.ConsumeBatch(ctx, []store.ConsumeRequest{
		{UserID: users[1], Service: svc, IdempotencyKey: "after"},
		{UserID: users[2], Service: svc, IdempotencyKey: "after"},
	})
	require.NoError(t, r[0].Err)
	require.NoError(t, r[1].Err)
	require.Equal(t, before.balances[2].Total-3, r[1].Value.Usage.Balance)
	require.Empty(t, storetest.Violations(t, st))
}

// A ledger entry naming another user's usage, which the foreign key before
// 00011 allowed, makes 00011 fail as a whole: nothing of it is applied, and
// README says how to find such entries.
func TestLedgerMigration11RefusesAnEntryNamingAnotherUsersUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 10)
	st := store.New(pool, nil)
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	a := storetest.NewUser(t, st, storetest.UserOpts{})
	b := storetest.NewUser(t, st, storetest.UserOpts{})
	ga := storetest.NewGrant(t, st, a.ID, storetest.GrantOpts{Amount: 5})
	storetest.NewGrant(t, st, b.ID, storetest.GrantOpts{Amount: 5})
	ub, _, err := store.Consume(ctx, pool, store.ConsumeRequest{UserID: b.ID, Service: svc, IdempotencyKey: "k"})
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT set_config('quickscale.ledger', 'on', true)`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id) VALUES ($1, $2, 'consume', -1, $3)`,
		a.ID, ga.GrantID, ub.ID)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))

	// README's query finds it.
	rows, err := pool.Query(ctx, `SELECT e.id FROM ledger_entries e JOIN usages u ON u.id = e.usage_id WHERE u.user_id <> e.user_id`)
	require.NoError(t, err)
	found, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, found, 1)

	_, err = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "ledger_entries_usage_fkey")
	var version int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT max(version_id) FROM goose_db_version WHERE is_applied`).Scan(&version))
	require.EqualValues(t, 10, version)
	var pk string
	require.NoError(t, pool.QueryRow(ctx, `SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'usages_pkey'`).Scan(&pk))
	require.Equal(t, "PRIMARY KEY (id)", pk, "nothing of 00011 should be applied")
}

// ledgerSnapshot is what a migration must leave as it was: users'
// balances, history and usage pages, and what their spends replay (through
// the lone path, then all at once through the batch function).
type ledgerSnapshot struct {
	balances []store.Balance
	replays  []store.Usage
	history  []store.HistoryItem
	usages   []store.UsageRecord
}

func snapshotLedger(t *testing.T, st *store.Store, users []int64, spends []store.ConsumeRequest) ledgerSnapshot {
	t.Helper()
	ctx := context.Background()
	var s ledgerSnapshot
	for _, id := range users {
		b, err := st.Balance(ctx, id)
		require.NoError(t, err)
		s.balances = append(s.balances, b)
		for cursor := int64(0); ; {
			page, err := st.History(ctx, id, cursor, 2)
			require.NoError(t, err)
			s.history = append(s.history, page.Items...)
			if cursor = page.NextCursor; cursor == 0 {
				break
			}
		}
		for cursor := int64(0); ; {
			list, next, err := st.Usages(ctx, id, cursor, 2)
			require.NoError(t, err)
			s.usages = append(s.usages, list...)
			if cursor = next; cursor == 0 {
				break
			}
		}
	}
	for _, r := range spends {
		u, replayed, err := store.Consume(ctx, st.Pool(), r)
		require.NoError(t, err)
		require.True(t, replayed)
		s.replays = append(s.replays, u)
	}
	for i, r := range st.ConsumeBatch(ctx, spends) {
		require.NoError(t, r.Err)
		require.True(t, r.Value.Replayed)
		require.Equal(t, s.replays[i], r.Value.Usage, "spend %d replayed through the batch", i)
	}
	return s
}

// Migration 00016 replaces ledger_expire_due with one taking a third,
// optional argument: a worker built before it keeps sweeping with the
// statement it prepared before the migration, on the same connection.
func TestLedgerMigration16KeepsOlderSweepersWorking(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 15)
	st := store.New(pool, nil)
	now := time.Now()
	for range 2 {
		u := storetest.NewUser(t, st, storetest.UserOpts{})
		storetest.BackdatedGrant(t, pool, u.ID, store.GrantSubscription, 3, now.Add(-time.Hour), now.Add(-time.Minute))
	}
	older, err := pgx.Connect(ctx, pool.Config().ConnConfig.ConnString())
	require.NoError(t, err)
	t.Cleanup(func() { older.Close(context.Background()) })
	// The statement a version-15 worker runs, prepared and cached by pgx.
	sweepOne := func() (grants int64) {
		t.Helper()
		rows, err := older.Query(ctx, `SELECT kind, users, grants, credits, last_expiry FROM ledger_expire_due($1, $2)`, 1, nil)
		require.NoError(t, err)
		var kind string
		var u, g, c int64
		var last *time.Time
		_, err = pgx.ForEachRow(rows, []any{&kind, &u, &g, &c, &last}, func() error { grants += g; return nil })
		require.NoError(t, err)
		return grants
	}
	require.Equal(t, int64(1), sweepOne())

	res, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.NotEmpty(t, res.App)
	require.Equal(t, "00016_sweep_skips_busy_accounts.sql", res.App[0])
	require.Equal(t, int64(1), sweepOne(), "the older worker's sweep after the migration")
	require.Equal(t, int64(0), sweepOne())
	require.Empty(t, storetest.Violations(t, st))
}

// Migration 00017 bounds expiries at 100 years after a grant is made. A
// ledger holding a grant that expires later fails it, nothing applied,
// until README's query finds the grant and README's fix (never expires)
// is applied; grants within the bound migrate as they are.
func TestLedgerMigration17RefusesAGrantExpiringBeyondACentury(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 16)
	st := store.New(pool, nil)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	in99 := time.Now().AddDate(99, 0, 0)
	near := storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 5, Kind: store.GrantPromo, ExpiresAt: &in99})
	// As the admin form could make one before the rule: good through
	// 9999-12-31 in New York, a year 10000 date in UTC.
	var far, dst int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT grant_id FROM ledger_grant($1, 'admin', 7, '9999-12-31 23:00:00-05', 'test', 'far', 'adjust', NULL, 'forever')`, u.ID).Scan(&far))
	// And one 30 minutes past the bound in UTC, made on the day New York
	// moved its clocks: in a New York session, a query adding 100 years
	// in local time would not see it (the hour moves).
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT set_config('quickscale.ledger', 'on', true)`)
	require.NoError(t, err)
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id, created_at)
VALUES ($1, 'promo', 3, 3, '2124-03-10 12:30+00', 'test', 'dst', '2024-03-10 12:00+00') RETURNING id`, u.ID).Scan(&dst))
	require.NoError(t, tx.Commit(ctx))

	_, err = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "grants_expiry")
	var version int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT max(version_id) FROM goose_db_version WHERE is_applied`).Scan(&version))
	require.EqualValues(t, 16, version)

	// README's query finds both, in any session time zone, and README's
	// fix lets the migration through.
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `SET timezone = 'America/New_York'`)
	require.NoError(t, err)
	defer func() { _, _ = conn.Exec(ctx, `RESET timezone`) }()
	rows, err := conn.Query(ctx, `SELECT id FROM grants WHERE (expires_at AT TIME ZONE 'UTC') > (created_at AT TIME ZONE 'UTC') + interval '100 years' ORDER BY id`)
	require.NoError(t, err)
	found, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Equal(t, []int64{far, dst}, found)
	tx, err = conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT set_config('quickscale.ledger', 'on', true)`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE grants SET expires_at = NULL WHERE kind IN ('admin', 'promo') AND (expires_at AT TIME ZONE 'UTC') > (created_at AT TIME ZONE 'UTC') + interval '100 years'`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	_, err = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)

	bal, err := st.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 15, bal.Total)
	require.NotNil(t, bal.NextExpiry)
	var nearExpiry time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT expires_at FROM grants WHERE id = $1`, near.GrantID).Scan(&nearExpiry))
	require.True(t, bal.NextExpiry.Equal(nearExpiry), "the 99-year grant keeps its expiry")
}
