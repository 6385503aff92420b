package main

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/store"
)

// emailJobs counts the email jobs of a template to an address.
func emailJobs(t *testing.T, ta *testApp, template, to string) int {
	t.Helper()
	return whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'send_email' AND args->>'template' = $1 AND args->>'to' = $2`, template, to)
}

// secondPlanCheckout is a subscriber on Basic (through the simulator) with
// a Pro checkout open beside it, as one opened in another tab.
func secondPlanCheckout(t *testing.T) (*testApp, store.User, store.Subscription) {
	t.Helper()
	ta, u, b := subscriber(t)
	first := simSubscribe(t, ta, b, u.ID, "basic")
	pro, err := ta.store.PlanByCode(context.Background(), "pro")
	require.NoError(t, err)
	second, err := ta.store.CreateSubscription(context.Background(), store.NewSubscription{UserID: u.ID, Plan: pro, CheckoutSessionID: whID("cs"),
		CheckoutRef: "ref_second_" + strconv.FormatInt(u.ID, 10), CustomerID: first.CustomerID})
	require.NoError(t, err)
	return ta, u, second
}

// Support ends a past-due plan at once: the customer is told our team
// ended it (Stripe's cancellation reason, cancellation_requested), not that
// the provider stopped trying to collect.
func TestEndingAPastDuePlanNowIsNotCalledUnpaid(t *testing.T) {
	t.Parallel()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	_, ab := whAdmin(t, ta)
	mustRedirect(t, b.post("/dashboard/subscription/fail-renewal", url.Values{"subscription": {formatID(sub.ID)}}), "/dashboard/subscription")
	eventually(t, 10*time.Second, "past due", func() bool { return reload(t, ta, sub).Status == store.SubPastDue })
	page := fmt.Sprintf("/admin/users/%d", u.ID)
	mustRedirect(t, ab.post(page+"/subscription", url.Values{"subscription": {formatID(sub.ID)}, "action": {"end_now"}, "reason": {"asked by phone"}}), page)
	eventually(t, 10*time.Second, "ended", func() bool { return reload(t, ta, sub).Status == store.SubCanceled })
	m := ta.waitMail(u.Email, "Your Basic plan has ended")
	require.Contains(t, m.Text, "It was ended by our team.")
	require.NotContains(t, m.Text, "stopped trying")
}

// invoice.payment_failed arriving after invoice.paid of the same invoice
// (events come in any order) is kept on record, and nobody is told a paid
// invoice did not go through; the plan's page shows it paid.
func TestAFailureOfAnInvoicePaidAlreadyIsNotEmailed(t *testing.T) {
	t.Parallel()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	stripeSub := *sub.StripeSubscriptionID
	end := *sub.CurrentPeriodEnd
	now := time.Now().Truncate(time.Second)
	invID := whID("in")
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, sub, stripeSub, invID, 1500, end, end.AddDate(0, 1, 0)), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	failed := unpaidInvoice(subInvoice(t, sub, stripeSub, invID, 1500, end, end.AddDate(0, 1, 0)), now.Add(72*time.Hour))
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaymentFailed, failed, now.Add(-time.Hour))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "is paid already: recorded, the customer is not told")
	require.Zero(t, emailJobs(t, ta, "subscription_payment_failed", u.Email))
	row := b.get("/dashboard/subscription").Doc(t).Find(fmt.Sprintf(`.subscription-failure[data-invoice=%q]`, invID))
	require.Equal(t, "true", row.AttrOr("data-paid", ""))
}

// A plan ended at once because another is live says so on its receipt,
// not that it renews.
func TestASecondPlansReceiptSaysItWasStopped(t *testing.T) {
	t.Parallel()
	ta, u, second := secondPlanCheckout(t)
	now := time.Now().Truncate(time.Second)
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, second, whID("sub"), whID("in"), 3000, now, now.AddDate(0, 1, 0)), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, store.SubCanceled, reload(t, ta, second).Status)
	m := ta.waitMail(u.Email, "Receipt: $30.00 for your Pro plan")
	require.Contains(t, m.Text, "You have another plan running, so this one was stopped at once: it does not renew.")
	require.NotContains(t, m.Text, "It renews on")
}

// A second plan stopped here at once whose cancellation never reached
// the provider (its job gave up, or was deleted in River UI) and renews
// all the same (h31): the renewal's credits are granted, since it was
// paid, but its cancellation is queued again, its event failed for support
// to refund it, and its receipt says it should not have been charged. A
// late invoice of a period that began before the end is not such a
// renewal.
func TestARenewalOfAPlanEndedHereIsFlaggedAndCancelledAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Its one cancellation never gets through.
	ta, u, second, renewal, now := stoppedPlan(t)
	before := whBalance(t, ta, u.ID)
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, renewal, now.Add(time.Minute))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "which ended here on")
	require.Contains(t, whDetail(ev), "refund the payment")
	require.Equal(t, before+2500, whBalance(t, ta, u.ID), "the paid renewal's credits")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription' AND (args->>'subscription_id')::bigint = $1`, second.ID),
		"its cancellation is not queued again")
	// Its receipt (the second of that subject: the first is the plan's
	// first invoice's) says so.
	var m store.Mail
	eventually(t, 15*time.Second, "the renewal's receipt", func() bool {
		for _, x := range ta.mailbox() {
			if x.To == u.Email && strings.Contains(x.Subject, "Receipt: $30.00 for your Pro plan") && strings.Contains(x.Text, "This plan had ended before this renewal") {
				m = x
				return true
			}
		}
		return false
	})
	require.NotContains(t, m.Text, "It renews on")

	// Re-processed (h33), it stays failed and asks the cancellation again,
	// until its payment is refunded in full.
	_, err := ta.store.Pool().Exec(ctx, `DELETE FROM river_job WHERE kind = 'cancel_subscription'`)
	require.NoError(t, err)
	_, admin := whAdmin(t, ta)
	flagged := ev.ID
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return strings.Contains(whDetail(e), "processed again") })
	again := whRequireOutcome(t, ta, flagged, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "still to be refunded")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription'`), "its cancellation is not asked again")
	refundID, refund := whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, renewal["payment_intent"].(string), 3000, 3000), now.Add(90*time.Second))
	whMustDeliver(t, ta, refund)
	whRequireOutcome(t, ta, refundID, store.OutcomeApplied)
	lastRun := *again.ProcessedAt
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	whRequireOutcome(t, ta, flagged, store.OutcomeApplied)

	// A late invoice of a period that began before the plan ended (paid
	// late, say) is not a renewal after its end: applied as before.
	_, err = ta.store.Pool().Exec(ctx, `DELETE FROM river_job WHERE kind = 'cancel_subscription'`)
	require.NoError(t, err)
	late := subInvoice(t, second, renewal["subscription"].(string), whID("in"), 3000, now.Add(-time.Hour), now.AddDate(0, 1, 0))
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, late, now.Add(2*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription'`))
}

// An older invoice never paid (the plan active again since, the next
// month paid) is not what a later past-due period owes: until that
// period's own failure arrives the page says only that the renewal did not
// go through, and the old invoice is listed as not paid, with no next try.
func TestAnOldUnpaidInvoiceIsNotShownAsOverdue(t *testing.T) {
	t.Parallel()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	stripeSub := *sub.StripeSubscriptionID
	end := *sub.CurrentPeriodEnd
	now := time.Now().Truncate(time.Second)
	m1, m2, m3 := end.AddDate(0, 1, 0), end.AddDate(0, 2, 0), end.AddDate(0, 3, 0)

	old := unpaidInvoice(subInvoice(t, sub, stripeSub, whID("in"), 1500, end, m1), now.Add(-time.Hour))
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaymentFailed, old, now.Add(time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, subObject(t, sub, stripeSub, "active", false, end, m1), now.Add(2*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, sub, stripeSub, whID("in"), 1500, m1, m2), now.Add(3*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, subObject(t, sub, stripeSub, "past_due", false, m2, m3), now.Add(4*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))

	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, 1, doc.Find("#subscription-past-due").Length())
	require.Zero(t, doc.Find("#overdue-amount").Length(), "an old invoice shown as what is owed now")
	require.Contains(t, acctText(doc, "#subscription-past-due"), "The payment that renews this plan did not go through.")
	row := doc.Find(".subscription-failure")
	require.Equal(t, 1, row.Length())
	require.Contains(t, acctTextSel(row), "Not paid")
	require.NotContains(t, acctTextSel(row), "next try")
}

// A past-due plan set to end whose retries run out ends now, for want of
// payment: the simulator says payment_failed, and the customer is told the
// payment did not go through, not that our team ended it.
func TestAPastDuePlanSetToEndEndsUnpaid(t *testing.T) {
	t.Parallel()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	form := url.Values{"subscription": {formatID(sub.ID)}}
	mustRedirect(t, b.post("/dashboard/subscription/fail-renewal", form), "/dashboard/subscription")
	eventually(t, 10*time.Second, "past due", func() bool { return reload(t, ta, sub).Status == store.SubPastDue })
	mustRedirect(t, b.post("/dashboard/subscription/cancel", form), "/dashboard/subscription")
	require.True(t, reload(t, ta, sub).CancelAtPeriodEnd)
	mustRedirect(t, b.post("/dashboard/subscription/renew", form), "/dashboard/subscription")
	eventually(t, 10*time.Second, "ended", func() bool { return reload(t, ta, sub).Status == store.SubCanceled })
	m := ta.waitMail(u.Email, "Your Basic plan has ended")
	require.Contains(t, m.Text, "did not go through, and the payment provider has stopped trying")
	require.NotContains(t, m.Text, "ended by our team")
}

// A renewal that fails while an older invoice is still retried: the older
// one's later failure does not hide what this period owes.
func TestAnOlderInvoicesRetryDoesNotHideThisPeriodsOverdue(t *testing.T) {
	t.Parallel()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	stripeSub := *sub.StripeSubscriptionID
	end := *sub.CurrentPeriodEnd
	now := time.Now().Truncate(time.Second)
	m1, m2 := end.AddDate(0, 1, 0), end.AddDate(0, 2, 0)
	older, current := whID("in"), whID("in")
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaymentFailed, unpaidInvoice(subInvoice(t, sub, stripeSub, older, 1500, end, m1), now.Add(48*time.Hour)), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	ev = deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionUpdated, subObject(t, sub, stripeSub, "past_due", false, m1, m2), now.Add(time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaymentFailed, unpaidInvoice(subInvoice(t, sub, stripeSub, current, 1500, m1, m2), now.Add(72*time.Hour)), now.Add(2*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	retry := unpaidInvoice(subInvoice(t, sub, stripeSub, older, 1500, end, m1), now.Add(96*time.Hour))
	retry["attempt_count"] = 2
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaymentFailed, retry, now.Add(3*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Equal(t, 1, doc.Find("#overdue-amount").Length(), "this period's unpaid invoice is no longer shown as owed")
	require.Contains(t, acctText(doc, "#subscription-past-due"), m1.UTC().Format("2 Jan 2006")+" – "+m2.UTC().Format("2 Jan 2006"))
}

// stoppedPlan is a second plan stopped here (its first invoice paid while
// the user's first plan runs) whose cancellation never reached the
// provider, and its next renewal's invoice, not yet delivered. now is the
// base of the provider's times: a few minutes ago, before anything the
// test does next (a deletion, say).
func stoppedPlan(t *testing.T) (ta *testApp, u store.User, second store.Subscription, renewal map[string]any, now time.Time) {
	t.Helper()
	ta, u, second = secondPlanCheckout(t)
	now = time.Now().Add(-5 * time.Minute).Truncate(time.Second)
	end := now.AddDate(0, 1, 0)
	stripeSub := whID("sub")
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, second, stripeSub, whID("in"), 3000, now, end), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, store.SubCanceled, reload(t, ta, second).Status)
	_, err := ta.store.Pool().Exec(context.Background(), `DELETE FROM river_job WHERE kind = 'cancel_subscription'`)
	require.NoError(t, err)
	renewal = subInvoice(t, second, stripeSub, whID("in"), 3000, end, end.AddDate(0, 1, 0))
	renewal["billing_reason"] = "subscription_cycle"
	return ta, u, second, renewal, now
}

// flaggedRenewal is stoppedPlan with its renewal delivered: its event,
// failed for a refund.
func flaggedRenewal(t *testing.T) (ta *testApp, u store.User, second store.Subscription, renewal map[string]any, flagged string) {
	t.Helper()
	ta, u, second, renewal, now := stoppedPlan(t)
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, renewal, now.Add(time.Minute))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	return ta, u, second, renewal, ev.ID
}

// A flagged renewal stays failed when re-processed after the user's other
// plan ended (h34: it turned applied, unrefunded); and one whose money the
// bank took back in a lost dispute is settled, not "still to be refunded"
// on a page that refuses the refund.
func TestAFlaggedRenewalStaysFlaggedUntilItsMoneyIsBack(t *testing.T) {
	t.Parallel()
	ta, u, second, renewal, flagged := flaggedRenewal(t)
	_, admin := whAdmin(t, ta)
	// The user's other plan ends (support: End it now).
	endFirstPlan(t, ta, admin, u, second.ID)
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return strings.Contains(whDetail(e), "processed again") })
	again := whRequireOutcome(t, ta, flagged, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "still to be refunded")

	// The bank takes the money back: settled.
	intent := renewal["payment_intent"].(string)
	opened := time.Now().Add(-time.Minute).Truncate(time.Second)
	dp := whID("dp")
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(dp, intent, 3000, "usd", "needs_response", opened), opened)
	lastRun := *again.ProcessedAt
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	again = whRequireOutcome(t, ta, flagged, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "answer the dispute")
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeClosed, whDispute(dp, intent, 3000, "usd", "lost", opened), opened.Add(time.Minute))
	lastRun = *again.ProcessedAt
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	settled := whRequireOutcome(t, ta, flagged, store.OutcomeApplied)
	require.Contains(t, whDetail(settled), "its money is back with the customer")
}

// Only what the bank took back counts (h35): a dispute lost for $10 of a
// $30 renewal leaves $20 the customer's due, and the event failed.
func TestAPartlyLostDisputeLeavesTheRestDue(t *testing.T) {
	t.Parallel()
	ta, _, _, renewal, flagged := flaggedRenewal(t)
	_, admin := whAdmin(t, ta)
	intent := renewal["payment_intent"].(string)
	opened := time.Now().Add(-time.Minute).Truncate(time.Second)
	dp := whID("dp")
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(dp, intent, 1000, "usd", "needs_response", opened), opened)
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeClosed, whDispute(dp, intent, 1000, "usd", "lost", opened), opened.Add(time.Minute))
	ev, err := ta.store.StripeEventByID(context.Background(), flagged)
	require.NoError(t, err)
	lastRun := *ev.ProcessedAt
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	again := whRequireOutcome(t, ta, flagged, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "took $10.00 back in a lost dispute, and $20.00 is still theirs")
}

// A deleted account's renewal keeps its own reason when re-processed
// (h35: it was called a stopped plan's renewal, or, for a period begun
// before the end and paid late, turned applied unrefunded).
func TestADeletedAccountsRenewalStaysFailedForItsOwnReason(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		start time.Duration // from the subscription's end here
	}{{"period from after the end", time.Minute}, {"period begun before the end, paid late", -time.Hour}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ta, _, _, ev := deletedBuyersRenewal(t, tc.start)
			_, admin := whAdmin(t, ta)
			lastRun := *ev.ProcessedAt
			whReprocess(t, ta, admin, ev.ID, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
			again := whRequireOutcome(t, ta, ev.ID, store.OutcomeFailed)
			last := whDetail(again)[strings.LastIndex(whDetail(again), "processed again"):]
			require.Contains(t, last, "deleted the account")
			require.NotContains(t, last, "which ended here on")
		})
	}
}

// Re-processing an invoice paid while the account was live, after the
// account is deleted, leaves it applied (h36: it turned failed, asking to
// refund money not owed); a stopped plan's flagged renewal whose buyer is
// deleted later still asks its cancellation again, as a stopped plan's.
func TestAReprocessAfterTheDeletionJudgesWhenItWasPaid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	start := sub.CurrentPeriodEnd.Truncate(time.Second)
	inv := subInvoice(t, sub, *sub.StripeSubscriptionID, whID("in"), sub.PriceMinor, start, start.AddDate(0, 1, 0))
	inv["billing_reason"] = "subscription_cycle"
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, inv, time.Now().Truncate(time.Second))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	deleteAccount(t, b)
	eventually(t, 15*time.Second, "the subscription ended", func() bool {
		s, err := ta.store.SubscriptionByID(ctx, sub.ID)
		return err == nil && s.Status == store.SubCanceled
	})
	_, admin := whAdmin(t, ta)
	lastRun := *ev.ProcessedAt
	whReprocess(t, ta, admin, ev.ID, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	again := whRequireOutcome(t, ta, ev.ID, store.OutcomeApplied)
	require.NotContains(t, whDetail(again), "deleted the account")

	ta2, u2, second, _, flagged := flaggedRenewal(t)
	deleteAccount(t, ta2.signIn(u2.Email))
	_, err := ta2.store.Pool().Exec(ctx, `DELETE FROM river_job WHERE kind = 'cancel_subscription'`)
	require.NoError(t, err)
	_, admin2 := whAdmin(t, ta2)
	fe, err := ta2.store.StripeEventByID(ctx, flagged)
	require.NoError(t, err)
	lastRun = *fe.ProcessedAt
	whReprocess(t, ta2, admin2, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	fe = whRequireOutcome(t, ta2, flagged, store.OutcomeFailed)
	last := whDetail(fe)[strings.LastIndex(whDetail(fe), "processed again"):]
	require.Contains(t, last, "which ended here on")
	require.Equal(t, 1, whCount(t, ta2, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription' AND (args->>'subscription_id')::bigint = $1`, second.ID))
}

// A refund that failed later gave the customer nothing back (h36): a
// flagged renewal refunded in full, whose refund then failed, stays due.
func TestAFailedRefundDoesNotSettleAFlaggedRenewal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, _, _, renewal, flagged := flaggedRenewal(t)
	_, admin := whAdmin(t, ta)
	intent := renewal["payment_intent"].(string)
	refunded := deliverOutcome(t, ta, stripe.EventTypeChargeRefunded, whCharge(t, intent, 3000, 3000), time.Now())
	require.Equal(t, store.OutcomeApplied, whOutcome(refunded), whDetail(refunded))
	re := whFixture(t, "refund")
	re["id"], re["payment_intent"], re["status"], re["amount"], re["currency"] = whID("re"), intent, "failed", 3000, "usd"
	re["failure_reason"] = "expired_or_canceled_card"
	failed := deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, re, time.Now())
	require.Equal(t, store.OutcomeFailed, whOutcome(failed), whDetail(failed))
	ev, err := ta.store.StripeEventByID(ctx, flagged)
	require.NoError(t, err)
	lastRun := *ev.ProcessedAt
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	again := whRequireOutcome(t, ta, flagged, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "still to be refunded ($30.00")
}

// endFirstPlan has support end the user's other (first) plan now, and
// waits for it to end.
func endFirstPlan(t *testing.T, ta *testApp, admin *browser, u store.User, secondID int64) {
	t.Helper()
	ctx := context.Background()
	var firstID int64
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT id FROM subscriptions WHERE user_id = $1 AND id <> $2`, u.ID, secondID).Scan(&firstID))
	page := fmt.Sprintf("/admin/users/%d", u.ID)
	mustRedirect(t, admin.post(page+"/subscription", url.Values{"subscription": {strconv.FormatInt(firstID, 10)}, "action": {"end_now"}, "reason": {"asked by phone"}}), page)
	eventually(t, 10*time.Second, "the first plan ended", func() bool {
		s, err := ta.store.SubscriptionByID(ctx, firstID)
		require.NoError(t, err)
		return s.Status == store.SubCanceled
	})
}

// H1: a second plan stopped here at once, whose cancellation never reached
// the provider, renews after the user's other plan has ended: it is the
// same unwanted renewal (still billed by Stripe), yet it is applied, not
// flagged, and its cancellation is not queued again.
func TestAStoppedPlansRenewalAfterTheOtherPlanEndedIsFlagged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, second, renewal, now := stoppedPlan(t)
	_, admin := whAdmin(t, ta)
	// The user's other plan ends (support: End it now) before the stopped
	// plan's renewal comes.
	endFirstPlan(t, ta, admin, u, second.ID)
	_, err := ta.store.Pool().Exec(ctx, `DELETE FROM river_job WHERE kind = 'cancel_subscription'`)
	require.NoError(t, err)
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, renewal, now.Add(time.Minute))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription' AND (args->>'subscription_id')::bigint = $1`, second.ID),
		"the stopped plan, still billed by Stripe, has no cancellation queued; outcome %s: %s", whOutcome(ev), whDetail(ev))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
}

// H2: a flagged renewal settled by a full refund (re-processed: applied),
// whose refund then fails, is re-processed after the user's other plan
// ended: the money is the customer's due again, yet it stays applied —
// the stored outcome "applied" no longer counts as flagged.
func TestARenewalSettledThenItsRefundFailedIsDueAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, second, renewal, flagged := flaggedRenewal(t)
	_, admin := whAdmin(t, ta)
	intent := renewal["payment_intent"].(string)
	refunded := deliverOutcome(t, ta, stripe.EventTypeChargeRefunded, whCharge(t, intent, 3000, 3000), time.Now())
	require.Equal(t, store.OutcomeApplied, whOutcome(refunded), whDetail(refunded))
	ev, err := ta.store.StripeEventByID(ctx, flagged)
	require.NoError(t, err)
	lastRun := *ev.ProcessedAt
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	ev = whRequireOutcome(t, ta, flagged, store.OutcomeApplied)
	// The other plan ends; then the refund fails: the $30 is back with us.
	endFirstPlan(t, ta, admin, u, second.ID)
	re := whFixture(t, "refund")
	re["id"], re["payment_intent"], re["status"], re["amount"], re["currency"] = whID("re"), intent, "failed", 3000, "usd"
	re["failure_reason"] = "expired_or_canceled_card"
	failed := deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, re, time.Now())
	require.Equal(t, store.OutcomeFailed, whOutcome(failed), whDetail(failed))
	lastRun = *ev.ProcessedAt
	whReprocess(t, ta, admin, flagged, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	again := whRequireOutcome(t, ta, flagged, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "still to be refunded ($30.00")
}

// H3: same as H2 for a deleted account's renewal (no other plan needed):
// refunded (applied on re-process), the refund fails, re-processed: applied.
func TestADeletedAccountsSettledRenewalWhoseRefundFailedIsDueAgain(t *testing.T) {
	t.Parallel()
	ta, sub, inv, ev := deletedBuyersRenewal(t, time.Minute)
	_, admin := whAdmin(t, ta)
	intent := inv["payment_intent"].(string)
	refunded := deliverOutcome(t, ta, stripe.EventTypeChargeRefunded, whCharge(t, intent, sub.PriceMinor, sub.PriceMinor), time.Now())
	require.Equal(t, store.OutcomeApplied, whOutcome(refunded), whDetail(refunded))
	lastRun := *ev.ProcessedAt
	whReprocess(t, ta, admin, ev.ID, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	ev = whRequireOutcome(t, ta, ev.ID, store.OutcomeApplied)
	re := whFixture(t, "refund")
	re["id"], re["payment_intent"], re["status"], re["amount"], re["currency"] = whID("re"), intent, "failed", sub.PriceMinor, "usd"
	re["failure_reason"] = "expired_or_canceled_card"
	failed := deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, re, time.Now())
	require.Equal(t, store.OutcomeFailed, whOutcome(failed), whDetail(failed))
	lastRun = *ev.ProcessedAt
	whReprocess(t, ta, admin, ev.ID, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	again := whRequireOutcome(t, ta, ev.ID, store.OutcomeFailed)
	last := whDetail(again)[strings.LastIndex(whDetail(again), "processed again"):]
	require.Contains(t, last, "deleted the account")
}

// H4: a stopped plan (canceled here, its cancellation never reached the
// provider) whose buyer then deletes the account: the deletion cancels
// only plans not canceled here, so nothing stops it at Stripe; its renewal
// is failed saying "the subscription is being cancelled", yet no
// cancellation is queued, on first processing or on re-process.
func TestADeletedBuyersStoppedPlanRenewalIsCancelledAgain(t *testing.T) {
	t.Parallel()
	ta, u, second, renewal, _ := stoppedPlan(t)
	deleteAccount(t, ta.signIn(u.Email))
	eventually(t, 15*time.Second, "the first plan ended", func() bool {
		return whCount(t, ta, `SELECT count(*) FROM subscriptions WHERE user_id = $1 AND status <> 'canceled'`, u.ID) == 0
	})
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription' AND (args->>'subscription_id')::bigint = $1`, second.ID))
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, renewal, time.Now().Truncate(time.Second))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	t.Logf("first processing: %s", whDetail(ev))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription' AND (args->>'subscription_id')::bigint = $1`, second.ID),
		"the renewed stopped plan has no cancellation queued though the event says it is being cancelled")
}

// H5: a second plan's own first invoice (stopped at once as a duplicate),
// whose period starts a few seconds after our clock's "now" (Stripe's clock
// ahead of ours): applied when first processed, then re-processed it is
// judged a renewal after the plan's end here and failed for a refund.
func TestASecondPlansFirstInvoiceReprocessedIsNotARenewal(t *testing.T) {
	t.Parallel()
	ta, _, second := secondPlanCheckout(t)
	_, admin := whAdmin(t, ta)
	start := time.Now().Add(3 * time.Second).Truncate(time.Second)
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, subInvoice(t, second, whID("sub"), whID("in"), 3000, start, start.AddDate(0, 1, 0)), start)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, store.SubCanceled, reload(t, ta, second).Status)
	lastRun := *ev.ProcessedAt
	whReprocess(t, ta, admin, ev.ID, func(e store.StripeEvent) bool { return e.ProcessedAt != nil && e.ProcessedAt.After(lastRun) })
	whRequireOutcome(t, ta, ev.ID, store.OutcomeApplied)
}

// A second plan's own first invoice, dated a few seconds after the plan was
// stopped here (the provider's clock ahead of ours), is not a renewal of a
// stopped plan, nor owed back (h38): its billing reason says so.
func TestASecondPlansFirstInvoiceAfterItsStopIsNotARenewal(t *testing.T) {
	t.Parallel()
	ta, _, second := secondPlanCheckout(t)
	stripeSub := whID("sub")
	now := time.Now().Truncate(time.Second)
	ev := deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionCreated, subObject(t, second, stripeSub, "active", false, now, now.AddDate(0, 1, 0)), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, store.SubCanceled, reload(t, ta, second).Status)
	start := time.Now().Add(3 * time.Second).Truncate(time.Second)
	inv := subInvoice(t, second, stripeSub, whID("in"), 3000, start, start.AddDate(0, 1, 0)) // billing_reason: subscription_create
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, inv, start)
	var owed *string
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(), `SELECT owed_back FROM payments WHERE invoice_id = $1`, inv["id"]).Scan(&owed))
	require.Nil(t, owed, "the plan's first invoice marked owed back")
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
}

// A stopped plan the provider still bills is asked to end again even when
// its renewal's amount is not one a plan costs (h38: a customer balance
// applied kept it renewing).
func TestAStoppedPlansRenewalOfAnOddAmountIsCancelledAgain(t *testing.T) {
	t.Parallel()
	ta, _, second, renewal, now := stoppedPlan(t)
	renewal["amount_paid"], renewal["amount_due"] = 2900, 2900 // $1 of customer balance applied
	ev := deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, renewal, now.Add(time.Minute))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'cancel_subscription' AND (args->>'subscription_id')::bigint = $1`, second.ID),
		"a stopped plan Stripe still bills, not cancelled again: %s", whDetail(ev))
}

// Stripe's billing_reason is nullable (h39): a second plan's own first
// invoice that comes without one, dated a few seconds after the plan was
// stopped here, is not taken for a stopped plan's renewal.
func TestAFirstInvoiceWithoutBillingReasonIsNotARenewal(t *testing.T) {
	t.Parallel()
	ta, _, second := secondPlanCheckout(t)
	stripeSub := whID("sub")
	now := time.Now().Truncate(time.Second)
	ev := deliverOutcome(t, ta, stripe.EventTypeCustomerSubscriptionCreated, subObject(t, second, stripeSub, "active", false, now, now.AddDate(0, 1, 0)), now)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Equal(t, store.SubCanceled, reload(t, ta, second).Status)
	start := time.Now().Add(3 * time.Second).Truncate(time.Second)
	inv := subInvoice(t, second, stripeSub, whID("in"), 3000, start, start.AddDate(0, 1, 0))
	inv["billing_reason"] = nil
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, inv, start)
	var owed *string
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(), `SELECT owed_back FROM payments WHERE invoice_id = $1`, inv["id"]).Scan(&owed))
	require.Nil(t, owed, "the plan's first invoice (no billing_reason) marked owed back: "+whDetail(ev))
}

// deletedBuyersRenewal is a subscriber's plan renewed by the provider
// after the account was deleted, for a period starting offset from the
// plan's end (the deletion): its invoice and its failed event.
func deletedBuyersRenewal(t *testing.T, offset time.Duration) (ta *testApp, sub store.Subscription, inv map[string]any, ev store.StripeEvent) {
	t.Helper()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub = simSubscribe(t, ta, b, u.ID, "basic")
	deleteAccount(t, b)
	var ended store.Subscription
	eventually(t, 15*time.Second, "the subscription ended", func() bool {
		s, err := ta.store.SubscriptionByID(ctx, sub.ID)
		ended = s
		return err == nil && s.Status == store.SubCanceled
	})
	start := ended.CanceledAt.Add(offset).Truncate(time.Second)
	inv = subInvoice(t, sub, *sub.StripeSubscriptionID, whID("in"), sub.PriceMinor, start, start.AddDate(0, 1, 0))
	inv["billing_reason"] = "subscription_cycle"
	ev = deliverOutcome(t, ta, stripe.EventTypeInvoicePaid, inv, time.Now().Truncate(time.Second))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "deleted the account")
	return ta, sub, inv, ev
}
