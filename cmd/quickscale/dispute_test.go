package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
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
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	pay := whPayment(t, ta, p)
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
	ev = deliverDispute(t, ta, stripe.EventTypeChargeDisputeCreated, whDispute(whID("dp"), whID("pi"), 500, "usd", "needs_response", opened), opened)
	require.Equal(t, store.OutcomeIgnored, whOutcome(ev))
	require.True(t, strings.Contains(whDetail(ev), "not made through QuickScale"), whDetail(ev))
	require.Equal(t, 2, whCount(t, ta, `SELECT count(*) FROM payment_disputes`))
}
