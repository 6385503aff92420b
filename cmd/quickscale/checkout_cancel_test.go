package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A buyer who left the checkout finds it on the cancel page and can close
// it: it can no longer be paid, and the provider's expired event marks the
// payment expired (it used to stay "Pending" for a day). The cancel page
// says only what it knows.
func TestACheckoutLeftOpenCanBeCancelled(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	pay := whPayment(t, ta, p)
	cancelPath := fmt.Sprintf("/dashboard/payments/%d/cancel", pay.ID)

	doc := p.Browser.get("/dashboard/buy-credits/cancel").Doc(t)
	require.Contains(t, doc.Find("#checkout-cancelled").Text(), "If you did not pay there, nothing was charged")
	require.Equal(t, 1, doc.Find(`#open-checkouts form[action="`+cancelPath+`"]`).Length(), "the open checkout is not offered for cancelling")
	require.Equal(t, 1, p.Browser.get("/dashboard/payments").Doc(t).Find(`#payments form.cancel-checkout[action="`+cancelPath+`"]`).Length())

	// Nobody else can cancel it.
	other := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	require.Equal(t, http.StatusNotFound, whLogin(t, ta, other.Email).post(cancelPath, nil).Status)

	mustRedirect(t, p.Browser.post(cancelPath, nil), "/dashboard/payments")
	page := p.Browser.get("/dashboard/payments").Doc(t)
	require.Contains(t, strings.Join(strings.Fields(page.Find("main").Text()), " "), fmt.Sprintf("Checkout #%d is cancelled", pay.ID))
	// Expired at once, not when the provider's event arrives (a form sent
	// again meanwhile would have led back to the dead checkout).
	pay = whPayment(t, ta, p)
	require.Equal(t, store.PaymentExpired, pay.Status)
	require.Equal(t, "Cancelled by the buyer before it was paid.", *pay.FailureReason)
	require.Zero(t, p.Browser.get("/dashboard/payments").Doc(t).Find(`form.cancel-checkout`).Length(), "an expired payment still offers Cancel")
	// The provider's expired event, when it is applied, changes nothing.
	eventually(t, 15*time.Second, "the expired event to be applied", func() bool {
		return whCount(t, ta, `SELECT count(*) FROM stripe_events WHERE type = 'checkout.session.expired' AND outcome IS NOT NULL`) == 1
	})
	require.True(t, whPayment(t, ta, p).Cancelled(), "the expired event's reason replaced the buyer's cancel")

	// It can no longer be paid.
	r := p.Browser.post("/simulator/checkout/"+p.SessionID, url.Values{"action": {"pay"}})
	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	require.Zero(t, whBalance(t, ta, p.User.ID))

	// Cancelling it again (a double click, a form from before) says it is
	// cancelled, and it shows as such, not as run out.
	mustRedirect(t, p.Browser.post(cancelPath, nil), "/dashboard/payments")
	page = p.Browser.get("/dashboard/payments").Doc(t)
	require.Contains(t, strings.Join(strings.Fields(page.Find("main").Text()), " "), fmt.Sprintf("Checkout #%d is cancelled", pay.ID))
	require.Equal(t, "Cancelled", strings.TrimSpace(page.Find(`tr.payment .tag`).Text()))
	require.Equal(t, 1, p.Browser.get("/dashboard/buy-credits/cancel").Doc(t).Find("#no-open-checkouts").Length())
}

// A checkout paid (in another tab) before the buyer cancelled it is not
// cancelled, and the buyer is told.
func TestCancellingACheckoutPaidMeanwhileSaysSo(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	pay := whPayment(t, ta, p)
	// Paid at the simulator; the form on the payments page still says pending.
	r := p.Browser.post("/simulator/checkout/"+p.SessionID, url.Values{"action": {"pay"}})
	require.Less(t, r.Status, 400, r.Body)
	eventually(t, 15*time.Second, "the payment to be paid", func() bool { return whPayment(t, ta, p).Status == store.PaymentSucceeded })
	mustRedirect(t, p.Browser.post(fmt.Sprintf("/dashboard/payments/%d/cancel", pay.ID), nil), "/dashboard/payments")
	require.Contains(t, p.Browser.get("/dashboard/payments").Doc(t).Find("main").Text(), "no longer open (paid)")
	require.Equal(t, p.Credits, whBalance(t, ta, p.User.ID))
}

// A cancel whose answer was lost (the provider expired the session, our
// record still says pending): sent again, it marks the payment expired
// and says it is cancelled, not that it was finished at the checkout.
func TestCancellingACheckoutTheProviderExpiredAlready(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	pay := whPayment(t, ta, p)
	// Expired at the provider, its event not (yet) delivered.
	require.NoError(t, ta.store.ExpireSimSession(context.Background(), p.SessionID, func(store.SimSession) error { return nil }))
	require.Equal(t, store.PaymentPending, whPayment(t, ta, p).Status)

	mustRedirect(t, p.Browser.post(fmt.Sprintf("/dashboard/payments/%d/cancel", pay.ID), nil), "/dashboard/payments")
	require.Equal(t, store.PaymentExpired, whPayment(t, ta, p).Status)
	require.Contains(t, strings.Join(strings.Fields(p.Browser.get("/dashboard/payments").Doc(t).Find("main").Text()), " "), fmt.Sprintf("Checkout #%d is cancelled", pay.ID))
}

// The provider's expired event may be applied before the cancel's own
// record (the simulator delivers it during the cancel): the payment still
// reads as cancelled by its buyer, counted once.
func TestACancelRecordedAfterTheExpiredEventStillSaysCancelled(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	pay := whPayment(t, ta, p)
	obj := whSession(t, p.SessionID, "unpaid", p.Amount, p.Intent)
	obj["status"], obj["payment_intent"] = "expired", nil
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionExpired, obj, time.Now())
	whApply(t, ta, id, body, store.OutcomeApplied)
	require.False(t, whPayment(t, ta, p).Cancelled())

	err := ta.store.InTx(context.Background(), func(tx pgx.Tx) error {
		outcome, counted, err := store.MarkPaymentCancelled(context.Background(), tx, pay.ID, true)
		require.Equal(t, store.CancelRecorded, outcome)
		require.False(t, counted, "counted twice: the event counted it")
		return err
	})
	require.NoError(t, err)
	require.True(t, whPayment(t, ta, p).Cancelled())

	// Not accepted by the provider (it found the checkout expired already):
	// an expiry applied already is not turned into a cancel, and a pending
	// checkout past its day ran out on its own.
	ranOut := whBuy(t, ta)
	obj = whSession(t, ranOut.SessionID, "unpaid", ranOut.Amount, ranOut.Intent)
	obj["status"], obj["payment_intent"] = "expired", nil
	id, body = whEvent(t, stripe.EventTypeCheckoutSessionExpired, obj, time.Now())
	whApply(t, ta, id, body, store.OutcomeApplied)
	old := whBuy(t, ta)
	_, err = ta.store.Pool().Exec(context.Background(), `UPDATE payments SET created_at = now() - interval '25 hours' WHERE id = $1`, whPayment(t, ta, old).ID)
	require.NoError(t, err)
	recent := whBuy(t, ta)
	for _, c := range []struct {
		p         whPurchase
		pending   bool
		cancelled bool
	}{{ranOut, false, false}, {old, true, false}, {recent, true, true}} {
		require.NoError(t, ta.store.InTx(context.Background(), func(tx pgx.Tx) error {
			_, counted, err := store.MarkPaymentCancelled(context.Background(), tx, whPayment(t, ta, c.p).ID, false)
			require.Equal(t, c.pending, counted)
			return err
		}))
		got := whPayment(t, ta, c.p)
		require.Equal(t, store.PaymentExpired, got.Status)
		require.Equal(t, c.cancelled, got.Cancelled(), "payment #%d: %v", got.ID, *got.FailureReason)
	}
	// A paid payment is never marked cancelled.
	paid := whBuy(t, ta)
	whPaid(t, ta, paid)
	require.NoError(t, ta.store.InTx(context.Background(), func(tx pgx.Tx) error {
		_, _, err := store.MarkPaymentCancelled(context.Background(), tx, whPayment(t, ta, paid).ID, true)
		return err
	}))
	require.Equal(t, store.PaymentSucceeded, whPayment(t, ta, paid).Status)
}

// A checkout past its day that the buyer "cancels" had run out on its own:
// recorded as such, and said so (the handler passes on that the provider
// did not expire it at this request).
func TestCancellingACheckoutPastItsDaySaysItExpired(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	pay := whPayment(t, ta, p)
	ctx := context.Background()
	_, err := ta.store.Pool().Exec(ctx, `UPDATE payments SET created_at = now() - interval '25 hours' WHERE id = $1`, pay.ID)
	require.NoError(t, err)
	_, err = ta.store.Pool().Exec(ctx, `UPDATE simulator_sessions SET created_at = now() - interval '25 hours' WHERE id = $1`, p.SessionID)
	require.NoError(t, err)

	mustRedirect(t, p.Browser.post(fmt.Sprintf("/dashboard/payments/%d/cancel", pay.ID), nil), "/dashboard/payments")
	got := whPayment(t, ta, p)
	require.Equal(t, store.PaymentExpired, got.Status)
	require.False(t, got.Cancelled(), "a checkout that ran out is recorded as cancelled by its buyer")
	require.Contains(t, strings.Join(strings.Fields(p.Browser.get("/dashboard/payments").Doc(t).Find("main").Text()), " "), fmt.Sprintf("Checkout #%d had expired already", pay.ID))
}
