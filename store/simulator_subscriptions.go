package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// SimSubscription is a subscription of the payments simulator.
type SimSubscription struct {
	ID                 string            `db:"id"`
	UserID             int64             `db:"user_id"`
	CustomerID         string            `db:"customer_id"`
	SessionID          string            `db:"session_id"`
	AmountMinor        int64             `db:"amount_minor"`
	Currency           string            `db:"currency"`
	Description        string            `db:"description"`
	Metadata           map[string]string `db:"metadata"`
	Status             string            `db:"status"`
	CurrentPeriodStart time.Time         `db:"current_period_start"`
	CurrentPeriodEnd   time.Time         `db:"current_period_end"`
	CancelAtPeriodEnd  bool              `db:"cancel_at_period_end"`
	CanceledAt         *time.Time        `db:"canceled_at"`
	Invoices           int               `db:"invoices"`
	CreatedAt          time.Time         `db:"created_at"`
	// OpenInvoiceID is the renewal's invoice that failed (past_due).
	OpenInvoiceID *string `db:"open_invoice_id"`
}

const simSubColumns = `id, user_id, customer_id, session_id, amount_minor, currency, description, metadata, status,
       current_period_start, current_period_end, cancel_at_period_end, canceled_at, invoices, created_at, open_invoice_id`

// SimPeriod is the simulator's billing period: a calendar month.
const SimPeriod = "1 month"

// ErrSimSubscriptionCanceled answers a change to a simulator subscription
// that has ended.
var ErrSimSubscriptionCanceled = Errorf(KindConflict, "This subscription has ended.")

// SimInvoiceIDs names a new invoice of a simulator subscription and its
// charge's payment intent.
type SimInvoiceIDs func() (invoiceID, intentID string)

// PaySimSubscriptionCheckout pays an open subscription-mode session as
// FinishSimSession does, and starts its subscription (id subID) with a
// first period of SimPeriod from now and its first invoice's charge (kept
// as an "invoice" session, refundable as a pack's). deliver is called
// under the session's lock with the session as it will be and, when it
// was paid now, the subscription and the invoice's charge (nil both
// otherwise: finished already, or expired).
func (s *Store) PaySimSubscriptionCheckout(ctx context.Context, id string, userID int64, subID string, ids SimInvoiceIDs,
	deliver func(ss SimSession, sub *SimSubscription, inv *SimSession) error) (SimSession, error) {
	ss, _, err := s.finishSimSession(ctx, id, userID, "paid", func(tx pgx.Tx, ss SimSession) error {
		if ss.Status != "complete" {
			return deliver(ss, nil, nil)
		}
		if ss.Mode != "subscription" {
			return errors.New("simulator: not a subscription checkout")
		}
		md, err := json.Marshal(ss.Metadata)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
INSERT INTO simulator_subscriptions (id, user_id, customer_id, session_id, amount_minor, currency, description, metadata,
                                     current_period_start, current_period_end)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now() + $9::interval)
RETURNING `+simSubColumns, subID, ss.UserID, ss.CustomerID, ss.ID, ss.AmountMinor, ss.Currency, ss.Description, md, SimPeriod)
		if err != nil {
			return err
		}
		sub, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSubscription])
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE simulator_sessions SET subscription_id = $2 WHERE id = $1`, ss.ID, sub.ID); err != nil {
			return err
		}
		ss.SubscriptionID = &sub.ID
		inv, err := newSimInvoice(ctx, tx, &sub, ids)
		if err != nil {
			return err
		}
		return deliver(ss, &sub, &inv)
	})
	return ss, err
}

// newSimInvoice records the paid charge of the subscription's next
// invoice (its current period's) and counts it.
func newSimInvoice(ctx context.Context, tx pgx.Tx, sub *SimSubscription, ids SimInvoiceIDs) (SimSession, error) {
	return newSimInvoiceOf(ctx, tx, sub, ids, true)
}

// newSimInvoiceOf records the charge of the subscription's next invoice,
// paid or (its payment failed) open, and counts it.
func newSimInvoiceOf(ctx context.Context, tx pgx.Tx, sub *SimSubscription, ids SimInvoiceIDs, paid bool) (SimSession, error) {
	invID, intent := ids()
	md, err := json.Marshal(sub.Metadata)
	if err != nil {
		return SimSession{}, err
	}
	rows, err := tx.Query(ctx, `
INSERT INTO simulator_sessions (id, user_id, customer_id, amount_minor, currency, description, metadata, success_url, cancel_url,
                                status, payment_status, payment_intent_id, mode, subscription_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, '', '', CASE WHEN $10 THEN 'complete' ELSE 'open' END, CASE WHEN $10 THEN 'paid' ELSE 'unpaid' END, $8, 'invoice', $9)
RETURNING `+simColumns, invID, sub.UserID, sub.CustomerID, sub.AmountMinor, sub.Currency, sub.Description, md, intent, sub.ID, paid)
	if err != nil {
		return SimSession{}, err
	}
	inv, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
	if err != nil {
		return SimSession{}, err
	}
	if err := tx.QueryRow(ctx, `UPDATE simulator_subscriptions SET invoices = invoices + 1 WHERE id = $1 RETURNING invoices`, sub.ID).Scan(&sub.Invoices); err != nil {
		return SimSession{}, err
	}
	return inv, nil
}

func lockSimSubscription(ctx context.Context, tx pgx.Tx, id string) (SimSubscription, error) {
	rows, err := tx.Query(ctx, `SELECT `+simSubColumns+` FROM simulator_subscriptions WHERE id = $1 FOR UPDATE`, id)
	if err != nil {
		return SimSubscription{}, err
	}
	sub, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSubscription])
	if errors.Is(err, pgx.ErrNoRows) {
		return sub, Errorf(KindNotFound, "No such subscription.")
	}
	return sub, err
}

// lockLiveSimSubscription is lockSimSubscription of one not ended
// (ErrSimSubscriptionCanceled otherwise).
func lockLiveSimSubscription(ctx context.Context, tx pgx.Tx, id string) (SimSubscription, error) {
	sub, err := lockSimSubscription(ctx, tx, id)
	if err == nil && sub.Status == "canceled" {
		return sub, ErrSimSubscriptionCanceled
	}
	return sub, err
}

// RenewSimSubscription ends the current period of a simulator
// subscription as its clock reaching the period's end would: one set to
// cancel at the period's end is canceled (deliver gets it canceled, inv
// nil); any other starts its next period, right after the current one,
// with a paid invoice (deliver gets both). Under the subscription's lock,
// before anything is kept; an ended subscription is
// ErrSimSubscriptionCanceled.
func (s *Store) RenewSimSubscription(ctx context.Context, id string, ids SimInvoiceIDs, deliver func(sub SimSubscription, inv *SimSession) error) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		sub, err := lockLiveSimSubscription(ctx, tx, id)
		if err != nil {
			return err
		}
		if sub.Status == "past_due" {
			// Its overdue invoice was never paid: the retries ran out, and
			// the subscription ends (Stripe's default), now.
			var now time.Time
			if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
				return err
			}
			sub.Status, sub.CanceledAt, sub.OpenInvoiceID = "canceled", &now, nil
			if err := deliver(sub, nil); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE simulator_subscriptions SET status = 'canceled', canceled_at = $2, open_invoice_id = NULL WHERE id = $1`, id, now)
			return err
		}
		if sub.CancelAtPeriodEnd {
			at := sub.CurrentPeriodEnd
			sub.Status, sub.CanceledAt = "canceled", &at
			if err := deliver(sub, nil); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE simulator_subscriptions SET status = 'canceled', canceled_at = $2 WHERE id = $1`, id, at)
			return err
		}
		if err := advanceSimPeriod(ctx, tx, &sub); err != nil {
			return err
		}
		inv, err := newSimInvoice(ctx, tx, &sub, ids)
		if err != nil {
			return err
		}
		return deliver(sub, &inv)
	})
}

// SetSimCancelAtPeriodEnd sets whether a simulator subscription ends at
// its period's end (deliver gets it changed, under its lock).
func (s *Store) SetSimCancelAtPeriodEnd(ctx context.Context, id string, cancel bool, deliver func(SimSubscription) error) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		sub, err := lockLiveSimSubscription(ctx, tx, id)
		if err != nil {
			return err
		}
		sub.CancelAtPeriodEnd = cancel
		if err := deliver(sub); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_subscriptions SET cancel_at_period_end = $2 WHERE id = $1`, id, cancel)
		return err
	})
}

// SetSimSubscriptionPrice bills a simulator subscription at amount (its
// description changed, meta merged into its metadata) from its next
// renewal, after deliver gets it changed, under its lock; one ended is
// ErrSimSubscriptionCanceled.
func (s *Store) SetSimSubscriptionPrice(ctx context.Context, id string, amount int64, description string, meta map[string]string, deliver func(SimSubscription) error) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		sub, err := lockLiveSimSubscription(ctx, tx, id)
		if err != nil {
			return err
		}
		sub.AmountMinor, sub.Description = amount, description
		if sub.Metadata == nil {
			sub.Metadata = map[string]string{}
		}
		for k, v := range meta {
			sub.Metadata[k] = v
		}
		if err := deliver(sub); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_subscriptions SET amount_minor = $2, description = $3, metadata = $4 WHERE id = $1`, id, amount, description, sub.Metadata)
		return err
	})
}

// CancelSimSubscription ends a simulator subscription now (deliver gets
// it canceled, under its lock); one ended already is
// ErrSimSubscriptionCanceled.
func (s *Store) CancelSimSubscription(ctx context.Context, id string, deliver func(SimSubscription) error) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		sub, err := lockLiveSimSubscription(ctx, tx, id)
		if err != nil {
			return err
		}
		var now time.Time
		if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
			return err
		}
		sub.Status, sub.CanceledAt = "canceled", &now
		if err := deliver(sub); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_subscriptions SET status = 'canceled', canceled_at = $2 WHERE id = $1`, id, now)
		return err
	})
}

// SimSubscriptionsDue lists simulator subscriptions whose period has
// ended, oldest first, at most limit.
func (s *Store) SimSubscriptionsDue(ctx context.Context, limit int) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM simulator_subscriptions WHERE status = 'active' AND current_period_end <= now()
 ORDER BY current_period_end LIMIT $1`, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// SimSubscriptionOfUser loads a user's simulator subscription.
func (s *Store) SimSubscriptionOfUser(ctx context.Context, id string, userID int64) (SimSubscription, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+simSubColumns+` FROM simulator_subscriptions WHERE id = $1 AND user_id = $2`, id, userID)
	if err != nil {
		return SimSubscription{}, err
	}
	sub, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSubscription])
	if errors.Is(err, pgx.ErrNoRows) {
		return sub, Errorf(KindNotFound, "No such subscription.")
	}
	return sub, err
}

// ErrSimNotRenewable answers a simulated failed renewal of a subscription
// that would not renew (set to end, or past due already).
var ErrSimNotRenewable = Errorf(KindConflict, "This subscription does not renew now.")

// FailSimRenewal ends the current period of an active simulator
// subscription as Renew does, but the next period's invoice fails: the
// subscription is past due with that invoice open. deliver gets both,
// under the subscription's lock, before anything is kept.
func (s *Store) FailSimRenewal(ctx context.Context, id string, ids SimInvoiceIDs, deliver func(sub SimSubscription, inv SimSession) error) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		sub, err := lockSimSubscription(ctx, tx, id)
		if err != nil {
			return err
		}
		switch {
		case sub.Status == "canceled":
			return ErrSimSubscriptionCanceled
		case sub.Status != "active" || sub.CancelAtPeriodEnd:
			return ErrSimNotRenewable
		}
		if err := advanceSimPeriod(ctx, tx, &sub); err != nil {
			return err
		}
		inv, err := newSimInvoiceOf(ctx, tx, &sub, ids, false)
		if err != nil {
			return err
		}
		sub.Status, sub.OpenInvoiceID = "past_due", &inv.ID
		if err := deliver(sub, inv); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_subscriptions SET status = 'past_due', open_invoice_id = $2 WHERE id = $1`, id, inv.ID)
		return err
	})
}

// PaySimOverdue pays the open invoice of a past-due simulator
// subscription (its card updated): active again. deliver gets both,
// under the subscription's lock, before anything is kept.
func (s *Store) PaySimOverdue(ctx context.Context, id string, deliver func(sub SimSubscription, inv SimSession) error) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		sub, err := lockLiveSimSubscription(ctx, tx, id)
		if err != nil {
			return err
		}
		if sub.Status != "past_due" || sub.OpenInvoiceID == nil {
			return ErrSimNotRenewable
		}
		rows, err := tx.Query(ctx, `UPDATE simulator_sessions SET status = 'complete', payment_status = 'paid' WHERE id = $1 RETURNING `+simColumns, *sub.OpenInvoiceID)
		if err != nil {
			return err
		}
		inv, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
		if err != nil {
			return err
		}
		sub.Status, sub.OpenInvoiceID = "active", nil
		if err := deliver(sub, inv); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_subscriptions SET status = 'active', open_invoice_id = NULL WHERE id = $1`, id)
		return err
	})
}

// advanceSimPeriod starts a simulator subscription's next period, right
// after the current one.
func advanceSimPeriod(ctx context.Context, tx pgx.Tx, sub *SimSubscription) error {
	return tx.QueryRow(ctx, `
UPDATE simulator_subscriptions SET current_period_start = current_period_end, current_period_end = current_period_end + $2::interval
 WHERE id = $1 RETURNING current_period_start, current_period_end`, sub.ID, SimPeriod).Scan(&sub.CurrentPeriodStart, &sub.CurrentPeriodEnd)
}
