package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The admin's list of webhook events pages both ways, newest first by
// (received_at, id): events received at one instant are neither skipped
// nor listed twice, Newer goes to the page right above, and ends on the
// newest page; a filter holds throughout.
func TestStripeEventsPageOlderAndNewer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var want []string // newest first
	for i := range 23 {
		// Two events at each instant: ids break the tie.
		at := base.Add(time.Duration(i/2) * time.Minute)
		id := fmt.Sprintf("evt_%02d", i)
		_, err := st.Pool().Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload, received_at) VALUES ($1, 'customer.created', $2, '{}', $2)`, id, at)
		require.NoError(t, err)
		want = append([]string{id}, want...)
		// And one of another type, filtered out.
		_, err = st.Pool().Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload, received_at) VALUES ($1, 'invoice.paid', $2, '{}', $2)`, "evt_other_"+id, at)
		require.NoError(t, err)
	}
	ids := func(p store.EventPage) []string {
		var out []string
		for _, e := range p.Events {
			out = append(out, e.ID)
		}
		return out
	}
	f := store.EventFilter{Type: "customer.created"}
	var pages []store.EventPage
	for {
		p, err := st.ListStripeEvents(ctx, f, 10)
		require.NoError(t, err)
		pages = append(pages, p)
		if !p.HasMore {
			break
		}
		f.CursorTime, f.CursorID = p.NextTime, p.NextID
	}
	require.Len(t, pages, 3)
	require.Equal(t, want[:10], ids(pages[0]))
	require.Equal(t, want[10:20], ids(pages[1]))
	require.Equal(t, want[20:], ids(pages[2]))
	require.False(t, pages[0].HasNewer, "the newest page has nothing newer")
	require.True(t, pages[2].HasNewer)

	f = store.EventFilter{Type: "customer.created", AfterTime: pages[2].NewerTime, AfterID: pages[2].NewerID}
	up, err := st.ListStripeEvents(ctx, f, 10)
	require.NoError(t, err)
	require.Equal(t, want[10:20], ids(up), "right above the last page")
	require.True(t, up.HasMore)
	require.Equal(t, pages[1].NextID, up.NextID)
	require.True(t, up.HasNewer)
	f.AfterTime, f.AfterID = up.NewerTime, up.NewerID
	up, err = st.ListStripeEvents(ctx, f, 10)
	require.NoError(t, err)
	require.Equal(t, want[:10], ids(up), "ten above: the newest page")
	require.False(t, up.HasNewer)
	require.True(t, up.HasMore)
}
