package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The Stripe pipeline end to end: signed events POSTed to /webhooks/stripe,
// stored, enqueued and applied by the real workers on the real database.

// whRequireOutcome waits for an event's outcome and requires it.
func whRequireOutcome(t *testing.T, ta *testApp, eventID, want string) store.StripeEvent {
	t.Helper()
	ev := whWaitOutcome(t, ta, eventID)
	require.Equal(t, want, whOutcome(ev), "event %s (%s): %s", eventID, ev.Type, whDetail(ev))
	return ev
}

// whApply delivers a signed event and requires the outcome its processing
// records.
func whApply(t *testing.T, ta *testApp, id string, body []byte, outcome string) store.StripeEvent {
	t.Helper()
	whMustDeliver(t, ta, body)
	return whRequireOutcome(t, ta, id, outcome)
}

// whRequireRefund requires a purchase's refund state.
func whRequireRefund(t *testing.T, ta *testApp, p whPurchase, status string, refundedMinor, clawedBack, shortfall int64) {
	t.Helper()
	pay := whPayment(t, ta, p)
	got := []any{pay.Status, pay.AmountRefundedMinor, pay.CreditsClawedBack, pay.ClawbackShortfall}
	require.Equal(t, []any{status, refundedMinor, clawedBack, shortfall}, got, "payment status, refunded, clawed back, shortfall")
}

// whPaid delivers a paid checkout.session.completed and waits until it applied.
func whPaid(t *testing.T, ta *testApp, p whPurchase) {
	t.Helper()
	id, body := p.completed(t, "paid")
	whApply(t, ta, id, body, store.OutcomeApplied)
	require.Equal(t, p.Credits, whBalance(t, ta, p.User.ID))
}

func TestPipelineShuffledConcurrentRedeliveriesGrantEachPurchaseOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	const buyers = 6
	var (
		purchases []whPurchase
		eventIDs  []string
		bodies    [][]byte
	)
	for i := 0; i < buyers; i++ {
		p := whBuy(t, ta)
		purchases = append(purchases, p)
		// Two different events may each fulfil the same checkout.
		id, body := p.completed(t, "paid")
		eventIDs, bodies = append(eventIDs, id), append(bodies, body)
		id, body = whEvent(t, stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, whSession(t, p.SessionID, "paid", p.Amount, p.Intent), time.Now())
		eventIDs, bodies = append(eventIDs, id), append(bodies, body)
	}
	id, body := whUnknownEvent(t)
	eventIDs, bodies = append(eventIDs, id), append(bodies, body)

	// Each event 1 to 5 times, all deliveries shuffled and sent at once.
	var deliveries [][]byte
	for _, b := range bodies {
		for n := 1 + rand.IntN(5); n > 0; n-- {
			deliveries = append(deliveries, b)
		}
	}
	rand.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })
	secret := ta.app.cfg.StripeWebhookSecret
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, d := range deliveries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := whPost(ta.URL, d, whSign(d, secret, time.Now()))
			if err != nil || r.Status != http.StatusOK {
				t.Errorf("delivery: %v status %d %s", err, r.Status, r.Body)
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, id := range eventIDs {
		whWaitOutcome(t, ta, id)
	}

	require.Equal(t, len(eventIDs), whStoredEvents(t, ta))
	for _, p := range purchases {
		if got := whBalance(t, ta, p.User.ID); got != p.Credits {
			t.Errorf("buyer %d: balance %d, want %d", p.User.ID, got, p.Credits)
		}
		if n := whGrantsOf(t, ta, p.SessionID); n != 1 {
			t.Errorf("session %s: %d grants, want 1", p.SessionID, n)
		}
		if pay := whPayment(t, ta, p); pay.Status != store.PaymentSucceeded || pay.GrantID == nil {
			t.Errorf("session %s: payment %s grant %v", p.SessionID, pay.Status, pay.GrantID)
		}
	}
	if n := whCount(t, ta, `SELECT count(*) FROM grants`); n != buyers {
		t.Errorf("%d grants in all, want %d", n, buyers)
	}
	whNoViolations(t, ta)
}

func TestPipelineUnpaidCompletionGrantsNothingUntilAsyncPaymentSucceeds(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	id, body := p.completed(t, "unpaid")
	whApply(t, ta, id, body, store.OutcomeIgnored)
	require.Zero(t, whBalance(t, ta, p.User.ID))
	require.Zero(t, whGrantsOf(t, ta, p.SessionID))
	require.Equal(t, store.PaymentPending, whPayment(t, ta, p).Status)

	id, body = whEvent(t, stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, whSession(t, p.SessionID, "paid", p.Amount, p.Intent), time.Now())
	whApply(t, ta, id, body, store.OutcomeApplied)
	if got := whBalance(t, ta, p.User.ID); got != p.Credits {
		t.Fatalf("balance %d, want %d", got, p.Credits)
	}
	pay := whPayment(t, ta, p)
	if pay.Status != store.PaymentSucceeded || pay.PaymentIntentID == nil || *pay.PaymentIntentID != p.Intent {
		t.Fatalf("payment %s intent %v", pay.Status, pay.PaymentIntentID)
	}
}

// A bank debit that settles after its buyer deleted the account: the
// money is in, the credits are recorded and forfeited at once (nobody can
// spend them, so they are not owed), and the event is failed so that
// someone refunds it.
func TestPipelinePaymentSettlingAfterTheBuyerDeletedTheAccountIsForfeitedAndFlagged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	p := whBuyThenDeleteBuyer(t, ta)

	id, body := whEvent(t, stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, whSession(t, p.SessionID, "paid", p.Amount, p.Intent), time.Now())
	ev := whApply(t, ta, id, body, store.OutcomeFailed)
	require.Contains(t, whDetail(ev), "refund the payment")
	require.Equal(t, store.PaymentSucceeded, whPayment(t, ta, p).Status, "the money was received")
	require.EqualValues(t, 1, whGrantsOf(t, ta, p.SessionID), "the credits are recorded")
	require.Zero(t, whBalance(t, ta, p.User.ID), "and forfeited")
	liability, err := ta.store.CreditLiability(ctx)
	require.NoError(t, err)
	for kind, n := range liability.ByKind {
		require.Zero(t, n, "credits of kind %s still count as owed", kind)
	}

	// Re-processing it re-checks it: the refund it asks for is not made
	// yet, so it stays failed and in the failed filter.
	_, b := whAdmin(t, ta)
	whReprocess(t, ta, b, id, func(ev store.StripeEvent) bool { return strings.Contains(whDetail(ev), "processed again") })
	again := whRequireOutcome(t, ta, id, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "refund the payment")
	require.Contains(t, whDetail(again), "processed again: failed, paid after its buyer")
	require.Contains(t, whDetail(again), "still to be refunded")

	// A refund of part of it is not the refund asked for: still failed.
	partID, part := p.refunded(t, p.Amount/2)
	whApply(t, ta, partID, part, store.OutcomeApplied)
	require.Equal(t, store.PaymentPartiallyRefunded, whPayment(t, ta, p).Status)
	before := *again.ProcessedAt
	whReprocess(t, ta, b, id, func(ev store.StripeEvent) bool { return ev.ProcessedAt != nil && ev.ProcessedAt.After(before) })
	again = whRequireOutcome(t, ta, id, store.OutcomeFailed)
	require.Contains(t, whDetail(again), "still to be refunded")

	// Once the refund is made (and recorded), re-processing clears it.
	refundID, refund := p.refunded(t, p.Amount)
	whApply(t, ta, refundID, refund, store.OutcomeApplied)
	whReprocess(t, ta, b, id, func(ev store.StripeEvent) bool { return whOutcome(ev) == store.OutcomeApplied })
}

// whReprocess has an admin re-process an event, as the event page's
// button does, and waits until done says the processing happened.
func whReprocess(t *testing.T, ta *testApp, admin *browser, id string, done func(store.StripeEvent) bool) {
	t.Helper()
	mustRedirect(t, admin.post("/admin/webhooks/"+id+"/reprocess", url.Values{}), "/admin/webhooks/"+id)
	eventually(t, 20*time.Second, "the event to be processed again", func() bool {
		ev, err := ta.store.StripeEventByID(context.Background(), id)
		require.NoError(t, err)
		return done(ev)
	})
}

func TestPipelineAsyncPaymentFailedMarksPaymentFailed(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	id, body := p.completed(t, "unpaid")
	whApply(t, ta, id, body, store.OutcomeIgnored)

	id, body = whEvent(t, stripe.EventTypeCheckoutSessionAsyncPaymentFailed, whSession(t, p.SessionID, "unpaid", p.Amount, p.Intent), time.Now())
	whApply(t, ta, id, body, store.OutcomeApplied)
	pay := whPayment(t, ta, p)
	if pay.Status != store.PaymentFailed || pay.FailureReason == nil || *pay.FailureReason == "" {
		t.Fatalf("payment %s reason %v, want failed with a reason", pay.Status, pay.FailureReason)
	}
	require.Zero(t, whBalance(t, ta, p.User.ID))
	require.Zero(t, whGrantsOf(t, ta, p.SessionID))
	// The customer is told (once, however often the event is processed),
	// and the payments list says why and names it.
	_, admin := whAdmin(t, ta)
	whReprocess(t, ta, admin, id, func(ev store.StripeEvent) bool { return strings.Contains(whDetail(ev), "processed again") })
	require.Equal(t, 1, emailJobsOf(ta, jobs.EmailPaymentFailed, p.User.Email))
	mail := ta.waitMail(p.User.Email, "Your payment of $20.00 did not go through")
	require.Contains(t, mail.Text, "did not go through. "+*pay.FailureReason, "the reason is a sentence of its own")
	require.Contains(t, mail.Text, "Nothing was charged")
	row := p.Browser.get("/dashboard/payments").Doc(t).Find(`#payments tr.payment[data-status="failed"]`)
	require.Equal(t, *pay.FailureReason, strings.TrimSpace(row.Find(".failure-reason").Text()))
	require.Equal(t, fmt.Sprintf("#%d", pay.ID), strings.TrimSpace(row.Find(".payment-id").Text()))
	require.Contains(t, p.Browser.get("/dashboard/payments?cursor=1").Doc(t).Find("#payments-empty").Text(), "No older payments")
}

func TestPipelineOlderFailureEventNeverMovesSucceededPaymentBackwards(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	failedID, failed := whEvent(t, stripe.EventTypeCheckoutSessionAsyncPaymentFailed, whSession(t, p.SessionID, "unpaid", p.Amount, p.Intent), time.Now().Add(-10*time.Minute))
	whPaid(t, ta, p)

	// The older event arrives late.
	whMustDeliver(t, ta, failed)

	whRequireOutcome(t, ta, failedID, store.OutcomeIgnored)
	pay := whPayment(t, ta, p)
	if pay.Status != store.PaymentSucceeded || pay.FailureReason != nil {
		t.Fatalf("payment %s reason %v, want still succeeded", pay.Status, pay.FailureReason)
	}
	require.Equal(t, p.Credits, whBalance(t, ta, p.User.ID))
}

func TestPipelineFailedPaymentCanStillBeFulfilledByALaterSuccess(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionAsyncPaymentFailed, whSession(t, p.SessionID, "unpaid", p.Amount, p.Intent), time.Now().Add(-time.Minute))
	whApply(t, ta, id, body, store.OutcomeApplied)
	require.Equal(t, store.PaymentFailed, whPayment(t, ta, p).Status)

	// Events can arrive out of order: the success is the truth.
	whPaid(t, ta, p)

	pay := whPayment(t, ta, p)
	if pay.Status != store.PaymentSucceeded || pay.FailureReason != nil {
		t.Fatalf("payment %s reason %v", pay.Status, pay.FailureReason)
	}
}

func TestPipelinePartialRefundClawsBackProportionally(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)

	id, body := p.refunded(t, 500) // a quarter of 20.00
	whApply(t, ta, id, body, store.OutcomeApplied)
	if got := whBalance(t, ta, p.User.ID); got != 375 {
		t.Fatalf("balance %d, want 375 (500 minus a quarter)", got)
	}
	whRequireRefund(t, ta, p, store.PaymentPartiallyRefunded, 500, 125, 0)
	whNoViolations(t, ta)
}

func TestPipelinePartialRefundRoundsTheClawbackDown(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)

	id, body := p.refunded(t, 333) // 500 × 333 / 2000 = 83.25
	whApply(t, ta, id, body, store.OutcomeApplied)
	require.Equal(t, int64(83), whPayment(t, ta, p).CreditsClawedBack)
	require.Equal(t, int64(417), whBalance(t, ta, p.User.ID))
}

func TestPipelineFullRefundAfterPartialClawsBackTheRest(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	id, body := p.refunded(t, 500)
	whApply(t, ta, id, body, store.OutcomeApplied)
	require.Equal(t, int64(375), whBalance(t, ta, p.User.ID))

	id, body = p.refunded(t, p.Amount) // Stripe reports the cumulative amount
	whApply(t, ta, id, body, store.OutcomeApplied)
	require.Zero(t, whBalance(t, ta, p.User.ID))
	whRequireRefund(t, ta, p, store.PaymentRefunded, p.Amount, p.Credits, 0)
	whNoViolations(t, ta)

	// Each refund is emailed: what this one refunded, what it took back.
	payID := whPayment(t, ta, p).ID
	first := ta.waitMail(p.User.Email, fmt.Sprintf("Refund of payment #%d: $5.00", payID))
	require.Contains(t, first.Text, "Credits taken back: 125")
	require.NotContains(t, first.Text, "refunded in full")
	last := ta.waitMail(p.User.Email, fmt.Sprintf("Refund of payment #%d: $15.00", payID))
	require.Contains(t, last.Text, "it is now refunded in full")
	require.Contains(t, last.Text, "Credits taken back: 375")
	require.Contains(t, last.Text, "Balance now: 0 credits")
}

func TestPipelineRepeatedAndOlderRefundEventsClawBackOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	firstID, first := p.refunded(t, 500)
	olderID, older := whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, p.Intent, p.Amount, 200), time.Now().Add(-time.Minute))
	whMustDeliver(t, ta, first)
	whRequireOutcome(t, ta, firstID, store.OutcomeApplied)

	// The same refund again under a new event id, then an older, smaller one.
	againID, again := p.refunded(t, 500)
	whMustDeliver(t, ta, again)
	whRequireOutcome(t, ta, againID, store.OutcomeApplied)
	whMustDeliver(t, ta, older)
	whRequireOutcome(t, ta, olderID, store.OutcomeApplied)

	pay := whPayment(t, ta, p)
	if pay.AmountRefundedMinor != 500 || pay.CreditsClawedBack != 125 {
		t.Fatalf("refunded %d clawed back %d, want 500 and 125", pay.AmountRefundedMinor, pay.CreditsClawedBack)
	}
	require.Equal(t, int64(375), whBalance(t, ta, p.User.ID))
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM ledger_entries WHERE kind = 'clawback'`))
	// The history names the payment as the payments page does ("#N").
	require.Equal(t, 1, whCount(t, ta, `SELECT count(*) FROM ledger_entries WHERE kind = 'clawback' AND reason = 'refund of payment #' || $1`, strconv.FormatInt(pay.ID, 10)))
	// One refund, one email: the repeat and the older event add nothing.
	require.Equal(t, 1, emailJobsOf(ta, jobs.EmailRefund, p.User.Email))
}

// emailJobsOf counts the queued or sent email jobs of one template to one
// address (queued in the transaction that decided to send them).
func emailJobsOf(ta *testApp, template, to string) int {
	n := 0
	for _, m := range acctEmailJobs(ta) {
		if m.Template == template && strings.EqualFold(m.To, to) {
			n++
		}
	}
	return n
}

// whSpend spends credits of the buyer through the JSON API.
func whSpend(t *testing.T, ta *testApp, userID int64, cost int64) {
	t.Helper()
	raw, _, err := ta.store.CreateAPIKey(context.Background(), userID, "spender")
	require.NoError(t, err)
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: cost})
	r := v1Do(t, ta, http.MethodPost, "/api/v1/usage", raw, `{"service":"`+svc+`"}`, "Idempotency-Key", whID("spend"))
	require.Equal(t, http.StatusCreated, r.Status, r.Body)
}

func TestPipelineRefundOfSpentCreditsTakesWhatIsLeftAndRecordsShortfall(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	whSpend(t, ta, p.User.ID, 400)
	require.Equal(t, int64(100), whBalance(t, ta, p.User.ID))

	id, body := p.refunded(t, p.Amount)
	ev := whApply(t, ta, id, body, store.OutcomeApplied)
	require.Zero(t, whBalance(t, ta, p.User.ID))
	whRequireRefund(t, ta, p, store.PaymentRefunded, p.Amount, 100, 400)
	require.Contains(t, whDetail(ev), "shortfall")
	whNoViolations(t, ta)
	mail := ta.waitMail(p.User.Email, "Refund of payment")
	require.Contains(t, mail.Text, "Credits taken back: 100 (400 of the credits it bought were already spent")
	// The checkout page and the payments list say what was taken back and
	// what could not be; the admin page names the payment.
	says := strings.Join(strings.Fields(p.Browser.get("/dashboard/buy-credits/success?session_id="+p.SessionID).Doc(t).Find("#refund-credits").Text()), " ")
	require.Equal(t, "100 of the credits it bought were taken back; 400 credits no longer in your account could not be.", says)
	row := p.Browser.get("/dashboard/payments").Doc(t).Find("#payments tr.payment")
	require.Contains(t, row.Find(".shortfall").Text(), "400 credits no longer in your account")
	_, admin := whAdmin(t, ta)
	adminRow := admin.get(fmt.Sprintf("/admin/users/%d", p.User.ID)).Doc(t).Find("#payments tr.payment-row")
	require.Equal(t, "#"+adminRow.AttrOr("data-id", "?"), strings.TrimSpace(adminRow.Find(".payment-id").Text()))
}

// A refund when every credit it bought was spent takes none back, and the
// checkout page says so rather than "taken back".
func TestPipelineRefundWithNothingLeftSaysNoneWasTakenBack(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	whSpend(t, ta, p.User.ID, p.Credits)
	id, body := p.refunded(t, p.Amount)
	whApply(t, ta, id, body, store.OutcomeApplied)
	says := strings.Join(strings.Fields(p.Browser.get("/dashboard/buy-credits/success?session_id="+p.SessionID).Doc(t).Find("#refund-credits").Text()), " ")
	require.Equal(t, "None of the credits it bought could be taken back: 500 credits were no longer in your account.", says)
}

func TestPipelineRefundsAfterSpendingNeverDriveTheBalanceNegative(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	whSpend(t, ta, p.User.ID, 400)

	id, body := p.refunded(t, 1000) // half: 250 owed, 100 left
	whApply(t, ta, id, body, store.OutcomeApplied)
	pay := whPayment(t, ta, p)
	require.Equal(t, [2]int64{100, 150}, [2]int64{pay.CreditsClawedBack, pay.ClawbackShortfall}, "after the half refund")

	id, body = p.refunded(t, p.Amount)
	whApply(t, ta, id, body, store.OutcomeApplied)

	whRequireRefund(t, ta, p, store.PaymentRefunded, p.Amount, 100, 400)
	require.Zero(t, whBalance(t, ta, p.User.ID))
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM grants WHERE remaining < 0`))
	whNoViolations(t, ta)
}

func TestPipelineClawbackNeverTouchesOtherGrants(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	whPaid(t, ta, p)
	whSpend(t, ta, p.User.ID, 450)
	other := storetest.NewGrant(t, ta.store, p.User.ID, storetest.GrantOpts{Kind: store.GrantAdmin, Amount: 1000})

	id, body := p.refunded(t, p.Amount)
	whApply(t, ta, id, body, store.OutcomeApplied)

	require.Equal(t, int64(1000), whBalance(t, ta, p.User.ID))
	require.Equal(t, 1000, whCount(t, ta, `SELECT remaining FROM grants WHERE id = $1`, other.GrantID))
	require.Equal(t, int64(450), whPayment(t, ta, p).ClawbackShortfall)
}

func TestPipelineUnknownEventTypeIsStoredAndIgnored(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	id, body := whUnknownEvent(t)
	ev := whApply(t, ta, id, body, store.OutcomeIgnored)

	if ev.Type != "plan.created" || ev.ProcessedAt == nil || whDetail(ev) == "" {
		t.Fatalf("stored %s processed %v detail %q", ev.Type, ev.ProcessedAt, whDetail(ev))
	}
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM grants`))
}

func TestPipelineCompletionOfASessionWeDidNotCreateIsIgnored(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	obj := whSession(t, whID("cs"), "paid", 2000, whID("pi"))
	obj["metadata"] = map[string]any{"quickscale_user_id": strconv.FormatInt(u.ID, 10), "quickscale_pack": "pack_500"}
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, obj, time.Now())
	ev := whApply(t, ta, id, body, store.OutcomeIgnored)

	require.Contains(t, whDetail(ev), "not created by QuickScale")
	require.Zero(t, whBalance(t, ta, u.ID), "metadata alone must never grant")
}

func TestPipelineCompletionWithAnotherAmountIsRecordedFailed(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, p.SessionID, "paid", 1, p.Intent), time.Now())
	ev := whApply(t, ta, id, body, store.OutcomeFailed)

	require.Contains(t, whDetail(ev), "does not match")
	require.Zero(t, whBalance(t, ta, p.User.ID))
	require.Equal(t, store.PaymentPending, whPayment(t, ta, p).Status)
}

func TestPipelineMalformedCheckoutObjectOfOurSessionIsRecordedFailed(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	obj := whSession(t, p.SessionID, "paid", p.Amount, p.Intent)
	obj["amount_total"] = "lots"
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, obj, time.Now())
	ev := whApply(t, ta, id, body, store.OutcomeFailed)

	require.Contains(t, whDetail(ev), "malformed")
	require.Zero(t, whBalance(t, ta, p.User.ID))
}

// whSnoozedJob waits until the event's job was snoozed by the worker and
// returns its id.
func whSnoozedJob(t *testing.T, ta *testApp, eventID string) int64 {
	t.Helper()
	var (
		jobID int64
		state string
		at    time.Time
	)
	eventually(t, 20*time.Second, "the refund's job to be snoozed", func() bool {
		err := ta.store.Pool().QueryRow(context.Background(), `SELECT id, state, scheduled_at FROM river_job
 WHERE kind = 'stripe_event' AND args->>'event_id' = $1`, eventID).Scan(&jobID, &state, &at)
		return err == nil && state == "scheduled"
	})
	require.Greater(t, time.Until(at), 10*time.Second, "snoozed for the refund wait, not retried at once")
	return jobID
}

func TestPipelineRefundBeforeItsCompletionIsSnoozedThenApplied(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	refundID, refund := p.refunded(t, p.Amount)
	whMustDeliver(t, ta, refund)
	jobID := whSnoozedJob(t, ta, refundID)
	ev, err := ta.store.StripeEventByID(context.Background(), refundID)
	require.NoError(t, err)
	require.Nil(t, ev.Outcome, "a snoozed event has no outcome yet")
	eventually(t, 10*time.Second, "the wait to be noted on the event", func() bool {
		ev, err := ta.store.StripeEventByID(context.Background(), refundID)
		return err == nil && ev.LastError != nil && strings.Contains(*ev.LastError, "waiting for the payment it refunds")
	})
	ev, err = ta.store.StripeEventByID(context.Background(), refundID)
	require.NoError(t, err)
	require.NotContains(t, *ev.LastError, "JobSnoozeError", "River's internal name is not the reason")
	require.Contains(t, *ev.LastError, "(next look in 30s)")

	whPaid(t, ta, p)
	// Time passes: the snooze ends now instead of in 30 seconds.
	_, err = ta.app.river.JobRetry(context.Background(), jobID)
	require.NoError(t, err)

	whRequireOutcome(t, ta, refundID, store.OutcomeApplied)
	require.Zero(t, whBalance(t, ta, p.User.ID))
	pay := whPayment(t, ta, p)
	if pay.Status != store.PaymentRefunded || pay.CreditsClawedBack != p.Credits {
		t.Fatalf("payment %s clawed back %d", pay.Status, pay.CreditsClawedBack)
	}
	whNoViolations(t, ta)
}

// An event the database refuses (here: a session claiming a payment
// intent that is already another payment's) is failed with the reason at
// once, not retried for weeks and then dropped.
func TestPipelineEventRefusedByTheDatabaseIsFailedWithTheReason(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	first := whBuy(t, ta)
	whPaid(t, ta, first)
	second := whBuy(t, ta)
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, second.SessionID, "unpaid", second.Amount, first.Intent), time.Now())
	ev := whApply(t, ta, id, body, store.OutcomeFailed)
	require.Contains(t, whDetail(ev), "refused by the database")
	require.Contains(t, whDetail(ev), "payment_intent")
	require.Equal(t, store.PaymentPending, whPayment(t, ta, second).Status)
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'stripe_event' AND state NOT IN ('completed')`), "a job is left to retry")
}

// A refund of a payment we do not know waits an hour from when it was
// received — even when Stripe created it hours before (retries after an
// outage) — and then fails.
func TestPipelineRefundOfUnknownPaymentFailsAfterTheWaitWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	id, body := whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, whID("pi"), 2000, 2000), time.Now().Add(-2*time.Hour))
	whMustDeliver(t, ta, body)
	jobID := whSnoozedJob(t, ta, id)
	ev, err := ta.store.StripeEventByID(ctx, id)
	require.NoError(t, err)
	require.Nil(t, ev.Outcome, "created two hours ago but just received: it waits")

	// An hour after it was received, it gives up.
	_, err = ta.store.Pool().Exec(ctx, `UPDATE stripe_events SET received_at = now() - interval '61 minutes' WHERE id = $1`, id)
	require.NoError(t, err)
	_, err = ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	ev = whRequireOutcome(t, ta, id, store.OutcomeFailed)
	require.Contains(t, whDetail(ev), "no fulfilled payment")
}

func TestPipelineExpiredCheckoutMarksPaymentExpired(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	obj := whSession(t, p.SessionID, "unpaid", p.Amount, p.Intent)
	obj["status"], obj["payment_intent"] = "expired", nil
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionExpired, obj, time.Now())
	whApply(t, ta, id, body, store.OutcomeApplied)

	pay := whPayment(t, ta, p)
	if pay.Status != store.PaymentExpired || pay.PaymentIntentID != nil {
		t.Fatalf("payment %s intent %v, want expired without an intent", pay.Status, pay.PaymentIntentID)
	}
	require.Zero(t, whBalance(t, ta, p.User.ID))
	// Like Stripe's, the simulator's expired checkout can no longer be paid.
	r := p.Browser.post("/simulator/checkout/"+p.SessionID, url.Values{"action": {"pay"}})
	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	require.Equal(t, store.PaymentExpired, whPayment(t, ta, p).Status)
}

// The purchase confirmation states what was bought, what it cost and the
// balance after it: live credits of every kind, not those past their expiry.
func TestPipelinePurchaseEmailStatesCreditsAmountAndBalance(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	storetest.NewGrant(t, ta.store, p.User.ID, storetest.GrantOpts{Kind: store.GrantAdmin, Amount: 1234})
	storetest.BackdatedGrant(t, ta.store.Pool(), p.User.ID, store.GrantSubscription, 70, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))

	id, body := p.completed(t, "paid")
	whApply(t, ta, id, body, store.OutcomeApplied)

	mail := ta.waitMail(p.User.Email, "500 credits added to your account")
	require.Contains(t, mail.Text, "Credits: 500")
	require.Contains(t, mail.Text, "Amount paid: $20.00")
	require.Contains(t, mail.Text, "Balance now: 1,734 credits")
	require.Contains(t, mail.Text, "/dashboard/payments")
	// A receipt names its payment as the payments page does, and does not
	// say "if that was not you".
	require.Contains(t, mail.Text, fmt.Sprintf("Payment: #%d, ", whPayment(t, ta, p).ID))
	require.Contains(t, mail.HTML, "This is the receipt of a purchase")
	require.NotContains(t, mail.HTML, "If that was not you")
}

// After the workers were down for more than the refund's hour, a refund
// and the purchase it refunds both wait in the queue: the refund, run
// first, waits for the stored purchase instead of failing (which let the
// purchase grant the credits anyway), and is applied after it.
func TestPipelineRefundWaitsForItsStoredPurchaseAfterALongOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	p, refundID, jobID, completedID := whRefundLongAfterItsStoredPurchase(t, ta)
	// The purchase's job is queued behind.
	queued, err := ta.app.river.Insert(ctx, jobs.StripeEvent{EventID: completedID}, &river.InsertOpts{Queue: jobs.QueueWebhooks, ScheduledAt: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	_, err = ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	eventually(t, 20*time.Second, "the refund to wait for its stored purchase", func() bool {
		ev, err := ta.store.StripeEventByID(ctx, refundID)
		return err == nil && ev.Outcome == nil && ev.LastError != nil && strings.Contains(*ev.LastError, "waiting for the purchase it refunds, received")
	})

	// The purchase's turn comes.
	_, err = ta.app.river.JobRetry(ctx, queued.Job.ID)
	require.NoError(t, err)
	whRequireOutcome(t, ta, completedID, store.OutcomeApplied)
	// The refund's next look (once River has it snoozed again: a running
	// job is not retried).
	jobID = whSnoozedJob(t, ta, refundID)
	_, err = ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	whRequireOutcome(t, ta, refundID, store.OutcomeApplied)
	require.Zero(t, whBalance(t, ta, p.User.ID))
	whRequireRefund(t, ta, p, store.PaymentRefunded, p.Amount, p.Credits, 0)
	whNoViolations(t, ta)
}

// The same for a plan's period (h31): its refund, run more than an hour
// after it was received, waits for the stored and queued invoice.paid it
// refunds instead of failing for good (after which invoice.paid granted
// the whole period: the money refunded and every credit kept).
func TestPipelineSubscriptionRefundWaitsForItsStoredInvoiceAfterALongOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := openSubscriptionCheckout(t, ta, b, u.ID, "pro")
	now := time.Now().Truncate(time.Second)
	inv := subInvoice(t, sub, whID("sub"), whID("in"), 3000, now, now.AddDate(0, 1, 0))
	intent := inv["payment_intent"].(string)

	refundID, refund := whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, intent, 3000, 3000), now)
	whMustDeliver(t, ta, refund)
	jobID := whSnoozedJob(t, ta, refundID)
	_, err := ta.store.Pool().Exec(ctx, `UPDATE stripe_events SET received_at = now() - interval '2 hours' WHERE id = $1`, refundID)
	require.NoError(t, err)
	paidID, paid := whEvent(t, stripe.EventTypeInvoicePaid, inv, now)
	_, err = ta.store.Pool().Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload) VALUES ($1, 'invoice.paid', now(), $2)`, paidID, string(paid))
	require.NoError(t, err)
	queued, err := ta.app.river.Insert(ctx, jobs.StripeEvent{EventID: paidID}, &river.InsertOpts{Queue: jobs.QueueWebhooks, ScheduledAt: time.Now().Add(time.Hour)})
	require.NoError(t, err)

	_, err = ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	eventually(t, 20*time.Second, "the refund to wait for its stored invoice", func() bool {
		ev, err := ta.store.StripeEventByID(ctx, refundID)
		require.NoError(t, err)
		require.Nil(t, ev.Outcome, "the refund was decided before its invoice: %s", whDetail(ev))
		return ev.LastError != nil && strings.Contains(*ev.LastError, "waiting for the purchase it refunds, received")
	})
	_, err = ta.app.river.JobRetry(ctx, queued.Job.ID)
	require.NoError(t, err)
	whRequireOutcome(t, ta, paidID, store.OutcomeApplied)
	jobID = whSnoozedJob(t, ta, refundID)
	_, err = ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	whRequireOutcome(t, ta, refundID, store.OutcomeApplied)
	require.Zero(t, whBalance(t, ta, u.ID), "the refunded period's credits are still spendable")
	pays := subscriptionPayments(t, ta, sub)
	require.Len(t, pays, 1)
	require.Equal(t, store.PaymentRefunded, pays[0].Status)
	whNoViolations(t, ta)
}

// A stored purchase whose job was cancelled or deleted (River UI) will
// never be applied: a refund of it does not wait a day for it.
func TestPipelineRefundDoesNotWaitForAPurchaseNothingWillApply(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	_, refundID, jobID, _ := whRefundLongAfterItsStoredPurchase(t, ta) // the purchase's job is gone

	_, err := ta.app.river.JobRetry(ctx, jobID)
	require.NoError(t, err)
	ev := whRequireOutcome(t, ta, refundID, store.OutcomeFailed)
	require.Contains(t, whDetail(ev), "no fulfilled payment")
}

// whRefundLongAfterItsStoredPurchase opens a purchase, delivers a full
// refund of it (snoozed: the purchase is not applied), backdates the
// refund's receipt by two hours and stores the purchase's completion
// event, not processed and with no job. It returns the purchase, the
// refund's event and (snoozed) job, and the completion's event id.
func whRefundLongAfterItsStoredPurchase(t *testing.T, ta *testApp) (whPurchase, string, int64, string) {
	t.Helper()
	ctx := context.Background()
	p := whBuy(t, ta)
	refundID, refund := p.refunded(t, p.Amount)
	whMustDeliver(t, ta, refund)
	jobID := whSnoozedJob(t, ta, refundID)
	_, err := ta.store.Pool().Exec(ctx, `UPDATE stripe_events SET received_at = now() - interval '2 hours' WHERE id = $1`, refundID)
	require.NoError(t, err)
	completedID, completed := p.completed(t, "paid")
	_, err = ta.store.Pool().Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload) VALUES ($1, 'checkout.session.completed', now(), $2)`,
		completedID, string(completed))
	require.NoError(t, err)
	return p, refundID, jobID, completedID
}
