package store_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// TestConcurrentTokensLeaveOnlyTheNewestLive issues several reset tokens for
// one user at the same moment (as two email workers do when a user asks
// twice): exactly one of them must redeem, whatever the interleaving.
func TestConcurrentTokensLeaveOnlyTheNewestLive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})

	for round := range 5 {
		const n = 6
		tokens := make([]string, n)
		errs := make([]error, n)
		storetest.AllAtOnce(n, func(i int) {
			tokens[i], errs[i] = store.CreateToken(ctx, st.Pool(), u.ID, "reset_password", u.Email)
		})
		for _, err := range errs {
			require.NoError(t, err)
		}
		redeemed := 0
		for _, tok := range tokens {
			if _, err := store.UseToken(ctx, st.Pool(), tok, "reset_password"); err == nil {
				redeemed++
			} else {
				require.Equal(t, store.KindInvalid, store.ErrorKind(err), "round %d: %v", round, err)
			}
		}
		require.Equal(t, 1, redeemed, "round %d: live tokens after %d concurrent issues", round, n)
	}
}

// TestTokenPurposesAreIndependent: a new reset link does not revoke a
// pending verification link.
func TestTokenPurposesAreIndependent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{Unverified: true})
	verify, err := store.CreateToken(ctx, st.Pool(), u.ID, "verify_email", u.Email)
	require.NoError(t, err)
	reset, err := store.CreateToken(ctx, st.Pool(), u.ID, "reset_password", u.Email)
	require.NoError(t, err)
	_, err = store.UseToken(ctx, st.Pool(), verify, "verify_email")
	require.NoError(t, err)
	_, err = store.UseToken(ctx, st.Pool(), reset, "reset_password")
	require.NoError(t, err)
}
