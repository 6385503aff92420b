package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// These tests hold the rules of migration 00019 and of the fixes made with
// it: rules the code relied on that the schema, or a read inside a waiting
// transaction, did not hold.

func pgErrCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// A grant or a usage written outside the ledger functions would break the
// ledger's sums (a grant without its entry, a usage drawing nothing that
// later answers its key as a replay): the database refuses both, and takes
// the same rows from inside the ledger.
func TestGrantsAndUsagesAreWrittenOnlyByTheLedger(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	g := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 3})
	u, _, err := b.consume(t, svc, "k")
	require.NoError(t, err)
	for name, sql := range map[string]string{
		"grant": `INSERT INTO grants (user_id, kind, amount, remaining, source_kind, source_id)
		          SELECT user_id, 'pack', 500, 500, 'direct', gen_random_uuid()::text FROM grants WHERE id = $1 AND $2::bigint > 0`,
		"usage": `INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after)
		          SELECT user_id, service_id, 0, gen_random_uuid()::text, 'fp', 0 FROM usages WHERE id = $2 AND $1::bigint > 0`,
	} {
		_, err := b.st.Pool().Exec(b.ctx, sql, g.GrantID, u.ID)
		require.Equal(t, "42501", pgErrCode(err), "a %s inserted outside the ledger: %v", name, err)
		require.NoError(t, b.execInLedger(sql, g.GrantID, u.ID), "the same %s inside the ledger", name)
	}
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	require.EqualValues(t, 7, bal.Total, "nothing was added")
}

// credit_adjustments keeps the keys of admin adjustments, which are never
// changed: TRUNCATE is refused as UPDATE and DELETE are.
func TestCreditAdjustmentKeysCannotBeTruncated(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	_, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 5, Reason: "goodwill", Key: "k1"})
	require.NoError(t, err)
	for _, sql := range []string{`TRUNCATE credit_adjustments`, `TRUNCATE credit_adjustments CASCADE`} {
		_, err = b.st.Pool().Exec(b.ctx, sql)
		require.Equal(t, "42501", pgErrCode(err), "%s: %v", sql, err)
	}
	var n int
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT count(*) FROM credit_adjustments`).Scan(&n))
	require.Equal(t, 1, n)
}

// A payment's grant and a usage's API key are its own user's: a refund of a
// payment naming another user's grant would claw back that user's credits,
// and a usage naming another user's key would be shown as made with it.
func TestPaymentsAndUsagesNameOnlyTheirUsersGrantAndKey(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := b.ctx
	other := storetest.NewUser(t, b.st, storetest.UserOpts{})
	mine := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	theirs := storetest.NewGrant(t, b.st, other.ID, storetest.GrantOpts{Amount: 10})

	packs, err := b.st.Packs(ctx)
	require.NoError(t, err)
	pay, err := b.st.CreatePayment(ctx, store.NewPayment{UserID: b.user.ID, Pack: packs[0], CheckoutSessionID: "cs_rules_" + store.NewSecret()[:8]})
	require.NoError(t, err)
	setGrant := `UPDATE payments SET grant_id = $2 WHERE id = $1`
	_, err = b.st.Pool().Exec(ctx, setGrant, pay.ID, theirs.GrantID)
	require.Equal(t, "23503", pgErrCode(err), "a payment naming another user's grant: %v", err)
	_, err = b.st.Pool().Exec(ctx, setGrant, pay.ID, mine.GrantID)
	require.NoError(t, err, "the payment's own user's grant")

	_, theirKey, err := b.st.CreateAPIKey(ctx, other.ID, "theirs")
	require.NoError(t, err)
	_, myKey, err := b.st.CreateAPIKey(ctx, b.user.ID, "mine")
	require.NoError(t, err)
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 1})
	_, _, err = b.st.Consume(ctx, store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: "with-their-key", APIKeyID: &theirKey.ID})
	require.Equal(t, "23503", pgErrCode(err), "a spend naming another user's API key: %v", err)
	u, _, err := b.st.Consume(ctx, store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: "with-my-key", APIKeyID: &myKey.ID})
	require.NoError(t, err, "a spend with the user's own key")
	require.EqualValues(t, 9, u.Balance)
}

// Credits past their expiry are gone from that instant, swept or not: a
// refund's clawback takes nothing from such a grant, as it would after the
// sweep, and the sweep then records them as expired.
func TestClawbackTakesNothingFromAGrantPastItsExpiry(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	overdue := storetest.BackdatedGrant(t, b.st.Pool(), b.user.ID, store.GrantSubscription, 50, time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
	live := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 40, ExpiresAt: ptr(time.Now().Add(time.Hour))})
	clawback := func(grantID int64) int64 {
		var taken int64
		require.NoError(t, b.st.InTx(b.ctx, func(tx pgx.Tx) error {
			var err error
			taken, err = store.Clawback(b.ctx, tx, grantID, 30, "refund")
			return err
		}))
		return taken
	}
	require.Zero(t, clawback(overdue), "from the grant past its expiry")
	require.EqualValues(t, 30, clawback(live.GrantID), "from the live grant")

	res, err := b.st.ExpireOverdueBatch(b.ctx, 100)
	require.NoError(t, err)
	require.EqualValues(t, 50, res.Credits, "the sweep expires all 50, none clawed back")
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	require.EqualValues(t, 10, bal.Total)
}

// holdAccountWhileAGrantExpires holds the user's account lock in a
// transaction of its own until the transaction run by waiter is waiting for
// it, then gives the user a grant that expired a moment after that
// transaction began (so that it began while the grant was live, and reaches
// the account after it expired), and lets go. It returns the grant's id and
// waiter's error.
func holdAccountWhileAGrantExpires(t *testing.T, b *ledgerBundle, waiter func() error) (int64, error) {
	t.Helper()
	ctx := b.ctx
	holder, err := b.st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, b.user.ID)
	require.NoError(t, err)
	var holderPID int
	require.NoError(t, holder.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holderPID))

	done := make(chan error, 1)
	go func() { done <- waiter() }()
	storetest.WaitFor(t, "the transaction to wait for the account", func() bool {
		var n int
		require.NoError(t, b.st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`, holderPID).Scan(&n))
		return n > 0
	})
	// clock_timestamp() now is after the waiting transaction began.
	var now, expiry time.Time
	require.NoError(t, holder.QueryRow(ctx, `SELECT now(), clock_timestamp()`).Scan(&now, &expiry))
	id := storetest.BackdatedGrant(t, holder, b.user.ID, store.GrantSubscription, 50, now, expiry)
	require.NoError(t, holder.Commit(ctx))
	return id, <-done
}

// Deleting an account forfeits what is live when the deletion holds the
// account: a grant that expired while it waited for the lock is not
// forfeited (it is the sweep's), and the deletion does not fail over it.
func TestDeleteUserForfeitsWhatIsLiveAfterItsWait(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 100})
	expired, err := holdAccountWhileAGrantExpires(t, b, func() error {
		return b.st.InTx(context.Background(), func(tx pgx.Tx) error {
			_, err := store.DeleteUser(b.ctx, tx, b.user.ID)
			return err
		})
	})
	require.NoError(t, err, "the deletion")
	var forfeited, fromExpired int64
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT coalesce(-sum(amount), 0)::bigint, coalesce(-sum(amount) FILTER (WHERE grant_id = $3), 0)::bigint
  FROM ledger_entries WHERE user_id = $1 AND kind = 'adjust' AND reason = $2`, b.user.ID, store.ForfeitReason, expired).Scan(&forfeited, &fromExpired))
	require.EqualValues(t, 100, forfeited, "the pack's credits are forfeited")
	require.Zero(t, fromExpired, "none from the grant that expired meanwhile")
}

// An admin removal that waited for the account reports, and writes to the
// audit log, the balance after it without credits that expired meanwhile.
func TestAdjustReportsTheBalanceWithoutCreditsThatExpiredWhileItWaited(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 100})
	var res store.AdjustResult
	_, err := holdAccountWhileAGrantExpires(t, b, func() error {
		var err error
		res, err = b.st.Adjust(context.Background(), store.Adjustment{UserID: b.user.ID, Delta: -10, Reason: "abuse", Key: "rm1"})
		return err
	})
	require.NoError(t, err)
	require.EqualValues(t, 90, res.Balance)
	entries, err := b.st.AuditFor(b.ctx, b.user.ID, 1)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "90", fmt.Sprint(entries[0].Details["balance_after"]))
}

// A deleted account's credits were forfeited and nobody can spend them: an
// adjustment sent after the deletion (an admin form loaded before it) is
// refused and changes nothing.
func TestAdjustRefusesADeletedAccount(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	require.NoError(t, b.st.InTx(b.ctx, func(tx pgx.Tx) error {
		_, err := store.DeleteUser(b.ctx, tx, b.user.ID)
		return err
	}))
	for _, delta := range []int64{100, -1} {
		_, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: delta, Reason: "goodwill", Key: "late"})
		require.Equal(t, store.KindConflict, store.ErrorKind(err), "delta %d: %v", delta, err)
		require.ErrorContains(t, err, "deleted")
	}
	var grants, keys int
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT (SELECT count(*) FROM grants WHERE user_id = $1), (SELECT count(*) FROM credit_adjustments WHERE user_id = $1)`,
		b.user.ID).Scan(&grants, &keys))
	require.Equal(t, 1, grants, "no grant added")
	require.Zero(t, keys, "no key claimed")
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	require.Zero(t, bal.Total)
}

// Migration 00019 locks five tables; no order of them suits every reader
// (a spend reads usages before grants, the credit history grants before
// usages). Taken one after the other, a history read queued while the
// migration waited for usages deadlocked with it, and one of the two
// failed. It now takes all or none, waiting briefly, and tries again.
func TestMigration19DoesNotDeadlockWithAHistoryRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 18)
	st := store.New(pool, nil)
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 100})
	_, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "a"})
	require.NoError(t, err)

	// A reader of usages in flight, so that the migration waits for it.
	holder, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT count(*) FROM usages`)
	require.NoError(t, err)
	waitingForUsages := func() int {
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'usages'::regclass`).Scan(&n))
		return n
	}
	migrated := make(chan error, 1)
	go func() {
		_, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
		migrated <- err
	}()
	storetest.WaitFor(t, "the migration to wait for usages", func() bool { return waitingForUsages() > 0 })
	read := make(chan error, 1)
	go func() {
		_, err := st.History(ctx, u.ID, 0, 20)
		read <- err
	}()
	// The read either waits behind the migration (holding grants) or, the
	// migration having let go, is done.
	var readErr error
	readDone := false
	storetest.WaitFor(t, "the history read to wait for usages or finish", func() bool {
		select {
		case readErr = <-read:
			readDone = true
			return true
		default:
			return waitingForUsages() > 1
		}
	})
	require.NoError(t, holder.Commit(ctx))
	if !readDone {
		readErr = <-read
	}
	require.NoError(t, readErr, "the history read")
	require.NoError(t, <-migrated, "the migration")
	var version int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT max(version_id) FROM goose_db_version WHERE is_applied`).Scan(&version))
	require.GreaterOrEqual(t, version, int64(19))
}

// A spend that runs alone (its batch gave up on a held account) waits for
// the account, in the server, only until just before its caller's
// deadline: the call returns context.DeadlineExceeded with nothing left
// waiting in the database, so nothing is charged once the account is free.
func TestSpendRunningAloneGivesUpBeforeItsDeadlineInTheServer(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 3})
	holder, err := b.st.Pool().Begin(b.ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(b.ctx) }()
	_, err = holder.Exec(b.ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, b.user.ID)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(b.ctx, time.Second)
	defer cancel()
	_, _, err = b.st.Consume(ctx, store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: "k"})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// The server ended the wait (lock_timeout), before the deadline, or the
	// last try was not started for want of time (a loaded machine): not
	// pgx, which answers at once and cancels the server's statement after.
	require.True(t, pgErrCode(err) == "55P03" || strings.Contains(err.Error(), "no time left to wait"), "%v", err)
	var waiting int
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND state <> 'idle' AND query LIKE '%ledger_consume%' AND pid <> pg_backend_pid()`).Scan(&waiting))
	require.Zero(t, waiting, "a spend still waits in the database after its caller was answered")
	require.NoError(t, holder.Commit(b.ctx))
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	require.EqualValues(t, 10, bal.Total, "nothing charged")
}

// Spends of an account held elsewhere (a stuck session) wait for it one at
// a time, on one connection: the pool stays open to every other user. (Each
// used to wait on a connection of its own until its deadline: 25 of them
// stalled every other API call for 28 s.) Once the account is free, they
// all go through.
func TestSpendsOfAHeldAccountLeaveThePoolToOtherUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := storetest.NewDatabase(t)
	pool, err := store.OpenPool(ctx, dbURL, store.PoolOptions{MaxConns: 6})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	st := store.New(pool, slog.New(slog.DiscardHandler))
	held := storetest.NewUser(t, st, storetest.UserOpts{})
	other := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, held.ID, storetest.GrantOpts{Amount: 100})
	storetest.NewGrant(t, st, other.ID, storetest.GrantOpts{Amount: 100})
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	holder, err := pgx.Connect(ctx, dbURL) // outside the pool
	require.NoError(t, err)
	defer holder.Close(ctx)
	_, err = holder.Exec(ctx, `BEGIN; SELECT 1 FROM accounts WHERE user_id = `+fmt.Sprint(held.ID)+` FOR UPDATE`)
	require.NoError(t, err)

	const spends = 12
	spendCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	results := make(chan error, spends)
	for i := range spends {
		go func() {
			_, _, err := st.Consume(spendCtx, store.ConsumeRequest{UserID: held.ID, Service: svc, IdempotencyKey: fmt.Sprint("held-", i)})
			results <- err
		}()
	}
	// (Not from the holder's session: in a transaction, pg_stat_activity
	// is a snapshot taken at its first read.)
	watcher, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer watcher.Close(ctx)
	lockWaiters := func() int {
		var n int
		require.NoError(t, watcher.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%ledger_consume_many%'`).Scan(&n))
		return n
	}
	storetest.WaitFor(t, "a spend of the held account to wait for it", func() bool { return lockWaiters() > 0 })

	otherCtx, cancelOther := context.WithTimeout(ctx, 5*time.Second)
	defer cancelOther()
	_, _, err = st.Consume(otherCtx, store.ConsumeRequest{UserID: other.ID, Service: svc, IdempotencyKey: "other"})
	require.NoError(t, err, "another user's spend waited behind the held account's")
	_, err = st.Balance(otherCtx, other.ID)
	require.NoError(t, err)
	storetest.WaitFor(t, "the held account's spends to wait on one connection", func() bool { return lockWaiters() == 1 })

	_, err = holder.Exec(ctx, `COMMIT`)
	require.NoError(t, err)
	for range spends {
		require.NoError(t, <-results)
	}
	bal, err := st.Balance(ctx, held.ID)
	require.NoError(t, err)
	require.EqualValues(t, 100-spends, bal.Total)
}
