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
	pool := migrateUpTo(t, 31)
	st := store.New(pool, nil)
	started := func(u store.User, plan string, n int, canceled bool) store.Subscription {
		sub := newSubscription(t, st, u, plan, n)
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			if err := store.LinkSubscription(ctx, tx, &sub, fmt.Sprintf("sub_m32_%d", sub.ID)); err != nil {
				return err
			}
			if canceled {
				_, err := tx.Exec(ctx, `UPDATE subscriptions SET status = 'canceled', canceled_at = now() - interval '1 hour' WHERE id = $1`, sub.ID)
				return err
			}
			_, err := store.StartSubscription(ctx, tx, sub.ID)
			return err
		}))
		return sub
	}
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	started(u, "basic", 1, false)
	stopped := started(u, "pro", 2, true)
	alone := started(storetest.NewUser(t, st, storetest.UserOpts{}), "basic", 1, true)

	paid := func(sub store.Subscription, invoice, outcome, detail string) int64 {
		var id int64
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			at := time.Now().Add(-time.Hour)
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
VALUES ($1, 'invoice.paid', now(), $2, $3, $4, now())`, "evt_"+invoice, fmt.Sprintf(`{"data":{"object":{"id":%q}}}`, invoice), outcome, detail)
			return err
		}))
		return id
	}
	renewal := paid(stopped, "in_m32_renewal", "failed", "invoice in_m32_renewal renews subscription 2, which ended here on 27 Nov 2026 20:00 UTC (…); refund the payment")
	afterDeletion := paid(alone, "in_m32_deleted", "failed", "invoice in_m32_deleted paid after its buyer (user 2) deleted the account: …; refund the payment")
	ordinary := paid(stopped, "in_m32_first", "applied", "granted 2,500 subscription credits")

	res, err := store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Equal(t, "00032_money_owed_back.sql", res.App[0])
	pool.Reset()

	stoppedAt := func(id int64) *time.Time {
		var at *time.Time
		require.NoError(t, pool.QueryRow(ctx, `SELECT stopped_here_at FROM subscriptions WHERE id = $1`, id).Scan(&at))
		return at
	}
	require.NotNil(t, stoppedAt(stopped.ID), "a plan canceled beside a live one is not marked stopped here")
	require.Nil(t, stoppedAt(alone.ID), "a user's only plan, canceled, marked stopped here")
	owed := func(id int64) *string {
		var o *string
		require.NoError(t, pool.QueryRow(ctx, `SELECT owed_back FROM payments WHERE id = $1`, id).Scan(&o))
		return o
	}
	require.Equal(t, store.OwedBackStoppedPlan, *owed(renewal))
	require.Equal(t, store.OwedBackDeletedBuyer, *owed(afterDeletion))
	require.Nil(t, owed(ordinary))
}
