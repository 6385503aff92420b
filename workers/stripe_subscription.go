package workers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// Subscriptions: a checkout in subscription mode opens it, each paid
// invoice is a payment that grants the plan's credits until the end of
// the period it paid for, and the customer.subscription.* events keep its
// state. Events arrive in any order: an invoice finds its subscription by
// the reference its checkout put in the subscription's metadata, a state
// older than the one recorded changes nothing, and a period only moves
// forward.

// applySubscriptionCheckout applies a checkout.session.* event of a
// subscription's checkout.
func (w *StripeEventWorker) applySubscriptionCheckout(ctx context.Context, tx pgx.Tx, ev store.StripeEvent, sess stripe.CheckoutSession) (string, string, effects, error) {
	var fx effects
	if sess.ID == "" {
		return store.OutcomeFailed, "malformed checkout session object", fx, nil
	}
	sub, err := store.LockSubscriptionBySession(ctx, tx, sess.ID)
	if errors.Is(err, store.ErrNotFound) {
		return store.OutcomeIgnored, "checkout session " + sess.ID + " was not created by QuickScale", fx, nil
	}
	if err != nil {
		return "", "", fx, err
	}
	switch stripe.EventType(ev.Type) {
	case stripe.EventTypeCheckoutSessionExpired:
		changed, err := store.AbandonSubscriptionCheckout(ctx, tx, sub.ID)
		if err != nil || !changed {
			return store.OutcomeIgnored, "subscription is " + sub.Status, effects{noChange: true}, err
		}
		return store.OutcomeApplied, fmt.Sprintf("subscription %d: its checkout expired unpaid", sub.ID), fx, nil
	case stripe.EventTypeCheckoutSessionAsyncPaymentFailed:
		return store.OutcomeIgnored, "a subscription starts only once its invoice is paid (invoice.paid)", fx, nil
	}
	if sess.Subscription == nil || sess.Subscription.ID == "" {
		return store.OutcomeFailed, "subscription checkout " + sess.ID + " completed without a subscription", fx, nil
	}
	if err := store.LinkSubscription(ctx, tx, &sub, sess.Subscription.ID); err != nil {
		if errors.Is(err, store.ErrSubscriptionLinkedElsewhere) {
			return store.OutcomeFailed, err.Error(), fx, nil
		}
		return "", "", fx, err
	}
	if err := w.cancelIfOrphaned(ctx, tx, sub); err != nil {
		return "", "", fx, err
	}
	if sess.PaymentStatus != stripe.CheckoutSessionPaymentStatusPaid && sess.PaymentStatus != stripe.CheckoutSessionPaymentStatusNoPaymentRequired {
		return store.OutcomeApplied, "subscription linked; payment_status is " + string(sess.PaymentStatus) + ": it starts once its invoice is paid", fx, nil
	}
	if dup, err := w.endIfDuplicate(ctx, tx, sub); err != nil || dup {
		return store.OutcomeApplied, fmt.Sprintf("subscription %d: user %d has another live subscription, so this one was ended at once and is being cancelled at the provider", sub.ID, sub.UserID), fx, err
	}
	started, err := store.StartSubscription(ctx, tx, sub.ID)
	if err != nil {
		return "", "", fx, err
	}
	if !started {
		return store.OutcomeApplied, "subscription already " + sub.Status, fx, nil
	}
	return store.OutcomeApplied, fmt.Sprintf("subscription %d (%s) started for user %d", sub.ID, sess.Subscription.ID, sub.UserID), fx, nil
}

// subscriptionOf locks the subscription an invoice or subscription object
// names, links it to the provider's, and locks its user (see
// cancelIfOrphaned). A non-empty outcome ends the event there.
func (w *StripeEventWorker) subscriptionOf(ctx context.Context, tx pgx.Tx, stripeID, ref, customerID string) (store.Subscription, string, string, error) {
	sub, err := store.LockSubscription(ctx, tx, stripeID, ref)
	if errors.Is(err, store.ErrNotFound) {
		if ref != "" {
			// Ours by its metadata, yet not recorded: its checkout's
			// record failed after Stripe opened it.
			return sub, store.OutcomeFailed, "subscription " + stripeID + " names checkout reference " + ref + ", which QuickScale has no record of", nil
		}
		return sub, store.OutcomeIgnored, "subscription " + stripeID + " was not created by QuickScale", nil
	}
	if err != nil {
		return sub, "", "", err
	}
	if customerID != sub.CustomerID {
		return sub, store.OutcomeFailed, fmt.Sprintf("subscription %s: customer %s is not the recorded %s", stripeID, customerID, sub.CustomerID), nil
	}
	if err := store.LinkSubscription(ctx, tx, &sub, stripeID); err != nil {
		if errors.Is(err, store.ErrSubscriptionLinkedElsewhere) {
			return sub, store.OutcomeFailed, err.Error(), nil
		}
		return sub, "", "", err
	}
	return sub, "", "", w.cancelIfOrphaned(ctx, tx, sub)
}

// cancelIfOrphaned ends at the provider a subscription whose account was
// deleted (a checkout paid after the deletion, which found nothing to
// cancel then): a cancel_subscription job, in tx. The user's row is
// locked first (store.LockBuyer), so that a deletion running meanwhile either waits
// for tx (and then finds the subscription linked, and cancels it itself)
// or is waited for (and seen here).
func (w *StripeEventWorker) cancelIfOrphaned(ctx context.Context, tx pgx.Tx, sub store.Subscription) error {
	deleted, err := store.LockBuyer(ctx, tx, sub.UserID)
	if err != nil || !deleted || sub.StripeSubscriptionID == nil || sub.Status == store.SubCanceled {
		return err
	}
	_, err = w.inserter.InsertTx(ctx, tx, jobs.CancelSubscription{SubscriptionID: sub.ID}, nil)
	return err
}

// endIfDuplicate ends sub when its user has another live subscription
// (two checkouts paid: another tab, a race): it is canceled here at once
// and at the provider by a job, so that it never renews, and the one-live
// rule holds. Its invoice's credits are still granted (they were paid
// for). It reports whether sub is such a duplicate.
func (w *StripeEventWorker) endIfDuplicate(ctx context.Context, tx pgx.Tx, sub store.Subscription) (bool, error) {
	if sub.Live() {
		return false, nil
	}
	other, err := store.OtherLiveSubscription(ctx, tx, sub.UserID, sub.ID)
	if err != nil || !other {
		return false, err
	}
	ended, err := store.EndDuplicateSubscription(ctx, tx, sub.ID)
	if err != nil || !ended {
		// Ended already (a late event of a plan that ran before this
		// one): nothing to do here.
		return false, err
	}
	_, err = w.inserter.InsertTx(ctx, tx, jobs.CancelSubscription{SubscriptionID: sub.ID}, nil)
	return true, err
}

// invoicePeriod is the period a subscription invoice pays for: its
// subscription line's (an invoice's own period_start/end are the period
// before it, for a renewal).
func invoicePeriod(inv stripe.Invoice) (start, end time.Time, ok bool) {
	if inv.Lines == nil {
		return start, end, false
	}
	for _, l := range inv.Lines.Data {
		if l == nil || l.Period == nil || l.Period.End <= l.Period.Start {
			continue
		}
		if l.Type == stripe.InvoiceLineItemTypeSubscription || !ok {
			start, end, ok = time.Unix(l.Period.Start, 0).UTC(), time.Unix(l.Period.End, 0).UTC(), true
			if l.Type == stripe.InvoiceLineItemTypeSubscription {
				break
			}
		}
	}
	return start, end, ok
}

// planLine is the amount of an invoice's subscription line when it is the
// invoice's only line with an amount, for one unit at its price (single
// false otherwise).
func planLine(inv stripe.Invoice) (amount int64, single bool) {
	if inv.Lines == nil || inv.Lines.HasMore {
		return 0, false
	}
	n := 0
	for _, l := range inv.Lines.Data {
		if l == nil || l.Amount == 0 {
			continue
		}
		n++
		if l.Type != stripe.InvoiceLineItemTypeSubscription || l.Quantity > 1 || (l.Price != nil && l.Price.UnitAmount != l.Amount) {
			return 0, false
		}
		amount = l.Amount
	}
	return amount, n == 1
}

// invoiceSubscription decodes an invoice.* event and locks the
// subscription its invoice is of (subscriptionOf). A non-empty outcome
// ends the event there.
func (w *StripeEventWorker) invoiceSubscription(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (inv stripe.Invoice, sub store.Subscription, outcome, detail string, err error) {
	if err := eventObject(ev, &inv); err != nil || inv.ID == "" {
		return inv, sub, store.OutcomeFailed, "malformed invoice object", nil
	}
	if inv.Subscription == nil || inv.Subscription.ID == "" {
		return inv, sub, store.OutcomeIgnored, "invoice " + inv.ID + " is not a subscription's", nil
	}
	ref, customer := "", ""
	if inv.SubscriptionDetails != nil {
		ref = inv.SubscriptionDetails.Metadata[billing.MetaSubscriptionRef]
	}
	if inv.Customer != nil {
		customer = inv.Customer.ID
	}
	sub, outcome, detail, err = w.subscriptionOf(ctx, tx, inv.Subscription.ID, ref, customer)
	return inv, sub, outcome, detail, err
}

// applyInvoicePaid grants a subscription's credits for the period its
// invoice paid for and records the invoice as a payment.
func (w *StripeEventWorker) applyInvoicePaid(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	var fx effects
	inv, sub, outcome, detail, err := w.invoiceSubscription(ctx, tx, ev)
	if err != nil || outcome != "" {
		return outcome, detail, fx, err
	}
	start, end, ok := invoicePeriod(inv)
	// Applied before (re-processed, or delivered again): nothing more, even
	// if the plan has switched since — except that an invoice whose money
	// is owed back stays failed until it is back (invoiceGrantedBefore).
	if done, err := store.InvoiceRecorded(ctx, tx, inv.ID); err != nil || done {
		if err != nil {
			return "", "", fx, err
		}
		return w.invoiceGrantedBefore(ctx, tx, inv, sub)
	}
	var billed store.BilledPlan
	var known bool
	// The plan is read from the invoice's one subscription line, which
	// must be all that was paid: discounts, a balance, taxes or other
	// items are not offered, and would otherwise pass for another plan.
	line, single := planLine(inv)
	if ok && single && inv.AmountPaid == line && string(inv.Currency) == sub.Currency {
		if billed, known, err = w.billedPlan(ctx, sub, line); err != nil {
			return "", "", fx, err
		}
	}
	// A renewal of a second plan stopped here at once (endIfDuplicate),
	// whose cancellation never reached the provider (its job gave up, or
	// was deleted): the provider is still billing it, whatever the user's
	// other plan does. Its cancellation is queued again whatever else is
	// wrong with the invoice; a plan's own first invoice (the provider's
	// clock may date it a little after the stop) is not a renewal.
	stoppedAt, err := store.StoppedHereAt(ctx, tx, sub.ID)
	if err != nil {
		return "", "", fx, err
	}
	// (An invoice without a billing reason is not taken for a renewal
	// either: the field is nullable.)
	renewal := inv.BillingReason != "" && inv.BillingReason != stripe.InvoiceBillingReasonSubscriptionCreate
	endedHere := stoppedAt != nil && renewal && (!ok || !start.Before(*stoppedAt))
	var endedAt time.Time
	if endedHere {
		endedAt = *stoppedAt
		if _, err := w.inserter.InsertTx(ctx, tx, jobs.CancelSubscription{SubscriptionID: sub.ID}, nil); err != nil {
			return "", "", fx, err
		}
	}
	stoppedNote := ""
	if endedHere {
		stoppedNote = fmt.Sprintf("; it bills subscription %d, stopped here on %s, whose cancellation is queued again", sub.ID, endedAt.UTC().Format("2 Jan 2006 15:04 UTC"))
	}
	switch {
	case !ok:
		return store.OutcomeFailed, "invoice " + inv.ID + " has no period" + stoppedNote, fx, nil
	case !known:
		return store.OutcomeFailed, fmt.Sprintf("invoice %s: amount paid %s is not one month of a plan of this subscription (its %s, or a plan for sale) paid in full: no credits were added; refund it if the customer asks",
			inv.ID, billing.FormatMoney(inv.AmountPaid, string(inv.Currency)), billing.FormatMoney(sub.PriceMinor, sub.Currency)) + stoppedNote, fx, nil
	case !end.After(time.Now()):
		return store.OutcomeFailed, fmt.Sprintf("invoice %s paid for a period that ended at %s, before it was applied: no credits were added; refund it in Stripe if the customer asks",
			inv.ID, end.Format("2 Jan 2006 15:04 UTC")) + stoppedNote, fx, nil
	}
	switchNote := ""
	if billed.Code != sub.PlanCode || billed.PriceMinor != sub.PriceMinor {
		from := sub.PlanName
		if sub, err = store.ApplyBilledPlan(ctx, tx, sub.ID, billed); err != nil {
			return "", "", fx, err
		}
		if sub.PlanName == from {
			switchNote = fmt.Sprintf("; it paid %s for %s, its price from now on", billing.FormatMoney(billed.PriceMinor, sub.Currency), from)
		} else {
			switchNote = fmt.Sprintf("; it paid for %s, the plan from now on (was %s)", sub.PlanName, from)
		}
	}
	// A stopped plan's renewal (above): its credits are granted (they were
	// paid for), its payment is marked owed back, and the event is failed
	// so that support refunds it.
	dup, err := w.endIfDuplicate(ctx, tx, sub)
	if err != nil {
		return "", "", fx, err
	}
	g, err := store.Grant(ctx, tx, store.NewGrant{
		UserID: sub.UserID, Kind: store.GrantSubscription, Amount: sub.CreditsPerPeriod, ExpiresAt: &end,
		SourceKind: "invoice", SourceID: inv.ID,
	})
	if err != nil {
		return "", "", fx, err
	}
	intent := ""
	if inv.PaymentIntent != nil {
		intent = inv.PaymentIntent.ID
	}
	pay, _, err := store.RecordInvoicePayment(ctx, tx, store.InvoicePayment{
		Subscription: sub, InvoiceID: inv.ID, PaymentIntentID: intent, AmountMinor: inv.AmountPaid, Currency: string(inv.Currency),
		PeriodStart: start, PeriodEnd: end, GrantID: g.GrantID, PaidAt: ev.Created,
	})
	if err != nil {
		return "", "", fx, err
	}
	if err := store.ExtendSubscriptionPeriod(ctx, tx, sub.ID, start, end); err != nil {
		return "", "", fx, err
	}
	if !g.Created {
		return store.OutcomeApplied, "already granted", fx, nil
	}
	if endedHere {
		if err := store.MarkOwedBack(ctx, tx, pay.ID, store.OwedBackStoppedPlan); err != nil {
			return "", "", fx, err
		}
	}
	dupNote := ""
	if dup {
		dupNote = fmt.Sprintf("; user %d has another live subscription, so this one was ended at once and is being cancelled at the provider (it will not renew; refund it if asked)", sub.UserID)
	}
	fx = effects{granted: sub.CreditsPerPeriod, paymentStatus: store.PaymentSucceeded, revenueMinor: pay.AmountMinor, currency: pay.Currency, product: "subscription"}
	email, balance, err := store.EmailAndBalance(ctx, tx, sub.UserID)
	if err != nil {
		return "", "", fx, err
	}
	if email == "" {
		// Renewed after the account was deleted (its cancellation not yet
		// through, or never asked: a plan stopped here before the
		// deletion): the credits are forfeited, the plan's cancellation is
		// asked (again), and the invoice is for someone to refund.
		forfeited, err := store.ForfeitCredits(ctx, tx, sub.UserID)
		if err != nil {
			return "", "", fx, err
		}
		if !endedHere {
			if err := store.MarkOwedBack(ctx, tx, pay.ID, store.OwedBackDeletedBuyer); err != nil {
				return "", "", fx, err
			}
		}
		if _, err := w.inserter.InsertTx(ctx, tx, jobs.CancelSubscription{SubscriptionID: sub.ID}, nil); err != nil {
			return "", "", fx, err
		}
		fx.forfeited = forfeited
		return store.OutcomeFailed, fmt.Sprintf("invoice %s paid after its buyer (user %d) deleted the account: the %s credits were granted and forfeited, and the subscription is being cancelled; refund the payment (Refund on /admin/payments/%d/refund)",
			inv.ID, sub.UserID, billing.FormatCredits(sub.CreditsPerPeriod), pay.ID), fx, nil
	}
	if _, err := w.inserter.InsertTx(ctx, tx, jobs.SendEmail{Template: jobs.EmailSubscriptionPaid, To: email, Data: map[string]string{
		"Plan":             sub.PlanName,
		"Credits":          billing.FormatCredits(sub.CreditsPerPeriod),
		"Amount":           billing.FormatMoney(pay.AmountMinor, pay.Currency),
		"Balance":          billing.FormatCredits(balance),
		"Payment":          "#" + strconv.FormatInt(pay.ID, 10),
		"PaidAt":           time.Now().UTC().Format("2 Jan 2006 15:04 UTC"),
		"Period":           start.Format("2 Jan 2006") + " – " + end.Format("2 Jan 2006"),
		"PeriodEnd":        end.Format("2 Jan 2006 15:04 UTC"),
		"PeriodEndDate":    end.Format("2 Jan 2006"),
		"ReceiptLink":      w.baseURL + "/dashboard/payments/" + strconv.FormatInt(pay.ID, 10) + "/receipt",
		"SubscriptionLink": w.baseURL + "/dashboard/subscription",
		"Renewal":          renewalSentence(sub, end, dup, endedHere),
	}}, nil); err != nil {
		return "", "", fx, err
	}
	if endedHere {
		return store.OutcomeFailed, fmt.Sprintf("invoice %s renews subscription %d, which ended here on %s (it should not have renewed: its cancellation never reached the provider); the %s credits were granted since it was paid, and its cancellation is queued again; refund the payment unless the customer wants to keep it (Refund on /admin/payments/%d/refund)",
			inv.ID, sub.ID, endedAt.UTC().Format("2 Jan 2006 15:04 UTC"), billing.FormatCredits(sub.CreditsPerPeriod), pay.ID), fx, nil
	}
	return store.OutcomeApplied, fmt.Sprintf("granted %s subscription credits to user %d until %s", billing.FormatCredits(sub.CreditsPerPeriod), sub.UserID, end.Format("2 Jan 2006 15:04 UTC")) + switchNote + dupNote, fx, nil
}

// invoiceGrantedBefore decides an invoice.paid whose invoice was recorded
// before (re-processed, or delivered again): "already granted", unless its
// money was found to be the customer's due when it was recorded
// (payments.owed_back: paid after its buyer deleted the account, or
// renewing a plan stopped here) and still is — then it stays failed, and
// the plan's cancellation is asked again. What came back to the customer
// counts: refunds (less those that failed later and are not settled) and
// disputes lost; under an open chargeback it is to be answered there, not
// refunded.
func (w *StripeEventWorker) invoiceGrantedBefore(ctx context.Context, tx pgx.Tx, inv stripe.Invoice, sub store.Subscription) (string, string, effects, error) {
	var fx effects
	pay, err := store.InvoicePaymentOf(ctx, tx, inv.ID)
	if err != nil {
		return "", "", fx, err
	}
	m, err := store.MoneyStandingOf(ctx, tx, pay.ID)
	if err != nil || m.OwedBack == nil {
		return store.OutcomeApplied, "already granted", fx, err
	}
	due := pay.AmountMinor - pay.AmountRefundedMinor + m.UnsettledFailedMinor - m.LostMinor
	if due <= 0 {
		return store.OutcomeApplied, "already granted; its money is back with the customer (refunded, or taken back by their bank in a lost dispute)", fx, nil
	}
	// The provider went on billing the plan: asked to end it again.
	if _, err := w.inserter.InsertTx(ctx, tx, jobs.CancelSubscription{SubscriptionID: sub.ID}, nil); err != nil {
		return "", "", fx, err
	}
	what := fmt.Sprintf("paid after its buyer (user %d) deleted the account: the credits were forfeited; the plan's cancellation is queued again", sub.UserID)
	if *m.OwedBack == store.OwedBackStoppedPlan {
		stoppedAt, err := store.StoppedHereAt(ctx, tx, sub.ID)
		if err != nil {
			return "", "", fx, err
		}
		when := "here"
		if stoppedAt != nil {
			when = "here on " + stoppedAt.UTC().Format("2 Jan 2006 15:04 UTC")
		}
		what = fmt.Sprintf("it renewed subscription %d, which ended %s: its cancellation is queued again", sub.ID, when)
	}
	switch {
	case m.OpenChargeback:
		return store.OutcomeFailed, fmt.Sprintf("already granted; %s; its payment is disputed — answer the dispute in Stripe's dashboard (no refund while it runs: /admin/payments/%d/refund)", what, pay.ID), fx, nil
	case m.LostMinor > 0:
		return store.OutcomeFailed, fmt.Sprintf("already granted; %s; the customer's bank took %s back in a lost dispute, and %s is still theirs: refund it another way (the refund page refuses a disputed payment)",
			what, billing.FormatMoney(m.LostMinor, pay.Currency), billing.FormatMoney(due, pay.Currency)), fx, nil
	}
	return store.OutcomeFailed, fmt.Sprintf("already granted; %s; the payment is still to be refunded (%s; Refund on /admin/payments/%d/refund)",
		what, billing.FormatMoney(due, pay.Currency), pay.ID), fx, nil
}

// renewalSentence says what happens at the end of the period just paid
// for, as the subscription stands: stopped at once (a second live plan),
// set to end, or it renews as the plan and at the price chosen for then
// (not the amount just paid, when a switch or a new price is chosen).
func renewalSentence(sub store.Subscription, end time.Time, duplicate, endedBefore bool) string {
	date := end.Format("2 Jan 2006")
	switch {
	case endedBefore:
		return "This plan had ended before this renewal, so it should not have been charged: we are stopping it again, and you can ask us (Contact, on our site) to refund this payment. Its credits are yours until " + date + " unless it is refunded."
	case duplicate:
		return "You have another plan running, so this one was stopped at once: it does not renew. Its credits stay yours until " + date + "."
	case sub.CancelAtPeriodEnd:
		return "It is set to end on " + date + " and does not renew; you can keep it on your subscription page until then."
	case sub.NextPlanCode != nil && *sub.NextPlanCode != sub.PlanCode && sub.NextPlanName != nil:
		return "It renews on " + date + " as the " + *sub.NextPlanName + " plan you chose, for " + billing.FormatMoney(*sub.NextPriceMinor, sub.Currency) +
			" (" + billing.FormatCredits(*sub.NextCreditsPerPeriod) + " credits a month), unless you cancel before then."
	case sub.NextPriceMinor != nil:
		return "It renews on " + date + " for " + billing.FormatMoney(*sub.NextPriceMinor, sub.Currency) + ", its new price, unless you cancel before then."
	}
	return "It renews on " + date + " for " + billing.FormatMoney(sub.PriceMinor, sub.Currency) + " unless you cancel before then."
}

// billedPlan says which plan an invoice's amount (in the subscription's
// currency) paid for: the plan it is on, at its own price; else the plan
// chosen for its next renewals; else the one plan for sale at that price
// (a switch undone after the provider drew up the invoice, or one the
// provider took and this side could not record), so that customers get
// what they paid for; known is false when the amount is none of these.
func (w *StripeEventWorker) billedPlan(ctx context.Context, sub store.Subscription, amount int64) (store.BilledPlan, bool, error) {
	switch {
	case amount == sub.PriceMinor:
		return store.BilledPlan{Code: sub.PlanCode, PriceMinor: sub.PriceMinor, CreditsPerPeriod: sub.CreditsPerPeriod}, true, nil
	case sub.NextPlanCode != nil && amount == *sub.NextPriceMinor:
		return store.BilledPlan{Code: *sub.NextPlanCode, PriceMinor: *sub.NextPriceMinor, CreditsPerPeriod: *sub.NextCreditsPerPeriod}, true, nil
	}
	plans, err := w.store.Plans(ctx)
	if err != nil {
		return store.BilledPlan{}, false, err
	}
	var found []store.Plan
	for _, p := range plans {
		if p.PriceMinor == amount && p.Currency == sub.Currency {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		return store.BilledPlan{}, false, nil
	}
	return store.BilledPlan{Code: found[0].Code, PriceMinor: found[0].PriceMinor, CreditsPerPeriod: found[0].CreditsPerPeriod}, true, nil
}

// applyInvoiceFailed records a renewal's payment that did not go through
// (what it bills, for which period, when it is tried again) and tells the
// customer; the subscription's state, past due, comes with its own event.
func (w *StripeEventWorker) applyInvoiceFailed(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	var fx effects
	inv, sub, outcome, detail, err := w.invoiceSubscription(ctx, tx, ev)
	if err != nil || outcome != "" {
		return outcome, detail, fx, err
	}
	if sub.Status == store.SubCanceled || sub.Status == store.SubCheckout {
		// A first payment refused at checkout is shown there; an ended
		// subscription is not renewed.
		return store.OutcomeIgnored, "subscription is " + sub.Status, fx, nil
	}
	email, _, err := store.EmailAndBalance(ctx, tx, sub.UserID)
	if err != nil || email == "" {
		return store.OutcomeIgnored, "the account was deleted", fx, err
	}
	next := ""
	var nextAt *time.Time
	if inv.NextPaymentAttempt > 0 {
		t := time.Unix(inv.NextPaymentAttempt, 0).UTC()
		nextAt, next = &t, t.Format("2 Jan 2006")
	}
	// Paid already (its invoice.paid applied first: events come in any
	// order): the failure is kept on record, the customer is not told.
	paid, err := store.InvoiceRecorded(ctx, tx, inv.ID)
	if err != nil {
		return "", "", fx, err
	}
	// The plan the invoice bills: a switch chosen before takes effect
	// with the renewal's invoice, paid or not.
	plan := store.BilledPlan{}
	planName := sub.PlanName
	if line, single := planLine(inv); single && inv.AmountDue == line && string(inv.Currency) == sub.Currency {
		billed, known, err := w.billedPlan(ctx, sub, line)
		if err != nil {
			return "", "", fx, err
		}
		if known {
			plan = billed
			if p, err := w.store.PlanByCode(ctx, billed.Code); err == nil {
				planName = p.Name
			} else if store.ErrorKind(err) != store.KindNotFound {
				return "", "", fx, err
			}
		}
	}
	recorded := ""
	if start, end, ok := invoicePeriod(inv); ok && inv.AmountDue > 0 {
		created, err := store.RecordInvoiceFailure(ctx, tx, store.NewInvoiceFailure{
			SubscriptionID: sub.ID, InvoiceID: inv.ID, AmountMinor: inv.AmountDue, Currency: string(inv.Currency), PlanCode: plan.Code,
			PeriodStart: start, PeriodEnd: end, Attempt: inv.AttemptCount, NextAttemptAt: nextAt, FailedAt: ev.Created, StripeEventID: ev.ID,
		})
		if err != nil {
			return "", "", fx, err
		}
		if !created {
			return store.OutcomeApplied, "already recorded", fx, nil
		}
	} else {
		recorded = " (not recorded: it has no period or no amount)"
	}
	if paid {
		return store.OutcomeApplied, fmt.Sprintf("invoice %s failed an attempt but is paid already: recorded%s, the customer is not told", inv.ID, recorded), fx, nil
	}
	if _, err := w.inserter.InsertTx(ctx, tx, jobs.SendEmail{Template: jobs.EmailSubscriptionFailed, To: email, Data: map[string]string{
		"Plan":             planName,
		"Amount":           billing.FormatMoney(inv.AmountDue, string(inv.Currency)),
		"NextAttempt":      next,
		"SubscriptionLink": w.baseURL + "/dashboard/subscription",
	}}, nil); err != nil {
		return "", "", fx, err
	}
	return store.OutcomeApplied, fmt.Sprintf("told user %d that invoice %s (%s, %s) was not paid%s", sub.UserID, inv.ID,
		billing.FormatMoney(inv.AmountDue, string(inv.Currency)), planName, recorded), fx, nil
}

// subscriptionStatus maps Stripe's subscription status onto ours; ok is
// false for a status that changes nothing here (incomplete: its first
// invoice not paid yet; trialing and paused are not offered).
func subscriptionStatus(s stripe.SubscriptionStatus) (string, bool) {
	switch s {
	case stripe.SubscriptionStatusActive:
		return store.SubActive, true
	case stripe.SubscriptionStatusPastDue, stripe.SubscriptionStatusUnpaid:
		return store.SubPastDue, true
	case stripe.SubscriptionStatusCanceled, stripe.SubscriptionStatusIncompleteExpired:
		return store.SubCanceled, true
	}
	return "", false
}

// applySubscriptionEvent records a customer.subscription.* event's state.
func (w *StripeEventWorker) applySubscriptionEvent(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	var fx effects
	var ss stripe.Subscription
	if err := eventObject(ev, &ss); err != nil || ss.ID == "" {
		return store.OutcomeFailed, "malformed subscription object", fx, nil
	}
	customer := ""
	if ss.Customer != nil {
		customer = ss.Customer.ID
	}
	sub, outcome, detail, err := w.subscriptionOf(ctx, tx, ss.ID, ss.Metadata[billing.MetaSubscriptionRef], customer)
	if err != nil || outcome != "" {
		return outcome, detail, fx, err
	}
	status, ok := subscriptionStatus(ss.Status)
	if stripe.EventType(ev.Type) == stripe.EventTypeCustomerSubscriptionDeleted {
		status, ok = store.SubCanceled, true
	}
	if !ok {
		return store.OutcomeIgnored, "subscription status " + string(ss.Status) + " changes nothing", fx, nil
	}
	if status != store.SubCanceled {
		if dup, err := w.endIfDuplicate(ctx, tx, sub); err != nil || dup {
			return store.OutcomeApplied, fmt.Sprintf("subscription %d: user %d has another live subscription, so this one was ended at once and is being cancelled at the provider", sub.ID, sub.UserID), fx, err
		}
	}
	st := store.SubscriptionState{Status: status, CancelAtPeriodEnd: ss.CancelAtPeriodEnd, At: ev.Created}
	if ss.CurrentPeriodEnd > ss.CurrentPeriodStart && ss.CurrentPeriodStart > 0 {
		start, end := time.Unix(ss.CurrentPeriodStart, 0).UTC(), time.Unix(ss.CurrentPeriodEnd, 0).UTC()
		st.PeriodStart, st.PeriodEnd = &start, &end
	}
	// When it ended: Stripe's canceled_at is when the cancel was asked
	// (for one set to end at its period's end, before it ended).
	if ss.EndedAt > 0 {
		at := time.Unix(ss.EndedAt, 0).UTC()
		st.CanceledAt = &at
	} else if ss.CanceledAt > 0 && status == store.SubCanceled {
		at := time.Unix(ss.CanceledAt, 0).UTC()
		st.CanceledAt = &at
	}
	// What the provider bills from the next renewal: its one item's
	// price, when that is a plan's (a switch made here, undone, or made in
	// the provider's dashboard).
	if ss.Items != nil && len(ss.Items.Data) == 1 && status != store.SubCanceled {
		if it := ss.Items.Data[0]; it != nil && it.Price != nil && it.Price.UnitAmount > 0 && it.Quantity <= 1 && string(it.Price.Currency) == sub.Currency {
			b, known, err := w.billedPlan(ctx, sub, it.Price.UnitAmount)
			if err != nil {
				return "", "", fx, err
			}
			if known {
				st.BillsPlan = &b
			}
		}
	}
	applied, err := store.ApplySubscriptionState(ctx, tx, sub.ID, st)
	if err != nil {
		return "", "", fx, err
	}
	if !applied {
		return store.OutcomeIgnored, "an event newer than this one is recorded already", effects{noChange: true}, nil
	}
	detail = fmt.Sprintf("subscription %d: %s", sub.ID, status)
	if ss.CancelAtPeriodEnd && status != store.SubCanceled {
		detail += ", ends at its period's end"
	}
	if status == store.SubCanceled && sub.Live() {
		var reason stripe.SubscriptionCancellationDetailsReason
		if ss.CancellationDetails != nil {
			reason = ss.CancellationDetails.Reason
		}
		told, err := w.tellEnded(ctx, tx, sub, st.CanceledAt, reason)
		if err != nil {
			return "", "", fx, err
		}
		if told {
			detail += "; the customer was emailed"
		}
	}
	return store.OutcomeApplied, detail, fx, nil
}

// tellEnded emails the customer that their live plan has ended (sub as it
// was before): with its period, as set (by them or support); because its
// payment never went through; or by the operator's team (support's End it
// now, or Stripe's dashboard). Stripe's cancellation reason says which
// when it is given (a past-due plan ended by support is not "unpaid");
// without one, a past-due plan is taken to have run out of retries. A
// deleted account is told nothing (told false).
func (w *StripeEventWorker) tellEnded(ctx context.Context, tx pgx.Tx, sub store.Subscription, endedAt *time.Time, reason stripe.SubscriptionCancellationDetailsReason) (told bool, err error) {
	email, _, err := store.EmailAndBalance(ctx, tx, sub.UserID)
	if err != nil || email == "" {
		return false, err
	}
	at := time.Now().UTC()
	if endedAt != nil {
		at = endedAt.UTC()
	}
	why := "It was ended by our team. If you did not expect this, contact us."
	unpaid := reason == stripe.SubscriptionCancellationDetailsReasonPaymentFailed || (reason == "" && sub.Status == store.SubPastDue)
	switch {
	case unpaid:
		why = "Its last payment did not go through, and the payment provider has stopped trying."
		if o, found, err := w.store.Overdue(ctx, sub); err != nil {
			return false, err
		} else if found {
			why = "Its payment of " + o.Owed(billing.FormatMoney) +
				" did not go through, and the payment provider has stopped trying: nothing more is charged for it."
		}
	case sub.CancelAtPeriodEnd && (sub.CurrentPeriodEnd == nil || !at.Before(sub.CurrentPeriodEnd.Add(-time.Minute))):
		// Cancelled by the customer or by support: either way it was set
		// not to renew, and ended with its period.
		why = "It was set not to renew, so it ended with its period."
	}
	_, err = w.inserter.InsertTx(ctx, tx, jobs.SendEmail{Template: jobs.EmailSubscriptionEnded, To: email, Data: map[string]string{
		"Plan":             sub.PlanName,
		"EndedAt":          at.Format("2 Jan 2006 15:04 UTC"),
		"Why":              why,
		"SubscriptionLink": w.baseURL + "/dashboard/subscription",
	}}, nil)
	return err == nil, err
}
