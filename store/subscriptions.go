package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Plan is a monthly subscription plan for sale.
type Plan struct {
	Code             string  `db:"code"`
	Name             string  `db:"name"`
	CreditsPerPeriod int64   `db:"credits_per_period"`
	PriceMinor       int64   `db:"price_minor"`
	Currency         string  `db:"currency"`
	LookupKey        string  `db:"lookup_key"`
	StripePriceID    *string `db:"stripe_price_id"`
	Active           bool    `db:"active"`
	Sort             int     `db:"sort"`
}

const planColumns = `code, name, credits_per_period, price_minor, currency, lookup_key, stripe_price_id, active, sort`

// Plans lists the active plans in display order.
func (s *Store) Plans(ctx context.Context) ([]Plan, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+planColumns+` FROM plans WHERE active ORDER BY sort, credits_per_period`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Plan])
}

// PlanByCode finds an active plan.
func (s *Store) PlanByCode(ctx context.Context, code string) (Plan, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+planColumns+` FROM plans WHERE code = $1 AND active`, code)
	if err != nil {
		return Plan{}, err
	}
	p, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Plan])
	if errors.Is(err, pgx.ErrNoRows) {
		return Plan{}, Errorf(KindNotFound, "No such plan.")
	}
	return p, err
}

// SetPlanPriceID records the Stripe price of a plan after a catalog sync.
func (s *Store) SetPlanPriceID(ctx context.Context, code, priceID string) error {
	_, err := s.pool.Exec(ctx, `UPDATE plans SET stripe_price_id = $2 WHERE code = $1`, code, priceID)
	return err
}

// Subscription statuses.
const (
	SubCheckout  = "checkout"
	SubAbandoned = "abandoned"
	SubActive    = "active"
	SubPastDue   = "past_due"
	SubCanceled  = "canceled"
)

// Subscription is a user's subscription to a plan, from its checkout on.
type Subscription struct {
	ID                   int64      `db:"id"`
	UserID               int64      `db:"user_id"`
	PlanCode             string     `db:"plan_code"`
	PlanName             string     `db:"plan_name"`
	CreditsPerPeriod     int64      `db:"credits_per_period"`
	PriceMinor           int64      `db:"price_minor"`
	Currency             string     `db:"currency"`
	Status               string     `db:"status"`
	CheckoutSessionID    string     `db:"checkout_session_id"`
	CheckoutURL          *string    `db:"checkout_url"`
	CheckoutRef          string     `db:"checkout_ref"`
	CustomerID           string     `db:"customer_id"`
	StripeSubscriptionID *string    `db:"stripe_subscription_id"`
	CurrentPeriodStart   *time.Time `db:"current_period_start"`
	CurrentPeriodEnd     *time.Time `db:"current_period_end"`
	CancelAtPeriodEnd    bool       `db:"cancel_at_period_end"`
	CanceledAt           *time.Time `db:"canceled_at"`
	StateAt              *time.Time `db:"state_at"`
	RenewalSetAt         *time.Time `db:"renewal_set_at"`
	CreatedAt            time.Time  `db:"created_at"`
	UpdatedAt            time.Time  `db:"updated_at"`
	// The plan it switches to from its next renewal, if one is chosen.
	NextPlanCode         *string `db:"next_plan_code"`
	NextPlanName         *string `db:"next_plan_name"`
	NextPriceMinor       *int64  `db:"next_price_minor"`
	NextCreditsPerPeriod *int64  `db:"next_credits_per_period"`
}

// Live reports whether the subscription renews or may still (active, or a
// renewal failing and being retried).
func (s Subscription) Live() bool { return s.Status == SubActive || s.Status == SubPastDue }

const subscriptionColumns = `s.id, s.user_id, s.plan_code, p.name AS plan_name, s.credits_per_period, s.price_minor, s.currency, s.status,
       s.checkout_session_id, s.checkout_url, s.checkout_ref, s.customer_id, s.stripe_subscription_id, s.current_period_start,
       s.current_period_end, s.cancel_at_period_end, s.canceled_at, s.state_at, s.renewal_set_at, s.created_at, s.updated_at,
       s.next_plan_code, (SELECT name FROM plans WHERE code = s.next_plan_code) AS next_plan_name, s.next_price_minor, s.next_credits_per_period`

const subscriptionFrom = ` FROM subscriptions s JOIN plans p ON p.code = s.plan_code `

// ScheduleSwitch makes a live subscription switch to plan from its next
// renewal (plan its own plan: it stays on it). Under the subscription's
// lock, so that two changes at once apply in turn, tell gives the change
// to the provider first; it is recorded only if tell succeeds, and
// nothing is told or recorded when nothing would change (Changed false).
// A plan in another currency or at the same price is a KindConflict; an
// ended subscription ErrNotFound.
func (s *Store) ScheduleSwitch(ctx context.Context, id int64, plan Plan, tell func() error) (res SwitchResult, err error) {
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		res = SwitchResult{}
		var current, currency, status string
		var price, credits int64
		var next *string
		var nextPrice, nextCredits *int64
		err := tx.QueryRow(ctx, `SELECT plan_code, price_minor, credits_per_period, currency, next_plan_code, next_price_minor, next_credits_per_period, status
  FROM subscriptions WHERE id = $1 AND status IN ('active', 'past_due') FOR NO KEY UPDATE`, id).Scan(&current, &price, &credits, &currency, &next, &nextPrice, &nextCredits, &status)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		res.Current = BilledPlan{Code: current, PriceMinor: price, CreditsPerPeriod: credits}
		if next != nil {
			res.PrevNext = &BilledPlan{Code: *next, PriceMinor: *nextPrice, CreditsPerPeriod: *nextCredits}
		}
		stay := plan.Code == current
		switch {
		case status == SubPastDue:
			// Its overdue invoice bills what it bills, whatever is chosen
			// now (read under the lock: the page may have read it active).
			return ErrOverdue
		case stay && next != nil && *next == current:
			// The provider raised (or lowered) this plan's price from the
			// next renewal: not a switch the customer can undo here.
			return nil
		case plan.Currency != currency:
			return Errorf(KindConflict, "That plan is sold in another currency.")
		case !stay && plan.PriceMinor == price:
			return Errorf(KindConflict, "That plan costs the same as yours, so it cannot be told apart on your invoices.")
		case stay && next == nil, !stay && next != nil && *next == plan.Code:
			return nil
		}
		if err := tell(); err != nil {
			return err
		}
		if stay {
			_, err = tx.Exec(ctx, `UPDATE subscriptions SET next_plan_code = NULL, next_price_minor = NULL, next_credits_per_period = NULL,
       renewal_set_at = date_trunc('second', now()), updated_at = now() WHERE id = $1`, id)
		} else {
			_, err = tx.Exec(ctx, `UPDATE subscriptions SET next_plan_code = $2, next_price_minor = $3, next_credits_per_period = $4,
       renewal_set_at = date_trunc('second', now()), updated_at = now() WHERE id = $1`, id, plan.Code, plan.PriceMinor, plan.CreditsPerPeriod)
		}
		res.Changed = err == nil
		return err
	})
	return res, err
}

// ErrOverdue refuses a plan change while the plan's payment is overdue.
var ErrOverdue = Errorf(KindConflict, "This month's payment for your plan is overdue: you can change plans once it has gone through.")

// SwitchResult is what ScheduleSwitch did: whether it changed the plan
// chosen, the plan it is on and the plan chosen before (nil: none), read
// under the lock, so that a change the provider took but that could not be
// recorded is undone to them.
type SwitchResult struct {
	Changed  bool
	Current  BilledPlan
	PrevNext *BilledPlan
}

// MarkRenewalSet dates the customer's last renewal choice now (whole
// seconds): the provider's events of that second or the next do not
// change the plan chosen or the end (ApplySubscriptionState).
func (s *Store) MarkRenewalSet(ctx context.Context, id int64) error {
	_, err := s.pool.Exec(ctx, `UPDATE subscriptions SET renewal_set_at = date_trunc('second', now()), updated_at = now() WHERE id = $1`, id)
	return err
}

// BilledPlan is the plan a paid invoice paid for.
type BilledPlan struct {
	Code             string
	PriceMinor       int64
	CreditsPerPeriod int64
}

// ApplyBilledPlan makes the plan an invoice paid for the subscription's
// plan, when it is another (or another price), and returns the
// subscription. The plan chosen for the renewals after it stays chosen:
// the next plan, or the plan it was on, unless that is the plan billed or
// the subscription has ended (a last invoice paid late). The provider's
// subscription events then correct that choice if it bills another
// (ApplySubscriptionState's BillsPlan).
func ApplyBilledPlan(ctx context.Context, tx pgx.Tx, id int64, b BilledPlan) (Subscription, error) {
	_, err := tx.Exec(ctx, `
UPDATE subscriptions SET
       next_plan_code = CASE WHEN (coalesce(next_plan_code, plan_code), coalesce(next_price_minor, price_minor)) = ($2, $3)
                                  OR status NOT IN ('active', 'past_due') THEN NULL
                             ELSE coalesce(next_plan_code, plan_code) END,
       next_price_minor = CASE WHEN (coalesce(next_plan_code, plan_code), coalesce(next_price_minor, price_minor)) = ($2, $3)
                                    OR status NOT IN ('active', 'past_due') THEN NULL
                               ELSE coalesce(next_price_minor, price_minor) END,
       next_credits_per_period = CASE WHEN (coalesce(next_plan_code, plan_code), coalesce(next_price_minor, price_minor)) = ($2, $3)
                                           OR status NOT IN ('active', 'past_due') THEN NULL
                                      ELSE coalesce(next_credits_per_period, credits_per_period) END,
       plan_code = $2, price_minor = $3, credits_per_period = $4, updated_at = now()
 WHERE id = $1 AND (plan_code <> $2 OR price_minor <> $3 OR credits_per_period <> $4)`, id, b.Code, b.PriceMinor, b.CreditsPerPeriod)
	if err != nil {
		return Subscription{}, err
	}
	return oneSubscription(tx.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.id = $1`, id))
}

func oneSubscription(rows pgx.Rows, err error) (Subscription, error) {
	if err != nil {
		return Subscription{}, err
	}
	sub, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Subscription])
	if errors.Is(err, pgx.ErrNoRows) {
		return Subscription{}, ErrNotFound
	}
	return sub, err
}

// NewSubscription records a subscription checkout at its opening.
type NewSubscription struct {
	UserID            int64
	Plan              Plan
	CheckoutSessionID string
	CheckoutURL       string
	CheckoutRef       string
	CustomerID        string
}

// CreateSubscription records a subscription whose checkout was just
// opened. A session recorded before (a retried request answered from the
// provider's idempotency) is a KindConflict; a deleted account
// KindNotFound.
func (s *Store) CreateSubscription(ctx context.Context, n NewSubscription) (Subscription, error) {
	var id int64
	err := s.pool.QueryRow(ctx, `
INSERT INTO subscriptions (user_id, plan_code, credits_per_period, price_minor, currency, checkout_session_id, checkout_url,
                           checkout_ref, customer_id)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM users u WHERE u.id = $1 AND u.deleted_at IS NULL FOR SHARE
RETURNING id`, n.UserID, n.Plan.Code, n.Plan.CreditsPerPeriod, n.Plan.PriceMinor, n.Plan.Currency, n.CheckoutSessionID,
		n.CheckoutURL, n.CheckoutRef, n.CustomerID).Scan(&id)
	switch {
	case isUniqueViolation(err, "subscriptions_checkout_session_id_key"):
		return Subscription{}, Errorf(KindConflict, "This checkout session is recorded already.")
	case errors.Is(err, pgx.ErrNoRows):
		return Subscription{}, Errorf(KindNotFound, "This account was deleted.")
	case err != nil:
		return Subscription{}, err
	}
	return s.UserSubscription(ctx, n.UserID, id)
}

// UserSubscription finds one subscription of the user; another user's is
// simply not found.
func (s *Store) UserSubscription(ctx context.Context, userID, id int64) (Subscription, error) {
	return oneSubscription(s.pool.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.user_id = $1 AND s.id = $2`, userID, id))
}

// UserSubscriptionBySession finds the user's subscription opened by a
// checkout session.
func (s *Store) UserSubscriptionBySession(ctx context.Context, userID int64, sessionID string) (Subscription, error) {
	return oneSubscription(s.pool.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.user_id = $1 AND s.checkout_session_id = $2`, userID, sessionID))
}

// LiveSubscription returns the user's live subscription (active or past
// due); found is false when there is none.
func (s *Store) LiveSubscription(ctx context.Context, userID int64) (sub Subscription, found bool, err error) {
	sub, err = oneSubscription(s.pool.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.user_id = $1 AND s.status IN ('active', 'past_due')`, userID))
	if errors.Is(err, ErrNotFound) {
		return sub, false, nil
	}
	return sub, err == nil, err
}

// SubscriptionCheckoutOpenFor is how long a subscription checkout counts
// as open (Stripe's sessions expire after 24 hours).
const SubscriptionCheckoutOpenFor = SimSessionExpiry

// OpenSubscriptionCheckout returns the user's newest subscription checkout
// still open (opened within its day and not completed or expired).
func (s *Store) OpenSubscriptionCheckout(ctx context.Context, userID int64) (sub Subscription, found bool, err error) {
	sub, err = oneSubscription(s.pool.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`
 WHERE s.user_id = $1 AND s.status = 'checkout' AND s.created_at > now() - $2::interval ORDER BY s.id DESC LIMIT 1`,
		userID, SubscriptionCheckoutOpenFor.String()))
	if errors.Is(err, ErrNotFound) {
		return sub, false, nil
	}
	return sub, err == nil, err
}

// SubscriptionsOfUser lists a user's subscriptions that started (not
// checkouts left unpaid), newest first, at most limit.
func (s *Store) SubscriptionsOfUser(ctx context.Context, userID int64, limit int) ([]Subscription, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`
 WHERE s.user_id = $1 AND s.stripe_subscription_id IS NOT NULL ORDER BY s.id DESC LIMIT $2`, userID, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Subscription])
}

// LockSubscriptionBySession loads the subscription a checkout session
// opened, for update in tx.
func LockSubscriptionBySession(ctx context.Context, tx pgx.Tx, sessionID string) (Subscription, error) {
	return oneSubscription(tx.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.checkout_session_id = $1 FOR NO KEY UPDATE OF s`, sessionID))
}

// LockSubscription loads a subscription for update in tx by Stripe's id
// or, not linked to it yet, by the reference its checkout put in the
// subscription's metadata.
func LockSubscription(ctx context.Context, tx pgx.Tx, stripeID, ref string) (Subscription, error) {
	sub, err := oneSubscription(tx.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.stripe_subscription_id = $1 FOR NO KEY UPDATE OF s`, stripeID))
	if !errors.Is(err, ErrNotFound) || ref == "" {
		return sub, err
	}
	return oneSubscription(tx.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.checkout_ref = $1 FOR NO KEY UPDATE OF s`, ref))
}

// ErrSubscriptionLinkedElsewhere answers linking a subscription already
// linked to another of the provider's subscriptions.
var ErrSubscriptionLinkedElsewhere = errors.New("the subscription is linked to another provider subscription")

// LinkSubscription records the provider's id of a subscription (once).
func LinkSubscription(ctx context.Context, tx pgx.Tx, sub *Subscription, stripeID string) error {
	if sub.StripeSubscriptionID != nil {
		if *sub.StripeSubscriptionID != stripeID {
			return fmt.Errorf("%w (%s, not %s)", ErrSubscriptionLinkedElsewhere, *sub.StripeSubscriptionID, stripeID)
		}
		return nil
	}
	if _, err := tx.Exec(ctx, `UPDATE subscriptions SET stripe_subscription_id = $2, updated_at = now() WHERE id = $1`, sub.ID, stripeID); err != nil {
		return err
	}
	sub.StripeSubscriptionID = &stripeID
	return nil
}

// StartSubscription marks a subscription whose checkout was paid as
// active; a subscription past its checkout (its events came first) is
// left as they made it. It reports whether it changed it.
func StartSubscription(ctx context.Context, tx pgx.Tx, id int64) (bool, error) {
	tag, err := tx.Exec(ctx, `UPDATE subscriptions SET status = 'active', updated_at = now() WHERE id = $1 AND status IN ('checkout', 'abandoned')`, id)
	return tag.RowsAffected() == 1, err
}

// AbandonSubscriptionCheckout marks a subscription whose checkout expired
// unpaid; it reports whether it was still at its checkout.
func AbandonSubscriptionCheckout(ctx context.Context, tx pgx.Tx, id int64) (bool, error) {
	tag, err := tx.Exec(ctx, `UPDATE subscriptions SET status = 'abandoned', updated_at = now() WHERE id = $1 AND status = 'checkout'`, id)
	return tag.RowsAffected() == 1, err
}

// SubscriptionState is the provider's subscription as one event shows it.
type SubscriptionState struct {
	Status            string // SubActive, SubPastDue or SubCanceled
	PeriodStart       *time.Time
	PeriodEnd         *time.Time
	CancelAtPeriodEnd bool
	CanceledAt        *time.Time
	// At is the provider's time of the event; an event older than the
	// state recorded changes nothing.
	At time.Time
	// BillsPlan is the plan the provider bills from the next renewal, read
	// from the subscription's price when it is a plan's: the plan chosen
	// for next renewals follows it (none when it is the plan it is on).
	BillsPlan *BilledPlan
}

// ApplySubscriptionState records the provider's subscription state unless
// a newer event's is recorded already (events arrive in any order; the
// provider's times are whole seconds, and events of the same second apply
// in the order they are processed). The period only moves forward; an end
// (canceled) applies whatever its time, and a canceled subscription stays
// canceled. Whether it ends at its period's end is not changed by an event
// of the second the user last changed it here, the next one (a second's
// boundary and the clocks' drift) or before (RecordCancelAtPeriodEnd).
// It reports whether it applied it.
func ApplySubscriptionState(ctx context.Context, tx pgx.Tx, id int64, st SubscriptionState) (bool, error) {
	switch st.Status {
	case SubActive, SubPastDue, SubCanceled:
	default:
		return false, fmt.Errorf("not a subscription state: %q", st.Status)
	}
	var billsCode *string
	var billsPrice, billsCredits *int64
	if b := st.BillsPlan; b != nil {
		billsCode, billsPrice, billsCredits = &b.Code, &b.PriceMinor, &b.CreditsPerPeriod
	}
	var canceledAt *time.Time
	if st.Status == SubCanceled {
		at := st.At
		if st.CanceledAt != nil {
			at = *st.CanceledAt
		}
		canceledAt = &at
	}
	tag, err := tx.Exec(ctx, `
UPDATE subscriptions SET
       status = CASE WHEN status = 'canceled' THEN 'canceled' ELSE $2 END,
       canceled_at = CASE WHEN status = 'canceled' THEN canceled_at ELSE $6 END,
       next_plan_code = CASE WHEN $2 = 'canceled' OR status = 'canceled' THEN NULL
                             WHEN $8::text IS NULL OR (renewal_set_at IS NOT NULL AND $7 <= renewal_set_at + interval '1 second') THEN next_plan_code
                             WHEN $8 = plan_code AND $9 = price_minor THEN NULL ELSE $8 END,
       next_price_minor = CASE WHEN $2 = 'canceled' OR status = 'canceled' THEN NULL
                               WHEN $8::text IS NULL OR (renewal_set_at IS NOT NULL AND $7 <= renewal_set_at + interval '1 second') THEN next_price_minor
                               WHEN $8 = plan_code AND $9 = price_minor THEN NULL ELSE $9::bigint END,
       next_credits_per_period = CASE WHEN $2 = 'canceled' OR status = 'canceled' THEN NULL
                                      WHEN $8::text IS NULL OR (renewal_set_at IS NOT NULL AND $7 <= renewal_set_at + interval '1 second') THEN next_credits_per_period
                                      WHEN $8 = plan_code AND $9 = price_minor THEN NULL ELSE $10::bigint END,
       current_period_start = CASE WHEN $4::timestamptz IS NOT NULL AND (current_period_end IS NULL OR $4 > current_period_end) THEN $3 ELSE current_period_start END,
       current_period_end = CASE WHEN $4::timestamptz IS NOT NULL AND (current_period_end IS NULL OR $4 > current_period_end) THEN $4 ELSE current_period_end END,
       cancel_at_period_end = CASE WHEN renewal_set_at IS NOT NULL AND $7 <= renewal_set_at + interval '1 second' THEN cancel_at_period_end ELSE $5 END,
       state_at = greatest(state_at, $7), updated_at = now()
 WHERE id = $1 AND (state_at IS NULL OR state_at <= $7 OR $2 = 'canceled')`,
		id, st.Status, st.PeriodStart, st.PeriodEnd, st.CancelAtPeriodEnd, canceledAt, st.At, billsCode, billsPrice, billsCredits)
	return tag.RowsAffected() == 1, err
}

// ExtendSubscriptionPeriod records a paid period (from its invoice): the
// subscription's period moves to it if it is later, and a subscription at
// its checkout or past due is active again.
func ExtendSubscriptionPeriod(ctx context.Context, tx pgx.Tx, id int64, start, end time.Time) error {
	_, err := tx.Exec(ctx, `
UPDATE subscriptions SET
       status = CASE WHEN status IN ('checkout', 'abandoned', 'past_due') THEN 'active' ELSE status END,
       current_period_start = CASE WHEN current_period_end IS NULL OR $3 > current_period_end THEN $2 ELSE current_period_start END,
       current_period_end = CASE WHEN current_period_end IS NULL OR $3 > current_period_end THEN $3 ELSE current_period_end END,
       updated_at = now()
 WHERE id = $1`, id, start, end)
	return err
}

// InvoicePayment is a paid subscription invoice.
type InvoicePayment struct {
	Subscription    Subscription
	InvoiceID       string
	PaymentIntentID string
	AmountMinor     int64
	Currency        string
	PeriodStart     time.Time
	PeriodEnd       time.Time
	GrantID         int64
	PaidAt          time.Time
}

// InvoiceRecorded reports whether an invoice's payment is recorded.
func InvoiceRecorded(ctx context.Context, tx pgx.Tx, invoiceID string) (bool, error) {
	var found bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM payments WHERE invoice_id = $1)`, invoiceID).Scan(&found)
	return found, err
}

// StoppedHereAt returns, in tx, when a subscription was ended here at once
// as a second live plan (nil: it was not).
func StoppedHereAt(ctx context.Context, tx pgx.Tx, subscriptionID int64) (*time.Time, error) {
	var at *time.Time
	err := tx.QueryRow(ctx, `SELECT stopped_here_at FROM subscriptions WHERE id = $1`, subscriptionID).Scan(&at)
	return at, err
}

// Why a paid invoice's money is the customer's due (payments.owed_back).
const (
	OwedBackDeletedBuyer = "deleted_buyer"
	OwedBackStoppedPlan  = "stopped_plan"
)

// MarkOwedBack records, in tx, why a paid invoice's money is the
// customer's due.
func MarkOwedBack(ctx context.Context, tx pgx.Tx, paymentID int64, why string) error {
	_, err := tx.Exec(ctx, `UPDATE payments SET owed_back = $2 WHERE id = $1`, paymentID, why)
	return err
}

// InvoicePaymentOf returns the payment recorded for a paid invoice, locked
// in tx (ErrNotFound: none).
func InvoicePaymentOf(ctx context.Context, tx pgx.Tx, invoiceID string) (Payment, error) {
	return onePayment(tx.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE invoice_id = $1 FOR UPDATE`, invoiceID))
}

// RecordInvoicePayment records a paid invoice as a succeeded payment with
// the grant it produced; an invoice recorded before is returned with
// created false.
func RecordInvoicePayment(ctx context.Context, tx pgx.Tx, ip InvoicePayment) (Payment, bool, error) {
	var pi *string
	if ip.PaymentIntentID != "" {
		pi = &ip.PaymentIntentID
	}
	sub := ip.Subscription
	pay, err := onePayment(tx.Query(ctx, `
INSERT INTO payments (user_id, product, plan_code, subscription_id, invoice_id, period_start, period_end, credits, amount_minor,
                      currency, status, customer_id, payment_intent_id, grant_id, paid_at, buyer_email)
SELECT $1, 'subscription', $2, $3, $4, $5, $6, $7, $8, $9, 'succeeded', $10, $11, $12, least(now(), $13),
       CASE WHEN u.deleted_at IS NULL THEN u.email END
  FROM users u WHERE u.id = $1
    ON CONFLICT (invoice_id) DO NOTHING
RETURNING `+paymentColumns,
		sub.UserID, sub.PlanCode, sub.ID, ip.InvoiceID, ip.PeriodStart, ip.PeriodEnd, sub.CreditsPerPeriod, ip.AmountMinor,
		ip.Currency, sub.CustomerID, pi, ip.GrantID, ip.PaidAt))
	if errors.Is(err, ErrNotFound) {
		pay, err = onePayment(tx.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE invoice_id = $1`, ip.InvoiceID))
		return pay, false, err
	}
	return pay, err == nil, err
}

// PaymentsOfSubscription lists a subscription's paid invoices, newest
// first, at most limit.
func (s *Store) PaymentsOfSubscription(ctx context.Context, subscriptionID int64, limit int) ([]Payment, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE subscription_id = $1 ORDER BY id DESC LIMIT $2`, subscriptionID, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Payment])
}

// SubscriptionByID loads a subscription.
func (s *Store) SubscriptionByID(ctx context.Context, id int64) (Subscription, error) {
	return oneSubscription(s.pool.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`WHERE s.id = $1`, id))
}

// LiveSubscriptionsOfUser lists the user's subscriptions that may still
// renew (live, or started and not known to have ended), in tx: what
// deleting the account must cancel at the provider.
func LiveSubscriptionsOfUser(ctx context.Context, tx pgx.Tx, userID int64) ([]int64, error) {
	rows, err := tx.Query(ctx, `SELECT id FROM subscriptions WHERE user_id = $1 AND stripe_subscription_id IS NOT NULL AND status <> 'canceled'`, userID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// RecordCancelAtPeriodEnd records a change of renewal the provider has
// accepted, before its event arrives: as of this second, so that an older
// event, or one of the same second (a Cancel and a Keep clicked within a
// second, their events applied in either order), does not undo it.
func (s *Store) RecordCancelAtPeriodEnd(ctx context.Context, id int64, cancel bool) error {
	return RecordCancelAtPeriodEndIn(ctx, s.pool, id, cancel)
}

// RecordCancelAtPeriodEndIn is RecordCancelAtPeriodEnd in db (a
// transaction that also audits it, for support's change).
func RecordCancelAtPeriodEndIn(ctx context.Context, db DBTX, id int64, cancel bool) error {
	_, err := db.Exec(ctx, `UPDATE subscriptions SET cancel_at_period_end = $2,
       state_at = greatest(state_at, date_trunc('second', now())), renewal_set_at = date_trunc('second', now()), updated_at = now()
 WHERE id = $1 AND status IN ('active', 'past_due')`, id, cancel)
	return err
}

// AbandonSubscriptionCheckoutNow marks a subscription checkout closed at
// the provider at the buyer's request (before its expiry event comes).
func (s *Store) AbandonSubscriptionCheckoutNow(ctx context.Context, id int64) error {
	_, err := s.pool.Exec(ctx, `UPDATE subscriptions SET status = 'abandoned', updated_at = now() WHERE id = $1 AND status = 'checkout'`, id)
	return err
}

// OtherLiveSubscription reports whether the user has a live subscription
// besides id (in tx, after id's row is locked).
func OtherLiveSubscription(ctx context.Context, tx pgx.Tx, userID, id int64) (bool, error) {
	var other bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM subscriptions WHERE user_id = $1 AND id <> $2 AND status IN ('active', 'past_due'))`, userID, id).Scan(&other)
	return other, err
}

// EndDuplicateSubscription ends a subscription started while its user had
// another live one (two checkouts paid): canceled now, before it could
// start. It reports whether it changed it.
func EndDuplicateSubscription(ctx context.Context, tx pgx.Tx, id int64) (bool, error) {
	tag, err := tx.Exec(ctx, `UPDATE subscriptions SET status = 'canceled', canceled_at = now(), stopped_here_at = now(), updated_at = now(),
       next_plan_code = NULL, next_price_minor = NULL, next_credits_per_period = NULL
 WHERE id = $1 AND status <> 'canceled' AND stripe_subscription_id IS NOT NULL`, id)
	return tag.RowsAffected() == 1, err
}

// LockBuyer locks a subscription's user in tx and reports whether the
// account was deleted. A deletion running meanwhile is waited for (and
// then seen), or waits for tx (and then sees what tx linked and
// recorded); and the events of one user's subscriptions are applied one
// at a time, so that two of them cannot both find no other live one and
// both start (a share lock let them: one then failed on the one-live
// rule, its paid invoice without credits).
func LockBuyer(ctx context.Context, tx pgx.Tx, userID int64) (deleted bool, err error) {
	err = tx.QueryRow(ctx, `SELECT deleted_at IS NOT NULL FROM users WHERE id = $1 FOR NO KEY UPDATE`, userID).Scan(&deleted)
	return deleted, err
}

// OpenSubscriptionCheckouts lists the user's subscription checkouts still
// open (within their day), for closing them.
// OpenCheckoutsOf lists, in tx, a user's checkouts still open: its pack
// payments pending at a checkout page and its plans' checkouts.
func OpenCheckoutsOf(ctx context.Context, tx pgx.Tx, userID int64) (payments, subscriptions []int64, err error) {
	rows, err := tx.Query(ctx, `
SELECT id, 'pack' FROM payments WHERE user_id = $1 AND status = 'pending' AND checkout_session_id IS NOT NULL
UNION ALL
SELECT id, 'plan' FROM subscriptions WHERE user_id = $1 AND status = 'checkout' AND created_at > now() - $2::interval`,
		userID, SubscriptionCheckoutOpenFor.String())
	if err != nil {
		return nil, nil, err
	}
	var id int64
	var kind string
	_, err = pgx.ForEachRow(rows, []any{&id, &kind}, func() error {
		if kind == "pack" {
			payments = append(payments, id)
		} else {
			subscriptions = append(subscriptions, id)
		}
		return nil
	})
	return payments, subscriptions, err
}

func (s *Store) OpenSubscriptionCheckouts(ctx context.Context, userID int64) ([]Subscription, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`
 WHERE s.user_id = $1 AND s.status = 'checkout' AND s.created_at > now() - $2::interval ORDER BY s.id`, userID, SubscriptionCheckoutOpenFor.String())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Subscription])
}
