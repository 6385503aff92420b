package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A paid purchase has a receipt page, linked from the payments list: who
// paid, what, how much, when and the payment's reference; a refund shows
// on it once made.
func TestReceiptOfAPaidPurchase(t *testing.T) {
	t.Parallel()
	ta, p, pay := paidPurchase(t)
	path := fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID)

	list := p.Browser.get("/dashboard/payments").Doc(t)
	require.Equal(t, path, list.Find("tr.payment .receipt-link").AttrOr("href", ""), "the payments list does not link the receipt")
	// The credit history's line of the purchase names the payment, as the
	// list and the receipt do; the admin's view of the history too.
	hist := p.Browser.get("/dashboard/credits").Doc(t).Find(`tr.history-item[data-kind="grant"]`)
	require.Equal(t, 1, hist.Length())
	require.Equal(t, fmt.Sprintf("payment #%d", pay.ID), strings.TrimSpace(hist.Find(".payment-ref").Text()))
	_, admin := whAdmin(t, ta)
	require.Equal(t, fmt.Sprintf("payment #%d", pay.ID), strings.TrimSpace(admin.get(fmt.Sprintf("/admin/users/%d", p.User.ID)).Doc(t).Find(`tr.history-item[data-kind="grant"] .payment-ref`).Text()))

	r := p.Browser.get(path)
	acctRequireStatus(t, r, http.StatusOK)
	doc := r.Doc(t)
	require.Equal(t, fmt.Sprintf("Receipt #%d", pay.ID), acctText(doc, "#receipt h1"))
	require.Equal(t, fmt.Sprintf("Receipt #%d · QuickScale", pay.ID), acctText(doc, "title"))
	require.Equal(t, p.User.Email, acctText(doc, "#receipt-email"))
	require.Equal(t, "$20.00", acctText(doc, "#receipt-amount"))
	require.True(t, strings.HasPrefix(acctText(doc, "#receipt-item"), "500 credits"), acctText(doc, "#receipt-item"))
	require.Equal(t, p.Intent, acctText(doc, "#receipt-reference"))
	require.Contains(t, acctText(doc, "#receipt-paid"), pay.PaidAt.UTC().Format("2006"))
	require.Zero(t, doc.Find("#receipt-refunded").Length(), "a refund shown before any")
	require.Contains(t, doc.Find("#receipt").Text(), "Amounts in USD.", "the currency as its code is written")

	id, body := p.refunded(t, 500)
	whApply(t, ta, id, body, store.OutcomeApplied)
	doc = p.Browser.get(path).Doc(t)
	refunded := whPayment(t, ta, p)
	require.NotNil(t, refunded.RefundedAt, "the refund's time is not recorded")
	var created time.Time
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(), `SELECT created FROM stripe_events WHERE id = $1`, id).Scan(&created))
	require.True(t, refunded.RefundedAt.Equal(created), "refunded at %s, want the refund event's time %s", refunded.RefundedAt, created)
	require.True(t, strings.HasPrefix(acctText(doc, "#receipt-refunded"), "$5.00, "), acctText(doc, "#receipt-refunded"))
	require.NotEmpty(t, acctText(doc, "#receipt-refunded-at"))
	require.Equal(t, 1, p.Browser.get("/dashboard/payments").Doc(t).Find("tr.payment .refunded-at").Length())
}

// Nobody sees another user's receipt, and a payment never paid has none.
func TestReceiptIsTheBuyersOnlyAndOnlyOncePaid(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta) // pending: opened, never paid
	pay := whPayment(t, ta, p)
	path := fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID)

	r := p.Browser.get(path)
	acctRequireStatus(t, r, http.StatusNotFound)
	require.Equal(t, "No receipt for this payment", acctText(r.Doc(t), "#error-page h1"))
	require.Zero(t, p.Browser.get("/dashboard/payments").Doc(t).Find(".receipt-link").Length(), "a receipt link for an unpaid payment")

	whPaid(t, ta, p)
	acctRequireStatus(t, p.Browser.get(path), http.StatusOK)
	other := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	acctRequireStatus(t, ta.signIn(other.Email).get(path), http.StatusNotFound)
	for _, bad := range []string{"/dashboard/payments/0/receipt", "/dashboard/payments/x/receipt", "/dashboard/payments/99999999999999999999/receipt"} {
		acctRequireStatus(t, p.Browser.get(bad), http.StatusNotFound)
	}
	mustRedirect(t, ta.browser().get(path), "/login")
}

// At a phone's width the receipt fits the screen: the payment's reference,
// one long word, wraps instead of pushing the page sideways.
func TestBrowserPhoneReceiptFitsTheScreen(t *testing.T) {
	t.Parallel()
	ta, p, pay := paidPurchase(t)
	ctx := uiPhone(t, ta, p.User.Email)
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s/dashboard/payments/%d/receipt", ta.URL, pay.ID)),
		chromedp.WaitVisible(chromedp.CSS("#receipt-reference"))))
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth - document.documentElement.clientWidth`))
	require.NoError(t, err)
	require.LessOrEqual(t, overflow, 0, "the receipt is wider than a 375 px screen")
	// The payments list shows each payment's status on screen, its table
	// not scrolling sideways: a paid one and a checkout still open, with
	// its Cancel button.
	mustRedirect(t, p.Browser.post("/dashboard/buy-credits", url.Values{"pack": {"pack_1000"}, "nonce": {"phone-open"}}), ta.URL+"/simulator/checkout/")
	id, body := p.refunded(t, 500) // in part: its tag and amount
	whApply(t, ta, id, body, store.OutcomeApplied)
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(ta.URL+"/dashboard/payments"), chromedp.WaitVisible(chromedp.CSS("#payments .receipt-link")),
		chromedp.WaitVisible(chromedp.CSS("#payments form.cancel-checkout button"))))
	wide, err := chromedp.Run(ctx, chromedp.Evaluate[int](`(function(){var e=document.querySelector("#payments").closest(".table-container");return e.scrollWidth-e.clientWidth;})()`))
	require.NoError(t, err)
	require.LessOrEqual(t, wide, 0, "the payments table scrolls sideways at 375 px: its status is off screen")
}

// Support finds the customer from what the customer quotes: "payment #N"
// or the receipt's payment reference, or from Stripe's checkout and
// customer ids. A bare "#N" stays a user id.
func TestAdminFindsTheCustomerOfAPayment(t *testing.T) {
	t.Parallel()
	ta, p, pay := paidPurchase(t)
	require.NotNil(t, pay.PaymentIntentID)
	customer, err := ta.store.CustomerID(context.Background(), p.User.ID)
	require.NoError(t, err)
	_, admin := whAdmin(t, ta)
	userLink := fmt.Sprintf(`a[href="/admin/users/%d"]`, p.User.ID)

	for _, q := range []string{fmt.Sprintf("payment #%d", pay.ID), fmt.Sprintf("Receipt %d", pay.ID), *pay.PaymentIntentID, " " + p.SessionID + " "} {
		doc := admin.get("/admin/users?q=" + url.QueryEscape(q)).Doc(t)
		found := doc.Find("#payment-found")
		require.Equal(t, 1, found.Length(), "q=%q", q)
		require.Contains(t, found.Text(), fmt.Sprintf("Payment #%d", pay.ID), "q=%q", q)
		require.Equal(t, 1, found.Find(userLink).Length(), "q=%q", q)
		require.Zero(t, doc.Find("#no-users").Length(), "q=%q: 'no users match' beside the payment found", q)
	}
	doc := admin.get("/admin/users?q=" + url.QueryEscape(customer)).Doc(t)
	require.Equal(t, 1, doc.Find("#customer-found "+userLink).Length())
	// Nothing found: no notice, and the usual "no users match".
	doc = admin.get("/admin/users?q=" + url.QueryEscape("payment #999999999")).Doc(t)
	require.Zero(t, doc.Find("#payment-found").Length())
	require.Equal(t, 1, doc.Find("#no-users").Length())
	doc = admin.get(fmt.Sprintf("/admin/users?q=%%23%d", pay.ID)).Doc(t)
	require.Zero(t, doc.Find("#payment-found").Length(), "#N is a user id, not a payment")
}

// paidPurchase is a test app with one pack bought and paid (the workers
// applied its event).
func paidPurchase(t *testing.T) (*testApp, whPurchase, store.Payment) {
	t.Helper()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	return ta, p, whPayment(t, ta, p)
}

// After a worker outage the payment and its refund are applied late, at
// about the same moment: each keeps Stripe's time of its event, so the
// receipt never says the payment was refunded before it was paid.
func TestPaidAndRefundedTimesAreStripesAfterAnOutage(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	paidAt, refundedAt := time.Now().Add(-3*time.Hour).Truncate(time.Second), time.Now().Add(-150*time.Minute).Truncate(time.Second)
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, p.SessionID, "paid", p.Amount, p.Intent), paidAt)
	whApply(t, ta, id, body, store.OutcomeApplied)
	id, body = whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, p.Intent, p.Amount, 500), refundedAt)
	whApply(t, ta, id, body, store.OutcomeApplied)

	pay := whPayment(t, ta, p)
	require.True(t, pay.PaidAt.Equal(paidAt), "paid at %s, want the completed event's %s", pay.PaidAt, paidAt)
	require.True(t, pay.RefundedAt.Equal(refundedAt), "refunded at %s, want the refund event's %s", pay.RefundedAt, refundedAt)
}

// A refund that could not take back credits already spent says so on the
// receipt, as the payments list does.
func TestReceiptSaysWhatARefundCouldNotTakeBack(t *testing.T) {
	t.Parallel()
	ta, p, pay := paidPurchase(t)
	_, err := ta.store.Adjust(context.Background(), store.Adjustment{UserID: p.User.ID, Delta: -400, Reason: "used elsewhere"})
	require.NoError(t, err)
	id, body := p.refunded(t, p.Amount)
	whApply(t, ta, id, body, store.OutcomeApplied)

	doc := p.Browser.get(fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID)).Doc(t)
	require.True(t, strings.HasPrefix(acctText(doc, "#receipt-shortfall"), "400 credits"), acctText(doc, "#receipt-shortfall"))
}

// A receipt names the address the purchase was billed to, also after the
// buyer changed it, and lists each refund with its amount, time and the
// credits it took back; the total says it was refunded in full.
func TestReceiptNamesTheAddressBilledAndEveryRefund(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, p.SessionID, "paid", p.Amount, p.Intent), time.Now().Add(-3*time.Hour))
	whApply(t, ta, id, body, store.OutcomeApplied)
	pay := whPayment(t, ta, p)
	require.NoError(t, store.ChangeEmail(ctx, ta.store.Pool(), p.User.ID, "renamed-"+p.User.Email))
	path := fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID)
	require.Equal(t, p.User.Email, acctText(p.Browser.get(path).Doc(t), "#receipt-email"), "the receipt names the current address, not the one billed")

	first, second := time.Now().Add(-2*time.Hour).Truncate(time.Second), time.Now().Add(-time.Hour).Truncate(time.Second)
	id, body = whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, p.Intent, p.Amount, 500), first)
	whApply(t, ta, id, body, store.OutcomeApplied)
	id, body = whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, p.Intent, p.Amount, p.Amount), second)
	whApply(t, ta, id, body, store.OutcomeApplied)

	doc := p.Browser.get(path).Doc(t)
	lines := doc.Find("tr.receipt-refund")
	require.Equal(t, 2, lines.Length(), "one line per refund")
	require.Equal(t, "Refund 1", strings.TrimSpace(lines.Eq(0).Find("th").Text()))
	require.Equal(t, "$5.00, "+first.UTC().Format("2 Jan 2006 15:04 UTC")+"; 125 credits taken back", strings.TrimSpace(lines.Eq(0).Find("td").Text()))
	require.Equal(t, "$15.00, "+second.UTC().Format("2 Jan 2006 15:04 UTC")+"; 375 credits taken back", strings.TrimSpace(lines.Eq(1).Find("td").Text()))
	require.Equal(t, "$20.00 (in full)", acctText(doc, "#receipt-refunded"))
	require.Zero(t, doc.Find("#receipt-refunds-unlisted").Length())
	require.Equal(t, p.User.Email, acctText(doc, "#receipt-email"))

	refunds, err := ta.store.RefundsOf(ctx, pay.ID)
	require.NoError(t, err)
	require.Len(t, refunds, 2)
	require.True(t, refunds[0].RefundedAt.Equal(first) && refunds[1].RefundedAt.Equal(second), "refund times %v, %v", refunds[0].RefundedAt, refunds[1].RefundedAt)
}
