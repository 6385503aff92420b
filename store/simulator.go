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
}

const simColumns = `id, user_id, customer_id, amount_minor, currency, description, metadata, success_url, cancel_url, status, payment_status, payment_intent_id, created_at`

// CreateSimSession stores a new simulator checkout session.
// created is false when a session with ss.ID existed already (nothing is
// written then).
func (s *Store) CreateSimSession(ctx context.Context, ss SimSession) (created bool, err error) {
	md, err := json.Marshal(ss.Metadata)
	if err != nil {
		return false, err
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO simulator_sessions (id, user_id, customer_id, amount_minor, currency, description, metadata, success_url, cancel_url, payment_intent_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING`,
		ss.ID, ss.UserID, ss.CustomerID, ss.AmountMinor, ss.Currency, ss.Description, md, ss.SuccessURL, ss.CancelURL, ss.PaymentIntentID)
	return tag.RowsAffected() == 1, err
}

// SimSessionOfUser loads a simulator session that belongs to the user.
func (s *Store) SimSessionOfUser(ctx context.Context, id string, userID int64) (SimSession, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+simColumns+` FROM simulator_sessions WHERE id = $1 AND user_id = $2`, id, userID)
	if err != nil {
		return SimSession{}, err
	}
	ss, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[SimSession])
	if errors.Is(err, pgx.ErrNoRows) {
		return SimSession{}, Errorf(KindNotFound, "No such checkout session.")
	}
	return ss, err
}

// CompleteSimSession moves an open session to complete with the payment
// status given, once: it reports false when the session was not open.
func (s *Store) CompleteSimSession(ctx context.Context, id string, userID int64, paymentStatus string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE simulator_sessions SET status = 'complete', payment_status = $3
 WHERE id = $1 AND user_id = $2 AND status = 'open'`, id, userID, paymentStatus)
	return tag.RowsAffected() == 1, err
}
