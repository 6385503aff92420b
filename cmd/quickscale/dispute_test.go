package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/store"
)

// whDispute is a charge.dispute.* event's dispute object, in Stripe's
// shape for API version 2023-10-16.
func whDispute(id, intent string, amount int64, currency, status string, opened time.Time) map[string]any {
	d := map[string]any{
		"id": id, "object": "dispute", "amount": amount, "currency": currency, "charge": whID("ch"),
		"payment_intent": intent, "reason": "fraudulent", "status": status, "created": opened.Unix(),
		"livemode": false, "is_charge_refundable": false, "metadata": map[string]any{},
		"evidence_details": map[string]any{"due_by": opened.Add(7 * 24 * time.Hour).Unix(), "has_evidence": false, "past_due": false, "submission_count": 0},
	}
	return d
}

// deliverDispute delivers one dispute event and waits for its outcome.
func deliverDispute(t *testing.T, ta *testApp, typ stripe.EventType, d map[string]any, at time.Time) store.StripeEvent {
	t.Helper()
	id, body := whEvent(t, typ, d, at)
	whMustDeliver(t, ta, body)
	return whWaitOutcome(t, ta, id)
}

// A chargeback (h31): each charge.dispute.* event records the dispute as
// it stands; the event fails, so the failed-events alert tells support,
// while it needs an answer and when it is lost, and is applied while under
// review and when won. An older event arriving late changes nothing and is
// decided by the latest state. The user's admin page tags the payment and
// its refund page says what to do; bad or foreign disputes are not
// recorded; the table refuses to reopen a closed dispute or to lose one.
func TestDisputesAreRecordedAndToldToSupport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, p, pay := paidPurchase(t)
	_, admin := whAdmin(t, ta)
	opened := time.Now().Add(-time.Hour).Truncate(time.Second)
	dp := whID("dp")

	ev := deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(dp, p.Intent, p.Amount, "usd", "needs_response", opened), opened)
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	due := opened.Add(7 * 24 * time.Hour).UTC().Format("2 Jan 2006 15:04 UTC")
	for _, want := range []string{fmt.Sprintf("payment #%d", pay.ID), "fraudulent", "took the money back", "Stripe's dashboard by " + due,
		"were not taken back", fmt.Sprintf("/admin/users/%d", p.User.ID)} {
		require.Contains(t, whDetail(ev), want)
	}
	require.Equal(t, p.Credits, whBalance(t, ta, p.User.ID), "nothing is undone by itself")

	doc := admin.get(fmt.Sprintf("/admin/users/%d", p.User.ID)).Doc(t)
	tag := doc.Find("a.disputed")
	require.Equal(t, "needs_response", tag.AttrOr("data-status", ""))
	require.Contains(t, tag.Text(), "Disputed: needs an answer")
	require.Equal(t, fmt.Sprintf("/admin/payments/%d/refund", pay.ID), tag.AttrOr("href", ""))
	r := admin.get(fmt.Sprintf("/admin/payments/%d/refund", pay.ID))
	acctRequireStatus(t, r, http.StatusOK)
	note := r.Doc(t).Find(".payment-dispute")
	require.Equal(t, dp, note.AttrOr("data-dispute", ""))
	require.Contains(t, note.Text(), "$20.00")
	require.Contains(t, note.Text(), "took the money back")

	// The funds withdrawn: the same state, still failed.
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeFundsWithdrawn, whDispute(dp, p.Intent, p.Amount, "usd", "needs_response", opened), opened.Add(time.Minute))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev))
	// Answered: under review, applied.
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeUpdated, whDispute(dp, p.Intent, p.Amount, "usd", "under_review", opened), opened.Add(2*time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	// Lost: failed, the money gone.
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeClosed, whDispute(dp, p.Intent, p.Amount, "usd", "lost", opened), opened.Add(3*time.Minute))
	require.Equal(t, store.OutcomeFailed, whOutcome(ev))
	require.Contains(t, whDetail(ev), "was lost: the money is gone for good")
	// An older update arriving late does not reopen it.
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeUpdated, whDispute(dp, p.Intent, p.Amount, "usd", "under_review", opened), opened.Add(150*time.Second))
	require.Contains(t, whDetail(ev), "was lost")
	disputes, err := ta.store.DisputesOf(ctx, pay.ID)
	require.NoError(t, err)
	require.Len(t, disputes, 1)
	require.Equal(t, "lost", disputes[0].Status)
	require.True(t, disputes[0].StatusAt.Equal(opened.Add(3*time.Minute)), "status at %v", disputes[0].StatusAt)
	require.Contains(t, admin.get(fmt.Sprintf("/admin/users/%d", p.User.ID)).Doc(t).Find("a.disputed").Text(), "Dispute lost")

	// The table keeps a closed dispute closed, and every dispute.
	_, err = ta.store.Pool().Exec(ctx, `UPDATE payment_disputes SET status = 'under_review', status_at = now() WHERE stripe_dispute_id = $1`, dp)
	require.ErrorContains(t, err, "it is closed")
	_, err = ta.store.Pool().Exec(ctx, `DELETE FROM payment_disputes WHERE stripe_dispute_id = $1`, dp)
	require.Error(t, err)

	// Another purchase's dispute is won: applied, tagged won.
	q := whBuy(t, ta)
	whPaid(t, ta, q)
	won := whID("dp")
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(won, q.Intent, 500, "usd", "needs_response", opened), opened)
	require.Equal(t, store.OutcomeFailed, whOutcome(ev))
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeFundsReinstated, whDispute(won, q.Intent, 500, "usd", "won", opened), opened.Add(time.Minute))
	require.Equal(t, store.OutcomeApplied, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "was won")
	tag = admin.get(fmt.Sprintf("/admin/users/%d", q.User.ID)).Doc(t).Find("a.disputed")
	require.Equal(t, "won", tag.AttrOr("data-status", ""))

	// Not recorded: another currency, more than the payment, an unknown
	// status; ignored: a payment not made here.
	for _, c := range []struct {
		d    map[string]any
		want string
	}{
		{whDispute(whID("dp"), q.Intent, 500, "eur", "needs_response", opened), "is in eur"},
		{whDispute(whID("dp"), q.Intent, p.Amount+1, "usd", "needs_response", opened), "is more than"},
		{whDispute(whID("dp"), q.Intent, 500, "usd", "charge_refunded", opened), "unknown status"},
	} {
		ev := deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, c.d, opened)
		require.Equal(t, store.OutcomeFailed, whOutcome(ev), c.want)
		require.Contains(t, whDetail(ev), c.want)
	}
	require.Equal(t, 2, whCount(t, ta, `SELECT count(*) FROM payment_disputes`))
}

// A dispute may come before the purchase it disputes is applied (h32):
// it waits for it, as a refund does, and is recorded once it is; one of a
// payment intent no payment here has fails for support after the hour,
// rather than being dropped.
func TestADisputeWaitsForThePaymentItDisputes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	opened := time.Now().Add(-time.Minute).Truncate(time.Second)
	early, body := whEvent(t, stripe.EventTypeChargeDisputeCreated, whDispute(whID("dp"), p.Intent, p.Amount, "usd", "needs_response", opened), opened)
	whMustDeliver(t, ta, body)
	jobID := whSnoozedJob(t, ta, early)
	ev, err := ta.store.StripeEventByID(ctx, early)
	require.NoError(t, err)
	require.Nil(t, ev.Outcome)
	require.Contains(t, *ev.LastError, "waiting for the payment it disputes")
	whPaid(t, ta, p)
	_, err = ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	ev = whRequireOutcome(t, ta, early, store.OutcomeFailed)
	require.Contains(t, whDetail(ev), "took the money back")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM payment_disputes WHERE payment_id = $1`, whPayment(t, ta, p).ID))

	foreign, body := whEvent(t, stripe.EventTypeChargeDisputeCreated, whDispute(whID("dp"), whID("pi"), 500, "usd", "needs_response", opened), opened)
	whMustDeliver(t, ta, body)
	jobID = whSnoozedJob(t, ta, foreign)
	_, err = ta.store.Pool().Exec(ctx, `UPDATE stripe_events SET received_at = now() - interval '2 hours' WHERE id = $1`, foreign)
	require.NoError(t, err)
	_, err = ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	ev = whRequireOutcome(t, ta, foreign, store.OutcomeFailed)
	require.Contains(t, whDetail(ev), "no payment recorded here")
}

// Stripe stamps events to the second (h32): a dispute lost in the same
// second as its review is recorded lost, and its event failed for support;
// an earlier stage of that second does not move it back.
func TestADisputeLostInTheSecondOfItsReviewIsRecordedLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, p, pay := paidPurchase(t)
	opened := time.Now().Add(-time.Hour).Truncate(time.Second)
	dp := whID("dp")
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(dp, p.Intent, p.Amount, "usd", "needs_response", opened), opened)
	same := opened.Add(time.Minute)
	ev := deliverDispute(t, ta, stripe.EventTypeChargeDisputeUpdated, whDispute(dp, p.Intent, p.Amount, "usd", "under_review", opened), same)
	require.Equal(t, store.OutcomeApplied, whOutcome(ev))
	// needs_response again in that second (delivered late): not back.
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeUpdated, whDispute(dp, p.Intent, p.Amount, "usd", "needs_response", opened), same)
	disputes, err := ta.store.DisputesOf(ctx, pay.ID)
	require.NoError(t, err)
	require.Equal(t, "under_review", disputes[0].Status)
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeClosed, whDispute(dp, p.Intent, p.Amount, "usd", "lost", opened), same)
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	disputes, err = ta.store.DisputesOf(ctx, pay.ID)
	require.NoError(t, err)
	require.Equal(t, "lost", disputes[0].Status)
}

// A chargeback blocks refunds of its payment while open and once lost (a
// refund would pay the customer twice), and tells support what a refund
// made before it already did (h32): a payment refunded in full is the
// evidence, not credits to take again. The user's page tags the dispute
// that needs an answer, not an older inquiry closed late.
func TestADisputedPaymentIsNotRefundedTwice(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	opened := time.Now().Add(-time.Hour).Truncate(time.Second)
	intent := *pay.PaymentIntentID
	// An inquiry, closed, then a chargeback; the inquiry's closing event
	// comes last.
	inquiry := whID("dp")
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(inquiry, intent, pay.AmountMinor, "usd", "warning_needs_response", opened.Add(-24*time.Hour)), opened.Add(-24*time.Hour))
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(whID("dp"), intent, pay.AmountMinor, "usd", "needs_response", opened), opened)
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeClosed, whDispute(inquiry, intent, pay.AmountMinor, "usd", "warning_closed", opened.Add(-24*time.Hour)), opened.Add(time.Minute))
	tag := admin.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t).Find("a.disputed")
	require.Equal(t, "needs_response", tag.AttrOr("data-status", ""), "the chargeback that needs an answer is hidden")

	path := fmt.Sprintf("/admin/payments/%d/refund", pay.ID)
	doc := admin.get(path).Doc(t)
	require.Zero(t, doc.Find("#refund-form").Length(), "a disputed payment offers a refund")
	require.Contains(t, doc.Find("#refund-disputed").Text(), "would pay them twice")
	// A form sent anyway (from a page loaded before) refunds nothing.
	r := admin.post(path, url.Values{"amount": {"5"}, "reason": {"asked"}, "nonce": {"n-" + whID("x")}})
	require.Equal(t, http.StatusConflict, r.Status)
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM refund_requests WHERE payment_id = $1`, pay.ID))

	// A payment refunded in full, then disputed: its refund is the evidence.
	_, _, paid := simPurchase(t, ta)
	refundBySupport(t, ta, admin, paid, "20.00", "customer asked", 2000)
	ev := deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(whID("dp"), *paid.PaymentIntentID, 2000, "usd", "needs_response", opened), opened)
	require.Contains(t, whDetail(ev), "refunded in full already")
	require.NotContains(t, whDetail(ev), "were not taken back")
	require.Contains(t, admin.get(fmt.Sprintf("/admin/payments/%d/refund", paid.ID)).Doc(t).Find(".payment-dispute").Text(), "take no credits again")
}

// A refund asked before the chargeback and never answered is not asked
// again while the chargeback is open (h34: "Ask again" refunded it), and
// is not closed while it may still be under way (h35: a close raced the
// refund, which was then made and its answer lost); the page says so. A
// form sent again whose refund was made is answered as that request (h35).
func TestAnUnansweredRefundIsNotAskedAgainWhileDisputed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	path, _, nonce := refundForm(t, admin, pay.ID)
	req, err := ta.store.RecordRefundRequest(ctx, store.NewRefundRequest{PaymentID: pay.ID, AdminID: u.ID, AmountMinor: pay.AmountMinor,
		Reason: "asked", Key: store.RefundKey(pay.ID, nonce), Amount: "$20.00"})
	require.NoError(t, err)
	opened := time.Now().Add(-time.Minute).Truncate(time.Second)
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(whID("dp"), *pay.PaymentIntentID, pay.AmountMinor, "usd", "needs_response", opened), opened)

	doc := admin.get(path).Doc(t)
	require.Zero(t, doc.Find("#ask-again-form").Length(), "a disputed payment offers to ask its refund again")
	require.Zero(t, doc.Find("#close-request-form").Length(), "a request that may still be under way can be closed")
	require.Contains(t, doc.Find("#pending-disputed").Text(), "not asked again while the payment is disputed")
	r := admin.post(path, url.Values{"nonce": {nonce}, "amount": {"20.00"}, "reason": {"asked"}})
	require.Equal(t, http.StatusConflict, r.Status)
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM simulator_refunds`), "the refund was made while the chargeback is open")
	r = admin.post(path, url.Values{"action": {"close"}, "request": {fmt.Sprint(req.ID)}, "reason": {"disputed"}})
	require.Equal(t, http.StatusConflict, r.Status)
	msg := r.Doc(t).Find("#pending-disputed .form-message").Text()
	require.Contains(t, msg, "can be closed once it is a day old")
	require.NotContains(t, msg, "ask it again", "support is told to do what the page refuses")
	require.NotContains(t, r.Doc(t).Find("#pending-disputed").Text(), "simulator's dashboard")

	// A refund made before the dispute: its form sent again is answered as
	// its request, not refused as a new refund.
	_, _, paid := simPurchase(t, ta)
	p2, _, n2 := refundForm(t, admin, paid.ID)
	form := url.Values{"amount": {"5.00"}, "reason": {"asked"}, "nonce": {n2}}
	mustRedirect(t, admin.post(p2, form), fmt.Sprintf("/admin/users/%d", paid.UserID))
	waitRefunded(t, ta, paid, 500)
	deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(whID("dp"), *paid.PaymentIntentID, paid.AmountMinor, "usd", "needs_response", opened), opened)
	mustRedirect(t, admin.post(p2, form), fmt.Sprintf("/admin/users/%d", paid.UserID))
}
