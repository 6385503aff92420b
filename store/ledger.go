package store

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Grant kinds.
const (
	GrantSubscription = "subscription"
	GrantPack         = "pack"
	GrantAdmin        = "admin"
	GrantPromo        = "promo"
)

// GrantKinds lists every grant kind in the order they are shown: the order
// in which they are spent.
func GrantKinds() []string {
	return []string{GrantSubscription, GrantPack, GrantAdmin, GrantPromo}
}

// ValidGrantKind reports whether k is a grant kind.
func ValidGrantKind(k string) bool {
	for _, g := range GrantKinds() {
		if g == k {
			return true
		}
	}
	return false
}

// Ledger entry kinds.
const (
	EntryGrant    = "grant"
	EntryConsume  = "consume"
	EntryExpire   = "expire"
	EntryClawback = "clawback"
	EntryAdjust   = "adjust"
)

// InsufficientCreditsError is returned when a spend exceeds the live
// balance. Nothing was written.
type InsufficientCreditsError struct {
	Balance  int64
	Required int64
}

func (e *InsufficientCreditsError) Error() string {
	return fmt.Sprintf("insufficient credits: balance %d, required %d", e.Balance, e.Required)
}

// NewGrant describes credits to add.
type NewGrant struct {
	UserID     int64
	Kind       string
	Amount     int64
	ExpiresAt  *time.Time
	SourceKind string
	SourceID   string
	// Actor and Reason are recorded on the entry (admin and CLI grants).
	Actor  *int64
	Reason string
}

func (g NewGrant) validate() error {
	switch {
	case !ValidGrantKind(g.Kind):
		return Errorf(KindInvalid, "Unknown credit kind %q.", g.Kind)
	case g.Amount <= 0:
		return Errorf(KindInvalid, "The amount must be a positive whole number.")
	case g.Amount > MaxGrantCredits:
		return Errorf(KindInvalid, "A grant is at most 1,000,000,000 credits.")
	case g.Kind == GrantSubscription && g.ExpiresAt == nil:
		return Errorf(KindInvalid, "Subscription credits need an expiry.")
	case g.Kind == GrantPack && g.ExpiresAt != nil:
		return Errorf(KindInvalid, "Pack credits never expire.")
	case g.ExpiresAt != nil && !g.ExpiresAt.After(time.Now()):
		return Errorf(KindInvalid, "The expiry must be in the future.")
	case g.ExpiresAt != nil && ExpiryTooFar(*g.ExpiresAt, time.Now()):
		return Errorf(KindInvalid, "The expiry must be less than %d years ahead (a day less at most); credits meant to last longer never expire (no expiry).", MaxExpiryYears)
	case g.SourceKind == "" || g.SourceID == "":
		return Errorf(KindInvalid, "A grant needs a source.")
	}
	return nil
}

// MaxExpiryYears is how far ahead of its making a grant may expire at
// most (a database constraint too, in grants_expiry, migration 00017):
// credits meant to last longer never expire. It keeps every expiry a date
// JSON can carry and the pages can count down to.
const MaxExpiryYears = 100

// ExpiryTooFar reports whether t is too far ahead of now to be a grant's
// expiry. It is a day stricter than the database, which counts 100
// calendar years from the grant's creation in UTC: a day covers the
// difference from a 29 February (Go moves it to 1 March, PostgreSQL to 28
// February) and between this clock and the database's.
func ExpiryTooFar(t, now time.Time) bool {
	return t.After(now.UTC().AddDate(MaxExpiryYears, 0, -1))
}

// MaxGrantCredits is the most one grant holds (a database constraint too),
// so that a user's balance, a sum of grants, cannot overflow.
const MaxGrantCredits = 1_000_000_000

// GrantResult reports the grant a NewGrant produced or found.
type GrantResult struct {
	GrantID int64
	Created bool // false when the source had been granted already
}

// Grant adds credits idempotently: a second grant from the same source
// returns the first one with Created false. db may be a transaction (a
// worker completing its job in the same transaction).
func Grant(ctx context.Context, db DBTX, g NewGrant) (GrantResult, error) {
	if err := g.validate(); err != nil {
		return GrantResult{}, err
	}
	entryKind := EntryGrant
	if g.Actor != nil || g.Reason != "" {
		entryKind = EntryAdjust
	}
	var reason *string
	if g.Reason != "" {
		reason = &g.Reason
	}
	var r GrantResult
	err := db.QueryRow(ctx, `SELECT grant_id, created FROM ledger_grant($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		g.UserID, g.Kind, g.Amount, g.ExpiresAt, g.SourceKind, g.SourceID, entryKind, g.Actor, reason).Scan(&r.GrantID, &r.Created)
	if err != nil {
		return r, fmt.Errorf("grant: %w", err)
	}
	return r, nil
}

// Grant adds credits in their own transaction.
func (s *Store) Grant(ctx context.Context, g NewGrant) (GrantResult, error) {
	return Grant(ctx, s.pool, g)
}

// Drawn is the part of a spend taken from one grant.
type Drawn struct {
	GrantID int64  `json:"grant_id"`
	Kind    string `json:"kind"`
	Credits int64  `json:"credits"`
	// Set by History only, to tell apart two grants of one kind: the
	// grant's expiry (nil: never) and when it was made.
	GrantExpiresAt *time.Time `json:"-"`
	GrantCreatedAt time.Time  `json:"-"`
}

// Usage is one spend on a service.
type Usage struct {
	ID        int64     `json:"usage_id"`
	Service   string    `json:"service"`
	Credits   int64     `json:"credits"`
	Balance   int64     `json:"balance"`
	Drawn     []Drawn   `json:"drawn"`
	CreatedAt time.Time `json:"created_at"`
}

// ConsumeRequest asks to spend a service's cost once per idempotency key.
type ConsumeRequest struct {
	UserID         int64
	Service        string // slug
	IdempotencyKey string
	APIKeyID       *int64
	// gone is closed when the caller gave up (Consume sets it), so that a
	// batch run again leaves it out.
	gone <-chan struct{}
}

// Fingerprint identifies what was asked, so that a reused key with a
// different request is told apart from a replay.
func (r ConsumeRequest) Fingerprint() string {
	h := sha256.Sum256([]byte("service\x00" + r.Service))
	return hex.EncodeToString(h[:16])
}

// MaxIdempotencyKeyLen bounds idempotency keys, in characters (as the
// database does).
const MaxIdempotencyKeyLen = 255

// WebKeyPrefix starts the idempotency keys of uses made on the website
// (each Use button's key). The API refuses keys with it, so that an API
// client's key never answers with a website use.
const WebKeyPrefix = "web:"

// Consume spends a service's cost in one round trip to Postgres. It returns
// the usage and replayed=true when the key was used before for the same
// request. Errors: *InsufficientCreditsError (nothing written), KindConflict
// (key reused with another request), KindNotFound (no such active service).
func Consume(ctx context.Context, db DBTX, req ConsumeRequest) (u Usage, replayed bool, err error) {
	key, err := consumeKey(req)
	if err != nil {
		return u, false, err
	}
	var row consumeRow
	err = db.QueryRow(ctx, `SELECT status, usage_id, service_slug, credits, balance, drawn, created_at
  FROM ledger_consume($1, $2, $3, $4, $5)`,
		req.UserID, req.Service, key, req.Fingerprint(), req.APIKeyID).
		Scan(&row.status, &row.usageID, &row.u.Service, &row.u.Credits, &row.u.Balance, &row.drawn, &row.u.CreatedAt)
	if err != nil {
		return u, false, fmt.Errorf("consume: %w", err)
	}
	return row.result(req)
}

// PriceAbove reports the price of req's service when it is now more than
// maxCredits (what the caller was shown) and req's key has not been used: a
// replay answers what was charged then, whatever the price now. An unknown
// or retired service is not "above": spending it answers that it is gone.
// The check is not atomic with the spend that follows: a price changed in
// between is charged.
func (s *Store) PriceAbove(ctx context.Context, req ConsumeRequest, maxCredits int64) (cost int64, above bool, err error) {
	key, err := consumeKey(req)
	if err != nil {
		return 0, false, err
	}
	var used bool
	err = s.pool.QueryRow(ctx, `
SELECT s.credit_cost, EXISTS (SELECT 1 FROM usages u WHERE u.idempotency_scope = $1::bigint::text || ':' || $2)
  FROM services s WHERE s.slug = $3 AND s.active`, req.UserID, key, req.Service).Scan(&cost, &used)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return cost, !used && cost > maxCredits, nil
}

// consumeKey validates and trims a request's idempotency key.
func consumeKey(req ConsumeRequest) (string, error) {
	key := strings.TrimSpace(req.IdempotencyKey)
	if key == "" || utf8.RuneCountInString(key) > MaxIdempotencyKeyLen {
		return "", Errorf(KindInvalid, "The idempotency key must be 1 to %d characters.", MaxIdempotencyKeyLen)
	}
	return key, nil
}

// consumeRow is one answer of ledger_consume or ledger_consume_many.
type consumeRow struct {
	status  string
	usageID *int64
	u       Usage
	drawn   []byte
}

func (r consumeRow) result(req ConsumeRequest) (Usage, bool, error) {
	u := r.u
	switch r.status {
	case "created", "replayed":
		u.ID = *r.usageID
		if err := json.Unmarshal(r.drawn, &u.Drawn); err != nil {
			return Usage{}, false, fmt.Errorf("consume: decode drawn: %w", err)
		}
		return u, r.status == "replayed", nil
	case "insufficient":
		return Usage{}, false, &InsufficientCreditsError{Balance: u.Balance, Required: u.Credits}
	case "conflict":
		return Usage{}, false, Errorf(KindConflict, "This idempotency key was already used for a different request.")
	case "no_service":
		return Usage{}, false, Errorf(KindNotFound, "No active service %q.", req.Service)
	case "no_account":
		return Usage{}, false, Errorf(KindNotFound, "No credit account for this user.")
	}
	return Usage{}, false, fmt.Errorf("consume: unexpected status %q", r.status)
}

// Consume spends credits, sharing a transaction with spends that arrive
// while the store's consume lanes are busy (see consumeGathered); a lone
// spend runs at once, alone, in one round trip.
func (s *Store) Consume(ctx context.Context, req ConsumeRequest) (Usage, bool, error) {
	key, err := consumeKey(req)
	if err != nil {
		return Usage{}, false, err
	}
	req.IdempotencyKey = key
	if s.alone.busy(req.UserID) {
		// The account is held elsewhere and earlier spends of it wait:
		// this one waits behind them, not in a batch it would hold up.
		return s.consumeAlone(ctx, req)
	}
	req.gone = ctx.Done()
	r, err := s.consumes.Do(ctx, req)
	if errors.Is(err, errRunAlone) {
		// Its batch waited too long for an account lock, or the database
		// refused another spend in it: this spend runs on its own
		// connection, waiting for locks there, not in a lane.
		return s.consumeAlone(ctx, req)
	}
	return r.Usage, r.Replayed, err
}

// aloneDeadlineMargin is how long before its caller's deadline a spend
// running alone gives up waiting for its account.
const aloneDeadlineMargin = 250 * time.Millisecond

// consumeAlone is Consume on its own connection, whose wait for the account
// lock ends, in the server, before ctx's deadline. When a context ends, pgx
// answers at once and leaves the server's statement to a cancel request it
// sends afterwards: a spend still waiting for the lock could take it, and
// be made, after its request had been answered 503 (seen in a test). With
// the server's own lock_timeout the spend is refused before the answer,
// and the error wraps context.DeadlineExceeded (a 503, nothing charged).
func (s *Store) consumeAlone(ctx context.Context, req ConsumeRequest) (Usage, bool, error) {
	release, err := s.alone.enter(ctx, req.UserID)
	if err != nil {
		return Usage{}, false, err
	}
	defer release()
	deadline, ok := ctx.Deadline()
	if !ok {
		return Consume(ctx, s.pool, req)
	}
	for {
		// The connection first, then the time left: a wait for a pooled
		// connection at the end of the request must not push the server's
		// lock wait past the deadline.
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			return Usage{}, false, fmt.Errorf("consume: %w", err)
		}
		wait := time.Until(deadline) - aloneDeadlineMargin
		// Under a millisecond would be "0ms", which PostgreSQL reads as no
		// lock timeout at all.
		if wait < time.Millisecond {
			conn.Release()
			return Usage{}, false, fmt.Errorf("consume: no time left to wait for the account: %w", context.DeadlineExceeded)
		}
		// In tries of aloneTry, letting the spends waiting for a slot go
		// first between them (aloneGate.requeue).
		try := min(wait, aloneTry)
		// ledger_consume_many itself, with its lock timeout: ledger_consume
		// (Consume's, kept for databases migrated before 00006) has none.
		var row consumeRow
		err = conn.QueryRow(ctx, `SELECT status, usage_id, service_slug, credits, balance, drawn, created_at
  FROM ledger_consume_many(ARRAY[$1::bigint], ARRAY[$2::text], ARRAY[$3::text], ARRAY[$4::text], ARRAY[$5::bigint], $6)`,
			req.UserID, req.Service, req.IdempotencyKey, req.Fingerprint(), req.APIKeyID, fmt.Sprintf("%dms", try.Milliseconds())).
			Scan(&row.status, &row.usageID, &row.u.Service, &row.u.Credits, &row.u.Balance, &row.drawn, &row.u.CreatedAt)
		conn.Release()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
			// Held: the user's next spends queue here rather than hold up
			// batches, until one of them gets the account.
			s.alone.markHeld(req.UserID)
			if try < wait {
				if err := s.alone.requeue(ctx, req.UserID); err != nil {
					return Usage{}, false, err
				}
				continue
			}
			return Usage{}, false, fmt.Errorf("consume: the account stayed busy until the deadline: %w (%w)", context.DeadlineExceeded, err)
		}
		if err != nil {
			return Usage{}, false, fmt.Errorf("consume: %w", err)
		}
		s.alone.markFree(req.UserID)
		return row.result(req)
	}
}

// aloneTry is how long a spend running alone waits for its account in one
// try before it lets spends waiting for a slot go first.
const aloneTry = 100 * time.Millisecond

// Spends gathered into one call of ledger_consume_many: one transaction
// and one round trip for the batch, and since migration 00007 a fixed
// number of statements for the whole batch. Two lanes keep two backends
// busy (one computes while the other's commit is flushed); more lanes made
// batches smaller and the whole slower on the 2-core benchmark machine
// (README, Benchmarks).
const (
	consumeLanes    = 2
	consumeMaxBatch = 32
	// consumeTimeout bounds one batch.
	consumeTimeout = 30 * time.Second
	// consumeLockTimeout is how long a batch waits for an account lock.
	consumeLockTimeout = "100ms"
)

// errRunAlone answers the spends of a batch that must run one by one.
var errRunAlone = errors.New("consume: run alone")

// Spent is one spend's outcome in a batch.
type Spent struct {
	Usage    Usage
	Replayed bool
}

// consumeGathered runs the spends the batcher gathered. A lane never waits
// long: a batch gives up on an account lock after consumeLockTimeout
// (lock_timeout, for its transaction), and then, as when the database
// refuses one spend of the batch, every spend of the batch is answered
// errRunAlone and its caller runs it alone; the lane moves on to the spends
// queued behind it.
func (s *Store) consumeGathered(reqs []ConsumeRequest) []BatchResult[Spent] {
	ctx, cancel := context.WithTimeout(context.Background(), consumeTimeout)
	defer cancel()
	results, alone, held, committed := s.consumeMany(ctx, s.pool, reqs)
	if alone {
		if held {
			results, n := s.consumeUnheld(ctx, reqs)
			if n > 0 && s.observeConsumes != nil {
				s.observeConsumes(n)
			}
			return results
		}
		for i := range results {
			results[i] = BatchResult[Spent]{Err: errRunAlone}
		}
		return results
	}
	if committed && s.observeConsumes != nil {
		s.observeConsumes(len(reqs))
	}
	return results
}

// callerGone says whether r's caller gave up: a batch run again leaves it
// out, as a batch leaves out a caller gone before it starts (it was
// charged, answered with its context's error).
func callerGone(r ConsumeRequest) bool {
	select {
	case <-r.gone:
		return r.gone != nil
	default:
		return false
	}
}

// consumeUnheld runs again, in one transaction, the spends of a batch that
// gave up on a held account, leaving out the spends of accounts another
// transaction holds now: it locks the batch's accounts with SKIP LOCKED
// first, so it waits for none. Those left out answer errRunAlone. Run
// alone, every spend of the batch would need a connection of the few the
// store keeps for spends running alone, and spends of accounts nobody
// held waited for one behind spends of held accounts, which keep theirs
// until their deadline (a review: 503s after 30 s for users whose accounts
// were free, once as many accounts were held as those connections).
// made is how many spends it committed.
func (s *Store) consumeUnheld(ctx context.Context, reqs []ConsumeRequest) (_ []BatchResult[Spent], made int) {
	results := make([]BatchResult[Spent], len(reqs))
	for i := range results {
		results[i] = BatchResult[Spent]{Err: errRunAlone}
	}
	users := make([]int64, 0, len(reqs))
	for _, r := range reqs {
		users = append(users, r.UserID)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return results, 0
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	rows, err := tx.Query(ctx, `SELECT user_id FROM accounts WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE SKIP LOCKED`, users)
	if err != nil {
		return results, 0
	}
	free, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(free) == 0 {
		return results, 0
	}
	var subset []ConsumeRequest
	var at []int
	for i, r := range reqs {
		if slices.Contains(free, r.UserID) && !callerGone(r) {
			subset = append(subset, r)
			at = append(at, i)
		}
	}
	if len(subset) == 0 {
		return results, 0
	}
	sub, alone, _, committed := s.consumeMany(ctx, tx, subset)
	if alone || !committed {
		// A refused spend among them, or an error: all run alone.
		return results, 0
	}
	if err := tx.Commit(ctx); err != nil {
		for _, i := range at {
			results[i] = BatchResult[Spent]{Err: fmt.Errorf("consume: %w", err)}
		}
		return results, 0
	}
	for k, i := range at {
		results[i] = sub[k]
	}
	return results, len(subset)
}

// ConsumeBatch runs spends in one call of ledger_consume_many (one
// transaction, one round trip), each with exactly Consume's answer: in
// user-id order, and in the given order for one user. If the batch waits
// more than 100 ms for an account lock, or the database refuses one of its
// spends (store.IsRefused), nothing of it is kept and the spends are run
// one by one, so that only that spend fails.
func (s *Store) ConsumeBatch(ctx context.Context, reqs []ConsumeRequest) []BatchResult[Spent] {
	results, alone, held, _ := s.consumeMany(ctx, s.pool, reqs)
	if !alone {
		return results
	}
	if held {
		// The spends of accounts nobody holds now run together at once;
		// the rest one by one.
		results, _ = s.consumeUnheld(ctx, reqs)
		var rest []ConsumeRequest
		var at []int
		for i, r := range results {
			if errors.Is(r.Err, errRunAlone) {
				rest = append(rest, reqs[i])
				at = append(at, i)
			}
		}
		for k, r := range s.consumeOneByOne(ctx, rest) {
			results[at[k]] = r
		}
		return results
	}
	return s.consumeOneByOne(ctx, reqs)
}

// consumeMany runs spends in one call of ledger_consume_many on db, or
// reports that they must run alone (alone: nothing was written; held: it
// gave up waiting for an account lock, or its statement was cancelled,
// a statement_timeout for instance, rather than a spend being refused).
// committed: the call succeeded and every spend has its answer.
func (s *Store) consumeMany(ctx context.Context, db DBTX, reqs []ConsumeRequest) (results []BatchResult[Spent], alone, held, committed bool) {
	n := len(reqs)
	results = make([]BatchResult[Spent], n)
	users, services, keys, fingerprints, apiKeys := make([]int64, n), make([]string, n), make([]string, n), make([]string, n), make([]*int64, n)
	for i, r := range reqs {
		key, err := consumeKey(r)
		if err != nil {
			// Refused before the database: the others still run.
			return results, true, false, false
		}
		users[i], services[i], keys[i], fingerprints[i], apiKeys[i] = r.UserID, r.Service, key, r.Fingerprint(), r.APIKeyID
	}
	rows, err := db.Query(ctx, `SELECT ord, status, usage_id, service_slug, credits, balance, drawn, created_at
  FROM ledger_consume_many($1, $2, $3, $4, $5, $6)`, users, services, keys, fingerprints, apiKeys, consumeLockTimeout)
	answered := make([]bool, n)
	if err == nil {
		var ord int
		var row consumeRow
		_, err = pgx.ForEachRow(rows, []any{&ord, &row.status, &row.usageID, &row.u.Service, &row.u.Credits, &row.u.Balance, &row.drawn, &row.u.CreatedAt}, func() error {
			if ord < 1 || ord > n || answered[ord-1] {
				return fmt.Errorf("consume: unexpected answer for spend %d of %d", ord, n)
			}
			u, replayed, err := row.result(reqs[ord-1])
			results[ord-1] = BatchResult[Spent]{Value: Spent{u, replayed}, Err: err}
			answered[ord-1] = true
			return nil
		})
	}
	var pgErr *pgconn.PgError
	// 55P03: its lock wait ran out; 57014: its statement was cancelled
	// (a statement_timeout shorter than that wait, an operator's
	// pg_cancel_backend), not by our context (then the callers are gone).
	held = errors.As(err, &pgErr) && (pgErr.Code == "55P03" || (pgErr.Code == "57014" && ctx.Err() == nil))
	if held || IsRefused(err) {
		if s.logger != nil {
			s.logger.Warn("consume batch not kept; its spends run one by one", "spends", n, "err", err)
		}
		return results, true, held, false
	}
	committed = err == nil
	for i := range results {
		if err != nil {
			results[i] = BatchResult[Spent]{Err: fmt.Errorf("consume: %w", err)}
		} else if !answered[i] {
			committed = false
			results[i] = BatchResult[Spent]{Err: fmt.Errorf("consume: no answer for spend %d of %d", i+1, n)}
		}
	}
	return results, false, false, committed
}

func (s *Store) consumeOneByOne(ctx context.Context, reqs []ConsumeRequest) []BatchResult[Spent] {
	results := make([]BatchResult[Spent], len(reqs))
	for i, r := range reqs {
		key, err := consumeKey(r)
		if err != nil {
			results[i] = BatchResult[Spent]{Err: err}
			continue
		}
		r.IdempotencyKey = key
		u, replayed, err := s.consumeAlone(ctx, r)
		results[i] = BatchResult[Spent]{Value: Spent{u, replayed}, Err: err}
	}
	return results
}

// Adjustment is an admin's change to a user's credits.
type Adjustment struct {
	UserID int64
	// Delta > 0 adds an admin grant; Delta < 0 removes credits the way a
	// spend would, never below zero.
	Delta     int64
	Kind      string // for additions: admin (default) or promo
	ExpiresAt *time.Time
	Actor     *int64 // nil for the CLI
	Reason    string
	// Key, when set, makes the adjustment idempotent: a second one with the
	// same key and the same values (a resubmitted form) changes nothing and
	// reports Replayed; with other values it is refused (KindConflict).
	Key string
	// Via names where it was made (web, cli), for the audit log.
	Via string
	// AskRepeatWithin, when set, refuses (*RepeatedAdjustmentError) an
	// adjustment the same actor made to the same user with the same delta
	// and reason, under another key, that long ago or less: most likely a
	// form sent again after Back.
	AskRepeatWithin time.Duration
}

// MaxReasonChars bounds a reason people give (an adjustment's, a
// refund's, a note closing a refund request), in characters.
const MaxReasonChars = 500

// ReasonFault is what is wrong with a reason (ReasonOK: nothing).
type ReasonFault int

// The faults ReasonProblem finds.
const (
	ReasonOK ReasonFault = iota
	ReasonBlank
	ReasonUnsafe  // control or hidden characters, or more than one line
	ReasonNotUTF8 // not valid text
	ReasonTooLong // over MaxReasonChars
)

// ReasonProblem applies the one rule for every reason kept in the ledger
// or the audit log (trimmed): not blank, one line without control or
// hidden characters, valid text, MaxReasonChars at most. Each caller says
// what is wrong in its own words.
func ReasonProblem(reason string) ReasonFault {
	reason = strings.TrimSpace(reason)
	switch {
	case BlankText(reason):
		return ReasonBlank
	case UnsafeLine(reason):
		return ReasonUnsafe
	case !utf8.ValidString(reason):
		return ReasonNotUTF8
	case utf8.RuneCountInString(reason) > MaxReasonChars:
		return ReasonTooLong
	}
	return ReasonOK
}

// CheckAdjustmentReason refuses a reason Adjust would refuse (KindInvalid,
// saying why), so that a form can show it next to its field.
func CheckAdjustmentReason(reason string) error {
	switch ReasonProblem(reason) {
	case ReasonBlank:
		return Errorf(KindInvalid, "Give a reason for the adjustment.")
	case ReasonUnsafe:
		return Errorf(KindInvalid, "Give the reason on one line, without control or hidden characters.")
	case ReasonNotUTF8:
		return Errorf(KindInvalid, "The reason is not valid text (UTF-8).")
	case ReasonTooLong:
		return Errorf(KindInvalid, "Keep the reason to %d characters or fewer.", MaxReasonChars)
	}
	return nil
}

// AdjustResult reports an adjustment.
type AdjustResult struct {
	Balance  int64
	GrantID  int64   // for additions
	Drawn    []Drawn // for removals
	Replayed bool    // the key had been applied already: nothing changed
}

// RepeatedAdjustmentError says the same adjustment (admin, user, amount,
// reason) was made at At, under another key: nothing was changed now.
type RepeatedAdjustmentError struct{ At time.Time }

func (e *RepeatedAdjustmentError) Error() string {
	return "the same adjustment was made at " + e.At.UTC().Format(time.RFC3339)
}

// Adjust applies an admin adjustment and writes it to the audit log in the
// same transaction.
func (s *Store) Adjust(ctx context.Context, a Adjustment) (AdjustResult, error) {
	var res AdjustResult
	a.Reason = strings.TrimSpace(a.Reason)
	if err := CheckAdjustmentReason(a.Reason); err != nil {
		return res, err
	}
	switch {
	case a.Delta == 0:
		return res, Errorf(KindInvalid, "The amount must not be zero.")
	case a.Delta > MaxGrantCredits || a.Delta < -MaxGrantCredits:
		return res, Errorf(KindInvalid, "Adjust by at most 1,000,000,000 credits at a time.")
	case len(a.Key) > 100:
		return res, Errorf(KindInvalid, "The adjustment's key is too long.")
	}
	if a.Kind == "" || a.Delta < 0 {
		// A removal draws like a spend, whatever kinds are there: the kind
		// and expiry of a form's "when adding" fields mean nothing for it.
		a.Kind = GrantAdmin
	}
	if a.Delta < 0 {
		a.ExpiresAt = nil
	}
	if a.ExpiresAt != nil {
		// As the database keeps it (microseconds): a keyed adjustment run
		// again compares its expiry with the one recorded.
		exp := a.ExpiresAt.Round(time.Microsecond)
		a.ExpiresAt = &exp
	}
	source := NewSecret()
	if a.Key != "" {
		// Keys are the user's (credit_adjustments is keyed by user and
		// key), grant sources are unique across users: the source names
		// the user, so one key used for two users makes two grants.
		source = "key:" + strconv.FormatInt(a.UserID, 10) + ":" + a.Key
	}
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		// The account lock first (the lock order), so that two identical
		// adjustments sent at once are checked one after the other (the
		// second sees the first), and so that a deletion committed while
		// this one waited is seen: a deleted account's credits were
		// forfeited, and credits added now could never be spent.
		var deleted bool
		err := tx.QueryRow(ctx, `SELECT u.deleted_at IS NOT NULL FROM accounts a JOIN users u ON u.id = a.user_id
 WHERE a.user_id = $1 FOR UPDATE OF a`, a.UserID).Scan(&deleted)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return Errorf(KindNotFound, "There is no such user.")
		case err != nil:
			return fmt.Errorf("adjust: lock account: %w", err)
		case deleted:
			return Errorf(KindConflict, "This account was deleted; its credits can no longer change.")
		}
		if a.Key != "" {
			// Claim the key first: a concurrent twin waits here for this
			// transaction and then finds the key taken.
			tag, err := tx.Exec(ctx, `INSERT INTO credit_adjustments (user_id, key, delta, kind, expires_at, reason, actor_user_id)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, key) DO NOTHING`, a.UserID, a.Key, a.Delta, a.Kind, a.ExpiresAt, a.Reason, a.Actor)
			if err != nil {
				return fmt.Errorf("adjust: claim key: %w", err)
			}
			if tag.RowsAffected() == 0 {
				return s.replayAdjustment(ctx, tx, a, &res)
			}
		}
		if a.AskRepeatWithin > 0 && a.Actor != nil {
			var at time.Time
			err := tx.QueryRow(ctx, `
SELECT created_at FROM credit_adjustments
 WHERE user_id = $1 AND actor_user_id = $2 AND delta = $3 AND reason = $4 AND key <> $5
   AND created_at > now() - $6::interval
 ORDER BY created_at DESC LIMIT 1`, a.UserID, *a.Actor, a.Delta, a.Reason, a.Key, a.AskRepeatWithin.String()).Scan(&at)
			if err == nil {
				return &RepeatedAdjustmentError{At: at}
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		if a.Delta > 0 && a.Key != "" {
			// Additions keyed before credit_adjustments existed (migration
			// 00009) were kept once by their grant's source alone, then
			// "key:" + key: one sent again is a replay, not a new grant.
			// (Sources are indexed in grant_keys since migration 00015.)
			var amount int64
			var kind string
			var expires *time.Time
			var reason *string
			err := tx.QueryRow(ctx, `SELECT g.amount, g.kind, g.expires_at,
       (SELECT e.reason FROM ledger_entries e WHERE e.user_id = g.user_id AND e.grant_id = g.id ORDER BY e.id LIMIT 1)
  FROM grant_keys k JOIN grants g ON g.id = k.grant_id
 WHERE k.source_kind = 'adjustment' AND k.source_id = 'key:' || $2 AND k.user_id = $1`,
				a.UserID, a.Key).Scan(&amount, &kind, &expires, &reason)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
			case err != nil:
				return fmt.Errorf("adjust: legacy key: %w", err)
			default:
				sameExpiry := (expires == nil) == (a.ExpiresAt == nil) && (expires == nil || expires.Equal(*a.ExpiresAt))
				if amount != a.Delta || kind != a.Kind || !sameExpiry || reason == nil || *reason != a.Reason {
					return Errorf(KindConflict, "This form was already used for another adjustment (%+d %s credits); nothing was changed. Reload the page to make a new one.", amount, kind)
				}
				b, err := BalanceOf(ctx, tx, a.UserID)
				res.Balance, res.Replayed = b.Total, true
				return err
			}
		}
		if a.Delta > 0 {
			g, err := Grant(ctx, tx, NewGrant{
				UserID: a.UserID, Kind: a.Kind, Amount: a.Delta, ExpiresAt: a.ExpiresAt,
				SourceKind: "adjustment", SourceID: source, Actor: a.Actor, Reason: a.Reason,
			})
			if err != nil {
				return err
			}
			res.GrantID = g.GrantID
			if !g.Created {
				// A key is claimed above before its grant is made, so a
				// replay never gets here; a grant already holding this
				// source means the two disagree: refuse, change nothing.
				return fmt.Errorf("adjust: a grant already has source %q", source)
			}
		} else {
			var ok bool
			var drawn []byte
			err := tx.QueryRow(ctx, `SELECT ok, balance, drawn FROM ledger_debit($1, $2, 'adjust', $3, $4)`,
				a.UserID, -a.Delta, a.Actor, a.Reason).Scan(&ok, &res.Balance, &drawn)
			if err != nil {
				return fmt.Errorf("debit: %w", err)
			}
			if !ok {
				return &InsufficientCreditsError{Balance: res.Balance, Required: -a.Delta}
			}
			if err := json.Unmarshal(drawn, &res.Drawn); err != nil {
				return err
			}
		}
		b, err := BalanceOf(ctx, tx, a.UserID)
		if err != nil {
			return err
		}
		res.Balance = b.Total
		// What changed: an addition's grant (kind, expiry), or the grants a
		// removal drew on.
		details := map[string]any{"delta": a.Delta, "reason": a.Reason, "balance_after": res.Balance}
		if a.Delta > 0 {
			details["kind"], details["grant_id"] = a.Kind, res.GrantID
			if a.ExpiresAt != nil {
				details["expires_at"] = a.ExpiresAt.UTC().Format(time.RFC3339Nano)
			}
		} else {
			details["drawn"] = res.Drawn
		}
		if a.Via != "" {
			details["via"] = a.Via
		}
		return Audit(ctx, tx, a.Actor, "credits.adjust", &a.UserID, details)
	})
	return res, err
}

// replayAdjustment answers an adjustment whose key was applied before: the
// same values are a resubmission (nothing changes), other values are
// refused.
func (s *Store) replayAdjustment(ctx context.Context, tx pgx.Tx, a Adjustment, res *AdjustResult) error {
	var delta int64
	var kind, reason string
	var expires *time.Time
	err := tx.QueryRow(ctx, `SELECT delta, kind, expires_at, reason FROM credit_adjustments WHERE user_id = $1 AND key = $2`,
		a.UserID, a.Key).Scan(&delta, &kind, &expires, &reason)
	if err != nil {
		return fmt.Errorf("adjust: read key: %w", err)
	}
	sameExpiry := (expires == nil) == (a.ExpiresAt == nil) && (expires == nil || expires.Equal(*a.ExpiresAt))
	// A removal's kind and expiry mean nothing (keys claimed before removals
	// were normalised may hold the form's "when adding" values).
	sameGrant := delta < 0 || (kind == a.Kind && sameExpiry)
	if delta != a.Delta || reason != a.Reason || !sameGrant {
		what := fmt.Sprintf("%+d %s credits", delta, kind)
		if delta < 0 {
			what = fmt.Sprintf("%+d credits", delta)
		}
		if a.Via == "cli" {
			return Errorf(KindConflict, "This key was already used for another adjustment of this user (%s); nothing was changed. Use another key.", what)
		}
		return Errorf(KindConflict, "This form was already used for another adjustment (%s); nothing was changed. Reload the page to make a new one.", what)
	}
	b, err := BalanceOf(ctx, tx, a.UserID)
	res.Balance, res.Replayed = b.Total, true
	return err
}

// Balance is a user's spendable credits.
type Balance struct {
	Total  int64            `json:"balance"`
	ByKind map[string]int64 `json:"by_kind"`
	// NextExpiry is the soonest expiry among live expiring grants.
	NextExpiry *time.Time `json:"next_expiry"`
	// ExpiringNext is how many credits expire at NextExpiry.
	ExpiringNext int64 `json:"-"`
}

// liveGrant is the condition on grants (unqualified columns) that makes a
// grant spendable now: open and not past its expiry, swept or not. "Now"
// is the statement's start, not the transaction's (now()): a statement
// after a wait for the account lock must not count credits that expired
// during the wait.
const liveGrant = `closed_at IS NULL AND (expires_at IS NULL OR expires_at > statement_timestamp())`

// BalanceOf sums the live grants of a user. Grants past their expiry count
// for nothing from that instant on, swept or not.
func BalanceOf(ctx context.Context, db DBTX, userID int64) (Balance, error) {
	b := Balance{ByKind: map[string]int64{}}
	for _, k := range GrantKinds() {
		b.ByKind[k] = 0
	}
	// One statement, one instant: the credits due at the next expiry are
	// read with it (in a second statement that instant could have passed,
	// and "0 credits expire just now" was shown).
	rows, err := db.Query(ctx, `
WITH live AS (SELECT kind, remaining, expires_at FROM grants WHERE user_id = $1 AND `+liveGrant+`),
     first AS (SELECT min(expires_at) AS at FROM live)
SELECT l.kind, sum(l.remaining)::bigint, min(l.expires_at),
       coalesce(sum(l.remaining) FILTER (WHERE l.expires_at = f.at), 0)::bigint
  FROM live l CROSS JOIN first f
 GROUP BY l.kind`, userID)
	if err != nil {
		return b, err
	}
	defer rows.Close()
	for rows.Next() {
		var kind string
		var sum, due int64
		var exp *time.Time
		if err := rows.Scan(&kind, &sum, &exp, &due); err != nil {
			return b, err
		}
		b.ExpiringNext += due
		b.ByKind[kind] = sum
		b.Total += sum
		if exp != nil && (b.NextExpiry == nil || exp.Before(*b.NextExpiry)) {
			b.NextExpiry = exp
		}
	}
	return b, rows.Err()
}

// Balance returns a user's live balance.
func (s *Store) Balance(ctx context.Context, userID int64) (Balance, error) {
	return BalanceOf(ctx, s.pool, userID)
}

// Expiring is how many live credits of one kind expire at one instant;
// or, with Later set, at the Later instants after the ones listed, the
// last at ExpiresAt.
type Expiring struct {
	Kind      string
	Credits   int64
	ExpiresAt time.Time
	Later     int64
}

// maxExpiringListed bounds ExpiringCredits, per kind: a user with more
// expiry dates of a kind than this sees its soonest, then one line for
// the rest.
const maxExpiringListed = 50

// ExpiringCredits lists a user's live credits that expire, by kind and
// expiry, soonest first (at most 50 dates per kind, then the rest of the
// kind's as one Later line), and how many live credits of each kind never
// expire (kinds with none are absent), read together, and the balance
// they add up to (read apart, a spend or an expiry in between made a
// page's totals disagree with its lines).
func (s *Store) ExpiringCredits(ctx context.Context, userID int64) (Balance, []Expiring, map[string]int64, error) {
	bal := Balance{ByKind: map[string]int64{}}
	expiring, never, err := s.expiringCredits(ctx, userID)
	if err != nil {
		return bal, nil, nil, err
	}
	for _, k := range GrantKinds() {
		bal.ByKind[k] = never[k]
		bal.Total += never[k]
	}
	for _, e := range expiring {
		bal.ByKind[e.Kind] += e.Credits
		bal.Total += e.Credits
		switch {
		case e.Later > 0:
		case bal.NextExpiry == nil || e.ExpiresAt.Before(*bal.NextExpiry):
			at := e.ExpiresAt
			bal.NextExpiry, bal.ExpiringNext = &at, e.Credits
		case e.ExpiresAt.Equal(*bal.NextExpiry):
			bal.ExpiringNext += e.Credits
		}
	}
	return bal, expiring, never, nil
}

func (s *Store) expiringCredits(ctx context.Context, userID int64) ([]Expiring, map[string]int64, error) {
	// One statement, one snapshot: both parts agree with each other.
	rows, err := s.pool.Query(ctx, `
WITH d AS (
    SELECT kind, sum(remaining)::bigint AS credits, expires_at,
           row_number() OVER (PARTITION BY kind ORDER BY expires_at) AS n
      FROM grants
     WHERE user_id = $1 AND expires_at IS NOT NULL AND `+liveGrant+`
     GROUP BY kind, expires_at)
(SELECT kind, sum(remaining)::bigint, NULL::timestamptz, 0::bigint
   FROM grants
  WHERE user_id = $1 AND expires_at IS NULL AND `+liveGrant+`
  GROUP BY kind)
UNION ALL
(SELECT kind, credits, expires_at, 0::bigint FROM d WHERE n <= $2)
UNION ALL
(SELECT kind, sum(credits)::bigint, max(expires_at), count(*) FROM d WHERE n > $2 GROUP BY kind)`, userID, maxExpiringListed)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var expiring []Expiring
	never := map[string]int64{}
	for rows.Next() {
		var e Expiring
		var at *time.Time
		if err := rows.Scan(&e.Kind, &e.Credits, &at, &e.Later); err != nil {
			return nil, nil, err
		}
		if at == nil {
			never[e.Kind] += e.Credits
			continue
		}
		e.ExpiresAt = *at
		expiring = append(expiring, e)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	// UNION ALL keeps no order by itself. A kind's Later line comes after
	// its dates (its ExpiresAt, the last, is after them all).
	slices.SortFunc(expiring, func(a, b Expiring) int {
		return cmp.Or(a.ExpiresAt.Compare(b.ExpiresAt), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Later, b.Later))
	})
	return expiring, never, nil
}

// ExpireResult sums one or more sweep batches.
type ExpireResult struct {
	Users, Grants int64
	Credits       int64
	ByKind        map[string]int64 // credits expired per grant kind
	// Held are users whose overdue grants a sweep left open because
	// another transaction held their account (past SweepOptions.HeldWait,
	// for the first maxHeldWaits of them); a later sweep closes them.
	Held []int64
}

// ExpireOverdueBatch expires up to maxGrants overdue grants (and the other
// overdue grants of the same users) in one statement, a transaction of its
// own: one round trip. It never waits for an account another transaction
// holds: it skips that user's grants (migration 00016), which the end of
// ExpireOverdue or a later sweep closes. Its commit does not wait for the WAL flush
// (ledger_expire_due turns synchronous_commit off for it): a sweep lost in
// a crash is simply redone, and balances exclude overdue grants whether or
// not they were swept.
func (s *Store) ExpireOverdueBatch(ctx context.Context, maxGrants int) (ExpireResult, error) {
	res, _, err := expireBatch(ctx, s.pool, maxGrants, nil)
	return res, err
}

// expireBatch is ExpireOverdueBatch for grants expiring at or after after
// (nil: any), and returns the latest expiry it closed: where the next batch
// of the same sweep starts.
func expireBatch(ctx context.Context, db DBTX, maxGrants int, after *time.Time) (ExpireResult, *time.Time, error) {
	var res ExpireResult
	var last *time.Time
	err := retry(ctx, func() error {
		var err error
		res, last, err = readExpired(db.Query(ctx, `SELECT kind, users, grants, credits, last_expiry FROM ledger_expire_due($1, $2)`, maxGrants, after))
		return err
	})
	return res, last, err
}

// readExpired sums what ledger_expire_due returned.
func readExpired(rows pgx.Rows, err error) (ExpireResult, *time.Time, error) {
	res := ExpireResult{ByKind: map[string]int64{}}
	if err != nil {
		return res, nil, err
	}
	var last *time.Time
	var kind string
	var users, grants, credits int64
	_, err = pgx.ForEachRow(rows, []any{&kind, &users, &grants, &credits, &last}, func() error {
		res.Users += users // users with grants of several kinds count once per kind
		res.Grants += grants
		res.Credits += credits
		res.ByKind[kind] += credits
		return nil
	})
	return res, last, err
}

// HeldAccountWait is how long the end of a sweep waits by default for an
// account another transaction holds: a request holds one for
// milliseconds, so a busy user's account is had within it; a transaction
// left open is not.
const HeldAccountWait = 200 * time.Millisecond

// maxHeldWaits bounds the accounts one sweep waits for in vain (and so the
// time it spends waiting): after that many, it tries the rest without
// waiting. heldUsersPerSweep bounds the users it comes back to.
const (
	maxHeldWaits      = 5
	heldUsersPerSweep = 100
)

// expireHeld is the end of a sweep: the batches skip accounts another
// transaction holds at that instant, and an account whose user spends
// steadily is held most of the time, so skipping alone might never close
// its grants. For each user whose overdue grants are still open (oldest
// first), it waits for the account up to wait, holding no other row
// lock (so it cannot deadlock; the session's sweep lock is only ever
// tried), and closes that user's overdue grants in the same transaction.
// After maxHeldWaits accounts were waited for in vain, the rest are tried
// without waiting. Users still held are returned in Held and left for a
// later sweep.
func expireHeld(ctx context.Context, conn *pgxpool.Conn, wait time.Duration, onBatch func(ExpireResult)) (ExpireResult, error) {
	total := ExpireResult{ByKind: map[string]int64{}}
	// Among the 1,000 oldest overdue grants still open, so that the query
	// stays one short index scan however many are held.
	rows, err := conn.Query(ctx, `
SELECT user_id FROM (
    SELECT user_id, expires_at FROM grants
     WHERE closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()
     ORDER BY expires_at LIMIT 1000) g
 GROUP BY user_id ORDER BY min(expires_at), user_id LIMIT $1`, heldUsersPerSweep)
	if err != nil {
		return total, fmt.Errorf("find accounts the sweep skipped: %w", err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return total, fmt.Errorf("find accounts the sweep skipped: %w", err)
	}
	if wait <= 0 {
		wait = HeldAccountWait
	}
	setWait := fmt.Sprintf("SET LOCAL lock_timeout = %d", max(1, wait.Milliseconds()))
	for _, userID := range users {
		var res ExpireResult
		err := retry(ctx, func() error {
			return runTx(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, setWait); err != nil {
					return err
				}
				lock := `SELECT FROM accounts WHERE user_id = $1 FOR UPDATE`
				if len(total.Held) >= maxHeldWaits {
					lock += ` NOWAIT`
				}
				if _, err := tx.Exec(ctx, lock, userID); err != nil {
					return err
				}
				var err error
				res, _, err = readExpired(tx.Query(ctx, `SELECT kind, users, grants, credits, last_expiry FROM ledger_expire_due(1, NULL, $1)`, userID))
				return err
			})
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
			total.Held = append(total.Held, userID)
			continue
		}
		if err != nil {
			return total, fmt.Errorf("expire the grants of user %d: %w", userID, err)
		}
		total.add(res)
		if onBatch != nil {
			onBatch(res)
		}
	}
	return total, nil
}

// add sums o into r.
func (r *ExpireResult) add(o ExpireResult) {
	r.Users += o.Users
	r.Grants += o.Grants
	r.Credits += o.Credits
	for k, n := range o.ByKind {
		r.ByKind[k] += n
	}
	r.Held = append(r.Held, o.Held...)
}

// SweepOptions paces ExpireOverdue.
type SweepOptions struct {
	// BatchSize is how many overdue grants the first batch picks; a batch
	// also closes the other overdue grants of the users it picked.
	BatchSize int
	// BatchGrants, when set, is how many grants a batch should close: the
	// sweep resizes each batch by what the previous one closed per grant
	// picked. Short batches keep the sweep from holding a core for long at
	// a time, which is what slows the requests sharing the database (README,
	// "A fifth measurement day").
	BatchGrants int
	// Pause is how long the sweep rests after each batch, relative to the
	// batch's duration, leaving the database to the requests that share it
	// (0 sweeps flat out).
	Pause float64
	// Deadline, when set, is when the sweep should be done (e.g. the next
	// scheduled sweep): it rests only as long as the rest of the backlog,
	// at the pace measured so far, still finishes by then.
	Deadline time.Time
	// HeldWait is how long the end of the sweep waits for each account
	// the batches skipped because another transaction held it (0:
	// HeldAccountWait).
	HeldWait time.Duration
}

// SweepLockKey is the SQL expression of the key of the session-level
// advisory lock a sweep holds while it runs (exported for tests and
// operators' queries): one sweep at a time per installation, keyed by the
// grants table the session's search path finds (the one the sweep closes
// grants in), whichever role connects. The lock lives with the session, so
// a sweeping process that dies (SIGKILL, a crash) frees it at once, one
// whose host vanishes within about a minute (ServerKeepalives), and the
// next scheduled sweep goes ahead instead of waiting for the dead one's job
// to be rescued.
const SweepLockKey = `hashtextextended('quickscale:expire-sweep:' || 'grants'::regclass::oid, 0)`

// ErrSweepRunning means another sweep holds the sweep lock: nothing was done.
var ErrSweepRunning = errors.New("another expiry sweep is running")

// takeSweepLock takes the sweep lock on a connection, which the sweep then
// runs its batches on (it needs no other), held until release is called.
// If the lock cannot be given back (the connection broke), the connection
// is closed rather than returned to the pool, which frees the lock too.
func (s *Store) takeSweepLock(ctx context.Context) (_ *pgxpool.Conn, release func(), err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("acquire a connection for the sweep: %w", err)
	}
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+SweepLockKey+`)`).Scan(&got); err != nil {
		conn.Release()
		return nil, nil, fmt.Errorf("take the sweep lock: %w", err)
	}
	if !got {
		conn.Release()
		return nil, nil, ErrSweepRunning
	}
	return conn, func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		var freed bool
		if err := conn.QueryRow(uctx, `SELECT pg_advisory_unlock(`+SweepLockKey+`)`).Scan(&freed); err != nil || !freed {
			_ = conn.Hijack().Close(uctx)
			return
		}
		conn.Release()
	}, nil
}

// ExpireOverdue sweeps overdue grants in batches until none is left or ctx
// ends, calling onBatch after each committed batch. One sweep runs at a
// time: while another holds the sweep lock it returns ErrSweepRunning at
// once. (Two sweeps at once would be correct, each batch locking the
// accounts it closes grants of, but would double the load.)
func (s *Store) ExpireOverdue(ctx context.Context, o SweepOptions, onBatch func(ExpireResult)) (ExpireResult, error) {
	total := ExpireResult{ByKind: map[string]int64{}}
	conn, release, err := s.takeSweepLock(ctx)
	if err != nil {
		return total, err
	}
	defer release()
	var backlog int64
	if o.Pause > 0 && !o.Deadline.IsZero() {
		// How much is due now; what falls due during the sweep is swept too
		// but not planned for.
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM grants
 WHERE closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()`).Scan(&backlog); err != nil {
			return total, fmt.Errorf("count overdue grants: %w", err)
		}
	}
	var worked time.Duration
	var batches int64
	var after *time.Time
	size := max(o.BatchSize, 1)
	for {
		start := time.Now()
		res, last, err := expireBatch(ctx, conn, size, after)
		if err != nil {
			return total, err
		}
		after = last
		if o.BatchGrants > 0 && res.Grants > 0 {
			size = int(max(1, min(int64(o.BatchGrants), int64(size)*int64(o.BatchGrants)/res.Grants)))
		}
		took := time.Since(start)
		worked += took
		batches++
		total.add(res)
		if onBatch != nil {
			onBatch(res)
		}
		if res.Grants == 0 {
			held, err := expireHeld(ctx, conn, o.HeldWait, onBatch)
			total.add(held)
			return total, err
		}
		rest := sweepRest(o, took, worked, batches, total.Grants, backlog-total.Grants, time.Now())
		if rest > 0 {
			t := time.NewTimer(rest)
			select {
			case <-ctx.Done():
				t.Stop()
				return total, ctx.Err()
			case <-t.C:
			}
		}
	}
}

// sweepRest is how long to rest after a batch that took took: o.Pause times
// it, but with a deadline no more than the slack left once the remaining
// grants, at the pace so far (batches batches of swept grants in worked),
// are accounted for, shared over the batches still to run. A batch closes
// every due grant of the users it picked, so it may close more than
// o.BatchSize grants: the batches left are counted at the size seen so far.
func sweepRest(o SweepOptions, took, worked time.Duration, batches, swept, remaining int64, now time.Time) time.Duration {
	rest := time.Duration(float64(took) * o.Pause)
	if o.Deadline.IsZero() || rest <= 0 {
		return rest
	}
	remaining = max(remaining, 0)
	work := time.Duration(float64(worked) / float64(max(swept, 1)) * float64(remaining))
	slack := o.Deadline.Sub(now) - work
	if slack <= 0 {
		return 0
	}
	perBatch := max(swept/max(batches, 1), int64(o.BatchSize), 1)
	left := max((remaining+perBatch-1)/perBatch, 1)
	return min(rest, slack/time.Duration(left))
}

// Clawback takes back up to amount from one grant (never more than it has
// left) and returns what it took.
func Clawback(ctx context.Context, db DBTX, grantID, amount int64, reason string) (int64, error) {
	var taken int64
	err := db.QueryRow(ctx, `SELECT taken FROM ledger_clawback($1, $2, $3)`, grantID, amount, reason).Scan(&taken)
	return taken, err
}

// ErrNoRows reports whether err means a query found nothing.
func ErrNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
