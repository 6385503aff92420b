package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A batch answers every spend exactly as Consume would, in arrival order
// for one user, whatever order the users come in.
func TestConsumeBatchAnswersEachSpendAsConsumeWould(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	st, ctx := b.st, b.ctx
	a := b.user // created first: the lower id
	other := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, a.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 3})
	soon := time.Now().Add(24 * time.Hour)
	sub := storetest.NewGrant(t, st, other.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 5, ExpiresAt: &soon})
	storetest.NewGrant(t, st, other.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 5})
	two := storetest.NewService(t, st, storetest.ServiceOpts{Slug: "two", Cost: 2})
	one := storetest.NewService(t, st, storetest.ServiceOpts{Slug: "one", Cost: 1})

	req := func(u store.User, svc, key string) store.ConsumeRequest {
		return store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: key}
	}
	results := st.ConsumeBatch(ctx, []store.ConsumeRequest{
		req(other, two, "o1"),    // 0: created, from the subscription grant
		req(a, two, "a1"),        // 1: created, balance 1
		req(a, two, "a2"),        // 2: insufficient (1 left): after 1, as it arrived after it
		req(a, two, " a1 "),      // 3: replay of 1 (keys are trimmed)
		req(a, one, "a1"),        // 4: conflict: same key, another service
		req(other, "nope", "o2"), // 5: no such service
		req(a, one, "a3"),        // 6: created, balance 0
	})
	if len(results) != 7 {
		t.Fatalf("%d results for 7 spends", len(results))
	}
	check := func(i int, wantErr func(error) bool, what string) {
		t.Helper()
		if r := results[i]; !wantErr(r.Err) {
			t.Errorf("spend %d: %+v, err %v; want %s", i, r.Value, r.Err, what)
		}
	}
	ok := func(err error) bool { return err == nil }
	check(0, ok, "created")
	if d := results[0].Value.Usage.Drawn; len(d) != 1 || d[0].GrantID != sub.GrantID || results[0].Value.Usage.Balance != 8 {
		t.Errorf("spend 0 drew %+v leaving %d; want 2 from the subscription grant, 8 left", d, results[0].Value.Usage.Balance)
	}
	check(1, ok, "created")
	if u := results[1].Value.Usage; u.Balance != 1 || results[1].Value.Replayed {
		t.Errorf("spend 1: balance %d replayed %v; want 1, false", u.Balance, results[1].Value.Replayed)
	}
	check(2, func(err error) bool {
		var ice *store.InsufficientCreditsError
		return errors.As(err, &ice) && ice.Balance == 1 && ice.Required == 2
	}, "insufficient credits (balance 1, 2 required)")
	check(3, ok, "a replay")
	if r := results[3].Value; !r.Replayed || r.Usage.ID != results[1].Value.Usage.ID || r.Usage.Balance != 1 {
		t.Errorf("spend 3: %+v; want the replay of usage %d", r, results[1].Value.Usage.ID)
	}
	check(4, func(err error) bool { return store.ErrorKind(err) == store.KindConflict }, "a conflict")
	check(5, func(err error) bool { return store.ErrorKind(err) == store.KindNotFound }, "not found")
	check(6, ok, "created")
	if u := results[6].Value.Usage; u.Balance != 0 {
		t.Errorf("spend 6 left %d, want 0", u.Balance)
	}
	for _, u := range []struct {
		user store.User
		want int64
	}{{a, 0}, {other, 8}} {
		if bal, err := st.Balance(ctx, u.user.ID); err != nil || bal.Total != u.want {
			t.Errorf("user %d: balance %d (%v), want %d", u.user.ID, bal.Total, err, u.want)
		}
	}
}

// A spend the database refuses fails alone: the batch is run again one
// spend at a time.
func TestConsumeBatchRunsTheOthersWhenOneIsRefused(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	st, ctx := b.st, b.ctx
	storetest.NewGrant(t, st, b.user.ID, storetest.GrantOpts{Amount: 10})
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	noSuchKey := int64(987654321)
	results := st.ConsumeBatch(ctx, []store.ConsumeRequest{
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "first"},
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "refused", APIKeyID: &noSuchKey}, // foreign key
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "third"},
	})
	var pgErr *pgconn.PgError
	if results[0].Err != nil || results[2].Err != nil {
		t.Errorf("good spends failed: %v, %v", results[0].Err, results[2].Err)
	}
	if !errors.As(results[1].Err, &pgErr) || pgErr.Code != "23503" {
		t.Errorf("spend with an unknown API key: %v, want a foreign-key violation", results[1].Err)
	}
	// A spend refused before the database does not hold the others back.
	results = st.ConsumeBatch(ctx, []store.ConsumeRequest{
		{UserID: b.user.ID, Service: svc, IdempotencyKey: ""},
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "fourth"},
	})
	if store.ErrorKind(results[0].Err) != store.KindInvalid || results[1].Err != nil {
		t.Errorf("spend without a key: %v (want invalid); the next: %v (want created)", results[0].Err, results[1].Err)
	}
	if bal, err := st.Balance(ctx, b.user.ID); err != nil || bal.Total != 7 {
		t.Errorf("balance %d (%v), want 7: three spends of 1", bal.Total, err)
	}
}

// ledger_consume_many locks accounts in user-id order whatever order the
// spends come in, so two batches naming the same users in opposite orders
// never deadlock.
func TestConsumeBatchesLockUsersInOrder(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	st, ctx := b.st, b.ctx
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	var users []int64
	for range 4 {
		u := storetest.NewUser(t, st, storetest.UserOpts{})
		storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 1000})
		users = append(users, u.ID)
	}
	reversed := []int64{users[3], users[2], users[1], users[0]}
	var mu sync.Mutex
	var errs []error
	storetest.AllAtOnce(2, func(w int) {
		ids := users
		if w == 1 {
			ids = reversed
		}
		for i := range 25 {
			keys := make([]string, len(ids))
			for k := range keys {
				keys[k] = fmt.Sprintf("w%d-%d-%d", w, i, k)
			}
			// Straight to the function: a deadlock must show, not be
			// absorbed by ConsumeBatch's one-by-one fallback.
			_, err := st.Pool().Exec(ctx, `SELECT count(*) FROM ledger_consume_many($1, $2, $3, $4, $5)`,
				ids, []string{svc, svc, svc, svc}, keys, []string{"fp", "fp", "fp", "fp"}, []*int64{nil, nil, nil, nil})
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
		}
	})
	if len(errs) > 0 {
		t.Fatalf("batches failed: %v", errs)
	}
	for _, id := range users {
		if bal, err := st.Balance(ctx, id); err != nil || bal.Total != 950 {
			t.Errorf("user %d: balance %d (%v), want 950", id, bal.Total, err)
		}
	}
}

// Arrays of different lengths are refused, not read past their end.
func TestConsumeManyRefusesMismatchedArrays(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	_, err := b.st.Pool().Exec(b.ctx, `SELECT count(*) FROM ledger_consume_many($1, $2, $3, $4, $5)`,
		[]int64{b.user.ID, b.user.ID}, []string{"x"}, []string{"k1", "k2"}, []string{"fp", "fp"}, []*int64{nil, nil})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22023" {
		t.Errorf("mismatched arrays: %v, want invalid_parameter_value", err)
	}
}

// Spends that arrive while the consume lanes are busy are answered as
// Consume answers them, each its own (through the batcher).
func TestConcurrentConsumesEachGetTheirOwnAnswer(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	st := b.st
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	storetest.NewGrant(t, st, b.user.ID, storetest.GrantOpts{Amount: 30})
	const spends = 40 // 30 succeed, 10 find nothing left
	var observed sync.Map
	st.ObserveConsumeBatches(func(n int) { observed.Store(new(int), n) })
	type answer struct {
		usage store.Usage
		err   error
	}
	answers := make([]answer, spends)
	storetest.AllAtOnce(spends, func(i int) {
		u, _, err := st.Consume(context.Background(), store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: fmt.Sprintf("c%d", i)})
		answers[i] = answer{u, err}
	})
	created, insufficient := 0, 0
	seen := map[int64]bool{}
	balances := map[int64]bool{}
	for i, a := range answers {
		var ice *store.InsufficientCreditsError
		switch {
		case a.err == nil:
			created++
			if seen[a.usage.ID] || balances[a.usage.Balance] {
				t.Errorf("spend %d: usage %d balance %d answered twice", i, a.usage.ID, a.usage.Balance)
			}
			seen[a.usage.ID], balances[a.usage.Balance] = true, true
		case errors.As(a.err, &ice) && ice.Balance == 0:
			insufficient++
		default:
			t.Errorf("spend %d: %v", i, a.err)
		}
	}
	if created != 30 || insufficient != 10 {
		t.Errorf("%d created, %d insufficient; want 30 and 10", created, insufficient)
	}
	// Every spend was answered by a committed batch, and counted once.
	total := 0
	observed.Range(func(_, n any) bool { total += n.(int); return true })
	if total != spends {
		t.Errorf("batches observed hold %d spends, want %d", total, spends)
	}
}

// A batch waiting on one user's account lock gives up after 100 ms and
// hands its spends back to their callers, so spends of other users queued
// behind it are not held up by a lock they do not need; the spends handed
// back then wait for the lock on their own and succeed once it is free.
func TestSpendsOfOtherUsersDoNotWaitBehindALockedAccount(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	st, ctx := b.st, b.ctx
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	storetest.NewGrant(t, st, b.user.ID, storetest.GrantOpts{Amount: 10})
	locked := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, locked.ID, storetest.GrantOpts{Amount: 10})

	// An admin's transaction holds the account lock, as an adjustment does.
	blocker, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Rollback(ctx) }()
	if _, err := blocker.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, locked.ID); err != nil {
		t.Fatal(err)
	}
	waiting := func() int {
		var n int
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	lockedDone := make(chan error, 2)
	for i := range 2 { // one per lane
		go func() {
			_, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: locked.ID, Service: svc, IdempotencyKey: fmt.Sprintf("l%d", i)})
			lockedDone <- err
		}()
	}
	// Both may wait in the lanes at first; a batch gives up after 100 ms,
	// and from then on the user's spends wait one at a time, running alone
	// (on a loaded machine the second may never reach a lane).
	storetest.WaitFor(t, "a spend of the locked user to wait on its lock", func() bool { return waiting() >= 1 })

	free, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, _, err := st.Consume(free, store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: "free"}); err != nil {
		t.Fatalf("a spend of another user, while an account is locked: %v", err)
	}
	select {
	case err := <-lockedDone:
		t.Fatalf("a spend of the locked user returned (%v) before the lock was released", err)
	default:
	}
	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-lockedDone; err != nil {
			t.Errorf("spend of the formerly locked user: %v", err)
		}
	}
	if bal, err := st.Balance(ctx, locked.ID); err != nil || bal.Total != 8 {
		t.Errorf("locked user's balance %d (%v), want 8", bal.Total, err)
	}
}

// Random spends, sent in batches of random sizes (and some alone), get
// exactly the answers of a plain sequential model of the ledger rules:
// per user in arrival order, expiring grants first (soonest first), then
// never-expiring ones oldest first; not enough credits changes nothing;
// a reused key replays (same service) or conflicts (another service),
// whether it was used in an earlier batch or earlier in the same one.
func TestConsumeBatchesMatchASequentialModel(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := b.ctx
	// A store of its own whose log shows any batch that was not kept (and
	// whose spends then ran one by one, hiding the batch's mistakes).
	var log strings.Builder
	st := store.New(b.st.Pool(), slog.New(slog.NewTextHandler(&log, nil)))
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))

	type grant struct {
		id   int64
		kind string
		left int64
	}
	type usage struct {
		service string
		id      int64
		balance int64
		drawn   []store.Drawn
	}
	type account struct {
		user   store.User
		apiKey int64
		grants []*grant // in drawing order
		usages map[string]*usage
	}
	later, latest := time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
	var accounts []*account
	for u := range 3 {
		acc := &account{user: b.user, usages: map[string]*usage{}}
		if u > 0 {
			acc.user = storetest.NewUser(t, st, storetest.UserOpts{})
		}
		add := func(kind string, amount int64, expires *time.Time) *grant {
			g := storetest.NewGrant(t, st, acc.user.ID, storetest.GrantOpts{Kind: kind, Amount: amount, ExpiresAt: expires})
			return &grant{id: g.GrantID, kind: kind, left: amount}
		}
		pack := add(store.GrantPack, 6, nil)
		subLatest := add(store.GrantSubscription, 5, &latest)
		subLater := add(store.GrantSubscription, 7, &later)
		admin := add(store.GrantAdmin, 4, nil)
		acc.grants = []*grant{subLater, subLatest, pack, admin}
		_, key, err := st.CreateAPIKey(ctx, acc.user.ID, "model")
		if err != nil {
			t.Fatal(err)
		}
		acc.apiKey = key.ID
		accounts = append(accounts, acc)
	}
	costs := map[string]int64{}
	var services []string
	for _, c := range []int64{0, 1, 2, 3, 5} {
		opts := storetest.ServiceOpts{Slug: fmt.Sprintf("cost-%d", c), Cost: c}
		if c == 0 {
			opts.Cost = storetest.NoCost
		}
		slug := storetest.NewService(t, st, opts)
		costs[slug] = c
		services = append(services, slug)
	}
	services = append(services, "no-such-service")

	// want answers one request as the model does, and applies it.
	type answer struct {
		kind     string // created, replayed, conflict, not_found, insufficient
		usage    *usage
		balance  int64
		required int64
	}
	want := func(acc *account, req store.ConsumeRequest) answer {
		if prior, ok := acc.usages[req.IdempotencyKey]; ok {
			if prior.service != req.Service {
				return answer{kind: "conflict"}
			}
			return answer{kind: "replayed", usage: prior}
		}
		cost, ok := costs[req.Service]
		if !ok {
			return answer{kind: "not_found"}
		}
		var total int64
		for _, g := range acc.grants {
			total += g.left
		}
		if total < cost {
			return answer{kind: "insufficient", balance: total, required: cost}
		}
		u := &usage{service: req.Service, balance: total - cost}
		for need, i := cost, 0; need > 0; i++ {
			if take := min(need, acc.grants[i].left); take > 0 {
				acc.grants[i].left -= take
				u.drawn = append(u.drawn, store.Drawn{GrantID: acc.grants[i].id, Kind: acc.grants[i].kind, Credits: take})
				need -= take
			}
		}
		acc.usages[req.IdempotencyKey] = u
		return answer{kind: "created", usage: u}
	}
	check := func(n int, req store.ConsumeRequest, w answer, got store.BatchResult[store.Spent]) {
		t.Helper()
		var ice *store.InsufficientCreditsError
		switch w.kind {
		case "created", "replayed":
			u := got.Value.Usage
			if got.Err != nil || got.Value.Replayed != (w.kind == "replayed") || u.Balance != w.usage.balance || u.Credits != costs[req.Service] || !slices.Equal(u.Drawn, w.usage.drawn) {
				t.Fatalf("spend %d %+v: got %+v, %v; want %s leaving %d, drawn %+v", n, req, got.Value, got.Err, w.kind, w.usage.balance, w.usage.drawn)
			}
			if w.kind == "created" {
				w.usage.id = u.ID
			} else if u.ID != w.usage.id {
				t.Fatalf("spend %d %+v: replayed usage %d, want %d", n, req, u.ID, w.usage.id)
			}
		case "insufficient":
			if !errors.As(got.Err, &ice) || ice.Balance != w.balance || ice.Required != w.required {
				t.Fatalf("spend %d %+v: got %+v, %v; want insufficient credits (%d of %d)", n, req, got.Value, got.Err, w.balance, w.required)
			}
		case "conflict":
			if store.ErrorKind(got.Err) != store.KindConflict {
				t.Fatalf("spend %d %+v: got %+v, %v; want a conflict", n, req, got.Value, got.Err)
			}
		case "not_found":
			if store.ErrorKind(got.Err) != store.KindNotFound {
				t.Fatalf("spend %d %+v: got %+v, %v; want not found", n, req, got.Value, got.Err)
			}
		}
	}

	n := 0
	for n < 300 {
		size := 1 + rng.IntN(12)
		reqs := make([]store.ConsumeRequest, size)
		owners := make([]*account, size)
		for i := range reqs {
			owners[i] = accounts[rng.IntN(len(accounts))]
			key := rng.IntN(25)
			reqs[i] = store.ConsumeRequest{
				UserID:         owners[i].user.ID,
				Service:        services[key%len(services)], // a key is mostly reused for its own service
				IdempotencyKey: fmt.Sprintf("k%d", key),
			}
			if rng.IntN(5) == 0 {
				reqs[i].Service = services[rng.IntN(len(services))]
			}
			if rng.IntN(2) == 0 { // some spends come through the JSON API
				reqs[i].APIKeyID = &owners[i].apiKey
			}
			if i > 0 && rng.IntN(4) == 0 { // the same spend again in this batch
				owners[i], reqs[i] = owners[i-1], reqs[i-1]
			}
		}
		var got []store.BatchResult[store.Spent]
		if size == 1 && rng.IntN(2) == 0 {
			u, replayed, err := store.Consume(ctx, st.Pool(), reqs[0]) // ledger_consume
			got = []store.BatchResult[store.Spent]{{Value: store.Spent{Usage: u, Replayed: replayed}, Err: err}}
		} else {
			got = st.ConsumeBatch(ctx, reqs)
		}
		for i, req := range reqs {
			check(n, req, want(owners[i], req), got[i])
			n++
		}
	}
	for _, acc := range accounts {
		var total int64
		for _, g := range acc.grants {
			total += g.left
		}
		if bal, err := st.Balance(ctx, acc.user.ID); err != nil || bal.Total != total {
			t.Errorf("user %d: balance %d (%v), want %d", acc.user.ID, bal.Total, err, total)
		}
	}
	if strings.Contains(log.String(), "not kept") {
		t.Errorf("a batch was not kept:\n%s", log.String())
	}
}

// A batch that gives up on a held account runs the spends of accounts
// nobody holds together at once: they do not wait, one by one, behind the
// held account's spend (which waits for its lock until its deadline), nor
// for a connection kept for spends running alone.
func TestConsumeBatchRunsSpendsOfFreeAccountsAtOnceWhenOneIsHeld(t *testing.T) {
	t.Parallel()
	b, svc, held := setupHeldAccount(t)
	st, ctx := b.st, b.ctx
	storetest.HoldAccounts(t, st.Pool(), held.ID)

	// The held account's spend first: run one by one, it would wait until
	// a quarter second before the deadline and leave the next none.
	soon, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	results := st.ConsumeBatch(soon, []store.ConsumeRequest{
		{UserID: held.ID, Service: svc, IdempotencyKey: "held"},
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "free-1"},
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "free-2"},
	})
	require.ErrorIs(t, results[0].Err, context.DeadlineExceeded, "the held account's spend")
	require.NoError(t, results[1].Err, "a spend of an account nobody holds")
	require.NoError(t, results[2].Err, "a spend of an account nobody holds")
	require.EqualValues(t, 8, results[2].Value.Usage.Balance)
	bal, err := st.Balance(ctx, held.ID)
	require.NoError(t, err)
	require.EqualValues(t, 10, bal.Total, "nothing spent of the held account")
}

// A batch whose statement is cancelled (a statement_timeout shorter than
// its lock wait, an operator's pg_cancel_backend) is not kept, and its
// spends are answered as a passing outage (a 503, retry), not as a fault.
func TestConsumeCancelledByAStatementTimeoutIsUnavailable(t *testing.T) {
	t.Parallel()
	b, svc, held := setupHeldAccount(t)
	st, ctx := b.st, b.ctx
	_, err := st.Pool().Exec(ctx, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET statement_timeout = %L', current_database(), '40ms'); END $$`)
	require.NoError(t, err)
	st.Pool().Reset() // new connections take the setting
	// Taken back before the invariants are checked (cleanups run last
	// first): on a loaded machine their queries took over 40 ms and were
	// cut (seen once in make test).
	t.Cleanup(func() {
		_, err := st.Pool().Exec(context.Background(), `SET statement_timeout = 0; DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET statement_timeout', current_database()); END $$`)
		require.NoError(t, err)
		st.Pool().Reset()
	})
	blocker := storetest.HoldAccounts(t, st.Pool(), held.ID)

	soon, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	results := st.ConsumeBatch(soon, []store.ConsumeRequest{
		{UserID: held.ID, Service: svc, IdempotencyKey: "held"},
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "free"},
	})
	// (The free account's spend, run again at once, is made, or cut by the
	// timeout too on a slow machine: never a fault.)
	if err := results[1].Err; err != nil && !store.IsUnavailable(err) {
		t.Errorf("a spend of an account nobody holds: %v", err)
	}
	require.Error(t, results[0].Err)
	require.True(t, store.IsUnavailable(results[0].Err), "the held account's spend, cut by the statement timeout: %v", results[0].Err)
	_, err = blocker.Exec(ctx, `SELECT 1`) // the blocker's own session is older than the setting
	require.NoError(t, err)
}

// Spends running alone of held accounts, as many as the connections kept
// for spends running alone (half the pool), leave a spend of a free
// account running alone a connection between their tries: it waited for
// one behind them until its deadline (503s after 30 s, a review).
func TestASpendRunningAloneIsNotStarvedByHeldAccounts(t *testing.T) {
	t.Parallel()
	url := storetest.NewDatabase(t)
	pool, err := store.OpenPool(context.Background(), url, store.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	st := store.New(pool, nil) // two connections for spends running alone
	ctx := context.Background()
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	var held []store.User
	for range 2 {
		u := storetest.NewUser(t, st, storetest.UserOpts{})
		storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 10})
		held = append(held, u)
	}
	free := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, free.ID, storetest.GrantOpts{Amount: 10})
	// The held accounts, by a session outside the store's pool.
	other, err := store.OpenPool(ctx, url, store.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	t.Cleanup(other.Close)
	blocker := storetest.HoldAccounts(t, other, held[0].ID, held[1].ID)
	long, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	heldDone := make(chan error, len(held))
	for _, u := range held {
		go func() {
			_, _, err := st.ConsumeAlone(long, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "held"})
			heldDone <- err
		}()
	}
	// Both connections for spends running alone are taken. (Not asked in
	// the blocker's transaction: it would see one snapshot of the activity.)
	storetest.WaitFor(t, "both held accounts' spends to wait for their locks", func() bool {
		var n int
		require.NoError(t, other.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n))
		return n == 2
	})
	// The free account's spend, run alone, is made long before the held
	// ones' deadline.
	soon, cancelSoon := context.WithTimeout(ctx, 5*time.Second)
	defer cancelSoon()
	u, _, err := st.ConsumeAlone(soon, store.ConsumeRequest{UserID: free.ID, Service: svc, IdempotencyKey: "free"})
	require.NoError(t, err, "a spend of a free account, running alone while held ones wait")
	require.EqualValues(t, 9, u.Balance)
	require.NoError(t, blocker.Commit(ctx))
	for range held {
		require.NoError(t, <-heldDone, "a held account's spend once it is free")
	}
}

// A batch run again after it gave up on a held account leaves out the
// spends whose callers have given up meanwhile (answered with their
// context's error): it charged them.
func TestABatchRunAgainLeavesOutCallersThatGaveUp(t *testing.T) {
	t.Parallel()
	b, svc, held := setupHeldAccount(t)
	st, ctx := b.st, b.ctx
	storetest.HoldAccounts(t, st.Pool(), held.ID)
	results := st.ConsumeUnheld(ctx, []store.ConsumeRequest{
		{UserID: held.ID, Service: svc, IdempotencyKey: "held"},
		store.Gone(store.ConsumeRequest{UserID: b.user.ID, Service: svc, IdempotencyKey: "gone"}),
		{UserID: b.user.ID, Service: svc, IdempotencyKey: "here"},
	})
	require.ErrorIs(t, results[0].Err, store.ErrRunAlone, "the held account's spend")
	require.ErrorIs(t, results[1].Err, store.ErrRunAlone, "the spend whose caller gave up")
	require.NoError(t, results[2].Err)
	bal, err := st.Balance(ctx, b.user.ID)
	require.NoError(t, err)
	require.EqualValues(t, 9, bal.Total, "only the spend still wanted is charged")
}

// setupHeldAccount gives the bundle's user and a second user ten credits
// each and a one-credit service; the test holds the second's account.
func setupHeldAccount(t *testing.T) (*ledgerBundle, string, store.User) {
	t.Helper()
	b := setupLedger(t)
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 1})
	storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Amount: 10})
	held := storetest.NewUser(t, b.st, storetest.UserOpts{})
	storetest.NewGrant(t, b.st, held.ID, storetest.GrantOpts{Amount: 10})
	return b, svc, held
}
