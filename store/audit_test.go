package store_test

import (
	"context"
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
		p, err := st.AuditLog(ctx, action, 0, 0, 10)
		require.NoError(t, err)
		return len(p.Entries)
	}
	require.Equal(t, 4, count(""))
	require.Equal(t, 2, count("riverui."))
	require.Equal(t, 1, count("riverui.put"))
	require.Equal(t, 0, count("riverui"))
	actions, err := st.AuditActions(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"riverui.post", "riverui.put", "riveruix", "service.set"}, actions)
}
