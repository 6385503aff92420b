package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// A database out of reach is "unavailable" (a 503, retry later); a
// configuration fault (no such database, role or password) is not: it
// would never pass, and must show as an error.
func TestIsUnavailableTellsOutagesFromConfigurationFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	server, err := pgx.ParseConfig(storetest.ServerURL())
	if err != nil {
		t.Fatal(err)
	}
	server.ConnectTimeout = 5 * time.Second
	noPort, noDatabase, noRole := server.Copy(), server.Copy(), server.Copy()
	noPort.Port, noPort.Fallbacks = 1, nil
	noDatabase.Database = "no_such_database_here"
	noRole.User, noRole.Password = "no_such_role_here", ""
	for name, c := range map[string]struct {
		cfg  *pgx.ConnConfig
		want bool
	}{
		"nothing listening": {noPort, true},
		"no such database":  {noDatabase, false},
		"no such role":      {noRole, false},
	} {
		conn, err := pgx.ConnectConfig(ctx, c.cfg)
		if err == nil {
			_ = conn.Close(ctx)
			t.Fatalf("%s: connected", name)
		}
		if got := store.IsUnavailable(err); got != c.want {
			t.Errorf("%s: IsUnavailable %v, want %v (%v)", name, got, c.want, err)
		}
	}
}
