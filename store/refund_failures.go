package store

import (
	"context"
	"errors"
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
	// SettledAt and SettledNote: support made it good another way, and how
	// (nil: not yet).
	SettledAt   *time.Time `db:"settled_at"`
	SettledNote *string    `db:"settled_note"`
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
SELECT f.id, f.payment_id, f.provider_refund_id, f.amount_minor, f.currency, f.status, f.failure_reason, f.failed_at,
       s.settled_at, s.note AS settled_note
  FROM payment_refund_failures f LEFT JOIN payment_refund_failure_settlements s ON s.failure_id = f.id
 WHERE f.payment_id = $1 ORDER BY f.id LIMIT $2`, paymentID, maxRefundsListed)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[RefundFailure])
}

// SettleRefundFailure records that support made a failed refund of the
// payment good another way (note: how), with the audit entry, in one
// transaction; settled before, it is left as it was (created false). A
// failure not of this payment is ErrNotFound.
func (s *Store) SettleRefundFailure(ctx context.Context, adminID, paymentID, failureID int64, note string) (created bool, err error) {
	if err := CheckRefundReason(note); err != nil {
		return false, err
	}
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		var userID int64
		var refundID string
		err := tx.QueryRow(ctx, `SELECT p.user_id, f.provider_refund_id FROM payment_refund_failures f JOIN payments p ON p.id = f.payment_id
 WHERE f.id = $1 AND f.payment_id = $2`, failureID, paymentID).Scan(&userID, &refundID)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO payment_refund_failure_settlements (failure_id, admin_user_id, note) VALUES ($1, $2, $3) ON CONFLICT (failure_id) DO NOTHING`,
			failureID, adminID, note)
		if err != nil {
			return err
		}
		if created = tag.RowsAffected() == 1; !created {
			return nil
		}
		return Audit(ctx, tx, &adminID, "payment.refund_failure_settled", &userID, map[string]any{
			"payment_id": paymentID, "failure_id": failureID, "provider_refund_id": refundID, "note": note})
	})
	return created, err
}

// RefundFailuresTotal sums a payment's failed refunds not yet made good
// another way (in tx).
func RefundFailuresTotal(ctx context.Context, tx pgx.Tx, paymentID int64) (int64, error) {
	var n int64
	err := tx.QueryRow(ctx, `SELECT coalesce(sum(f.amount_minor), 0)::bigint FROM payment_refund_failures f
 WHERE f.payment_id = $1 AND NOT EXISTS (SELECT 1 FROM payment_refund_failure_settlements s WHERE s.failure_id = f.id)`, paymentID).Scan(&n)
	return n, err
}

// PaymentsWithRefundFailures says which of the payments ids have a failed
// refund not yet settled.
func (s *Store) PaymentsWithRefundFailures(ctx context.Context, ids []int64) (map[int64]bool, error) {
	out := map[int64]bool{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT f.payment_id FROM payment_refund_failures f
 WHERE f.payment_id = ANY($1) AND NOT EXISTS (SELECT 1 FROM payment_refund_failure_settlements s WHERE s.failure_id = f.id)`, ids)
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
