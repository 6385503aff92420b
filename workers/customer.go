package workers

import (
	"context"
	"errors"
	"fmt"

	"github.com/riverqueue/river"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
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
