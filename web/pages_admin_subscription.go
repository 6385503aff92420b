package web

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// AdminEndSubscription serves POST /admin/users/{id}/subscription: support
// ends a customer's live plan, with a reason kept in the audit log —
// action "cancel" at its period's end (the provider is told first, as when
// the customer cancels; the customer is emailed), or "end_now" (a
// cancel_subscription job, in the audit's transaction; the provider's end
// comes back as an event, which ends it here and emails the customer).
// The month's credits stay until their date either way; a refund is its
// own step (the payment's refund page).
func (s *Site) AdminEndSubscription() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		target, deletedAt, ok := s.adminUserOf(w, r)
		if !ok {
			return
		}
		back := "/admin/users/" + strconv.FormatInt(target.ID, 10)
		f, _ := parseForm(r, "subscription", "action", "reason")
		id, perr := strconv.ParseInt(f.raw("subscription"), 10, 64)
		sub, err := s.store.UserSubscription(ctx, target.ID, id)
		switch {
		case deletedAt != nil:
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "This account was deleted",
				Message: "Its plan was ended when it was deleted. Nothing was changed.", ActionURL: back, ActionLabel: "See the account"})
			return
		case perr != nil || errors.Is(err, store.ErrNotFound):
			s.errorPage(w, r, errorPage{Status: http.StatusNotFound, Heading: "No such subscription",
				Message: "That subscription is not this user's, or does not exist.", ActionURL: back, ActionLabel: "See the account"})
			return
		case err != nil:
			s.serverError(w, r, err)
			return
		case !sub.Live() || sub.StripeSubscriptionID == nil:
			s.flash(ctx, "That "+sub.PlanName+" plan has ended already: nothing was changed.")
			redirect(w, r, back)
			return
		}
		action, reason := f.raw("action"), f.raw("reason")
		if action != "cancel" && action != "end_now" {
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Bad request",
				Message: "Choose to cancel the plan at its period's end or to end it now.", ActionURL: back, ActionLabel: "See the account"})
			return
		}
		if err := store.CheckRefundReason(reason); err != nil {
			s.flash(ctx, "The plan was not changed. "+err.Error())
			redirect(w, r, back+"#subscriptions-heading")
			return
		}
		admin := CurrentUser(ctx)
		details := map[string]any{"subscription_id": sub.ID, "plan": sub.PlanCode, "stripe_subscription_id": *sub.StripeSubscriptionID, "reason": reason}
		end := ""
		if sub.CurrentPeriodEnd != nil {
			end = sub.CurrentPeriodEnd.UTC().Format("2 Jan 2006")
		}
		if action == "end_now" {
			err := s.store.InTx(ctx, func(tx pgx.Tx) error {
				if err := store.Audit(ctx, tx, &admin.ID, "subscription.end", &target.ID, details); err != nil {
					return err
				}
				_, err := s.jobs.InsertTx(ctx, tx, jobs.CancelSubscription{SubscriptionID: sub.ID}, nil)
				return err
			})
			if err != nil {
				s.serverError(w, r, err)
				return
			}
			s.flash(ctx, "The "+sub.PlanName+" plan is being ended at the payment provider: it shows as ended here in a moment, and the customer is emailed then. Its credits stay until their date; refund its payment on its refund page if needed.")
			redirect(w, r, back)
			return
		}
		if sub.CancelAtPeriodEnd {
			s.flash(ctx, "That "+sub.PlanName+" plan is set to end on "+end+" already: nothing was changed.")
			redirect(w, r, back)
			return
		}
		err = s.gateway.SetCancelAtPeriodEnd(ctx, *sub.StripeSubscriptionID, true)
		if errors.Is(err, billing.ErrSubscriptionEnded) {
			s.flash(ctx, "That "+sub.PlanName+" plan has ended already at the payment provider: nothing was changed.")
			redirect(w, r, back)
			return
		}
		if err != nil {
			s.logger.ErrorContext(ctx, "payment provider: admin cancel", "subscription", sub.ID, "err", err)
			s.errorPage(w, r, errorPage{Status: http.StatusBadGateway, Heading: "The plan was not changed",
				Message: "We could not reach the payment provider, so the plan renews as before. Try again in a few minutes.", ActionURL: back, ActionLabel: "See the account"})
			return
		}
		err = s.store.InTx(ctx, func(tx pgx.Tx) error {
			if err := store.RecordCancelAtPeriodEndIn(ctx, tx, sub.ID, true); err != nil {
				return err
			}
			return store.Audit(ctx, tx, &admin.ID, "subscription.cancel", &target.ID, details)
		})
		if err != nil {
			// The provider has it: its event records it here shortly.
			s.logger.ErrorContext(ctx, "admin cancel: the provider took it, recording it failed", "subscription", sub.ID, "reason", reason, "err", err)
			s.errorPage(w, r, errorPage{Status: http.StatusServiceUnavailable, Heading: "Cancelled at the provider, not recorded here",
				Message: "The payment provider has the change: the plan ends on " + end + " and does not renew, and it shows here when the provider's event arrives. " +
					"Saving it here failed, so it is not in the audit log and the customer was not emailed: note the reason elsewhere.", ActionURL: back, ActionLabel: "See the account"})
			return
		}
		msg := "Our team set your " + sub.PlanName + " plan to end on " + end + ": it will not renew. Its credits stay yours until then; you can keep the plan on your subscription page before that date."
		if err := s.sendEmailNow(ctx, jobs.EmailSubscriptionChanged, target.Email, map[string]string{
			"Subject": "Your " + sub.PlanName + " plan ends on " + end, "Summary": msg, "SubscriptionLink": s.absURL("/dashboard/subscription"), "BySupport": "yes",
		}); err != nil {
			s.logger.WarnContext(ctx, "admin cancel: enqueue the customer's email", "subscription", sub.ID, "err", err)
		}
		s.flash(ctx, "The "+sub.PlanName+" plan ends on "+end+" and does not renew; the customer is emailed.")
		redirect(w, r, back)
	})
}
