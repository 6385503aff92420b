package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Migration 00032 marks what was decided before it (h38): a plan canceled
// while another of its user's plans is live was stopped here (the rule the
// worker applied at each renewal), and a paid invoice whose invoice.paid
// failed as a stopped plan's renewal or a deleted buyer's is owed back;
// an ordinary plan or payment gets no mark.
func TestMigration32MarksWhatWasOwedBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, started, paid := m32Setup(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	started(u, "basic", 1, 0)
	stopped := started(u, "pro", 2, 2*time.Hour)
	alone := started(storetest.NewUser(t, st, storetest.UserOpts{}), "basic", 1, 2*time.Hour)
	hourAgo := time.Now().Add(-time.Hour)
	renewal := paid(stopped, "in_m32_renewal", hourAgo, "failed", "invoice in_m32_renewal renews subscription 2, which ended here on 27 Nov 2026 20:00 UTC (…); refund the payment", "")
	afterDeletion := paid(alone, "in_m32_deleted", hourAgo, "failed", "invoice in_m32_deleted paid after its buyer (user 2) deleted the account: …; refund the payment", "")
	ordinary := paid(stopped, "in_m32_first", hourAgo, "applied", "granted 2,500 subscription credits", "")
	// The second user deleted the account before that invoice was paid.
	deleteBuyer(t, st, alone.UserID, 90*time.Minute)

	res, err := store.Migrate(ctx, st.Pool(), slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Equal(t, "00032_money_owed_back.sql", res.App[0])
	st.Pool().Reset()

	require.NotNil(t, m32StoppedAt(t, st, stopped.ID), "a plan canceled beside a live one is not marked stopped here")
	require.Nil(t, m32StoppedAt(t, st, alone.ID), "a user's only plan, canceled, marked stopped here")
	require.Equal(t, store.OwedBackStoppedPlan, *m32Owed(t, st, renewal))
	require.Equal(t, store.OwedBackDeletedBuyer, *m32Owed(t, st, afterDeletion))
	require.Nil(t, m32Owed(t, st, ordinary))
}

// deleteBuyer deletes a user's account as it was that long ago, as the
// database allows (its payments keep no address).
func deleteBuyer(t *testing.T, st *store.Store, userID int64, ago time.Duration) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE payments SET buyer_email = NULL WHERE user_id = $1`, userID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE users SET email = NULL, password_hash = NULL, deleted_at = now() - $2::interval WHERE id = $1`, userID, ago.String())
		return err
	}))
}

func m32Setup(t *testing.T) (*store.Store, func(u store.User, plan string, n int, canceledAgo time.Duration) store.Subscription,
	func(sub store.Subscription, invoice string, periodStart time.Time, outcome, detail, payload string) int64) {
	ctx := context.Background()
	pool := migrateUpTo(t, 31)
	st := store.New(pool, nil)
	started := func(u store.User, plan string, n int, canceledAgo time.Duration) store.Subscription {
		sub := newSubscription(t, st, u, plan, n)
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			if err := store.LinkSubscription(ctx, tx, &sub, fmt.Sprintf("sub_r32_%d", sub.ID)); err != nil {
				return err
			}
			if canceledAgo > 0 {
				_, err := tx.Exec(ctx, `UPDATE subscriptions SET status = 'canceled', canceled_at = now() - $2::interval WHERE id = $1`, sub.ID, canceledAgo.String())
				return err
			}
			_, err := store.StartSubscription(ctx, tx, sub.ID)
			return err
		}))
		return sub
	}
	paid := func(sub store.Subscription, invoice string, at time.Time, outcome, detail, payload string) int64 {
		var id int64
		if payload == "" {
			payload = fmt.Sprintf(`{"data":{"object":{"id":%q}}}`, invoice)
		}
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			expires := at.AddDate(0, 1, 0)
			g, err := store.Grant(ctx, tx, store.NewGrant{UserID: sub.UserID, Kind: store.GrantSubscription, Amount: sub.CreditsPerPeriod,
				ExpiresAt: &expires, SourceKind: "invoice", SourceID: invoice})
			if err != nil {
				return err
			}
			p, _, err := store.RecordInvoicePayment(ctx, tx, store.InvoicePayment{Subscription: sub, InvoiceID: invoice, AmountMinor: sub.PriceMinor,
				Currency: sub.Currency, PeriodStart: at, PeriodEnd: at.AddDate(0, 1, 0), GrantID: g.GrantID, PaidAt: at})
			if err != nil {
				return err
			}
			id = p.ID
			_, err = tx.Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload, outcome, outcome_detail, processed_at)
VALUES ($1, 'invoice.paid', now(), $2, $3, $4, now())`, "evt_"+invoice, payload, outcome, detail)
			return err
		}))
		return id
	}
	return st, started, paid
}

func m32Migrate(t *testing.T, st *store.Store) error {
	_, err := store.Migrate(context.Background(), st.Pool(), slog.New(slog.DiscardHandler))
	st.Pool().Reset()
	return err
}

func m32StoppedAt(t *testing.T, st *store.Store, id int64) *time.Time {
	var at *time.Time
	require.NoError(t, st.Pool().QueryRow(context.Background(), `SELECT stopped_here_at FROM subscriptions WHERE id = $1`, id).Scan(&at))
	return at
}

func m32Owed(t *testing.T, st *store.Store, id int64) *string {
	var o *string
	require.NoError(t, st.Pool().QueryRow(context.Background(), `SELECT owed_back FROM payments WHERE id = $1`, id).Scan(&o))
	return o
}

// A second plan the v31 worker stopped at once (endIfDuplicate: its event
// says so) while the user's first plan ran; the first plan has ended since.
// Migration 00032 must mark the second plan stopped here, or its renewals
// after the migration are taken for ordinary payments.
func TestMigration32MarksAStoppedPlanWhoseOtherPlanEndedSince(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, started, _ := m32Setup(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	first := started(u, "basic", 1, 0)
	second := started(u, "pro", 2, 2*time.Hour)
	_, err := st.Pool().Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload, outcome, outcome_detail, processed_at)
VALUES ('evt_r32_dup', 'checkout.session.completed', now(), '{}', 'applied', $1, now())`,
		fmt.Sprintf("subscription %d: user %d has another live subscription, so this one was ended at once and is being cancelled at the provider", second.ID, u.ID))
	require.NoError(t, err)
	// The first plan ends normally later.
	_, err = st.Pool().Exec(ctx, `UPDATE subscriptions SET status = 'canceled', canceled_at = now() - interval '1 hour' WHERE id = $1`, first.ID)
	require.NoError(t, err)

	require.NoError(t, m32Migrate(t, st))
	require.NotNil(t, m32StoppedAt(t, st, second.ID), "a plan stopped here as a duplicate is not marked once its user's other plan ended")
}

// A user's earlier plan canceled beside a live one is marked as the worker
// judged it until 00032, though it may have ended normally at the provider
// before a new plan (h39): Stripe bills no period after its end, so no
// invoice is misjudged by it.
func TestMigration32MarksAPlanCanceledBesideALiveOne(t *testing.T) {
	t.Parallel()
	st, started, _ := m32Setup(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	old := started(u, "basic", 1, 60*24*time.Hour)
	started(u, "pro", 2, 0)
	require.NoError(t, m32Migrate(t, st))
	// Kept as the rule the worker applied until 00032 (canceled beside a
	// live plan): such a plan has no later invoice to misjudge.
	require.NotNil(t, m32StoppedAt(t, st, old.ID))
}

// A stopped plan's renewal flagged by v31, refunded, then re-processed
// (v31: applied, "its money is back"): its payment is still owed back
// (should the refund fail later it is due again, as after the migration);
// 00032 reads only the event's latest outcome and leaves it unmarked.
func TestMigration32MarksARefundedRenewalReprocessedSince(t *testing.T) {
	t.Parallel()
	st, started, paid := m32Setup(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	started(u, "basic", 1, 0)
	second := started(u, "pro", 2, 3*time.Hour)
	renewal := paid(second, "in_r32_refunded", time.Now().Add(-time.Hour), "applied",
		"invoice in_r32_refunded renews subscription 2, which ended here on 27 Nov 2026 19:00 UTC (…); refund the payment\n"+
			"2026-11-27 20:00 UTC, processed again: applied, already granted; its money is back with the customer (refunded, or taken back by their bank in a lost dispute)", "")
	require.NoError(t, m32Migrate(t, st))
	require.NotNil(t, m32StoppedAt(t, st, second.ID))
	require.NotNil(t, m32Owed(t, st, renewal), "a stopped plan's renewal (period after its stop) refunded and re-processed is not marked owed back")
}

// An invoice.paid payload is stored as text, as Stripe sent it: JSON may
// hold \u0000 in a string (a customer's name, say), which jsonb refuses.
// The migration must not abort on such a row.
func TestMigration32SurvivesAPayloadJsonbRefuses(t *testing.T) {
	t.Parallel()
	st, started, paid := m32Setup(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	sub := started(u, "basic", 1, 3*time.Hour)
	paid(sub, "in_r32_nul", time.Now().Add(-time.Hour), "failed",
		"invoice in_r32_nul paid after its buyer (user 1) deleted the account: …; refund the payment",
		`{"data":{"object":{"id":"in_r32_nul","customer_name":"Bob\u0000"}}}`)
	require.NoError(t, m32Migrate(t, st), "migration 00032 aborts on a payload jsonb cannot hold")
}

// An invoice paid while its buyer's account was live, re-processed after
// the deletion by the h35 worker (failed: "already granted; paid after its
// buyer deleted the account", the h36 bug): the money was theirs to pay,
// so 00032 must not mark it owed back (its paid_at is before deleted_at).
func TestMigration32DoesNotMarkAnInvoicePaidWhileTheAccountWasLive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, started, paid := m32Setup(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	sub := started(u, "basic", 1, 0)
	pay := paid(sub, "in_r32_live", time.Now().Add(-3*time.Hour), "failed",
		fmt.Sprintf("already granted; paid after its buyer (user %d) deleted the account: the credits were forfeited; the payment is still to be refunded (US$15.00; Refund on /admin/payments/1/refund)", u.ID), "")
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE payments SET buyer_email = NULL WHERE user_id = $1`, u.ID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE subscriptions SET status = 'canceled', canceled_at = now() - interval '1 hour' WHERE id = $1`, sub.ID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE users SET email = NULL, password_hash = NULL, deleted_at = now() - interval '1 hour' WHERE id = $1`, u.ID)
		return err
	}))
	require.NoError(t, m32Migrate(t, st))
	require.Nil(t, m32Owed(t, st, pay), "an invoice paid two hours before the deletion is marked owed back to a deleted buyer")
}
