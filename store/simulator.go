package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// SimSession is a checkout session of the payments simulator.
type SimSession struct {
	ID              string            `db:"id"`
	UserID          int64             `db:"user_id"`
	CustomerID      string            `db:"customer_id"`
	AmountMinor     int64             `db:"amount_minor"`
	Currency        string            `db:"currency"`
	Description     string            `db:"description"`
	Metadata        map[string]string `db:"metadata"`
	SuccessURL      string            `db:"success_url"`
	CancelURL       string            `db:"cancel_url"`
	Status          string            `db:"status"`
	PaymentStatus   string            `db:"payment_status"`
	PaymentIntentID string            `db:"payment_intent_id"`
	CreatedAt       time.Time         `db:"created_at"`
	// AmountRefundedMinor is what the simulator refunded of it so far.
	AmountRefundedMinor int64 `db:"amount_refunded_minor"`
	// Mode is "payment" (a pack), "subscription" (a plan's checkout) or
	// "invoice" (the charge of a subscription's invoice: its id is the
	// invoice's).
	Mode           string  `db:"mode"`
	SubscriptionID *string `db:"subscription_id"`
}

const simColumns = `id, user_id, customer_id, amount_minor, currency, description, metadata, success_url, cancel_url, status, payment_status, payment_intent_id, created_at, amount_refunded_minor, mode, subscription_id`

// CreateSimSession stores a new simulator checkout session.
// created is false when a session with ss.ID existed already (nothing is
// written then).
func (s *Store) CreateSimSession(ctx context.Context, ss SimSession) (created bool, err error) {
	md, err := json.Marshal(ss.Metadata)
	if err != nil {
		return false, err
	}
	if ss.Mode == "" {
		ss.Mode = "payment"
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO simulator_sessions (id, user_id, customer_id, amount_minor, currency, description, metadata, success_url, cancel_url, payment_intent_id, mode)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING`,
		ss.ID, ss.UserID, ss.CustomerID, ss.AmountMinor, ss.Currency, ss.Description, md, ss.SuccessURL, ss.CancelURL, ss.PaymentIntentID, ss.Mode)
	return tag.RowsAffected() == 1, err
}

// SimSessionOfUser loads a simulator session that belongs to the user.
func (s *Store) SimSessionOfUser(ctx context.Context, id string, userID int64) (SimSession, error) {
	// An invoice's charge is no checkout: it has no page.
	rows, err := s.pool.Query(ctx, `SELECT `+simColumns+` FROM simulator_sessions WHERE id = $1 AND user_id = $2 AND mode <> 'invoice'`, id, userID)
	if err != nil {
		return SimSession{}, err
	}
	ss, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
	if errors.Is(err, pgx.ErrNoRows) {
		return SimSession{}, Errorf(KindNotFound, "No such checkout session.")
	}
	return ss, err
}

// SimSessionExpiry is how long a simulator checkout stays open, as
// Stripe's default of 24 hours.
const SimSessionExpiry = 24 * time.Hour

// ErrSimSessionExpired answers an attempt to finish a simulator checkout
// that had expired (it is marked expired, and its expiry delivered, then).
var ErrSimSessionExpired = Errorf(KindConflict, "This checkout expired and can no longer be paid.")

// FinishSimSession finishes an open session once, as paid or unpaid:
// holding the session's row lock it calls deliver with the session as it
// will be, and records the change only if deliver succeeds (otherwise the
// session stays open and can be finished again). A session already
// finished, by a concurrent click too, is returned as it is with done
// false and deliver is not called; one open past SimSessionExpiry is
// expired instead (deliver gets it expired) and ErrSimSessionExpired is
// returned.
func (s *Store) FinishSimSession(ctx context.Context, id string, userID int64, paymentStatus string, deliver func(SimSession) error) (ss SimSession, done bool, err error) {
	return s.finishSimSession(ctx, id, userID, paymentStatus, func(_ pgx.Tx, ss SimSession) error { return deliver(ss) })
}

// finishSimSession is FinishSimSession with the transaction given to
// deliver, for what finishing writes besides the session (a subscription).
func (s *Store) finishSimSession(ctx context.Context, id string, userID int64, paymentStatus string, deliver func(pgx.Tx, SimSession) error) (ss SimSession, done bool, err error) {
	expired := false
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+simColumns+` FROM simulator_sessions WHERE id = $1 AND user_id = $2 AND mode <> 'invoice' FOR UPDATE`, id, userID)
		if err != nil {
			return err
		}
		ss, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(KindNotFound, "No such checkout session.")
		}
		if err != nil || ss.Status != "open" {
			return err
		}
		var open bool
		if err := tx.QueryRow(ctx, `SELECT created_at > now() - $1::interval FROM simulator_sessions WHERE id = $2`, SimSessionExpiry.String(), id).Scan(&open); err != nil {
			return err
		}
		if !open {
			expired = true
			ss.Status = "expired"
		} else {
			ss.Status, ss.PaymentStatus = "complete", paymentStatus
		}
		if err := deliver(tx, ss); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_sessions SET status = $2, payment_status = $3 WHERE id = $1`, id, ss.Status, ss.PaymentStatus)
		done = !expired
		return err
	})
	if err == nil && expired {
		err = ErrSimSessionExpired
	}
	return ss, done, err
}

// ErrSimSessionNotOpen is ExpireSimSession's answer for a session already
// finished or expired.
var ErrSimSessionNotOpen = errors.New("simulator: the session is not open")

// ExpireSimSession expires one open session now (its buyer cancelled it),
// calling deliver under its lock as FinishSimSession does; a session
// expired already, or past its day (expired now all the same), is
// ErrSimSessionExpired, one completed ErrSimSessionNotOpen, one that does
// not exist KindNotFound.
func (s *Store) ExpireSimSession(ctx context.Context, id string, deliver func(SimSession) error) error {
	var ranOut bool
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+simColumns+` FROM simulator_sessions WHERE id = $1 FOR UPDATE`, id)
		if err != nil {
			return err
		}
		ss, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(KindNotFound, "No such checkout session.")
		}
		if err != nil {
			return err
		}
		if ss.Status == "expired" {
			return ErrSimSessionExpired
		}
		if ss.Status != "open" {
			return ErrSimSessionNotOpen
		}
		// Past its day it ran out, as Stripe's would have (the sweep that
		// expires such sessions runs each minute): expired all the same,
		// and said so.
		if err := tx.QueryRow(ctx, `SELECT created_at <= now() - $1::interval FROM simulator_sessions WHERE id = $2`, SimSessionExpiry.String(), id).Scan(&ranOut); err != nil {
			return err
		}
		ss.Status = "expired"
		if err := deliver(ss); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_sessions SET status = 'expired' WHERE id = $1`, id)
		return err
	})
	if err == nil && ranOut {
		return ErrSimSessionExpired
	}
	return err
}

// ExpireSimSessions expires up to limit sessions left open past
// SimSessionExpiry, oldest first, each as FinishSimSession would: deliver
// is called under the session's lock (sessions another process is
// finishing are skipped) and the session is marked expired only if it
// succeeds. It returns how many it expired.
func (s *Store) ExpireSimSessions(ctx context.Context, limit int, deliver func(SimSession) error) (int, error) {
	n := 0
	for n < limit {
		found := false
		err := s.InTx(ctx, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `SELECT `+simColumns+` FROM simulator_sessions
 WHERE status = 'open' AND mode <> 'invoice' AND created_at <= now() - $1::interval ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED`, SimSessionExpiry.String())
			if err != nil {
				return err
			}
			ss, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			if err != nil {
				return err
			}
			found = true
			ss.Status = "expired"
			if err := deliver(ss); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE simulator_sessions SET status = 'expired' WHERE id = $1`, ss.ID)
			return err
		})
		if err != nil || !found {
			return n, err
		}
		n++
	}
	return n, nil
}

// Simulator refund refusals, as Stripe words them.
var (
	ErrSimNotPaid         = errors.New("simulator: this payment was never paid, so it cannot be refunded")
	ErrSimRefundTooLarge  = errors.New("simulator: the refund is greater than what is left to refund of the payment")
	ErrSimRefundKeyReused = errors.New("simulator: this idempotency key was used for another refund")
)

// RefundSimSession refunds amount of the paid session of a payment intent
// under an idempotency key, as Stripe's refunds API does: deliver is
// called (under the session's lock, before anything is kept) with the
// session and its new refunded total, to send charge.refunded; a key seen
// before answers its refund again and delivers nothing; more than is left
// to refund is refused. It returns the refund's id.
func (s *Store) RefundSimSession(ctx context.Context, intentID, key string, amount int64, newID string, deliver func(SimSession) error) (refundID string, err error) {
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+simColumns+` FROM simulator_sessions WHERE payment_intent_id = $1 FOR UPDATE`, intentID)
		if err != nil {
			return err
		}
		ss, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(KindNotFound, "No such payment intent.")
		}
		if err != nil {
			return err
		}
		var seenID, seenSession string
		var seenAmount int64
		err = tx.QueryRow(ctx, `SELECT id, session_id, amount_minor FROM simulator_refunds WHERE idempotency_key = $1`, key).Scan(&seenID, &seenSession, &seenAmount)
		switch {
		case err == nil && seenSession == ss.ID && seenAmount == amount:
			refundID = seenID
			return nil
		case err == nil:
			return ErrSimRefundKeyReused
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if ss.PaymentStatus != "paid" {
			return ErrSimNotPaid
		}
		if amount <= 0 || amount > ss.AmountMinor-ss.AmountRefundedMinor {
			return ErrSimRefundTooLarge
		}
		ss.AmountRefundedMinor += amount
		if err := deliver(ss); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE simulator_sessions SET amount_refunded_minor = $2 WHERE id = $1`, ss.ID, ss.AmountRefundedMinor); err != nil {
			return err
		}
		refundID = newID
		_, err = tx.Exec(ctx, `INSERT INTO simulator_refunds (id, session_id, idempotency_key, amount_minor) VALUES ($1, $2, $3, $4)`, newID, ss.ID, key, amount)
		return err
	})
	return refundID, err
}

// ErrSimRefundFailedAlready: the simulator's refund failed before.
var ErrSimRefundFailedAlready = errors.New("simulator: this refund failed already")

// FailSimRefund marks a refund the simulator made as failed, once, after
// deliver (given the refund's session, amount and time) succeeds. A
// refund it did not make is KindNotFound.
func (s *Store) FailSimRefund(ctx context.Context, refundID string, deliver func(ss SimSession, amount int64, created time.Time) error) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		var sessionID string
		var amount int64
		var created time.Time
		var failed *time.Time
		err := tx.QueryRow(ctx, `SELECT session_id, amount_minor, created_at, failed_at FROM simulator_refunds WHERE id = $1 FOR UPDATE`, refundID).Scan(&sessionID, &amount, &created, &failed)
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(KindNotFound, "No such refund.")
		}
		if err != nil {
			return err
		}
		if failed != nil {
			return ErrSimRefundFailedAlready
		}
		rows, err := tx.Query(ctx, `SELECT `+simColumns+` FROM simulator_sessions WHERE id = $1`, sessionID)
		if err != nil {
			return err
		}
		ss, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
		if err != nil {
			return err
		}
		if err := deliver(ss, amount, created); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE simulator_refunds SET failed_at = now() WHERE id = $1`, refundID)
		return err
	})
}
