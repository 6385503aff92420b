package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Each failed attempt to pay an invoice is kept (append-only, once per
// event); a subscription's failed invoices are listed as their latest
// attempt left them, with the payment that paid one later; Overdue is the
// one a past-due subscription owes.
func TestInvoiceFailuresAreKeptAndListedByInvoice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	sub := paidSubscription(t, st, "basic", store.SubscriptionState{}, start)
	end := start.AddDate(0, 1, 0)
	failedAt := start.Add(30 * time.Minute)
	record := func(invoice, event string, attempt int64, at time.Time, next *time.Time, plan string) (bool, error) {
		var created bool
		err := st.InTx(ctx, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload, received_at) VALUES ($1, 'invoice.payment_failed', now(), '{}', now()) ON CONFLICT DO NOTHING`, event); err != nil {
				return err
			}
			var err error
			created, err = store.RecordInvoiceFailure(ctx, tx, store.NewInvoiceFailure{SubscriptionID: sub.ID, InvoiceID: invoice, AmountMinor: 3000,
				Currency: "usd", PlanCode: plan, PeriodStart: end, PeriodEnd: end.AddDate(0, 1, 0), Attempt: attempt, NextAttemptAt: next, FailedAt: at, StripeEventID: event})
			return err
		})
		return created, err
	}
	retry := failedAt.Add(72 * time.Hour)
	created, err := record("in_late", fmt.Sprintf("evt_if_%d_1", sub.ID), 1, failedAt, &retry, "pro")
	require.NoError(t, err)
	require.True(t, created)
	created, err = record("in_late", fmt.Sprintf("evt_if_%d_1", sub.ID), 1, failedAt, &retry, "pro")
	require.NoError(t, err)
	require.False(t, created, "the same event again")
	// The second attempt's event, delivered before the first's would be,
	// still wins: the latest by Stripe's time.
	created, err = record("in_late", fmt.Sprintf("evt_if_%d_2", sub.ID), 2, failedAt.Add(time.Minute), nil, "pro")
	require.NoError(t, err)
	require.True(t, created)
	_, err = record("in_bad", fmt.Sprintf("evt_if_%d_3", sub.ID), 0, failedAt, nil, "gold")
	require.Equal(t, "23503", pgErrCode(err), "a plan that does not exist")

	// The first invoice failed once too, and was paid on a retry.
	paidInvoice := fmt.Sprintf("in_%d_0", sub.ID)
	_, err = record(paidInvoice, fmt.Sprintf("evt_if_%d_4", sub.ID), 1, start.Add(-time.Minute), nil, "")
	require.NoError(t, err)

	fs, err := st.InvoiceFailuresOf(ctx, []int64{sub.ID}, 10)
	require.NoError(t, err)
	require.Len(t, fs, 2)
	require.Equal(t, paidInvoice, fs[1].InvoiceID)
	require.True(t, fs[1].Paid())
	require.Nil(t, fs[1].PlanName, "a plan not known")
	require.Equal(t, start.Unix(), fs[1].PaidAt.Unix())
	f := fs[0]
	require.Equal(t, "in_late", f.InvoiceID)
	require.EqualValues(t, 2, f.Attempts)
	require.Nil(t, f.NextAttemptAt, "the latest attempt's next try (none)")
	require.Equal(t, "Pro", *f.PlanName)
	require.Equal(t, failedAt.Unix(), f.FirstFailedAt.Unix())
	require.Equal(t, failedAt.Add(time.Minute).Unix(), f.LastFailedAt.Unix())
	require.False(t, f.Paid())

	_, found, err := st.Overdue(ctx, reloadSub(t, st, sub))
	require.NoError(t, err)
	require.False(t, found, "an active subscription owes nothing")
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		_, err := store.ApplySubscriptionState(ctx, tx, sub.ID, store.SubscriptionState{Status: store.SubPastDue, At: time.Now(),
			PeriodStart: &end, PeriodEnd: ptr(end.AddDate(0, 1, 0))})
		return err
	}))
	o, found, err := st.Overdue(ctx, reloadSub(t, st, sub))
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, "in_late", o.InvoiceID)

	for _, sql := range []string{`UPDATE invoice_failures SET amount_minor = 1`, `DELETE FROM invoice_failures`} {
		_, err := st.Pool().Exec(ctx, sql)
		require.Error(t, err, sql)
	}
}

func reloadSub(t *testing.T, st *store.Store, sub store.Subscription) store.Subscription {
	t.Helper()
	s, err := st.SubscriptionByID(context.Background(), sub.ID)
	require.NoError(t, err)
	return s
}
