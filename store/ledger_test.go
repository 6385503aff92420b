package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

type ledgerBundle struct {
	st   *store.Store
	user store.User
	ctx  context.Context
}

func setupLedger(t *testing.T) *ledgerBundle {
	t.Helper()
	st := storetest.NewStore(t)
	b := &ledgerBundle{st: st, user: storetest.NewUser(t, st, storetest.UserOpts{}), ctx: context.Background()}
	t.Cleanup(func() {
		if v := storetest.Violations(t, st); len(v) > 0 {
			t.Errorf("ledger invariants violated: %v", v)
		}
	})
	return b
}

func ptr[T any](v T) *T { return &v }

// execInLedger runs one statement the way the ledger functions write (with
// the ledger switch on) and rolls it back, so that only the constraints
// stand between it and the tables.
func (b *ledgerBundle) execInLedger(sql string, args ...any) error {
	tx, err := b.st.Pool().Begin(b.ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(b.ctx) }()
	if _, err := tx.Exec(b.ctx, `SELECT set_config('quickscale.ledger', 'on', true)`); err != nil {
		return err
	}
	_, err = tx.Exec(b.ctx, sql, args...)
	return err
}

func (b *ledgerBundle) consume(t *testing.T, service, key string) (store.Usage, bool, error) {
	t.Helper()
	return b.st.Consume(b.ctx, store.ConsumeRequest{UserID: b.user.ID, Service: service, IdempotencyKey: key})
}

func TestConsumeDrawsSubscriptionBeforePackAndSoonestExpiryFirst(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	pack1 := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 5})
	pack2 := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 50})
	later := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 3, ExpiresAt: ptr(time.Now().Add(48 * time.Hour))})
	sooner := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 4, ExpiresAt: ptr(time.Now().Add(24 * time.Hour))})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 10})

	u, replayed, err := b.consume(t, svc, "k1")
	require.NoError(t, err)
	require.False(t, replayed)
	want := []store.Drawn{
		{GrantID: sooner.GrantID, Kind: store.GrantPromo, Credits: 4},
		{GrantID: later.GrantID, Kind: store.GrantSubscription, Credits: 3},
		{GrantID: pack1.GrantID, Kind: store.GrantPack, Credits: 3},
	}
	if diff := cmp.Diff(want, u.Drawn); diff != "" {
		t.Fatalf("drawn (-want +got):\n%s", diff)
	}
	if u.Balance != 62-10 || u.Credits != 10 {
		t.Fatalf("balance %d credits %d, want 52 and 10", u.Balance, u.Credits)
	}
	u2, _, err := b.consume(t, svc, "k2")
	require.NoError(t, err)
	want2 := []store.Drawn{
		{GrantID: pack1.GrantID, Kind: store.GrantPack, Credits: 2},
		{GrantID: pack2.GrantID, Kind: store.GrantPack, Credits: 8},
	}
	if diff := cmp.Diff(want2, u2.Drawn); diff != "" {
		t.Fatalf("second draw (-want +got):\n%s", diff)
	}
}

// A spend or a removal drawing on hundreds of grants lists each of them, in
// drawing order, as the ledger recorded them (migration 00021 builds the
// list once instead of copying it for every grant).
func TestDrawsOnManyGrantsListEachInOrder(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	admin := storetest.NewUser(t, b.st, storetest.UserOpts{Admin: true})
	packs := storetest.ManyGrants(t, b.st.Pool(), b.user.ID, store.GrantPack, 200, nil)
	subs := storetest.ManyGrants(t, b.st.Pool(), b.user.ID, store.GrantSubscription, 200, ptr(time.Now().Add(time.Hour)))
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 300})

	// Subscription credits first, soonest expiry first (the last made),
	// then packs oldest first.
	var want []store.Drawn
	for i := len(subs) - 1; i >= 0; i-- {
		want = append(want, store.Drawn{GrantID: subs[i], Kind: store.GrantSubscription, Credits: 1})
	}
	for _, id := range packs[:100] {
		want = append(want, store.Drawn{GrantID: id, Kind: store.GrantPack, Credits: 1})
	}
	u, _, err := b.consume(t, svc, "many")
	require.NoError(t, err)
	if diff := cmp.Diff(want, u.Drawn); diff != "" {
		t.Fatalf("drawn (-want +got):\n%s", diff)
	}
	require.EqualValues(t, 100, u.Balance)
	again, replayed, err := b.consume(t, svc, "many")
	require.NoError(t, err)
	require.True(t, replayed)
	if diff := cmp.Diff(u.Drawn, again.Drawn); diff != "" {
		t.Fatalf("the replay's drawn list differs (-first +replay):\n%s", diff)
	}
	// The credit history's line of the use lists them in the same order.
	page, err := b.st.History(b.ctx, b.user.ID, 0, 25)
	require.NoError(t, err)
	require.Equal(t, u.ID, page.Items[0].UsageID)
	var lined []store.Drawn
	for _, d := range page.Items[0].Drawn {
		lined = append(lined, store.Drawn{GrantID: d.GrantID, Kind: d.Kind, Credits: d.Credits})
	}
	if diff := cmp.Diff(u.Drawn, lined); diff != "" {
		t.Fatalf("the history's line (-spend +history):\n%s", diff)
	}

	rm, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: -60, Actor: &admin.ID, Reason: "many"})
	require.NoError(t, err)
	var wantRm []store.Drawn
	for _, id := range packs[100:160] {
		wantRm = append(wantRm, store.Drawn{GrantID: id, Kind: store.GrantPack, Credits: 1})
	}
	if diff := cmp.Diff(wantRm, rm.Drawn); diff != "" {
		t.Fatalf("removal drawn (-want +got):\n%s", diff)
	}
	require.EqualValues(t, 40, rm.Balance)
}

func TestConsumeInsufficientWritesNothingAndCarriesBalance(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 7})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 8})
	_, _, err := b.consume(t, svc, "k")
	var ie *store.InsufficientCreditsError
	require.ErrorAs(t, err, &ie)
	if ie.Balance != 7 || ie.Required != 8 {
		t.Fatalf("error carries balance %d required %d, want 7 and 8", ie.Balance, ie.Required)
	}
	var usages, entries int
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT (SELECT count(*) FROM usages), (SELECT count(*) FROM ledger_entries WHERE kind = 'consume')`).Scan(&usages, &entries))
	if usages != 0 || entries != 0 {
		t.Fatalf("insufficient consume wrote %d usages and %d entries", usages, entries)
	}
	// The key was not burnt: after a top-up the same key succeeds.
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 1})
	u, replayed, err := b.consume(t, svc, "k")
	require.NoError(t, err)
	if replayed || u.Balance != 0 {
		t.Fatalf("after top-up: replayed=%v balance=%d", replayed, u.Balance)
	}
}

func TestConsumeSameKeySameRequestReplaysOriginal(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 100})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 10})
	first, replayed, err := b.consume(t, svc, "same")
	require.NoError(t, err)
	require.False(t, replayed)
	// A later spend changes the balance; the replay must still show the original.
	_, _, err = b.consume(t, svc, "other")
	require.NoError(t, err)
	again, replayed, err := b.consume(t, svc, "same")
	require.NoError(t, err)
	require.True(t, replayed)
	if diff := cmp.Diff(first, again, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Fatalf("replay differs (-first +replay):\n%s", diff)
	}
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	if bal.Total != 80 {
		t.Fatalf("balance %d after two spends of 10 and a replay, want 80", bal.Total)
	}
}

func TestConsumeSameKeyDifferentRequestConflicts(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 100})
	a := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 10})
	c := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 20})
	_, _, err := b.consume(t, a, "k")
	require.NoError(t, err)
	_, _, err = b.consume(t, c, "k")
	if store.ErrorKind(err) != store.KindConflict {
		t.Fatalf("reused key with another service: got %v, want a conflict", err)
	}
}

func TestConsumeUnknownOrInactiveServiceIsNotFound(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 100})
	inactive := storetest.NewService(t, b.st, storetest.ServiceOpts{Inactive: true})
	for _, slug := range []string{"no-such-service", inactive} {
		_, _, err := b.consume(t, slug, "k-"+slug)
		if store.ErrorKind(err) != store.KindNotFound {
			t.Errorf("service %q: got %v, want not found", slug, err)
		}
	}
}

func TestConsumeFreeServiceRecordsUsageWithoutEntries(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: storetest.NoCost})
	u, _, err := b.consume(t, svc, "free")
	require.NoError(t, err)
	if u.Credits != 0 || len(u.Drawn) != 0 || u.Balance != 0 {
		t.Fatalf("free usage = %+v", u)
	}
}

func TestExpiredGrantIsUnspendableFromItsExpiryInstant(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 1})
	tx, err := b.st.Pool().Begin(b.ctx)
	require.NoError(t, err)
	defer tx.Rollback(b.ctx) //nolint:errcheck
	// The condition itself: a grant expiring at the very instant of the
	// statement counts for nothing, one a microsecond later still counts.
	for _, tc := range []struct {
		expires string
		live    int
	}{{"statement_timestamp()", 0}, {"statement_timestamp() + interval '1 microsecond'", 1}} {
		var n int
		require.NoError(t, tx.QueryRow(b.ctx, `SELECT count(*) FROM (SELECT NULL::timestamptz AS closed_at, `+tc.expires+` AS expires_at) g
 WHERE `+store.LiveGrant).Scan(&n))
		require.Equal(t, tc.live, n, "a grant expiring at %s", tc.expires)
	}
	var now time.Time
	require.NoError(t, tx.QueryRow(b.ctx, `SELECT now()`).Scan(&now))
	// Grants born an hour ago: one expires 50 ms after the transaction
	// began, one an hour after.
	storetest.BackdatedGrant(t, tx, b.user.ID, store.GrantSubscription, 5, now.Add(-time.Hour), now.Add(50*time.Millisecond))
	later := storetest.BackdatedGrant(t, tx, b.user.ID, store.GrantSubscription, 2, now.Add(-time.Hour), now.Add(time.Hour))
	storetest.WaitFor(t, "the first grant's expiry to pass", func() bool {
		var past bool
		require.NoError(t, tx.QueryRow(b.ctx, `SELECT clock_timestamp() > $1`, now.Add(50*time.Millisecond)).Scan(&past))
		return past
	})
	// Read after it, in the same transaction (as a read after a wait for
	// the account lock is): the grant that expired meanwhile counts for
	// nothing, though the transaction began before its expiry.
	bal, err := store.BalanceOf(b.ctx, tx, b.user.ID)
	require.NoError(t, err)
	if bal.Total != 2 || bal.ByKind[store.GrantSubscription] != 2 {
		t.Fatalf("balance after an expiry within the transaction = %+v, want only the 2 credits expiring later", bal)
	}
	// A spend happens at its own instant (after the account lock): it
	// draws on the grant expiring in an hour, not on the one drawn first
	// until it expired, and then there is nothing left.
	for i, want := range []int64{1, 0} {
		u, _, err := store.Consume(b.ctx, tx, store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: fmt.Sprint("k", i)})
		require.NoError(t, err)
		if len(u.Drawn) != 1 || u.Drawn[0].GrantID != later || u.Balance != want {
			t.Fatalf("spend %d drew %+v leaving %d, want only the live grant, leaving %d", i, u.Drawn, u.Balance, want)
		}
	}
	_, _, err = store.Consume(b.ctx, tx, store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: "k2"})
	var ie *store.InsufficientCreditsError
	require.ErrorAs(t, err, &ie, "a grant past its expiry at the moment of the spend must not be spendable")
}

func TestExpireOverdueWritesExpireEntriesOnlyForOverdueGrants(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	other := storetest.NewUser(t, b.st, storetest.UserOpts{})
	live := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 10, ExpiresAt: ptr(time.Now().Add(time.Hour))})
	pack := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 10})
	// Overdue grants: created in the past through SQL, as the sweep would find them.
	overdue := func(userID int64, amount int64) {
		storetest.BackdatedGrant(t, b.st.Pool(), userID, store.GrantSubscription, amount, time.Now().Add(-31*24*time.Hour), time.Now().Add(-time.Minute))
	}
	overdue(b.user.ID, 30)
	overdue(b.user.ID, 20)
	overdue(other.ID, 7)

	res, err := b.st.ExpireOverdueBatch(b.ctx, 1000)
	require.NoError(t, err)
	if res.Grants != 3 || res.Credits != 57 || res.ByKind[store.GrantSubscription] != 57 {
		t.Fatalf("sweep = %+v, want 3 grants and 57 credits", res)
	}
	again, err := b.st.ExpireOverdueBatch(b.ctx, 1000)
	require.NoError(t, err)
	if again.Grants != 0 {
		t.Fatalf("second sweep expired %d grants, want 0", again.Grants)
	}
	var remaining int64
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT sum(remaining) FROM grants WHERE id IN ($1, $2)`, live.GrantID, pack.GrantID).Scan(&remaining))
	if remaining != 20 {
		t.Fatalf("live grants changed by the sweep: remaining %d, want 20", remaining)
	}
}

func TestExpireOverdueBatchIsBounded(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	for i := range 5 {
		u := storetest.NewUser(t, b.st, storetest.UserOpts{})
		storetest.BackdatedGrant(t, b.st.Pool(), u.ID, store.GrantPromo, 3, time.Now().Add(-24*time.Hour), time.Now().Add(-time.Duration(i+1)*time.Second))
	}
	res, err := b.st.ExpireOverdueBatch(b.ctx, 2)
	require.NoError(t, err)
	if res.Grants != 2 {
		t.Fatalf("batch of 2 expired %d grants", res.Grants)
	}
}

// A sweep that would rest for minutes after each batch rests no more than
// its deadline allows: with the deadline already passed it sweeps flat out.
func TestSweepRestsOnlyAsLongAsItsDeadlineAllows(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	for i := range 4 {
		u := storetest.NewUser(t, b.st, storetest.UserOpts{})
		storetest.BackdatedGrant(t, b.st.Pool(), u.ID, store.GrantPromo, 3, time.Now().Add(-24*time.Hour), time.Now().Add(-time.Duration(i+1)*time.Second))
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	batches := 0
	res, err := b.st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 1, Pause: 1e5, Deadline: time.Now()}, func(store.ExpireResult) { batches++ })
	require.NoError(t, err, "the sweep rested past its deadline")
	require.EqualValues(t, 4, res.Grants)
	require.Equal(t, 5, batches, "four batches of one and the empty one that ends the sweep")
}

// With BatchGrants, each batch is resized by what the previous one closed
// per grant picked: users with three overdue grants each, a target of six
// grants, a first batch picking six grants (and so closing eighteen), then
// batches picking two users' first grants and closing six.
func TestSweepResizesBatchesToCloseBatchGrants(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	for i := range 12 {
		u := storetest.NewUser(t, b.st, storetest.UserOpts{})
		for k := range 3 {
			// Each user's latest-expiring grant expires before everyone's
			// others: a batch picks one grant per user.
			expires := time.Now().Add(-time.Duration(10*(3-k)+i) * time.Minute)
			storetest.BackdatedGrant(t, b.st.Pool(), u.ID, store.GrantPromo, 3, time.Now().Add(-24*time.Hour), expires)
		}
	}
	var closed []int64
	res, err := b.st.ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 6, BatchGrants: 6}, func(r store.ExpireResult) { closed = append(closed, r.Grants) })
	require.NoError(t, err)
	require.EqualValues(t, 36, res.Grants)
	require.Equal(t, []int64{18, 6, 6, 6, 0}, closed, "grants closed per batch (the last, empty, ends the sweep)")
}

func TestGrantFromSameSourceIsIdempotent(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	g := store.NewGrant{UserID: b.user.ID, Kind: store.GrantPack, Amount: 500, SourceKind: "checkout_session", SourceID: "cs_test_1"}
	first, err := b.st.Grant(b.ctx, g)
	require.NoError(t, err)
	require.True(t, first.Created)
	second, err := b.st.Grant(b.ctx, g)
	require.NoError(t, err)
	if second.Created || second.GrantID != first.GrantID {
		t.Fatalf("second grant = %+v, want the first (%d) not created", second, first.GrantID)
	}
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	require.EqualValues(t, 500, bal.Total)
}

func TestGrantRejectsBadInput(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	past := time.Now().Add(-time.Hour)
	future := time.Now().Add(time.Hour)
	cases := map[string]store.NewGrant{
		"zero amount":             {Kind: store.GrantPack, Amount: 0},
		"negative amount":         {Kind: store.GrantPack, Amount: -5},
		"unknown kind":            {Kind: "gift", Amount: 5},
		"subscription w/o expiry": {Kind: store.GrantSubscription, Amount: 5},
		"pack with expiry":        {Kind: store.GrantPack, Amount: 5, ExpiresAt: &future},
		"expiry in the past":      {Kind: store.GrantPromo, Amount: 5, ExpiresAt: &past},
		"missing source":          {Kind: store.GrantPack, Amount: 5, SourceKind: "-"},
		"over the cap":            {Kind: store.GrantPack, Amount: store.MaxGrantCredits + 1},
	}
	for name, g := range cases {
		g.UserID = b.user.ID
		if g.SourceKind == "" {
			g.SourceKind, g.SourceID = "test", name
		} else {
			g.SourceKind = ""
		}
		_, err := b.st.Grant(b.ctx, g)
		if store.ErrorKind(err) != store.KindInvalid {
			t.Errorf("%s: got %v, want invalid", name, err)
		}
	}
}

// A grant's amount is capped by the database as well, so that a balance
// (a sum of grants) cannot overflow whatever writes the grant.
func TestDatabaseCapsAGrantsAmount(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	for amount, ok := range map[int64]bool{store.MaxGrantCredits: true, store.MaxGrantCredits + 1: false, 1<<63 - 1: false} {
		_, err := b.st.Pool().Exec(b.ctx, `SELECT ledger_grant($1, 'pack', $2, NULL, 'test-cap', $3, 'grant', NULL, NULL)`,
			b.user.ID, amount, fmt.Sprint(amount))
		if ok != (err == nil) {
			t.Errorf("grant of %d: err %v", amount, err)
		}
	}
}

func TestLedgerConstraintsRefuseDirectTampering(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	g := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 3})
	_, _, err := b.consume(t, svc, "k")
	require.NoError(t, err)
	// Outside the ledger functions.
	for name, sql := range map[string]string{
		"update remaining":      `UPDATE grants SET remaining = 1000 WHERE id = $1`,
		"change amount":         `UPDATE grants SET amount = 1000, remaining = remaining WHERE id = $1`,
		"delete grant":          `DELETE FROM grants WHERE id = $1`,
		"update entry":          `UPDATE ledger_entries SET amount = 1 WHERE grant_id = $1`,
		"delete entry":          `DELETE FROM ledger_entries WHERE grant_id = $1`,
		"delete usage":          `DELETE FROM usages WHERE user_id = (SELECT user_id FROM grants WHERE id = $1)`,
		"entry outside ledger":  `INSERT INTO ledger_entries (user_id, grant_id, kind, amount, reason) SELECT user_id, id, 'adjust', -1, 'x' FROM grants WHERE id = $1`,
		"grant born part-spent": `INSERT INTO grants (user_id, kind, amount, remaining, source_kind, source_id) SELECT user_id, 'pack', 5, 4, 'x', 'y' FROM grants WHERE id = $1`,
		"grant born closed":     `INSERT INTO grants (user_id, kind, amount, remaining, source_kind, source_id, closed_at) SELECT user_id, 'pack', 5, 5, 'x', 'z', now() FROM grants WHERE id = $1 AND $2::bigint > 0`,
	} {
		if _, err := b.st.Pool().Exec(b.ctx, sql, g.GrantID); err == nil {
			t.Errorf("%s: succeeded, want the database to refuse it", name)
		}
	}
	// Even where the ledger functions may write, the constraints hold.
	for name, sql := range map[string]string{
		"overdraw":              `UPDATE grants SET remaining = -1, closed_at = NULL WHERE id = $1`,
		"close with credits":    `UPDATE grants SET closed_at = now() WHERE id = $1`,
		"empty but open":        `UPDATE grants SET remaining = 0 WHERE id = $1`,
		"adjust without reason": `INSERT INTO ledger_entries (user_id, grant_id, kind, amount) SELECT user_id, id, 'adjust', 1 FROM grants WHERE id = $1`,
		"consume without usage": `INSERT INTO ledger_entries (user_id, grant_id, kind, amount) SELECT user_id, id, 'consume', -1 FROM grants WHERE id = $1`,
		"positive expire":       `INSERT INTO ledger_entries (user_id, grant_id, kind, amount) SELECT user_id, id, 'expire', 1 FROM grants WHERE id = $1`,
		"entry of another user": `INSERT INTO ledger_entries (user_id, grant_id, kind, amount, reason) SELECT user_id + 1000, id, 'adjust', 1, 'x' FROM grants WHERE id = $1`,
	} {
		if err := b.execInLedger(sql, g.GrantID); err == nil {
			t.Errorf("%s (inside the ledger): succeeded, want a constraint to refuse it", name)
		}
	}
}

// An entry's grant and usage are its own user's (migration 00011 made the
// usage's a foreign key too): the database refuses an entry naming another
// user's usage, or one that does not exist, even inside the ledger.
func TestLedgerEntryNamesOnlyItsUsersGrantAndUsage(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	g := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 3})
	mine, _, err := b.consume(t, svc, "k")
	require.NoError(t, err)
	other := storetest.NewUser(t, b.st, storetest.UserOpts{})
	storetest.NewGrant(t, b.st, other.ID, storetest.GrantOpts{Amount: 10})
	theirs, _, err := b.st.Consume(b.ctx, store.ConsumeRequest{UserID: other.ID, Service: svc, IdempotencyKey: "k"})
	require.NoError(t, err)
	entry := `INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id)
	          SELECT user_id, id, 'consume', -1, $2 FROM grants WHERE id = $1`
	require.NoError(t, b.execInLedger(entry, g.GrantID, mine.ID), "control: an entry of the user's own usage")
	for name, usage := range map[string]int64{"another user's usage": theirs.ID, "no such usage": theirs.ID + 1000} {
		err := b.execInLedger(entry, g.GrantID, usage)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23503" {
			t.Errorf("entry naming %s: got %v, want a foreign-key violation", name, err)
		}
	}
	err = b.execInLedger(`INSERT INTO ledger_entries (user_id, grant_id, kind, amount, reason) SELECT $2, id, 'adjust', 1, 'x' FROM grants WHERE id = $1`, g.GrantID, other.ID)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23503" {
		t.Errorf("entry naming another user's grant: got %v, want a foreign-key violation", err)
	}
}

// Every rule on a grant's, entry's or usage's values is the database's,
// whether it lives in a domain (one value) or a table CHECK (several): each
// write below breaks exactly one rule, inside the ledger switch, and must be
// refused as a check violation.
func TestLedgerRefusesValuesThatBreakARule(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	g := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 3})
	u, _, err := b.consume(t, svc, "k")
	require.NoError(t, err)
	grant := func(kind, amount, expires, source string) string {
		return `INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id, created_at)
		        SELECT user_id, ` + kind + `, ` + amount + `, ` + amount + `, ` + expires + `, ` + source + `, now() FROM grants WHERE id = $1 AND $2::bigint > 0`
	}
	entry := func(kind, amount, usage, reason string) string {
		return `INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id, reason)
		        SELECT user_id, id, ` + kind + `, ` + amount + `, ` + usage + `, ` + reason + ` FROM grants WHERE id = $1 AND $2::bigint > 0`
	}
	usage := func(credits, key, fp, balance string) string {
		return `INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after)
		        SELECT user_id, service_id, ` + credits + `, ` + key + `, ` + fp + `, ` + balance + ` FROM usages WHERE id = $2 AND $1::bigint > 0`
	}
	soon, src := `now() + interval '1 day'`, `'t', gen_random_uuid()::text`
	// The control rows: each is valid and must be accepted, so that the
	// refusals below are down to the one value changed.
	valid := []string{
		grant(`'pack'`, `5`, `NULL`, src),
		grant(`'subscription'`, `5`, soon, src),
		grant(`'promo'`, `5`, `now() + interval '100 years'`, src),
		entry(`'adjust'`, `1`, `NULL`, `'why'`),
		entry(`'consume'`, `-1`, `$2`, `NULL`),
		usage(`0`, `'another-key'`, `'fp'`, `0`),
	}
	for _, sql := range valid {
		require.NoError(t, b.execInLedger(sql, g.GrantID, u.ID), "control row %s", sql)
	}
	for name, sql := range map[string]string{
		"unknown grant kind":           grant(`'gift'`, `5`, `NULL`, src),
		"zero-credit grant":            grant(`'pack'`, `0`, `NULL`, src),
		"empty source":                 grant(`'pack'`, `5`, `NULL`, `'', 'x'`),
		"subscription without expiry":  grant(`'subscription'`, `5`, `NULL`, src),
		"expiring pack":                grant(`'pack'`, `5`, soon, src),
		"expires before it is granted": grant(`'admin'`, `5`, `now() - interval '1 day'`, src),
		"expires over 100 years ahead": grant(`'promo'`, `5`, `now() + interval '100 years 1 second'`, src),
		"expires after year 9999":      grant(`'admin'`, `5`, `'10000-01-01 00:00:00+00'`, src),
		"unknown entry kind":           entry(`'bonus'`, `1`, `NULL`, `'why'`),
		"zero entry":                   entry(`'adjust'`, `0`, `NULL`, `'why'`),
		"blank adjust reason":          entry(`'adjust'`, `1`, `NULL`, `'  '`),
		"negative grant entry":         entry(`'grant'`, `-1`, `NULL`, `NULL`),
		"positive consume":             entry(`'consume'`, `1`, `$2`, `NULL`),
		"clawback with a usage":        entry(`'clawback'`, `-1`, `$2`, `NULL`),
		"negative usage":               usage(`-1`, `'another-key'`, `'fp'`, `0`),
		"negative balance after":       usage(`0`, `'another-key'`, `'fp'`, `-1`),
		"empty idempotency key":        usage(`0`, `''`, `'fp'`, `0`),
		"idempotency key over 255":     usage(`0`, `repeat('k', 256)`, `'fp'`, `0`),
		"empty fingerprint":            usage(`0`, `'another-key'`, `''`, `0`),
	} {
		err := b.execInLedger(sql, g.GrantID, u.ID)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
			t.Errorf("%s: got %v, want a check violation", name, err)
		}
	}
}

func TestAdjustAddsAndRemovesWithReasonAndAudit(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	admin := storetest.NewUser(t, b.st, storetest.UserOpts{Admin: true})
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})

	_, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 5, Actor: &admin.ID, Reason: "  "})
	require.Equal(t, store.KindInvalid, store.ErrorKind(err), "a blank reason must be refused")
	// An expiry further than MaxExpiryYears is refused in words before the
	// database's rule would refuse it.
	far := time.Now().AddDate(store.MaxExpiryYears, 0, 1)
	_, err = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 5, Kind: store.GrantPromo, ExpiresAt: &far, Actor: &admin.ID, Reason: "forever"})
	require.Equal(t, store.KindInvalid, store.ErrorKind(err), "an expiry over 100 years ahead: %v", err)
	require.ErrorContains(t, err, "less than 100 years ahead")

	add, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 5, Actor: &admin.ID, Reason: "goodwill"})
	require.NoError(t, err)
	require.EqualValues(t, 15, add.Balance)

	_, err = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: -16, Actor: &admin.ID, Reason: "too much"})
	var ie *store.InsufficientCreditsError
	require.ErrorAs(t, err, &ie)
	require.EqualValues(t, 15, ie.Balance)

	rm, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: -12, Actor: &admin.ID, Reason: "abuse"})
	require.NoError(t, err)
	require.EqualValues(t, 3, rm.Balance)

	entries, err := b.st.AuditFor(b.ctx, b.user.ID, 10)
	require.NoError(t, err)
	if len(entries) != 2 || entries[0].Details["reason"] != "abuse" || entries[1].Details["reason"] != "goodwill" {
		t.Fatalf("audit log = %+v, want the two successful adjustments newest first", entries)
	}
	if *entries[0].ActorUserID != admin.ID {
		t.Fatalf("audit actor = %d, want %d", *entries[0].ActorUserID, admin.ID)
	}
	// The audit says what changed: the grants a removal drew on (not a
	// kind, which a removal does not choose), an addition's grant.
	removal, addition := entries[0].Details, entries[1].Details
	require.NotContains(t, removal, "kind")
	drawn, _ := json.Marshal(removal["drawn"])
	require.JSONEq(t, fmt.Sprintf(`[{"grant_id":%d,"kind":"pack","credits":10},{"grant_id":%d,"kind":"admin","credits":2}]`,
		rm.Drawn[0].GrantID, add.GrantID), string(drawn))
	require.Equal(t, "admin", addition["kind"])
	require.Equal(t, json.Number(fmt.Sprint(add.GrantID)), addition["grant_id"])

	exp := time.Date(2099, 1, 2, 0, 0, 0, 0, time.UTC)
	promo, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 7, Kind: store.GrantPromo, ExpiresAt: &exp, Reason: "launch", Via: "cli"})
	require.NoError(t, err)
	entries, err = b.st.AuditFor(b.ctx, b.user.ID, 1)
	require.NoError(t, err)
	require.Equal(t, "2099-01-02T00:00:00Z", entries[0].Details["expires_at"])
	require.Equal(t, "cli", entries[0].Details["via"])
	require.Equal(t, json.Number(fmt.Sprint(promo.GrantID)), entries[0].Details["grant_id"])
}

// A reason is limited in characters, not bytes, and must be text.
func TestAdjustReasonIsCountedInCharacters(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	_, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 1, Reason: strings.Repeat("é", 500)})
	require.NoError(t, err, "500 two-byte characters")
	_, err = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 1, Reason: strings.Repeat("é", 501)})
	require.Equal(t, store.KindInvalid, store.ErrorKind(err))
	_, err = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 1, Reason: "bad \xff byte"})
	require.Equal(t, store.KindInvalid, store.ErrorKind(err), "invalid UTF-8 is refused before the database")
	// Users read reasons: nothing invisible-only, no line breaks, escapes or
	// direction overrides.
	for _, reason := range []string{"\u200b", "a\nb", "a\x1b[31mb", "refund \u202egnp"} {
		_, err = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 1, Reason: reason})
		require.Equal(t, store.KindInvalid, store.ErrorKind(err), "reason %q", reason)
	}
}

func TestClawbackNeverTakesMoreThanLeft(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	g := storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 7})
	_, _, err := b.consume(t, svc, "k")
	require.NoError(t, err)
	var taken int64
	err = b.st.InTx(b.ctx, func(tx pgx.Tx) error {
		var err error
		taken, err = store.Clawback(b.ctx, tx, g.GrantID, 10, "refund")
		return err
	})
	require.NoError(t, err)
	if taken != 3 {
		t.Fatalf("clawback took %d, want the 3 left", taken)
	}
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	require.Zero(t, bal.Total)
}

func TestInTxRetriesSerializationFailures(t *testing.T) {
	t.Parallel()
	st := storetest.NewStore(t)
	calls := 0
	err := st.InTx(context.Background(), func(tx pgx.Tx) error {
		calls++
		if calls < 3 {
			// Raise a real 40001 from Postgres.
			_, err := tx.Exec(context.Background(), `DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$`)
			return err
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 3, calls)

	calls = 0
	boom := errors.New("boom")
	err = st.InTx(context.Background(), func(tx pgx.Tx) error { calls++; return boom })
	require.ErrorIs(t, err, boom)
	require.Equal(t, 1, calls, "other errors must not be retried")

	calls = 0
	err = st.InTx(context.Background(), func(tx pgx.Tx) error {
		calls++
		_, err := tx.Exec(context.Background(), `DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40P01'; END $$`)
		return err
	})
	require.True(t, store.IsRetryable(err))
	require.Equal(t, 5, calls, "retries must be bounded")
}

// bigRemoval gives b's user 60 grants of 1 credit, then removes 55 of
// them in one adjustment by support: 55 entries, more than a page.
func bigRemoval(t *testing.T, b *ledgerBundle) {
	t.Helper()
	for range 60 {
		storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 1})
	}
	admin := storetest.NewUser(t, b.st, storetest.UserOpts{Admin: true})
	_, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: -55, Actor: &admin.ID, Reason: "big removal"})
	require.NoError(t, err)
}

// One removal by support drawing on more grants than a page holds is one
// history line, however the page cuts it; the next page goes on below it.
func TestHistoryKeepsOneRemovalOnOneLineAcrossAPageCut(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	bigRemoval(t, b)
	page, err := b.st.History(b.ctx, b.user.ID, 0, 25)
	require.NoError(t, err)
	require.NotEmpty(t, page.Items)
	first := page.Items[0]
	require.Equal(t, "adjust", first.Kind)
	require.EqualValues(t, -55, first.Credits, "the whole removal on the first page")
	require.Len(t, first.Drawn, 55)
	require.Len(t, page.Items, 1)
	next, err := b.st.History(b.ctx, b.user.ID, page.NextCursor, 25)
	require.NoError(t, err)
	require.NotEmpty(t, next.Items)
	require.Equal(t, "grant", next.Items[0].Kind, "the next page starts below the removal")
}

// Going up the history (HistoryNewer) also keeps one removal on one line
// when a page of newer entries cuts through it, and the pages it makes
// meet the older ones with nothing left out.
func TestHistoryNewerKeepsOneRemovalOnOneLine(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	bigRemoval(t, b)
	for range 30 {
		storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 1})
	}
	rows, err := b.st.Pool().Query(b.ctx, `SELECT id FROM ledger_entries WHERE user_id = $1 ORDER BY id`, b.user.ID)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, ids, 60+55+30)

	// Newer than the 60th grant: 25 entries are the removal's first 25.
	page, err := b.st.HistoryNewer(b.ctx, b.user.ID, ids[59], 25)
	require.NoError(t, err)
	require.Len(t, page.Items, 1)
	require.Equal(t, "adjust", page.Items[0].Kind)
	require.EqualValues(t, -55, page.Items[0].Credits, "the whole removal on the page")
	require.Len(t, page.Items[0].Drawn, 55)
	require.Equal(t, ids[59+55], page.NewerAfter, "newer pages go on above the removal")
	require.Equal(t, ids[60], page.NextCursor, "older pages go on below it")
	require.NotZero(t, page.NewerAfter)
	older, err := b.st.History(b.ctx, b.user.ID, page.NextCursor, 25)
	require.NoError(t, err)
	require.Len(t, older.Items, 25)
	require.Equal(t, "grant", older.Items[0].Kind)
	require.Equal(t, ids[59], older.NewerAfter, "and come back to the same place")

	// Above it, 30 grants: a full page, then the newest page.
	page, err = b.st.HistoryNewer(b.ctx, b.user.ID, page.NewerAfter, 25)
	require.NoError(t, err)
	require.Len(t, page.Items, 25)
	require.Equal(t, ids[60+55+24], page.NewerAfter)
	page, err = b.st.HistoryNewer(b.ctx, b.user.ID, page.NewerAfter, 25)
	require.NoError(t, err)
	require.Zero(t, page.NewerAfter, "fewer than a page above: the newest page")
	require.Len(t, page.Items, 25)
	first, err := b.st.History(b.ctx, b.user.ID, 0, 25)
	require.NoError(t, err)
	require.Equal(t, first, page)
}

// The same adjustment sent several times at once under fresh keys (Back
// and Apply, double-clicked): one is applied, the others are asked about.
func TestRepeatedAdjustmentsAtOnceApplyOnce(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	admin := storetest.NewUser(t, b.st, storetest.UserOpts{Admin: true})
	const n = 4
	errs := make([]error, n)
	storetest.AllAtOnce(n, func(i int) {
		_, errs[i] = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 15, Actor: &admin.ID, Reason: "goodwill",
			Key: fmt.Sprintf("%d:form-%d", b.user.ID, i), AskRepeatWithin: 10 * time.Minute})
	})
	applied, asked := 0, 0
	for _, err := range errs {
		var repeated *store.RepeatedAdjustmentError
		switch {
		case err == nil:
			applied++
		case errors.As(err, &repeated):
			asked++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	require.Equal(t, 1, applied)
	require.Equal(t, n-1, asked)
	bal, err := b.st.Balance(b.ctx, b.user.ID)
	require.NoError(t, err)
	require.EqualValues(t, 15, bal.Total)
	// Without the question (confirmed), it is applied again.
	_, err = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 15, Actor: &admin.ID, Reason: "goodwill", Key: fmt.Sprintf("%d:form-x", b.user.ID)})
	require.NoError(t, err)
}

// TestSweepSkipsAnAccountHeldByAnOpenTransaction: a transaction left open
// holding a user's account row (a stuck request, an operator's psql
// session) does not stop the sweep: everyone else's grants are swept, also
// when the batch picks one grant at a time and the held account's grant is
// the oldest; at the end the sweep waits for the held account a moment,
// then leaves that user's grants for a later sweep and says whose; the
// watermark stays at the held grant's expiry, which is what the lag alert
// sees.
func TestSweepSkipsAnAccountHeldByAnOpenTransaction(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	held, free := b.user, storetest.NewUser(t, b.st, storetest.UserOpts{})
	now := time.Now()
	born := now.Add(-24 * time.Hour)
	heldOldest := storetest.BackdatedGrant(t, b.st.Pool(), held.ID, store.GrantSubscription, 5, born, now.Add(-10*time.Minute))
	heldNewest := storetest.BackdatedGrant(t, b.st.Pool(), held.ID, store.GrantPromo, 2, born, now.Add(-time.Minute))
	freeGrant := storetest.BackdatedGrant(t, b.st.Pool(), free.ID, store.GrantSubscription, 7, born, now.Add(-5*time.Minute))

	// Another session holds the account row, on a connection of its own.
	tx, _ := holdAccounts(t, b, held.ID)

	open := func(id int64) bool {
		t.Helper()
		var closed bool
		require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT closed_at IS NOT NULL FROM grants WHERE id = $1`, id).Scan(&closed))
		return !closed
	}
	// Waiting for the held row would run into this deadline.
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	res, err := b.st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 1}, nil)
	require.NoError(t, err, "the sweep must not wait for an account another transaction holds")
	if res.Grants != 1 || res.Credits != 7 || open(freeGrant) {
		t.Fatalf("swept %+v; want only the free user's grant (7 credits) closed", res)
	}
	if len(res.Held) != 1 || res.Held[0] != held.ID {
		t.Fatalf("held accounts %v, want [%d]", res.Held, held.ID)
	}
	if !open(heldOldest) || !open(heldNewest) {
		t.Fatal("a grant of the held account was closed while another transaction held the account")
	}
	at, err := b.st.SweptThrough(b.ctx)
	require.NoError(t, err)
	if want := now.Add(-10 * time.Minute).Truncate(time.Microsecond); !at.Equal(want) {
		t.Fatalf("swept through %s, want the held grant's expiry %s", at, want)
	}

	// Once the transaction ends, the next sweep takes the rest.
	require.NoError(t, tx.Rollback(b.ctx))
	res, err = b.st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 1}, nil)
	require.NoError(t, err)
	if res.Grants != 2 || res.Credits != 7 || open(heldOldest) || open(heldNewest) || len(res.Held) != 0 {
		t.Fatalf("second sweep %+v; want the held user's 2 grants (7 credits) closed", res)
	}
}

// TestSweepWaitsAMomentForAnAccountInUse: an account a request holds when
// the batches pass is waited for at the end of the sweep (up to
// store.HeldAccountWait), and its grants are closed by the same sweep once
// the request ends, reported like a batch's; the wait's lock_timeout does
// not stay on the connection, which goes back to the pool.
func TestSweepWaitsAMomentForAnAccountInUse(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	now := time.Now()
	grant := storetest.BackdatedGrant(t, b.st.Pool(), b.user.ID, store.GrantSubscription, 4, now.Add(-time.Hour), now.Add(-time.Minute))

	tx, holder := holdAccounts(t, b, b.user.ID)

	type outcome struct {
		res store.ExpireResult
		err error
	}
	// A pool of one connection: the sweep's is the one asked afterwards.
	one, err := store.OpenPool(b.ctx, b.st.Pool().Config().ConnString(), store.PoolOptions{MaxConns: 1})
	require.NoError(t, err)
	t.Cleanup(one.Close)
	var reported int64
	done := make(chan outcome, 1)
	go func() {
		// Patient enough for the test to see it wait on a slow machine.
		res, err := store.New(one, nil).ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 10, HeldWait: time.Minute}, func(r store.ExpireResult) { reported += r.Credits })
		done <- outcome{res, err}
	}()
	// The request ends while the sweep waits for its account.
	storetest.WaitFor(t, "the sweep to wait for the account", func() bool {
		var waiting bool
		require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_locks h
  ON h.locktype = 'transactionid' AND h.transactionid = l.transactionid AND h.granted
 WHERE l.locktype = 'transactionid' AND NOT l.granted AND h.pid = $1)`, holder).Scan(&waiting))
		return waiting
	})
	require.NoError(t, tx.Commit(b.ctx))
	got := <-done
	require.NoError(t, got.err)
	if got.res.Grants != 1 || got.res.Credits != 4 || len(got.res.Held) != 0 || reported != 4 {
		t.Fatalf("sweep %+v (%d credits reported to onBatch); want the grant closed once the request ended", got.res, reported)
	}
	var closed bool
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT closed_at IS NOT NULL FROM grants WHERE id = $1`, grant).Scan(&closed))
	require.True(t, closed)
	var lockTimeout string
	require.NoError(t, one.QueryRow(b.ctx, `SHOW lock_timeout`).Scan(&lockTimeout))
	require.Equal(t, "0", lockTimeout, "the sweep's wait must not outlive its transaction")
}

// TestSweepReportsEveryHeldAccount: past the first few accounts held in
// vain the sweep stops waiting but still tries, and reports, every user it
// comes back to.
func TestSweepReportsEveryHeldAccount(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	now := time.Now()
	var held []int64
	for i := range 8 {
		u := storetest.NewUser(t, b.st, storetest.UserOpts{})
		storetest.BackdatedGrant(t, b.st.Pool(), u.ID, store.GrantSubscription, 2, now.Add(-time.Hour), now.Add(-time.Duration(10-i)*time.Minute))
		held = append(held, u.ID)
	}
	holdAccounts(t, b, held...)
	// The youngest overdue grant's account is free.
	storetest.BackdatedGrant(t, b.st.Pool(), b.user.ID, store.GrantPromo, 3, now.Add(-time.Hour), now.Add(-time.Minute))

	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	res, err := b.st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 2, HeldWait: 20 * time.Millisecond}, nil)
	require.NoError(t, err)
	if res.Grants != 1 || res.Credits != 3 {
		t.Fatalf("sweep %+v; want only the free user's grant closed", res)
	}
	if d := cmp.Diff(held, res.Held); d != "" {
		t.Fatalf("held users, oldest grant first (-want +got):\n%s", d)
	}
}

// TestSweepClosesTheGrantsOfAUserWhoSpendsSteadily: an account that three
// clients spend on back to back is locked most of the time; skipping it
// whenever it is locked would never close its user's expired grants.
func TestSweepClosesTheGrantsOfAUserWhoSpendsSteadily(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 1})
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 1_000_000})
	now := time.Now()
	for i := range 5 {
		storetest.BackdatedGrant(t, b.st.Pool(), b.user.ID, store.GrantSubscription, 3, now.Add(-time.Hour), now.Add(-time.Duration(i+1)*time.Minute))
	}
	stop := make(chan struct{})
	var spends sync.WaitGroup
	errs := make(chan error, 3)
	for c := range 3 {
		spends.Add(1)
		go func() {
			defer spends.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := b.st.Consume(b.ctx, store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: fmt.Sprintf("c%d-%d", c, i)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// Sweep once they are under way; however slow the machine, a spend
	// ends within the wait.
	storetest.WaitFor(t, "spends", func() bool {
		var n int
		require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT count(*) FROM usages WHERE user_id = $1`, b.user.ID).Scan(&n))
		return n >= 20
	})
	res, err := b.st.ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 10, HeldWait: time.Minute}, nil)
	require.NoError(t, err)
	close(stop)
	spends.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if res.Grants != 5 || len(res.Held) != 0 {
		t.Fatalf("a sweep closed %d of the 5 expired grants (held: %v) while the user spent", res.Grants, res.Held)
	}
}

// TestSweepClosesGrantsThatExpireAtTheSameInstant: batches that pick one
// grant at a time go on past grants sharing one expiry (a period's end),
// also past a held account among them.
func TestSweepClosesGrantsThatExpireAtTheSameInstant(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	at := time.Now().Add(-time.Minute)
	var users []int64
	for range 6 {
		u := storetest.NewUser(t, b.st, storetest.UserOpts{})
		storetest.BackdatedGrant(t, b.st.Pool(), u.ID, store.GrantSubscription, 2, at.Add(-time.Hour), at)
		users = append(users, u.ID)
	}
	holdAccounts(t, b, users[2])

	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	res, err := b.st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 1}, nil)
	require.NoError(t, err)
	if res.Grants != 5 || res.Credits != 10 || len(res.Held) != 1 || res.Held[0] != users[2] {
		t.Fatalf("sweep %+v; want the 5 grants of free accounts closed and user %d held", res, users[2])
	}
}

// holdAccounts locks the users' account rows in a transaction of another
// session, as a request in flight (or one left open) does, and returns it
// and that session's process id; the test may end it, else closing the
// connection at cleanup rolls it back.
func holdAccounts(t *testing.T, b *ledgerBundle, userIDs ...int64) (pgx.Tx, uint32) {
	t.Helper()
	conn, err := pgx.Connect(b.ctx, b.st.Pool().Config().ConnConfig.ConnString())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(b.ctx)
	require.NoError(t, err)
	for _, id := range userIDs {
		_, err = tx.Exec(b.ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, id)
		require.NoError(t, err)
	}
	return tx, conn.PgConn().PID()
}

// TestSweptThroughFollowsTheSweep: the watermark the sweep-lag gauge
// exports is now while nothing is overdue, the oldest overdue expiry while
// grants wait to be swept, moves forward batch by batch as a sweep closes
// them in expiry order, and is now again when the sweep is done.
func TestSweptThroughFollowsTheSweep(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	dbNow := func() time.Time {
		t.Helper()
		var now time.Time
		require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT now()`).Scan(&now))
		return now
	}
	requireNow := func(what string) {
		t.Helper()
		before := dbNow()
		got, err := b.st.SweptThrough(b.ctx)
		require.NoError(t, err)
		after := dbNow()
		if got.Before(before) || got.After(after) {
			t.Fatalf("%s: swept through %s, want the query's now() (between %s and %s)", what, got, before, after)
		}
	}
	requireAt := func(what string, want time.Time) {
		t.Helper()
		got, err := b.st.SweptThrough(b.ctx)
		require.NoError(t, err)
		if !got.Equal(want.Truncate(time.Microsecond)) {
			t.Fatalf("%s: swept through %s, want %s", what, got, want.Truncate(time.Microsecond))
		}
	}

	requireNow("no grants at all")
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 10})
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 10, ExpiresAt: ptr(time.Now().Add(time.Hour))})
	requireNow("only live grants")

	other := storetest.NewUser(t, b.st, storetest.UserOpts{})
	now := dbNow()
	oldest := now.Add(-10 * time.Minute)
	middle := now.Add(-7 * time.Minute)
	newest := now.Add(-3 * time.Minute)
	born := now.Add(-24 * time.Hour)
	storetest.BackdatedGrant(t, b.st.Pool(), other.ID, store.GrantPromo, 5, born, middle)
	storetest.BackdatedGrant(t, b.st.Pool(), b.user.ID, store.GrantSubscription, 5, born, newest)
	requireAt("two overdue grants", middle)
	// Another user's, older: the watermark goes back to it.
	third := storetest.NewUser(t, b.st, storetest.UserOpts{})
	storetest.BackdatedGrant(t, b.st.Pool(), third.ID, store.GrantSubscription, 1, born, oldest)
	requireAt("an older overdue grant", oldest)

	// One grant per batch: after the first batch the oldest is closed and
	// the watermark is the next one's expiry, after the second the last's.
	var seen []time.Time
	_, err := b.st.ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 1}, func(store.ExpireResult) {
		got, err := b.st.SweptThrough(b.ctx)
		require.NoError(t, err)
		seen = append(seen, got)
	})
	require.NoError(t, err)
	if len(seen) != 4 || !seen[0].Equal(middle.Truncate(time.Microsecond)) || !seen[1].Equal(newest.Truncate(time.Microsecond)) || seen[2].Before(now) || seen[3].Before(seen[2]) {
		t.Fatalf("swept through after each batch: %v; want %s, %s, then now (after %s)", seen, middle, newest, now)
	}
	requireNow("after the sweep")
}

// One sweep at a time: while another holds the sweep lock, ExpireOverdue
// does nothing and says so; a holder whose connection dies (a killed
// worker) frees it at once; a sweep gives it back when it ends, also when
// its context ends mid-sweep.
func TestOneSweepAtATime(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	pool := b.st.Pool()
	overdue := func() int {
		var n int
		require.NoError(t, pool.QueryRow(b.ctx, `SELECT count(*) FROM grants WHERE closed_at IS NULL AND expires_at <= now()`).Scan(&n))
		return n
	}
	for range 3 {
		storetest.BackdatedGrant(t, pool, b.user.ID, store.GrantPromo, 5, time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
	}
	holder, err := pgx.ConnectConfig(b.ctx, pool.Config().ConnConfig.Copy())
	require.NoError(t, err)
	t.Cleanup(func() { holder.Close(context.Background()) })
	var got bool
	require.NoError(t, holder.QueryRow(b.ctx, `SELECT pg_try_advisory_lock(`+store.SweepLockKey+`)`).Scan(&got))
	require.True(t, got)
	var holderPID int
	require.NoError(t, holder.QueryRow(b.ctx, `SELECT pg_backend_pid()`).Scan(&holderPID))

	res, err := b.st.ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 10}, nil)
	require.ErrorIs(t, err, store.ErrSweepRunning)
	require.Zero(t, res.Grants)
	require.Equal(t, 3, overdue(), "a sweep ran beside the one holding the lock")

	// The holder dies, as a killed worker's connection does.
	require.NoError(t, pool.QueryRow(b.ctx, `SELECT pg_terminate_backend($1, 10000)`, holderPID).Scan(&got))
	require.True(t, got)
	res, err = b.st.ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 10}, nil)
	require.NoError(t, err)
	require.EqualValues(t, 3, res.Grants)

	free := func(what string) {
		t.Helper()
		var got bool
		// A connection of its own: a session holding the lock would be
		// given it again.
		c, err := pgx.ConnectConfig(b.ctx, pool.Config().ConnConfig.Copy())
		require.NoError(t, err)
		defer c.Close(b.ctx)
		require.NoError(t, c.QueryRow(b.ctx, `SELECT pg_try_advisory_lock(`+store.SweepLockKey+`)`).Scan(&got))
		require.True(t, got, "the sweep lock is still held after %s", what)
		require.NoError(t, c.QueryRow(b.ctx, `SELECT pg_advisory_unlock(`+store.SweepLockKey+`)`).Scan(&got))
	}
	free("a sweep that ended")

	// A sweep whose context ends while it rests gives the lock back too.
	// (Two users: a batch closes every overdue grant of the users it picks.)
	storetest.BackdatedGrant(t, pool, b.user.ID, store.GrantPromo, 5, time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
	other := storetest.NewUser(t, b.st, storetest.UserOpts{})
	storetest.BackdatedGrant(t, pool, other.ID, store.GrantPromo, 5, time.Now().Add(-time.Hour), time.Now().Add(-2*time.Minute))
	ctx, cancel := context.WithCancel(b.ctx)
	_, err = b.st.ExpireOverdue(ctx, store.SweepOptions{BatchSize: 1, Pause: 1e6}, func(store.ExpireResult) { cancel() })
	require.ErrorIs(t, err, context.Canceled)
	free("a cancelled sweep")
	require.Equal(t, 1, overdue(), "the cancelled sweep should have closed one batch of one grant")

	// The sweep runs its batches on the connection holding the lock: a
	// pool of one connection is enough (a worker's pool may be small, and
	// a sweep holding one connection while waiting for another could wait
	// on itself).
	one, err := store.OpenPool(b.ctx, pool.Config().ConnString(), store.PoolOptions{MaxConns: 1})
	require.NoError(t, err)
	defer one.Close()
	octx, ocancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer ocancel()
	res, err = store.New(one, slog.New(slog.DiscardHandler)).ExpireOverdue(octx, store.SweepOptions{BatchSize: 10}, nil)
	require.NoError(t, err, "a sweep on a pool of one connection")
	require.EqualValues(t, 1, res.Grants)
}

// A sweep started while another is between its batches is refused: the
// lock is held for the whole sweep, not only while taking it.
func TestASecondSweepIsRefusedMidSweep(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	for i := range 3 {
		u := storetest.NewUser(t, b.st, storetest.UserOpts{})
		storetest.BackdatedGrant(t, b.st.Pool(), u.ID, store.GrantPromo, 5, time.Now().Add(-time.Hour), time.Now().Add(-time.Duration(i+1)*time.Minute))
	}
	var during []error
	res, err := b.st.ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 1}, func(r store.ExpireResult) {
		if r.Grants > 0 {
			_, err := b.st.ExpireOverdue(b.ctx, store.SweepOptions{BatchSize: 1}, nil)
			during = append(during, err)
		}
	})
	require.NoError(t, err)
	require.EqualValues(t, 3, res.Grants)
	require.Len(t, during, 3)
	for i, err := range during {
		require.ErrorIs(t, err, store.ErrSweepRunning, "a second sweep after the first's batch %d", i+1)
	}
}

// Deleting an account while an admin's adjustment of it is under way (the
// adjustment holds the account, then checks its actor's row) waits for the
// adjustment, not deadlocks with it: the deletion locks every live admin's
// row (against losing the last one) before the account, and with FOR
// UPDATE the actor's key check waited for that. Both for a user and for an
// admin deleted while another admin adjusts their account.
func TestDeletingAnAccountWaitsForAnAdminsAdjustmentOfIt(t *testing.T) {
	t.Parallel()
	for _, target := range []storetest.UserOpts{{}, {Admin: true}} {
		ctx := context.Background()
		st := storetest.NewStore(t)
		pool := st.Pool()
		admin := storetest.NewUser(t, st, storetest.UserOpts{Admin: true})
		u := storetest.NewUser(t, st, target)
		adjusting, err := pool.Begin(ctx)
		require.NoError(t, err)
		// As Adjust with a key and a repeat check: the account, then the key.
		_, err = adjusting.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, u.ID)
		require.NoError(t, err)

		deleted := make(chan error, 1)
		go func() {
			tx, err := pool.Begin(ctx)
			if err == nil {
				if _, err = store.DeleteUser(ctx, tx, u.ID); err == nil {
					err = tx.Commit(ctx)
				} else {
					_ = tx.Rollback(ctx)
				}
			}
			deleted <- err
		}()
		require.Eventually(t, func() bool {
			var waiting int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%accounts%'`).Scan(&waiting)
			return err == nil && waiting > 0
		}, 20*time.Second, 5*time.Millisecond, "the deletion never waited for the account")
		_, err = adjusting.Exec(ctx, `INSERT INTO credit_adjustments (user_id, key, delta, kind, reason, actor_user_id)
VALUES ($1, 'k', 5, 'admin', 'goodwill', $2)`, u.ID, admin.ID)
		require.NoError(t, err, "admin target %v: the adjustment's actor check must not deadlock with the deletion", target.Admin)
		require.NoError(t, adjusting.Commit(ctx))
		require.NoError(t, <-deleted)
	}
}

// A keyed grant run again with an expiry finer than a microsecond (the
// database keeps microseconds) is the same grant, not a conflict; its
// audit entry keeps the expiry's fraction of a second.
func TestKeyedGrantWithANanosecondExpiryReplays(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	exp := time.Now().Add(48 * time.Hour).Truncate(time.Second).Add(123456789 * time.Nanosecond)
	grant := func() (store.AdjustResult, error) {
		return b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: 10, Kind: store.GrantPromo, ExpiresAt: &exp,
			Reason: "script", Key: "nskey", Via: "cli"})
	}
	first, err := grant()
	require.NoError(t, err)
	again, err := grant()
	require.NoError(t, err, "the same keyed grant run again")
	require.True(t, again.Replayed)
	require.EqualValues(t, 10, again.Balance, "granted once")
	require.NotZero(t, first.GrantID)
	var audited string
	require.NoError(t, b.st.Pool().QueryRow(b.ctx, `SELECT details->>'expires_at' FROM audit_log WHERE target_user_id = $1 ORDER BY id DESC LIMIT 1`, b.user.ID).Scan(&audited))
	require.Equal(t, exp.Round(time.Microsecond).UTC().Format(time.RFC3339Nano), audited)
}
