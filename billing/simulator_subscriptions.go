package billing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"

	"github.com/quickscale/quickscale/store"
)

// CreateSubscriptionCheckout implements Gateway: a local checkout in
// subscription mode; like a pack's, the same idempotency key returns the
// same session and a key reused for another plan is refused.
func (s *Simulator) CreateSubscriptionCheckout(ctx context.Context, p SubscriptionCheckoutParams) (CheckoutSession, error) {
	id := simID("cs")
	if p.IdempotencyKey != "" {
		sum := sha256.Sum256([]byte(p.IdempotencyKey))
		id = "cs_sim_" + hex.EncodeToString(sum[:12])
	}
	ss := store.SimSession{
		ID: id, UserID: p.UserID, CustomerID: p.CustomerID, Mode: "subscription",
		AmountMinor: p.Plan.PriceMinor, Currency: p.Plan.Currency, Description: "QuickScale " + p.Plan.Name + " plan, monthly",
		Metadata: map[string]string{MetaUserID: strconv.FormatInt(p.UserID, 10), MetaPlanCode: p.Plan.Code, MetaSubscriptionRef: p.Ref},
		// A checkout in subscription mode has no payment intent of its
		// own (its invoices do); the column is unique, so it gets a name.
		SuccessURL: p.SuccessURL, CancelURL: p.CancelURL, PaymentIntentID: "none_" + id,
	}
	created, err := s.store.CreateSimSession(ctx, ss)
	if err != nil {
		return CheckoutSession{}, fmt.Errorf("simulator: create session: %w", err)
	}
	if !created {
		first, err := s.store.SimSessionOfUser(ctx, id, p.UserID)
		if err != nil || first.Mode != "subscription" || first.AmountMinor != ss.AmountMinor || first.Metadata[MetaPlanCode] != p.Plan.Code {
			return CheckoutSession{}, fmt.Errorf("simulator: idempotency key %q was used for another checkout", p.IdempotencyKey)
		}
	}
	return CheckoutSession{ID: id, URL: s.baseURL + "/simulator/checkout/" + id}, nil
}

func simInvoiceIDs() (string, string) {
	key := strings.TrimPrefix(simID("in"), "in_sim_")
	return "in_sim_" + key, "pi_sim_" + key
}

// paySubscription pays a subscription-mode checkout: the subscription
// starts, and its events are delivered as Stripe sends them (the
// checkout's completion, the subscription, its first invoice paid).
func (s *Simulator) paySubscription(ctx context.Context, id string, userID int64) (string, error) {
	var ss store.SimSession
	err := s.oneAtATime(ctx, func() (err error) {
		ss, err = s.store.PaySimSubscriptionCheckout(ctx, id, userID, simID("sub"), simInvoiceIDs,
			func(ss store.SimSession, sub *store.SimSubscription, inv *store.SimSession) error {
				if sub == nil {
					return s.deliver(ctx, ss)
				}
				if err := s.Emit(ctx, stripe.EventTypeCheckoutSessionCompleted, CheckoutSessionObject(ss)); err != nil {
					return err
				}
				if err := s.Emit(ctx, stripe.EventTypeCustomerSubscriptionCreated, SubscriptionObject(*sub)); err != nil {
					return err
				}
				return s.Emit(ctx, stripe.EventTypeInvoicePaid, InvoiceObject(*sub, *inv, stripe.InvoiceBillingReasonSubscriptionCreate))
			})
		return err
	})
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(ss.SuccessURL, "{CHECKOUT_SESSION_ID}", ss.ID), nil
}

// Renew moves a simulator subscription's clock to the end of its current
// period: it renews (invoice.paid for the next period, then
// customer.subscription.updated) or, set to cancel then, ends
// (customer.subscription.deleted). The processes that serve the
// simulator renew subscriptions whose period ended each minute
// (RenewDue); support and demos can renew one at once from the
// subscription page. One past due (FailRenewal) ends instead: its
// retries ran out. An ended one is ErrSubscriptionEnded.
func (s *Simulator) Renew(ctx context.Context, subscriptionID string) error {
	err := s.oneAtATime(ctx, func() error {
		return s.store.RenewSimSubscription(ctx, subscriptionID, simInvoiceIDs, func(sub store.SimSubscription, inv *store.SimSession) error {
			if inv == nil {
				// Set to end then (it ends at its period's end), or past
				// due with its retries run out (it ends now), set to end
				// or not.
				reason := stripe.SubscriptionCancellationDetailsReasonPaymentFailed
				if sub.CancelAtPeriodEnd && sub.CanceledAt != nil && sub.CanceledAt.Equal(sub.CurrentPeriodEnd) {
					reason = stripe.SubscriptionCancellationDetailsReasonCancellationRequested
				}
				return s.Emit(ctx, stripe.EventTypeCustomerSubscriptionDeleted, withCancellation(SubscriptionObject(sub), reason))
			}
			if err := s.Emit(ctx, stripe.EventTypeInvoicePaid, InvoiceObject(sub, *inv, stripe.InvoiceBillingReasonSubscriptionCycle)); err != nil {
				return err
			}
			return s.Emit(ctx, stripe.EventTypeCustomerSubscriptionUpdated, SubscriptionObject(sub))
		})
	})
	return simSubscriptionError(subscriptionID, err)
}

// ErrNotRenewable answers a simulated failed renewal (or payment of an
// overdue invoice) of a subscription in no state for it.
var ErrNotRenewable = errors.New("simulator: the subscription is in no state for that")

// FailRenewal moves a simulator subscription's clock to the end of its
// period as Renew does, but the next period's payment fails:
// invoice.payment_failed (Stripe tries again in three days), then
// customer.subscription.updated, past due. PayOverdue pays it; Renew,
// while it is past due, ends it (the retries ran out).
func (s *Simulator) FailRenewal(ctx context.Context, subscriptionID string) error {
	err := s.oneAtATime(ctx, func() error {
		return s.store.FailSimRenewal(ctx, subscriptionID, simInvoiceIDs, func(sub store.SimSubscription, inv store.SimSession) error {
			obj := InvoiceObject(sub, inv, stripe.InvoiceBillingReasonSubscriptionCycle)
			obj.Paid, obj.Status, obj.AmountPaid = false, stripe.InvoiceStatusOpen, 0
			obj.AttemptCount, obj.Attempted = 1, true
			obj.NextPaymentAttempt = time.Now().Add(72 * time.Hour).Unix()
			obj.StatusTransitions.PaidAt = 0
			if err := s.Emit(ctx, stripe.EventTypeInvoicePaymentFailed, obj); err != nil {
				return err
			}
			return s.Emit(ctx, stripe.EventTypeCustomerSubscriptionUpdated, SubscriptionObject(sub))
		})
	})
	if errors.Is(err, store.ErrSimNotRenewable) {
		return fmt.Errorf("simulator: subscription %s: %w", subscriptionID, ErrNotRenewable)
	}
	return simSubscriptionError(subscriptionID, err)
}

// PayOverdue pays the overdue invoice of a past-due simulator
// subscription (its card updated): invoice.paid, then
// customer.subscription.updated, active.
func (s *Simulator) PayOverdue(ctx context.Context, subscriptionID string) error {
	err := s.oneAtATime(ctx, func() error {
		return s.store.PaySimOverdue(ctx, subscriptionID, func(sub store.SimSubscription, inv store.SimSession) error {
			if err := s.Emit(ctx, stripe.EventTypeInvoicePaid, InvoiceObject(sub, inv, stripe.InvoiceBillingReasonSubscriptionCycle)); err != nil {
				return err
			}
			return s.Emit(ctx, stripe.EventTypeCustomerSubscriptionUpdated, SubscriptionObject(sub))
		})
	})
	if errors.Is(err, store.ErrSimNotRenewable) {
		return fmt.Errorf("simulator: subscription %s: %w", subscriptionID, ErrNotRenewable)
	}
	return simSubscriptionError(subscriptionID, err)
}

// RenewDue renews (or ends) the simulator subscriptions whose period has
// ended, up to 100 a call; it returns how many it changed, and the first
// error met (one failing does not keep the others from renewing).
func (s *Simulator) RenewDue(ctx context.Context) (int, error) {
	ids, err := s.store.SimSubscriptionsDue(ctx, 100)
	if err != nil {
		return 0, err
	}
	n := 0
	var first error
	for _, id := range ids {
		switch err := s.Renew(ctx, id); {
		case err == nil:
			n++
		case errors.Is(err, ErrSubscriptionEnded):
		case ctx.Err() != nil:
			return n, err
		case first == nil:
			first = err
		}
	}
	return n, first
}

// SetCancelAtPeriodEnd implements Gateway.
func (s *Simulator) SetCancelAtPeriodEnd(ctx context.Context, subscriptionID string, cancel bool) error {
	err := s.oneAtATime(ctx, func() error {
		return s.store.SetSimCancelAtPeriodEnd(ctx, subscriptionID, cancel, func(sub store.SimSubscription) error {
			return s.Emit(ctx, stripe.EventTypeCustomerSubscriptionUpdated, SubscriptionObject(sub))
		})
	})
	return simSubscriptionError(subscriptionID, err)
}

// ChangeSubscriptionPlan implements Gateway: the simulator's subscription
// is billed at the plan's price from its next renewal.
func (s *Simulator) ChangeSubscriptionPlan(ctx context.Context, subscriptionID string, plan store.Plan) error {
	err := s.oneAtATime(ctx, func() error {
		return s.store.SetSimSubscriptionPrice(ctx, subscriptionID, plan.PriceMinor, "QuickScale "+plan.Name+" plan, monthly", map[string]string{MetaPlanCode: plan.Code}, func(sub store.SimSubscription) error {
			return s.Emit(ctx, stripe.EventTypeCustomerSubscriptionUpdated, SubscriptionObject(sub))
		})
	})
	return simSubscriptionError(subscriptionID, err)
}

// CancelSubscription implements Gateway.
func (s *Simulator) CancelSubscription(ctx context.Context, subscriptionID string) error {
	err := s.oneAtATime(ctx, func() error {
		return s.store.CancelSimSubscription(ctx, subscriptionID, func(sub store.SimSubscription) error {
			return s.Emit(ctx, stripe.EventTypeCustomerSubscriptionDeleted,
				withCancellation(SubscriptionObject(sub), stripe.SubscriptionCancellationDetailsReasonCancellationRequested))
		})
	})
	return simSubscriptionError(subscriptionID, err)
}

// withCancellation says why a subscription ended, as Stripe's
// cancellation_details.reason does.
func withCancellation(s *stripe.Subscription, reason stripe.SubscriptionCancellationDetailsReason) *stripe.Subscription {
	s.CancellationDetails = &stripe.SubscriptionCancellationDetails{Reason: reason}
	return s
}

func simSubscriptionError(id string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrSimSubscriptionCanceled), store.ErrorKind(err) == store.KindNotFound:
		// Ended, or never had (as Stripe's 404 for a subscription it does
		// not have): nothing to change.
		return fmt.Errorf("simulator: subscription %s: %w", id, ErrSubscriptionEnded)
	}
	return fmt.Errorf("simulator: subscription %s: %w", id, err)
}

// SubscriptionObject renders a simulator subscription as Stripe's
// subscription object.
func SubscriptionObject(sub store.SimSubscription) *stripe.Subscription {
	status := stripe.SubscriptionStatusActive
	if sub.Status == "past_due" {
		status = stripe.SubscriptionStatusPastDue
	}
	var canceledAt, endedAt int64
	if sub.Status == "canceled" {
		status = stripe.SubscriptionStatusCanceled
		if sub.CanceledAt != nil {
			canceledAt, endedAt = sub.CanceledAt.Unix(), sub.CanceledAt.Unix()
		}
	}
	return &stripe.Subscription{
		ID: sub.ID, Object: "subscription",
		Customer:           &stripe.Customer{ID: sub.CustomerID},
		Status:             status,
		Created:            sub.CreatedAt.Unix(),
		StartDate:          sub.CreatedAt.Unix(),
		CurrentPeriodStart: sub.CurrentPeriodStart.Unix(),
		CurrentPeriodEnd:   sub.CurrentPeriodEnd.Unix(),
		CancelAtPeriodEnd:  sub.CancelAtPeriodEnd,
		CanceledAt:         canceledAt,
		EndedAt:            endedAt,
		Currency:           stripe.Currency(sub.Currency),
		Metadata:           sub.Metadata,
		CollectionMethod:   stripe.SubscriptionCollectionMethodChargeAutomatically,
		// One item at the price it bills from the next renewal.
		Items: &stripe.SubscriptionItemList{
			ListMeta: stripe.ListMeta{URL: "/v1/subscription_items?subscription=" + sub.ID},
			Data: []*stripe.SubscriptionItem{{
				ID: "si_" + strings.TrimPrefix(sub.ID, "sub_"), Object: "subscription_item", Quantity: 1,
				Price: &stripe.Price{
					ID: "price_sim_" + sub.Metadata[MetaPlanCode], Object: "price", Active: true, Currency: stripe.Currency(sub.Currency),
					UnitAmount: sub.AmountMinor, Type: stripe.PriceTypeRecurring,
					Recurring: &stripe.PriceRecurring{Interval: stripe.PriceRecurringIntervalMonth, IntervalCount: 1},
				},
			}},
		},
	}
}

// InvoiceObject renders the paid invoice of a simulator subscription's
// current period (its charge kept as inv) as Stripe's invoice object.
func InvoiceObject(sub store.SimSubscription, inv store.SimSession, reason stripe.InvoiceBillingReason) *stripe.Invoice {
	now := time.Now().Unix()
	return &stripe.Invoice{
		ID: inv.ID, Object: "invoice",
		Customer:            &stripe.Customer{ID: sub.CustomerID},
		Subscription:        &stripe.Subscription{ID: sub.ID},
		SubscriptionDetails: &stripe.InvoiceSubscriptionDetails{Metadata: sub.Metadata},
		BillingReason:       reason,
		AmountDue:           inv.AmountMinor, AmountPaid: inv.AmountMinor, Subtotal: inv.AmountMinor, Total: inv.AmountMinor,
		Currency:      stripe.Currency(inv.Currency),
		Paid:          true,
		Status:        stripe.InvoiceStatusPaid,
		PaymentIntent: &stripe.PaymentIntent{ID: inv.PaymentIntentID},
		Charge:        &stripe.Charge{ID: "ch_" + strings.TrimPrefix(inv.PaymentIntentID, "pi_")},
		Created:       now,
		Number:        fmt.Sprintf("SIM-%s-%04d", strings.TrimPrefix(sub.ID, "sub_sim_")[:8], sub.Invoices),
		// Stripe's invoice period is the one before it for a renewal; the
		// line says which period it pays for.
		PeriodStart:       sub.CurrentPeriodStart.Unix(),
		PeriodEnd:         sub.CurrentPeriodStart.Unix(),
		StatusTransitions: &stripe.InvoiceStatusTransitions{PaidAt: now, FinalizedAt: now},
		Lines: &stripe.InvoiceLineItemList{
			ListMeta: stripe.ListMeta{URL: "/v1/invoices/" + inv.ID + "/lines"},
			Data: []*stripe.InvoiceLineItem{{
				ID: "il_" + strings.TrimPrefix(inv.ID, "in_"), Object: "line_item", Type: stripe.InvoiceLineItemTypeSubscription,
				Amount: inv.AmountMinor, Currency: stripe.Currency(inv.Currency), Description: sub.Description,
				Period: &stripe.Period{Start: sub.CurrentPeriodStart.Unix(), End: sub.CurrentPeriodEnd.Unix()},
			}},
		},
	}
}
