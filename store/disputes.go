package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Dispute is a payment's dispute (chargeback) as Stripe last told it.
type Dispute struct {
	ID              int64      `db:"id"`
	PaymentID       int64      `db:"payment_id"`
	StripeDisputeID string     `db:"stripe_dispute_id"`
	AmountMinor     int64      `db:"amount_minor"`
	Currency        string     `db:"currency"`
	Reason          string     `db:"reason"`
	Status          string     `db:"status"`
	EvidenceDueBy   *time.Time `db:"evidence_due_by"`
	OpenedAt        time.Time  `db:"opened_at"`
	StatusAt        time.Time  `db:"status_at"`
}

// DisputeClosed reports whether a dispute status is final.
func DisputeClosed(status string) bool {
	return status == "won" || status == "lost" || status == "warning_closed"
}

// DisputeBlocksRefunds reports whether a dispute in this status forbids
// refunding its payment: a chargeback open or lost (the bank holds or has
// given back the money), not an inquiry (a refund is how one is closed)
// nor one won.
func DisputeBlocksRefunds(status string) bool {
	return status == "needs_response" || status == "under_review" || status == "lost"
}

// RecordDispute stores what an event says of a dispute: a new one, or its
// status and amount when the event is later than the one that set them
// (or of the same second and a later stage, disputeStage) and the dispute
// is not closed (a closed one keeps its outcome; an older
// event changes nothing). It returns the dispute as it stands.
func RecordDispute(ctx context.Context, tx pgx.Tx, d Dispute) (Dispute, error) {
	// The payment's row, locked by the caller, serialises a dispute's
	// events: its first is inserted once.
	_, err := tx.Exec(ctx, `
INSERT INTO payment_disputes (payment_id, stripe_dispute_id, amount_minor, currency, reason, status, evidence_due_by, opened_at, status_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz, greatest($9::timestamptz, $8::timestamptz))
    ON CONFLICT (stripe_dispute_id) DO UPDATE
   SET status = EXCLUDED.status, amount_minor = EXCLUDED.amount_minor, reason = EXCLUDED.reason,
       evidence_due_by = EXCLUDED.evidence_due_by, status_at = EXCLUDED.status_at, updated_at = now()
 WHERE payment_disputes.status NOT IN ('won', 'lost', 'warning_closed')
   AND (payment_disputes.status_at < EXCLUDED.status_at
        OR (payment_disputes.status_at = EXCLUDED.status_at AND `+disputeStage("EXCLUDED.status")+` > `+disputeStage("payment_disputes.status")+`))`,
		d.PaymentID, d.StripeDisputeID, d.AmountMinor, d.Currency, d.Reason, d.Status, d.EvidenceDueBy, d.OpenedAt, d.StatusAt)
	if err != nil {
		return Dispute{}, err
	}
	rows, err := tx.Query(ctx, `SELECT `+disputeColumns+` FROM payment_disputes WHERE stripe_dispute_id = $1`, d.StripeDisputeID)
	if err != nil {
		return Dispute{}, err
	}
	return pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Dispute])
}

// disputeStage ranks a dispute status (an SQL expression) along a
// dispute's life: Stripe stamps its events to the second, and two of one
// second (under review, then lost) are told apart by it — a later stage
// wins a tie, never an earlier one.
func disputeStage(status string) string {
	return `(CASE ` + status + ` WHEN 'warning_needs_response' THEN 1 WHEN 'warning_under_review' THEN 2
  WHEN 'needs_response' THEN 3 WHEN 'under_review' THEN 4 ELSE 5 END)`
}

const disputeColumns = `id, payment_id, stripe_dispute_id, amount_minor, currency, reason, status, evidence_due_by, opened_at, status_at`

// DisputesOf lists a payment's disputes, oldest first.
func (s *Store) DisputesOf(ctx context.Context, paymentID int64) ([]Dispute, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+disputeColumns+` FROM payment_disputes WHERE payment_id = $1 ORDER BY id`, paymentID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[Dispute])
}

// DisputesOfPayments returns, by payment, the dispute of each payment that
// has one which most needs support's eye: an open one first (the latest
// opened), else a lost one, else the latest.
func (s *Store) DisputesOfPayments(ctx context.Context, paymentIDs []int64) (map[int64]Dispute, error) {
	out := map[int64]Dispute{}
	if len(paymentIDs) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT ON (payment_id) `+disputeColumns+` FROM payment_disputes
 WHERE payment_id = ANY($1)
 ORDER BY payment_id, status IN ('won', 'lost', 'warning_closed'), status = 'lost' DESC, opened_at DESC, id DESC`, paymentIDs)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, pgx.RowToStructByName[Dispute])
	for _, d := range list {
		out[d.PaymentID] = d
	}
	return out, err
}

// MoneyStanding is why a payment's money is the customer's due, if it is,
// and what became of it beyond its refunded total: refunds that failed
// later and are not settled (their money is back with us), and disputes
// lost (the bank took it back) or open.
type MoneyStanding struct {
	// OwedBack is why the payment's money is the customer's due, as
	// decided when it was recorded (nil: an ordinary payment).
	OwedBack             *string
	UnsettledFailedMinor int64
	LostMinor            int64
	OpenChargeback       bool
}

// MoneyStandingOf reads, in tx, a payment's MoneyStanding.
func MoneyStandingOf(ctx context.Context, tx pgx.Tx, paymentID int64) (MoneyStanding, error) {
	var m MoneyStanding
	err := tx.QueryRow(ctx, `
SELECT p.owed_back,
       coalesce((SELECT sum(f.amount_minor) FROM payment_refund_failures f
                  WHERE f.payment_id = p.id
                    AND NOT EXISTS (SELECT 1 FROM payment_refund_failure_settlements s WHERE s.failure_id = f.id)), 0)::bigint,
       coalesce((SELECT sum(d.amount_minor) FROM payment_disputes d WHERE d.payment_id = p.id AND d.status = 'lost'), 0)::bigint,
       EXISTS (SELECT 1 FROM payment_disputes d WHERE d.payment_id = p.id AND d.status IN ('needs_response', 'under_review'))
  FROM payments p
 WHERE p.id = $1`, paymentID).Scan(&m.OwedBack, &m.UnsettledFailedMinor, &m.LostMinor, &m.OpenChargeback)
	return m, err
}
