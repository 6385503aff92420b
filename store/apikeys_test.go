package store_test

import (
	"context"
	"fmt"
	"strings"
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
	keys, _, err := st.APIKeys(ctx, u.ID)
	require.NoError(t, err)
	require.Len(t, keys, created)
	require.Equal(t, attempts, created+refused)
	require.Equal(t, store.MaxAPIKeysPerUser, created, "keys created by %d concurrent requests", attempts)
}

// A key's name is bounded in characters, as the database bounds it.
func TestAPIKeyNameIsBoundedInCharacters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	_, k, err := st.CreateAPIKey(ctx, u.ID, strings.Repeat("é", 100)) // 200 bytes
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("é", 100), k.Name)
	for _, name := range []string{strings.Repeat("é", 101), "bad \xff name", "  ", "a\x01b", "two\nlines", "\ufeff", "key\u202e"} {
		_, _, err = st.CreateAPIKey(ctx, u.ID, name)
		require.Equal(t, store.KindInvalid, store.ErrorKind(err), "name %q: %v", name, err)
	}
}

// APIKeys lists every live key and the RevokedKeysListed newest revoked
// ones, and says when older revoked keys were left out — not before.
func TestAPIKeysListsLiveKeysAndTheNewestRevoked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	_, oldest, err := st.CreateAPIKey(ctx, u.ID, "oldest live")
	require.NoError(t, err)
	for i := range store.RevokedKeysListed {
		_, k, err := st.CreateAPIKey(ctx, u.ID, fmt.Sprintf("r%d", i))
		require.NoError(t, err)
		require.NoError(t, st.RevokeAPIKey(ctx, u.ID, k.ID))
	}
	keys, older, err := st.APIKeys(ctx, u.ID)
	require.NoError(t, err)
	require.False(t, older, "exactly RevokedKeysListed revoked keys: none left out")
	require.Len(t, keys, store.RevokedKeysListed+1)
	require.Equal(t, oldest.ID, keys[len(keys)-1].ID, "newest first, the live key last")

	_, newest, err := st.CreateAPIKey(ctx, u.ID, "r-last")
	require.NoError(t, err)
	require.NoError(t, st.RevokeAPIKey(ctx, u.ID, newest.ID))
	keys, older, err = st.APIKeys(ctx, u.ID)
	require.NoError(t, err)
	require.True(t, older)
	require.Len(t, keys, store.RevokedKeysListed+1)
	require.Equal(t, newest.ID, keys[0].ID)
	require.Equal(t, oldest.ID, keys[len(keys)-1].ID, "the live key stays listed")
	require.Equal(t, "r1", keys[len(keys)-2].Name, "the oldest revoked key (r0) is the one left out")
}
