package workers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
)

// StripeEventWorker applies one stored Stripe event. The event's effects,
// its recorded outcome and the job's completion commit in one transaction,
// so a crash at any point leaves either everything or nothing, and a retry
// finds the work either done or not started. Grants are keyed by the
// checkout session, so no replay, retry or race grants twice.
type StripeEventWorker struct {
	river.WorkerDefaults[jobs.StripeEvent]
	logger   *slog.Logger
	store    *store.Store
	inserter jobs.Inserter
	metrics  *observability.Metrics
	baseURL  string
	// beforeCommit, when set (tests), runs after the writes and before the
	// commit, to simulate a worker dying mid-job.
	beforeCommit func(ctx context.Context)
}

// refundWaitWindow is how long a refund for a payment we do not know yet
// (its checkout.session.completed still in flight) is retried before it is
// recorded as failed; longer while that completion is stored and its job
// still to run (after the workers were down for longer than the window,
// both wait in the queue).
const refundWaitWindow = time.Hour

// effects are what to count once the transaction committed.
type effects struct {
	granted       int64
	clawedBack    int64
	forfeited     int64 // credits of a deleted account taken away
	paymentStatus string
	revenueMinor  int64
	refundMinor   int64
	currency      string
	// product is "pack" or "subscription" (the payment's), for the
	// metrics' labels; "" is a pack's.
	product string
	// noChange: the event found nothing to do that could change how it was
	// first recorded (a late failure of a payment already settled); an
	// outcome recorded before stays. Where the work is done, or a failure
	// still stands, the worker says so instead: re-processing an event
	// re-checks it.
	noChange bool
}

// Work implements river.Worker.
func (w *StripeEventWorker) Work(ctx context.Context, job *river.Job[jobs.StripeEvent]) error {
	var (
		evType, outcome, detail string
		fx                      effects
		// before is the outcome recorded by an earlier processing (an
		// admin's re-process, a retried job), "" the first time.
		before string
	)
	err := w.store.InTx(ctx, func(tx pgx.Tx) error {
		ev, err := store.LockStripeEvent(ctx, tx, job.Args.EventID)
		if store.ErrorKind(err) == store.KindNotFound {
			return river.JobCancel(fmt.Errorf("stripe event %s is not stored", job.Args.EventID))
		}
		if err != nil {
			return err
		}
		evType = ev.Type
		if ev.Outcome != nil {
			before = *ev.Outcome
		}
		outcome, detail, fx, err = w.apply(ctx, tx, ev)
		if err != nil {
			return err
		}
		if err := store.SetEventOutcome(ctx, tx, ev.ID, outcome, detail, fx.noChange); err != nil {
			return err
		}
		if _, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job); err != nil {
			return err
		}
		if w.beforeCommit != nil {
			w.beforeCommit(ctx)
		}
		return nil
	})
	if err != nil {
		if refused := refusedByDatabase(err); refused != "" {
			// Retrying cannot help (the event contradicts what is stored,
			// e.g. a payment intent already another payment's): recorded
			// as failed, with the reason, for an admin to look at.
			outcome, detail = store.OutcomeFailed, "refused by the database: "+refused
			// Nothing it did was kept: no credits, payments or revenue
			// to count.
			fx = effects{}
			if err := w.fail(ctx, job, detail); err != nil {
				return err
			}
		} else {
			// Shown on the event's admin page; the attempt itself rolled back.
			why := err.Error()
			var snooze *river.JobSnoozeError
			if errors.As(err, &snooze) {
				// "waiting for …: JobSnoozeError: 30s" reads as a fault; say
				// what it is waiting for and when it looks again.
				why = strings.TrimSuffix(why, ": "+snooze.Error()) + " (next look in " + snooze.Duration.String() + ")"
			}
			if nerr := w.store.NoteEventAttempt(ctx, job.Args.EventID, job.Attempt, why); nerr != nil {
				w.logger.WarnContext(ctx, "stripe event: note attempt", "event", job.Args.EventID, "err", nerr)
			}
			return err
		}
	}
	w.record(evType, before, outcome, fx)
	if outcome == store.OutcomeFailed {
		w.logger.WarnContext(ctx, "stripe event failed", "event", job.Args.EventID, "type", evType, "reason", detail)
	}
	return nil
}

// refusedByDatabase returns the database's reason when err is a data or
// integrity-constraint error (SQLSTATE classes 22 and 23): permanent, not
// worth retrying. "" otherwise.
func refusedByDatabase(err error) string {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) < 2 || (pgErr.Code[:2] != "22" && pgErr.Code[:2] != "23") {
		return ""
	}
	if pgErr.ConstraintName == "subscriptions_one_live" {
		// Another subscription of the user started at that instant: run
		// again, the event then finds it (and ends this one as a second).
		return ""
	}
	if pgErr.ConstraintName != "" {
		return pgErr.Message + " (" + pgErr.ConstraintName + ")"
	}
	return pgErr.Message
}

// fail records an event as failed, in a transaction of its own, and
// completes its job.
func (w *StripeEventWorker) fail(ctx context.Context, job *river.Job[jobs.StripeEvent], detail string) error {
	return w.store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := store.LockStripeEvent(ctx, tx, job.Args.EventID); err != nil {
			return err
		}
		if err := store.SetEventOutcome(ctx, tx, job.Args.EventID, store.OutcomeFailed, detail, false); err != nil {
			return err
		}
		_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
}

// record counts what one processing did: the event's outcome when it is
// new (its first, or a change, e.g. failed then applied once fixed) or a
// failure (each one is news for the failed-events alert); an event applied
// or ignored again, re-processed, counts once. And the effects.
func (w *StripeEventWorker) record(evType, before, outcome string, fx effects) {
	m := w.metrics
	if m == nil {
		return
	}
	if (outcome != before || outcome == store.OutcomeFailed) && !(fx.noChange && before != "") {
		m.WebhookOutcomes.WithLabelValues(observability.EventTypeLabel(evType), outcome).Inc()
	}
	product, kind := "pack", store.GrantPack
	if fx.product == "subscription" {
		product, kind = "subscription", store.GrantSubscription
	}
	if fx.granted > 0 {
		m.CreditsGranted.WithLabelValues(kind).Add(float64(fx.granted))
	}
	if fx.clawedBack > 0 {
		m.CreditsClawedBack.WithLabelValues(kind).Add(float64(fx.clawedBack))
	}
	if fx.forfeited > 0 {
		m.CreditsRemoved.WithLabelValues("forfeited").Add(float64(fx.forfeited))
	}
	if fx.paymentStatus != "" {
		m.Payments.WithLabelValues(product, fx.paymentStatus, fx.currency).Inc()
	}
	if fx.revenueMinor > 0 {
		m.RevenueMinor.WithLabelValues(product, fx.currency).Add(float64(fx.revenueMinor))
	}
	if fx.refundMinor > 0 {
		m.RefundsMinor.WithLabelValues(fx.currency).Add(float64(fx.refundMinor))
	}
}

// eventObject decodes the event's data.object into v.
func eventObject(ev store.StripeEvent, v any) error {
	var env struct {
		Data struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(ev.Payload, &env); err != nil {
		return err
	}
	if len(env.Data.Object) == 0 {
		return fmt.Errorf("event has no data.object")
	}
	return json.Unmarshal(env.Data.Object, v)
}

// apply performs an event's effects in tx and says how it ended. A returned
// error rolls everything back and lets River retry; outcome "failed" is a
// permanent, recorded failure that completes the job.
func (w *StripeEventWorker) apply(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	switch stripe.EventType(ev.Type) {
	case stripe.EventTypeCheckoutSessionCompleted, stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded,
		stripe.EventTypeCheckoutSessionAsyncPaymentFailed, stripe.EventTypeCheckoutSessionExpired:
		var sess stripe.CheckoutSession
		if err := eventObject(ev, &sess); err == nil && sess.Mode == stripe.CheckoutSessionModeSubscription {
			return w.applySubscriptionCheckout(ctx, tx, ev, sess)
		}
	case stripe.EventTypeInvoicePaid:
		return w.applyInvoicePaid(ctx, tx, ev)
	case stripe.EventTypeInvoicePaymentFailed:
		return w.applyInvoiceFailed(ctx, tx, ev)
	case stripe.EventTypeCustomerSubscriptionCreated, stripe.EventTypeCustomerSubscriptionUpdated, stripe.EventTypeCustomerSubscriptionDeleted:
		return w.applySubscriptionEvent(ctx, tx, ev)
	}
	switch stripe.EventType(ev.Type) {
	case stripe.EventTypeCheckoutSessionCompleted, stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded:
		return w.applyCheckoutPaid(ctx, tx, ev)
	case stripe.EventTypeCheckoutSessionAsyncPaymentFailed:
		return w.applyCheckoutUnsuccessful(ctx, tx, ev, store.PaymentFailed, "The payment was declined by the bank.")
	case stripe.EventTypeCheckoutSessionExpired:
		return w.applyCheckoutUnsuccessful(ctx, tx, ev, store.PaymentExpired, store.ExpiredUnpaid)
	case stripe.EventTypeChargeRefunded:
		return w.applyRefund(ctx, tx, ev)
	case stripe.EventTypeChargeRefundUpdated:
		return w.applyRefundUpdated(ctx, tx, ev)
	case stripe.EventTypeChargeDisputeCreated, stripe.EventTypeChargeDisputeUpdated, stripe.EventTypeChargeDisputeClosed,
		stripe.EventTypeChargeDisputeFundsWithdrawn, stripe.EventTypeChargeDisputeFundsReinstated:
		return w.applyDispute(ctx, tx, ev)
	}
	return store.OutcomeIgnored, "event type not handled", effects{}, nil
}

// checkoutPayment loads the checkout session of a checkout.session.* event
// and locks the payment we recorded for it. A non-empty outcome ends the
// event there: ignored for a session not created by QuickScale, failed for
// a malformed object.
func (w *StripeEventWorker) checkoutPayment(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (sess stripe.CheckoutSession, pay store.Payment, outcome, detail string, err error) {
	if err := eventObject(ev, &sess); err != nil || sess.ID == "" {
		return stripe.CheckoutSession{}, pay, store.OutcomeFailed, "malformed checkout session object", nil
	}
	pay, err = store.LockPaymentBySession(ctx, tx, sess.ID)
	if store.ErrorKind(err) == store.KindNotFound {
		return sess, pay, store.OutcomeIgnored, "checkout session " + sess.ID + " was not created by QuickScale", nil
	}
	return sess, pay, "", "", err
}

func (w *StripeEventWorker) applyCheckoutPaid(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	var fx effects
	sess, pay, outcome, detail, err := w.checkoutPayment(ctx, tx, ev)
	if err != nil || outcome != "" {
		return outcome, detail, fx, err
	}
	intent := ""
	if sess.PaymentIntent != nil {
		intent = sess.PaymentIntent.ID
	}
	// The PaymentIntent is remembered whatever the outcome; on the way to a
	// grant MarkPaymentPaid records it, saving a round trip.
	switch {
	case sess.PaymentStatus != stripe.CheckoutSessionPaymentStatusPaid:
		outcome, detail = store.OutcomeIgnored, "payment_status is "+string(sess.PaymentStatus)+": credits wait for the payment"
	case sess.AmountTotal != pay.AmountMinor || string(sess.Currency) != pay.Currency:
		// Fulfilment trusts our own record; the event must agree with it.
		outcome, detail = store.OutcomeFailed, fmt.Sprintf("amount %s does not match the recorded %s", billing.FormatMoney(sess.AmountTotal, string(sess.Currency)), billing.FormatMoney(pay.AmountMinor, pay.Currency))
	case pay.Status == store.PaymentSucceeded || pay.Status == store.PaymentPartiallyRefunded || pay.Status == store.PaymentRefunded:
		outcome, detail = store.OutcomeApplied, "already fulfilled"
		if pay.Status == store.PaymentSucceeded || pay.Status == store.PaymentPartiallyRefunded {
			// Still failed while what the failure asked for is undone: a
			// payment of a deleted account not refunded yet, or only in part.
			email, _, err := store.EmailAndBalance(ctx, tx, pay.UserID)
			if err != nil {
				return "", "", fx, err
			}
			if email == "" {
				outcome, detail = store.OutcomeFailed, fmt.Sprintf("paid after its buyer (user %d) deleted the account: the credits were forfeited; the payment is still to be refunded (Refund on /admin/payments/%d/refund)", pay.UserID, pay.ID)
			}
		}
	}
	if outcome != "" {
		return outcome, detail, fx, store.SetPaymentIntent(ctx, tx, pay.ID, intent)
	}
	g, err := store.Grant(ctx, tx, store.NewGrant{
		UserID: pay.UserID, Kind: store.GrantPack, Amount: pay.Credits,
		SourceKind: "checkout_session", SourceID: sess.ID,
	})
	if err != nil {
		return "", "", fx, err
	}
	if err := store.MarkPaymentPaid(ctx, tx, pay.ID, intent, g.GrantID, ev.Created); err != nil {
		return "", "", fx, err
	}
	if !g.Created {
		return store.OutcomeApplied, "already granted", fx, nil
	}
	fx = effects{granted: pay.Credits, paymentStatus: store.PaymentSucceeded, revenueMinor: pay.AmountMinor, currency: pay.Currency}
	email, _, err := store.EmailAndBalance(ctx, tx, pay.UserID)
	if err != nil {
		return "", "", fx, err
	}
	if email == "" {
		// Paid (e.g. a bank debit settling) after the buyer deleted the
		// account: the credits are recorded and forfeited at once, like the
		// account's others, and the event is failed so that someone refunds
		// the money (the failed-events alert fires).
		forfeited, err := store.ForfeitCredits(ctx, tx, pay.UserID)
		if err != nil {
			return "", "", fx, err
		}
		fx.forfeited = forfeited
		return store.OutcomeFailed, fmt.Sprintf("paid after its buyer (user %d) deleted the account: the %s credits were granted and forfeited; refund the payment (Refund on /admin/payments/%d/refund)", pay.UserID, billing.FormatCredits(pay.Credits), pay.ID), fx, nil
	}
	if err := w.enqueuePurchaseEmail(ctx, tx, pay); err != nil {
		return "", "", fx, err
	}
	return store.OutcomeApplied, fmt.Sprintf("granted %s credits to user %d", billing.FormatCredits(pay.Credits), pay.UserID), fx, nil
}

func (w *StripeEventWorker) enqueuePurchaseEmail(ctx context.Context, tx pgx.Tx, pay store.Payment) error {
	email, balance, err := store.EmailAndBalance(ctx, tx, pay.UserID)
	if err != nil {
		return err
	}
	if email == "" {
		return nil // the account was deleted meanwhile
	}
	_, err = w.inserter.InsertTx(ctx, tx, jobs.SendEmail{Template: jobs.EmailPurchase, To: email, Data: map[string]string{
		"Credits":      billing.FormatCredits(pay.Credits),
		"Amount":       billing.FormatMoney(pay.AmountMinor, pay.Currency),
		"Balance":      billing.FormatCredits(balance),
		"PaymentsLink": w.baseURL + "/dashboard/payments",
		// As /dashboard/payments and the credit history name it.
		"Payment": "#" + strconv.FormatInt(pay.ID, 10),
		"PaidAt":  time.Now().UTC().Format("2 Jan 2006 15:04 UTC"),
	}}, nil)
	return err
}

func (w *StripeEventWorker) applyCheckoutUnsuccessful(ctx context.Context, tx pgx.Tx, ev store.StripeEvent, status, reason string) (string, string, effects, error) {
	var fx effects
	_, pay, outcome, detail, err := w.checkoutPayment(ctx, tx, ev)
	if err != nil || outcome != "" {
		return outcome, detail, fx, err
	}
	changed, err := store.MarkPaymentUnsuccessful(ctx, tx, pay.ID, status, reason)
	if err != nil {
		return "", "", fx, err
	}
	if !changed {
		// Never move a payment backwards (e.g. an old event after success).
		return store.OutcomeIgnored, "payment is already " + pay.Status, effects{noChange: true}, nil
	}
	if status == store.PaymentFailed {
		// A declined (bank) payment the customer may be waiting for: say so.
		// (An expired checkout was left by the customer: no email.)
		email, _, err := store.EmailAndBalance(ctx, tx, pay.UserID)
		if err != nil {
			return "", "", fx, err
		}
		if email != "" {
			if _, err := w.inserter.InsertTx(ctx, tx, jobs.SendEmail{Template: jobs.EmailPaymentFailed, To: email, Data: map[string]string{
				"Payment": "#" + strconv.FormatInt(pay.ID, 10),
				"Amount":  billing.FormatMoney(pay.AmountMinor, pay.Currency),
				"Credits": billing.FormatCredits(pay.Credits),
				"Reason":  reason,
				"BuyLink": w.baseURL + "/dashboard/buy-credits",
			}}, nil); err != nil {
				return "", "", fx, err
			}
		}
	}
	return store.OutcomeApplied, "payment " + status, effects{paymentStatus: status, currency: pay.Currency}, nil
}

func (w *StripeEventWorker) applyRefund(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	var fx effects
	var ch stripe.Charge
	if err := eventObject(ev, &ch); err != nil || ch.ID == "" {
		return store.OutcomeFailed, "malformed charge object", fx, nil
	}
	if ch.PaymentIntent == nil || ch.PaymentIntent.ID == "" {
		return store.OutcomeIgnored, "charge has no payment intent", fx, nil
	}
	pay, err := store.LockPaymentByIntent(ctx, tx, ch.PaymentIntent.ID)
	notYet := store.ErrorKind(err) == store.KindNotFound || (err == nil && pay.GrantID == nil)
	if notYet {
		// The refund may overtake the checkout completion it refunds.
		// An hour from when we received it, not from when Stripe created
		// it: after an outage Stripe's retries arrive hours late, and the
		// completion they overtook arrives just after them.
		waited := time.Since(ev.ReceivedAt)
		if waited < refundWaitWindow {
			return "", "", fx, fmt.Errorf("waiting for the payment it refunds to be fulfilled (checked every 30 s for an hour after the refund): %w",
				river.JobSnooze(30*time.Second))
		}
		pending, err := store.PendingPurchaseNames(ctx, tx, ch.PaymentIntent.ID)
		if err != nil {
			return "", "", fx, err
		}
		if pending {
			return "", "", fx, fmt.Errorf("waiting for the purchase it refunds, received and not yet processed (checked every 30 s while its job is queued): %w",
				river.JobSnooze(30*time.Second))
		}
		// The purchase may have been applied between the two reads (each
		// statement sees what is committed when it starts): look again.
		pay, err = store.LockPaymentByIntent(ctx, tx, ch.PaymentIntent.ID)
		if store.ErrorKind(err) == store.KindNotFound || (err == nil && pay.GrantID == nil) {
			return store.OutcomeFailed, "no fulfilled payment for payment intent " + ch.PaymentIntent.ID, fx, nil
		}
	}
	if err != nil {
		return "", "", fx, err
	}
	if string(ch.Currency) != pay.Currency {
		return store.OutcomeFailed, "refund currency " + string(ch.Currency) + " differs from the payment's " + pay.Currency, fx, nil
	}
	refunded := min(ch.AmountRefunded, pay.AmountMinor)
	if refunded <= pay.AmountRefundedMinor {
		// Refund amounts only grow; an older or repeated event changes nothing.
		return store.OutcomeApplied, "refund already recorded", fx, nil
	}
	// Proportional clawback of the pack's credits, floored, minus what
	// earlier refunds of this payment already accounted for.
	owed := pay.Credits*refunded/pay.AmountMinor - pay.CreditsClawedBack - pay.ClawbackShortfall
	taken, err := store.Clawback(ctx, tx, *pay.GrantID, owed, "refund of payment #"+strconv.FormatInt(pay.ID, 10))
	if err != nil {
		return "", "", fx, err
	}
	shortfall := owed - taken
	if err := store.RecordRefund(ctx, tx, store.RefundRecord{PaymentID: pay.ID, TotalRefunded: refunded,
		TotalClawed: pay.CreditsClawedBack + taken, TotalShortfall: pay.ClawbackShortfall + shortfall, At: ev.Created, EventID: ev.ID}); err != nil {
		return "", "", fx, err
	}
	status := store.PaymentPartiallyRefunded
	if refunded == pay.AmountMinor {
		status = store.PaymentRefunded
	}
	fx = effects{clawedBack: taken, refundMinor: refunded - pay.AmountRefundedMinor, paymentStatus: status, currency: pay.Currency, product: pay.Product}
	detail := fmt.Sprintf("refunded %s of %s; took back %s credits", billing.FormatMoney(refunded, pay.Currency), billing.FormatMoney(pay.AmountMinor, pay.Currency), billing.FormatCredits(taken))
	if shortfall > 0 {
		detail += fmt.Sprintf(", %s no longer in the account (spent, removed or forfeited: the shortfall)", billing.FormatCredits(shortfall))
	}
	// The customer is told what was refunded and what it took back.
	email, balance, err := store.EmailAndBalance(ctx, tx, pay.UserID)
	if err != nil {
		return "", "", fx, err
	}
	if email != "" {
		full := ""
		if status == store.PaymentRefunded {
			full = "yes"
		}
		// charge.refunded carries only the charge's refunded total, so a
		// refund of this payment that failed (its own email came, perhaps
		// before this one) may be counted in it: said, not guessed at.
		failedNote := ""
		failed, err := store.RefundFailuresTotal(ctx, tx, pay.ID)
		if err != nil {
			return "", "", fx, err
		}
		if failed > 0 {
			failedNote = billing.FormatMoney(failed, pay.Currency) + " of refunds of this payment did not reach you (we emailed you about each); the amount above may count them. Contact us and we will refund you another way."
		}
		if _, err := w.inserter.InsertTx(ctx, tx, jobs.SendEmail{Template: jobs.EmailRefund, To: email, Data: map[string]string{
			"FailedNote":   failedNote,
			"Payment":      "#" + strconv.FormatInt(pay.ID, 10),
			"Amount":       billing.FormatMoney(refunded-pay.AmountRefundedMinor, pay.Currency),
			"Total":        billing.FormatMoney(pay.AmountMinor, pay.Currency),
			"Credits":      billing.FormatCredits(pay.Credits),
			"Full":         full,
			"TakenBack":    billing.FormatCredits(taken),
			"Shortfall":    billing.FormatCredits(shortfall),
			"Balance":      billing.FormatCredits(balance),
			"PaymentsLink": w.baseURL + "/dashboard/payments",
		}}, nil); err != nil {
			return "", "", fx, err
		}
	}
	return store.OutcomeApplied, detail, fx, nil
}

// applyRefundUpdated watches refunds that fail after the provider accepted
// them (charge.refund.updated, status failed or canceled): the money did
// not reach the customer, though the refund was recorded and its credits
// taken back when charge.refunded came. Nothing is undone by itself, since
// support may refund again another way or give the credits back; the
// failure is recorded for the payment's admin pages and the event is
// failed so that someone acts. Any other refund update changes nothing.
func (w *StripeEventWorker) applyRefundUpdated(ctx context.Context, tx pgx.Tx, ev store.StripeEvent) (string, string, effects, error) {
	var fx effects
	var re stripe.Refund
	if err := eventObject(ev, &re); err != nil || re.ID == "" {
		return store.OutcomeFailed, "malformed refund object", fx, nil
	}
	if re.Status != stripe.RefundStatusFailed && re.Status != stripe.RefundStatusCanceled {
		return store.OutcomeIgnored, "refund " + re.ID + " is " + string(re.Status) + ": nothing to do", fx, nil
	}
	if re.PaymentIntent == nil || re.PaymentIntent.ID == "" {
		return store.OutcomeIgnored, "refund " + re.ID + " names no payment intent", fx, nil
	}
	pay, err := store.LockPaymentByIntent(ctx, tx, re.PaymentIntent.ID)
	if store.ErrorKind(err) == store.KindNotFound {
		return store.OutcomeIgnored, "refund " + re.ID + " is of a payment not made through QuickScale", fx, nil
	}
	if err != nil {
		return "", "", fx, err
	}
	currency := string(re.Currency)
	if currency == "" {
		currency = pay.Currency
	}
	switch {
	case re.Amount <= 0:
		return store.OutcomeFailed, "refund " + re.ID + " has no amount", fx, nil
	case currency != pay.Currency:
		return store.OutcomeFailed, fmt.Sprintf("refund %s is in %s, payment #%d in %s: not recorded", re.ID, currency, pay.ID, pay.Currency), fx, nil
	case re.Amount > pay.AmountMinor:
		return store.OutcomeFailed, fmt.Sprintf("refund %s of %s is more than payment #%d's %s: not recorded", re.ID,
			billing.FormatMoney(re.Amount, currency), pay.ID, billing.FormatMoney(pay.AmountMinor, pay.Currency)), fx, nil
	}
	f := store.RefundFailure{PaymentID: pay.ID, ProviderRefundID: re.ID, AmountMinor: re.Amount, Currency: currency,
		Status: string(re.Status), FailedAt: ev.Created}
	if re.FailureReason != "" {
		r := string(re.FailureReason)
		f.FailureReason = &r
	}
	created, err := store.RecordRefundFailure(ctx, tx, f, ev.ID)
	if err != nil {
		return "", "", fx, err
	}
	email, _, err := store.EmailAndBalance(ctx, tx, pay.UserID)
	if err != nil {
		return "", "", fx, err
	}
	detail := refundFailureDetail(f, pay, email == "")
	// The customer is told it did not reach them, once (not again when
	// the event is re-processed), whether or not its charge.refunded has
	// come yet (events arrive in any order; the refund email then says
	// that part of its amount may not reach them).
	if created && email != "" {
		why := "your card or bank refused it"
		if f.Status == "canceled" {
			why = "it was canceled before it reached you"
		}
		if r := f.Why(); r != "" && r != "no reason given" {
			why += " (" + r + ")"
		}
		if _, err := w.inserter.InsertTx(ctx, tx, jobs.SendEmail{Template: jobs.EmailRefundFailed, To: email, Data: map[string]string{
			"Amount":      billing.FormatMoney(f.AmountMinor, f.Currency),
			"Payment":     "#" + strconv.FormatInt(pay.ID, 10),
			"Why":         why,
			"ReceiptLink": w.baseURL + "/dashboard/payments/" + strconv.FormatInt(pay.ID, 10) + "/receipt",
		}}, nil); err != nil {
			return "", "", fx, err
		}
		detail += "; the customer was emailed that it did not go through"
	}
	return store.OutcomeFailed, detail, fx, nil
}

// refundFailureDetail tells support what a failed refund means for its
// payment, from what is recorded: charge.refunded events carry only the
// charge's refunded total, so whether that total counts this refund is
// not known here.
func refundFailureDetail(f store.RefundFailure, pay store.Payment, deleted bool) string {
	what := "failed"
	if f.Status == "canceled" {
		what = "was canceled"
	}
	why := ""
	if w := f.Why(); w != "" {
		why = " (" + w + ")"
	}
	d := fmt.Sprintf("refund %s of %s of payment #%d (user %d) %s%s: the customer did not get that money back. ",
		f.ProviderRefundID, billing.FormatMoney(f.AmountMinor, f.Currency), pay.ID, pay.UserID, what, why)
	if pay.AmountRefundedMinor == 0 {
		d += "Nothing is recorded as refunded on this payment yet; should charge.refunded still come for it, its share of the credits is taken back then. "
	} else {
		d += fmt.Sprintf("The payment shows %s refunded and %s credits taken back, which may count this refund. ",
			billing.FormatMoney(pay.AmountRefundedMinor, pay.Currency), billing.FormatCredits(pay.CreditsClawedBack))
	}
	if deleted {
		d += "The account was deleted: refund the customer another way (the provider's dashboard) if they ask"
	} else {
		d += "Refund the customer another way (the provider's dashboard) or give the credits back (Credits on their admin page)"
	}
	return d + "; the payment's refund page shows it (/admin/payments/" + strconv.FormatInt(pay.ID, 10) + "/refund)"
}
