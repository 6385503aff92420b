package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

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
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)

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

	mail := ta.waitMail(u.Email, "Your Basic plan: 1,000 credits until")
	require.Contains(t, mail.Text, "$15.00 a month")

	// The success page and the subscription page say what runs.
	success := b.get("/dashboard/subscription/success?session_id=" + sub.CheckoutSessionID)
	acctRequireStatus(t, success, http.StatusOK)
	require.Equal(t, "active", success.Doc(t).Find("#subscription-status").AttrOr("data-state", ""))
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, "Basic", strings.TrimSpace(doc.Find("#subscription-plan").Text()))
	require.Contains(t, doc.Find("#subscription-renews").Text(), "It renews on "+end.UTC().Format("2 Jan 2006"))
	require.Equal(t, "1,000", doc.Find("#subscription-credits").Text())
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
	line["period"] = map[string]any{"start": start.Unix(), "end": end.Unix()}
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
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
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
	require.Contains(t, whDetail(ev), "does not match the plan's 3000 usd")
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
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	mustRedirect(t, b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"DELETE"}}), "/")
	eventually(t, 15*time.Second, "the subscription ended", func() bool {
		s, err := ta.store.SubscriptionByID(ctx, sub.ID)
		return err == nil && s.Status == store.SubCanceled
	})
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM simulator_subscriptions WHERE id = $1 AND status = 'canceled'`, *sub.StripeSubscriptionID))
	require.Len(t, ta.jobRows("cancel_subscription"), 1)
}
