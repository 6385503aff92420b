package web

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

// adminRefundPage is /admin/payments/{id}/refund.
type adminRefundPage struct {
	Payment store.Payment
	// Left is what is left to refund, as far as the refunds recorded say.
	Left     int64
	Requests []store.RefundRequest
	Form     *form
	Nonce    string
	Provider string
	// Pending is the newest request the provider has not answered (its
	// call failed, or is still running): it may or may not have been
	// made, so the page offers to ask it again under its key, and no other.
	Pending      *store.RefundRequest
	PendingNonce string
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
		page := adminRefundPage{Payment: pay, Left: pay.AmountMinor - pay.AmountRefundedMinor, Form: newForm(), Nonce: store.NewSecret()[:16], Provider: "Stripe"}
		if s.gateway.Simulated() {
			page.Provider = "The payments simulator"
		}
		if err := page.loadRequests(ctx, s.store); err != nil {
			s.serverError(w, r, err)
			return
		}
		render := func(status int) {
			// Read again: this request's answer is among them now.
			if err := page.loadRequests(ctx, s.store); err != nil {
				s.serverError(w, r, err)
				return
			}
			s.render(w, r, status, "admin_refund", "Refund payment #"+strconv.FormatInt(pay.ID, 10), page)
		}
		if r.Method != http.MethodPost {
			if page.Left > 0 {
				page.Form.Values["amount"] = amountInput(page.Left)
			}
			render(http.StatusOK)
			return
		}
		if pay.PaidAt == nil || pay.PaymentIntentID == nil || page.Left <= 0 {
			// The page says so too; a form sent from an older page gets
			// the same answer, and nothing is asked of the provider.
			page.Form.Message = "There is nothing to refund: " + nothingToRefund(pay)
			render(http.StatusConflict)
			return
		}
		admin := CurrentUser(ctx)
		f, _ := parseForm(r, "amount", "reason", "nonce")
		page.Form = f
		amount, ok := parseAmount(f.raw("amount"), pay.Currency)
		switch {
		case !ok:
			f.fail("amount", "Enter an amount such as 5 or 12.50 ("+strings.ToUpper(pay.Currency)+"), up to "+formatMoney(page.Left, pay.Currency)+".")
		case amount <= 0:
			f.fail("amount", "Enter an amount above zero.")
		case amount > page.Left:
			f.fail("amount", "At most "+formatMoney(page.Left, pay.Currency)+" is left to refund of this payment.")
		}
		switch reason := f.raw("reason"); {
		case reason == "":
			f.fail("reason", "Say why: the reason is kept in the audit log.")
		case len([]rune(reason)) > store.MaxRefundReason:
			f.fail("reason", "Keep the reason to "+strconv.Itoa(store.MaxRefundReason)+" characters.")
		}
		if !f.ok() {
			render(http.StatusUnprocessableEntity)
			return
		}
		key := store.RefundKey(pay.ID, f.raw("nonce"))
		if key == "" {
			f.Message = "This form has lost its key; reload the page and try again."
			render(http.StatusBadRequest)
			return
		}
		if page.Pending != nil && page.Pending.IdempotencyKey != key {
			// Another request has no answer yet: it may have been made.
			// It is asked again (under its key) before any other.
			f.Message = "A refund of " + formatMoney(page.Pending.AmountMinor, pay.Currency) + " asked " + relativeTime(page.Pending.CreatedAt) +
				" has no answer from " + strings.ToLower(page.Provider[:1]) + page.Provider[1:] + " yet, so it may have been made. Ask it again first (below); nothing else was asked."
			render(http.StatusConflict)
			return
		}
		req, replayed, err := s.store.RecordRefundRequest(ctx, store.NewRefundRequest{
			PaymentID: pay.ID, AdminID: admin.ID, AmountMinor: amount, Reason: f.raw("reason"), Key: key, Amount: formatMoney(amount, pay.Currency),
		})
		if store.ErrorKind(err) == store.KindConflict {
			f.Message = err.Error()
			render(http.StatusConflict)
			return
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		back := "/admin/users/" + strconv.FormatInt(pay.UserID, 10)
		if replayed && req.Status != store.RefundRequested {
			// The form sent twice: its first request was answered.
			msg := "This refund was already requested (the form was sent twice); nothing more was asked."
			if req.Status == store.RefundRefused && req.Refusal != nil {
				msg = "This refund was already asked for and refused: " + *req.Refusal
			}
			s.flash(ctx, msg)
			redirect(w, r, back)
			return
		}
		refundID, err := s.gateway.Refund(ctx, billing.RefundParams{
			PaymentIntentID: *pay.PaymentIntentID, AmountMinor: amount, PaymentID: pay.ID, RequestID: req.ID, IdempotencyKey: key,
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
			// same form (the same key) asks again safely.
			s.logger.ErrorContext(ctx, "refund request failed", "payment_id", pay.ID, "request_id", req.ID, "err", err)
			f.Message = page.Provider + " did not answer the refund request (" + err.Error() + ")."
			render(http.StatusBadGateway)
			return
		}
		if err := s.store.AnswerRefundRequest(ctx, req.ID, refundID, ""); err != nil {
			s.serverError(w, r, err)
			return
		}
		s.flash(ctx, "Refund of "+formatMoney(amount, pay.Currency)+" of payment #"+strconv.FormatInt(pay.ID, 10)+" requested ("+refundID+
			"). The payment shows it, and its share of the credits is taken back, once "+strings.ToLower(page.Provider[:1])+page.Provider[1:]+" confirms it.")
		redirect(w, r, back)
	})
}

// loadRequests reads the payment's refund requests and finds the newest
// one still waiting for the provider's answer.
func (p *adminRefundPage) loadRequests(ctx context.Context, st *store.Store) error {
	var err error
	if p.Requests, err = st.RefundRequestsOf(ctx, p.Payment.ID); err != nil {
		return err
	}
	p.Pending, p.PendingNonce = nil, ""
	for i, rq := range p.Requests {
		if rq.Status == store.RefundRequested {
			p.Pending, p.PendingNonce = &p.Requests[i], store.RefundNonce(p.Payment.ID, rq.IdempotencyKey)
			break
		}
	}
	return nil
}

// nothingToRefund says why a payment has nothing left to refund.
func nothingToRefund(p store.Payment) string {
	if p.PaidAt == nil {
		return "payment #" + strconv.FormatInt(p.ID, 10) + " was never paid."
	}
	return "payment #" + strconv.FormatInt(p.ID, 10) + " is refunded in full."
}

// amountInput writes minor units as a form's amount ("12.50").
func amountInput(minor int64) string {
	return strconv.FormatInt(minor/100, 10) + "." + strconv.FormatInt(minor%100/10, 10) + strconv.FormatInt(minor%10, 10)
}

// parseAmount reads an amount of a two-decimal currency typed in a form
// ("12", "12.5", "12.50", "$12.50", "1,012.50") as minor units.
func parseAmount(v, currency string) (int64, bool) {
	if currency != "usd" && currency != "eur" && currency != "gbp" {
		return 0, false
	}
	v = strings.ReplaceAll(strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(v), "$€£")), ",", "")
	whole, frac, dotted := strings.Cut(v, ".")
	if whole == "" || len(whole) > 9 || (dotted && (len(frac) == 0 || len(frac) > 2)) {
		return 0, false
	}
	for _, c := range whole + frac {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, _ := strconv.ParseInt(whole, 10, 64)
	cents := int64(0)
	if frac != "" {
		c, _ := strconv.ParseInt(frac, 10, 64)
		if len(frac) == 1 {
			c *= 10
		}
		cents = c
	}
	return n*100 + cents, true
}
