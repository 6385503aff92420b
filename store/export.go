package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// exportBatch is how many rows an export reads per query. A user's export
// reads batch after batch on a connection taken for each, so that a
// download its client reads slowly holds no connection between them.
const exportBatch = 2000

// ExportEntry is one ledger entry of a user's credit history as exported:
// signed credits, the grant it added to or drew on, the use it paid for,
// and the purchase a grant's credits came from.
type ExportEntry struct {
	ID             int64      `db:"id"`
	CreatedAt      time.Time  `db:"created_at"`
	Kind           string     `db:"kind"` // an entry kind (EntryGrant, …)
	Credits        int64      `db:"credits"`
	GrantID        int64      `db:"grant_id"`
	GrantKind      string     `db:"grant_kind"`
	GrantExpiresAt *time.Time `db:"grant_expires_at"`
	UsageID        *int64     `db:"usage_id"`
	ServiceSlug    *string    `db:"service_slug"`
	ServiceName    *string    `db:"service_name"`
	// PaymentID is the purchase whose grant a grant or clawback line is
	// (nil: none).
	PaymentID *int64  `db:"payment_id"`
	Reason    *string `db:"reason"`
}

// ExportHistory calls each with every ledger entry of a user made in
// [from, to) (a zero time leaves that side open), oldest first. A user's
// entries are written under their account's lock and numbered in that
// order, so reading them in batches by number misses none written while
// the export runs. An error from each stops it and is returned.
func (s *Store) ExportHistory(ctx context.Context, userID int64, from, to time.Time, each func(ExportEntry) error) error {
	lo, hi := exportBounds(from, to)
	var after int64
	for {
		rows, err := s.pool.Query(ctx, `
SELECT e.id, e.created_at, e.kind, e.amount AS credits, e.grant_id, g.kind AS grant_kind, g.expires_at AS grant_expires_at,
       e.usage_id, s.slug AS service_slug, s.name AS service_name,
       (SELECT p.id FROM payments p WHERE p.grant_id = e.grant_id AND e.kind IN ('grant', 'clawback')) AS payment_id, e.reason
  FROM (SELECT * FROM ledger_entries
         WHERE user_id = $1 AND id > $2 AND created_at >= $3 AND created_at < $4 ORDER BY id LIMIT $5) e
  JOIN grants g ON g.id = e.grant_id
  LEFT JOIN usages u ON u.user_id = e.user_id AND u.id = e.usage_id
  LEFT JOIN services s ON s.id = u.service_id
 ORDER BY e.id`, customPlan, userID, after, lo, hi, exportBatch)
		if err != nil {
			return err
		}
		batch, err := pgx.CollectRows(rows, pgx.RowToStructByName[ExportEntry])
		if err != nil {
			return err
		}
		for _, e := range batch {
			if err := each(e); err != nil {
				return err
			}
		}
		if len(batch) < exportBatch {
			return nil
		}
		after = batch[len(batch)-1].ID
	}
}

// ExportPayments calls each with every payment of a user, whatever its
// status, started in [from, to) (a zero time leaves that side open),
// oldest first, as each stands when its batch is read.
func (s *Store) ExportPayments(ctx context.Context, userID int64, from, to time.Time, each func(Payment) error) error {
	lo, hi := exportBounds(from, to)
	var after int64
	for {
		rows, err := s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments
 WHERE user_id = $1 AND id > $2 AND created_at >= $3 AND created_at < $4 ORDER BY id LIMIT $5`,
			customPlan, userID, after, lo, hi, exportBatch)
		if err != nil {
			return err
		}
		batch, err := pgx.CollectRows(rows, pgx.RowToStructByName[Payment])
		if err != nil {
			return err
		}
		for _, p := range batch {
			if err := each(p); err != nil {
				return err
			}
		}
		if len(batch) < exportBatch {
			return nil
		}
		after = batch[len(batch)-1].ID
	}
}

// MoneyMovement is one payment taken or one refund made, as the
// accounting export lists them: a refund's amount and credits are
// negative. The two kinds in a range sum to the range's net revenue as
// /admin/analytics counts it.
type MoneyMovement struct {
	Kind        string     `db:"kind"` // "payment" or "refund"
	At          time.Time  `db:"at"`
	PaymentID   int64      `db:"payment_id"`
	RefundID    *int64     `db:"refund_id"`
	UserID      int64      `db:"user_id"`
	BuyerEmail  *string    `db:"buyer_email"`
	Product     string     `db:"product"`
	PackCode    *string    `db:"pack_code"`
	PlanCode    *string    `db:"plan_code"`
	PeriodStart *time.Time `db:"period_start"`
	PeriodEnd   *time.Time `db:"period_end"`
	Credits     int64      `db:"credits"`
	AmountMinor int64      `db:"amount_minor"`
	Currency    string     `db:"currency"`
	// PaymentIntentID and InvoiceID are Stripe's references (nil: none).
	PaymentIntentID *string `db:"payment_intent_id"`
	InvoiceID       *string `db:"invoice_id"`
}

// ExportMoney calls each with every payment taken (by when it was paid)
// and every refund made (Stripe's time of it; for refunds recorded before
// migration 00020, when it was recorded) in [from, to), in time order. It
// reads in one read-only snapshot, so that its sums agree with each other
// however long the download takes (an operator's export: the request's
// deadline bounds it).
func (s *Store) ExportMoney(ctx context.Context, from, to time.Time, each func(MoneyMovement) error) error {
	lo, hi := exportBounds(from, to)
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // read-only
	rows, err := tx.Query(ctx, `
SELECT 'payment' AS kind, p.paid_at AS at, p.id AS payment_id, NULL::bigint AS refund_id, p.user_id, p.buyer_email,
       p.product, p.pack_code, p.plan_code, p.period_start, p.period_end, p.credits, p.amount_minor, p.currency,
       p.payment_intent_id, p.invoice_id
  FROM payments p WHERE p.paid_at >= $1 AND p.paid_at < $2
UNION ALL
SELECT 'refund', coalesce(r.refunded_at, r.recorded_at), p.id, r.id, p.user_id, p.buyer_email,
       p.product, p.pack_code, p.plan_code, p.period_start, p.period_end, -r.credits_taken, -r.amount_minor, p.currency,
       p.payment_intent_id, p.invoice_id
  FROM payment_refunds r JOIN payments p ON p.id = r.payment_id
 WHERE coalesce(r.refunded_at, r.recorded_at) >= $1 AND coalesce(r.refunded_at, r.recorded_at) < $2
 ORDER BY at, kind, payment_id, refund_id`, lo, hi)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		m, err := pgx.RowToStructByName[MoneyMovement](rows)
		if err != nil {
			return err
		}
		if err := each(m); err != nil {
			return err
		}
	}
	return rows.Err()
}

// exportBounds turns an export's range into bounds a query can compare
// with: a zero time is open.
func exportBounds(from, to time.Time) (lo, hi time.Time) {
	lo, hi = from, to
	if lo.IsZero() {
		lo = time.Unix(0, 0)
	}
	if hi.IsZero() {
		hi = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return lo, hi
}
