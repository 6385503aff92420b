package store_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A history longer than an export's batch comes out whole: every entry
// once, oldest first, another user's none; a removal drawn on thousands
// of grants is one entry per grant; a range keeps only its entries.
func TestExportHistoryReadsEveryEntryInBatches(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	other := storetest.NewUser(t, b.st, storetest.UserOpts{})
	storetest.ManyGrants(t, b.st.Pool(), other.ID, store.GrantPromo, 10, nil)
	grants := storetest.ManyGrants(t, b.st.Pool(), b.user.ID, store.GrantPromo, 2500, nil)
	_, err := b.st.Adjust(b.ctx, store.Adjustment{UserID: b.user.ID, Delta: -2300, Reason: "cleanup"})
	require.NoError(t, err)

	var got []store.ExportEntry
	require.NoError(t, b.st.ExportHistory(b.ctx, b.user.ID, time.Time{}, time.Time{}, func(e store.ExportEntry) error {
		got = append(got, e)
		return nil
	}))
	require.Len(t, got, 2500+2300)
	var sum int64
	for i, e := range got {
		if i > 0 {
			require.Greater(t, e.ID, got[i-1].ID, "entry %d out of order or repeated", i)
		}
		sum += e.Credits
		if i < 2500 {
			require.Equal(t, store.EntryGrant, e.Kind)
			require.Equal(t, grants[i], e.GrantID)
		} else {
			require.Equal(t, store.EntryAdjust, e.Kind)
			require.Equal(t, int64(-1), e.Credits)
			require.Equal(t, "cleanup", *e.Reason)
		}
	}
	require.Equal(t, int64(200), sum)

	// A range after everything, and one that ends before it, are empty; a
	// range around now holds it all.
	count := func(from, to time.Time) int {
		n := 0
		require.NoError(t, b.st.ExportHistory(b.ctx, b.user.ID, from, to, func(store.ExportEntry) error { n++; return nil }))
		return n
	}
	now := time.Now()
	require.Zero(t, count(now.Add(time.Hour), time.Time{}))
	require.Zero(t, count(time.Time{}, now.Add(-time.Hour)))
	require.Equal(t, 4800, count(now.Add(-time.Hour), now.Add(time.Hour)))
}
