package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/store"
)

// A refund the provider accepted can fail later (the customer's card
// cannot take it back): charge.refund.updated says so. Support sees it —
// the event is failed with what to do, the payment's refund page and the
// user's admin page show it — and nothing is undone by itself. The
// simulator fails a refund on request, once, so make dev shows it.
func TestARefundThatFailsLaterIsShownToSupport(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, customer, pay := simPurchase(t, ta)
	_, admin := whAdmin(t, ta)
	path := refundBySupport(t, ta, admin, pay, "5", "asked", 500)
	balance := func() int64 {
		b, err := ta.store.Balance(ctx, u.ID)
		require.NoError(t, err)
		return b.Total
	}
	require.Equal(t, int64(375), balance())

	doc := admin.get(path).Doc(t)
	require.Zero(t, doc.Find(".refund-failure").Length())
	fail := doc.Find(`.sim-fail-refund input[name="refund"]`)
	require.Equal(t, 1, fail.Length(), "the simulator offers to fail its refund")
	refundID := fail.AttrOr("value", "")
	require.Regexp(t, `^re_`, refundID)

	// Another payment's refund, or none, is no refund of this payment's.
	require.Equal(t, http.StatusNotFound, admin.post(path, url.Values{"action": {"simulate-failure"}, "refund": {"re_other"}}).Status)

	mustRedirect(t, admin.post(path, url.Values{"action": {"simulate-failure"}, "refund": {refundID}}), path)
	var ev store.StripeEvent
	eventually(t, 10*time.Second, "the refund's failure applied", func() bool {
		err := ta.store.Pool().QueryRow(ctx, `SELECT id FROM stripe_events WHERE type = 'charge.refund.updated' AND outcome IS NOT NULL`).Scan(&ev.ID)
		return err == nil
	})
	ev, err := ta.store.StripeEventByID(ctx, ev.ID)
	require.NoError(t, err)
	require.Equal(t, store.OutcomeFailed, *ev.Outcome)
	require.Contains(t, *ev.OutcomeDetail, fmt.Sprintf("refund %s of $5.00 of payment #%d (user %d) failed (expired or canceled card): the customer did not get that money back. "+
		"The payment shows $5.00 refunded and 125 credits taken back, which may count this refund. Refund the customer another way", refundID, pay.ID, u.ID))
	require.Equal(t, float64(1), metricValue(t, ta.app.metrics, "quickscale_webhook_events_processed_total", map[string]string{"type": "charge.refund.updated", "outcome": "failed"}))

	// Nothing is undone by itself: support decides.
	p, err := ta.store.UserPayment(ctx, u.ID, pay.ID)
	require.NoError(t, err)
	require.Equal(t, int64(500), p.AmountRefundedMinor)
	require.Equal(t, int64(375), balance())

	doc = admin.get(path).Doc(t)
	failure := doc.Find(fmt.Sprintf(`.refund-failure[data-refund=%q]`, refundID))
	require.Equal(t, 1, failure.Length())
	require.Contains(t, acctTextSel(failure), "A refund of $5.00 failed (expired or canceled card): the payments simulator said so")
	require.Contains(t, acctTextSel(failure), "The customer did not get that money back. This payment shows $5.00 refunded and 125 credits taken back, which may count this refund.")
	require.Equal(t, fmt.Sprintf("/admin/users/%d/credits", u.ID), failure.Find("a").AttrOr("href", ""))
	require.Contains(t, acctTextSel(doc.Find("tr.refund-request")), refundID+", failed")
	require.Zero(t, doc.Find(".sim-fail-refund").Length(), "a refund fails once")
	tag := admin.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t).Find(fmt.Sprintf(`tr.payment-row[data-id="%d"] .refund-failed`, pay.ID))
	require.Equal(t, path, tag.AttrOr("href", ""))

	// Asked again (a second tab): nothing more is sent.
	mustRedirect(t, admin.post(path, url.Values{"action": {"simulate-failure"}, "refund": {refundID}}), path)
	require.Contains(t, acctText(admin.get(path).Doc(t), "#flash"), "failed refund "+refundID+" already")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM stripe_events WHERE type = 'charge.refund.updated'`))

	// The customer, told of the refund, is told it did not reach them:
	// by email, once (re-processing the event sends none), and on the
	// receipt.
	mail := ta.waitMail(u.Email, "Your refund of $5.00 did not go through")
	require.Contains(t, mail.Text, fmt.Sprintf("The refund of $5.00 for payment #%d did not reach you: your card or bank refused it (expired or canceled card).", pay.ID))
	require.Contains(t, *ev.OutcomeDetail, "the customer was emailed that it did not go through")
	mustRedirect(t, admin.post("/admin/webhooks/"+ev.ID+"/reprocess", url.Values{}), "/admin/webhooks/"+ev.ID)
	eventually(t, 20*time.Second, "the event processed again", func() bool {
		again, err := ta.store.StripeEventByID(ctx, ev.ID)
		require.NoError(t, err)
		return again.Attempts == ev.Attempts+1 && again.ProcessedAt != nil && again.ProcessedAt.After(*ev.ProcessedAt)
	})
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'send_email' AND args->>'template' = 'refund_failed'`))
	row := customer.get(fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID)).Doc(t).Find(".receipt-refund-failed")
	require.Equal(t, 1, row.Length())
	require.Contains(t, acctTextSel(row), "$5.00")
	require.Contains(t, acctTextSel(row), "your card or bank refused it (expired or canceled card). Contact us")

	// Support refunds another way and marks it settled, saying how: once,
	// audited; the receipt then says it was made good.
	failureID := admin.get(path).Doc(t).Find(`.settle-failure-form input[name="failure"]`).AttrOr("value", "")
	require.NotEmpty(t, failureID)
	settle := func(id, note string) response {
		return admin.post(path, url.Values{"action": {"settle-failure"}, "failure": {id}, "reason": {note}})
	}
	mustRedirect(t, settle(failureID, " "), path)
	require.Contains(t, acctText(admin.get(path).Doc(t), "#flash"), "The failed refund was not marked settled: say how it was made good")
	require.Equal(t, http.StatusNotFound, settle("999999", "refunded in the dashboard").Status, "another payment's failure")
	mustRedirect(t, settle(failureID, "refunded $5.00 by bank transfer"), path)
	doc = admin.get(path).Doc(t)
	require.Contains(t, acctText(doc, "#flash"), "The failed refund is marked settled")
	require.Contains(t, acctTextSel(doc.Find(".refund-failure-settled")), "refunded $5.00 by bank transfer")
	require.Zero(t, doc.Find(".settle-failure-form").Length())
	require.Equal(t, "true", doc.Find(".refund-failure").AttrOr("data-settled", ""))
	require.NotContains(t, acctTextSel(doc.Find(".refund-failure")), "did not get that money back")
	require.Zero(t, admin.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t).Find(".refund-failed").Length(), "a settled failure is still tagged")
	mustRedirect(t, settle(failureID, "again"), path)
	require.Contains(t, acctText(admin.get(path).Doc(t), "#flash"), "marked settled already")
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM audit_log WHERE action = 'payment.refund_failure_settled' AND target_user_id = $1 AND details->>'note' = 'refunded $5.00 by bank transfer'`, u.ID))
	row = customer.get(fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID)).Doc(t).Find(".receipt-refund-failed")
	require.Equal(t, "Refund settled", acctTextSel(row.Find("th")))
	require.Contains(t, acctTextSel(row), "Made good by our team another way")
	require.NotContains(t, acctTextSel(row), "Contact us")
	for _, sql := range []string{`UPDATE payment_refund_failure_settlements SET note = 'x'`, `DELETE FROM payment_refund_failure_settlements`} {
		_, err := ta.store.Pool().Exec(ctx, sql)
		require.Error(t, err, sql)
	}
}

// Stripe's charge.refund.updated (its refund object as stripe-mock has it):
// a refund still going or made is no news; one of a payment QuickScale did
// not make is ignored; a canceled one is recorded like a failed one, once
// however often Stripe says so.
func TestRefundUpdatesFromStripe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	refund := func(id, intent, status string) map[string]any {
		re := whFixture(t, "refund")
		re["id"], re["payment_intent"], re["status"], re["amount"] = id, intent, status, 300
		return re
	}
	outcome := func(ev store.StripeEvent) string { return *ev.Outcome }

	require.Equal(t, store.OutcomeIgnored, outcome(deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, refund("re_a", *pay.PaymentIntentID, "succeeded"), time.Now())))
	require.Equal(t, store.OutcomeIgnored, outcome(deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, refund("re_b", "pi_not_ours", "failed"), time.Now())))
	require.Equal(t, 0, whCount(t, ta, `SELECT count(*) FROM payment_refund_failures`))

	for range 2 {
		ev := deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, refund("re_c", *pay.PaymentIntentID, "canceled"), time.Now())
		require.Equal(t, store.OutcomeFailed, outcome(ev))
		require.Contains(t, *ev.OutcomeDetail, fmt.Sprintf("refund re_c of $3.00 of payment #%d (user %d) was canceled: the customer did not get that money back. "+
			"Nothing is recorded as refunded on this payment yet", pay.ID, u.ID))
	}
	// Another currency, or more than was paid: failed, not recorded.
	euro := refund("re_e", *pay.PaymentIntentID, "failed")
	euro["currency"] = "eur"
	ev := deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, euro, time.Now())
	require.Equal(t, store.OutcomeFailed, outcome(ev))
	require.Contains(t, *ev.OutcomeDetail, "refund re_e is in eur, payment #"+formatID(pay.ID)+" in usd: not recorded")
	big := refund("re_f", *pay.PaymentIntentID, "failed")
	big["amount"] = pay.AmountMinor + 1
	ev = deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, big, time.Now())
	require.Equal(t, store.OutcomeFailed, outcome(ev))
	require.Contains(t, *ev.OutcomeDetail, "is more than payment #"+formatID(pay.ID)+"'s $20.00: not recorded")
	fs, err := ta.store.RefundFailuresOf(ctx, pay.ID)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	require.Equal(t, "canceled", fs[0].Status)
	require.Nil(t, fs[0].FailureReason)
	require.Equal(t, int64(300), fs[0].AmountMinor)

	// The buyer's account deleted: no credits to give back.
	require.NoError(t, ta.store.InTx(ctx, func(tx pgx.Tx) error {
		_, err := store.DeleteUser(ctx, tx, u.ID)
		return err
	}))
	ev = deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, refund("re_g", *pay.PaymentIntentID, "failed"), time.Now())
	require.Contains(t, *ev.OutcomeDetail, "(no reason given): the customer did not get that money back")
	require.Contains(t, *ev.OutcomeDetail, "The account was deleted: refund the customer another way (the provider's dashboard) if they ask")
}

// A refund's failure that arrives before its charge.refunded (events come
// in any order; nothing is recorded as refunded yet): the customer is told
// it did not reach them, and the refund email that follows says that part
// of its amount may be that failed refund, rather than only "we refunded".
func TestARefundFailureBeforeItsRefundIsToldInBothEmails(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	re := whFixture(t, "refund")
	re["id"], re["payment_intent"], re["status"], re["amount"] = whID("re"), *pay.PaymentIntentID, "failed", 500
	re["failure_reason"] = "expired_or_canceled_card"
	ev := deliverOutcome(t, ta, stripe.EventTypeChargeRefundUpdated, re, time.Now())
	require.Equal(t, store.OutcomeFailed, whOutcome(ev), whDetail(ev))
	require.Contains(t, whDetail(ev), "Nothing is recorded as refunded on this payment yet")
	failed := ta.waitMail(u.Email, "Your refund of $5.00 did not go through")
	require.Contains(t, failed.Text, fmt.Sprintf("The refund of $5.00 for payment #%d did not reach you", pay.ID))

	id, body := whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, *pay.PaymentIntentID, pay.AmountMinor, 500), time.Now())
	whMustDeliver(t, ta, body)
	whWaitOutcome(t, ta, id)
	refunded := ta.waitMail(u.Email, fmt.Sprintf("Refund of payment #%d: $5.00", pay.ID))
	require.Contains(t, refunded.Text, "$5.00 of refunds of this payment did not reach you (we emailed you about each); the amount above may count them.")
}
