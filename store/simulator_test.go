package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A simulated checkout its buyer cancels is expired at once, its expired
// event delivered under its lock; one finished already (paid in another
// tab) is not, and nothing is delivered for it.
func TestExpireSimSessionExpiresOnlyAnOpenSession(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	for _, id := range []string{"cs_sim_open", "cs_sim_paid"} {
		_, err := st.CreateSimSession(ctx, store.SimSession{ID: id, UserID: u.ID, CustomerID: "cus_x", AmountMinor: 500, Currency: "usd",
			Description: "x", Metadata: map[string]string{}, SuccessURL: "http://x/s", CancelURL: "http://x/c", PaymentIntentID: "pi_" + id})
		require.NoError(t, err)
	}
	_, _, err := st.FinishSimSession(ctx, "cs_sim_paid", u.ID, "paid", func(store.SimSession) error { return nil })
	require.NoError(t, err)

	var delivered []store.SimSession
	deliver := func(ss store.SimSession) error { delivered = append(delivered, ss); return nil }
	require.NoError(t, st.ExpireSimSession(ctx, "cs_sim_open", deliver))
	require.Len(t, delivered, 1)
	require.Equal(t, "expired", delivered[0].Status)
	ss, err := st.SimSessionOfUser(ctx, "cs_sim_open", u.ID)
	require.NoError(t, err)
	require.Equal(t, "expired", ss.Status)

	require.ErrorIs(t, st.ExpireSimSession(ctx, "cs_sim_open", deliver), store.ErrSimSessionExpired, "expired twice")
	require.ErrorIs(t, st.ExpireSimSession(ctx, "cs_sim_paid", deliver), store.ErrSimSessionNotOpen, "a paid session expired")
	require.Len(t, delivered, 1, "an event delivered for a session not open")
	require.Equal(t, store.KindNotFound, store.ErrorKind(st.ExpireSimSession(ctx, "cs_sim_none", deliver)))

	// A failed delivery leaves the session open, to be cancelled again.
	_, err = st.CreateSimSession(ctx, store.SimSession{ID: "cs_sim_retry", UserID: u.ID, CustomerID: "cus_x", AmountMinor: 500, Currency: "usd",
		Description: "x", Metadata: map[string]string{}, SuccessURL: "http://x/s", CancelURL: "http://x/c", PaymentIntentID: "pi_retry"})
	require.NoError(t, err)
	require.Error(t, st.ExpireSimSession(ctx, "cs_sim_retry", func(store.SimSession) error { return errors.New("webhook down") }))
	ss, err = st.SimSessionOfUser(ctx, "cs_sim_retry", u.ID)
	require.NoError(t, err)
	require.Equal(t, "open", ss.Status)
}
