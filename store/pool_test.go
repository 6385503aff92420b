package store_test

import (
	"context"
	"testing"
	"time"

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

// Times read from the database are in UTC whatever the process's zone:
// the JSON API writes them as they come (a usage's created_at, the next
// expiry), and a replay answered by a process with another TZ must be the
// same body. (pgx's default is time.Local, a zone of its own even when it
// is UTC.)
func TestTimesAreReadInUTC(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.NewStore(t)
	var now time.Time
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT now()`).Scan(&now))
	require.Same(t, time.UTC, now.Location())

	u := storetest.NewUser(t, st, storetest.UserOpts{})
	storetest.NewGrant(t, st, u.ID, storetest.GrantOpts{Amount: 5, Kind: store.GrantPromo, ExpiresAt: ptr(time.Now().Add(time.Hour))})
	svc := storetest.NewService(t, st, storetest.ServiceOpts{Cost: 1})
	usage, _, err := st.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "utc"})
	require.NoError(t, err)
	require.Same(t, time.UTC, usage.CreatedAt.Location())
	bal, err := st.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.NotNil(t, bal.NextExpiry)
	require.Same(t, time.UTC, bal.NextExpiry.Location())
}
