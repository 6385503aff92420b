// Package billing talks to Stripe: the Gateway interface, its stripe-go v76
// implementation, the local payments simulator, and the credit-pack
// catalog sync.
package billing

import (
	"context"
	"errors"

	"github.com/quickscale/quickscale/store"
)

// Gateway is the payment provider as QuickScale uses it. Two
// implementations exist: Stripe (stripe-go v76) and the local Simulator.
type Gateway interface {
	// Simulated reports whether payments are simulated locally.
	Simulated() bool
	// CreateCustomer makes a customer for a user.
	CreateCustomer(ctx context.Context, c CustomerParams) (string, error)
	// UpdateCustomerEmail gives a customer the user's new address, so that
	// what the provider sends (its receipts) goes where ours do.
	UpdateCustomerEmail(ctx context.Context, customerID, email string) error
	// CreateCheckoutSession opens a hosted checkout for one pack.
	CreateCheckoutSession(ctx context.Context, p CheckoutParams) (CheckoutSession, error)
	// ExpireCheckoutSession closes an open checkout (the buyer cancelled
	// it): it can no longer be paid, and the provider then sends
	// checkout.session.expired, which marks the payment expired. A session
	// completed meanwhile (paid or declined) is ErrCheckoutNotOpen, one
	// expired already ErrCheckoutExpired.
	ExpireCheckoutSession(ctx context.Context, id string) error
	// Refund asks the provider to refund part or all of a paid payment.
	// The provider later sends charge.refunded, which records the refund
	// and takes its share of the credits back. A request repeated under
	// the same idempotency key answers the same refund. A refund the
	// provider refuses (more than is left, a payment not paid) is a
	// *RefundRefusedError saying why.
	Refund(ctx context.Context, r RefundParams) (string, error)
	// CreateSubscriptionCheckout opens a hosted checkout that starts a
	// monthly subscription to a plan.
	CreateSubscriptionCheckout(ctx context.Context, p SubscriptionCheckoutParams) (CheckoutSession, error)
	// SetCancelAtPeriodEnd sets whether a subscription ends when its
	// current period does (true: it does not renew; false: it renews
	// again). The provider then sends customer.subscription.updated.
	SetCancelAtPeriodEnd(ctx context.Context, subscriptionID string, cancel bool) error
	// ChangeSubscriptionPlan bills a subscription at plan's monthly price
	// from its next renewal on, without proration (the period under way
	// stays as paid). The provider then sends customer.subscription.updated.
	// One ended already is ErrSubscriptionEnded.
	ChangeSubscriptionPlan(ctx context.Context, subscriptionID string, plan store.Plan) error
	// CancelSubscription ends a subscription now (its account was
	// deleted). The provider then sends customer.subscription.deleted. One
	// ended already is ErrSubscriptionEnded.
	CancelSubscription(ctx context.Context, subscriptionID string) error
	// SyncCatalog creates or updates the products and prices of the packs,
	// idempotently, and returns each pack's price id by pack code.
	SyncCatalog(ctx context.Context, packs []store.Pack) (map[string]string, error)
}

// CustomerParams describes a new customer.
type CustomerParams struct {
	UserID int64
	Email  string
}

// CheckoutParams describes a checkout for one credit pack.
type CheckoutParams struct {
	UserID     int64
	CustomerID string
	Pack       store.Pack
	SuccessURL string // may contain {CHECKOUT_SESSION_ID}
	CancelURL  string
	// IdempotencyKey makes a retried request return the same session.
	IdempotencyKey string
}

// SubscriptionCheckoutParams describes a checkout that starts a
// subscription to a plan.
type SubscriptionCheckoutParams struct {
	UserID     int64
	CustomerID string
	Plan       store.Plan
	// Ref is put in the subscription's metadata (MetaSubscriptionRef), so
	// that its invoices find our record before the checkout's completion.
	Ref        string
	SuccessURL string // may contain {CHECKOUT_SESSION_ID}
	CancelURL  string
	// IdempotencyKey makes a retried request return the same session.
	IdempotencyKey string
}

// CheckoutSession is an opened hosted checkout.
type CheckoutSession struct {
	ID  string
	URL string
}

// RefundParams describes a refund support asks for.
type RefundParams struct {
	PaymentIntentID string
	AmountMinor     int64
	// PaymentID and RequestID name our records in the refund's metadata.
	PaymentID, RequestID int64
	IdempotencyKey       string
}

// RefundRefusedError is a refund the provider refused, with its reason as
// the provider gave it.
type RefundRefusedError struct{ Reason string }

func (e *RefundRefusedError) Error() string { return "refund refused: " + e.Reason }

// Metadata keys put on Stripe objects. Fulfilment trusts our own payments
// row, found by session id; metadata only helps people reading Stripe.
const (
	MetaUserID   = "quickscale_user_id"
	MetaPackCode = "quickscale_pack"
	MetaPayment  = "quickscale_payment"
	MetaRequest  = "quickscale_refund_request"
	MetaPlanCode = "quickscale_plan"
	// MetaSubscriptionRef names our subscriptions row (its checkout_ref).
	MetaSubscriptionRef = "quickscale_subscription_ref"
)

// ErrSubscriptionEnded answers a change to a subscription that has ended.
var ErrSubscriptionEnded = errors.New("the subscription has ended")

// ErrCustomerMissing is UpdateCustomerEmail's answer for a customer the
// provider does not have (deleted in its dashboard, or made with other
// keys): no retry can change it.
var ErrCustomerMissing = errors.New("the payment provider has no such customer")

// ErrCheckoutNotOpen is ExpireCheckoutSession's answer for a checkout that
// was completed (paid, or declined) before it could be closed.
var ErrCheckoutNotOpen = errors.New("the checkout is no longer open")

// ErrCheckoutExpired is ExpireCheckoutSession's answer for a checkout that
// is expired already (an earlier cancel whose answer was lost, or its day
// ran out): as closed as the caller wanted.
var ErrCheckoutExpired = errors.New("the checkout is expired already")
