package store_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Signing in again and again without the cookie cannot grow a user's known
// browsers without end: the least recently used beyond 20 are forgotten,
// the newest stays known.
func TestKnownDevicesPerUserAreBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	var last string
	for range 25 {
		token, err := st.RememberDevice(ctx, u.ID)
		require.NoError(t, err)
		last = token
	}
	var n int
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT count(*) FROM known_devices WHERE user_id = $1`, u.ID).Scan(&n))
	require.Equal(t, 20, n)
	id, ok, err := st.DeviceUser(ctx, last)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, u.ID, id)
	_, ok, err = st.DeviceUser(ctx, "not-a-token")
	require.NoError(t, err)
	require.False(t, ok)
}

// An admin addition keyed before credit_adjustments existed (migration
// 00009) was kept once by its grant's source alone ("key:" + key): the same
// form sent again is a replay, not a second grant.
func TestAdjustmentKeyedBeforeItsClaimIsReplayed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	admin := storetest.NewUser(t, st, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, st, storetest.UserOpts{})
	key := "7:legacy-nonce"
	tx, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT set_config('quickscale.ledger', 'on', true)`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT * FROM ledger_grant($1, 'admin', 40, NULL, 'adjustment', 'key:' || $2, 'adjust', $3, 'before 00009')`, u.ID, key, admin.ID)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))

	// Other values under the old key are refused, and leave no claim.
	_, err = st.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 41, Kind: store.GrantAdmin, Actor: &admin.ID, Reason: "before 00009", Key: key, Via: "web"})
	require.Equal(t, store.KindConflict, store.ErrorKind(err), "%v", err)
	res, err := st.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 40, Kind: store.GrantAdmin, Actor: &admin.ID, Reason: "before 00009", Key: key, Via: "web"})
	require.NoError(t, err)
	require.True(t, res.Replayed)
	b, err := st.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 40, b.Total, "granted twice")
}
