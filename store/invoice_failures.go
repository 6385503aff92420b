package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// NewInvoiceFailure is one failed attempt to pay a subscription's invoice
// (invoice.payment_failed).
type NewInvoiceFailure struct {
	SubscriptionID int64
	InvoiceID      string
	AmountMinor    int64
	Currency       string
	// PlanCode is the plan the invoice bills, when its amount is one ("":
	// not known).
	PlanCode               string
	PeriodStart, PeriodEnd time.Time
	Attempt                int64
	NextAttemptAt          *time.Time
	FailedAt               time.Time
	StripeEventID          string
}

// RecordInvoiceFailure stores a failed attempt; the same event recorded
// before is left as it is (created false).
func RecordInvoiceFailure(ctx context.Context, tx pgx.Tx, f NewInvoiceFailure) (created bool, err error) {
	var plan *string
	if f.PlanCode != "" {
		plan = &f.PlanCode
	}
	tag, err := tx.Exec(ctx, `
INSERT INTO invoice_failures (subscription_id, invoice_id, amount_minor, currency, plan_code, period_start, period_end, attempt, next_attempt_at, failed_at, stripe_event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (stripe_event_id) DO NOTHING`,
		f.SubscriptionID, f.InvoiceID, f.AmountMinor, f.Currency, plan, f.PeriodStart, f.PeriodEnd, max(f.Attempt, 1), f.NextAttemptAt, f.FailedAt, f.StripeEventID)
	return tag.RowsAffected() == 1, err
}

// InvoiceFailure is an invoice whose payment did not go through, as its
// latest failed attempt left it, and the payment that paid it later, if
// one did.
type InvoiceFailure struct {
	InvoiceID      string  `db:"invoice_id"`
	SubscriptionID int64   `db:"subscription_id"`
	AmountMinor    int64   `db:"amount_minor"`
	Currency       string  `db:"currency"`
	PlanCode       *string `db:"plan_code"`
	// PlanName is the plan's name (nil: the amount is no plan's).
	PlanName      *string    `db:"plan_name"`
	PeriodStart   time.Time  `db:"period_start"`
	PeriodEnd     time.Time  `db:"period_end"`
	Attempts      int64      `db:"attempts"`
	NextAttemptAt *time.Time `db:"next_attempt_at"`
	FirstFailedAt time.Time  `db:"first_failed_at"`
	LastFailedAt  time.Time  `db:"last_failed_at"`
	// PaymentID and PaidAt: the payment that paid it after all.
	PaymentID *int64     `db:"payment_id"`
	PaidAt    *time.Time `db:"paid_at"`
}

// Owed says what the invoice bills, for emails and flashes: "$30.00 for
// 27 Dec – 27 Jan 2027" (the amount in the money format of formatMoney).
func (f InvoiceFailure) Owed(formatMoney func(int64, string) string) string {
	return formatMoney(f.AmountMinor, f.Currency) + " for " + f.PeriodStart.UTC().Format("2 Jan") + " – " + f.PeriodEnd.UTC().Format("2 Jan 2006")
}

// Paid reports whether a later attempt paid the invoice.
func (f InvoiceFailure) Paid() bool { return f.PaymentID != nil }

// Retrying reports whether the provider's next try is still to come (an
// unpaid invoice whose retries ran out, or whose try is past without news,
// is not).
func (f InvoiceFailure) Retrying() bool {
	return !f.Paid() && f.NextAttemptAt != nil && f.NextAttemptAt.After(time.Now())
}

// InvoiceFailuresOf lists the failed invoices of the subscriptions ids,
// the latest failure first, at most limit.
func (s *Store) InvoiceFailuresOf(ctx context.Context, ids []int64, limit int) ([]InvoiceFailure, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return s.invoiceFailures(ctx, `subscription_id = ANY($2)`, limit, ids)
}

// invoiceFailures lists the failed invoices whose failures match where
// (its arguments from $2; $1 is limit), each as its latest failure left
// it, the latest first.
func (s *Store) invoiceFailures(ctx context.Context, where string, limit int, args ...any) ([]InvoiceFailure, error) {
	rows, err := s.pool.Query(ctx, `
WITH f AS (
  SELECT invoice_id, min(failed_at) AS first_failed_at, max(failed_at) AS last_failed_at, max(attempt)::bigint AS attempts,
         (array_agg(id ORDER BY failed_at DESC, id DESC))[1] AS last_id
    FROM invoice_failures WHERE `+where+` GROUP BY invoice_id)
SELECT l.invoice_id, l.subscription_id, l.amount_minor, l.currency, l.plan_code, pl.name AS plan_name, l.period_start, l.period_end,
       f.attempts, l.next_attempt_at, f.first_failed_at, f.last_failed_at, pay.id AS payment_id, pay.paid_at
  FROM f JOIN invoice_failures l ON l.id = f.last_id
  LEFT JOIN plans pl ON pl.code = l.plan_code
  LEFT JOIN payments pay ON pay.invoice_id = f.invoice_id
 ORDER BY f.last_failed_at DESC, l.id DESC LIMIT $1`, append([]any{limit}, args...)...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[InvoiceFailure])
}

// Overdue is the invoice a past-due subscription owes: the failed invoice
// failing last, not paid since, for a period that reaches into the
// current one (found false when none is recorded: an older invoice never
// paid, or its later retry, is not this period's, and this period's
// failure may not have arrived yet).
func (s *Store) Overdue(ctx context.Context, sub Subscription) (f InvoiceFailure, found bool, err error) {
	if sub.Status != SubPastDue {
		return f, false, nil
	}
	fs, err := s.invoiceFailures(ctx, `invoice_id = (
      SELECT x.invoice_id FROM invoice_failures x
       WHERE x.subscription_id = $2 AND ($3::timestamptz IS NULL OR x.period_end > $3)
         AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.invoice_id = x.invoice_id)
       ORDER BY x.failed_at DESC, x.id DESC LIMIT 1)`, 1, sub.ID, sub.CurrentPeriodStart)
	if err != nil || len(fs) == 0 {
		return f, false, err
	}
	return fs[0], true, nil
}
