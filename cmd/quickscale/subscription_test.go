package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// subscribeForm is the Subscribe form of a plan on the subscription page.
func subscribeForm(t *testing.T, b *browser, plan string) url.Values {
	t.Helper()
	r := b.get("/dashboard/subscription")
	acctRequireStatus(t, r, http.StatusOK)
	doc := r.Doc(t)
	form := doc.Find(`.plan[data-plan="` + plan + `"] form`)
	require.Equal(t, 1, form.Length(), "no Subscribe form for %s", plan)
	return url.Values{"plan": {plan}, "nonce": {form.Find(`input[name="nonce"]`).AttrOr("value", "")}}
}

// simSubscribe subscribes the signed-in user to plan through the
// simulator's checkout and waits for its first invoice to be applied.
func simSubscribe(t *testing.T, ta *testApp, b *browser, userID int64, plan string) store.Subscription {
	t.Helper()
	checkout := mustRedirect(t, b.post("/dashboard/subscription", subscribeForm(t, b, plan)), ta.URL+"/simulator/checkout/")
	page := b.get(checkout[len(ta.URL):])
	acctRequireStatus(t, page, http.StatusOK)
	require.Zero(t, page.Doc(t).Find("#sim-decline").Length(), "a subscription's checkout offers Decline")
	mustRedirect(t, b.post(checkout[len(ta.URL):], url.Values{"action": {"pay"}}), "/dashboard/subscription/success")
	var sub store.Subscription
	eventually(t, 10*time.Second, "the subscription's first invoice applied", func() bool {
		var err error
		sub, err = ta.store.UserSubscriptionBySession(context.Background(), userID, path.Base(checkout))
		return err == nil && sub.Status == store.SubActive && sub.CurrentPeriodEnd != nil && len(subscriptionPayments(t, ta, sub)) == 1
	})
	return sub
}

// subscriptionPayments lists the user's subscription invoices, oldest first.
func subscriptionPayments(t *testing.T, ta *testApp, sub store.Subscription) []store.Payment {
	t.Helper()
	pays, err := ta.store.PaymentsOfSubscription(context.Background(), sub.ID, 100)
	require.NoError(t, err)
	for i, j := 0, len(pays)-1; i < j; i, j = i+1, j-1 {
		pays[i], pays[j] = pays[j], pays[i]
	}
	return pays
}

// A user subscribes to Basic through the simulator's checkout: the first
// invoice is a payment with a receipt, its 1,000 credits expire at the
// period's end, and an email says so. The simulator's clock renews it
// (a second invoice, the next period's credits); cancelled, it ends at
// the next period's end instead of renewing, and the plans are offered
// again.
func TestSubscriptionStartsRenewsAndEnds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)

	sub := simSubscribe(t, ta, b, u.ID, "basic")
	require.Equal(t, "basic", sub.PlanCode)
	require.NotNil(t, sub.StripeSubscriptionID)
	start, end := *sub.CurrentPeriodStart, *sub.CurrentPeriodEnd
	require.Equal(t, start.AddDate(0, 1, 0).Unix(), end.Unix(), "a period is a calendar month")

	pays := subscriptionPayments(t, ta, sub)
	require.Len(t, pays, 1)
	first := pays[0]
	require.Equal(t, "subscription", first.Product)
	require.Equal(t, store.PaymentSucceeded, first.Status)
	require.Equal(t, int64(1500), first.AmountMinor)
	require.Equal(t, int64(1000), first.Credits)
	require.NotNil(t, first.InvoiceID)
	require.Equal(t, end.Unix(), first.PeriodEnd.Unix())
	require.Equal(t, u.Email, *first.BuyerEmail)

	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(1000), bal.ByKind[store.GrantSubscription])
	require.Equal(t, end.Unix(), bal.NextExpiry.Unix(), "the credits expire at the period's end")

	mail := ta.waitMail(u.Email, "Receipt: $15.00 for your Basic plan ("+start.UTC().Format("2 Jan 2006")+" – "+end.UTC().Format("2 Jan 2006")+")")
	require.Contains(t, mail.Text, "Amount paid: $15.00")
	require.Contains(t, mail.Text, "/dashboard/payments/"+formatID(first.ID)+"/receipt")
	require.Contains(t, mail.Text, "It renews on "+end.UTC().Format("2 Jan 2006")+" for $15.00 unless you cancel")

	// The success page and the subscription page say what runs.
	success := b.get("/dashboard/subscription/success?session_id=" + sub.CheckoutSessionID)
	acctRequireStatus(t, success, http.StatusOK)
	require.Equal(t, "active", success.Doc(t).Find("#subscription-status").AttrOr("data-state", ""))
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, "Basic", strings.TrimSpace(doc.Find("#subscription-plan").Text()))
	require.Contains(t, doc.Find("#subscription-renews").Text(), "It renews on "+end.UTC().Format("2 Jan 2006"))
	require.Equal(t, "1,000", doc.Find("#subscription-credits").Text())
	require.Contains(t, acctText(b.get("/dashboard").Doc(t), "#dashboard-plan"), "Your plan: Basic, 1,000 credits a month; it renews on "+end.UTC().Format("2 Jan 2006"))
	require.Zero(t, doc.Find(".plan form").Length(), "plans are offered while one runs")

	// The receipt names the plan and the period.
	receipt := b.get("/dashboard/payments/" + formatID(first.ID) + "/receipt").Doc(t)
	require.Contains(t, receipt.Find("#receipt-item").Text(), "Basic plan, for "+start.UTC().Format("2 Jan 2006")+" – "+end.UTC().Format("2 Jan 2006"))
	require.Equal(t, *first.InvoiceID, strings.TrimSpace(receipt.Find("#receipt-invoice").Text()))

	// A second subscription while one runs is refused before any checkout.
	r := b.post("/dashboard/subscription", url.Values{"plan": {"pro"}, "nonce": {"n2"}})
	acctErrorPage(t, r, http.StatusConflict)

	// The clock reaches the period's end: the next period is paid for.
	mustRedirect(t, b.post("/dashboard/subscription/renew", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the renewal applied", func() bool {
		s, err := ta.store.UserSubscription(ctx, u.ID, sub.ID)
		return err == nil && s.CurrentPeriodEnd.Equal(end.AddDate(0, 1, 0)) && len(subscriptionPayments(t, ta, sub)) == 2
	})
	second := subscriptionPayments(t, ta, sub)[1]
	require.Equal(t, end.Unix(), second.PeriodStart.Unix(), "the next period follows this one")
	require.NotEqual(t, *first.InvoiceID, *second.InvoiceID)
	bal, err = ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2000), bal.ByKind[store.GrantSubscription], "this period's credits and the next one's")
	require.Equal(t, int64(1000), bal.ExpiringNext, "this period's expire first")

	// Cancelled: it does not renew, and says when it ends; kept, it does.
	mustRedirect(t, b.post("/dashboard/subscription/cancel", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	doc = b.get("/dashboard/subscription").Doc(t)
	require.Contains(t, doc.Find("#subscription-ends").Text(), "It ends on")
	require.Contains(t, ta.waitMail(u.Email, "Your Basic plan ends on "+end.AddDate(0, 1, 0).UTC().Format("2 Jan 2006")).Text, "Its credits stay yours until then.")
	mustRedirect(t, b.post("/dashboard/subscription/resume", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	require.Equal(t, 1, b.get("/dashboard/subscription").Doc(t).Find("#subscription-renews").Length())
	mustRedirect(t, b.post("/dashboard/subscription/cancel", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the provider's cancel_at_period_end applied", func() bool {
		s, err := ta.store.UserSubscription(ctx, u.ID, sub.ID)
		return err == nil && s.CancelAtPeriodEnd
	})

	// The clock reaches that end: it ends, with no third invoice.
	mustRedirect(t, b.post("/dashboard/subscription/renew", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the subscription ended", func() bool {
		s, err := ta.store.UserSubscription(ctx, u.ID, sub.ID)
		return err == nil && s.Status == store.SubCanceled
	})
	require.Len(t, subscriptionPayments(t, ta, sub), 2)
	ended := ta.waitMail(u.Email, "Your Basic plan has ended")
	require.Contains(t, ended.Text, "It was set not to renew, so it ended with its period.")
	require.Contains(t, ended.Text, "Subscription credits you still have stay until the end of the month they were paid for")
	doc = b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, 2, doc.Find(".plan form").Length(), "the plans are offered again")
	require.Contains(t, doc.Find("#subscription-past").Text(), "Basic, from")
	// Its credits stay until their own dates.
	bal, err = ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2000), bal.ByKind[store.GrantSubscription])
	// A change to an ended plan changes nothing and says so.
	r = b.post("/dashboard/subscription/resume", url.Values{"subscription": {formatID(sub.ID)}})
	mustRedirect(t, r, "/dashboard/subscription")
	require.Contains(t, b.get("/dashboard/subscription").Body, "has ended already")
}

func formatID(id int64) string { return strconv.FormatInt(id, 10) }

// openSubscriptionCheckout opens a checkout for plan through the site (the
// simulator records it) and returns the subscription recorded for it,
// unpaid: a test then plays Stripe's events itself.
func openSubscriptionCheckout(t *testing.T, ta *testApp, b *browser, userID int64, plan string) store.Subscription {
	t.Helper()
	checkout := mustRedirect(t, b.post("/dashboard/subscription", subscribeForm(t, b, plan)), ta.URL+"/simulator/checkout/")
	sub, err := ta.store.UserSubscriptionBySession(context.Background(), userID, path.Base(checkout))
	require.NoError(t, err)
	require.Equal(t, store.SubCheckout, sub.Status)
	return sub
}

// subInvoice is Stripe's invoice of a subscription's period, paid.
func subInvoice(t *testing.T, sub store.Subscription, stripeSub, invoiceID string, amount int64, start, end time.Time) map[string]any {
	t.Helper()
	inv := whFixture(t, "invoice")
	inv["id"] = invoiceID
	inv["customer"] = sub.CustomerID
	inv["subscription"] = stripeSub
	inv["subscription_details"] = map[string]any{"metadata": map[string]any{"quickscale_subscription_ref": sub.CheckoutRef}}
	inv["amount_due"], inv["amount_paid"], inv["amount_remaining"] = amount, amount, 0
	inv["currency"] = "usd"
	inv["status"], inv["paid"] = "paid", true
	inv["billing_reason"] = "subscription_create"
	inv["payment_intent"] = whID("pi")
	lines := inv["lines"].(map[string]any)
	line := lines["data"].([]any)[0].(map[string]any)
	line["type"] = "subscription"
	line["amount"] = amount
	line["price"].(map[string]any)["unit_amount"] = amount
	line["period"] = map[string]any{"start": start.Unix(), "end": end.Unix()}
	return inv
}

// unpaidInvoice makes an invoice object one whose payment failed its first
// attempt, to be tried again at next (invoice.payment_failed).
func unpaidInvoice(inv map[string]any, next time.Time) map[string]any {
	inv["status"], inv["paid"], inv["amount_paid"] = "open", false, 0
	inv["attempt_count"], inv["next_payment_attempt"] = 1, next.Unix()
	return inv
}

// subObject is Stripe's subscription object in a state.
func subObject(t *testing.T, sub store.Subscription, stripeSub, status string, cancelAtEnd bool, start, end time.Time) map[string]any {
	t.Helper()
	s := whFixture(t, "subscription")
	s["id"] = stripeSub
	s["customer"] = sub.CustomerID
	s["status"] = status
	s["cancel_at_period_end"] = cancelAtEnd
	s["current_period_start"], s["current_period_end"] = start.Unix(), end.Unix()
	s["metadata"] = map[string]any{"quickscale_subscription_ref": sub.CheckoutRef}
	return s
}

// deliverOutcome delivers an event and waits for how it ended.
func deliverOutcome(t *testing.T, ta *testApp, typ stripe.EventType, obj map[string]any, created time.Time) store.StripeEvent {
	t.Helper()
	id, body := whEvent(t, typ, obj, created)
	whMustDeliver(t, ta, body)
	return whWaitOutcome(t, ta, id)
}

// Stripe's events of a subscription arrive in any order and may repeat:
// its first invoice before the checkout's completion still finds the
// subscription (by the reference in its metadata) and grants once; an
// older state changes nothing; an invoice that does not match what was
// sold, or names another customer, is failed for support to look at; an
// invoice of a subscription QuickScale did not make is ignored.
func TestSubscriptionEventsApplyInAnyOrderOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := openSubscriptionCheckout(t, ta, b, u.ID, "pro")
	stripeSub := whID("sub")
	now := time.Now().Truncate(time.Second)
	start, end := now, now.AddDate(0, 1, 0)

	// The invoice first: found by its metadata, granted, the subscription
	// started and linked.
	inv := subInvoice(t, sub, stripeSub, whID("in"), 3000, start, end)
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, inv, now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	got, err := ta.store.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.Equal(t, store.SubActive, got.Status)
	require.Equal(t, stripeSub, *got.StripeSubscriptionID)
	require.Equal(t, end.Unix(), got.CurrentPeriodEnd.Unix())

	// The same invoice again (another event): granted once.
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, inv, now)
	require.Equal(t, "already granted", whDetail(ev))
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2500), bal.ByKind[store.GrantSubscription])
	require.Len(t, subscriptionPayments(t, ta, got), 1)

	// A newer state, then an older one: the older changes nothing.
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, subObject(t, sub, stripeSub, "active", true, start, end), now.Add(10*time.Second))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, subObject(t, sub, stripeSub, "active", false, start, end), now.Add(5*time.Second))
	require.Equal(t, store.OutcomeIgnored, whOutcome(ev), whDetail(ev))
	got, err = ta.store.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.True(t, got.CancelAtPeriodEnd)

	// The checkout's completion last: nothing moves back.
	sess := whSession(t, sub.CheckoutSessionID, "paid", 3000, "")
	sess["mode"], sess["subscription"], sess["payment_intent"] = "subscription", stripeSub, nil
	ev = deliverOutcome(t, ta, stripe.EventTypeCheckoutSessionCompleted, sess, now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	got, err = ta.store.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.Equal(t, store.SubActive, got.Status)
	require.True(t, got.CancelAtPeriodEnd)

	// An invoice for another amount than the plan's, or of another
	// customer: failed, nothing granted.
	wrong := subInvoice(t, sub, stripeSub, whID("in"), 2999, end, end.AddDate(0, 1, 0))
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, wrong, now)
	require.Equal(t, store.OutcomeFailed, whOutcome(ev))
	require.Contains(t, whDetail(ev), "amount paid $29.99 is not one month of a plan of this subscription (its $30.00, or a plan for sale) paid in full")
	other := subInvoice(t, sub, stripeSub, whID("in"), 3000, end, end.AddDate(0, 1, 0))
	other["customer"] = whID("cus")
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, other, now)
	require.Equal(t, store.OutcomeFailed, whOutcome(ev))
	require.Contains(t, whDetail(ev), "is not the recorded")
	// Not ours: ignored.
	foreign := subInvoice(t, sub, whID("sub"), whID("in"), 3000, start, end)
	foreign["subscription_details"] = map[string]any{"metadata": map[string]any{}}
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, foreign, now)
	require.Equal(t, store.OutcomeIgnored, whOutcome(ev), whDetail(ev))
	bal, err = ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2500), bal.ByKind[store.GrantSubscription])

	// Its end, even stamped before the state recorded, ends it.
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionDeleted, subObject(t, sub, stripeSub, "canceled", false, start, end), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	got, err = ta.store.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.Equal(t, store.SubCanceled, got.Status)
	whNoViolations(t, ta)
}

// Support refunds half of a subscription's invoice from the admin: its
// charge is refunded at the simulator, charge.refunded comes back, and
// half of that period's credits are taken back from that period's grant.
// The user page shows the plan.
func TestAdminRefundsASubscriptionInvoice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	sub := simSubscribe(t, ta, ta.signIn(u.Email), u.ID, "basic")
	pay := subscriptionPayments(t, ta, sub)[0]
	_, admin := whAdmin(t, ta)
	userPage := fmt.Sprintf("/admin/users/%d", u.ID)
	doc := admin.get(userPage).Doc(t)
	require.Contains(t, acctText(doc, "#admin-subscription"), "Basic")
	require.Contains(t, acctText(doc, ".payment-plan"), "Basic plan, ")
	require.Equal(t, fmt.Sprintf("/admin/payments/%d/refund", pay.ID), doc.Find(".refund-link").AttrOr("href", ""))

	path, left, nonce := refundForm(t, admin, pay.ID)
	require.Equal(t, "15.00", left)
	mustRedirect(t, admin.post(path, url.Values{"amount": {"7.50"}, "reason": {"charged twice this month"}, "nonce": {nonce}}), userPage)
	waitRefunded(t, ta, pay, 750)
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(500), bal.ByKind[store.GrantSubscription], "half the money back takes half the period's credits")
	got, err := ta.store.UserPayment(ctx, u.ID, pay.ID)
	require.NoError(t, err)
	require.Equal(t, store.PaymentPartiallyRefunded, got.Status)
	require.Equal(t, int64(500), got.CreditsClawedBack)
	whNoViolations(t, ta)
}

// Deleting an account ends its subscription at the provider (a job, in
// the deletion's transaction), so that it does not renew; the provider's
// end comes back as an event and ends ours.
func TestDeletingAnAccountEndsItsSubscription(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	deleteAccount(t, b)
	eventually(t, 15*time.Second, "the subscription ended", func() bool {
		s, err := ta.store.SubscriptionByID(ctx, sub.ID)
		return err == nil && s.Status == store.SubCanceled
	})
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_subscriptions WHERE id = $1 AND status = 'canceled'`, *sub.StripeSubscriptionID))
	// One job from the deletion, and one more for each of the
	// subscription's events still queued (its checkout's completion, say)
	// that is applied after it and finds the account deleted
	// (cancelIfOrphaned): each cancels the same subscription, which ends
	// once.
	require.NotEmpty(t, ta.jobRows("cancel_subscription"))
	// Nobody is told the plan of a deleted account ended (the email job is
	// enqueued with the end, in its transaction).
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'send_email' AND args->>'template' = 'subscription_ended'`))
}

// A checkout opened and left: Subscribe to the same plan again goes back
// to it; to another plan closes it first (at the provider: it can no
// longer be paid), so that two checkouts cannot both start a plan.
func TestSubscribingAgainReusesOrClosesTheOpenCheckout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	basic := openSubscriptionCheckout(t, ta, b, u.ID, "basic")
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, *basic.CheckoutURL, doc.Find("#subscription-open-resume").AttrOr("href", ""))

	// The same plan from a new page: the same checkout.
	again := mustRedirect(t, b.post("/dashboard/subscription", subscribeForm(t, b, "basic")), ta.URL+"/simulator/checkout/")
	require.Equal(t, *basic.CheckoutURL, again)

	// Another plan: the first checkout is closed, a new one opened.
	pro := mustRedirect(t, b.post("/dashboard/subscription", subscribeForm(t, b, "pro")), ta.URL+"/simulator/checkout/")
	require.NotEqual(t, *basic.CheckoutURL, pro)
	closed, err := ta.store.UserSubscription(ctx, u.ID, basic.ID)
	require.NoError(t, err)
	require.Equal(t, store.SubAbandoned, closed.Status)
	r := b.post(again[len(ta.URL):], url.Values{"action": {"pay"}})
	acctErrorPage(t, r, http.StatusConflict)
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_sessions WHERE id = $1 AND status = 'expired'`, basic.CheckoutSessionID))
	// The new one pays and starts Pro.
	mustRedirect(t, b.post(pro[len(ta.URL):], url.Values{"action": {"pay"}}), "/dashboard/subscription/success")
	eventually(t, 10*time.Second, "pro started", func() bool {
		s, found, err := ta.store.LiveSubscription(ctx, u.ID)
		return err == nil && found && s.PlanCode == "pro"
	})
}

// A renewal that does not go through: Stripe's invoice.payment_failed
// emails the customer, and its subscription state (past due) shows on the
// page; the next invoice paid makes it active again.
func TestAFailedRenewalIsToldAndShown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	stripeSub := *sub.StripeSubscriptionID
	start, end := *sub.CurrentPeriodStart, *sub.CurrentPeriodEnd
	now := time.Now().Truncate(time.Second)

	failed := unpaidInvoice(subInvoice(t, sub, stripeSub, whID("in"), 1500, end, end.AddDate(0, 1, 0)), now.Add(72*time.Hour))
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaymentFailed, failed, now.Add(time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	mail := ta.waitMail(u.Email, "Your Basic plan's payment of $15.00 did not go through")
	require.Contains(t, mail.Text, "We will try again on "+now.Add(72*time.Hour).UTC().Format("2 Jan 2006"))

	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, subObject(t, sub, stripeSub, "past_due", false, start, end), now.Add(time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, "past_due", doc.Find("#subscription").AttrOr("data-status", ""))
	require.Equal(t, 1, doc.Find("#subscription-past-due").Length())

	// Paid on a retry: its credits are added and the plan is active again.
	paid := subInvoice(t, sub, stripeSub, failed["id"].(string), 1500, end, end.AddDate(0, 1, 0))
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, paid, now.Add(2*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	got, err := ta.store.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.Equal(t, store.SubActive, got.Status)
	require.Equal(t, end.AddDate(0, 1, 0).Unix(), got.CurrentPeriodEnd.Unix())
	require.Len(t, subscriptionPayments(t, ta, sub), 2)
}

// In a real browser at a phone's width: Subscribe, Pay at the simulated
// checkout, the success page turns to "running" by itself (htmx polling),
// and Cancel asks first (a dialog: dismissed, nothing changes; accepted,
// the plan ends at the period's end). The page fits the screen and the
// site's CSP blocks nothing.
func TestBrowserSubscribesAndCancelsAtAPhonesWidth(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	phone := uiPhone(t, ta, u.Email)

	require.NoError(t, chromedp.Do(phone,
		chromedp.Navigate(ta.URL+"/dashboard/subscription"),
		chromedp.WaitVisible(css(`.plan[data-plan="pro"] button[type="submit"]`)),
		chromedp.Click(css(`.plan[data-plan="pro"] button[type="submit"]`)),
		chromedp.WaitVisible(css("#sim-pay")),
		chromedp.Click(css("#sim-pay")),
		chromedp.WaitVisible(css(`#subscription-status[data-state="active"]`)),
	))
	status, err := chromedp.Run(phone, chromedp.Text(css("#subscription-status")))
	require.NoError(t, err)
	require.Contains(t, status, "Your Pro plan is running.")

	// Cancel, dismissed at the dialog: nothing is sent.
	var answer atomic.Bool
	go func() {
		for ev, err := range chromedp.Events(phone, page.JavascriptDialogOpening) {
			if err != nil {
				return
			}
			if !strings.Contains(ev.Message, "End your Pro plan on ") || !strings.Contains(ev.Message, "OK ends it; Cancel keeps it.") {
				continue
			}
			_, _ = chromedp.Call(phone, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: answer.Load()})
		}
	}()
	require.NoError(t, chromedp.Do(phone,
		chromedp.Navigate(ta.URL+"/dashboard/subscription"),
		chromedp.WaitVisible(css("#subscription-cancel")),
		chromedp.Click(css("#subscription-cancel")),
		// The page stays: the form was not sent.
		chromedp.WaitVisible(css("#subscription-cancel")),
	))
	sub, found, err := ta.store.LiveSubscription(ctx, u.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.False(t, sub.CancelAtPeriodEnd, "a dismissed dialog cancelled the plan")

	wide, err := chromedp.Run(phone, chromedp.Evaluate[int](`Math.max(document.documentElement.scrollWidth - document.documentElement.clientWidth, ...Array.from(document.querySelectorAll(".table-container")).map(function(e){return e.scrollWidth - e.clientWidth;}))`))
	require.NoError(t, err)
	require.LessOrEqual(t, wide, 0, "the subscription page is wider than a 375 px screen")
	require.Empty(t, cspBlocked(t, phone))

	// Accepted: it ends at the period's end, and the page says so.
	answer.Store(true)
	require.NoError(t, chromedp.Do(phone,
		chromedp.Click(css("#subscription-cancel")),
		chromedp.WaitVisible(css("#subscription-ends")),
	))
	flash, err := chromedp.Run(phone, chromedp.Text(css("#flash")))
	require.NoError(t, err)
	require.Contains(t, flash, "Your Pro plan will not renew: it ends on "+sub.CurrentPeriodEnd.UTC().Format("2 Jan 2006"))
}

// Two checkouts paid (two tabs at once): the second subscription is ended
// at once, here and at the provider (a cancel_subscription job), so one
// stays live and nothing renews twice; its paid month's credits are still
// granted, and its events say why.
func TestASecondPaidSubscriptionIsEndedAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: false})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	first := simSubscribe(t, ta, b, u.ID, "basic")
	// The other tab's checkout, opened before the first was paid.
	pro, err := ta.store.PlanByCode(ctx, "pro")
	require.NoError(t, err)
	second, err := ta.store.CreateSubscription(ctx, store.NewSubscription{UserID: u.ID, Plan: pro, CheckoutSessionID: whID("cs"),
		CheckoutRef: "ref_second_" + strconv.FormatInt(u.ID, 10), CustomerID: first.CustomerID})
	require.NoError(t, err)
	stripeSub := whID("sub")
	now := time.Now().Truncate(time.Second)
	ev := deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionCreated, subObject(t, second, stripeSub, "active", false, now, now.AddDate(0, 1, 0)), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "has another live subscription")
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, second, stripeSub, whID("in"), 3000, now, now.AddDate(0, 1, 0)), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	got, err := ta.store.UserSubscription(ctx, u.ID, second.ID)
	require.NoError(t, err)
	require.Equal(t, store.SubCanceled, got.Status)
	live, found, err := ta.store.LiveSubscription(ctx, u.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, first.ID, live.ID, "the first stays the live one")
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(1000+2500), bal.ByKind[store.GrantSubscription], "the paid month is granted")
	waitCancelAsked(t, ta)
	// Its success page says what happened.
	doc := b.get("/dashboard/subscription/success?session_id=" + second.CheckoutSessionID).Doc(t)
	require.Equal(t, "stopped", doc.Find("#subscription-status").AttrOr("data-state", ""))
	whNoViolations(t, ta)
}

// Two subscriptions of one user paid at the same instant (their invoices
// applied at once by two workers' jobs): one starts, the other is ended
// as a second, and both months are granted; neither event fails (a share
// lock let both find no other live one, and one failed on the one-live
// rule with its paid invoice uncredited, in a review).
func TestTwoPlansPaidAtOnceStartOne(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	basic, err := ta.store.PlanByCode(ctx, "basic")
	require.NoError(t, err)
	for round := range 4 {
		u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
		var subs [2]store.Subscription
		var bodies [2][]byte
		var ids [2]string
		now := time.Now().Truncate(time.Second)
		for i := range subs {
			subs[i], err = ta.store.CreateSubscription(ctx, store.NewSubscription{UserID: u.ID, Plan: basic, CheckoutSessionID: whID("cs"),
				CheckoutRef: fmt.Sprintf("ref_race_%d_%d_%d", u.ID, round, i), CustomerID: "cus_race_" + strconv.FormatInt(u.ID, 10)})
			require.NoError(t, err)
			ids[i], bodies[i] = whEvent(t, stripe.EventTypeInvoicePaid, subInvoice(t, subs[i], whID("sub"), whID("in"), 1500, now, now.AddDate(0, 1, 0)), now)
		}
		var wg sync.WaitGroup
		for i := range bodies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = whPost(ta.URL, bodies[i], whSign(bodies[i], ta.app.cfg.StripeWebhookSecret, time.Now()))
			}()
		}
		wg.Wait()
		for _, id := range ids {
			ev := whWaitOutcome(t, ta, id)
			require.Equal(t, store.OutcomeApplied, whOutcome(ev), "round %d: %s", round, whDetail(ev))
		}
		bal, err := ta.store.Balance(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, int64(2000), bal.ByKind[store.GrantSubscription], "round %d: both months granted", round)
		require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM subscriptions WHERE user_id = $1 AND status = 'active'`, u.ID), "round %d", round)
		require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM subscriptions WHERE user_id = $1 AND status = 'canceled'`, u.ID), "round %d", round)
	}
	whNoViolations(t, ta)
}

// An account deleted while a plan's checkout is open: the checkout is
// closed at the provider, so it cannot be paid; and a subscription the
// provider starts for it all the same (paid in that instant) is cancelled
// by the worker, its credits forfeited and its invoice failed for a
// refund.
func TestAPlanCheckoutOfADeletedAccountCannotRenew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	open := openSubscriptionCheckout(t, ta, b, u.ID, "basic")
	deleteAccount(t, b)
	// Closed by the close_checkout job enqueued with the deletion.
	eventually(t, 15*time.Second, "the plan checkout closed", func() bool {
		got, err := ta.store.SubscriptionByID(ctx, open.ID)
		require.NoError(t, err)
		return got.Status == store.SubAbandoned
	})
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_sessions WHERE id = $1 AND status = 'expired'`, open.CheckoutSessionID))

	// Paid anyway (the provider's events for it).
	stripeSub := whID("sub")
	now := time.Now().Truncate(time.Second)
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, open, stripeSub, whID("in"), 1500, now, now.AddDate(0, 1, 0)), now)
	require.Equal(t, store.OutcomeFailed, whOutcome(ev))
	require.Contains(t, whDetail(ev), "deleted the account")
	require.Contains(t, whDetail(ev), "is being cancelled")
	waitCancelAsked(t, ta)
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Zero(t, bal.Total, "a deleted account's credits are forfeited")
	whNoViolations(t, ta)
}

// The menu, with Subscription in it, fits a 1,024 px screen (the smallest
// that shows it whole) for an admin with a long address: the address is
// cut short with an ellipsis (whole in its title), rather than the page
// scrolling sideways and "Sign out" going off screen (a review saw both).
func TestBrowserTheMenuFitsADesktopForAnAdminWithALongAddress(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true, Email: "a.rather.long.address.for.support@quickscale-example.com"})
	ctx := browserContext(t, chromium(t))
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(1024, 768), browserSignIn(ta.URL, admin.Email),
		chromedp.Navigate(ta.URL+"/dashboard/subscription"), chromedp.WaitVisible(css("#nav-logout"))))
	wide, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth - document.documentElement.clientWidth`))
	require.NoError(t, err)
	require.LessOrEqual(t, wide, 0, "the page scrolls sideways at 1,024 px")
	right, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.getElementById("nav-logout").getBoundingClientRect().right`))
	require.NoError(t, err)
	require.LessOrEqual(t, right, 1024.0, "Sign out is off screen")
}

// waitCancelAsked waits for a cancel_subscription job to have asked the
// provider.
func waitCancelAsked(t *testing.T, ta *testApp) {
	t.Helper()
	eventually(t, 10*time.Second, "the provider asked to cancel it", func() bool {
		for _, j := range ta.jobRows("cancel_subscription") {
			if string(j.State) == "completed" {
				return true
			}
		}
		return false
	})
}

// An account deleted while its plan's invoice is being applied: the
// deletion waits for it and erases the new payment's address too (it
// answered 500 when its one statement read the payments from before the
// wait, 1 deletion in 6 in a review), whichever comes first.
func TestDeletingAnAccountWhileItsInvoiceIsAppliedNeverFails(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	for round := range 6 {
		u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
		b := ta.signIn(u.Email)
		sub := openSubscriptionCheckout(t, ta, b, u.ID, "basic")
		now := time.Now().Truncate(time.Second)
		id, body := whEvent(t, stripe.EventTypeInvoicePaid, subInvoice(t, sub, whID("sub"), whID("in"), 1500, now, now.AddDate(0, 1, 0)), now)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = whPost(ta.URL, body, whSign(body, ta.app.cfg.StripeWebhookSecret, time.Now()))
		}()
		r := b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"DELETE"}})
		wg.Wait()
		require.Equal(t, http.StatusSeeOther, r.Status, "round %d: the deletion answered %d", round, r.Status)
		whWaitOutcome(t, ta, id)
		require.Zero(t, whCount(t, ta, `SELECT count(*) FROM payments WHERE user_id = $1 AND buyer_email IS NOT NULL`, u.ID), "round %d", round)
	}
	whNoViolations(t, ta)
}

// The simulator's failed renewal: the period ends and the next one's
// payment fails (invoice.payment_failed, the plan past due, an email); the
// overdue payment going through later adds that month's credits and makes
// it active again; failed again and the retries running out, it ends.
func TestTheSimulatorFailsARenewalThenPaysOrEndsIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	end := *sub.CurrentPeriodEnd
	form := url.Values{"subscription": {formatID(sub.ID)}}
	status := func() store.Subscription { return reload(t, ta, sub) }

	mustRedirect(t, b.post("/dashboard/subscription/fail-renewal", form), "/dashboard/subscription")
	eventually(t, 10*time.Second, "past due", func() bool { return status().Status == store.SubPastDue })
	ta.waitMail(u.Email, "Your Basic plan's payment of $15.00 did not go through")
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, 1, doc.Find("#subscription-past-due").Length())
	require.Equal(t, 1, doc.Find("#subscription-sim-pay-overdue").Length())
	require.Len(t, subscriptionPayments(t, ta, sub), 1, "a failed payment is no payment")
	// Its invoice's charge is no checkout page.
	require.Equal(t, http.StatusNotFound, b.get("/simulator/checkout/"+*mustSimSub(t, ta, sub).OpenInvoiceID).Status)

	mustRedirect(t, b.post("/dashboard/subscription/pay-overdue", form), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the overdue month paid", func() bool {
		return status().Status == store.SubActive && len(subscriptionPayments(t, ta, sub)) == 2
	})
	second := subscriptionPayments(t, ta, sub)[1]
	require.Equal(t, end.Unix(), second.PeriodStart.Unix())
	require.Equal(t, end.AddDate(0, 1, 0).Unix(), status().CurrentPeriodEnd.Unix())
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2000), bal.ByKind[store.GrantSubscription])

	mustRedirect(t, b.post("/dashboard/subscription/fail-renewal", form), "/dashboard/subscription")
	eventually(t, 10*time.Second, "past due again", func() bool { return status().Status == store.SubPastDue })
	mustRedirect(t, b.post("/dashboard/subscription/renew", form), "/dashboard/subscription")
	eventually(t, 10*time.Second, "ended", func() bool { return status().Status == store.SubCanceled })
	require.Len(t, subscriptionPayments(t, ta, sub), 2)
	ended := ta.waitMail(u.Email, "Your Basic plan has ended")
	overdue := end.AddDate(0, 1, 0)
	require.Contains(t, ended.Text, "Its payment of $15.00 for "+overdue.UTC().Format("2 Jan")+" – "+overdue.AddDate(0, 1, 0).UTC().Format("2 Jan 2006")+
		" did not go through, and the payment provider has stopped trying")
	whNoViolations(t, ta)
}

// mustSimSub loads the simulator's side of a subscription.
func mustSimSub(t *testing.T, ta *testApp, sub store.Subscription) store.SimSubscription {
	t.Helper()
	ss, err := ta.store.SimSubscriptionOfUser(context.Background(), *sub.StripeSubscriptionID, sub.UserID)
	require.NoError(t, err)
	return ss
}

// reload reads a subscription as it is now.
func reload(t *testing.T, ta *testApp, sub store.Subscription) store.Subscription {
	t.Helper()
	s, err := ta.store.UserSubscription(context.Background(), sub.UserID, sub.ID)
	require.NoError(t, err)
	return s
}

// subscriber is a test app and a verified user signed in to it.
func subscriber(t *testing.T) (*testApp, store.User, *browser) {
	t.Helper()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	return ta, u, ta.signIn(u.Email)
}

// deleteAccount deletes the signed-in user's account from the settings
// page, as its owner does.
func deleteAccount(t *testing.T, b *browser) {
	t.Helper()
	mustRedirect(t, b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"DELETE"}}), "/")
}

// A plan switches from its next renewal: the provider bills the other
// plan's price from then on (no proration), the month under way stays as
// paid, and the first invoice at that price makes it the plan (its
// credits, its receipt). A switch can be undone before then; a plan set to
// end must be kept first.
func TestSwitchingPlansTakesEffectAtTheNextRenewal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	end := *sub.CurrentPeriodEnd
	endDate := end.UTC().Format("2 Jan 2006")
	form := func(plan string) url.Values { return url.Values{"subscription": {formatID(sub.ID)}, "plan": {plan}} }
	switchTo := func(plan string) *goquery.Document {
		t.Helper()
		mustRedirect(t, b.post("/dashboard/subscription/switch", form(plan)), "/dashboard/subscription")
		return b.get("/dashboard/subscription").Doc(t)
	}
	current := func() store.Subscription { return reload(t, ta, sub) }

	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, 1, doc.Find(`.subscription-switch-form[data-plan="pro"]`).Length())
	require.Zero(t, doc.Find(`.subscription-switch-form[data-plan="basic"]`).Length(), "no switch to the plan it is on")

	doc = switchTo("pro")
	require.Contains(t, acctText(doc, "#flash"), "Your plan switches to Pro on "+endDate+": from then on, 2,500 credits a month for $30.00.")
	mail := ta.waitMail(u.Email, "Your plan switches to Pro on "+endDate)
	require.Contains(t, mail.Text, "from then on, 2,500 credits a month for $30.00")
	require.Contains(t, mail.Text, "/dashboard/subscription")
	require.Equal(t, "Pro", acctText(doc, "#subscription-next-plan"))
	require.Equal(t, "Basic", acctText(doc, "#subscription-plan"), "the plan stays until its renewal")
	require.Contains(t, acctText(doc, "#subscription-period"), "for $30.00: the month's credits expire then, and the next month's 2,500 credits are added.")
	require.Zero(t, doc.Find(".subscription-switch-form").Length())
	require.Equal(t, int64(3000), mustSimSub(t, ta, sub).AmountMinor, "the provider bills Pro's price from the next renewal")
	_, admin := whAdmin(t, ta)
	require.Contains(t, acctText(admin.get("/admin/users/"+formatID(u.ID)).Doc(t), "#admin-subscription"), "renews then, as Pro ($30.00 a month, 2,500 credits) from then",
		"support sees the switch chosen")
	require.Contains(t, acctText(b.get("/dashboard").Doc(t), "#dashboard-plan"), "Your plan: Basic, 1,000 credits a month; it renews on "+endDate+" as Pro.")
	require.Contains(t, acctText(switchTo("pro"), "#flash"), "switches to Pro on "+endDate+" already")

	// Undone: the provider bills Basic's price again.
	doc = switchTo("basic")
	ta.waitMail(u.Email, "You stay on the Basic plan")
	require.Contains(t, acctText(doc, "#flash"), "You stay on the Basic plan: it renews on "+endDate+" for $15.00.")
	require.Zero(t, doc.Find("#subscription-switch").Length())
	require.Equal(t, int64(1500), mustSimSub(t, ta, sub).AmountMinor)
	require.Nil(t, current().NextPlanCode)

	// Chosen again, then the month ends: Pro from then on.
	switchTo("pro")
	mustRedirect(t, b.post("/dashboard/subscription/renew", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the renewal applied", func() bool { return len(subscriptionPayments(t, ta, sub)) == 2 })
	now := current()
	require.Equal(t, "pro", now.PlanCode)
	require.Equal(t, int64(2500), now.CreditsPerPeriod)
	require.Equal(t, int64(3000), now.PriceMinor)
	require.Nil(t, now.NextPlanCode)
	pays := subscriptionPayments(t, ta, sub)
	require.Equal(t, "basic", *pays[0].PlanCode, "each payment keeps the plan it paid for")
	require.Equal(t, "pro", *pays[1].PlanCode)
	require.Equal(t, int64(3000), pays[1].AmountMinor)
	require.Equal(t, int64(2500), pays[1].Credits)
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(1000+2500), bal.ByKind[store.GrantSubscription], "Basic's month, then Pro's")
	ta.waitMail(u.Email, "Receipt: $30.00 for your Pro plan ("+endDate+" – "+end.AddDate(0, 1, 0).UTC().Format("2 Jan 2006")+")")
	doc = b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, "Pro", acctText(doc, "#subscription-plan"))
	require.Equal(t, 1, doc.Find(`.subscription-switch-form[data-plan="basic"]`).Length(), "and back to Basic is offered")

	// The first invoice processed again changes nothing (it paid for Basic).
	first := whCount(t, ta, `SELECT count(*) FROM stripe_events WHERE type = 'invoice.paid'`)
	require.Equal(t, 2, first)
	var firstEvent string
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT id FROM stripe_events WHERE type = 'invoice.paid' ORDER BY created, received_at LIMIT 1`).Scan(&firstEvent))
	mustRedirect(t, admin.post("/admin/webhooks/"+firstEvent+"/reprocess", url.Values{}), "/admin/webhooks/"+firstEvent)
	eventually(t, 10*time.Second, "the invoice processed again", func() bool {
		ev, err := ta.store.StripeEventByID(ctx, firstEvent)
		return err == nil && ev.OutcomeDetail != nil && strings.Contains(*ev.OutcomeDetail, "already granted")
	})
	ev, err := ta.store.StripeEventByID(ctx, firstEvent)
	require.NoError(t, err)
	require.Equal(t, store.OutcomeApplied, *ev.Outcome)

	// Set to end: no switch is offered, and one asked is refused.
	mustRedirect(t, b.post("/dashboard/subscription/cancel", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	require.Zero(t, b.get("/dashboard/subscription").Doc(t).Find(".subscription-switch-form").Length())
	require.Contains(t, acctText(switchTo("basic"), "#flash"), "keep it first")
	require.Nil(t, current().NextPlanCode)

	require.Equal(t, http.StatusNotFound, b.post("/dashboard/subscription/switch", form("gold")).Status)
	other := ta.signIn(storetest.NewUser(t, ta.store, storetest.UserOpts{}).Email)
	require.Equal(t, http.StatusNotFound, other.post("/dashboard/subscription/switch", form("basic")).Status)
	whNoViolations(t, ta)
}

// One user's Subscribe requests run one at a time (a lock per user, held
// around the provider's calls): two plans chosen at the same instant, in
// two tabs, leave one checkout open and the other closed, never two. Here
// another process holds the user's lock: the first request waits for it
// in the database, the second behind the first.
func TestSubscribeRequestsOfOneUserRunOneAtATime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	second := ta.signIn(u.Email)
	basic, pro := subscribeForm(t, b, "basic"), subscribeForm(t, second, "pro")

	other, err := ta.store.Pool().Acquire(ctx)
	require.NoError(t, err)
	defer other.Release()
	_, err = other.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('quickscale.subscribe:' || $1::bigint, 0))`, u.ID)
	require.NoError(t, err)
	var unlockOnce sync.Once
	unlock := func() {
		unlockOnce.Do(func() {
			_, err := other.Exec(ctx, `SELECT pg_advisory_unlock(hashtextextended('quickscale.subscribe:' || $1::bigint, 0))`, u.ID)
			require.NoError(t, err)
		})
	}
	t.Cleanup(unlock) // a failed check must not leave the lock held

	answers := make(chan response, 2)
	go func() { answers <- b.post("/dashboard/subscription", basic) }()
	go func() { answers <- second.post("/dashboard/subscription", pro) }()
	eventually(t, 10*time.Second, "a request waiting for the user's lock", func() bool {
		return whCount(t, ta, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`) == 1
	})
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM subscriptions WHERE user_id = $1`, u.ID), "nothing opened while another process holds the lock")
	unlock()
	for range 2 {
		r := <-answers
		require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	}
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM subscriptions WHERE user_id = $1 AND status = 'checkout'`, u.ID), "one checkout open")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM subscriptions WHERE user_id = $1 AND status = 'abandoned'`, u.ID), "the other closed")
}

// switchForm is the switch form of a subscription to plan.
func switchForm(sub store.Subscription, plan string) url.Values {
	return url.Values{"subscription": {formatID(sub.ID)}, "plan": {plan}}
}

// Each paid invoice grants the plan its amount paid for. Pro chosen, the
// renewal drawn up at Pro's price fails; the switch is undone at the
// provider (its dashboard: the customer cannot while a payment is owed),
// Basic from the renewal after; the overdue invoice, at Pro's price, is
// then paid: Pro's month and credits, and Basic again from the next
// renewal.
func TestAPaidInvoiceGrantsThePlanItPaidFor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	current := func() store.Subscription { return reload(t, ta, sub) }
	mustRedirect(t, b.post("/dashboard/subscription/switch", switchForm(sub, "pro")), "/dashboard/subscription")
	mustRedirect(t, b.post("/dashboard/subscription/fail-renewal", switchForm(sub, "")), "/dashboard/subscription")
	eventually(t, 10*time.Second, "past due", func() bool { return current().Status == store.SubPastDue })
	basic, err := ta.store.PlanByCode(ctx, "basic")
	require.NoError(t, err)
	sim := ta.app.gateway.(*billing.Simulator)
	require.NoError(t, sim.ChangeSubscriptionPlan(ctx, *sub.StripeSubscriptionID, basic))
	// Its event sets the plan chosen to Basic, unless it falls in the
	// second the customer chose Pro; either way it is Basic now.
	_, err = ta.store.Pool().Exec(ctx, `UPDATE subscriptions SET next_plan_code = NULL, next_price_minor = NULL, next_credits_per_period = NULL WHERE id = $1`, sub.ID)
	require.NoError(t, err)
	require.Equal(t, int64(1500), mustSimSub(t, ta, sub).AmountMinor)

	mustRedirect(t, b.post("/dashboard/subscription/pay-overdue", switchForm(sub, "")), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the overdue invoice applied", func() bool {
		return len(subscriptionPayments(t, ta, sub)) == 2 && current().Status == store.SubActive
	})
	now := current()
	require.Equal(t, "pro", now.PlanCode, "the month paid at Pro's price is Pro's")
	require.Equal(t, int64(2500), now.CreditsPerPeriod)
	require.Equal(t, "basic", *now.NextPlanCode, "Basic from the renewal after, as chosen")
	require.Equal(t, int64(1500), *now.NextPriceMinor)
	paid := subscriptionPayments(t, ta, sub)[1]
	require.Equal(t, "pro", *paid.PlanCode)
	require.Equal(t, int64(2500), paid.Credits)
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(1000+2500), bal.ByKind[store.GrantSubscription])
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, "Pro", acctText(doc, "#subscription-plan"))
	require.Equal(t, "Basic", acctText(doc, "#subscription-next-plan"))

	mustRedirect(t, b.post("/dashboard/subscription/renew", switchForm(sub, "")), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the renewal applied", func() bool { return len(subscriptionPayments(t, ta, sub)) == 3 })
	now = current()
	require.Equal(t, "basic", now.PlanCode)
	require.Nil(t, now.NextPlanCode)
	require.Equal(t, int64(1500), subscriptionPayments(t, ta, sub)[2].AmountMinor)
	whNoViolations(t, ta)
}

// Staying on a plan keeps the subscription's own price, though the
// catalog's has risen since and the plan is no longer for sale.
func TestStayingKeepsTheSubscriptionsOwnPrice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	_, err := ta.store.Pool().Exec(ctx, `UPDATE plans SET price_minor = 1800 WHERE code = 'basic'`)
	require.NoError(t, err)
	mustRedirect(t, b.post("/dashboard/subscription/switch", switchForm(sub, "pro")), "/dashboard/subscription")
	_, err = ta.store.Pool().Exec(ctx, `UPDATE plans SET active = false WHERE code = 'basic'`)
	require.NoError(t, err)
	require.Equal(t, 1, b.get("/dashboard/subscription").Doc(t).Find("#subscription-stay").Length())

	mustRedirect(t, b.post("/dashboard/subscription/switch", switchForm(sub, "basic")), "/dashboard/subscription")
	require.Contains(t, acctText(b.get("/dashboard/subscription").Doc(t), "#flash"), "You stay on the Basic plan: it renews on "+sub.CurrentPeriodEnd.UTC().Format("2 Jan 2006")+" for $15.00.")
	require.Equal(t, int64(1500), mustSimSub(t, ta, sub).AmountMinor, "billed at its own price, not the catalog's")
	mustRedirect(t, b.post("/dashboard/subscription/renew", switchForm(sub, "")), "/dashboard/subscription")
	eventually(t, 10*time.Second, "the renewal applied", func() bool { return len(subscriptionPayments(t, ta, sub)) == 2 })
	paid := subscriptionPayments(t, ta, sub)[1]
	require.Equal(t, "basic", *paid.PlanCode)
	require.Equal(t, int64(1500), paid.AmountMinor)
	require.Equal(t, int64(1000), paid.Credits)
}

// A switch the provider took but that could not be recorded is undone at
// the provider: both keep what the page shows, and the customer is told
// nothing changed.
func TestASwitchThatCannotBeRecordedIsUndoneAtTheProvider(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	_, err := ta.store.Pool().Exec(ctx, `
CREATE FUNCTION test_refuse_switch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'test: the switch cannot be recorded'; END $$;
CREATE TRIGGER test_refuse_switch BEFORE UPDATE ON subscriptions FOR EACH ROW
  WHEN (NEW.next_plan_code IS DISTINCT FROM OLD.next_plan_code) EXECUTE FUNCTION test_refuse_switch();`)
	require.NoError(t, err)
	r := b.post("/dashboard/subscription/switch", switchForm(sub, "pro"))
	acctErrorPage(t, r, http.StatusServiceUnavailable)
	require.Contains(t, r.Body, "it was undone and your plan stays as it was")
	require.Equal(t, int64(1500), mustSimSub(t, ta, sub).AmountMinor, "undone at the provider")
	s, err := ta.store.UserSubscription(ctx, u.ID, sub.ID)
	require.NoError(t, err)
	require.Nil(t, s.NextPlanCode)
}

// withPrice sets a Stripe subscription object's one item to bill amount.
func withPrice(t *testing.T, s map[string]any, amount int64) map[string]any {
	t.Helper()
	items := s["items"].(map[string]any)
	item := items["data"].([]any)[0].(map[string]any)
	item["price"].(map[string]any)["unit_amount"] = amount
	item["quantity"] = 1
	items["data"] = []any{item}
	return s
}

// What decides a plan, in Stripe's shapes: an invoice counts only as one
// plan's month paid in full (an extra item or a balance that makes its
// amount another plan's price is failed, not taken for that plan); the
// price Stripe bills from the next renewal, changed in its dashboard, is
// the plan chosen here too (but not an event of the second the customer
// chose); and a last invoice paid after the subscription ended still
// grants the plan it paid for.
func TestInvoicesAndProviderChangesDecideThePlan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := openSubscriptionCheckout(t, ta, b, u.ID, "basic")
	stripeSub := whID("sub")
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	end := start.AddDate(0, 1, 0)
	at := func(d time.Duration) time.Time { return time.Now().Add(d) }
	current := func() store.Subscription { return reload(t, ta, sub) }
	credits := func() int64 {
		bal, err := ta.store.Balance(ctx, u.ID)
		require.NoError(t, err)
		return bal.ByKind[store.GrantSubscription]
	}
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, sub, stripeSub, whID("in"), 1500, start, end), at(0))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, int64(1000), credits())

	// A Basic month with a one-off item of $15: $30 paid, not a Pro month.
	extra := subInvoice(t, sub, stripeSub, whID("in"), 1500, end, end.AddDate(0, 1, 0))
	lines := extra["lines"].(map[string]any)
	first := lines["data"].([]any)[0].(map[string]any)
	item := map[string]any{}
	for k, v := range first {
		item[k] = v
	}
	item["id"], item["type"] = whID("il"), "invoiceitem"
	lines["data"] = []any{first, item}
	extra["amount_paid"], extra["amount_due"] = 3000, 3000
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, extra, at(time.Second))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "is not one month of a plan of this subscription")
	// A Pro month half paid from the customer's balance: not a Basic month.
	half := subInvoice(t, sub, stripeSub, whID("in"), 3000, end, end.AddDate(0, 1, 0))
	half["amount_paid"], half["amount_due"] = 1500, 1500
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, half, at(2*time.Second))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	require.Equal(t, int64(1000), credits())
	require.Equal(t, "basic", current().PlanCode)
	require.Nil(t, current().NextPlanCode)

	// Stripe bills Pro from the next renewal (changed in its dashboard):
	// Pro is the plan chosen here too.
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, withPrice(t, subObject(t, sub, stripeSub, "active", false, start, end), 3000), at(-3*time.Second))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, "pro", *current().NextPlanCode)
	// The customer stays on Basic here; an event of that second (the
	// dashboard's, delivered late) does not undo the choice.
	// (Stripe took it: these events are made here, not by the simulator.)
	basic, err := ta.store.PlanByCode(ctx, "basic")
	require.NoError(t, err)
	res, err := ta.store.ScheduleSwitch(ctx, sub.ID, basic, func() error { return nil })
	require.NoError(t, err)
	require.True(t, res.Changed)
	require.Nil(t, current().NextPlanCode)
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, withPrice(t, subObject(t, sub, stripeSub, "active", false, start, end), 3000), at(0))
	require.Nil(t, current().NextPlanCode, whDetail(ev))
	// A later one does: Stripe bills Pro.
	deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, withPrice(t, subObject(t, sub, stripeSub, "active", false, start, end), 3000), at(5*time.Second))
	require.Equal(t, "pro", *current().NextPlanCode)

	// It ends; Pro's last invoice, paid late, still grants Pro's month.
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionDeleted, subObject(t, sub, stripeSub, "canceled", false, start, end), at(6*time.Second))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Nil(t, current().NextPlanCode, "an ended plan has no next one")
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, sub, stripeSub, whID("in"), 3000, end, end.AddDate(0, 1, 0)), at(7*time.Second))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, int64(1000+2500), credits())
	now := current()
	require.Equal(t, store.SubCanceled, now.Status)
	require.Equal(t, "pro", now.PlanCode)
	require.Nil(t, now.NextPlanCode)
	whNoViolations(t, ta)
}

// A plan sold at $15 whose price Stripe raises to the catalog's $18 shows
// the new price before it is charged, and its invoice then grants Basic at
// $18; two units of Basic on one line are no Pro month.
func TestAPriceRaisedAtStripeShowsAndAMonthIsOneUnit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := openSubscriptionCheckout(t, ta, b, u.ID, "basic")
	stripeSub := whID("sub")
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	end := start.AddDate(0, 1, 0)
	current := func() store.Subscription { return reload(t, ta, sub) }
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, sub, stripeSub, whID("in"), 1500, start, end), time.Now())
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	_, err := ta.store.Pool().Exec(ctx, `UPDATE plans SET price_minor = 1800 WHERE code = 'basic'`)
	require.NoError(t, err)

	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, withPrice(t, subObject(t, sub, stripeSub, "active", false, start, end), 1800), time.Now().Add(time.Second))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	now := current()
	require.Equal(t, "basic", *now.NextPlanCode)
	require.Equal(t, int64(1800), *now.NextPriceMinor)
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Contains(t, acctText(doc, "#subscription-period"), "for $18.00")
	require.Contains(t, acctText(doc, "#subscription-new-price"), "your Basic plan costs $18.00 a month, for 1,000 credits")
	require.Zero(t, doc.Find("#subscription-stay").Length(), "a price set at Stripe is not the customer's to undo")
	require.Equal(t, 1, doc.Find(`.subscription-switch-form[data-plan="pro"]`).Length(), "switching stays offered")
	mustRedirect(t, b.post("/dashboard/subscription/switch", switchForm(sub, "basic")), "/dashboard/subscription")
	require.Contains(t, acctText(b.get("/dashboard/subscription").Doc(t), "#flash"), "stays as it is already")
	require.Equal(t, int64(1800), *current().NextPriceMinor)
	require.NotContains(t, acctText(b.get("/dashboard").Doc(t), "#dashboard-plan"), " as Basic")

	twice := subInvoice(t, sub, stripeSub, whID("in"), 3000, end, end.AddDate(0, 1, 0))
	line := twice["lines"].(map[string]any)["data"].([]any)[0].(map[string]any)
	line["quantity"], line["price"].(map[string]any)["unit_amount"] = 2, 1500
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, twice, time.Now().Add(2*time.Second))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))

	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, sub, stripeSub, whID("in"), 1800, end, end.AddDate(0, 1, 0)), time.Now().Add(3*time.Second))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "it paid $18.00 for Basic, its price from now on")
	now = current()
	require.Equal(t, "basic", now.PlanCode)
	require.Equal(t, int64(1800), now.PriceMinor)
	require.Nil(t, now.NextPlanCode)
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, int64(2000), bal.ByKind[store.GrantSubscription])
}
