package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Pack is a credit pack for sale.
type Pack struct {
	Code          string  `db:"code"`
	Name          string  `db:"name"`
	Credits       int64   `db:"credits"`
	PriceMinor    int64   `db:"price_minor"`
	Currency      string  `db:"currency"`
	LookupKey     string  `db:"lookup_key"`
	StripePriceID *string `db:"stripe_price_id"`
	Active        bool    `db:"active"`
	Sort          int     `db:"sort"`
}

const packColumns = `code, name, credits, price_minor, currency, lookup_key, stripe_price_id, active, sort`

// Packs lists the active packs in display order.
func (s *Store) Packs(ctx context.Context) ([]Pack, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+packColumns+` FROM credit_packs WHERE active ORDER BY sort, credits`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Pack])
}

// PackByCode finds an active pack.
func (s *Store) PackByCode(ctx context.Context, code string) (Pack, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+packColumns+` FROM credit_packs WHERE code = $1 AND active`, code)
	if err != nil {
		return Pack{}, err
	}
	p, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Pack])
	if errors.Is(err, pgx.ErrNoRows) {
		return Pack{}, Errorf(KindNotFound, "No such credit pack.")
	}
	return p, err
}

// SetPackPriceID records the Stripe price of a pack after a catalog sync.
func (s *Store) SetPackPriceID(ctx context.Context, code, priceID string) error {
	_, err := s.pool.Exec(ctx, `UPDATE credit_packs SET stripe_price_id = $2 WHERE code = $1`, code, priceID)
	return err
}

// CustomerID returns the user's Stripe customer id ("" when none yet).
func (s *Store) CustomerID(ctx context.Context, userID int64) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT customer_id FROM stripe_customers WHERE user_id = $1`, userID).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// SaveCustomerID remembers the user's Stripe customer; the first one saved
// wins and is returned.
//
// Two statements: when another request's insert of the user's row is in
// flight, the insert waits for it and then does nothing, and only a
// statement started after that sees the row it committed (one statement
// reading the table as well answered no row, a 500 on a new user's first
// two overlapping purchases).
func (s *Store) SaveCustomerID(ctx context.Context, userID int64, customerID string) (string, error) {
	var id string
	err := s.pool.QueryRow(ctx, `INSERT INTO stripe_customers (user_id, customer_id) VALUES ($1, $2)
ON CONFLICT (user_id) DO NOTHING RETURNING customer_id`, userID, customerID).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		err = s.pool.QueryRow(ctx, `SELECT customer_id FROM stripe_customers WHERE user_id = $1`, userID).Scan(&id)
	}
	return id, err
}

// Payment statuses.
const (
	PaymentPending           = "pending"
	PaymentSucceeded         = "succeeded"
	PaymentFailed            = "failed"
	PaymentExpired           = "expired"
	PaymentPartiallyRefunded = "partially_refunded"
	PaymentRefunded          = "refunded"
)

// Payment is one purchase.
type Payment struct {
	ID                  int64      `db:"id"`
	UserID              int64      `db:"user_id"`
	Product             string     `db:"product"`
	PackCode            *string    `db:"pack_code"`
	Credits             int64      `db:"credits"`
	AmountMinor         int64      `db:"amount_minor"`
	Currency            string     `db:"currency"`
	Status              string     `db:"status"`
	CheckoutSessionID   string     `db:"checkout_session_id"`
	CheckoutURL         *string    `db:"checkout_url"`
	CustomerID          *string    `db:"customer_id"`
	PaymentIntentID     *string    `db:"payment_intent_id"`
	GrantID             *int64     `db:"grant_id"`
	AmountRefundedMinor int64      `db:"amount_refunded_minor"`
	CreditsClawedBack   int64      `db:"credits_clawed_back"`
	ClawbackShortfall   int64      `db:"clawback_shortfall"`
	FailureReason       *string    `db:"failure_reason"`
	CreatedAt           time.Time  `db:"created_at"`
	UpdatedAt           time.Time  `db:"updated_at"`
	PaidAt              *time.Time `db:"paid_at"`
	// RefundedAt is when the latest refund was made (nil: none, or made
	// before migration 00020 recorded it).
	RefundedAt *time.Time `db:"refunded_at"`
	// BuyerEmail is the buyer's address when the checkout began (nil once
	// the account is deleted).
	BuyerEmail *string `db:"buyer_email"`
	// A subscription's paid invoice (product "subscription"): its plan,
	// subscription, invoice and the period it paid for. CheckoutSessionID
	// is "" for these.
	PlanCode       *string    `db:"plan_code"`
	SubscriptionID *int64     `db:"subscription_id"`
	InvoiceID      *string    `db:"invoice_id"`
	PeriodStart    *time.Time `db:"period_start"`
	PeriodEnd      *time.Time `db:"period_end"`
}

const paymentColumns = `id, user_id, product, pack_code, credits, amount_minor, currency, status,
       coalesce(checkout_session_id, '') AS checkout_session_id, checkout_url, customer_id, payment_intent_id, grant_id,
       amount_refunded_minor, credits_clawed_back, clawback_shortfall, failure_reason, created_at, updated_at, paid_at,
       refunded_at, buyer_email, plan_code, subscription_id, invoice_id, period_start, period_end`

func onePayment(rows pgx.Rows, err error) (Payment, error) {
	if err != nil {
		return Payment{}, err
	}
	p, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Payment])
	if errors.Is(err, pgx.ErrNoRows) {
		return Payment{}, ErrNotFound
	}
	return p, err
}

// NewPayment records a checkout session at creation: who buys what for how much.
type NewPayment struct {
	UserID            int64
	Pack              Pack
	CheckoutSessionID string
	CheckoutURL       string
	CustomerID        string
}

// CreatePayment records a pending purchase. A session recorded before (a
// retried request answered from Stripe's idempotency) is a KindConflict.
func (s *Store) CreatePayment(ctx context.Context, p NewPayment) (Payment, error) {
	pay, err := onePayment(s.pool.Query(ctx, `
INSERT INTO payments (user_id, product, pack_code, credits, amount_minor, currency, checkout_session_id, checkout_url, customer_id,
                      buyer_email)
-- The buyer's row is share-locked: an account being deleted meanwhile
-- is waited for, and then no payment is recorded (its address is gone).
SELECT $1, 'pack', $2, $3, $4, $5, $6, $7, $8, u.email FROM users u WHERE u.id = $1 AND u.deleted_at IS NULL FOR SHARE
RETURNING `+paymentColumns,
		p.UserID, p.Pack.Code, p.Pack.Credits, p.Pack.PriceMinor, p.Pack.Currency, p.CheckoutSessionID, p.CheckoutURL, p.CustomerID))
	if isUniqueViolation(err, "payments_checkout_session_id_key") {
		return Payment{}, Errorf(KindConflict, "This checkout session is recorded already.")
	}
	if errors.Is(err, ErrNotFound) {
		return Payment{}, Errorf(KindNotFound, "This account was deleted.")
	}
	return pay, err
}

// UserPaymentBySession finds a checkout of the user; another user's session
// is simply not found.
func (s *Store) UserPaymentBySession(ctx context.Context, userID int64, sessionID string) (Payment, error) {
	return onePayment(s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE user_id = $1 AND checkout_session_id = $2`, userID, sessionID))
}

// UserPayment finds one payment of the user; another user's is simply not
// found.
func (s *Store) UserPayment(ctx context.Context, userID, id int64) (Payment, error) {
	return onePayment(s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE user_id = $1 AND id = $2`, userID, id))
}

// paymentNumber is how the pages and emails name a payment: "payment
// #81", "Payment 81", "receipt #81".
var paymentNumber = regexp.MustCompile(`^(?i)(?:payment|receipt)\s*#?\s*([0-9]{1,18})[.,;:!?)]*$`)

// FindPayment finds the payment a support search names, as customers see
// it: "payment #81" (or "receipt #81"), the payment reference on a receipt
// (a PaymentIntent, pi_…), a checkout session (cs_…) or a plan's invoice
// (in_…). found is false when q names none (a bare "#81" is a user id, for
// SearchUsers).
func (s *Store) FindPayment(ctx context.Context, q string) (p Payment, found bool, err error) {
	q = strings.TrimSpace(q)
	var rows pgx.Rows
	switch m := paymentNumber.FindStringSubmatch(q); {
	case m != nil:
		id, perr := strconv.ParseInt(m[1], 10, 64)
		if perr != nil {
			return p, false, nil
		}
		rows, err = s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE id = $1`, id)
	case strings.HasPrefix(q, "pi_") || strings.HasPrefix(q, "cs_") || strings.HasPrefix(q, "in_"):
		q = strings.TrimRight(q, ".,;:!?)")
		rows, err = s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE payment_intent_id = $1 OR checkout_session_id = $1 OR invoice_id = $1`, q)
	default:
		return p, false, nil
	}
	p, err = onePayment(rows, err)
	if errors.Is(err, ErrNotFound) {
		return p, false, nil
	}
	return p, err == nil, err
}

// UserOfStripeID finds the user a Stripe id that is no payment belongs to:
// a customer (cus_…), a subscription (sub_…), a plan's checkout (cs_…) or
// an invoice never paid (in_…, a failed renewal).
func (s *Store) UserOfStripeID(ctx context.Context, stripeID string) (int64, bool, error) {
	q := strings.TrimRight(strings.TrimSpace(stripeID), ".,;:!?)")
	var id int64
	err := s.pool.QueryRow(ctx, `
SELECT user_id FROM stripe_customers WHERE customer_id = $1
UNION ALL SELECT user_id FROM subscriptions WHERE stripe_subscription_id = $1 OR checkout_session_id = $1
UNION ALL SELECT s.user_id FROM invoice_failures f JOIN subscriptions s ON s.id = f.subscription_id WHERE f.invoice_id = $1
LIMIT 1`, q).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return id, err == nil, err
}

// OpenCheckoutsOfUser lists a user's checkouts still pending (opened, not
// paid, declined or expired), newest first, at most limit.
func (s *Store) OpenCheckoutsOfUser(ctx context.Context, userID int64, limit int) ([]Payment, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE user_id = $1 AND status = 'pending' ORDER BY id DESC LIMIT $2`, userID, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Payment])
}

// PaymentsOfUser lists a user's payments, newest first: those older than
// cursor (0: the newest) or, given after, those right above it
// (keysetList).
func (s *Store) PaymentsOfUser(ctx context.Context, userID, cursor, after int64, limit int) (ListPage[Payment], error) {
	return keysetList(1, "id", func(cond, tail string, extra ...any) ([]Payment, error) {
		rows, err := s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE user_id = $1 AND `+cond+tail,
			append([]any{customPlan, userID}, extra...)...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowToStructByName[Payment])
	}, func(p Payment) int64 { return p.ID }, cursor, after, limit)
}

// LockPaymentBySession loads a payment for update in tx.
func LockPaymentBySession(ctx context.Context, tx pgx.Tx, sessionID string) (Payment, error) {
	return onePayment(tx.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE checkout_session_id = $1 FOR NO KEY UPDATE`, sessionID))
}

// LockPaymentByIntent loads a payment by its PaymentIntent for update in tx.
func LockPaymentByIntent(ctx context.Context, tx pgx.Tx, intentID string) (Payment, error) {
	return onePayment(tx.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE payment_intent_id = $1 FOR NO KEY UPDATE`, intentID))
}

// MarkPaymentPaid records a successful payment and the grant it produced.
// at is when it was paid: Stripe's time of the event that says so (not
// when a worker applied it, hours later after an outage), and never later
// than now.
func MarkPaymentPaid(ctx context.Context, tx pgx.Tx, id int64, intentID string, grantID int64, at time.Time) error {
	var pi *string
	if intentID != "" {
		pi = &intentID
	}
	_, err := tx.Exec(ctx, `UPDATE payments SET status = 'succeeded', grant_id = $2, payment_intent_id = coalesce(payment_intent_id, $3),
       paid_at = coalesce(paid_at, least(now(), $4)), failure_reason = NULL, updated_at = now()
 WHERE id = $1 AND status IN ('pending', 'failed', 'expired')`, id, grantID, pi, at)
	return err
}

// SetPaymentIntent remembers the PaymentIntent of a checkout (known once
// the session completes, paid or not).
func SetPaymentIntent(ctx context.Context, tx pgx.Tx, id int64, intentID string) error {
	if intentID == "" {
		return nil
	}
	_, err := tx.Exec(ctx, `UPDATE payments SET payment_intent_id = coalesce(payment_intent_id, $2), updated_at = now() WHERE id = $1`, id, intentID)
	return err
}

// MarkPaymentUnsuccessful moves a pending payment to failed or expired;
// a payment that already succeeded is never moved back.
func MarkPaymentUnsuccessful(ctx context.Context, tx pgx.Tx, id int64, status, reason string) (bool, error) {
	if status != PaymentFailed && status != PaymentExpired {
		return false, fmt.Errorf("not an unsuccessful status: %q", status)
	}
	tag, err := tx.Exec(ctx, `UPDATE payments SET status = $2, failure_reason = $3, updated_at = now() WHERE id = $1 AND status = 'pending'`, id, status, reason)
	return tag.RowsAffected() == 1, err
}

// CancelledByBuyer is the failure reason of a checkout its buyer cancelled.
const CancelledByBuyer = "Cancelled by the buyer before it was paid."

// ExpiredUnpaid is the failure reason of a checkout that ran out unpaid.
const ExpiredUnpaid = "The checkout expired before it was paid."

// Cancelled reports whether the payment is a checkout its buyer cancelled
// (expired at their request, not left to run out).
func (p Payment) Cancelled() bool {
	return p.Status == PaymentExpired && p.FailureReason != nil && *p.FailureReason == CancelledByBuyer
}

// CancelOutcome is what MarkPaymentCancelled recorded.
type CancelOutcome int

const (
	// CancelRecorded: expired, its reason CancelledByBuyer.
	CancelRecorded CancelOutcome = iota
	// CancelRanOut: it had run out on its own: expired as such.
	CancelRanOut
	// CancelUnchanged: nothing written (paid, declined, or expired by its
	// event meanwhile when the provider did not expire it at this request).
	CancelUnchanged
)

// MarkPaymentCancelled records that the buyer cancelled a checkout that the
// provider reports expired: expired, with CancelledByBuyer as its reason.
// accepted: the provider expired it at this request, so an expiry already
// applied (the simulator delivers its event during the cancel) is this
// cancel's, and gets its reason too. Otherwise (the provider found it
// expired already) only a pending payment is marked, and as cancelled only
// within its checkout's day (SimSessionExpiry, Stripe's too): after it, it
// ran out on its own. counted reports whether it was still pending, which
// is when it is counted.
func MarkPaymentCancelled(ctx context.Context, tx pgx.Tx, id int64, accepted bool) (outcome CancelOutcome, counted bool, err error) {
	var old string
	var ranOut bool
	err = tx.QueryRow(ctx, `SELECT status, created_at <= now() - $2::interval FROM payments WHERE id = $1 FOR UPDATE`, id, SimSessionExpiry.String()).Scan(&old, &ranOut)
	switch {
	case err != nil:
		return CancelUnchanged, false, err
	case old == PaymentPending && !accepted && ranOut:
		_, err = MarkPaymentUnsuccessful(ctx, tx, id, PaymentExpired, ExpiredUnpaid)
		return CancelRanOut, err == nil, err
	case old == PaymentPending, old == PaymentExpired && accepted:
		_, err = tx.Exec(ctx, `UPDATE payments SET status = 'expired', failure_reason = $2, updated_at = now() WHERE id = $1`, id, CancelledByBuyer)
		return CancelRecorded, old == PaymentPending, err
	}
	return CancelUnchanged, false, nil
}

// RefundRecord is what one charge.refunded event changes of a payment:
// its new cumulative totals (refunded, credits taken back, credits that
// could not be), Stripe's time of the refund and the event's id.
type RefundRecord struct {
	PaymentID      int64
	TotalRefunded  int64
	TotalClawed    int64
	TotalShortfall int64
	At             time.Time
	EventID        string
}

// RecordRefund stores a payment's new cumulative refunded amount and
// clawback, and the refund itself as one payment_refunds row holding the
// difference. Its time is Stripe's time of the refund event, within
// [paid_at, now] (a payment paid before 00020 has its paid_at from when the
// worker applied it, which can be later than its refund). The totals only
// grow: a record that would lower one is refused.
func RecordRefund(ctx context.Context, tx pgx.Tx, r RefundRecord) error {
	var amount, taken, short int64
	var at time.Time
	err := tx.QueryRow(ctx, `
UPDATE payments p SET amount_refunded_minor = $2, credits_clawed_back = $3, clawback_shortfall = $4,
       status = CASE WHEN $2 = p.amount_minor THEN 'refunded' ELSE 'partially_refunded' END, updated_at = now(),
       refunded_at = greatest(least(now(), $5), p.paid_at)
  FROM (SELECT id, amount_refunded_minor, credits_clawed_back, clawback_shortfall FROM payments WHERE id = $1) old
 WHERE p.id = old.id
RETURNING $2 - old.amount_refunded_minor, $3 - old.credits_clawed_back, $4 - old.clawback_shortfall, p.refunded_at`,
		r.PaymentID, r.TotalRefunded, r.TotalClawed, r.TotalShortfall, r.At).Scan(&amount, &taken, &short, &at)
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	if amount <= 0 || taken < 0 || short < 0 {
		return fmt.Errorf("refund of payment %d: totals must grow (refunded +%d, credits taken +%d, short +%d)", r.PaymentID, amount, taken, short)
	}
	_, err = tx.Exec(ctx, `
INSERT INTO payment_refunds (payment_id, amount_minor, credits_taken, credits_short, refunded_at, stripe_event_id)
VALUES ($1, $2, $3, $4, $5, nullif($6, ''))`, r.PaymentID, amount, taken, short, at, r.EventID)
	return err
}

// Refund is one refund of a payment, as its receipt lists it.
type Refund struct {
	ID           int64 `db:"id"`
	AmountMinor  int64 `db:"amount_minor"`
	CreditsTaken int64 `db:"credits_taken"`
	CreditsShort int64 `db:"credits_short"`
	// RefundedAt is Stripe's time of the refund (nil for refunds recorded
	// before migration 00020).
	RefundedAt *time.Time `db:"refunded_at"`
}

// maxRefundsListed bounds a receipt's refund lines; Stripe allows a charge
// far fewer refunds in practice, and the totals are on the payment.
const maxRefundsListed = 100

// RefundsOf lists a payment's refunds, oldest first (at most 100; the
// payment's totals count every one).
func (s *Store) RefundsOf(ctx context.Context, paymentID int64) ([]Refund, error) {
	rows, err := s.pool.Query(ctx, `
SELECT id, amount_minor, credits_taken, credits_short, refunded_at
  FROM payment_refunds WHERE payment_id = $1 ORDER BY id LIMIT $2`, paymentID, maxRefundsListed)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Refund])
}

// PaymentTotals sums payments for the admin landing page.
type PaymentTotals struct {
	Succeeded     int64
	RevenueMinor  int64
	RefundedMinor int64
	Pending       int64
}

// PaymentTotalsSince sums the payments paid since t (when the money came
// in, however long the checkout waited for a bank debit), what has been
// refunded of those, and the checkouts started since t still pending,
// for packs and for plans (USD only, the catalog's currency).
func (s *Store) PaymentTotalsSince(ctx context.Context, t time.Time) (PaymentTotals, error) {
	var pt PaymentTotals
	err := s.pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE paid_at >= $1),
       coalesce(sum(amount_minor) FILTER (WHERE paid_at >= $1), 0),
       coalesce(sum(amount_refunded_minor) FILTER (WHERE paid_at >= $1), 0),
       count(*) FILTER (WHERE status = 'pending' AND created_at >= $1)
         + (SELECT count(*) FROM subscriptions WHERE status = 'checkout' AND created_at >= $1 AND currency = 'usd')
  FROM payments WHERE (paid_at >= $1 OR created_at >= $1) AND currency = 'usd'`, t).Scan(&pt.Succeeded, &pt.RevenueMinor, &pt.RefundedMinor, &pt.Pending)
	return pt, err
}
