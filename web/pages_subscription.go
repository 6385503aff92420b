package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// subscriptionPage is what /dashboard/subscription shows.
type subscriptionPage struct {
	Plans []store.Plan
	// Live is the subscription that renews (or is set to end at its
	// period's end), with its latest paid invoices.
	Live     *store.Subscription
	Invoices []store.Payment
	// Overdue is the invoice a past-due plan owes; Failures its
	// invoices whose payment did not go through (paid since or not).
	Overdue  *store.InvoiceFailure
	Failures []store.InvoiceFailure
	// Open is a checkout opened and not finished, to go back to.
	Open *store.Subscription
	// Past lists subscriptions that ended.
	Past      []store.Subscription
	Balance   store.Balance
	Simulated bool
	Nonce     string
}

// Subscription serves GET /dashboard/subscription: the live subscription
// (its plan, period, renewal or end, and its invoices) with Cancel or
// Keep, or the plans to subscribe to.
func (s *Site) Subscription() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page, err := s.loadSubscriptionPage(r.Context(), CurrentUser(r.Context()).ID)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "subscription", "Subscription", page)
	})
}

func (s *Site) loadSubscriptionPage(ctx context.Context, userID int64) (subscriptionPage, error) {
	p := subscriptionPage{Simulated: s.gateway.Simulated(), Nonce: store.NewSecret()[:16]}
	var err error
	if p.Plans, err = s.store.Plans(ctx); err != nil {
		return p, err
	}
	if p.Balance, err = s.store.Balance(ctx, userID); err != nil {
		return p, err
	}
	live, found, err := s.store.LiveSubscription(ctx, userID)
	if err != nil {
		return p, err
	}
	if found {
		p.Live = &live
		if p.Invoices, err = s.store.PaymentsOfSubscription(ctx, live.ID, 6); err != nil {
			return p, err
		}
		if p.Failures, err = s.store.InvoiceFailuresOf(ctx, []int64{live.ID}, 6); err != nil {
			return p, err
		}
		if o, found, err := s.store.Overdue(ctx, live); err != nil {
			return p, err
		} else if found {
			p.Overdue = &o
		}
	} else {
		open, found, err := s.store.OpenSubscriptionCheckout(ctx, userID)
		if err != nil {
			return p, err
		}
		if found {
			p.Open = &open
		}
	}
	all, err := s.store.SubscriptionsOfUser(ctx, userID, 11)
	if err != nil {
		return p, err
	}
	for _, sub := range all {
		if sub.Status == store.SubCanceled && len(p.Past) < 10 {
			p.Past = append(p.Past, sub)
		}
	}
	return p, nil
}

// maxSubscriptionResubmits bounds the finished checkouts one Subscribe
// form follows to open a new one (as maxCheckoutResubmits for packs).
const maxSubscriptionResubmits = 5

// StartSubscription serves POST /dashboard/subscription: it opens a
// checkout in subscription mode for a plan, records the subscription at
// its checkout (who, which plan, at what price) and sends the buyer to
// the checkout. Nothing is granted here: each paid invoice is, by the
// webhook worker.
func (s *Site) StartSubscription() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		f, _ := parseForm(r, "plan", "nonce")
		plan, err := s.store.PlanByCode(ctx, f.raw("plan"))
		if err != nil {
			if store.ErrorKind(err) == store.KindNotFound {
				s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Choose a plan",
					Message: "That plan does not exist. Pick one of the plans on offer.", ActionURL: "/dashboard/subscription", ActionLabel: "See the plans"})
				return
			}
			s.serverError(w, r, err)
			return
		}
		// One user's Subscribe requests run one at a time (two clicks
		// on two plans at once would otherwise both find no checkout open
		// and open one each).
		err = s.store.WithUserLock(ctx, "subscribe", u.ID, func() error {
			s.openSubscriptionCheckout(w, r, u, plan, f)
			return nil
		})
		switch {
		case err == nil, errors.Is(err, context.Canceled):
			// Answered, or the browser left while it waited.
		case errors.Is(err, context.DeadlineExceeded):
			s.errorPage(w, r, errorPage{Status: http.StatusServiceUnavailable, Heading: "No checkout was opened",
				Message:   "Opening your checkout took too long (another request of yours, or many at once, went first), so nothing was done. Check your subscription page, then try again.",
				ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
		default:
			s.serverError(w, r, err)
		}
	})
}

// openSubscriptionCheckout is StartSubscription under the user's
// subscribe lock: it refuses a second plan, goes back to an open checkout
// of the same plan (closing others) or opens a new one.
func (s *Site) openSubscriptionCheckout(w http.ResponseWriter, r *http.Request, u *store.User, plan store.Plan, f *form) {
	ctx := r.Context()
	live, found, err := s.store.LiveSubscription(ctx, u.ID)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	if found {
		s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "You already subscribe",
			Message:   "Your " + live.PlanName + " plan is running. To change plans, choose Switch on your subscription page: the other plan takes over at your next renewal. Nothing was charged now.",
			ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
		return
	}
	// A checkout opened before and not finished: for this plan, the
	// buyer goes back to it (a double click, another tab); for another
	// plan, it is closed first, so that two checkouts cannot both be
	// paid (two live subscriptions, one refused when it starts).
	opened, err := s.store.OpenSubscriptionCheckouts(ctx, u.ID)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	for i := len(opened) - 1; i >= 0; i-- {
		if open := opened[i]; open.PlanCode == plan.Code && open.CheckoutURL != nil {
			opened = append(opened[:i], opened[i+1:]...)
			if err := s.closeSubscriptionCheckouts(w, r, opened); err != nil {
				return
			}
			s.redirectToCheckout(w, r, *open.CheckoutURL)
			return
		}
	}
	if err := s.closeSubscriptionCheckouts(w, r, opened); err != nil {
		return
	}
	customer, err := s.customerOf(ctx, u)
	if err != nil {
		s.customerError(w, r, err, "/dashboard/subscription", "Back to the plans")
		return
	}
	params := billing.SubscriptionCheckoutParams{
		UserID: u.ID, CustomerID: customer, Plan: plan, Ref: store.NewSecret()[:24],
		SuccessURL: s.absURL("/dashboard/subscription/success?session_id={CHECKOUT_SESSION_ID}"),
		CancelURL:  s.absURL("/dashboard/subscription"),
	}
	if n := f.raw("nonce"); n != "" && len(n) <= 64 {
		params.IdempotencyKey = "quickscale-subscribe-" + strconv.FormatInt(u.ID, 10) + "-" + plan.Code + "-" + n
	}
	base := params.IdempotencyKey
	for hops := 0; ; hops++ {
		sess, err := s.gateway.CreateSubscriptionCheckout(ctx, params)
		if err != nil {
			s.paymentProviderErrorTo(w, r, err, "/dashboard/subscription", "Back to the plans")
			return
		}
		prev, err := s.store.UserSubscriptionBySession(ctx, u.ID, sess.ID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			_, err = s.store.CreateSubscription(ctx, store.NewSubscription{UserID: u.ID, Plan: plan, CheckoutSessionID: sess.ID,
				CheckoutURL: sess.URL, CheckoutRef: params.Ref, CustomerID: customer})
			if store.ErrorKind(err) == store.KindNotFound {
				s.errorPage(w, r, errorPage{Status: http.StatusGone, Heading: "This account was deleted",
					Message: "It was deleted while the checkout was being opened, so nothing was bought.", ActionURL: "/", ActionLabel: "Home"})
				return
			}
			if err != nil && store.ErrorKind(err) != store.KindConflict {
				s.serverError(w, r, err)
				return
			}
		case err != nil:
			s.serverError(w, r, err)
			return
		case prev.Status != store.SubCheckout && params.IdempotencyKey != "":
			// The same form again after its checkout finished (a page
			// from history): a new checkout, under a key of its own.
			if hops == maxSubscriptionResubmits {
				s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "This page is too old",
					Message: "Reload the subscription page and choose again. Nothing was charged now.", ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
				return
			}
			params.IdempotencyKey = base + "-after-" + sess.ID
			continue
		}
		s.redirectToCheckout(w, r, sess.URL)
		return
	}
}

// closeSubscriptionCheckouts closes open plan checkouts at the provider
// (so that they can no longer be paid) and marks them abandoned. When one
// cannot be, it answers the request itself and returns an error: one
// completed meanwhile (409: a plan was just paid for), or the provider
// unreachable (502).
func (s *Site) closeSubscriptionCheckouts(w http.ResponseWriter, r *http.Request, open []store.Subscription) error {
	ctx := r.Context()
	for _, c := range open {
		err := s.gateway.ExpireCheckoutSession(ctx, c.CheckoutSessionID)
		switch {
		case errors.Is(err, billing.ErrCheckoutNotOpen):
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "You have just subscribed",
				Message:   "The checkout you opened earlier for the " + c.PlanName + " plan was completed meanwhile, so no new one was opened. Nothing was charged now.",
				ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
			return err
		case err != nil && !errors.Is(err, billing.ErrCheckoutExpired):
			s.paymentProviderErrorTo(w, r, err, "/dashboard/subscription", "Back to the plans")
			return err
		}
		if err := s.store.AbandonSubscriptionCheckoutNow(ctx, c.ID); err != nil {
			s.serverError(w, r, err)
			return err
		}
	}
	return nil
}

// redirectToCheckout sends the browser to a checkout page: a full
// navigation, since it is on another origin.
func (s *Site) redirectToCheckout(w http.ResponseWriter, r *http.Request, to string) {
	if r.Header.Get("HX-Request") == "true" {
		w.Header().Set("HX-Redirect", to)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// errProvider marks an error of the payment provider (a 502 page), not
// of our database (a 500).
var errProvider = errors.New("payment provider")

// customerOf returns the user's provider customer, made on first need.
func (s *Site) customerOf(ctx context.Context, u *store.User) (string, error) {
	customer, err := s.store.CustomerID(ctx, u.ID)
	if err != nil || customer != "" {
		return customer, err
	}
	created, err := s.gateway.CreateCustomer(ctx, billing.CustomerParams{UserID: u.ID, Email: u.Email})
	if err != nil {
		return "", fmt.Errorf("%w: %w", errProvider, err)
	}
	return s.store.SaveCustomerID(ctx, u.ID, created)
}

// customerError answers a customerOf failure: the provider's, or ours.
func (s *Site) customerError(w http.ResponseWriter, r *http.Request, err error, back, label string) {
	if errors.Is(err, errProvider) {
		s.paymentProviderErrorTo(w, r, err, back, label)
		return
	}
	s.serverError(w, r, err)
}

func (s *Site) paymentProviderErrorTo(w http.ResponseWriter, r *http.Request, err error, back, label string) {
	s.logger.ErrorContext(r.Context(), "payment provider", "err", err)
	s.errorPage(w, r, errorPage{Status: http.StatusBadGateway, Heading: "Payments are unavailable",
		Message:   "We could not reach our payment provider. Nothing was charged. Please try again in a few minutes.",
		ActionURL: back, ActionLabel: label})
}

// subscriptionCheckoutView is the success page's state.
type subscriptionCheckoutView struct {
	Sub   store.Subscription
	Found bool
	// Paid: its first invoice is applied (its credits added). The
	// subscription's own events may start it a moment before.
	Paid bool
	// FirstPeriodEnd is when the month its first invoice paid for ends.
	FirstPeriodEnd *time.Time
	Balance        store.Balance
	Slow           bool
}

// Known implements polledView.
func (v subscriptionCheckoutView) Known() bool { return v.Found }

// State names what the status block shows (its data-state).
func (v subscriptionCheckoutView) State() string {
	switch {
	case !v.Found:
		return "unknown"
	case v.Sub.Status == store.SubCheckout && v.Slow:
		return "checkout-slow"
	case v.Sub.Live() && !v.Paid && v.Slow:
		// Started long ago, its first invoice still not applied: support.
		return "starting-slow"
	case v.Sub.Live() && !v.Paid:
		// Started, its first invoice not applied yet: still waiting.
		return "starting"
	case v.Sub.Status == store.SubCanceled && v.Paid && v.FirstPeriodEnd != nil && v.Sub.CanceledAt != nil && v.Sub.CanceledAt.Before(*v.FirstPeriodEnd):
		// Ended before its first month did: a second plan, stopped.
		return "stopped"
	}
	return v.Sub.Status
}

func (s *Site) loadSubscriptionCheckout(r *http.Request) (subscriptionCheckoutView, error) {
	ctx := r.Context()
	u := CurrentUser(ctx)
	var v subscriptionCheckoutView
	id := r.URL.Query().Get("session_id")
	if id == "" || len(id) > 255 {
		return v, nil
	}
	sub, err := s.store.UserSubscriptionBySession(ctx, u.ID, id)
	if errors.Is(err, store.ErrNotFound) {
		return v, nil
	}
	if err != nil {
		return v, err
	}
	v.Sub, v.Found = sub, true
	pays, err := s.store.PaymentsOfSubscription(ctx, sub.ID, 100)
	if err != nil {
		return v, err
	}
	if v.Paid = len(pays) > 0; v.Paid {
		v.FirstPeriodEnd = pays[len(pays)-1].PeriodEnd
	}
	v.Slow = (sub.Status == store.SubCheckout || sub.Live() && !v.Paid) && time.Since(sub.UpdatedAt) > checkoutSlowAfter
	if sub.Live() {
		if v.Balance, err = s.store.Balance(ctx, u.ID); err != nil {
			return v, err
		}
	}
	return v, nil
}

// SubscriptionSuccess serves GET /dashboard/subscription/success: it
// grants nothing, it shows the subscription's state and polls until its
// first period's credits are added.
func (s *Site) SubscriptionSuccess() http.Handler {
	full, _ := polledPages(s, s.loadSubscriptionCheckout, "subscription_checkout", "subscription-status", "Your subscription")
	return full
}

// SubscriptionStatus serves the polled fragment of the success page.
func (s *Site) SubscriptionStatus() http.Handler {
	_, part := polledPages(s, s.loadSubscriptionCheckout, "subscription_checkout", "subscription-status", "Your subscription")
	return part
}

// liveSubscriptionForm loads the live subscription a form names (its id),
// answering the request itself when there is none.
func (s *Site) liveSubscriptionForm(w http.ResponseWriter, r *http.Request) (store.Subscription, bool) {
	ctx := r.Context()
	f, _ := parseForm(r, "subscription")
	id, perr := strconv.ParseInt(f.raw("subscription"), 10, 64)
	sub, err := s.store.UserSubscription(ctx, CurrentUser(ctx).ID, id)
	switch {
	case perr != nil || errors.Is(err, store.ErrNotFound):
		s.errorPage(w, r, errorPage{Status: http.StatusNotFound, Heading: "No such subscription",
			Message: "That subscription is not yours, or does not exist.", ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
		return sub, false
	case err != nil:
		s.serverError(w, r, err)
		return sub, false
	case !sub.Live() || sub.StripeSubscriptionID == nil:
		s.flash(ctx, "Your "+sub.PlanName+" plan has ended already: there was nothing to change.")
		redirect(w, r, "/dashboard/subscription")
		return sub, false
	}
	return sub, true
}

// SetSubscriptionRenewal serves POST /dashboard/subscription/cancel
// (cancel=true: the plan ends at its period's end, its credits stay until
// then) and /dashboard/subscription/resume (it renews again).
func (s *Site) SetSubscriptionRenewal(cancel bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		sub, ok := s.liveSubscriptionForm(w, r)
		if !ok {
			return
		}
		end := ""
		if sub.CurrentPeriodEnd != nil {
			end = sub.CurrentPeriodEnd.UTC().Format("2 Jan 2006")
		}
		if sub.CancelAtPeriodEnd == cancel {
			if cancel {
				s.flash(ctx, "Your "+sub.PlanName+" plan is set to end on "+end+" already.")
			} else {
				s.flash(ctx, "Your "+sub.PlanName+" plan renews already.")
			}
			redirect(w, r, "/dashboard/subscription")
			return
		}
		err := s.gateway.SetCancelAtPeriodEnd(ctx, *sub.StripeSubscriptionID, cancel)
		if errors.Is(err, billing.ErrSubscriptionEnded) {
			s.flash(ctx, "Your "+sub.PlanName+" plan has ended already: there was nothing to change.")
			redirect(w, r, "/dashboard/subscription")
			return
		}
		if err != nil {
			s.logger.ErrorContext(ctx, "payment provider: subscription renewal", "subscription", sub.ID, "err", err)
			s.errorPage(w, r, errorPage{Status: http.StatusBadGateway, Heading: "Your subscription was not changed",
				Message:   "We could not reach our payment provider, so your " + sub.PlanName + " plan stays as it was. Please try again in a few minutes.",
				ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
			return
		}
		// The provider has it: shown at once, not when its event comes.
		if err := s.store.RecordCancelAtPeriodEnd(ctx, sub.ID, cancel); err != nil {
			s.serverError(w, r, err)
			return
		}
		var msg, subject string
		switch {
		case cancel:
			subject = "Your " + sub.PlanName + " plan ends on " + end
			msg = "Your " + sub.PlanName + " plan will not renew: it ends on " + end + ". Its credits stay yours until then."
			if o, found, err := s.store.Overdue(ctx, sub); err != nil {
				s.logger.WarnContext(ctx, "cancel: read the overdue invoice", "subscription", sub.ID, "err", err)
			} else if found {
				msg += " The overdue payment of " + o.Owed(billing.FormatMoney) + " is still tried: if it goes through, that month's credits are added."
			}
		case sub.NextPlanCode != nil && *sub.NextPlanCode == sub.PlanCode:
			subject = "Your " + sub.PlanName + " plan renews again"
			msg = "Your " + sub.PlanName + " plan renews again on " + end + ", at its new price of " + billing.FormatMoney(*sub.NextPriceMinor, sub.Currency) + " a month."
		case sub.NextPlanName != nil:
			subject = "Your plan renews again, as " + *sub.NextPlanName
			msg = "Your plan renews again on " + end + ", as the " + *sub.NextPlanName + " plan you chose: " +
				billing.FormatCredits(*sub.NextCreditsPerPeriod) + " credits a month for " + billing.FormatMoney(*sub.NextPriceMinor, sub.Currency) + "."
		default:
			subject = "Your " + sub.PlanName + " plan renews again"
			msg = "Your " + sub.PlanName + " plan renews again on " + end + "."
		}
		s.flash(ctx, msg)
		s.confirmSubscriptionChange(ctx, subject, msg)
		redirect(w, r, "/dashboard/subscription")
	})
}

// SwitchSubscriptionPlan serves POST /dashboard/subscription/switch: the
// live subscription switches to another plan (form field plan) from its
// next renewal, when that plan's credits and price take over; there is no
// proration, the month under way stays as paid. Its own plan as the plan
// undoes a switch chosen before, at the subscription's own price (which
// may be older than the catalog's, and its plan no longer for sale). A
// plan set to end must be kept first.
func (s *Site) SwitchSubscriptionPlan() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		sub, ok := s.liveSubscriptionForm(w, r)
		if !ok {
			return
		}
		plan, err := s.switchTarget(ctx, sub, r.PostFormValue("plan"))
		if store.ErrorKind(err) == store.KindNotFound {
			s.errorPage(w, r, errorPage{Status: http.StatusNotFound, Heading: "No such plan",
				Message: "That plan is not for sale. Choose one of the plans offered.", ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
			return
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		when := "at its next renewal"
		if sub.CurrentPeriodEnd != nil {
			when = "on " + sub.CurrentPeriodEnd.UTC().Format("2 Jan 2006")
		}
		if sub.Status == store.SubPastDue {
			// The overdue invoice bills what it bills, whatever is chosen
			// now: a change then would promise a price it is not.
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "Your plan was not changed",
				Message: store.ErrOverdue.Error(), ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
			return
		}
		if sub.CancelAtPeriodEnd && plan.Code != sub.PlanCode {
			s.flash(ctx, "Your "+sub.PlanName+" plan is set to end "+when+": keep it first, then choose the plan it switches to.")
			redirect(w, r, "/dashboard/subscription")
			return
		}
		// The change and its record are not cut short by the browser
		// going away once the provider is asked.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 45*time.Second)
		defer cancel()
		told := false
		res, err := s.store.ScheduleSwitch(sctx, sub.ID, plan, func() error {
			err := s.gateway.ChangeSubscriptionPlan(sctx, *sub.StripeSubscriptionID, plan)
			told = err == nil
			return err
		})
		switch {
		case errors.Is(err, store.ErrNotFound), errors.Is(err, billing.ErrSubscriptionEnded):
			s.flash(ctx, "Your "+sub.PlanName+" plan has ended already: there was nothing to change.")
			redirect(w, r, "/dashboard/subscription")
			return
		case store.ErrorKind(err) == store.KindConflict:
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "Your plan was not changed",
				Message: err.Error(), ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
			return
		case err != nil && told:
			// The provider took it but it could not be recorded: undone at
			// the provider, so that both say what the page shows.
			s.logger.ErrorContext(ctx, "switch plan: the provider took it, recording it failed; undoing it", "subscription", sub.ID, "plan", plan.Code, "err", err)
			// Back to the plan chosen before (none: the plan it is on), as
			// the locked row had it.
			b := res.Current
			if res.PrevNext != nil {
				b = *res.PrevNext
			}
			prev, perr := s.planAt(sctx, b, sub.Currency, b.Code)
			if perr == nil {
				perr = s.gateway.ChangeSubscriptionPlan(sctx, *sub.StripeSubscriptionID, prev)
			}
			if perr != nil {
				// Each renewal's payment is fulfilled as the plan it paid
				// for, so the customer still gets what they pay for.
				s.logger.ErrorContext(ctx, "switch plan: undoing it at the provider failed", "subscription", sub.ID, "err", perr)
				s.flash(ctx, "Our payment provider has your change: from your next renewal you pay for the "+plan.Name+" plan and get its credits. "+
					"We could not note it here, so this page shows it only after that renewal.")
				redirect(w, r, "/dashboard/subscription")
				return
			}
			// Its events, of this second, must not undo the choice.
			if err := s.store.MarkRenewalSet(sctx, sub.ID); err != nil {
				s.logger.WarnContext(ctx, "switch plan: mark the undo", "subscription", sub.ID, "err", err)
			}
			s.errorPage(w, r, errorPage{Status: http.StatusServiceUnavailable, Heading: "Your plan was not changed",
				Message:   "We could not save your change, so it was undone and your plan stays as it was. Please try again in a few minutes.",
				ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
			return
		case err != nil:
			s.logger.ErrorContext(ctx, "payment provider: switch plan", "subscription", sub.ID, "plan", plan.Code, "err", err)
			s.errorPage(w, r, errorPage{Status: http.StatusBadGateway, Heading: "Your plan was not changed",
				Message:   "We could not reach our payment provider, so your plan stays as it was. Please try again in a few minutes.",
				ActionURL: "/dashboard/subscription", ActionLabel: "Your subscription"})
			return
		}
		switch {
		case !res.Changed && plan.Code == sub.PlanCode:
			s.flash(ctx, "Your "+sub.PlanName+" plan stays as it is already.")
		case !res.Changed:
			s.flash(ctx, "Your plan switches to "+plan.Name+" "+when+" already.")
		case plan.Code == sub.PlanCode:
			msg := "You stay on the " + sub.PlanName + " plan: it renews " + when + " for " + billing.FormatMoney(sub.PriceMinor, sub.Currency) + "."
			s.flash(ctx, msg)
			s.confirmSubscriptionChange(ctx, "You stay on the "+sub.PlanName+" plan", msg)
		default:
			msg := "Your plan switches to " + plan.Name + " " + when + ": from then on, " + billing.FormatCredits(plan.CreditsPerPeriod) +
				" credits a month for " + billing.FormatMoney(plan.PriceMinor, plan.Currency) + ". Until then your " + sub.PlanName + " plan and its credits stay as they are."
			s.flash(ctx, msg)
			s.confirmSubscriptionChange(ctx, "Your plan switches to "+plan.Name+" "+when, msg)
		}
		redirect(w, r, "/dashboard/subscription")
	})
}

// confirmSubscriptionChange emails the customer a change they just made to
// their plan's renewal (enqueued after it is recorded; a failure to
// enqueue is logged, the change stands).
func (s *Site) confirmSubscriptionChange(ctx context.Context, subject, summary string) {
	u := CurrentUser(ctx)
	err := s.sendEmailNow(context.WithoutCancel(ctx), jobs.EmailSubscriptionChanged, u.Email, map[string]string{
		"Subject": subject, "Summary": summary, "SubscriptionLink": s.absURL("/dashboard/subscription"),
	})
	if err != nil {
		s.logger.WarnContext(ctx, "subscription change: enqueue its confirmation email", "user", u.ID, "err", err)
	}
}

// switchTarget is the plan a switch form names: the subscription's own
// plan at its own price (staying), or a plan for sale.
func (s *Site) switchTarget(ctx context.Context, sub store.Subscription, code string) (store.Plan, error) {
	if code != sub.PlanCode {
		return s.store.PlanByCode(ctx, code)
	}
	return s.planAt(ctx, store.BilledPlan{Code: sub.PlanCode, PriceMinor: sub.PriceMinor, CreditsPerPeriod: sub.CreditsPerPeriod}, sub.Currency, sub.PlanName)
}

// planAt is a plan at a given price (one a subscription pays, which may be
// older than the catalog's, or of a plan no longer for sale): the
// catalog's name, and its synced price when that is the price paid.
func (s *Site) planAt(ctx context.Context, b store.BilledPlan, currency, name string) (store.Plan, error) {
	pl := store.Plan{Code: b.Code, Name: name, CreditsPerPeriod: b.CreditsPerPeriod, PriceMinor: b.PriceMinor, Currency: currency}
	p, err := s.store.PlanByCode(ctx, b.Code)
	switch {
	case err == nil:
		pl.Name = p.Name
		if p.PriceMinor == b.PriceMinor && p.Currency == currency {
			pl.StripePriceID = p.StripePriceID
		}
	case store.ErrorKind(err) != store.KindNotFound:
		return pl, err
	}
	return pl, nil
}

// RenewSimulatedSubscription serves POST /dashboard/subscription/renew
// (the simulator only): the subscription's clock moves to its period's
// end, so that it renews (or ends, when set to) now.
func (s *Site) RenewSimulatedSubscription() http.Handler {
	return s.simulatorAction(func(ctx context.Context, sim *billing.Simulator, id string) error { return sim.Renew(ctx, id) },
		func(sub store.Subscription, _ *store.InvoiceFailure) string {
			switch {
			case sub.Status == store.SubPastDue:
				return "Simulated: the payment provider's retries ran out, so your " + sub.PlanName + " plan has ended."
			case sub.CancelAtPeriodEnd:
				return "The simulator moved to the end of the period: your " + sub.PlanName + " plan has ended, as you asked."
			case sub.CurrentPeriodEnd == nil:
				return "Simulated: the next month is paid: its credits are added in a moment."
			}
			end := sub.CurrentPeriodEnd.UTC()
			return "Simulated: the next month (" + end.Format("2 Jan") + " – " + end.AddDate(0, 1, 0).Format("2 Jan 2006") + ") is paid: its credits are added in a moment." +
				" The credits of the month before keep their date, " + end.Format("2 Jan") + ", so both months' show until then."
		})
}

// SimulateRenewalFailure serves POST /dashboard/subscription/fail-renewal
// (the simulator only): the period ends and the next one's payment fails,
// so the plan is past due; PayOverdueSimulated pays it.
func (s *Site) SimulateRenewalFailure() http.Handler {
	return s.simulatorAction(func(ctx context.Context, sim *billing.Simulator, id string) error { return sim.FailRenewal(ctx, id) },
		func(sub store.Subscription, _ *store.InvoiceFailure) string {
			return "Simulated: the next month's payment failed, so your plan is past due: the payment provider tries again, and no credits are added until it is paid."
		})
}

// PayOverdueSimulated serves POST /dashboard/subscription/pay-overdue (the
// simulator only): the overdue invoice is paid, as after a card update.
func (s *Site) PayOverdueSimulated() http.Handler {
	return s.simulatorAction(func(ctx context.Context, sim *billing.Simulator, id string) error { return sim.PayOverdue(ctx, id) },
		func(sub store.Subscription, o *store.InvoiceFailure) string {
			plan := sub.PlanName
			if o != nil && o.PlanName != nil {
				plan = *o.PlanName
			}
			return "Simulated: the overdue payment went through. Your " + plan + " plan is active again and its month's credits are added in a moment."
		})
}

// simulatorAction runs one of the simulator's subscription actions on the
// live subscription the form names (Not Found without the simulator) and
// says what it did.
func (s *Site) simulatorAction(act func(context.Context, *billing.Simulator, string) error, done func(store.Subscription, *store.InvoiceFailure) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		sim, ok := s.gateway.(*billing.Simulator)
		if !ok {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		sub, ok := s.liveSubscriptionForm(w, r)
		if !ok {
			return
		}
		// What was overdue, read before the action pays it.
		var overdue *store.InvoiceFailure
		if o, found, err := s.store.Overdue(ctx, sub); err != nil {
			s.serverError(w, r, err)
			return
		} else if found {
			overdue = &o
		}
		err := act(ctx, sim, *sub.StripeSubscriptionID)
		switch {
		case errors.Is(err, billing.ErrSubscriptionEnded):
			s.flash(ctx, "Your "+sub.PlanName+" plan has ended already.")
		case errors.Is(err, billing.ErrNotRenewable):
			s.flash(ctx, "Your "+sub.PlanName+" plan is in no state for that now: nothing was simulated.")
		case err != nil:
			s.paymentProviderErrorTo(w, r, err, "/dashboard/subscription", "Your subscription")
			return
		default:
			s.flash(ctx, done(sub, overdue))
		}
		redirect(w, r, "/dashboard/subscription")
	})
}
