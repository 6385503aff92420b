package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// grantKey is a grant's row in grant_keys, or the grant's own identity.
type grantKey struct {
	GrantID    int64
	UserID     int64
	SourceKind string
	SourceID   string
}

func keyOf(t *testing.T, db store.DBTX, grantID int64) (key, own grantKey) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, db.QueryRow(ctx, `SELECT grant_id, user_id, source_kind, source_id FROM grant_keys WHERE grant_id = $1`, grantID).
		Scan(&key.GrantID, &key.UserID, &key.SourceKind, &key.SourceID))
	require.NoError(t, db.QueryRow(ctx, `SELECT id, user_id, source_kind, source_id FROM grants WHERE id = $1`, grantID).
		Scan(&own.GrantID, &own.UserID, &own.SourceKind, &own.SourceID))
	return key, own
}

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code + " " + pgErr.ConstraintName
	}
	return ""
}

// Every grant, however it is written, gets exactly its own key row; a
// source is granted once; and neither side's identity can change, so the
// key rows that ledger entries reference always say whose a grant is.
func TestGrantKeysHoldEachGrantsIdentity(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := b.ctx
	other := storetest.NewUser(t, b.st, storetest.UserOpts{})

	// Through the ledger function.
	g := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	key, own := keyOf(t, b.st.Pool(), g.GrantID)
	require.Equal(t, own, key)
	require.Equal(t, b.user.ID, key.UserID)

	// Several in one statement, as a bulk load would (the trigger is
	// statement-level).
	tx, err := b.st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT set_config('quickscale.ledger', 'on', true)`)
	require.NoError(t, err)
	rows, err := tx.Query(ctx, `INSERT INTO grants (user_id, kind, amount, remaining, source_kind, source_id)
SELECT u, 'pack', 5, 5, 'bulk', u || '-' || k FROM unnest($1::bigint[]) u, generate_series(1, 3) k RETURNING id`,
		[]int64{b.user.ID, other.ID})
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO ledger_entries (user_id, grant_id, kind, amount) SELECT user_id, id, 'grant', amount FROM grants WHERE id = ANY ($1)`, ids)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.Len(t, ids, 6)
	for _, id := range ids {
		key, own := keyOf(t, b.st.Pool(), id)
		require.Equal(t, own, key)
	}

	// A source already granted, to the same user or another, written
	// directly: refused, nothing added.
	var before int64
	require.NoError(t, b.st.Pool().QueryRow(ctx, `SELECT count(*) FROM grants`).Scan(&before))
	for _, u := range []int64{b.user.ID, other.ID} {
		_, err := b.st.Pool().Exec(ctx, `WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true))
INSERT INTO grants (user_id, kind, amount, remaining, source_kind, source_id) SELECT $1, 'pack', 5, 5, $2, $3 FROM cfg`,
			u, key.SourceKind, key.SourceID)
		require.Equal(t, "23505 grant_keys_source_key", pgCode(err), "user %d", u)
	}
	// Through the ledger function it is the first grant, not a new one.
	again, err := b.st.Grant(ctx, store.NewGrant{UserID: other.ID, Kind: store.GrantPack, Amount: 7, SourceKind: key.SourceKind, SourceID: key.SourceID})
	require.NoError(t, err)
	require.Equal(t, store.GrantResult{GrantID: g.GrantID, Created: false}, again)
	var after int64
	require.NoError(t, b.st.Pool().QueryRow(ctx, `SELECT count(*) FROM grants`).Scan(&after))
	require.Equal(t, before, after)

	// A grant's identity never changes, not even inside the ledger...
	for name, sql := range map[string]string{
		"user":        `UPDATE grants SET user_id = $2 WHERE id = $1`,
		"source kind": `UPDATE grants SET source_kind = 'elsewhere' WHERE id = $1 AND $2::bigint > 0`,
		"source id":   `UPDATE grants SET source_id = 'elsewhere' WHERE id = $1 AND $2::bigint > 0`,
		"id":          `UPDATE grants SET id = DEFAULT WHERE id = $1 AND $2::bigint > 0`,
	} {
		err := b.execInLedger(sql, g.GrantID, other.ID)
		if name == "id" {
			// The key row's foreign key refuses it first.
			require.Equal(t, "23503 grant_keys_grant_id_fkey", pgCode(err), name)
			continue
		}
		require.Equal(t, "42501 ", pgCode(err), name)
		require.ErrorContains(t, err, "never change", name)
	}
	// ...while the ledger's own changes, and a SET naming an identity
	// column without changing it, go through.
	require.NoError(t, b.execInLedger(`UPDATE grants SET remaining = remaining - 1, user_id = user_id WHERE id = $1`, g.GrantID))

	// Key rows are append-only, and no other key row can be made: each
	// grant has one, and one must name a grant.
	for name, sql := range map[string]string{
		"update": `UPDATE grant_keys SET user_id = $2 WHERE grant_id = $1`,
		"delete": `DELETE FROM grant_keys WHERE grant_id = $1 AND $2::bigint > 0`,
	} {
		_, err = b.st.Pool().Exec(ctx, sql, g.GrantID, other.ID)
		require.Equal(t, "42501 ", pgCode(err), name)
	}
	// TRUNCATE: refused for the entries' foreign key, and with CASCADE by
	// the trigger.
	_, err = b.st.Pool().Exec(ctx, `TRUNCATE grant_keys`)
	require.Equal(t, "0A000 ", pgCode(err))
	_, err = b.st.Pool().Exec(ctx, `TRUNCATE grant_keys CASCADE`)
	require.Equal(t, "42501 ", pgCode(err))
	_, err = b.st.Pool().Exec(ctx, `INSERT INTO grant_keys (grant_id, user_id, source_kind, source_id) VALUES ($1, $2, 'forged', 'k')`, g.GrantID, other.ID)
	require.Equal(t, "23505 grant_keys_pkey", pgCode(err))
	_, err = b.st.Pool().Exec(ctx, `INSERT INTO grant_keys (grant_id, user_id, source_kind, source_id) VALUES ($1, $2, 'forged', 'k')`, ids[len(ids)-1]+1000, other.ID)
	require.Equal(t, "23503 grant_keys_grant_id_fkey", pgCode(err))

	// An entry naming another user's grant is refused by the key.
	err = b.execInLedger(`INSERT INTO ledger_entries (user_id, grant_id, kind, amount, reason) VALUES ($2, $1, 'adjust', 1, 'x')`, g.GrantID, other.ID)
	require.Equal(t, "23503 ledger_entries_grant_fkey", pgCode(err))
}

// Two grants of one source at once: the second waits for the first and
// then answers it, whichever user it names (grants has no unique key on the
// source for an ON CONFLICT to wait on).
func TestGrantsOfOneSourceTakeTurns(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := b.ctx
	other := storetest.NewUser(t, b.st, storetest.UserOpts{})
	for _, second := range []int64{b.user.ID, other.ID} {
		src := store.NewSecret()[:16]
		first, err := b.st.Pool().Begin(ctx)
		require.NoError(t, err)
		r1, err := store.Grant(ctx, first, store.NewGrant{UserID: b.user.ID, Kind: store.GrantPack, Amount: 5, SourceKind: "race", SourceID: src})
		require.NoError(t, err)
		require.True(t, r1.Created)

		done := make(chan store.GrantResult, 1)
		failed := make(chan error, 1)
		go func() {
			r, err := b.st.Grant(ctx, store.NewGrant{UserID: second, Kind: store.GrantPack, Amount: 5, SourceKind: "race", SourceID: src})
			if err != nil {
				failed <- err
				return
			}
			done <- r
		}()
		storetest.WaitFor(t, "the second grant to wait for the first", func() bool {
			var n int
			require.NoError(t, b.st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%ledger_grant%'`).Scan(&n))
			return n == 1
		})
		require.NoError(t, first.Commit(ctx))
		select {
		case r2 := <-done:
			require.Equal(t, store.GrantResult{GrantID: r1.GrantID, Created: false}, r2, "second grant for user %d", second)
		case err := <-failed:
			t.Fatalf("second grant for user %d: %v", second, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("second grant for user %d never answered", second)
		}
		var n int
		require.NoError(t, b.st.Pool().QueryRow(ctx, `SELECT count(*) FROM grants WHERE source_kind = 'race' AND source_id = $1`, src).Scan(&n))
		require.Equal(t, 1, n)
	}
}

// Migration 00015 moves the grants' unique keys to grant_keys on tables
// that may already hold a ledger: every grant gets its key row, the ledger
// reads the same, a source granted before it is still granted once, and
// spends, grants and the sweep go on.
func TestMigration15KeepsALedgerWrittenBeforeIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 14)
	st := store.New(pool, nil)
	svc, users, spends := oldLedger(t, st, 3)
	_, err := st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 100}, nil)
	require.NoError(t, err)
	// A source granted before the migration.
	old, err := st.Grant(ctx, store.NewGrant{UserID: users[0], Kind: store.GrantPack, Amount: 9, SourceKind: "checkout_session", SourceID: "cs_before"})
	require.NoError(t, err)

	take := func() ledgerSnapshot { return snapshotLedger(t, st, users, spends) }
	before := take()
	require.Empty(t, storetest.Violations(t, st))
	var grants int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM grants`).Scan(&grants))

	res, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.NotEmpty(t, res.App)
	require.Equal(t, "00015_grant_keys.sql", res.App[0])
	pool.Reset()
	require.Equal(t, before, take())
	require.Empty(t, storetest.Violations(t, st)) // includes grants against their keys
	var keys int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM grant_keys`).Scan(&keys))
	require.Equal(t, grants, keys)
	var indexes []string
	rows, err := pool.Query(ctx, `SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'grants'::regclass ORDER BY 1`)
	require.NoError(t, err)
	indexes, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"grants_expiring_idx", "grants_open_idx", "grants_pkey"}, indexes)
	// No BEFORE ROW UPDATE trigger: with one, PostgreSQL locks (and logs a
	// lock of) every grant a spend or the sweep updates.
	rows, err = pool.Query(ctx, `SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'grants'::regclass AND NOT tgisinternal
   AND tgtype & 1 = 1 AND tgtype & 2 = 2 AND tgtype & 16 = 16`)
	require.NoError(t, err)
	rowTriggers, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Empty(t, rowTriggers)

	// The old source is still granted once; new grants, spends and the sweep go on.
	again, err := st.Grant(ctx, store.NewGrant{UserID: users[0], Kind: store.GrantPack, Amount: 9, SourceKind: "checkout_session", SourceID: "cs_before"})
	require.NoError(t, err)
	require.Equal(t, store.GrantResult{GrantID: old.GrantID, Created: false}, again)
	g, err := st.Grant(ctx, store.NewGrant{UserID: users[1], Kind: store.GrantPack, Amount: 4, SourceKind: "checkout_session", SourceID: "cs_after"})
	require.NoError(t, err)
	require.True(t, g.Created)
	u, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: users[0], Service: svc, IdempotencyKey: "after"})
	require.NoError(t, err)
	require.Equal(t, before.balances[0].Total-3, u.Balance)
	_, err = st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 100}, nil)
	require.NoError(t, err)
	require.Empty(t, storetest.Violations(t, st))
}

// A temporary table named grant_keys, which comes first on the default
// search path, neither takes a grant's key row nor answers for a source:
// the two functions naming grant_keys use the migrated schema's.
func TestGrantKeysIgnoreATemporaryTableOfTheSameName(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := b.ctx
	first := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 5})
	key, _ := keyOf(t, b.st.Pool(), first.GrantID)
	conn, err := b.st.Pool().Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `CREATE TEMP TABLE grant_keys (grant_id bigint, user_id bigint, source_kind text, source_id text)`)
	require.NoError(t, err)
	defer func() { _, _ = conn.Exec(ctx, `DROP TABLE pg_temp.grant_keys`) }()

	again, err := store.Grant(ctx, conn, store.NewGrant{UserID: b.user.ID, Kind: store.GrantPack, Amount: 5, SourceKind: key.SourceKind, SourceID: key.SourceID})
	require.NoError(t, err)
	require.Equal(t, store.GrantResult{GrantID: first.GrantID, Created: false}, again)
	fresh, err := store.Grant(ctx, conn, store.NewGrant{UserID: b.user.ID, Kind: store.GrantPack, Amount: 5, SourceKind: "temp", SourceID: store.NewSecret()[:12]})
	require.NoError(t, err)
	require.True(t, fresh.Created)
	var inTemp int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_temp.grant_keys`).Scan(&inTemp))
	require.Zero(t, inTemp)
	k, own := keyOf(t, b.st.Pool(), fresh.GrantID)
	require.Equal(t, own, k)
}

// Migration 00015 under load: spends (which read grants, then write grants
// and entries) keep running while it migrates. It takes its locks first, so
// neither side deadlocks; taken piecemeal, a spend in flight deadlocked
// with it.
func TestMigration15WhileSpendsRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 14)
	st := store.New(pool, nil)
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	var users []int64
	for range 8 {
		u := storetest.NewUser(t, st, storetest.UserOpts{})
		storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 1_000_000})
		users = append(users, u.ID)
	}
	stop := make(chan struct{})
	spent := make(chan int, 4)
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			n := 0
			for i := 0; ; i++ {
				select {
				case <-stop:
					spent <- n
					return
				default:
				}
				// Through the lone path and the batch function, both.
				u := users[(w*2+i)%len(users)]
				var err error
				if i%2 == 0 {
					_, _, err = store.Consume(ctx, pool, store.ConsumeRequest{UserID: u, Service: svc, IdempotencyKey: fmt.Sprintf("w%d-%d", w, i)})
				} else {
					err = st.ConsumeBatch(ctx, []store.ConsumeRequest{{UserID: u, Service: svc, IdempotencyKey: fmt.Sprintf("w%d-%d", w, i)}})[0].Err
				}
				if err != nil {
					errs <- err
					spent <- n
					return
				}
				n++
			}
		}()
	}
	// Let the spends get going before migrating.
	storetest.WaitFor(t, "spends to run", func() bool {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM usages`).Scan(&n))
		return n >= 40
	})
	_, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	close(stop)
	total := 0
	for range 4 {
		total += <-spent
	}
	require.NoError(t, err, "the migration")
	select {
	case err := <-errs:
		t.Fatalf("a spend failed during the migration: %v", err)
	default:
	}
	require.Positive(t, total)
	require.Empty(t, storetest.Violations(t, st))
}
