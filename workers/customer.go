package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
)

// SyncCustomerEmailWorker gives a user's payment-provider customer the
// address the user has now (after a change of email), so that the
// provider's own receipts follow ours. A user without a customer yet, or
// deleted since, needs nothing.
type SyncCustomerEmailWorker struct {
	river.WorkerDefaults[jobs.SyncCustomerEmail]
	store   *store.Store
	gateway billing.Gateway
}

// Work implements river.Worker.
func (w *SyncCustomerEmailWorker) Work(ctx context.Context, job *river.Job[jobs.SyncCustomerEmail]) error {
	customer, err := w.store.CustomerID(ctx, job.Args.UserID)
	if err != nil || customer == "" {
		return err
	}
	u, err := w.store.UserByID(ctx, job.Args.UserID)
	if store.ErrorKind(err) == store.KindNotFound {
		return nil
	}
	if err != nil {
		return err
	}
	err = w.gateway.UpdateCustomerEmail(ctx, customer, u.Email)
	if errors.Is(err, billing.ErrCustomerMissing) {
		// Deleted in Stripe's dashboard, or made with other keys: no
		// retry helps. Cancelled, and visible as such in River UI.
		return river.JobCancel(fmt.Errorf("customer of user %d: %w", job.Args.UserID, err))
	}
	if err != nil {
		return fmt.Errorf("customer of user %d: %w", job.Args.UserID, err)
	}
	return nil
}

// CancelSubscriptionWorker ends a subscription at the provider (its
// account was deleted, or it was a second live one). One ended already,
// or never started, needs nothing.
type CancelSubscriptionWorker struct {
	river.WorkerDefaults[jobs.CancelSubscription]
	store   *store.Store
	gateway billing.Gateway
}

// Work implements river.Worker.
func (w *CancelSubscriptionWorker) Work(ctx context.Context, job *river.Job[jobs.CancelSubscription]) error {
	sub, err := w.store.SubscriptionByID(ctx, job.Args.SubscriptionID)
	if errors.Is(err, store.ErrNotFound) {
		return river.JobCancel(fmt.Errorf("subscription %d is not recorded", job.Args.SubscriptionID))
	}
	// Asked even when ours reads canceled (a duplicate is ended here
	// first): the provider answers one ended already as such.
	if err != nil || sub.StripeSubscriptionID == nil {
		return err
	}
	err = w.gateway.CancelSubscription(ctx, *sub.StripeSubscriptionID)
	if err != nil && !errors.Is(err, billing.ErrSubscriptionEnded) {
		return fmt.Errorf("subscription %d: %w", sub.ID, err)
	}
	return nil
}

// CloseCheckoutWorker closes a deleted account's open checkout at the
// provider and records it closed. One no longer open here needs nothing;
// one the provider says was finished (paid, or a bank debit under way) is
// left to its event, which fails it for a refund.
type CloseCheckoutWorker struct {
	river.WorkerDefaults[jobs.CloseCheckout]
	store   *store.Store
	gateway billing.Gateway
	metrics *observability.Metrics
}

// Work implements river.Worker.
func (w *CloseCheckoutWorker) Work(ctx context.Context, job *river.Job[jobs.CloseCheckout]) error {
	if job.Args.SubscriptionID != 0 {
		sub, err := w.store.SubscriptionByID(ctx, job.Args.SubscriptionID)
		if errors.Is(err, store.ErrNotFound) {
			return river.JobCancel(fmt.Errorf("subscription %d is not recorded", job.Args.SubscriptionID))
		}
		if err != nil || sub.Status != store.SubCheckout {
			return err
		}
		if err := w.expire(ctx, sub.CheckoutSessionID); err != nil && !errors.Is(err, billing.ErrCheckoutExpired) {
			return closeErr(err, "plan checkout of subscription", sub.ID)
		}
		return w.store.AbandonSubscriptionCheckoutNow(ctx, sub.ID)
	}
	pay, err := w.store.PaymentByID(ctx, job.Args.PaymentID)
	if errors.Is(err, store.ErrNotFound) {
		return river.JobCancel(fmt.Errorf("payment %d is not recorded", job.Args.PaymentID))
	}
	if err != nil || pay.Status != store.PaymentPending || pay.CheckoutSessionID == "" {
		return err
	}
	err = w.expire(ctx, pay.CheckoutSessionID)
	accepted := err == nil
	if errors.Is(err, billing.ErrCheckoutExpired) {
		err = nil
	}
	if err != nil {
		return closeErr(err, "pack checkout of payment", pay.ID)
	}
	var counted bool
	if err := w.store.InTx(ctx, func(tx pgx.Tx) (err error) {
		_, counted, err = store.MarkPaymentCancelled(ctx, tx, pay.ID, accepted)
		return err
	}); err != nil {
		return err
	}
	if counted && w.metrics != nil {
		w.metrics.Payments.WithLabelValues("pack", store.PaymentExpired, pay.Currency).Inc()
	}
	return nil
}

func (w *CloseCheckoutWorker) expire(ctx context.Context, sessionID string) error {
	return w.gateway.ExpireCheckoutSession(ctx, sessionID)
}

// closeErr is what the job does with the provider's answer: done when the
// checkout was finished there (its event decides), retried otherwise.
func closeErr(err error, what string, id int64) error {
	if errors.Is(err, billing.ErrCheckoutNotOpen) {
		return nil
	}
	return fmt.Errorf("%s %d: %w", what, id, err)
}
