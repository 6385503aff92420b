package store_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The model of one user's ledger (ARCHITECTURE.md, "Credit ledger"): each
// grant keeps what is left of it. A spend, or an admin removal, draws on the
// live grants: expiring ones first (soonest expiry first, ties by grant id),
// then never-expiring ones oldest (lowest id) first. An overdue grant counts
// for nothing, swept or not, until the sweep closes it. Not enough credits
// changes nothing and reports the balance. An idempotency key (per user)
// answers its first spend again for the same service and conflicts for
// another; a refused spend does not use up its key.
type modelGrant struct {
	id      int64
	kind    string
	left    int64
	expires *time.Time // nil: never expires
	overdue bool       // expired before the run: never spendable
}

type modelUser struct {
	id     int64
	grants []*modelGrant          // in id order
	keys   map[string]store.Usage // first answer for each key used, which a replay repeats
	used   []string               // the same keys, in the order used
	spent  []store.Usage          // created usages that drew credits, oldest first
}

// drawOrder lists the grants a spend draws on, in the order it draws.
func (u *modelUser) drawOrder() []*modelGrant {
	var live []*modelGrant
	for _, g := range u.grants {
		if !g.overdue && g.left > 0 {
			live = append(live, g)
		}
	}
	slices.SortFunc(live, func(a, b *modelGrant) int {
		switch {
		case a.expires == nil && b.expires == nil:
			return cmp.Compare(a.id, b.id)
		case a.expires == nil:
			return 1
		case b.expires == nil:
			return -1
		}
		return cmp.Or(a.expires.Compare(*b.expires), cmp.Compare(a.id, b.id))
	})
	return live
}

func (u *modelUser) balance() store.Balance {
	b := store.Balance{ByKind: map[string]int64{}}
	for _, k := range store.GrantKinds() {
		b.ByKind[k] = 0
	}
	for _, g := range u.drawOrder() { // expiring grants soonest first
		b.Total += g.left
		b.ByKind[g.kind] += g.left
		if g.expires != nil && b.NextExpiry == nil {
			b.NextExpiry = g.expires
		}
		if g.expires != nil && g.expires.Equal(*b.NextExpiry) {
			b.ExpiringNext += g.left
		}
	}
	return b
}

// draw takes amount (at most the balance) from the live grants.
func (u *modelUser) draw(amount int64) []store.Drawn {
	var drawn []store.Drawn
	for _, g := range u.drawOrder() {
		if amount == 0 {
			break
		}
		take := min(amount, g.left)
		g.left -= take
		amount -= take
		drawn = append(drawn, store.Drawn{GrantID: g.id, Kind: g.kind, Credits: take})
	}
	return drawn
}

func (u *modelUser) String() string {
	var s strings.Builder
	for _, g := range u.grants {
		fmt.Fprintf(&s, "    grant %d %-12s left %3d expires %s overdue %v\n", g.id, g.kind, g.left, when(g.expires), g.overdue)
	}
	return s.String()
}

func when(t *time.Time) string {
	if t == nil {
		return "never               "
	}
	return t.UTC().Format(time.RFC3339)
}

// storedGrants describes a user's grants as the database holds them.
func storedGrants(st *store.Store, userID int64) string {
	rows, err := st.Pool().Query(context.Background(), `SELECT id, kind::text, remaining, expires_at, closed_at IS NOT NULL
  FROM grants WHERE user_id = $1 ORDER BY id`, userID)
	if err != nil {
		return err.Error()
	}
	var s strings.Builder
	var id, left int64
	var kind string
	var expires *time.Time
	var closed bool
	_, err = pgx.ForEachRow(rows, []any{&id, &kind, &left, &expires, &closed}, func() error {
		fmt.Fprintf(&s, "    grant %d %-12s left %3d expires %s closed %v\n", id, kind, left, when(expires), closed)
		return nil
	})
	if err != nil {
		return err.Error()
	}
	return s.String()
}

// TestLedgerMatchesModel runs a few hundred random grants, spends, admin
// adjustments and sweeps, one at a time, and checks every answer, and
// every user's balance after each, against the model above. The seed is
// fixed; LEDGER_MODEL_SEED replays another.
func TestLedgerMatchesModel(t *testing.T) {
	t.Parallel()
	st := storetest.NewStore(t)
	ctx := context.Background()
	seed := uint64(1)
	if s := os.Getenv("LEDGER_MODEL_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "LEDGER_MODEL_SEED")
	}
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	var users []*modelUser
	for range 3 {
		users = append(users, &modelUser{id: storetest.NewUser(t, st, storetest.UserOpts{}).ID, keys: map[string]store.Usage{}})
	}
	costs := map[string]int64{}
	var services []string
	for _, c := range []int64{0, 1, 4, 9, 25} {
		opts := storetest.ServiceOpts{Slug: fmt.Sprintf("model-%d", c), Cost: c}
		if c == 0 {
			opts.Cost = storetest.NoCost
		}
		services = append(services, storetest.NewService(t, st, opts))
		costs[services[len(services)-1]] = c
	}
	// Far-future expiries, few of them so that grants share an expiry.
	now := time.Now().Truncate(time.Second)
	future := func() *time.Time {
		exp := now.Add(time.Duration(10*(1+rng.IntN(3))) * 24 * time.Hour)
		return &exp
	}

	var n int     // operation number
	var op string // what it did
	fail := func(format string, args ...any) {
		t.Helper()
		var s strings.Builder
		for _, u := range users {
			fmt.Fprintf(&s, "user %d, model:\n%s  store:\n%s", u.id, u, storedGrants(st, u.id))
		}
		t.Fatalf("seed %d (LEDGER_MODEL_SEED=%d replays it), operation %d: %s\n%s\n%s",
			seed, seed, n, op, fmt.Sprintf(format, args...), s.String())
	}
	ignoreNew := cmpopts.IgnoreFields(store.Usage{}, "ID", "CreatedAt")
	outcomes := map[string]int{}

	var granted []store.NewGrant // valid grants, to replay their sources
	var grantIDs []int64
	var keys []string // every key spent with, by any user
	consume := func(u *modelUser, svc, key string) {
		op = fmt.Sprintf("consume user %d service %s key %q", u.id, svc, key)
		got, replayed, err := st.Consume(ctx, store.ConsumeRequest{UserID: u.id, Service: svc, IdempotencyKey: key})
		if prior, ok := u.keys[key]; ok {
			if prior.Service != svc {
				if store.ErrorKind(err) != store.KindConflict {
					fail("got %+v, %v; want a conflict (the key was used for %s)", got, err, prior.Service)
				}
				outcomes["conflict"]++
				return
			}
			if err != nil || !replayed || !gocmp.Equal(prior, got, cmpopts.EquateEmpty()) {
				fail("got %+v, replayed %v, %v; want the replay of %+v", got, replayed, err, prior)
			}
			outcomes["replayed"]++
			return
		}
		cost, total := costs[svc], u.balance().Total
		if total < cost {
			var ice *store.InsufficientCreditsError
			if !errors.As(err, &ice) || ice.Balance != total || ice.Required != cost {
				fail("got %+v, %v; want insufficient credits (balance %d, required %d)", got, err, total, cost)
			}
			outcomes["insufficient"]++
			return
		}
		want := store.Usage{Service: svc, Credits: cost, Balance: total - cost, Drawn: u.draw(cost)}
		if err != nil || replayed {
			fail("got %+v, replayed %v, %v; want %+v", got, replayed, err, want)
		}
		if d := gocmp.Diff(want, got, ignoreNew, cmpopts.EquateEmpty()); d != "" {
			fail("usage (-model +store):\n%s", d)
		}
		u.keys[key] = got
		u.used = append(u.used, key)
		if cost > 0 {
			u.spent = append(u.spent, got)
		}
		outcomes["created"]++
	}

	for n = 1; n <= 400; n++ {
		u := users[rng.IntN(len(users))]
		switch r := rng.IntN(100); {
		case r < 16: // a grant of any kind, valid as each kind must be
			g := store.NewGrant{UserID: u.id, Kind: store.GrantKinds()[rng.IntN(4)], Amount: 1 + rng.Int64N(25),
				SourceKind: "model", SourceID: fmt.Sprintf("op-%d", n)}
			if g.Kind == store.GrantSubscription || (g.Kind != store.GrantPack && rng.IntN(2) == 0) {
				g.ExpiresAt = future()
			}
			op = fmt.Sprintf("grant %d %s credits to user %d expiring %s, source %s", g.Amount, g.Kind, u.id, when(g.ExpiresAt), g.SourceID)
			res, err := st.Grant(ctx, g)
			if err != nil || !res.Created {
				fail("got %+v, %v; want a new grant", res, err)
			}
			u.grants = append(u.grants, &modelGrant{id: res.GrantID, kind: g.Kind, left: g.Amount, expires: g.ExpiresAt})
			granted, grantIDs = append(granted, g), append(grantIDs, res.GrantID)
		case r < 19: // a pack that expires, or a subscription that does not
			g := store.NewGrant{UserID: u.id, Kind: store.GrantPack, Amount: 5, ExpiresAt: future(),
				SourceKind: "model", SourceID: fmt.Sprintf("op-%d", n)}
			if rng.IntN(2) == 0 {
				g.Kind, g.ExpiresAt = store.GrantSubscription, nil
			}
			op = fmt.Sprintf("invalid grant of %s credits to user %d expiring %s", g.Kind, u.id, when(g.ExpiresAt))
			if res, err := st.Grant(ctx, g); store.ErrorKind(err) != store.KindInvalid {
				fail("got %+v, %v; want it refused as invalid", res, err)
			}
			outcomes["invalid grant"]++
		case r < 22 && len(granted) > 0: // a grant from a source granted already
			i := rng.IntN(len(granted))
			op = fmt.Sprintf("grant again from source %s", granted[i].SourceID)
			if res, err := st.Grant(ctx, granted[i]); err != nil || res.Created || res.GrantID != grantIDs[i] {
				fail("got %+v, %v; want grant %d, not created", res, err, grantIDs[i])
			}
			outcomes["grant replayed"]++
		case r < 28: // a grant already overdue: never spendable
			kind := []string{store.GrantSubscription, store.GrantAdmin, store.GrantPromo}[rng.IntN(3)]
			amount := 1 + rng.Int64N(25)
			exp := now.Add(-time.Hour - time.Duration(n)*time.Second) // distinct: the sweep's order is by expiry alone
			op = fmt.Sprintf("overdue %s grant of %d for user %d, expired %s", kind, amount, u.id, when(&exp))
			id := storetest.BackdatedGrant(t, st.Pool(), u.id, kind, amount, now.Add(-48*time.Hour), exp)
			u.grants = append(u.grants, &modelGrant{id: id, kind: kind, left: amount, expires: &exp, overdue: true})
		case r < 55:
			keys = append(keys, fmt.Sprintf("key-%d", n))
			consume(u, services[rng.IntN(len(services))], keys[len(keys)-1])
		case r < 72 && len(keys) > 0: // a key used before, by this user or another (keys are per user)
			key, svc := keys[rng.IntN(len(keys))], services[rng.IntN(len(services))]
			if len(u.used) > 0 && rng.IntN(4) > 0 {
				key = u.used[rng.IntN(len(u.used))]
				if rng.IntN(3) > 0 {
					svc = u.keys[key].Service
				}
			}
			consume(u, svc, key)
		case r < 82: // an admin removal
			amount := 1 + rng.Int64N(30)
			op = fmt.Sprintf("remove %d credits from user %d", amount, u.id)
			res, err := st.Adjust(ctx, store.Adjustment{UserID: u.id, Delta: -amount, Reason: "model removal"})
			total := u.balance().Total
			if total < amount {
				var ice *store.InsufficientCreditsError
				if !errors.As(err, &ice) || ice.Balance != total || ice.Required != amount {
					fail("got %+v, %v; want insufficient credits (balance %d, required %d)", res, err, total, amount)
				}
				outcomes["removal refused"]++
				break
			}
			want := store.AdjustResult{Balance: total - amount, Drawn: u.draw(amount)}
			if err != nil {
				fail("got %v; want %+v", err, want)
			}
			if d := gocmp.Diff(want, res, cmpopts.EquateEmpty()); d != "" {
				fail("removal (-model +store):\n%s", d)
			}
			outcomes["removed"]++
		case r < 90: // an admin addition
			a := store.Adjustment{UserID: u.id, Delta: 1 + rng.Int64N(25), Kind: store.GrantAdmin, Reason: "model addition"}
			if rng.IntN(2) == 0 {
				a.Kind = store.GrantPromo
			}
			if rng.IntN(2) == 0 {
				a.ExpiresAt = future()
			}
			op = fmt.Sprintf("add %d %s credits for user %d expiring %s", a.Delta, a.Kind, u.id, when(a.ExpiresAt))
			res, err := st.Adjust(ctx, a)
			if err != nil || res.Replayed {
				fail("got %+v, %v; want a new grant", res, err)
			}
			u.grants = append(u.grants, &modelGrant{id: res.GrantID, kind: a.Kind, left: a.Delta, expires: a.ExpiresAt})
			if res.Balance != u.balance().Total {
				fail("balance after the addition %d, want %d", res.Balance, u.balance().Total)
			}
		default: // a sweep batch: the soonest-expired overdue grants, with their users' other overdue grants
			maxGrants := 1 + rng.IntN(3)
			op = fmt.Sprintf("sweep a batch of %d", maxGrants)
			type due struct {
				user  *modelUser
				grant *modelGrant
			}
			var overdue []due
			for _, u := range users {
				for _, g := range u.grants {
					if g.overdue && g.left > 0 {
						overdue = append(overdue, due{u, g})
					}
				}
			}
			slices.SortFunc(overdue, func(a, b due) int { return a.grant.expires.Compare(*b.grant.expires) })
			picked := map[*modelUser]bool{}
			for _, d := range overdue[:min(maxGrants, len(overdue))] {
				picked[d.user] = true
			}
			want := store.ExpireResult{ByKind: map[string]int64{}}
			usersByKind := map[[2]string]bool{}
			for _, d := range overdue {
				if picked[d.user] {
					want.Grants++
					want.Credits += d.grant.left
					want.ByKind[d.grant.kind] += d.grant.left
					usersByKind[[2]string{d.grant.kind, fmt.Sprint(d.user.id)}] = true
					d.grant.left = 0
				}
			}
			want.Users = int64(len(usersByKind)) // a user counts once per kind, as the store counts
			res, err := st.ExpireOverdueBatch(ctx, maxGrants)
			if err != nil {
				fail("sweep: %v", err)
			}
			if d := gocmp.Diff(want, res, cmpopts.EquateEmpty()); d != "" {
				fail("sweep (-model +store):\n%s", d)
			}
			if want.Grants > 0 {
				outcomes["swept"]++
			}
		}
		for _, u := range users {
			got, err := st.Balance(ctx, u.id)
			if err != nil {
				fail("balance of user %d: %v", u.id, err)
			}
			if d := gocmp.Diff(u.balance(), got); d != "" {
				fail("balance of user %d (-model +store):\n%s", u.id, d)
			}
		}
	}

	// The history lists each usage that drew credits, newest first, with
	// the grants it drew on as it answered them.
	names := map[string]string{}
	all, err := st.Services(ctx)
	require.NoError(t, err)
	for _, s := range all {
		names[s.Slug] = s.Name
	}
	op = "history"
	for _, u := range users {
		var want, got []store.HistoryItem
		for _, us := range slices.Backward(u.spent) {
			want = append(want, store.HistoryItem{Kind: store.EntryConsume, Credits: -us.Credits, UsageID: us.ID, Service: names[us.Service], Drawn: us.Drawn})
		}
		for cursor := int64(0); ; {
			page, err := st.History(ctx, u.id, cursor, 5) // small pages: a usage must not be split
			require.NoError(t, err)
			for _, it := range page.Items {
				if it.Kind == store.EntryConsume {
					got = append(got, store.HistoryItem{Kind: it.Kind, Credits: it.Credits, UsageID: it.UsageID, Service: it.Service, Drawn: it.Drawn})
				}
			}
			if cursor = page.NextCursor; cursor == 0 {
				break
			}
		}
		// The grants' times History adds to each draw are checked elsewhere.
		if d := gocmp.Diff(want, got, cmpopts.EquateEmpty(), cmpopts.IgnoreFields(store.Drawn{}, "GrantExpiresAt", "GrantCreatedAt")); d != "" {
			fail("history of user %d, consume entries (-model +store):\n%s", u.id, d)
		}
	}
	if v := storetest.Violations(t, st); len(v) > 0 {
		t.Errorf("seed %d: ledger invariants violated: %v", seed, v)
	}
	t.Logf("outcomes: %v", outcomes)
	for _, o := range []string{"created", "replayed", "conflict", "insufficient", "removed", "removal refused", "swept", "grant replayed", "invalid grant"} {
		if outcomes[o] == 0 {
			t.Errorf("seed %d: no operation ended %q: the run did not exercise that rule", seed, o)
		}
	}
}
