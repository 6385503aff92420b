package store

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// RefundFailure is a refund the provider accepted and that failed later:
// the customer's card or bank refused the money. The refund was recorded
// (and its credits taken back) when the provider said it was made.
type RefundFailure struct {
	ID               int64  `db:"id"`
	PaymentID        int64  `db:"payment_id"`
	ProviderRefundID string `db:"provider_refund_id"`
	AmountMinor      int64  `db:"amount_minor"`
	Currency         string `db:"currency"`
	Status           string `db:"status"` // failed or canceled
	// FailureReason is the provider's (expired_or_canceled_card, …),
	// when it gave one.
	FailureReason *string   `db:"failure_reason"`
	FailedAt      time.Time `db:"failed_at"`
}

// RecordRefundFailure stores a failed refund of a payment, from the event
// eventID; the same provider refund recorded before is left as it is
// (created false).
func RecordRefundFailure(ctx context.Context, tx pgx.Tx, f RefundFailure, eventID string) (created bool, err error) {
	var reason *string
	if f.FailureReason != nil && *f.FailureReason != "" {
		r := *f.FailureReason
		if len(r) > 200 {
			r = r[:200]
		}
		reason = &r
	}
	tag, err := tx.Exec(ctx, `
INSERT INTO payment_refund_failures (payment_id, provider_refund_id, amount_minor, currency, status, failure_reason, failed_at, stripe_event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (provider_refund_id) DO NOTHING`,
		f.PaymentID, f.ProviderRefundID, f.AmountMinor, f.Currency, f.Status, reason, f.FailedAt, eventID)
	return tag.RowsAffected() == 1, err
}

// RefundFailuresOf lists a payment's failed refunds, oldest first.
func (s *Store) RefundFailuresOf(ctx context.Context, paymentID int64) ([]RefundFailure, error) {
	rows, err := s.pool.Query(ctx, `
SELECT id, payment_id, provider_refund_id, amount_minor, currency, status, failure_reason, failed_at
  FROM payment_refund_failures WHERE payment_id = $1 ORDER BY id LIMIT $2`, paymentID, maxRefundsListed)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[RefundFailure])
}

// RefundFailuresTotal sums a payment's failed refunds (in tx).
func RefundFailuresTotal(ctx context.Context, tx pgx.Tx, paymentID int64) (int64, error) {
	var n int64
	err := tx.QueryRow(ctx, `SELECT coalesce(sum(amount_minor), 0)::bigint FROM payment_refund_failures WHERE payment_id = $1`, paymentID).Scan(&n)
	return n, err
}

// PaymentsWithRefundFailures says which of the payments ids have a failed
// refund.
func (s *Store) PaymentsWithRefundFailures(ctx context.Context, ids []int64) (map[int64]bool, error) {
	out := map[int64]bool{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT payment_id FROM payment_refund_failures WHERE payment_id = ANY($1)`, ids)
	if err != nil {
		return nil, err
	}
	ps, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	for _, id := range ps {
		out[id] = true
	}
	return out, err
}

// Why says in words why the refund did not go through: the provider's
// reason, "no reason given" for a failure without one, "" for a refund
// canceled without one.
func (f RefundFailure) Why() string {
	switch {
	case f.FailureReason != nil:
		return strings.ReplaceAll(*f.FailureReason, "_", " ")
	case f.Status == "canceled":
		return ""
	}
	return "no reason given"
}
