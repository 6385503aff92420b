package store

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Refund request statuses: asked of the provider (or about to be), and its
// answer.
const (
	RefundRequested = "requested"
	RefundAccepted  = "accepted"
	RefundRefused   = "refused"
	RefundClosed    = "closed"
)

// RefundAskAgainWithin is how long after a request it may be asked of the
// provider again under its key: Stripe keeps idempotency keys for 24
// hours, after which the same key would make a second refund.
const RefundAskAgainWithin = 23 * time.Hour

// RefundRequest is support asking the payment provider to refund (part of)
// a payment. The refund itself is recorded when the provider's
// charge.refunded event arrives (RecordRefund).
type RefundRequest struct {
	ID          int64   `db:"id"`
	PaymentID   int64   `db:"payment_id"`
	AdminID     int64   `db:"admin_id"`
	AdminEmail  *string `db:"admin_email"`
	AmountMinor int64   `db:"amount_minor"`
	// RefundedBeforeMinor is what the payment had refunded when this was
	// asked.
	RefundedBeforeMinor int64      `db:"refunded_before_minor"`
	Reason              string     `db:"reason"`
	IdempotencyKey      string     `db:"idempotency_key"`
	Status              string     `db:"status"`
	ProviderRefundID    *string    `db:"provider_refund_id"`
	Refusal             *string    `db:"refusal"`
	CreatedAt           time.Time  `db:"created_at"`
	AnsweredAt          *time.Time `db:"answered_at"`
}

const refundRequestColumns = `r.id, r.payment_id, r.admin_id, (SELECT email FROM users WHERE id = r.admin_id) AS admin_email,
       r.amount_minor, r.refunded_before_minor, r.reason, r.idempotency_key, r.status, r.provider_refund_id, r.refusal, r.created_at, r.answered_at`

// NewRefundRequest is what support asks: which payment, how much, why,
// under the form's key.
type NewRefundRequest struct {
	PaymentID   int64
	AdminID     int64
	AmountMinor int64
	Reason      string
	Key         string
	// Amount is the amount as people read it ("$5.00"), for the audit log.
	Amount string
	// AskRepeatWithin, when set, refuses (*RepeatedRefundError) a refund
	// of the same amount of the payment accepted that long ago or less.
	AskRepeatWithin time.Duration
}

// RefundPendingError: another request of the payment has no answer from
// the provider yet (it may have been made): it is asked again, or closed,
// before any other.
type RefundPendingError struct{ Pending RefundRequest }

func (e *RefundPendingError) Error() string {
	return "another refund request of the payment has no answer yet"
}

// RefundTooLargeError: more than is left to refund. Left counts refunds
// recorded and those accepted but not confirmed yet (Waiting).
type RefundTooLargeError struct{ Left, Waiting int64 }

func (e *RefundTooLargeError) Error() string { return "the refund is more than is left to refund" }

// RepeatedRefundError: a refund of the same amount of the payment was asked
// at At (by By), under another key: most likely the form filled in again
// after Back. Nothing was recorded.
type RepeatedRefundError struct {
	At time.Time
	By *string
}

func (e *RepeatedRefundError) Error() string {
	return "the same refund was asked at " + e.At.UTC().Format(time.RFC3339)
}

// RefundStanding reads a payment's requests (newest first): the newest
// still waiting for the provider's answer, and the accepted ones whose
// refund the payment does not show yet, with their sum. An accepted
// request is shown once the payment's refunded total reaches what it had
// when the request was asked, plus the request, plus the earlier accepted
// requests not shown yet at that time (a refund made meanwhile in Stripe's
// dashboard is in what it had). A dashboard refund made after a request
// can still read as its confirmation: only Stripe's refund ids, which
// charge.refunded does not carry, would tell them apart.
func RefundStanding(pay Payment, requests []RefundRequest) (pending *RefundRequest, unconfirmed []RefundRequest, waiting int64) {
	type asked struct{ expected, amount int64 }
	var earlier []asked
	for i := len(requests) - 1; i >= 0; i-- {
		rq := requests[i]
		if rq.Status != RefundAccepted {
			continue
		}
		expected := rq.RefundedBeforeMinor + rq.AmountMinor
		for _, e := range earlier {
			if e.expected > rq.RefundedBeforeMinor {
				expected += e.amount
			}
		}
		earlier = append(earlier, asked{expected, rq.AmountMinor})
		if pay.AmountRefundedMinor < expected {
			unconfirmed = append([]RefundRequest{rq}, unconfirmed...)
			waiting += rq.AmountMinor
		}
	}
	for i, rq := range requests {
		if rq.Status == RefundRequested {
			pending = &requests[i]
			break
		}
	}
	return pending, unconfirmed, waiting
}

// RecordRefundRequest records a new request and its audit entry in one
// transaction, before the provider is asked, one request of a payment at
// a time: a payment
// not paid or refunded in full is a KindConflict, another request without
// an answer a *RefundPendingError, more than is left a
// *RefundTooLargeError, and, with AskRepeatWithin, a request of the same
// amount made that recently a *RepeatedRefundError. A key recorded before
// is a KindConflict (the caller looks keys up first: RefundRequestByKey).
func (s *Store) RecordRefundRequest(ctx context.Context, r NewRefundRequest) (req RefundRequest, err error) {
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		// Requests of one payment are decided one at a time. A lock of
		// its own, not the payment's row: the worker applying the
		// payment's events holds that, and a refund need not wait for it.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('quickscale.refund_request:' || $1::bigint, 0))`, r.PaymentID); err != nil {
			return err
		}
		// The same form sent twice at once: the other send recorded it.
		var used bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM refund_requests WHERE idempotency_key = $1)`, r.Key).Scan(&used); err != nil {
			return err
		}
		if used {
			return Errorf(KindConflict, "This form was sent twice; the first send asks for its refund (below).")
		}
		pay, err := onePayment(tx.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE id = $1`, r.PaymentID))
		if err != nil {
			return err
		}
		if pay.PaidAt == nil || pay.PaymentIntentID == nil {
			return Errorf(KindConflict, "There is nothing to refund: payment #%d was never paid.", pay.ID)
		}
		if pay.AmountRefundedMinor >= pay.AmountMinor {
			return Errorf(KindConflict, "There is nothing to refund: payment #%d is refunded in full.", pay.ID)
		}
		rows, err := tx.Query(ctx, `SELECT `+refundRequestColumns+` FROM refund_requests r WHERE r.payment_id = $1 ORDER BY r.id DESC`, pay.ID)
		if err != nil {
			return err
		}
		requests, err := pgx.CollectRows(rows, pgx.RowToStructByName[RefundRequest])
		if err != nil {
			return err
		}
		pending, _, waiting := RefundStanding(pay, requests)
		if pending != nil {
			return &RefundPendingError{Pending: *pending}
		}
		if left := max(0, pay.AmountMinor-pay.AmountRefundedMinor-waiting); r.AmountMinor > left {
			return &RefundTooLargeError{Left: left, Waiting: waiting}
		}
		if r.AskRepeatWithin > 0 {
			for _, rq := range requests {
				// From when it was made: a request asked again later was
				// accepted then.
				at := rq.CreatedAt
				if rq.AnsweredAt != nil {
					at = *rq.AnsweredAt
				}
				if rq.AmountMinor == r.AmountMinor && rq.Status == RefundAccepted && time.Since(at) <= r.AskRepeatWithin {
					return &RepeatedRefundError{At: at, By: rq.AdminEmail}
				}
			}
		}
		var id int64
		err = tx.QueryRow(ctx, `
INSERT INTO refund_requests (payment_id, admin_id, amount_minor, refunded_before_minor, reason, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`,
			pay.ID, r.AdminID, r.AmountMinor, pay.AmountRefundedMinor, r.Reason, r.Key).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(KindConflict, "This form was already used; reload the page and try again.")
		}
		if err != nil {
			return err
		}
		if req, err = oneRefundRequest(tx.Query(ctx, `SELECT `+refundRequestColumns+` FROM refund_requests r WHERE r.id = $1`, id)); err != nil {
			return err
		}
		return Audit(ctx, tx, &r.AdminID, "payment.refund", &pay.UserID, map[string]any{
			"payment_id": r.PaymentID, "request_id": id, "amount": r.Amount, "amount_minor": r.AmountMinor, "reason": r.Reason,
		})
	})
	return req, err
}

// RefundRequestByKey finds the request made under a key (ErrNotFound).
func (s *Store) RefundRequestByKey(ctx context.Context, key string) (RefundRequest, error) {
	return oneRefundRequest(s.pool.Query(ctx, `SELECT `+refundRequestColumns+` FROM refund_requests r WHERE r.idempotency_key = $1`, key))
}

// CloseRefundRequest closes a request still waiting for an answer, too old
// to ask again, after support checked the provider's dashboard: why, and
// an audit entry. Closed (or answered) already is a KindConflict.
func (s *Store) CloseRefundRequest(ctx context.Context, id, adminID int64, why string) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		var paymentID, userID int64
		err := tx.QueryRow(ctx, `
UPDATE refund_requests r SET status = 'closed', refusal = $2, answered_at = now()
  FROM payments p
 WHERE r.id = $1 AND r.status = 'requested' AND p.id = r.payment_id
RETURNING r.payment_id, p.user_id`, id, why).Scan(&paymentID, &userID)
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(KindConflict, "This request has an answer already.")
		}
		if err != nil {
			return err
		}
		return Audit(ctx, tx, &adminID, "payment.refund_close", &userID, map[string]any{"payment_id": paymentID, "request_id": id, "reason": why})
	})
}

// CheckRefundReason is CheckAdjustmentReason's rule for a refund's reason.
func CheckRefundReason(reason string) error {
	switch ReasonProblem(reason) {
	case ReasonBlank:
		return Errorf(KindInvalid, "Say why: the reason is kept in the audit log.")
	case ReasonUnsafe, ReasonNotUTF8:
		return Errorf(KindInvalid, "Give the reason on one line, without control or hidden characters.")
	case ReasonTooLong:
		return Errorf(KindInvalid, "Keep the reason to %d characters.", MaxReasonChars)
	}
	return nil
}

// AnswerRefundRequest records the provider's answer to a request still
// waiting for one: the refund's id, or why it was refused. An answer
// recorded already is kept (the first answer wins; a retry under the same
// key gets the same refund anyway).
func (s *Store) AnswerRefundRequest(ctx context.Context, id int64, providerRefundID, refusal string) error {
	status := RefundAccepted
	if providerRefundID == "" {
		status = RefundRefused
		if refusal == "" {
			return errors.New("a refund request is answered with a refund id or a refusal")
		}
	}
	_, err := s.pool.Exec(ctx, `
UPDATE refund_requests SET status = $2, provider_refund_id = nullif($3, ''), refusal = nullif($4, ''), answered_at = now()
 WHERE id = $1 AND status = 'requested'`, id, status, providerRefundID, refusal)
	return err
}

// RefundRequestsOf lists a payment's refund requests, newest first (at
// most 50).
func (s *Store) RefundRequestsOf(ctx context.Context, paymentID int64) ([]RefundRequest, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+refundRequestColumns+`
  FROM refund_requests r WHERE r.payment_id = $1 ORDER BY r.id DESC LIMIT 50`, paymentID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByName[RefundRequest])
}

// PaymentByID finds any user's payment (for support).
func (s *Store) PaymentByID(ctx context.Context, id int64) (Payment, error) {
	return onePayment(s.pool.Query(ctx, `SELECT `+paymentColumns+` FROM payments WHERE id = $1`, id))
}

func oneRefundRequest(rows pgx.Rows, err error) (RefundRequest, error) {
	if err != nil {
		return RefundRequest{}, err
	}
	r, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[RefundRequest])
	if errors.Is(err, pgx.ErrNoRows) {
		return RefundRequest{}, ErrNotFound
	}
	return r, err
}

// RefundKey scopes a refund form's nonce to its payment ("" without a
// nonce, or with one longer than a page's).
func RefundKey(paymentID int64, nonce string) string {
	if nonce == "" || len(nonce) > 64 {
		return ""
	}
	return "quickscale-refund-" + strconv.FormatInt(paymentID, 10) + "-" + nonce
}

// RefundNonce is the form nonce a refund key of the payment was made from
// (RefundKey's inverse; "" for a key of another payment).
func RefundNonce(paymentID int64, key string) string {
	prefix := "quickscale-refund-" + strconv.FormatInt(paymentID, 10) + "-"
	if len(key) <= len(prefix) || key[:len(prefix)] != prefix {
		return ""
	}
	return key[len(prefix):]
}
