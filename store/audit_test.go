package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The whole audit log filters by one action or, with a trailing dot, by an
// action family.
func TestAuditLogFiltersByActionOrFamily(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	for _, action := range []string{"riverui.post", "riverui.put", "riveruix", "service.set"} {
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error { return store.Audit(ctx, tx, nil, action, nil, nil) }))
	}
	count := func(action string) int {
		p, err := st.AuditLog(ctx, action, 0, 0, 0, 10)
		require.NoError(t, err)
		return len(p.Items)
	}
	require.Equal(t, 4, count(""))
	require.Equal(t, 2, count("riverui."))
	require.Equal(t, 1, count("riverui.put"))
	require.Equal(t, 0, count("riverui"))
	actions, err := st.AuditActions(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"riverui.post", "riverui.put", "riveruix", "service.set"}, actions)
}

// The audit log pages both ways: Older from the newest page to the last,
// then Newer back up, each page right above the one before, ending on the
// newest page; a user's filter holds throughout.
func TestAuditLogPagesOlderAndNewer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	other := storetest.NewUser(t, st, storetest.UserOpts{})
	for i := range 23 {
		require.NoError(t, st.InTx(ctx, func(tx pgx.Tx) error {
			if err := store.Audit(ctx, tx, nil, "test.entry", &other.ID, map[string]any{"n": i}); err != nil {
				return err
			}
			return store.Audit(ctx, tx, nil, "test.entry", &u.ID, map[string]any{"n": i})
		}))
	}
	ns := func(p store.ListPage[store.AuditEntry]) []string {
		var out []string
		for _, e := range p.Items {
			require.Equal(t, u.ID, *e.TargetUserID)
			out = append(out, fmt.Sprint(e.Details["n"]))
		}
		return out
	}
	seq := func(from, to int) []string { // from down to to
		var out []string
		for i := from; i >= to; i-- {
			out = append(out, fmt.Sprint(i))
		}
		return out
	}
	var pages []store.ListPage[store.AuditEntry]
	for cursor := int64(0); ; {
		p, err := st.AuditLog(ctx, "test.entry", u.ID, cursor, 0, 10)
		require.NoError(t, err)
		pages = append(pages, p)
		if cursor = p.NextCursor; cursor == 0 {
			break
		}
	}
	require.Len(t, pages, 3)
	require.Equal(t, seq(22, 13), ns(pages[0]))
	require.Equal(t, seq(12, 3), ns(pages[1]))
	require.Equal(t, seq(2, 0), ns(pages[2]))
	require.Zero(t, pages[0].NewerAfter, "the newest page has nothing newer")
	require.Equal(t, pages[1].Items[0].ID, pages[1].NewerAfter)

	up, err := st.AuditLog(ctx, "test.entry", u.ID, 0, pages[2].NewerAfter, 10)
	require.NoError(t, err)
	require.Equal(t, seq(12, 3), ns(up), "right above the last page")
	require.Equal(t, up.Items[len(up.Items)-1].ID, up.NextCursor)
	require.Equal(t, up.Items[0].ID, up.NewerAfter)
	up, err = st.AuditLog(ctx, "test.entry", u.ID, 0, up.NewerAfter, 10)
	require.NoError(t, err)
	require.Equal(t, pages[0], up, "ten above: the newest page")
	// A stale or made-up after above everything: the newest page.
	top, err := st.AuditLog(ctx, "", 0, 0, 1<<62, 10)
	require.NoError(t, err)
	require.Zero(t, top.NewerAfter)
	require.Len(t, top.Items, 10)
}
