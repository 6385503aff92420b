package store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// searchIndexDef is the definition of the admin search's trigram index, ""
// when there is none.
func searchIndexDef(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var def string
	err := pool.QueryRow(context.Background(), `SELECT coalesce((SELECT indexdef FROM pg_indexes WHERE indexname = 'users_email_search_idx'), '')`).Scan(&def)
	require.NoError(t, err)
	return def
}

func TestUserSearchHasATrigramIndex(t *testing.T) {
	t.Parallel()
	def := searchIndexDef(t, storetest.NewPool(t))
	require.Contains(t, def, "USING gin (lower(email) gin_trgm_ops)")
	require.NotContains(t, def, "WHERE", "a partial index keeps no statistics of lower(email) for the planner")
}

// An installation where pg_trgm lives in a schema of its own (as on some
// managed services) gets the index with that schema's operator class.
func TestMigrateFindsTrigramExtensionInAnotherSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := emptyDatabase(t)
	_, err := pool.Exec(ctx, `CREATE SCHEMA extensions; CREATE EXTENSION pg_trgm SCHEMA extensions`)
	require.NoError(t, err)
	var log bytes.Buffer
	_, err = store.Migrate(ctx, pool, slog.New(slog.NewTextHandler(&log, nil)))
	require.NoError(t, err)
	require.NotContains(t, log.String(), "trigram")
	require.Contains(t, searchIndexDef(t, pool), "USING gin (lower(email) extensions.gin_trgm_ops)")
}

// A role that is not a superuser can migrate and run QuickScale once it is
// granted quickscale.ledger (README, "The database role"). Where pg_trgm
// cannot be created (here: the role has no CREATE on its database;
// elsewhere: an installation without PostgreSQL's contrib), migrations
// still complete, without the search index, and search still answers.
func TestMigrateAsAnOrdinaryRoleWithoutTrigramExtension(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	secret := make([]byte, 8)
	_, _ = rand.Read(secret)
	role, password := "qs_t_notrgm_"+hex.EncodeToString(secret[:4]), hex.EncodeToString(secret)
	admin, err := pgx.Connect(ctx, storetest.ServerURL())
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, role, password))
	require.NoError(t, err)
	// Registered before the database's own clean-up, so it runs after the
	// database (and what the role owns in it) is gone.
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), storetest.ServerURL())
		if err != nil {
			t.Errorf("connect to drop role %s: %v", role, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), `REVOKE SET ON PARAMETER quickscale.ledger FROM `+role); err != nil {
			t.Errorf("revoke from role %s: %v", role, err)
		}
		if _, err := c.Exec(context.Background(), `DROP ROLE IF EXISTS `+role); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})

	owner := emptyDatabase(t)
	_, err = owner.Exec(ctx, `GRANT ALL ON SCHEMA public TO `+role)
	require.NoError(t, err)
	cfg := owner.Config().ConnConfig
	u := url.URL{Scheme: "postgres", User: url.UserPassword(role, password), Host: fmt.Sprintf("%s:%d", cfg.Host, cfg.Port),
		Path: "/" + cfg.Database, RawQuery: "sslmode=disable"}
	pool, err := store.OpenPool(ctx, u.String(), store.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	defer pool.Close()

	// Without the parameter granted, the ledger functions cannot be made,
	// and the error says what to do.
	_, err = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "GRANT SET ON PARAMETER quickscale.ledger TO")
	_, err = admin.Exec(ctx, `GRANT SET ON PARAMETER quickscale.ledger TO `+role)
	require.NoError(t, err)
	var log bytes.Buffer
	_, err = store.Migrate(ctx, pool, slog.New(slog.NewTextHandler(&log, nil)))
	require.NoError(t, err)
	require.Contains(t, log.String(), "level=WARN msg=\"admin search by address has no trigram index")
	st, err := store.Status(ctx, pool)
	require.NoError(t, err)
	require.True(t, st.Current(), st.Problem())
	require.Empty(t, searchIndexDef(t, pool))

	s := store.New(pool, nil)
	ann := storetest.NewUser(t, s, storetest.UserOpts{Email: "ann.search@example.com"})
	storetest.NewUser(t, s, storetest.UserOpts{Email: "bob.search@example.com"})
	page, err := s.SearchUsers(ctx, "ANN.SEARCH", 0, 10)
	require.NoError(t, err)
	require.Len(t, page.Users, 1)
	require.Equal(t, ann.ID, page.Users[0].ID)

	// The ledger runs for a role that is not a superuser.
	svc := storetest.NewService(t, s, storetest.ServiceOpts{Slug: "search-test", Cost: 3})
	storetest.NewGrant(t, s, ann.ID, storetest.GrantOpts{Kind: "pack", Amount: 10})
	usage, _, err := s.Consume(ctx, store.ConsumeRequest{UserID: ann.ID, Service: svc, IdempotencyKey: "k1"})
	require.NoError(t, err)
	require.Equal(t, int64(7), usage.Balance)
	require.Empty(t, storetest.Violations(t, s))
}
