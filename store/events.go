package store

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StripeEvent is a stored webhook event.
type StripeEvent struct {
	ID            string     `db:"id"`
	Type          string     `db:"type"`
	APIVersion    string     `db:"api_version"`
	Livemode      bool       `db:"livemode"`
	Created       time.Time  `db:"created"`
	Payload       []byte     `db:"payload"`
	ReceivedAt    time.Time  `db:"received_at"`
	Outcome       *string    `db:"outcome"`
	OutcomeDetail *string    `db:"outcome_detail"`
	ProcessedAt   *time.Time `db:"processed_at"`
	Attempts      int        `db:"attempts"`
	// LastError is the latest failed attempt's error, or why the event
	// waits (kept after a later success, for the record).
	LastError *string `db:"last_error"`
}

// Event outcomes.
const (
	OutcomeApplied = "applied"
	OutcomeIgnored = "ignored"
	OutcomeFailed  = "failed"
)

const eventColumns = `id, type, api_version, livemode, created, payload, received_at, outcome, outcome_detail, processed_at, attempts, last_error`

// InsertStripeEvent stores a verified event in tx and reports whether it
// is new (false: a duplicate delivery, stored before).
func InsertStripeEvent(ctx context.Context, tx pgx.Tx, ev StripeEvent) (bool, error) {
	inserted, err := InsertStripeEvents(ctx, tx, []StripeEvent{ev})
	if err != nil {
		return false, err
	}
	return inserted[0], nil
}

// InsertStripeEvents stores verified events in tx with one statement and
// reports, for each, whether it is new. An id stored before, or seen
// earlier in evs, is a duplicate (false).
func InsertStripeEvents(ctx context.Context, tx pgx.Tx, evs []StripeEvent) ([]bool, error) {
	n := len(evs)
	ids, types, versions, payloads := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	livemodes, created := make([]bool, n), make([]time.Time, n)
	for i, ev := range evs {
		ids[i], types[i], versions[i], payloads[i] = ev.ID, ev.Type, ev.APIVersion, string(ev.Payload)
		livemodes[i], created[i] = ev.Livemode, ev.Created
	}
	rows, err := tx.Query(ctx, `INSERT INTO stripe_events (id, type, api_version, livemode, created, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::timestamptz[], $6::text[]) AS e(id)
-- In id order: two batches holding the same new ids wait on each other's
-- unique-index entries in one order, never in a cycle.
ORDER BY e.id
ON CONFLICT (id) DO NOTHING RETURNING id`, ids, types, versions, livemodes, created, payloads)
	if err != nil {
		return nil, err
	}
	stored, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	isNew := make(map[string]bool, len(stored))
	for _, id := range stored {
		isNew[id] = true
	}
	inserted := make([]bool, n)
	for i, id := range ids {
		// The first occurrence of a new id is the one stored.
		inserted[i] = isNew[id]
		delete(isNew, id)
	}
	return inserted, nil
}

// LockStripeEvent loads an event for update and counts the attempt, so
// that concurrent processing of one event is serialised.
func LockStripeEvent(ctx context.Context, tx pgx.Tx, id string) (StripeEvent, error) {
	rows, err := tx.Query(ctx, `UPDATE stripe_events SET attempts = attempts + 1 WHERE id = $1 RETURNING `+eventColumns, id)
	if err != nil {
		return StripeEvent{}, err
	}
	ev, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[StripeEvent])
	if errors.Is(err, pgx.ErrNoRows) {
		return StripeEvent{}, ErrNotFound
	}
	return ev, err
}

// PendingPurchaseNames reports whether a stored purchase event — a
// checkout.session one for a pack, invoice.paid for a plan's period — that
// is not processed yet, and whose job is still to run, names the payment
// intent: the purchase a refund of it waits for is in hand, only not
// applied (its job queued behind, or the workers were down). An event whose
// job was cancelled or deleted does not count: nothing will apply it.
func PendingPurchaseNames(ctx context.Context, tx pgx.Tx, intentID string) (bool, error) {
	var pending bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM stripe_events e
  WHERE e.outcome IS NULL AND (e.type LIKE 'checkout.session.%' OR e.type = 'invoice.paid') AND strpos(e.payload, $1) > 0
    AND EXISTS (SELECT 1 FROM river_job j
                 WHERE j.kind = 'stripe_event' AND j.args @> jsonb_build_object('event_id', e.id)
                   AND j.state IN ('available', 'pending', 'retryable', 'running', 'scheduled')))`, `"`+intentID+`"`).Scan(&pending)
	return pending, err
}

// SetEventOutcome records how processing ended. Processing an event again
// (an admin's re-process) keeps what the first processing recorded and
// adds a line for this one: "granted 500 credits" must not turn into
// "already fulfilled" with nothing left to say what moved the money. With
// noChange (a processing that found nothing to decide, e.g. a payment
// already in its final state) the event also keeps its outcome.
func SetEventOutcome(ctx context.Context, tx pgx.Tx, id, outcome, detail string, noChange bool) error {
	var d *string
	if detail != "" {
		d = &detail
	}
	_, err := tx.Exec(ctx, `UPDATE stripe_events
   SET outcome = CASE WHEN $4 AND outcome IS NOT NULL THEN outcome ELSE $2 END, processed_at = now(),
       outcome_detail = CASE WHEN outcome IS NULL OR outcome_detail IS NULL THEN $3::text
                             ELSE outcome_detail || E'\n' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') ||
                                  ' UTC, processed again: ' || CASE WHEN $4 THEN 'no change' ELSE $2 END ||
                                  coalesce(', ' || $3::text, '') END
 WHERE id = $1`, id, outcome, d, noChange)
	return err
}

// NoteEventAttempt records, outside the attempt's own (rolled back)
// transaction, that processing an event failed or must wait, and why.
// attempt is River's count of the job's attempts.
func (s *Store) NoteEventAttempt(ctx context.Context, id string, attempt int, why string) error {
	_, err := s.pool.Exec(ctx, `UPDATE stripe_events SET attempts = greatest(attempts, $2), last_error = $3 WHERE id = $1`, id, attempt, why)
	return err
}

// StripeEventByID loads one stored event.
func (s *Store) StripeEventByID(ctx context.Context, id string) (StripeEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+` FROM stripe_events WHERE id = $1`, id)
	if err != nil {
		return StripeEvent{}, err
	}
	ev, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[StripeEvent])
	if errors.Is(err, pgx.ErrNoRows) {
		return StripeEvent{}, ErrNotFound
	}
	return ev, err
}

// EventFilter narrows the admin list of events.
type EventFilter struct {
	Type    string
	Outcome string // applied, ignored, failed, pending or ""
	// Cursor continues after the event received at CursorTime with CursorID.
	CursorTime time.Time
	CursorID   string
	// After, instead, lists the page right above the event received at
	// AfterTime with AfterID (a page's newest: EventPage.NewerTime,
	// NewerID), or the newest page where no more than a page is above it.
	AfterTime time.Time
	AfterID   string
}

// EventPage is one page of events, newest first.
type EventPage struct {
	Events   []StripeEvent
	NextTime time.Time
	NextID   string
	HasMore  bool
	// HasNewer: newer events match the filter, from the one received at
	// NewerTime with NewerID (the page's newest) up.
	NewerTime  time.Time
	NewerID    string
	HasNewer   bool
	EventTypes []string
}

// ListStripeEvents lists stored events, newest first, keyset-paginated.
func (s *Store) ListStripeEvents(ctx context.Context, f EventFilter, limit int) (EventPage, error) {
	var page EventPage
	list := func(cond, order string, extra ...any) ([]StripeEvent, error) {
		rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+` FROM stripe_events
 WHERE ($1 = '' OR type = $1)
   AND ($2 = '' OR ($2 = 'pending' AND outcome IS NULL) OR outcome = $2)`+cond+`
 ORDER BY `+order+` LIMIT $3`, append([]any{strings.TrimSpace(f.Type), f.Outcome}, extra...)...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowToStructByName[StripeEvent])
	}
	const older, down = ` AND (received_at, id) < ($4, $5)`, `received_at DESC, id DESC`
	const newer, up = ` AND (received_at, id) > ($4, $5)`, `received_at, id`
	var evs []StripeEvent
	var err error
	if !f.AfterTime.IsZero() {
		if evs, err = list(newer, up, limit+1, f.AfterTime, f.AfterID); err != nil {
			return page, err
		}
		if len(evs) > limit {
			evs = evs[:limit]
			slices.Reverse(evs)
			page.HasNewer, page.NewerTime, page.NewerID = true, evs[0].ReceivedAt, evs[0].ID
			last := evs[len(evs)-1]
			below, err := list(older, down, 1, last.ReceivedAt, last.ID)
			if err != nil {
				return page, err
			}
			if len(below) > 0 {
				page.HasMore, page.NextTime, page.NextID = true, last.ReceivedAt, last.ID
			}
		} else {
			evs, f.CursorTime = nil, time.Time{} // the newest page
		}
	}
	if evs == nil {
		if f.CursorTime.IsZero() {
			evs, err = list("", down, limit+1)
		} else {
			evs, err = list(older, down, limit+1, f.CursorTime, f.CursorID)
		}
		if err != nil {
			return page, err
		}
		if len(evs) > limit {
			evs = evs[:limit]
			last := evs[len(evs)-1]
			page.HasMore, page.NextTime, page.NextID = true, last.ReceivedAt, last.ID
		}
		if len(evs) > 0 && !f.CursorTime.IsZero() {
			above, err := list(newer, up, 1, evs[0].ReceivedAt, evs[0].ID)
			if err != nil {
				return page, err
			}
			if len(above) > 0 {
				page.HasNewer, page.NewerTime, page.NewerID = true, evs[0].ReceivedAt, evs[0].ID
			}
		}
	}
	page.Events = evs
	// A skip scan over the type index: cost grows with the number of types,
	// not of events.
	rows, err := s.pool.Query(ctx, `
WITH RECURSIVE t AS (
    (SELECT type FROM stripe_events ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT e.type FROM stripe_events e WHERE e.type > t.type ORDER BY e.type LIMIT 1) FROM t WHERE t.type IS NOT NULL
)
SELECT type FROM t WHERE type IS NOT NULL LIMIT 200`)
	if err != nil {
		return page, err
	}
	page.EventTypes, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return page, err
}
