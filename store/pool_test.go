package store_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Every connection asks the server to notice a client that vanished (its
// locks, the sweep's among them, are then freed within about a minute),
// unless the database URL says otherwise.
func TestPoolAsksTheServerToNoticeVanishedClients(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := storetest.NewDatabase(t)
	show := func(url string) map[string]string {
		pool, err := store.OpenPool(ctx, url, store.PoolOptions{MaxConns: 2})
		require.NoError(t, err)
		defer pool.Close()
		got := map[string]string{}
		for k := range store.ServerKeepalives {
			var v string
			require.NoError(t, pool.QueryRow(ctx, `SELECT current_setting($1)`, k).Scan(&v))
			got[k] = v
		}
		return got
	}
	require.Equal(t, map[string]string{
		"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3", "tcp_user_timeout": "60000",
	}, show(url), "over TCP")
	require.Equal(t, "45", show(url + "&tcp_keepalives_idle=45")["tcp_keepalives_idle"], "the URL's own setting")
}
