package web

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

// paymentsPageSize is how many payments a page lists.
const paymentsPageSize = 20

// BuyCredits serves GET /dashboard/buy-credits.
func (s *Site) BuyCredits() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		packs, err := s.store.Packs(r.Context())
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		bal, err := s.store.Balance(r.Context(), CurrentUser(r.Context()).ID)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "buy", "Buy credits", map[string]any{
			"Packs": packs, "Balance": bal, "Nonce": store.NewSecret()[:16],
		})
	})
}

// StartCheckout serves POST /dashboard/buy-credits: it makes sure the user
// has a Stripe customer, opens a checkout session, records it as a pending
// payment (who, which pack, how much) and redirects to the checkout page.
// Nothing is granted here: only the webhook worker grants.
func (s *Site) StartCheckout() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		f, _ := parseForm(r, "pack", "nonce")
		pack, err := s.store.PackByCode(ctx, f.raw("pack"))
		if err != nil {
			if store.ErrorKind(err) == store.KindNotFound {
				s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Choose a pack",
					Message: "That credit pack does not exist. Pick one of the packs on offer.", ActionURL: "/dashboard/buy-credits", ActionLabel: "See the packs"})
				return
			}
			s.serverError(w, r, err)
			return
		}
		customer, err := s.customerOf(ctx, u)
		if err != nil {
			s.customerError(w, r, err, "/dashboard/buy-credits", "Back to the packs")
			return
		}
		params := billing.CheckoutParams{
			UserID: u.ID, CustomerID: customer, Pack: pack,
			SuccessURL: s.absURL("/dashboard/buy-credits/success?session_id={CHECKOUT_SESSION_ID}"),
			CancelURL:  s.absURL("/dashboard/buy-credits/cancel"),
		}
		if n := f.raw("nonce"); n != "" && len(n) <= 64 {
			params.IdempotencyKey = "quickscale-checkout-" + formatInt(u.ID) + "-" + pack.Code + "-" + n
		}
		sess, err := s.gateway.CreateCheckoutSession(ctx, params)
		if err != nil {
			s.paymentProviderError(w, r, err)
			return
		}
		if params.IdempotencyKey != "" {
			// The same form again (a double click) reuses its checkout; but
			// once that checkout is finished (paid, declined, expired), the
			// same form (a page restored from history) buys again, under a
			// key of its own derived from the finished checkout (so that a
			// double click here opens one), and again after that one is
			// finished too: the chain of keys is followed to its open end.
			base := params.IdempotencyKey
			for hops := 0; ; hops++ {
				prev, err := s.store.UserPaymentBySession(ctx, u.ID, sess.ID)
				if err != nil || prev.Status == store.PaymentPending {
					break // a new checkout (no payment yet) or one still open
				}
				if hops == maxCheckoutResubmits {
					s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "This page is too old",
						Message:   "It has bought this pack many times already. Nothing was charged now.",
						ActionURL: "/dashboard/buy-credits", ActionLabel: "Back to the packs"})
					return
				}
				params.IdempotencyKey = base + "-after-" + sess.ID
				if sess, err = s.gateway.CreateCheckoutSession(ctx, params); err != nil {
					s.paymentProviderError(w, r, err)
					return
				}
			}
		}
		_, err = s.store.CreatePayment(ctx, store.NewPayment{UserID: u.ID, Pack: pack, CheckoutSessionID: sess.ID, CheckoutURL: sess.URL, CustomerID: customer})
		if store.ErrorKind(err) == store.KindNotFound {
			// The account was deleted (another tab) while this checkout
			// was opened: it is not recorded, and not sent to.
			s.errorPage(w, r, errorPage{Status: http.StatusGone, Heading: "This account was deleted",
				Message: "It was deleted while the checkout was being opened, so nothing was bought.", ActionURL: "/", ActionLabel: "Home"})
			return
		}
		if err != nil && store.ErrorKind(err) != store.KindConflict {
			s.serverError(w, r, err)
			return
		}
		// A full navigation: the checkout page is on another origin.
		if r.Header.Get("HX-Request") == "true" {
			w.Header().Set("HX-Redirect", sess.URL)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		http.Redirect(w, r, sess.URL, http.StatusSeeOther)
	})
}

// maxCheckoutResubmits bounds the finished checkouts one Buy form (one
// nonce) follows to open a new one: each costs a call to the payment
// provider.
const maxCheckoutResubmits = 20

func (s *Site) paymentProviderError(w http.ResponseWriter, r *http.Request, err error) {
	s.paymentProviderErrorTo(w, r, err, "/dashboard/buy-credits", "Back to the packs")
}

type checkoutView struct {
	Payment store.Payment
	Balance store.Balance
	Found   bool
	// Slow: still pending well after checkout (a bank payment clearing, or
	// a problem support must look at): the page says so and polls less.
	Slow bool
}

// checkoutSlowAfter is how long a pending purchase is "usual".
const checkoutSlowAfter = 2 * time.Minute

func (s *Site) loadCheckout(r *http.Request) (checkoutView, error) {
	ctx := r.Context()
	u := CurrentUser(ctx)
	var v checkoutView
	id := r.URL.Query().Get("session_id")
	if id == "" || len(id) > 255 {
		return v, nil
	}
	p, err := s.store.UserPaymentBySession(ctx, u.ID, id)
	if store.ErrorKind(err) == store.KindNotFound {
		return v, nil
	}
	if err != nil {
		return v, err
	}
	v.Payment, v.Found = p, true
	v.Slow = p.Status == store.PaymentPending && time.Since(p.UpdatedAt) > checkoutSlowAfter
	if p.Status == store.PaymentSucceeded {
		if v.Balance, err = s.store.Balance(ctx, u.ID); err != nil {
			return v, err
		}
	}
	return v, nil
}

// Known implements polledView.
func (v checkoutView) Known() bool { return v.Found }

// State names what the status block shows (its data-state).
func (v checkoutView) State() string {
	switch {
	case !v.Found:
		return "unknown"
	case v.Payment.Status == store.PaymentPending && v.Slow:
		return "pending-slow"
	}
	return v.Payment.Status
}

// CheckoutSuccess serves GET /dashboard/buy-credits/success. It grants
// nothing: it shows the payment's state and polls until the worker has
// added the credits. A session that is not the viewer's shows nothing.
func (s *Site) CheckoutSuccess() http.Handler {
	full, _ := polledPages(s, s.loadCheckout, "checkout", "checkout-status", "Your purchase")
	return full
}

// CheckoutStatus serves the polled fragment of the success page.
func (s *Site) CheckoutStatus() http.Handler {
	_, part := polledPages(s, s.loadCheckout, "checkout", "checkout-status", "Your purchase")
	return part
}

// polledView is what a page that polls for a state shows: whether it
// found what the address names, and its state (the block's data-state).
type polledView interface {
	Known() bool
	State() string
}

// polledPages serves a page showing a state that the worker changes (a
// purchase's, a subscription's) and its block, which the page polls:
// full is the page (404 when nothing is found); part is the block, or 204
// while the state is the one the poll says it shows (shown=…), so that
// nothing is swapped and the live region announces changes only.
func polledPages[V polledView](s *Site, load func(*http.Request) (V, error), page, block, title string) (full, part http.Handler) {
	full = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := load(r)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		status := http.StatusOK
		if !v.Known() {
			status = http.StatusNotFound
		}
		s.render(w, r, status, page, title, v)
	})
	part = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := load(r)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if shown := r.URL.Query().Get("shown"); shown != "" && shown == v.State() {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		s.renderBlock(w, r, http.StatusOK, page, block, title, v)
	})
	return full, part
}

// CheckoutCancel serves GET /dashboard/buy-credits/cancel.
//
// Stripe's cancel address carries no session, so the page says only what
// it knows (the buyer left the checkout page; they may have paid in another
// tab) and lists the buyer's checkouts still open, each of which can be
// closed here rather than left open until it expires a day later.
func (s *Site) CheckoutCancel() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		open, err := s.store.OpenCheckoutsOfUser(r.Context(), CurrentUser(r.Context()).ID, 10)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "checkout_cancel", "Checkout cancelled", map[string]any{"Open": open})
	})
}

// CancelCheckout serves POST /dashboard/payments/{id}/cancel: the buyer
// closes a checkout still open, at the payment provider, so that it can no
// longer be paid. The provider's checkout.session.expired event then marks
// the payment expired, through the webhook pipeline like any other.
func (s *Site) CancelCheckout() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
		if err != nil {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		pay, err := s.store.UserPayment(ctx, CurrentUser(ctx).ID, id)
		if err != nil {
			if store.ErrorKind(err) == store.KindNotFound {
				err = store.Errorf(store.KindNotFound, "You have no such payment.")
			}
			s.handleError(w, r, err)
			return
		}
		ref := "#" + formatInt(pay.ID)
		if pay.Cancelled() {
			// A second click, or a form from before: say it is done.
			s.flash(ctx, "Checkout "+ref+" is cancelled: it can no longer be paid, and nothing was charged for it.")
			redirect(w, r, "/dashboard/payments")
			return
		}
		if pay.Status != store.PaymentPending {
			s.flash(ctx, "Payment "+ref+" is no longer open ("+paymentStatusWord(pay.Status)+"): there was nothing to cancel.")
			redirect(w, r, "/dashboard/payments")
			return
		}
		err = s.gateway.ExpireCheckoutSession(ctx, pay.CheckoutSessionID)
		// Accepted: the provider expired it now, at this request. Expired
		// already: an earlier cancel whose answer was lost, or its day ran
		// out (the event not applied yet); either way as closed as asked.
		accepted := err == nil
		if errors.Is(err, billing.ErrCheckoutExpired) {
			err = nil
		}
		switch {
		case errors.Is(err, billing.ErrCheckoutNotOpen):
			s.flash(ctx, "Payment "+ref+" was finished at the checkout before it could be cancelled: reload this page in a moment to see its status.")
		case err != nil:
			s.logger.ErrorContext(ctx, "payment provider: cancel checkout", "payment", pay.ID, "err", err)
			s.errorPage(w, r, errorPage{Status: http.StatusBadGateway, Heading: "The checkout could not be cancelled",
				Message:   "We could not reach our payment provider, so payment " + ref + " stays open. Nothing was charged for it. Please try again in a few minutes.",
				ActionURL: "/dashboard/payments", ActionLabel: "Back to your payments"})
			return
		default:
			// The provider has closed it: it is expired now, not when its
			// event arrives (a delivery may fail and be retried for days;
			// meanwhile a form sent again would reopen the dead checkout).
			// The event then finds it expired and changes nothing.
			// Done even if the buyer's request ends now: the provider has
			// expired the session.
			mctx := context.WithoutCancel(ctx)
			var outcome store.CancelOutcome
			var counted bool
			err := s.store.InTx(mctx, func(tx pgx.Tx) (err error) {
				outcome, counted, err = store.MarkPaymentCancelled(mctx, tx, pay.ID, accepted)
				return err
			})
			if err != nil {
				s.serverError(w, r, err)
				return
			}
			if counted && s.metrics != nil {
				s.metrics.Payments.WithLabelValues("pack", store.PaymentExpired, pay.Currency).Inc()
			}
			switch outcome {
			case store.CancelRecorded:
				s.flash(ctx, "Checkout "+ref+" is cancelled: it can no longer be paid, and nothing was charged for it.")
			default:
				// It ran out on its own, or its expiry was recorded
				// meanwhile: the same for the buyer, said as it is.
				s.flash(ctx, "Checkout "+ref+" had expired already: it can no longer be paid, and nothing was charged for it.")
			}
		}
		redirect(w, r, "/dashboard/payments")
	})
}

// paymentStatusWord is a payment status as the payments page names it.
func paymentStatusWord(status string) string {
	switch status {
	case store.PaymentSucceeded:
		return "paid"
	case store.PaymentFailed:
		return "failed"
	case store.PaymentExpired:
		return "expired"
	case store.PaymentRefunded:
		return "refunded"
	case store.PaymentPartiallyRefunded:
		return "partly refunded"
	}
	return status
}

// Payments serves GET /dashboard/payments, newest first.
func (s *Site) Payments() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cursor := cursorParam(r)
		page, err := s.store.PaymentsOfUser(r.Context(), CurrentUser(r.Context()).ID, cursor, cursorValue(r, "after"), paymentsPageSize)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "payments", "Payments", map[string]any{"Page": page, "Paged": cursor != 0})
	})
}

// Receipt serves GET /dashboard/payments/{id}/receipt: the receipt of a
// payment that was paid (also once refunded, showing the refund), printable.
// Another user's payment, and one never paid, have none.
func (s *Site) Receipt() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
		if err != nil || id <= 0 {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		p, err := s.store.UserPayment(ctx, u.ID, id)
		if store.ErrorKind(err) == store.KindNotFound {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		if p.PaidAt == nil {
			s.errorPage(w, r, errorPage{Status: http.StatusNotFound, Heading: "No receipt for this payment",
				Message:   "Payment #" + strconv.FormatInt(p.ID, 10) + " was never paid, so there is nothing to give a receipt for.",
				ActionURL: "/dashboard/payments", ActionLabel: "Back to your payments"})
			return
		}
		var refunds []store.Refund
		var listed int64
		if p.AmountRefundedMinor > 0 {
			if refunds, err = s.store.RefundsOf(ctx, p.ID); err != nil {
				s.serverError(w, r, err)
				return
			}
			for _, rf := range refunds {
				listed += rf.AmountMinor
			}
		}
		failed, err := s.store.RefundFailuresOf(ctx, p.ID)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "receipt", "Receipt #"+strconv.FormatInt(p.ID, 10),
			map[string]any{"Payment": p, "Refunds": refunds, "Unlisted": p.AmountRefundedMinor - listed, "Site": s.absURL("/"), "FailedRefunds": failed})
	})
}

// SimulatorCheckout serves the simulator's hosted checkout page (GET) and
// its Pay / Decline buttons (POST action=pay|decline).
func (s *Site) SimulatorCheckout() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sim, ok := s.gateway.(*billing.Simulator)
		if !ok {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		ctx := r.Context()
		u := CurrentUser(ctx)
		id := chi.URLParam(r, "id")
		ss, err := sim.Session(ctx, id, u.ID)
		if err != nil {
			s.handleError(w, r, err)
			return
		}
		if r.Method != http.MethodPost {
			s.render(w, r, http.StatusOK, "simulator", "Simulated checkout", ss)
			return
		}
		startOver := "/dashboard/buy-credits"
		if ss.Mode == "subscription" {
			startOver = "/dashboard/subscription"
		}
		f, _ := parseForm(r, "action")
		// Like Stripe, a checkout that expired (or was declined) cannot be
		// paid any more.
		if pay, err := s.store.UserPaymentBySession(ctx, u.ID, id); err == nil && f.raw("action") == "pay" &&
			(pay.Status == store.PaymentExpired || pay.Status == store.PaymentFailed) {
			why := map[string]string{store.PaymentExpired: "expired", store.PaymentFailed: "was declined"}[pay.Status]
			if pay.Cancelled() {
				why = "was cancelled"
			}
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "This checkout is closed",
				Message:   "It " + why + " and can no longer be paid. Nothing was charged.",
				ActionURL: startOver, ActionLabel: "Start a new one"})
			return
		}
		if ss.Status == "expired" && f.raw("action") == "pay" {
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "This checkout is closed",
				Message:   "It expired or was closed and can no longer be paid. Nothing was charged.",
				ActionURL: startOver, ActionLabel: "Start a new one"})
			return
		}
		var next string
		switch f.raw("action") {
		case "pay":
			next, err = sim.Pay(ctx, id, u.ID)
		case "decline":
			next, err = sim.Decline(ctx, id, u.ID)
		default:
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Choose Pay or Decline", Message: "Use one of the buttons on the checkout page."})
			return
		}
		switch {
		case errors.Is(err, billing.ErrDeclineSubscription):
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Pay or go back",
				Message: "A subscription starts only once paid: pay, or go back without paying.", ActionURL: "/simulator/checkout/" + id, ActionLabel: "Back to the checkout"})
			return
		case errors.Is(err, store.ErrSimSessionExpired):
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "This checkout is closed",
				Message:   "It expired and can no longer be paid. Nothing was charged.",
				ActionURL: startOver, ActionLabel: "Start a new one"})
			return
		case store.ErrorKind(err) == store.KindNotFound:
			s.handleError(w, r, err)
			return
		case err != nil:
			// The simulated "Stripe" could not deliver its webhook: like a
			// provider outage. The session stays open; Pay can be retried.
			s.paymentProviderError(w, r, err)
			return
		}
		if u, err := url.Parse(next); err == nil && u.Host != "" {
			// Success URLs are absolute (BASE_URL); stay on this site.
			next = u.RequestURI()
		}
		http.Redirect(w, r, next, http.StatusSeeOther)
	})
}
