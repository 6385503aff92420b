package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/store"
)

var seq atomic.Int64

// UserOpts overrides fields of a test user.
type UserOpts struct {
	Email      string
	Password   string // default "correct horse battery"
	Admin      bool
	Unverified bool
}

// DefaultPassword is the password of users made by NewUser.
const DefaultPassword = "correct horse battery"

// NewUser creates a verified user (and its credit account) with a unique
// address unless opts say otherwise.
func NewUser(t testing.TB, st *store.Store, opts UserOpts) store.User {
	t.Helper()
	if opts.Email == "" {
		opts.Email = fmt.Sprintf("user%d-%d@example.com", time.Now().UnixNano()%1e6, seq.Add(1))
	}
	if opts.Password == "" {
		opts.Password = DefaultPassword
	}
	hash, err := store.HashPassword(context.Background(), opts.Password)
	if err != nil {
		t.Fatal(err)
	}
	role := store.RoleUser
	if opts.Admin {
		role = store.RoleAdmin
	}
	u, err := st.CreateUser(context.Background(), opts.Email, hash, role, !opts.Unverified)
	if err != nil {
		t.Fatalf("storetest: create user: %v", err)
	}
	return u
}

// GrantOpts overrides fields of a test grant.
type GrantOpts struct {
	Kind      string // default pack
	Amount    int64  // default 100
	ExpiresAt *time.Time
}

// NewGrant gives a user credits from a unique source.
func NewGrant(t testing.TB, st *store.Store, userID int64, opts GrantOpts) store.GrantResult {
	t.Helper()
	if opts.Kind == "" {
		opts.Kind = store.GrantPack
	}
	if opts.Amount == 0 {
		opts.Amount = 100
	}
	if opts.Kind == store.GrantSubscription && opts.ExpiresAt == nil {
		exp := time.Now().Add(30 * 24 * time.Hour)
		opts.ExpiresAt = &exp
	}
	r, err := st.Grant(context.Background(), store.NewGrant{
		UserID: userID, Kind: opts.Kind, Amount: opts.Amount, ExpiresAt: opts.ExpiresAt,
		SourceKind: "test", SourceID: fmt.Sprintf("test-%d-%d", time.Now().UnixNano(), seq.Add(1)),
	})
	if err != nil {
		t.Fatalf("storetest: grant: %v", err)
	}
	return r
}

// ServiceOpts overrides fields of a test service.
type ServiceOpts struct {
	Slug     string
	Cost     int64 // default 10; use NoCost for a free service
	Inactive bool
}

// NoCost asks NewService for a free service.
const NoCost = -1

// NewService adds a service and returns its slug.
func NewService(t testing.TB, st *store.Store, opts ServiceOpts) string {
	t.Helper()
	if opts.Slug == "" {
		opts.Slug = fmt.Sprintf("svc-%d", seq.Add(1))
	}
	switch opts.Cost {
	case 0:
		opts.Cost = 10
	case NoCost:
		opts.Cost = 0
	}
	_, err := st.UpsertService(context.Background(), store.Service{
		Slug: opts.Slug, Name: "Service " + opts.Slug, Description: "A test service.",
		CreditCost: opts.Cost, Active: !opts.Inactive,
	})
	if err != nil {
		t.Fatalf("storetest: service: %v", err)
	}
	return opts.Slug
}

// Violations runs the ledger's invariant queries and returns a description
// of every violation found (empty when the ledger is consistent).
func Violations(t testing.TB, st *store.Store) []string {
	t.Helper()
	checks := []struct{ name, sql string }{
		{"grant remaining differs from the sum of its entries", `
SELECT count(*) FROM grants g
  LEFT JOIN (SELECT grant_id, sum(amount) s FROM ledger_entries GROUP BY grant_id) e ON e.grant_id = g.id
 WHERE g.remaining <> coalesce(e.s, 0)`},
		{"usage entries do not sum to minus its cost", `
SELECT count(*) FROM usages u
  LEFT JOIN (SELECT user_id, usage_id, sum(amount) s FROM ledger_entries WHERE usage_id IS NOT NULL GROUP BY user_id, usage_id) e
         ON e.user_id = u.user_id AND e.usage_id = u.id
 WHERE coalesce(e.s, 0) <> -u.credits`},
		{"grant below zero or above its amount", `SELECT count(*) FROM grants WHERE remaining < 0 OR remaining > amount`},
		{"usage balance_after negative", `SELECT count(*) FROM usages WHERE balance_after < 0`},
		{"entry of another user's grant", `
SELECT count(*) FROM ledger_entries e JOIN grants g ON g.id = e.grant_id WHERE g.user_id <> e.user_id`},
		{"entry of another user's usage", `
SELECT count(*) FROM ledger_entries e
 WHERE e.usage_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM usages u WHERE u.user_id = e.user_id AND u.id = e.usage_id)`},
	}
	var keyed bool // grant_keys exists from migration 00015 on
	if err := st.Pool().QueryRow(context.Background(), `SELECT to_regclass('grant_keys') IS NOT NULL`).Scan(&keyed); err != nil {
		t.Fatalf("storetest: invariants: %v", err)
	}
	if keyed {
		checks = append(checks, struct{ name, sql string }{"grant without its own key row, or a key row without its grant", `
SELECT count(*) FROM grants g FULL JOIN grant_keys k ON k.grant_id = g.id
 WHERE g.id IS NULL OR k.grant_id IS NULL
    OR (k.user_id, k.source_kind, k.source_id) IS DISTINCT FROM (g.user_id, g.source_kind, g.source_id)`})
	}
	var out []string
	for _, c := range checks {
		var n int64
		if err := st.Pool().QueryRow(context.Background(), c.sql).Scan(&n); err != nil {
			t.Fatalf("storetest: invariant %q: %v", c.name, err)
		}
		if n > 0 {
			out = append(out, fmt.Sprintf("%s: %d rows", c.name, n))
		}
	}
	return out
}

// BackdatedGrant writes a grant created at createdAt that expires at
// expiresAt (both may be in the past), with its grant entry, the way only
// the ledger functions may: so tests can build overdue grants without
// waiting. db may be a transaction (to pin now()). It returns the grant id.
func BackdatedGrant(t testing.TB, db store.DBTX, userID int64, kind string, amount int64, createdAt, expiresAt time.Time) int64 {
	t.Helper()
	var id int64
	err := db.QueryRow(context.Background(), `
WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true) AS on),
g AS (
    INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id, created_at)
    SELECT $1::bigint, $2, $3::bigint, $3::bigint, $4, 'test-backdated', $1::bigint::text || '-' || nextval(pg_get_serial_sequence('grants', 'id')), $5 FROM cfg
    RETURNING id, user_id, amount
), e AS (
    INSERT INTO ledger_entries (user_id, grant_id, kind, amount) SELECT user_id, id, 'grant', amount FROM g
)
SELECT id FROM g`, userID, kind, amount, expiresAt, createdAt).Scan(&id)
	if err != nil {
		t.Fatalf("storetest: backdated grant: %v", err)
	}
	return id
}

// ManyGrants gives a user n one-credit grants of kind in one statement,
// each with its grant entry, and returns their ids in id order. With
// firstExpiry set, the grants expire a minute apart, the last made first
// (so drawing order, soonest expiry first, is the reverse of id order);
// without it they never expire.
func ManyGrants(t testing.TB, db store.DBTX, userID int64, kind string, n int, firstExpiry *time.Time) []int64 {
	t.Helper()
	rows, err := db.Query(context.Background(), `
WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true) AS on),
g AS (
    INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id)
    SELECT $1::bigint, $2, 1, 1, $4::timestamptz + ($3::int - i) * interval '1 minute', 'test-many',
           $1::bigint::text || '-' || nextval(pg_get_serial_sequence('grants', 'id'))
      FROM cfg, generate_series(1, $3::int) i
     ORDER BY i
    RETURNING id, user_id, amount
), e AS (
    INSERT INTO ledger_entries (user_id, grant_id, kind, amount) SELECT user_id, id, 'grant', amount FROM g
)
SELECT id FROM g ORDER BY id`, userID, kind, n, firstExpiry)
	if err != nil {
		t.Fatalf("storetest: many grants: %v", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil || len(ids) != n {
		t.Fatalf("storetest: many grants: %d of %d made: %v", len(ids), n, err)
	}
	return ids
}

// HoldAccounts locks the accounts of users in a transaction of its own on
// db, as an admin's adjustment or a stuck session does, until the test
// commits or rolls it back (rolled back when the test ends).
func HoldAccounts(t testing.TB, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, users ...int64) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatalf("storetest: hold accounts: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = ANY($1) FOR UPDATE`, users); err != nil {
		t.Fatalf("storetest: hold accounts: %v", err)
	}
	return tx
}

// AllAtOnce runs fn(0) … fn(n-1) on n goroutines released together, to race
// them against each other, and returns when all have finished.
func AllAtOnce(n int, fn func(i int)) {
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

// WaitFor polls cond every millisecond until it holds, failing the test
// after 10 s: a wait on a condition, not on a guessed delay.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// BackdatedUsage writes a usage of a service made at createdAt (in the
// past), the way only the ledger functions may, for tests of what reads
// usages by time (the analytics rollup). It writes the usage alone: no
// grant is drawn and no entry written, so the ledger's invariant checks
// (Violations) would report it. It returns the usage id.
func BackdatedUsage(t testing.TB, db store.DBTX, userID int64, serviceSlug string, credits int64, createdAt time.Time) int64 {
	t.Helper()
	var id int64
	err := db.QueryRow(context.Background(), `
WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true) AS on)
INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after, created_at)
SELECT $1, s.id, $3, 'backdated-' || nextval(pg_get_serial_sequence('usages', 'id')), 'test', 0, $4
  FROM cfg, services s WHERE s.slug = $2
RETURNING id`, userID, serviceSlug, credits, createdAt).Scan(&id)
	if err != nil {
		t.Fatalf("storetest: backdated usage: %v", err)
	}
	return id
}
