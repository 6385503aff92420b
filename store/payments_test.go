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

// The admin overview's 30-day totals count a payment when its money came
// in (a bank debit may settle weeks after the checkout started), with what
// was refunded of it, and pending checkouts started in the window.
func TestPaymentTotalsCountPaymentsWhenPaid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	packs, err := st.Packs(ctx)
	require.NoError(t, err)
	pack := packs[0]
	pay := func(i int, paidDaysAgo, refunded int64) {
		p, err := st.CreatePayment(ctx, store.NewPayment{UserID: u.ID, Pack: pack, CheckoutSessionID: fmt.Sprintf("cs_totals_%d_%d", u.ID, i)})
		require.NoError(t, err)
		if paidDaysAgo < 0 {
			return // still pending
		}
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			g, err := store.Grant(ctx, tx, store.NewGrant{UserID: u.ID, Kind: store.GrantPack, Amount: pack.Credits, SourceKind: "checkout_session", SourceID: p.CheckoutSessionID})
			if err != nil {
				return err
			}
			if err := store.MarkPaymentPaid(ctx, tx, p.ID, fmt.Sprintf("pi_totals_%d_%d", u.ID, i), g.GrantID, time.Now()); err != nil {
				return err
			}
			if refunded > 0 {
				if err := store.RecordRefund(ctx, tx, store.RefundRecord{PaymentID: p.ID, TotalRefunded: refunded, At: time.Now()}); err != nil {
					return err
				}
			}
			// Started 40 days ago; paid paidDaysAgo days ago.
			_, err = tx.Exec(ctx, `UPDATE payments SET created_at = now() - interval '40 days', paid_at = now() - make_interval(days => $2::int) WHERE id = $1`, p.ID, paidDaysAgo)
			return err
		}))
	}
	pay(1, 1, 100)                        // a late bank debit, paid yesterday, partly refunded
	pay(2, 35, 200)                       // paid long ago, refunded now: not in the window
	pay(3, -1, 0)                         // pending, started now
	newSubscription(t, st, u, "basic", 1) // a plan's checkout, open
	totals, err := st.PaymentTotalsSince(ctx, time.Now().Add(-30*24*time.Hour))
	require.NoError(t, err)
	require.Equal(t, store.PaymentTotals{Succeeded: 1, RevenueMinor: pack.PriceMinor, RefundedMinor: 100, Pending: 2}, totals)
}

// Two requests saving a new user's first customer at once (two Buy
// clicks): the second waits for the first's insert and answers the
// customer it saved, not an error (it answered "no rows", a 500).
func TestSaveCustomerIDWaitingForAnotherSaveAnswersItsCustomer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	first, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer first.Rollback(ctx)
	_, err = first.Exec(ctx, `INSERT INTO stripe_customers (user_id, customer_id) VALUES ($1, 'cus_first')`, u.ID)
	require.NoError(t, err)

	type answer struct {
		id  string
		err error
	}
	done := make(chan answer, 1)
	go func() {
		id, err := st.SaveCustomerID(ctx, u.ID, "cus_second")
		done <- answer{id, err}
	}()
	storetest.WaitFor(t, "the second save to wait for the first", func() bool {
		var n int
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%stripe_customers%'`).Scan(&n))
		return n == 1
	})
	require.NoError(t, first.Commit(ctx))
	select {
	case a := <-done:
		require.NoError(t, a.err)
		require.Equal(t, "cus_first", a.id, "the first customer saved wins")
	case <-time.After(10 * time.Second):
		t.Fatal("the second save never answered")
	}
}

// paidPayment records a paid pack purchase of u (its grant and payment).
func paidPayment(t *testing.T, st *store.Store, u store.User, session string) store.Payment {
	t.Helper()
	ctx := context.Background()
	pack, err := st.PackByCode(ctx, "pack_500")
	require.NoError(t, err)
	p, err := st.CreatePayment(ctx, store.NewPayment{UserID: u.ID, Pack: pack, CheckoutSessionID: session})
	require.NoError(t, err)
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		g, err := store.Grant(ctx, tx, store.NewGrant{UserID: u.ID, Kind: store.GrantPack, Amount: pack.Credits, SourceKind: "checkout_session", SourceID: session})
		if err != nil {
			return err
		}
		return store.MarkPaymentPaid(ctx, tx, p.ID, "pi_"+session, g.GrantID, time.Now().Add(-time.Hour))
	}))
	p, err = st.UserPayment(ctx, u.ID, p.ID)
	require.NoError(t, err)
	return p
}

// A payment keeps the address it was billed to, until its buyer is
// deleted; its refunded totals are the sums of its refund rows, which are
// never changed. The schema refuses every way round those rules.
func TestPaymentsKeepTheirBuyersAddressAndEachRefund(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	p := paidPayment(t, st, u, fmt.Sprintf("cs_rules_%d", u.ID))
	require.NotNil(t, p.BuyerEmail)
	require.Equal(t, u.Email, *p.BuyerEmail)
	exec := func(sql string, args ...any) error {
		return st.InTx(ctx, func(tx pgx.Tx) error { _, err := tx.Exec(ctx, sql, args...); return err })
	}

	// Two refunds, each a row; the totals are their sums.
	for i, total := range []int64{300, 800} {
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			return store.RecordRefund(ctx, tx, store.RefundRecord{PaymentID: p.ID, TotalRefunded: total, TotalClawed: total / 4, At: time.Now().Add(time.Duration(i-2) * time.Minute)})
		}))
	}
	refunds, err := st.RefundsOf(ctx, p.ID)
	require.NoError(t, err)
	require.Len(t, refunds, 2)
	require.Equal(t, []int64{300, 500}, []int64{refunds[0].AmountMinor, refunds[1].AmountMinor})
	require.Equal(t, []int64{75, 125}, []int64{refunds[0].CreditsTaken, refunds[1].CreditsTaken})
	// A total that does not grow is refused, and records nothing.
	err = st.InTx(ctx, func(tx pgx.Tx) error {
		return store.RecordRefund(ctx, tx, store.RefundRecord{PaymentID: p.ID, TotalRefunded: 800, TotalClawed: 200, At: time.Now()})
	})
	require.ErrorContains(t, err, "totals must grow")

	// The totals and the rows cannot disagree, whichever is written alone.
	require.Equal(t, "23514", pgErrCode(exec(`UPDATE payments SET amount_refunded_minor = 900 WHERE id = $1`, p.ID)))
	require.Equal(t, "23514", pgErrCode(exec(`INSERT INTO payment_refunds (payment_id, amount_minor, credits_taken, credits_short) VALUES ($1, 100, 0, 0)`, p.ID)))
	// Refund rows are never changed or removed.
	require.Equal(t, "42501", pgErrCode(exec(`UPDATE payment_refunds SET amount_minor = 1 WHERE payment_id = $1`, p.ID)))
	require.Equal(t, "42501", pgErrCode(exec(`DELETE FROM payment_refunds WHERE payment_id = $1`, p.ID)))

	// A live buyer's payment keeps the address; a deleted one's does not.
	require.Equal(t, "23514", pgErrCode(exec(`UPDATE payments SET buyer_email = NULL WHERE id = $1`, p.ID)))
	require.Equal(t, "23514", pgErrCode(exec(`UPDATE users SET email = NULL, deleted_at = now() WHERE id = $1`, u.ID)))
	require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
		_, err := store.DeleteUser(ctx, tx, u.ID)
		return err
	}))
	var left int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM payments WHERE user_id = $1 AND buyer_email IS NOT NULL`, u.ID).Scan(&left))
	require.Zero(t, left, "a deleted account's payments keep its address")
}

// A checkout recorded while its buyer's account is being deleted waits for
// the deletion and is then refused (the account is gone), rather than
// commit with the address and make the deletion fail; a deleted buyer's
// payment cannot take an address back, and a payment cannot be inserted
// already refunded without its refund rows.
func TestPaymentsOfADeletedBuyerStayWithoutTheAddress(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	p := paidPayment(t, st, u, fmt.Sprintf("cs_gone_%d", u.ID))
	pack, err := st.PackByCode(ctx, "pack_100")
	require.NoError(t, err)

	deleting, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer deleting.Rollback(ctx)
	_, err = store.DeleteUser(ctx, deleting, u.ID)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := st.CreatePayment(ctx, store.NewPayment{UserID: u.ID, Pack: pack, CheckoutSessionID: fmt.Sprintf("cs_racing_%d", u.ID)})
		done <- err
	}()
	storetest.WaitFor(t, "the checkout to wait for the deletion", func() bool {
		var n int
		require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO payments%'`).Scan(&n))
		return n == 1
	})
	require.NoError(t, deleting.Commit(ctx), "the deletion failed at commit")
	select {
	case err := <-done:
		require.Equal(t, store.KindNotFound, store.ErrorKind(err), "%v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the checkout never answered")
	}

	exec := func(sql string, args ...any) error {
		return st.InTx(ctx, func(tx pgx.Tx) error { _, err := tx.Exec(ctx, sql, args...); return err })
	}
	require.Equal(t, "23514", pgErrCode(exec(`UPDATE payments SET buyer_email = 'back@example.com' WHERE id = $1`, p.ID)))
	other := storetest.NewUser(t, st, storetest.UserOpts{})
	err = st.InTx(ctx, func(tx pgx.Tx) error {
		g, err := store.Grant(ctx, tx, store.NewGrant{UserID: other.ID, Kind: store.GrantPack, Amount: 500, SourceKind: "checkout_session", SourceID: "cs_copy"})
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
INSERT INTO payments (user_id, product, pack_code, credits, amount_minor, currency, status, checkout_session_id, payment_intent_id,
                      grant_id, paid_at, amount_refunded_minor, buyer_email)
VALUES ($1, 'pack', 'pack_500', 500, 2000, 'usd', 'partially_refunded', 'cs_copy', 'pi_copy', $2, now(), 700, $3)`, other.ID, g.GrantID, other.Email)
		return err
	})
	require.Equal(t, "23514", pgErrCode(err), "a payment inserted refunded without refund rows")
}

// A payment's standing: the accepted refunds it does not show yet count as
// waiting, also two asked before either was confirmed; the newest request
// without an answer is pending.
func TestRefundStandingCountsAcceptedRefundsThePaymentDoesNotShow(t *testing.T) {
	t.Parallel()
	req := func(id int64, status string, before, amount int64) store.RefundRequest {
		return store.RefundRequest{ID: id, Status: status, RefundedBeforeMinor: before, AmountMinor: amount}
	}
	// Newest first, as RefundRequestsOf lists them.
	requests := []store.RefundRequest{
		req(4, store.RefundRequested, 500, 300),
		req(3, store.RefundRefused, 500, 9000),
		req(2, store.RefundAccepted, 0, 500),
		req(1, store.RefundAccepted, 0, 500),
	}
	for refunded, want := range map[int64]int64{0: 1000, 500: 500, 1000: 0, 1200: 0} {
		pending, unconfirmed, waiting := store.RefundStanding(store.Payment{AmountMinor: 2000, AmountRefundedMinor: refunded}, requests)
		require.Equal(t, want, waiting, "refunded %d", refunded)
		require.Len(t, unconfirmed, int(want/500))
		require.NotNil(t, pending)
		require.Equal(t, int64(4), pending.ID)
	}
	_, unconfirmed, _ := store.RefundStanding(store.Payment{AmountMinor: 2000, AmountRefundedMinor: 500}, requests)
	require.Equal(t, int64(2), unconfirmed[0].ID, "the later of two unconfirmed-at-once refunds is the one still waiting")

	// A refund of 200 made in Stripe's dashboard between two requests: the
	// second was asked with 200 refunded, while the first (300) was not
	// shown yet. With the first shown (500), the second still waits.
	between := []store.RefundRequest{req(2, store.RefundAccepted, 200, 100), req(1, store.RefundAccepted, 0, 300)}
	_, _, waiting := store.RefundStanding(store.Payment{AmountMinor: 2000, AmountRefundedMinor: 500}, between)
	require.Equal(t, int64(100), waiting)
	_, _, waiting = store.RefundStanding(store.Payment{AmountMinor: 2000, AmountRefundedMinor: 600}, between)
	require.Zero(t, waiting)
}

// The same amount again is asked about for ten minutes from when the
// refund was made (a request asked again is made when it is accepted, not
// when first asked); the same key twice is the form sent twice.
func TestRecordRefundRequestRepeatsAndKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	admin := storetest.NewUser(t, st, storetest.UserOpts{Admin: true})
	p := paidPayment(t, st, u, fmt.Sprintf("cs_repeat_%d", u.ID))
	ask := func(key string, amount int64) error {
		_, err := st.RecordRefundRequest(ctx, store.NewRefundRequest{PaymentID: p.ID, AdminID: admin.ID, AmountMinor: amount, Reason: "r",
			Key: store.RefundKey(p.ID, key), Amount: "x", AskRepeatWithin: 10 * time.Minute})
		return err
	}
	require.NoError(t, ask("k1", 300))
	require.Equal(t, store.KindConflict, store.ErrorKind(ask("k1", 300)), "the same key twice")
	var pending *store.RefundPendingError
	require.ErrorAs(t, ask("k2", 100), &pending, "another key while one has no answer")
	// Asked 15 minutes ago, accepted (asked again) a minute ago.
	_, err := st.Pool().Exec(ctx, `UPDATE refund_requests SET created_at = now() - interval '15 minutes' WHERE payment_id = $1`, p.ID)
	require.NoError(t, err)
	r, err := st.RefundRequestByKey(ctx, store.RefundKey(p.ID, "k1"))
	require.NoError(t, err)
	require.NoError(t, st.AnswerRefundRequest(ctx, r.ID, "re_1", ""))
	var repeated *store.RepeatedRefundError
	require.ErrorAs(t, ask("k3", 300), &repeated)
	require.NoError(t, ask("k4", 200), "another amount is not a repeat")
}

// A failed refund is recorded once per provider refund, is never changed
// or removed, and says failed or canceled.
func TestRefundFailuresAreRecordedOnceAndKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	p := paidPayment(t, st, u, fmt.Sprintf("cs_refail_%d", u.ID))
	record := func(refundID, eventID, status string) (bool, error) {
		var created bool
		err := st.InTx(ctx, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload, received_at) VALUES ($1, 'charge.refund.updated', now(), '{}', now())`, eventID); err != nil {
				return err
			}
			var err error
			created, err = store.RecordRefundFailure(ctx, tx, store.RefundFailure{PaymentID: p.ID, ProviderRefundID: refundID, AmountMinor: 300,
				Currency: "usd", Status: status, FailedAt: time.Now()}, eventID)
			return err
		})
		return created, err
	}
	created, err := record("re_1", "evt_rf_1", "failed")
	require.NoError(t, err)
	require.True(t, created)
	created, err = record("re_1", "evt_rf_2", "failed")
	require.NoError(t, err)
	require.False(t, created, "the same refund again")
	_, err = record("re_2", "evt_rf_3", "pending")
	require.Equal(t, "23514", pgErrCode(err), "a refund still pending is no failure")

	fs, err := st.RefundFailuresOf(ctx, p.ID)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	require.Equal(t, "no reason given", fs[0].Why())
	marked, err := st.PaymentsWithRefundFailures(ctx, []int64{p.ID, p.ID + 1000})
	require.NoError(t, err)
	require.Equal(t, map[int64]bool{p.ID: true}, marked)
	for _, sql := range []string{`UPDATE payment_refund_failures SET amount_minor = 1`, `DELETE FROM payment_refund_failures`} {
		_, err := st.Pool().Exec(ctx, sql)
		require.Error(t, err, sql)
	}
}
