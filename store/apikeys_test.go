package store_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// TestAPIKeyLimitHoldsUnderConcurrentCreation creates keys for one user
// from many goroutines at once: no interleaving may pass the limit.
func TestAPIKeyLimitHoldsUnderConcurrentCreation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})

	const attempts = 40
	errs := make([]error, attempts)
	storetest.AllAtOnce(attempts, func(i int) {
		_, _, errs[i] = st.CreateAPIKey(ctx, u.ID, fmt.Sprintf("key %d", i))
	})

	created, refused := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			created++
		case store.ErrorKind(err) == store.KindConflict:
			refused++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	keys, err := st.APIKeys(ctx, u.ID)
	require.NoError(t, err)
	require.Len(t, keys, created)
	require.Equal(t, attempts, created+refused)
	require.Equal(t, store.MaxAPIKeysPerUser, created, "keys created by %d concurrent requests", attempts)
}
