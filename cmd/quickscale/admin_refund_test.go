package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// simPurchase is a pack_500 bought and paid through the payments
// simulator's own checkout page (its webhook applied by the workers).
func simPurchase(t *testing.T, ta *testApp) (store.User, *browser, store.Payment) {
	t.Helper()
	return simPurchaseOf(t, ta, storetest.NewUser(t, ta.store, storetest.UserOpts{}))
}

// simPurchaseOf is simPurchase by a given user (its newest payment).
func simPurchaseOf(t *testing.T, ta *testApp, u store.User) (store.User, *browser, store.Payment) {
	t.Helper()
	ctx := context.Background()
	b := ta.signIn(u.Email)
	checkout := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_500"}}), ta.URL+"/simulator/checkout/")
	mustRedirect(t, b.post(checkout[len(ta.URL):], url.Values{"action": {"pay"}}), "/dashboard/buy-credits/success")
	var pay store.Payment
	eventually(t, 10*time.Second, "the purchase applied", func() bool {
		page, err := ta.store.PaymentsOfUser(ctx, u.ID, 0, 0, 1)
		if err != nil || len(page.Items) == 0 {
			return false
		}
		pay = page.Items[0]
		return pay.Status == store.PaymentSucceeded && pay.CheckoutSessionID == path.Base(checkout)
	})
	return u, b, pay
}

// waitRefunded waits for the payment's refunded total to reach refunded
// (the provider's charge.refunded applied by the workers).
func waitRefunded(t *testing.T, ta *testApp, pay store.Payment, refunded int64) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("payment #%d refunded %d", pay.ID, refunded), func() bool {
		p, err := ta.store.UserPayment(context.Background(), pay.UserID, pay.ID)
		return err == nil && p.AmountRefundedMinor == refunded
	})
}

// refundBySupport refunds amount (as typed) of pay from its refund page,
// as an admin does, and waits until the payment shows refunded (minor
// units) in all; it returns the refund page's path.
func refundBySupport(t *testing.T, ta *testApp, admin *browser, pay store.Payment, amount, reason string, refunded int64) string {
	t.Helper()
	path, _, nonce := refundForm(t, admin, pay.ID)
	mustRedirect(t, admin.post(path, url.Values{"amount": {amount}, "reason": {reason}, "nonce": {nonce}}), fmt.Sprintf("/admin/users/%d", pay.UserID))
	waitRefunded(t, ta, pay, refunded)
	return path
}

// refundForm reads the refund page's form: its path, what it says is left
// to refund and its key.
func refundForm(t *testing.T, admin *browser, paymentID int64) (path, amount, nonce string) {
	t.Helper()
	path = fmt.Sprintf("/admin/payments/%d/refund", paymentID)
	r := admin.get(path)
	acctRequireStatus(t, r, http.StatusOK)
	doc := r.Doc(t)
	// The form says what is left; the amount is typed, not filled in.
	require.Empty(t, doc.Find(`#refund-form input[name="amount"]`).AttrOr("value", ""), "the form fills in an amount")
	return path, doc.Find(`#refund-form`).AttrOr("data-left", ""), doc.Find(`#refund-form input[name="nonce"]`).AttrOr("value", "")
}

// Support refunds part of a payment, then the rest, from its admin page:
// the provider (the simulator) is asked, its charge.refunded event comes
// back through the webhook pipeline, the payment and the receipt show each
// refund, the credits' share is taken back, and the audit log says who
// asked, how much and why. The form sent twice refunds once.
func TestAdminRefundsAPaymentInParts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, buyer, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)

	userPage := fmt.Sprintf("/admin/users/%d", u.ID)
	link := admin.get(userPage).Doc(t).Find(".refund-link")
	require.Equal(t, fmt.Sprintf("/admin/payments/%d/refund", pay.ID), link.AttrOr("href", ""))
	require.Equal(t, fmt.Sprintf("Refund payment #%d", pay.ID), strings.Join(strings.Fields(link.Text()), " "), "repeated links say which payment they refund")
	path, amount, nonce := refundForm(t, admin, pay.ID)
	require.Equal(t, "20.00", amount, "the form offers what is left")
	require.NotEmpty(t, nonce)

	first := url.Values{"amount": {"5"}, "reason": {"duplicate order, customer asked"}, "nonce": {nonce}}
	mustRedirect(t, admin.post(path, first), userPage)
	require.Contains(t, acctText(admin.get(userPage).Doc(t), "#flash"), "Refund of $5.00 of payment #")
	waitRefunded(t, ta, pay, 500)
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(375), bal.Total, "a quarter of the money back takes a quarter of the credits")

	// The same form again (a double click, Back and resend): nothing more.
	mustRedirect(t, admin.post(path, first), userPage)
	require.Contains(t, acctText(admin.get(userPage).Doc(t), "#flash"), "already requested")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_refunds`))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM refund_requests WHERE payment_id = $1`, pay.ID))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'payment.refund' AND target_user_id = $1 AND details->>'reason' = 'duplicate order, customer asked' AND details->>'amount' = '$5.00'`, u.ID))

	// More than is left is refused by the form; the rest is refunded.
	_, amount, nonce = refundForm(t, admin, pay.ID)
	require.Equal(t, "15.00", amount)
	r := admin.post(path, url.Values{"amount": {"15.01"}, "reason": {"rest"}, "nonce": {nonce}})
	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	require.Equal(t, "At most $15.00 is left to refund of this payment.", acctText(r.Doc(t), "#e-amount"))
	mustRedirect(t, admin.post(path, url.Values{"amount": {"$15.00"}, "reason": {"rest"}, "nonce": {nonce}}), userPage)
	waitRefunded(t, ta, pay, pay.AmountMinor)
	bal, err = ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Zero(t, bal.Total)

	// Refunded in full: no link, no form, and a form sent anyway is refused.
	require.Zero(t, admin.get(userPage).Doc(t).Find(".refund-link").Length())
	doc := admin.get(path).Doc(t)
	require.Zero(t, doc.Find("#refund-form").Length())
	require.Equal(t, "This payment is refunded in full.", acctText(doc, "#nothing-to-refund"))
	require.Equal(t, 2, doc.Find("tr.refund-request[data-status=accepted]").Length())
	r = admin.post(path, url.Values{"amount": {"1"}, "reason": {"again"}, "nonce": {"another"}})
	acctRequireStatus(t, r, http.StatusConflict)
	require.Contains(t, acctText(r.Doc(t), ".form-message"), "is refunded in full")

	// The buyer's receipt lists both refunds.
	receipt := buyer.get(fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID)).Doc(t)
	require.Equal(t, 2, receipt.Find("tr.receipt-refund").Length())
	require.Equal(t, "$20.00 (in full)", acctText(receipt, "#receipt-refunded"))
	whNoViolations(t, ta)
}

// The refund form refuses what is not an amount, or no reason, with the
// reason next to the field, and asks nothing; other users' pages and
// unknown payments are answered as such.
func TestAdminRefundFormRefusesBadInput(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, buyer, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	path, _, nonce := refundForm(t, admin, pay.ID)

	for _, c := range []struct{ amount, reason, field, want string }{
		{"", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"abc", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"5.555", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"-5", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"0", "r", "amount", "Enter an amount above zero."},
		{"0.00", "r", "amount", "Enter an amount above zero."},
		{"99999999999", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"25", "r", "amount", "At most $20.00 is left to refund of this payment."},
		{"5", "", "reason", "Say why: the reason is kept in the audit log."},
		{"5", strings.Repeat("é", 501), "reason", "Keep the reason to 500 characters."},
		// As an adjustment's: no hidden or control characters, not blank.
		{"5", "\u200b", "reason", "Say why: the reason is kept in the audit log."},
		{"5", "ok\u202eevil", "reason", "Give the reason on one line, without control or hidden characters."},
		{"5", "line\nbreak", "reason", "Give the reason on one line, without control or hidden characters."},
		// Only the payment's own currency symbol; commas only between thousands.
		{"€5", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"1,0", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"12,50", "r", "amount", "Enter an amount such as 5 or 12.50 (USD), up to $20.00."},
		{"1,000", "r", "amount", "At most $20.00 is left to refund of this payment."},
	} {
		r := admin.post(path, url.Values{"amount": {c.amount}, "reason": {c.reason}, "nonce": {nonce}})
		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
		doc := r.Doc(t)
		require.Equal(t, c.want, acctText(doc, "#e-"+c.field), "amount %q reason %q", c.amount, c.reason)
		require.Equal(t, "f-"+c.field, doc.Find("[autofocus]").AttrOr("id", ""), "the field in error has the focus")
	}
	r := admin.post(path, url.Values{"amount": {"5"}, "reason": {"r"}})
	acctRequireStatus(t, r, http.StatusBadRequest)
	require.Contains(t, acctText(r.Doc(t), ".form-message"), "lost its key")
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM refund_requests`), "a refused form recorded a request")

	for _, p := range []string{"/admin/payments/999999/refund", "/admin/payments/abc/refund", "/admin/payments/0/refund"} {
		require.Equal(t, http.StatusNotFound, admin.get(p).Status, p)
	}
	// A buyer is not support.
	require.Equal(t, http.StatusForbidden, buyer.get(path).Status)
	require.Equal(t, http.StatusForbidden, buyer.post(path, url.Values{"amount": {"5"}, "reason": {"mine"}, "nonce": {nonce}}).Status)
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM refund_requests`))
}

// A refund the provider refuses (here the simulator: part of the charge
// was refunded elsewhere and its event has not arrived) is said on the form
// and kept as refused; one the provider does not answer can be sent again
// under the same key and refunds once.
func TestAdminRefundRefusedOrUnansweredByTheProvider(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	path, _, nonce := refundForm(t, admin, pay.ID)

	_, err := ta.store.Pool().Exec(ctx, `UPDATE simulator_sessions SET amount_refunded_minor = 1500 WHERE payment_intent_id = $1`, *pay.PaymentIntentID)
	require.NoError(t, err)
	r := admin.post(path, url.Values{"amount": {"10"}, "reason": {"goodwill"}, "nonce": {nonce}})
	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	require.Equal(t, "The payments simulator refused the refund: The refund is greater than what is left to refund of this payment. Nothing was refunded.", acctText(r.Doc(t), ".form-message"))
	require.Equal(t, 1, r.Doc(t).Find("tr.refund-request[data-status=refused]").Length())
	_, err = ta.store.Pool().Exec(ctx, `UPDATE simulator_sessions SET amount_refunded_minor = 0 WHERE payment_intent_id = $1`, *pay.PaymentIntentID)
	require.NoError(t, err)

	// Our webhook endpoint cannot store the refund's event for a moment:
	// the simulator's refund fails as a whole, and the form says to send
	// it again, keeping its key.
	_, nonce2 := func() (string, string) { _, a, n := refundForm(t, admin, pay.ID); return a, n }()
	_, err = ta.store.Pool().Exec(ctx, `
CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
CREATE TRIGGER refuse_events BEFORE INSERT ON stripe_events FOR EACH ROW EXECUTE FUNCTION refuse_events();`)
	require.NoError(t, err)
	r = admin.post(path, url.Values{"amount": {"4"}, "reason": {"goodwill"}, "nonce": {nonce2}})
	acctRequireStatus(t, r, http.StatusBadGateway)
	doc := r.Doc(t)
	require.Contains(t, acctText(doc, ".form-message"), "did not answer the refund request")
	require.Equal(t, 1, doc.Find("tr.refund-request[data-status=requested]").Length())
	// Until it is answered, the page offers only to ask it again, under
	// its key; another refund is refused, as it could make two.
	askAgain := func(doc *goquery.Document) url.Values {
		t.Helper()
		f := doc.Find("#ask-again-form")
		require.Equal(t, 1, f.Length(), "no Ask again form")
		require.Zero(t, doc.Find("#refund-form").Length(), "a new refund can be asked while one has no answer")
		v := url.Values{}
		f.Find("input").Each(func(_ int, in *goquery.Selection) { v.Set(in.AttrOr("name", ""), in.AttrOr("value", "")) })
		return v
	}
	form := askAgain(doc)
	require.Equal(t, url.Values{"amount": {"4.00"}, "reason": {"goodwill"}, "nonce": {nonce2}}, form)
	require.Equal(t, form, askAgain(admin.get(path).Doc(t)))
	r = admin.post(path, url.Values{"amount": {"3"}, "reason": {"other"}, "nonce": {"a-new-nonce"}})
	acctRequireStatus(t, r, http.StatusConflict)
	require.Contains(t, acctText(r.Doc(t), ".form-message"), "A refund of $4.00 asked")
	_, err = ta.store.Pool().Exec(ctx, `DROP TRIGGER refuse_events ON stripe_events`)
	require.NoError(t, err)

	mustRedirect(t, admin.post(path, form), fmt.Sprintf("/admin/users/%d", u.ID))
	waitRefunded(t, ta, pay, 400)
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_refunds`))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM refund_requests WHERE status = 'accepted'`))
	require.Equal(t, 2, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'payment.refund'`), "one audit entry per request, not per send")
	require.Zero(t, admin.get(path).Doc(t).Find("#ask-again-form").Length(), "answered, it is not offered again")
}

// In a real browser at a phone's width, support refunds from the refund
// page (typing the reason, pressing Refund) and lands on the user's page
// with the answer; the refund page and its list of requests fit the screen.
func TestBrowserAdminRefundsAtAPhonesWidth(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	ctx := uiPhone(t, ta, admin.Email)
	path := fmt.Sprintf("%s/admin/payments/%d/refund", ta.URL, pay.ID)

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(path),
		chromedp.WaitVisible(chromedp.CSS("#refund-form")),
		chromedp.SetValue(chromedp.CSS("#f-amount"), "2.50"),
		chromedp.SendKeys(chromedp.CSS("#f-reason"), "charged twice for one order, a rather long reason to wrap"),
		chromedp.Click(chromedp.CSS(`#refund-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#flash")),
	))
	flash, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#flash")))
	require.NoError(t, err)
	at, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Contains(t, flash, "Refund of $2.50 of payment #")
	require.Equal(t, fmt.Sprintf("%s/admin/users/%d", ta.URL, u.ID), at)

	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(path), chromedp.WaitVisible(chromedp.CSS("#refund-requests"))))
	wide, err := chromedp.Run(ctx, chromedp.Evaluate[int](`Math.max(document.documentElement.scrollWidth - document.documentElement.clientWidth, ...Array.from(document.querySelectorAll(".table-container")).map(function(e){return e.scrollWidth - e.clientWidth;}))`))
	require.NoError(t, err)
	require.LessOrEqual(t, wide, 0, "the refund page is wider than a 375 px screen")
}

// A refund the provider made whose answer was lost (the request still
// says "no answer") is asked again under its key, whatever the payment
// shows meanwhile: the provider answers the same refund and nothing more is
// refunded. A request too old to ask again (the provider forgets keys
// after a day) is closed by support, with what they found, and only then
// can another be asked.
func TestAdminRefundLostAnswerIsAskedAgainAndAStaleOneClosed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	userPage := fmt.Sprintf("/admin/users/%d", u.ID)
	path := refundBySupport(t, ta, admin, pay, "20", "in full", pay.AmountMinor)
	var refundID string
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `
UPDATE refund_requests SET status = 'requested', provider_refund_id = NULL, answered_at = NULL WHERE payment_id = $1
RETURNING (SELECT id FROM simulator_refunds)`, pay.ID).Scan(&refundID))

	doc := admin.get(path).Doc(t)
	require.Equal(t, 1, doc.Find("#ask-again-form").Length(), "a refunded payment with an unanswered request offers to ask it again")
	form := url.Values{}
	doc.Find("#ask-again-form input").Each(func(_ int, in *goquery.Selection) { form.Set(in.AttrOr("name", ""), in.AttrOr("value", "")) })
	mustRedirect(t, admin.post(path, form), userPage)
	flash := acctText(admin.get(userPage).Doc(t), "#flash")
	require.Contains(t, flash, "("+refundID+")", "asked again, the provider answers the refund it made")
	require.Contains(t, flash, "was made", "and the page says the payment shows it already")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_refunds`))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM refund_requests WHERE status = 'accepted' AND provider_refund_id = $1`, refundID))

	// A second purchase, its request left unanswered for a day.
	_, _, pay2 := simPurchaseOf(t, ta, u)
	path2, _, nonce2 := refundForm(t, admin, pay2.ID)
	_, err := ta.store.RecordRefundRequest(ctx, store.NewRefundRequest{PaymentID: pay2.ID, AdminID: u.ID, AmountMinor: 500, Reason: "old", Key: store.RefundKey(pay2.ID, nonce2), Amount: "$5.00"})
	require.NoError(t, err)
	_, err = ta.store.Pool().Exec(ctx, `UPDATE refund_requests SET created_at = now() - interval '25 hours' WHERE payment_id = $1`, pay2.ID)
	require.NoError(t, err)
	r := admin.post(path2, url.Values{"amount": {"5.00"}, "reason": {"old"}, "nonce": {nonce2}})
	acctRequireStatus(t, r, http.StatusConflict)
	require.Contains(t, acctText(r.Doc(t), ".form-message"), "too old to ask again")
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM simulator_refunds WHERE session_id <> (SELECT session_id FROM simulator_refunds LIMIT 1)`), "a stale request was asked again")
	doc = r.Doc(t)
	require.Equal(t, 1, doc.Find("#close-request-form").Length())
	require.Zero(t, doc.Find("#refund-form, #ask-again-form").Length())
	reqID := doc.Find(`#close-request-form input[name="request"]`).AttrOr("value", "")
	r = admin.post(path2, url.Values{"amount": {"1"}, "reason": {"new"}, "nonce": {"fresh-nonce"}})
	acctRequireStatus(t, r, http.StatusConflict)
	// A form from an older page, with a bad amount and no reason: the page
	// has no refund form to show its errors on, so it says why first.
	r = admin.post(path2, url.Values{"amount": {"5,00"}, "reason": {""}, "nonce": {"older-page"}})
	acctRequireStatus(t, r, http.StatusConflict)
	require.Contains(t, acctText(r.Doc(t), ".form-message"), "has no answer from the payments simulator yet")
	r = admin.post(path2, url.Values{"action": {"close"}, "request": {reqID}, "reason": {""}})
	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	mustRedirect(t, admin.post(path2, url.Values{"action": {"close"}, "request": {reqID}, "reason": {"not in the Stripe dashboard"}}), fmt.Sprintf("/admin/users/%d", u.ID))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'payment.refund_close' AND details->>'reason' = 'not in the Stripe dashboard'`))
	doc = admin.get(path2).Doc(t)
	require.Equal(t, 1, doc.Find("#refund-form").Length(), "closed, a new refund can be asked")
	require.Equal(t, 1, doc.Find("tr.refund-request[data-status=closed]").Length())
}

// A refund the provider accepted but whose event is not applied yet (the
// worker is behind) counts against what the form offers, and the page says
// it waits for confirmation: a second support person does not refund the
// same money again.
func TestAdminRefundCountsRefundsWaitingForConfirmation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	path, _, nonce := refundForm(t, admin, pay.ID)

	// The worker applying the refund's event waits on the payment's row.
	hold, err := ta.store.Pool().Begin(ctx)
	require.NoError(t, err)
	defer hold.Rollback(ctx)
	_, err = hold.Exec(ctx, `SELECT 1 FROM payments WHERE id = $1 FOR NO KEY UPDATE`, pay.ID)
	require.NoError(t, err)
	mustRedirect(t, admin.post(path, url.Values{"amount": {"10"}, "reason": {"first"}, "nonce": {nonce}}), fmt.Sprintf("/admin/users/%d", u.ID))

	_, amount, nonce := refundForm(t, admin, pay.ID)
	require.Equal(t, "10.00", amount, "the form offers what is neither refunded nor waiting")
	doc := admin.get(path).Doc(t)
	require.Equal(t, 1, doc.Find(".unconfirmed-refund").Length())
	require.Contains(t, acctText(doc, ".unconfirmed-refund"), "A refund of $10.00 asked")
	require.Equal(t, "Accepted, waiting for confirmation", acctText(doc, "tr.refund-request .request-status"))
	r := admin.post(path, url.Values{"amount": {"15"}, "reason": {"second"}, "nonce": {nonce}})
	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	require.Equal(t, "At most $10.00 is left to refund: $10.00 more was refunded and waits for the payments simulator's confirmation.", acctText(r.Doc(t), "#e-amount"))

	require.NoError(t, hold.Rollback(ctx))
	waitRefunded(t, ta, pay, 1000)
	doc = admin.get(path).Doc(t)
	require.Zero(t, doc.Find(".unconfirmed-refund").Length(), "confirmed, it no longer waits")
	require.Equal(t, "10.00", doc.Find(`#refund-form`).AttrOr("data-left", ""))
}

// The same amount refunded again within minutes (Back and the form filled
// in again, or a second admin for the same complaint) asks first; two
// refunds sent at once are decided one at a time, so only one is made.
func TestAdminRefundAsksBeforeTheSameAmountAgainAndDecidesOneAtATime(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	adminUser, admin := whAdmin(t, ta)
	userPage := fmt.Sprintf("/admin/users/%d", u.ID)
	path, _, nonce := refundForm(t, admin, pay.ID)
	mustRedirect(t, admin.post(path, url.Values{"amount": {"5"}, "reason": {"customer asked"}, "nonce": {nonce}}), userPage)

	_, _, nonce = refundForm(t, admin, pay.ID)
	r := admin.post(path, url.Values{"amount": {"5.00"}, "reason": {"customer asked"}, "nonce": {nonce}})
	acctRequireStatus(t, r, http.StatusConflict)
	doc := r.Doc(t)
	require.Contains(t, acctText(doc, ".form-message"), "A refund of $5.00 of this payment was made")
	require.Contains(t, acctText(doc, ".form-message"), "by "+adminUser.Email)
	require.Equal(t, 1, doc.Find(`#confirm-repeat input[name="confirm_repeat"]`).Length())
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_refunds`), "asked again without asking first")
	mustRedirect(t, admin.post(path, url.Values{"amount": {"5.00"}, "reason": {"customer asked"}, "nonce": {nonce}, "confirm_repeat": {"yes"}}), userPage)
	require.Equal(t, 2, whCount(t, ta, `SELECT count(*) FROM simulator_refunds`))

	// Two admins send the rest at the same moment: one refund.
	_, left, n1 := refundForm(t, admin, pay.ID)
	require.Equal(t, "10.00", left)
	_, _, n2 := refundForm(t, admin, pay.ID)
	statuses := make(chan int, 2)
	for _, n := range []string{n1, n2} {
		go func(n string) {
			statuses <- admin.post(path, url.Values{"amount": {"10"}, "reason": {"the rest"}, "nonce": {n}}).Status
		}(n)
	}
	got := []int{<-statuses, <-statuses}
	require.Contains(t, got, http.StatusSeeOther)
	require.Equal(t, 3, whCount(t, ta, `SELECT count(*) FROM simulator_refunds`), "both refunds sent at once were made: %v", got)
}

// The refund page names the buyer's address now, and the one the payment
// was made with when it differs; closing a request explains its own
// errors.
func TestAdminRefundPageNamesTheBuyerNowAndExplainsTheCloseNote(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	require.NoError(t, store.ChangeEmail(ctx, ta.store.Pool(), u.ID, "now-"+u.Email))
	path, _, nonce := refundForm(t, admin, pay.ID)
	doc := admin.get(path).Doc(t)
	require.Equal(t, "now-"+u.Email, acctText(doc, "#refund-buyer"))
	require.Equal(t, "(paid as "+u.Email+")", acctText(doc, "#refund-paid-as"))
	require.Equal(t, "h-amount", doc.Find("#f-amount").AttrOr("aria-describedby", ""), "the help saying what is left is read with the field")
	require.Equal(t, "decimal", doc.Find("#f-amount").AttrOr("inputmode", ""))
	// The page is under Users, as the buyer's page is.
	for _, page := range []string{path, fmt.Sprintf("/admin/users/%d", u.ID)} {
		tab := admin.get(page).Doc(t).Find(`.tabs a[href="/admin/users"]`)
		require.Equal(t, "true", tab.AttrOr("aria-current", ""), "%s: the Users tab is not marked as its section", page)
	}

	_, err := ta.store.RecordRefundRequest(ctx, store.NewRefundRequest{PaymentID: pay.ID, AdminID: u.ID, AmountMinor: 500, Reason: "old", Key: store.RefundKey(pay.ID, nonce), Amount: "$5.00"})
	require.NoError(t, err)
	_, err = ta.store.Pool().Exec(ctx, `UPDATE refund_requests SET created_at = now() - interval '25 hours' WHERE payment_id = $1`, pay.ID)
	require.NoError(t, err)
	reqID := admin.get(path).Doc(t).Find(`#close-request-form input[name="request"]`).AttrOr("value", "")
	for note, want := range map[string]string{
		"":                       "Say what you found: the note is kept in the audit log.",
		strings.Repeat("n", 501): "Keep the note to 500 characters.",
		"two\nlines":             "Write the note on one line, without control or hidden characters.",
	} {
		r := admin.post(path, url.Values{"action": {"close"}, "request": {reqID}, "reason": {note}})
		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
		require.Equal(t, want, acctText(r.Doc(t), "#e-reason"))
	}
	r := admin.post(path, url.Values{"action": {"close"}, "request": {"999999"}, "reason": {"x"}})
	acctRequireStatus(t, r, http.StatusConflict)
	require.Contains(t, acctText(r.Doc(t), ".form-message"), "not one of this payment's waiting for an answer")
}
