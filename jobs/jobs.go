// Package jobs holds the River job arguments: the contract between the code
// that enqueues work (api, web) and the workers that do it. It imports
// nothing from the project.
package jobs

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Queues, named by latency class.
const (
	QueueWebhooks    = "webhooks"    // Stripe events: money lands here, keep it short
	QueueEmail       = "email"       // outgoing mail, may wait on a slow SMTP server
	QueueDefault     = "default"     // everything else users wait for
	QueueMaintenance = "maintenance" // periodic sweeps and rollups
)

// Queues lists every queue with the number of jobs one worker process runs
// at once on it.
func Queues() map[string]int {
	return map[string]int{
		QueueWebhooks:    20,
		QueueEmail:       10,
		QueueDefault:     10,
		QueueMaintenance: 2,
	}
}

// activeStates makes a job unique while one like it is waiting or running,
// but lets it be enqueued again once the earlier one finished.
var activeStates = []rivertype.JobState{
	rivertype.JobStateAvailable,
	rivertype.JobStatePending,
	rivertype.JobStateRetryable,
	rivertype.JobStateRunning,
	rivertype.JobStateScheduled,
}

func uniqueWhileActive() river.UniqueOpts {
	return river.UniqueOpts{ByArgs: true, ByState: activeStates}
}

// SendEmail renders one templated email and sends it.
type SendEmail struct {
	// Template names the message: see workers/templates/email.
	Template string `json:"template"`
	To       string `json:"to"`
	// ReplyTo, when set, is where a reply goes (the contact form's
	// sender, not the no-reply sender address).
	ReplyTo string `json:"reply_to,omitempty"`
	// Data fills the template.
	Data map[string]string `json:"data,omitempty"`
	// Link, when set, has the worker issue a one-time token just before
	// sending and put its link in Data["Link"]: the token exists only
	// hashed in the database and in the email, never in job arguments.
	Link *OneTimeLink `json:"link,omitempty"`
}

// OneTimeLink describes the token a SendEmail job issues.
type OneTimeLink struct {
	UserID  int64  `json:"user_id"`
	Purpose string `json:"purpose"` // a store token purpose
	Email   string `json:"email"`   // the address the token proves
	Path    string `json:"path"`    // e.g. /verify; the token goes in ?token=
}

// Kind implements river.JobArgs.
func (SendEmail) Kind() string { return "send_email" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (SendEmail) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueEmail, MaxAttempts: 12}
}

// Email templates.
const (
	EmailVerify          = "verify_email"
	EmailSignupExisting  = "signup_existing"
	EmailChangeToTaken   = "change_to_taken"
	EmailAddressChanged  = "address_changed"
	EmailResetPassword   = "reset_password"
	EmailChangeEmail     = "change_email"
	EmailWelcome         = "welcome"
	EmailContact         = "contact"
	EmailPasswordChanged = "password_changed"
	EmailPurchase        = "purchase_confirmation"
	EmailRefund          = "refund"
	EmailPaymentFailed   = "payment_failed"
	// EmailSubscriptionPaid and EmailSubscriptionFailed are about a
	// subscription's invoice: paid (its credits added) or not.
	EmailSubscriptionPaid   = "subscription_paid"
	EmailSubscriptionFailed = "subscription_payment_failed"
	// EmailSubscriptionChanged confirms a change the customer made to
	// their plan's renewal: cancel, keep, switch or stay.
	EmailSubscriptionChanged = "subscription_changed"
	// EmailSubscriptionEnded tells the customer their plan has ended: as
	// they asked, after its payment failed, or at the provider.
	EmailSubscriptionEnded = "subscription_ended"
	// EmailRefundFailed tells the customer a refund they were told of
	// did not reach them (their card or bank refused it).
	EmailRefundFailed = "refund_failed"
)

// StripeEvent applies one stored Stripe event.
type StripeEvent struct {
	EventID string `json:"event_id"`
}

// Kind implements river.JobArgs.
func (StripeEvent) Kind() string { return "stripe_event" }

// InsertOpts implements river.JobArgsWithInsertOpts. Not unique in River:
// ingest enqueues only when the event's row is new (its id is the key),
// and a second job for one event (an admin's re-process) is harmless
// because processing is idempotent; River's unique check would cost every
// webhook a unique-key hash and index.
func (StripeEvent) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueWebhooks, MaxAttempts: 25}
}

// ExpireCredits sweeps grants whose expiry has passed.
type ExpireCredits struct{}

// Kind implements river.JobArgs.
func (ExpireCredits) Kind() string { return "expire_credits" }

// InsertOpts implements river.JobArgsWithInsertOpts. Unique per scheduled
// minute while waiting or running, not across minutes: the job of a worker
// that died mid-sweep stays "running" until River rescues it (15 minutes),
// and must not hold back the sweeps scheduled meanwhile. Sweeps do not
// overlap all the same: a sweep holds a lock of the database while it runs
// (store.ErrSweepRunning), which the dead worker's connection gave back.
func (ExpireCredits) InsertOpts() river.InsertOpts {
	u := uniqueWhileActive()
	u.ByPeriod = time.Minute
	return river.InsertOpts{Queue: QueueMaintenance, MaxAttempts: 3, UniqueOpts: u}
}

// SyncCustomerEmail gives the user's Stripe customer the user's current
// address (after a change of email).
type SyncCustomerEmail struct {
	UserID int64 `json:"user_id"`
}

// Kind implements river.JobArgs.
func (SyncCustomerEmail) Kind() string { return "sync_customer_email" }

// InsertOpts implements river.JobArgsWithInsertOpts: retried for about a
// day and a half (River's backoff, attempt^4 seconds: 35 hours over 15
// attempts) while Stripe cannot be reached. Not unique: each run sends the address the
// user has when it runs, so a change made while one runs gets its own.
func (SyncCustomerEmail) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueDefault, MaxAttempts: 15}
}

// RollupUsage recomputes the daily usage analytics (store.RollupUsage).
type RollupUsage struct{}

// Kind implements river.JobArgs.
func (RollupUsage) Kind() string { return "rollup_usage" }

// InsertOpts implements river.JobArgsWithInsertOpts: one waiting or running
// at a time (runs at once would only take turns on the rollup's state).
func (RollupUsage) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueMaintenance, MaxAttempts: 3, UniqueOpts: uniqueWhileActive()}
}

// RollupInterval is how often RollupUsage runs.
const RollupInterval = 5 * time.Minute

// PruneExpired deletes expired sessions, tokens and rate-limit windows.
type PruneExpired struct{}

// Kind implements river.JobArgs.
func (PruneExpired) Kind() string { return "prune_expired" }

// InsertOpts implements river.JobArgsWithInsertOpts.
func (PruneExpired) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueMaintenance, MaxAttempts: 3, UniqueOpts: uniqueWhileActive()}
}

// PruneInterval is how often PruneExpired runs.
const PruneInterval = time.Hour

// Inserter enqueues jobs inside the caller's transaction, so that a job
// exists exactly when the writes that caused it commit. *river.Client[pgx.Tx]
// satisfies it.
type Inserter interface {
	InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error)
	InsertManyTx(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error)
}

// CloseCheckout closes at the payment provider a checkout a deleted
// account left open, so that it cannot be paid: a pack's (PaymentID) or a
// plan's (SubscriptionID). The deletion enqueues it in its transaction
// and tries at once too; the job is what retries when the provider could
// not be reached.
type CloseCheckout struct {
	PaymentID      int64 `json:"payment_id,omitempty"`
	SubscriptionID int64 `json:"subscription_id,omitempty"`
}

// Kind implements river.JobArgs.
func (CloseCheckout) Kind() string { return "close_checkout" }

// InsertOpts implements river.JobArgsWithInsertOpts: retried for about a
// day and a half (a checkout stays payable for a day at most).
func (CloseCheckout) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueDefault, MaxAttempts: 15, UniqueOpts: uniqueWhileActive()}
}

// CancelSubscription ends a subscription at the payment provider now (its
// account was deleted), so that it is not renewed.
type CancelSubscription struct {
	SubscriptionID int64 `json:"subscription_id"`
}

// Kind implements river.JobArgs.
func (CancelSubscription) Kind() string { return "cancel_subscription" }

// InsertOpts implements river.JobArgsWithInsertOpts: retried for about a
// day and a half while the provider cannot be reached (well within a
// month's period, before any renewal); one waiting or running a
// subscription (several events may ask for it).
func (CancelSubscription) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: QueueDefault, MaxAttempts: 15, UniqueOpts: uniqueWhileActive()}
}
