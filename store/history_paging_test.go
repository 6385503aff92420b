package store_test

// Paging the credit history both ways, Older and Newer, on a random mixed
// history.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

func historySig(it store.HistoryItem) string {
	g := []int64{}
	for _, d := range it.Drawn {
		g = append(g, d.GrantID)
	}
	return fmt.Sprintf("%s|%d|%d|%d|%v|%d|%s", it.Kind, it.Credits, it.UsageID, it.GrantID, g, it.CreatedAt.UnixMicro(), it.Reason)
}

func historySigs(items []store.HistoryItem) []string {
	var out []string
	for _, it := range items {
		out = append(out, historySig(it))
	}
	return out
}

// indexOfRun returns where run starts in all, or -1.
func indexOfRun(all, run []string) int {
	for i := 0; i+len(run) <= len(all); i++ {
		if slices.Equal(all[i:i+len(run)], run) {
			return i
		}
	}
	return -1
}

// A mixed history (from a seeded random walk): small grants of several
// kinds, multi-grant uses, refused uses, removals by support across many
// grants (more than a page), swept expiries. For several page sizes:
// walking Older from the newest page gives the one-page history exactly
// (nothing split); Newer from every page is a run of it that meets the
// page with no gap and no duplicate (the newest page where that is
// shorter), and Older from that run comes back to the page.
func TestHistoryPagesBothWaysOnAMixedHistory(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	admin := storetest.NewUser(t, b.st, storetest.UserOpts{Admin: true})
	svc := storetest.NewService(t, b.st, storetest.ServiceOpts{Cost: 7})
	rng := rand.New(rand.NewPCG(1, 2))
	kinds := []string{store.GrantPack, store.GrantPromo, store.GrantSubscription}
	for step := range 120 {
		switch r := rng.IntN(10); {
		case r < 5:
			for range 1 + rng.IntN(4) {
				k := kinds[rng.IntN(len(kinds))]
				storetest.NewGrant(t, b.st, b.user.ID, storetest.GrantOpts{Kind: k, Amount: int64(1 + rng.IntN(3))})
			}
		case r < 8:
			_, _, err := b.consume(t, svc, fmt.Sprintf("k%d", step))
			if err != nil {
				var short *store.InsufficientCreditsError
				require.ErrorAs(t, err, &short)
			}
		case r == 8:
			bal, err := b.st.Balance(b.ctx, b.user.ID)
			require.NoError(t, err)
			if bal.Total > 2 {
				_, err = b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: -min(bal.Total-1, int64(20+rng.IntN(30))), Actor: &admin.ID, Reason: "removal"})
				require.NoError(t, err)
			}
		default:
			// an overdue grant, swept
			storetest.BackdatedGrant(t, b.st.Pool(), b.user.ID, store.GrantPromo, 2, time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
			_, err := b.st.ExpireOverdueBatch(b.ctx, 100)
			require.NoError(t, err)
		}
	}
	all, err := b.st.History(b.ctx, b.user.ID, 0, 100000)
	require.NoError(t, err)
	canon := historySigs(all.Items)
	t.Logf("%d items", len(canon))

	for _, limit := range []int{1, 2, 3, 5, 7, 10, 25} {
		// Older from the newest.
		var pages []store.HistoryPage
		p, err := b.st.History(b.ctx, b.user.ID, 0, limit)
		require.NoError(t, err)
		pages = append(pages, p)
		var walked []string
		for {
			walked = append(walked, historySigs(p.Items)...)
			if p.NextCursor == 0 {
				break
			}
			p, err = b.st.History(b.ctx, b.user.ID, p.NextCursor, limit)
			require.NoError(t, err)
			pages = append(pages, p)
		}
		require.Equal(t, canon, walked, "limit %d: walking Older", limit)

		// Newer from every page: the page above meets it.
		for i, p := range pages {
			if p.NewerAfter == 0 {
				require.Zero(t, i, "limit %d: only the first page has nothing newer", limit)
				continue
			}
			n, err := b.st.HistoryNewer(b.ctx, b.user.ID, p.NewerAfter, limit)
			require.NoError(t, err)
			at := indexOfRun(canon, historySigs(n.Items))
			require.GreaterOrEqual(t, at, 0, "limit %d: Newer page from page %d is not a run of the history", limit, i)
			here := indexOfRun(canon, historySigs(p.Items))
			if n.NewerAfter == 0 {
				require.Zero(t, at)
				require.GreaterOrEqual(t, len(n.Items), here, "limit %d: newest page leaves a gap above page %d", limit, i)
			} else {
				require.Equal(t, here, at+len(n.Items), "limit %d: Newer page from page %d does not meet it", limit, i)
				// and Older from it comes back to p's top
				o, err := b.st.History(b.ctx, b.user.ID, n.NextCursor, limit)
				require.NoError(t, err)
				require.Equal(t, here, indexOfRun(canon, historySigs(o.Items)), "limit %d: Older from the Newer page of page %d", limit, i)
			}
		}
	}
}

// The newest page, lengthened to finish a use drawing on many grants,
// is where Newer from the next page goes back to: it showed a page of its
// own that repeated most of the newest.
func TestHistoryNewerFromTheSecondPageIsTheNewest(t *testing.T) {
	t.Parallel()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.ManyGrants(t, st.Pool(), u.ID, store.GrantPack, 12, nil)
	storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Kind: store.GrantAdmin, Amount: 100})
	big := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 13})
	one := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	_, _, err := st.Consume(t.Context(), store.ConsumeRequest{UserID: u.ID, Service: big, IdempotencyKey: "big"})
	require.NoError(t, err)
	for i := range 15 {
		_, _, err := st.Consume(t.Context(), store.ConsumeRequest{UserID: u.ID, Service: one, IdempotencyKey: fmt.Sprint("one-", i)})
		require.NoError(t, err)
	}
	const limit = 25
	first, err := st.History(t.Context(), u.ID, 0, limit)
	require.NoError(t, err)
	require.NotZero(t, first.NextCursor)
	second, err := st.History(t.Context(), u.ID, first.NextCursor, limit)
	require.NoError(t, err)
	require.NotZero(t, second.NewerAfter)
	back, err := st.HistoryNewer(t.Context(), u.ID, second.NewerAfter, limit)
	require.NoError(t, err)
	require.Equal(t, historySigs(first.Items), historySigs(back.Items), "Newer from the second page")
	require.Zero(t, back.NewerAfter, "the newest page has nothing newer")
}
