package web

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

// adminRefundPage is /admin/payments/{id}/refund.
type adminRefundPage struct {
	Payment store.Payment
	// Unrefunded is what the refunds recorded leave; Waiting what refunds
	// the provider accepted but has not confirmed yet (its charge.refunded
	// event has not been applied) take of it; Left what may still be asked.
	Unrefunded, Waiting, Left int64
	Requests                  []store.RefundRequest
	// Failures are refunds the provider accepted that failed later
	// (FailedIDs by provider refund id).
	Failures []store.RefundFailure
	// Disputes are the payment's chargebacks, as Stripe last told them.
	Disputes []store.Dispute
	// DisputeBlocks: a chargeback of the payment is open or lost, so no
	// refund may be asked (the bank holds or has given back the money).
	DisputeBlocks bool
	FailedIDs     map[string]bool
	// Simulated: the payments simulator is the provider, and can fail a
	// refund it made.
	Simulated bool
	// Unconfirmed are the accepted requests Waiting counts (WaitingIDs by
	// id, for the list).
	Unconfirmed []store.RefundRequest
	WaitingIDs  map[int64]bool
	// BuyerEmail is the buyer's address now (nil: deleted); the payment's
	// is the one it was paid with.
	BuyerEmail *string
	Form       *form
	Nonce      string
	// Provider names the payment provider at the start of a sentence, and
	// provider within one ("Stripe" both; "The payments simulator").
	Provider, ProviderName string
	// Pending is the newest request the provider has not answered (its
	// call failed, or is still running): it may or may not have been
	// made, so the page offers to ask it again under its key (or, once
	// too old for that, to close it), and no other.
	Pending      *store.RefundRequest
	PendingNonce string
	PendingStale bool
}

// AdminRefund serves GET and POST /admin/payments/{id}/refund: support
// asks the payment provider to refund part or all of a paid payment, with a
// reason (audited). The refund is recorded, and its share of the credits
// taken back, when the provider's charge.refunded event arrives.
func (s *Site) AdminRefund() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
		if err != nil || id <= 0 {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		pay, err := s.store.PaymentByID(ctx, id)
		if err != nil {
			s.handleError(w, r, err)
			return
		}
		page := &adminRefundPage{Payment: pay, Form: newForm(), Nonce: store.NewSecret()[:16], Provider: "Stripe", ProviderName: "Stripe"}
		if s.gateway.Simulated() {
			page.Provider, page.ProviderName, page.Simulated = "The payments simulator", "the payments simulator", true
		}
		if err := page.load(ctx, s.store); err != nil {
			s.serverError(w, r, err)
			return
		}
		if u, err := s.store.UserByID(ctx, pay.UserID); err == nil {
			page.BuyerEmail = &u.Email
		} else if store.ErrorKind(err) != store.KindNotFound {
			s.serverError(w, r, err)
			return
		}
		render := func(status int) {
			// Read again: this request's answer is among them now.
			if err := page.load(ctx, s.store); err != nil {
				s.serverError(w, r, err)
				return
			}
			s.render(w, r, status, "admin_refund", "Refund payment #"+strconv.FormatInt(pay.ID, 10), page)
		}
		if r.Method != http.MethodPost {
			// The amount is not filled in: a full refund is typed, not a
			// default.
			render(http.StatusOK)
			return
		}
		admin := CurrentUser(ctx)
		f, _ := parseForm(r, "amount", "reason", "nonce", "action", "request", "confirm_repeat", "refund", "failure")
		page.Form = f
		back := "/admin/users/" + strconv.FormatInt(pay.UserID, 10)

		if f.raw("action") == "close" {
			s.closeRefundRequest(w, r, page, admin.ID, render, back)
			return
		}
		if f.raw("action") == "simulate-failure" {
			s.simulateRefundFailure(w, r, page, f.raw("refund"))
			return
		}
		if f.raw("action") == "settle-failure" {
			s.settleRefundFailure(w, r, page, admin.ID, f.raw("failure"), f.raw("reason"))
			return
		}
		key := store.RefundKey(pay.ID, f.raw("nonce"))
		if key == "" {
			f.Message = "This form has lost its key; reload the page and try again."
			render(http.StatusBadRequest)
			return
		}
		// A key seen before: the form sent again (twice, or to ask again
		// after no answer). Whatever the payment's state now, it is
		// answered as that request, never as a new one.
		req, err := s.store.RefundRequestByKey(ctx, key)
		switch {
		case err == nil:
			if req.PaymentID != pay.ID {
				s.NotFound().ServeHTTP(w, r)
				return
			}
			if req.Status != store.RefundRequested {
				msg := "This refund was already requested (the form was sent twice); nothing more was asked."
				if req.Status == store.RefundRefused && req.Refusal != nil {
					msg = "This refund was already asked for and refused: " + *req.Refusal
				} else if req.Status == store.RefundClosed {
					msg = "This refund request was closed without an answer; nothing was asked."
				}
				s.flash(ctx, msg)
				redirect(w, r, back)
				return
			}
			// Nothing is asked of the provider while a chargeback is open
			// or lost — neither a new refund nor one asked again (h34); a
			// form sent again whose request was answered is answered as
			// that request, above.
			if page.DisputeBlocks {
				refuseDisputed(page, f, render)
				return
			}
			if time.Since(req.CreatedAt) >= store.RefundAskAgainWithin {
				f.Message = "This request is too old to ask again: " + page.ProviderName + " may have forgotten its key and would refund a second time. Check the payment in " + page.ProviderName + "'s dashboard, then close the request below."
				render(http.StatusConflict)
				return
			}
		case errors.Is(err, store.ErrNotFound):
			if page.DisputeBlocks {
				refuseDisputed(page, f, render)
				return
			}
			var ok bool
			if req, ok = s.newRefundRequest(w, r, page, admin.ID, key, render); !ok {
				return
			}
		default:
			s.serverError(w, r, err)
			return
		}

		refundID, err := s.gateway.Refund(ctx, billing.RefundParams{
			PaymentIntentID: *pay.PaymentIntentID, AmountMinor: req.AmountMinor, PaymentID: pay.ID, RequestID: req.ID, IdempotencyKey: key,
		})
		var refused *billing.RefundRefusedError
		switch {
		case errors.As(err, &refused):
			if aerr := s.store.AnswerRefundRequest(ctx, req.ID, "", refused.Reason); aerr != nil {
				s.serverError(w, r, aerr)
				return
			}
			f.Message = page.Provider + " refused the refund: " + refused.Reason + " Nothing was refunded."
			render(http.StatusUnprocessableEntity)
			return
		case err != nil:
			// Not answered: the refund may or may not have been made. The
			// page offers to ask again under the same key.
			s.logger.ErrorContext(ctx, "refund request failed", "payment_id", pay.ID, "request_id", req.ID, "err", err)
			f.Message = page.Provider + " did not answer the refund request (" + err.Error() + ")."
			render(http.StatusBadGateway)
			return
		}
		if err := s.store.AnswerRefundRequest(ctx, req.ID, refundID, ""); err != nil {
			s.serverError(w, r, err)
			return
		}
		// Asked again, the refund may be one the payment shows already:
		// told as the page tells waiting refunds (store.RefundStanding).
		if err := page.load(ctx, s.store); err != nil {
			s.serverError(w, r, err)
			return
		}
		if !page.WaitingIDs[req.ID] {
			s.flash(ctx, "The refund of "+formatMoney(req.AmountMinor, pay.Currency)+" of payment #"+strconv.FormatInt(pay.ID, 10)+" was made ("+refundID+
				"), and the payment shows it.")
		} else {
			credits := ", and its share of the credits is taken back,"
			if page.BuyerEmail == nil {
				credits = "" // a deleted account's credits were forfeited
			}
			s.flash(ctx, "Refund of "+formatMoney(req.AmountMinor, pay.Currency)+" of payment #"+strconv.FormatInt(pay.ID, 10)+" requested ("+refundID+
				"). The payment shows it"+credits+" once "+page.ProviderName+" confirms it.")
		}
		redirect(w, r, back)
	})
}

// newRefundRequest checks a new request's form and records it (with its
// audit entry); ok is false when it answered the request itself. The rules
// that depend on the payment's other requests (one without an answer, what
// is left, the same refund a moment ago) are decided by the store with the
// payment held, so that two admins sending at once cannot both pass them.
func (s *Site) newRefundRequest(w http.ResponseWriter, r *http.Request, page *adminRefundPage, adminID int64, key string, render func(int)) (store.RefundRequest, bool) {
	pay, f := page.Payment, page.Form
	// What the page shows instead of a form is said first (a form from an
	// older page): the store decides again with the payment held.
	switch {
	case pay.PaidAt == nil || pay.PaymentIntentID == nil:
		f.Message = "There is nothing to refund: payment #" + strconv.FormatInt(pay.ID, 10) + " was never paid."
	case page.Unrefunded <= 0:
		f.Message = "There is nothing to refund: payment #" + strconv.FormatInt(pay.ID, 10) + " is refunded in full."
	case page.Pending != nil:
		f.Message = pendingMessage(page)
	case page.Left <= 0:
		f.Message = "All that is left of this payment is refunded and waits for " + page.ProviderName + "'s confirmation; nothing was asked."
	}
	if f.Message != "" {
		render(http.StatusConflict)
		return store.RefundRequest{}, false
	}
	amount, ok := parseAmount(f.raw("amount"), pay.Currency)
	switch {
	case !ok:
		f.fail("amount", "Enter an amount such as "+amountExamples(pay.Currency)+", up to "+formatMoney(page.Left, pay.Currency)+".")
	case amount <= 0:
		f.fail("amount", "Enter an amount above zero.")
	}
	if err := store.CheckRefundReason(f.raw("reason")); err != nil {
		f.fail("reason", err.Error())
	}
	if !f.ok() {
		render(http.StatusUnprocessableEntity)
		return store.RefundRequest{}, false
	}
	var ask time.Duration
	if f.raw("confirm_repeat") != "yes" {
		ask = refundRepeatWindow
	}
	req, err := s.store.RecordRefundRequest(r.Context(), store.NewRefundRequest{
		PaymentID: pay.ID, AdminID: adminID, AmountMinor: amount, Reason: f.raw("reason"), Key: key, Amount: formatMoney(amount, pay.Currency),
		AskRepeatWithin: ask,
	})
	var pending *store.RefundPendingError
	var tooLarge *store.RefundTooLargeError
	var repeated *store.RepeatedRefundError
	switch {
	case errors.As(err, &pending):
		page.Pending = &pending.Pending
		f.Message = pendingMessage(page)
		render(http.StatusConflict)
	case errors.As(err, &tooLarge) && tooLarge.Waiting > 0:
		f.fail("amount", "At most "+formatMoney(tooLarge.Left, pay.Currency)+" is left to refund: "+formatMoney(tooLarge.Waiting, pay.Currency)+" more was refunded and waits for "+page.ProviderName+"'s confirmation.")
		render(http.StatusUnprocessableEntity)
	case errors.As(err, &tooLarge):
		f.fail("amount", "At most "+formatMoney(tooLarge.Left, pay.Currency)+" is left to refund of this payment.")
		render(http.StatusUnprocessableEntity)
	case errors.As(err, &repeated):
		by := ""
		if repeated.By != nil {
			by = " by " + *repeated.By
		}
		f.Message = "A refund of " + formatMoney(amount, pay.Currency) + " of this payment was made " + relativeTime(repeated.At) + by +
			". Nothing was asked now. To refund the same amount again, tick the box below and send."
		f.Values["confirm_repeat"] = "ask"
		render(http.StatusConflict)
	case store.ErrorKind(err) == store.KindConflict:
		f.Message = err.Error()
		render(http.StatusConflict)
	case err != nil:
		s.serverError(w, r, err)
	default:
		return req, true
	}
	return store.RefundRequest{}, false
}

// pendingMessage says why no other refund is asked while one has no answer
// from the provider: it may have been made, and is asked again (under its
// key), or closed, first.
func pendingMessage(page *adminRefundPage) string {
	return "A refund of " + formatMoney(page.Pending.AmountMinor, page.Payment.Currency) + " asked " + relativeTime(page.Pending.CreatedAt) +
		" has no answer from " + page.ProviderName + " yet, so it may have been made. Deal with it first (below); nothing else was asked."
}

// refundRepeatWindow is how long after a refund of some amount of a
// payment the same amount asks for confirmation (the form filled in again
// after Back, or by a second admin for the same complaint).
const refundRepeatWindow = 10 * time.Minute

// simulateRefundFailure makes the payments simulator fail one of this
// payment's refunds it made (charge.refund.updated, as Stripe sends when a
// card cannot take a refund back), so that the failure's handling can be
// seen without Stripe.
func (s *Site) simulateRefundFailure(w http.ResponseWriter, r *http.Request, page *adminRefundPage, refundID string) {
	ctx := r.Context()
	sim, ok := s.gateway.(*billing.Simulator)
	known := false
	for _, rq := range page.Requests {
		known = known || (rq.ProviderRefundID != nil && *rq.ProviderRefundID == refundID)
	}
	if !ok || !known {
		s.NotFound().ServeHTTP(w, r)
		return
	}
	here := "/admin/payments/" + strconv.FormatInt(page.Payment.ID, 10) + "/refund"
	err := sim.FailRefund(ctx, refundID)
	switch {
	case errors.Is(err, store.ErrSimRefundFailedAlready):
		s.flash(ctx, "The payments simulator failed refund "+refundID+" already; nothing more was sent.")
	case err != nil:
		s.logger.ErrorContext(ctx, "simulator: fail refund", "refund", refundID, "err", err)
		s.errorPage(w, r, errorPage{Status: http.StatusBadGateway, Heading: "The simulator could not fail the refund",
			Message: "It could not deliver its event to this site's webhook; nothing changed. Try again.", ActionURL: here, ActionLabel: "Back to the payment"})
		return
	default:
		s.flash(ctx, "The payments simulator failed refund "+refundID+" (an expired or canceled card) and sent charge.refund.updated; the failure shows here once a worker applies it.")
	}
	redirect(w, r, here)
}

// settleRefundFailure records that a failed refund of the payment was made
// good another way, and how (audited); the customer's receipt then says so.
func (s *Site) settleRefundFailure(w http.ResponseWriter, r *http.Request, page *adminRefundPage, adminID int64, failure, note string) {
	ctx := r.Context()
	here := "/admin/payments/" + strconv.FormatInt(page.Payment.ID, 10) + "/refund"
	id, perr := strconv.ParseInt(failure, 10, 64)
	created, err := s.store.SettleRefundFailure(ctx, adminID, page.Payment.ID, id, note)
	switch {
	case perr != nil || errors.Is(err, store.ErrNotFound):
		s.NotFound().ServeHTTP(w, r)
		return
	case store.ErrorKind(err) == store.KindInvalid:
		s.flash(ctx, "The failed refund was not marked settled: say how it was made good, on one line of up to 500 characters, without control or hidden characters.")
	case err != nil:
		s.serverError(w, r, err)
		return
	case !created:
		s.flash(ctx, "That failed refund was marked settled already; nothing was changed.")
	default:
		s.flash(ctx, "The failed refund is marked settled; the customer's receipt says it was made good.")
	}
	redirect(w, r, here)
}

// refuseDisputed answers a refund asked of a payment under an open or lost
// chargeback: nothing is asked of the provider.
func refuseDisputed(page *adminRefundPage, f *form, render func(int)) {
	f.Message = "This payment is disputed: the customer's bank has taken the money back (or holds it while the dispute runs), so a refund would pay them twice. Nothing was refunded."
	if !page.Simulated {
		f.Message += " Answer or accept the dispute in Stripe's dashboard."
	}
	render(http.StatusConflict)
}

// closeRefundRequest closes the request waiting too long for an answer to
// be asked again, once support has checked the provider's dashboard.
func (s *Site) closeRefundRequest(w http.ResponseWriter, r *http.Request, page *adminRefundPage, adminID int64, render func(int), back string) {
	f := page.Form
	reqID, _ := strconv.ParseInt(f.raw("request"), 10, 64)
	if page.Pending == nil || page.Pending.ID != reqID {
		f.Message = "That request is not one of this payment's waiting for an answer; nothing was changed."
		render(http.StatusConflict)
		return
	}
	if !page.PendingStale && page.DisputeBlocks {
		f.Message = "That request may still be under way, and is not asked again while the payment is disputed: it can be closed once it is a day old."
		render(http.StatusConflict)
		return
	}
	if !page.PendingStale {
		f.Message = "That request can still be asked again safely; ask it again instead."
		render(http.StatusConflict)
		return
	}
	if msg := closeNoteProblem(f.raw("reason")); msg != "" {
		f.fail("reason", msg)
		render(http.StatusUnprocessableEntity)
		return
	}
	err := s.store.CloseRefundRequest(r.Context(), reqID, adminID, f.raw("reason"))
	if store.ErrorKind(err) == store.KindConflict {
		f.Message = err.Error()
		render(http.StatusConflict)
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	s.flash(r.Context(), "The refund request of "+formatMoney(page.Pending.AmountMinor, page.Payment.Currency)+" is closed: it will not be asked again.")
	redirect(w, r, back)
}

// closeNoteProblem says what is wrong with the note closing a request
// ("" if nothing): the rules of a refund's reason, in its own words.
func closeNoteProblem(note string) string {
	switch store.ReasonProblem(note) {
	case store.ReasonOK:
		return ""
	case store.ReasonBlank:
		return "Say what you found: the note is kept in the audit log."
	case store.ReasonTooLong:
		return "Keep the note to " + strconv.Itoa(store.MaxReasonChars) + " characters."
	default:
		return "Write the note on one line, without control or hidden characters."
	}
}

// load reads the payment's refund requests and works out what may still be
// asked: the newest request still waiting for an answer, and the accepted
// ones the payment's refunded total does not show yet.
func (p *adminRefundPage) load(ctx context.Context, st *store.Store) error {
	var err error
	if p.Requests, err = st.RefundRequestsOf(ctx, p.Payment.ID); err != nil {
		return err
	}
	if p.Failures, err = st.RefundFailuresOf(ctx, p.Payment.ID); err != nil {
		return err
	}
	if p.Disputes, err = st.DisputesOf(ctx, p.Payment.ID); err != nil {
		return err
	}
	p.DisputeBlocks = false
	for _, d := range p.Disputes {
		p.DisputeBlocks = p.DisputeBlocks || store.DisputeBlocksRefunds(d.Status)
	}
	p.FailedIDs = map[string]bool{}
	for _, f := range p.Failures {
		p.FailedIDs[f.ProviderRefundID] = true
	}
	pay := p.Payment
	p.Pending, p.Unconfirmed, p.Waiting = store.RefundStanding(pay, p.Requests)
	p.PendingNonce, p.PendingStale = "", false
	p.WaitingIDs = map[int64]bool{}
	for _, rq := range p.Unconfirmed {
		p.WaitingIDs[rq.ID] = true
	}
	if p.Pending != nil {
		p.PendingNonce = store.RefundNonce(pay.ID, p.Pending.IdempotencyKey)
		p.PendingStale = time.Since(p.Pending.CreatedAt) >= store.RefundAskAgainWithin
	}
	p.Unrefunded = pay.AmountMinor - pay.AmountRefundedMinor
	p.Left = max(0, p.Unrefunded-p.Waiting)
	return nil
}

// amountInput writes minor units as a form's amount ("12.50"; "3000" in
// a zero-decimal currency; "1.500" in a three-decimal one).
func amountInput(minor int64, currency string) string {
	return billing.FormatDecimal(minor, currency)
}

// amountExamples shows what the amount field takes in a currency.
func amountExamples(currency string) string {
	switch billing.CurrencyDecimals(currency) {
	case 0:
		return "500 or 1,500 (" + strings.ToUpper(currency) + ")"
	case 3:
		return "5 or 12.500 (" + strings.ToUpper(currency) + ")"
	}
	return "5 or 12.50 (" + strings.ToUpper(currency) + ")"
}

// amountPattern is an amount as typed: digits, with commas only between
// groups of three, and decimals (as many as the currency has at most,
// ParseDecimal checks; none in a zero-decimal currency).
var (
	amountPattern      = regexp.MustCompile(`^([0-9]{1,9}|[0-9]{1,3}(,[0-9]{3}){1,2})(\.[0-9]{1,3})?$`)
	wholeAmountPattern = regexp.MustCompile(`^([0-9]{1,11}|[0-9]{1,3}(,[0-9]{3}){1,3})$`)
)

// currencySymbols are the symbols an amount may start with, by currency;
// any currency's amount may start with its code ("CAD 15.00").
var currencySymbols = map[string]string{"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}

// parseAmount reads an amount typed in a form ("12", "12.5", "12.50",
// "$12.50", "1,012.50" for USD; "3,000" or "¥3000" for JPY) as minor
// units. Only the payment's own currency symbol or code is accepted.
func parseAmount(v, currency string) (int64, bool) {
	v = strings.TrimSpace(v)
	if sym, ok := currencySymbols[currency]; ok {
		v = strings.TrimPrefix(v, sym)
	}
	if len(v) >= 3 && strings.EqualFold(v[:3], currency) {
		v = v[3:]
	}
	v = strings.TrimSpace(v)
	if billing.CurrencyDecimals(currency) == 0 {
		if !wholeAmountPattern.MatchString(v) {
			return 0, false
		}
		n, err := strconv.ParseInt(strings.ReplaceAll(v, ",", ""), 10, 64)
		return n, err == nil
	}
	if !amountPattern.MatchString(v) {
		return 0, false
	}
	return billing.ParseDecimal(strings.ReplaceAll(v, ",", ""), currency)
}
