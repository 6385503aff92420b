package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// Open reports whether a dispute still waits for the merchant's
// answer or the bank's decision.
func (d Dispute) Open() bool { return !DisputeClosed(d.Status) }

// DisputeChange is what recording a dispute's event did.
type DisputeChange int

const (
	// DisputeNew: first heard of.
	DisputeNew DisputeChange = iota
	// DisputeMoved: its status changed.
	DisputeMoved
	// DisputeSame: nothing new (the same status again, or an older event).
	DisputeSame
)

// RecordDispute stores what an event says of a dispute: a new one, or its
// status and amount when the event is later than the one that set them
// (or of the same second and a later stage, disputeStage) and the dispute
// is not closed (a closed one keeps its outcome; an older
// event changes nothing). It returns the dispute as it stands and what
// changed.
func RecordDispute(ctx context.Context, tx pgx.Tx, d Dispute) (Dispute, DisputeChange, error) {
	var before *string
	err := tx.QueryRow(ctx, `SELECT status FROM payment_disputes WHERE stripe_dispute_id = $1 FOR UPDATE`, d.StripeDisputeID).Scan(&before)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Dispute{}, 0, err
	}
	change := DisputeNew
	if before == nil {
		_, err = tx.Exec(ctx, `
INSERT INTO payment_disputes (payment_id, stripe_dispute_id, amount_minor, currency, reason, status, evidence_due_by, opened_at, status_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz, greatest($9::timestamptz, $8::timestamptz))`,
			d.PaymentID, d.StripeDisputeID, d.AmountMinor, d.Currency, d.Reason, d.Status, d.EvidenceDueBy, d.OpenedAt, d.StatusAt)
	} else {
		var tag pgconn.CommandTag
		tag, err = tx.Exec(ctx, `
UPDATE payment_disputes SET status = $2, amount_minor = $3, reason = $4, evidence_due_by = $5, status_at = $6, updated_at = now()
 WHERE stripe_dispute_id = $1 AND status NOT IN ('won', 'lost', 'warning_closed')
   AND (status_at < $6 OR (status_at = $6 AND `+disputeStage("$2")+` > `+disputeStage("status")+`))`,
			d.StripeDisputeID, d.Status, d.AmountMinor, d.Reason, d.EvidenceDueBy, d.StatusAt)
		change = DisputeSame
		if err == nil && tag.RowsAffected() == 1 && *before != d.Status {
			change = DisputeMoved
		}
	}
	if err != nil {
		return Dispute{}, 0, err
	}
	rows, err := tx.Query(ctx, `SELECT `+disputeColumns+` FROM payment_disputes WHERE stripe_dispute_id = $1`, d.StripeDisputeID)
	if err != nil {
		return Dispute{}, 0, err
	}
	got, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[Dispute])
	return got, change, err
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
