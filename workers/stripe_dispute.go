package workers

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

// disputeStatuses are the dispute statuses Stripe sends (API 2023-10-16).
var disputeStatuses = map[stripe.DisputeStatus]bool{
	stripe.DisputeStatusWarningNeedsResponse: true, stripe.DisputeStatusWarningUnderReview: true, stripe.DisputeStatusWarningClosed: true,
	stripe.DisputeStatusNeedsResponse: true, stripe.DisputeStatusUnderReview: true, stripe.DisputeStatusWon: true, stripe.DisputeStatusLost: true,
}

// applyDispute records a payment's dispute (chargeback) from any
// charge.dispute.* event: opened, updated, its funds withdrawn or
// reinstated, closed. Nothing is undone by itself — whether to contest it,
// and what to do with the credits, is support's call — so the event is
// failed while the dispute needs an answer and when it is lost (the
// money is gone), and applied otherwise. The outcome follows the dispute
// as it stands, so an older event delivered late is decided by the
// latest state.
func (w *StripeEventWorker) applyDispute(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	var fx effects
	var d stripe.Dispute
	if err := eventObject(ev, &d); err != nil || d.ID == "" {
		return store.OutcomeFailed, "malformed dispute object", fx, nil
	}
	intent := ""
	switch {
	case d.PaymentIntent != nil:
		intent = d.PaymentIntent.ID
	case d.Charge != nil && d.Charge.PaymentIntent != nil:
		intent = d.Charge.PaymentIntent.ID
	}
	if intent == "" {
		return store.OutcomeIgnored, "dispute " + d.ID + " names no payment intent", fx, nil
	}
	pay, err := store.LockPaymentByIntent(ctx, tx, intent)
	if store.ErrorKind(err) == store.KindNotFound || (err == nil && pay.GrantID == nil) {
		// Events come in any order: the purchase it disputes may not be
		// applied yet. It waits as a refund does (refundWaitWindow from its
		// receipt, and as long as a stored purchase event naming it is
		// queued), then fails for support rather than being dropped.
		if time.Since(ev.ReceivedAt) < refundWaitWindow {
			return "", "", fx, fmt.Errorf("waiting for the payment it disputes to be recorded (checked every 30 s for an hour): %w", river.JobSnooze(30*time.Second))
		}
		pending, err := store.PendingPurchaseNames(ctx, tx, intent)
		if err != nil {
			return "", "", fx, err
		}
		if pending {
			return "", "", fx, fmt.Errorf("waiting for the purchase it disputes, received and not yet processed: %w", river.JobSnooze(30*time.Second))
		}
		pay, err = store.LockPaymentByIntent(ctx, tx, intent)
		if store.ErrorKind(err) == store.KindNotFound || (err == nil && pay.GrantID == nil) {
			return store.OutcomeFailed, fmt.Sprintf("dispute %s of %s: no payment recorded here has payment intent %s; look at it in Stripe's dashboard",
				d.ID, billing.FormatMoney(d.Amount, string(d.Currency)), intent), fx, nil
		}
	}
	if err != nil {
		return "", "", fx, err
	}
	currency := string(d.Currency)
	switch {
	case !disputeStatuses[d.Status]:
		return store.OutcomeFailed, fmt.Sprintf("dispute %s of payment #%d has an unknown status %q: not recorded; look at it in Stripe's dashboard", d.ID, pay.ID, d.Status), fx, nil
	case d.Amount <= 0:
		return store.OutcomeFailed, fmt.Sprintf("dispute %s of payment #%d has no amount: not recorded; look at it in Stripe's dashboard", d.ID, pay.ID), fx, nil
	case currency != pay.Currency:
		return store.OutcomeFailed, fmt.Sprintf("dispute %s is in %s, payment #%d in %s: not recorded; look at it in Stripe's dashboard", d.ID, currency, pay.ID, pay.Currency), fx, nil
	case d.Amount > pay.AmountMinor:
		return store.OutcomeFailed, fmt.Sprintf("dispute %s of %s is more than payment #%d's %s: not recorded; look at it in Stripe's dashboard", d.ID,
			billing.FormatMoney(d.Amount, currency), pay.ID, billing.FormatMoney(pay.AmountMinor, pay.Currency)), fx, nil
	}
	reason := string(d.Reason)
	if reason == "" {
		reason = "general"
	}
	if len(reason) > 100 {
		reason = reason[:100]
	}
	rec := store.Dispute{PaymentID: pay.ID, StripeDisputeID: d.ID, AmountMinor: d.Amount, Currency: currency, Reason: reason,
		Status: string(d.Status), OpenedAt: time.Unix(d.Created, 0).UTC(), StatusAt: ev.Created}
	if d.Created <= 0 {
		rec.OpenedAt = ev.Created
	}
	if d.EvidenceDetails != nil && d.EvidenceDetails.DueBy > 0 && !store.DisputeClosed(rec.Status) {
		due := time.Unix(d.EvidenceDetails.DueBy, 0).UTC()
		rec.EvidenceDueBy = &due
	}
	got, err := store.RecordDispute(ctx, tx, rec)
	if err != nil {
		return "", "", fx, err
	}
	email, _, err := store.EmailAndBalance(ctx, tx, pay.UserID)
	if err != nil {
		return "", "", fx, err
	}
	detail := disputeDetail(got, pay, email == "")
	switch got.Status {
	case "needs_response", "warning_needs_response", "lost":
		return store.OutcomeFailed, detail, fx, nil
	}
	return store.OutcomeApplied, detail, fx, nil
}

// disputeDetail tells support what a dispute means for its payment as it
// stands, and what to do.
func disputeDetail(d store.Dispute, pay store.Payment, deleted bool) string {
	what := fmt.Sprintf("dispute %s of %s of payment #%d (user %d, reason %s)", d.StripeDisputeID,
		billing.FormatMoney(d.AmountMinor, d.Currency), pay.ID, pay.UserID, d.Reason)
	credits := fmt.Sprintf("its credits (%s bought) were not taken back: remove what is owed with Credits on /admin/users/%d, saying why", billing.FormatCredits(pay.Credits), pay.UserID)
	switch {
	case deleted:
		credits = "the account was deleted and its credits forfeited"
	case pay.AmountRefundedMinor >= pay.AmountMinor:
		// Customers often dispute what was refunded already: that refund
		// is the evidence, and its credits are back with us.
		credits = fmt.Sprintf("the payment was refunded in full already (%s, %s taken back): show Stripe that refund as your evidence; take no credits again",
			billing.FormatMoney(pay.AmountRefundedMinor, pay.Currency), billing.FormatCredits(pay.CreditsClawedBack))
	case pay.AmountRefundedMinor > 0:
		credits = fmt.Sprintf("%s of it was refunded already (%s taken back); the rest of its credits (%s bought) were not taken back: remove what is still owed with Credits on /admin/users/%d, saying why",
			billing.FormatMoney(pay.AmountRefundedMinor, pay.Currency), billing.FormatCredits(pay.CreditsClawedBack), billing.FormatCredits(pay.Credits), pay.UserID)
	}
	due := ""
	if d.EvidenceDueBy != nil {
		due = " by " + d.EvidenceDueBy.Format("2 Jan 2006 15:04 UTC")
	}
	switch d.Status {
	case "warning_needs_response":
		return what + " is an inquiry: no money was taken back yet; answer it in Stripe's dashboard" + due + ", or refund the payment (Refund on /admin/payments/" + fmt.Sprint(pay.ID) + "/refund) to close it"
	case "warning_under_review":
		return what + " is an inquiry under review: no money was taken back"
	case "warning_closed":
		return what + " was an inquiry, closed without a chargeback"
	case "needs_response":
		return what + ": the customer's bank took the money back; answer it in Stripe's dashboard" + due + " to contest it, or accept it there; " + credits
	case "under_review":
		return what + ": the bank is reviewing the evidence; the money stays withdrawn until it decides"
	case "won":
		return what + " was won: the money is back"
	}
	return what + " was lost: the money is gone for good; " + credits
}
