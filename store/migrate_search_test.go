package store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
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
	pool := storetest.NewPool(t)
	def := searchIndexDef(t, pool)
	require.Contains(t, def, "USING gin (lower(email) gin_trgm_ops)")
	require.NotContains(t, def, "WHERE", "the planner ignores the statistics of a partial index's expression")
	var target int
	require.NoError(t, pool.QueryRow(context.Background(),
		`SELECT attstattarget FROM pg_attribute WHERE attrelid = 'users_email_search_idx'::regclass AND attnum = 1`).Scan(&target))
	require.Equal(t, 1000, target)
}

// Upgrading a database that has users: the index is made and its
// statistics are there at once (autovacuum would wait for a tenth of the
// users to change). An index of that name made beforehand (CONCURRENTLY,
// by an operator avoiding the lock) is kept, not an error; one that search
// cannot use is named in a warning.
func TestMigration13OnExistingUsers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, premade, warning string }{
		{"no index before", "", ""},
		{"the index made beforehand", `CREATE INDEX CONCURRENTLY users_email_search_idx ON users USING gin (lower(email) gin_trgm_ops)`, ""},
		{"a partial index made beforehand", `CREATE INDEX users_email_search_idx ON users USING gin (lower(email) gin_trgm_ops) WHERE deleted_at IS NULL`, "is partial"},
		{"a b-tree made beforehand", `CREATE INDEX users_email_search_idx ON users (email)`, "is not a trigram index of lower(email)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := migrateUpTo(t, 12)
			_, err := pool.Exec(ctx, `INSERT INTO users (email, password_hash) SELECT 'u' || g || '@example.com', 'x' FROM generate_series(1, 2000) g`)
			require.NoError(t, err)
			if tc.premade != "" {
				_, err = pool.Exec(ctx, `CREATE EXTENSION pg_trgm`)
				require.NoError(t, err)
				_, err = pool.Exec(ctx, tc.premade)
				require.NoError(t, err)
			}
			var log bytes.Buffer
			_, err = store.Migrate(ctx, pool, slog.New(slog.NewTextHandler(&log, nil)))
			require.NoError(t, err)
			if tc.warning != "" {
				require.Contains(t, log.String(), "level=WARN msg=\"admin search by address will not use users_email_search_idx")
				require.Contains(t, log.String(), tc.warning)
				return
			}
			require.NotContains(t, log.String(), "level=WARN")
			require.Contains(t, searchIndexDef(t, pool), "gin_trgm_ops")
			var sampled int
			require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_stats WHERE tablename = 'users_email_search_idx'`).Scan(&sampled))
			require.Equal(t, 1, sampled, "no statistics of lower(email) after the migration")
		})
	}
}

// A passing failure (here a lock wait running out) fails the migration,
// which then runs whole next time: it must not be taken for a missing
// privilege and recorded as applied without its index.
func TestMigration13FailsOnALockTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := migrateUpTo(t, 12)
	holder, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = holder.Exec(ctx, `LOCK TABLE users IN ROW EXCLUSIVE MODE`)
	require.NoError(t, err)
	impatient, err := store.OpenPool(ctx, poolURL(pool, "", "")+"&lock_timeout=300", store.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	defer impatient.Close()
	_, err = store.Migrate(ctx, impatient, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, "lock timeout")
	require.NoError(t, holder.Rollback(ctx))
	st, err := store.Status(ctx, pool)
	require.NoError(t, err)
	require.Contains(t, st.AppPending, "00013_users_email_search.sql")

	_, err = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.Contains(t, searchIndexDef(t, pool), "gin_trgm_ops")
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

// ordinaryRole creates a login role that is not a superuser, owning
// nothing. Call it before making the test's database: the role is dropped
// after it.
func ordinaryRole(t *testing.T, admin *pgx.Conn) (role, password string) {
	t.Helper()
	ctx := context.Background()
	secret := make([]byte, 8)
	_, _ = rand.Read(secret)
	role, password = "qs_t_role_"+hex.EncodeToString(secret[:4]), hex.EncodeToString(secret)
	_, err := admin.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, role, password))
	require.NoError(t, err)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), storetest.ServerURL())
		if err != nil {
			t.Errorf("connect to drop role %s: %v", role, err)
			return
		}
		defer c.Close(context.Background())
		// The database is dropped first (its clean-up was registered
		// before this one), taking what the role owned in it.
		if err := onParameterACL(context.Background(), c, `REVOKE SET ON PARAMETER quickscale.ledger FROM `+role); err != nil {
			t.Errorf("revoke from role %s: %v", role, err)
		}
		if _, err := c.Exec(context.Background(), `DROP ROLE IF EXISTS `+role); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
	return role, password
}

// onParameterACL runs a GRANT or REVOKE on a parameter. Parameter
// privileges live in one catalog row per parameter for the whole cluster,
// and concurrent changes of it fail ("tuple concurrently updated"): they
// take turns, under a lock on the server's maintenance database.
func onParameterACL(ctx context.Context, admin *pgx.Conn, stmt string) error {
	return pgx.BeginFunc(ctx, admin, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(0x71735f706172616d)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, stmt)
		return err
	})
}

// poolURL is the URL of pool's database as user (pool's own when user is
// "").
func poolURL(pool *pgxpool.Pool, user, password string) string {
	cfg := pool.Config().ConnConfig
	if user == "" {
		user, password = cfg.User, cfg.Password
	}
	u := url.URL{Scheme: "postgres", Host: fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), Path: "/" + cfg.Database, RawQuery: "sslmode=disable"}
	if user != "" {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

// A role that is not a superuser can migrate and run QuickScale once it is
// granted quickscale.ledger (README, "The database role"). Where the
// search index cannot be made, migrations still complete without it, say
// so, and search still answers: here because the role may not create
// pg_trgm (no CREATE on its database; elsewhere: no contrib), or because
// pg_trgm is installed in a schema the role may not use.
func TestMigrateAsAnOrdinaryRoleWithoutTrigramIndex(t *testing.T) {
	t.Parallel()
	for _, why := range []string{"no CREATE on the database", "pg_trgm in a schema it may not use"} {
		t.Run(why, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			admin, err := pgx.Connect(ctx, storetest.ServerURL())
			require.NoError(t, err)
			defer admin.Close(ctx)
			role, password := ordinaryRole(t, admin)
			owner := emptyDatabase(t)
			_, err = owner.Exec(ctx, `GRANT ALL ON SCHEMA public TO `+role)
			require.NoError(t, err)
			if why == "pg_trgm in a schema it may not use" {
				_, err = owner.Exec(ctx, `CREATE SCHEMA locked; CREATE EXTENSION pg_trgm SCHEMA locked`)
				require.NoError(t, err)
			}
			pool, err := store.OpenPool(ctx, poolURL(owner, role, password), store.PoolOptions{MaxConns: 4})
			require.NoError(t, err)
			defer pool.Close()

			// Without the parameter granted, the ledger functions cannot be
			// made, and the error says what to do.
			_, err = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
			require.ErrorContains(t, err, "GRANT SET ON PARAMETER quickscale.ledger TO")
			require.NoError(t, onParameterACL(ctx, admin, `GRANT SET ON PARAMETER quickscale.ledger TO `+role))
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
			page, err := s.SearchUsers(ctx, "ANN.SEARCH", 0, 0, 10)
			require.NoError(t, err)
			require.Len(t, page.Items, 1)
			require.Equal(t, ann.ID, page.Items[0].ID)

			// The ledger runs for a role that is not a superuser.
			svc := storetest.NewService(t, s, storetest.ServiceOpts{Slug: "search-test", Cost: 3})
			storetest.NewGrant(t, s, ann.ID, storetest.GrantOpts{Kind: "pack", Amount: 10})
			usage, _, err := s.Consume(ctx, store.ConsumeRequest{UserID: ann.ID, Service: svc, IdempotencyKey: "k1"})
			require.NoError(t, err)
			require.Equal(t, int64(7), usage.Balance)
			require.Empty(t, storetest.Violations(t, s))
		})
	}
}

// Search finds the same users, in the same pages, whether PostgreSQL reads
// them through the trigram index or walks them: LIKE's wildcards in what
// support typed match themselves, case does not matter, a number is also an
// id (deleted accounts included).
func TestSearchUsersSameThroughTrigramIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := storetest.NewDatabase(t)
	// Without bitmap scans the LIKE cannot use the trigram index: the users
	// are walked by id.
	walk, err := store.OpenPool(ctx, dbURL+"&enable_bitmapscan=off", store.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	defer walk.Close()
	// With plain index and sequential scans off, the only way left to the
	// LIKE is the trigram index (a bitmap scan).
	viaIndex, err := store.OpenPool(ctx, dbURL+"&enable_indexscan=off&enable_seqscan=off", store.PoolOptions{MaxConns: 2})
	require.NoError(t, err)
	defer viaIndex.Close()
	// Enough other users that reading them all by id costs more than the
	// trigram index (none matches a search below but "").
	_, err = walk.Exec(ctx, `INSERT INTO users (email, password_hash) SELECT 'f' || g || '@filler.invalid', 'x' FROM generate_series(1, 100000) g`)
	require.NoError(t, err)
	_, err = walk.Exec(ctx, `ANALYZE users`)
	require.NoError(t, err)
	plan := func(pool *pgxpool.Pool, pattern string) string {
		rows, err := pool.Query(ctx, `EXPLAIN SELECT id FROM users WHERE id < 9223372036854775807 AND ((deleted_at IS NULL AND lower(email) LIKE $1) OR id = 1) ORDER BY id DESC LIMIT 3`,
			pgx.QueryExecModeExec, pattern)
		require.NoError(t, err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return fmt.Sprint(lines)
	}
	// The test's premise, for a search matching a few and one matching all.
	for _, pattern := range []string{"%ann%", "%example%"} {
		require.Contains(t, plan(viaIndex, pattern), "users_email_search_idx", "the trigram index is read for %s", pattern)
		require.NotContains(t, plan(walk, pattern), "users_email_search_idx", "users are walked for %s", pattern)
	}

	_, err = walk.Exec(ctx, `INSERT INTO users (email, password_hash) VALUES
 ('ann_smith@example.com', 'x'), ('annXsmith@example.com', 'x'), ('ann%smith@example.com', 'x'),
 ('ann\smith@example.com', 'x'), ('ANNE.Smith@Example.org', 'x'), ('joanna@example.net', 'x'),
 ('zoë.ann@example.net', 'x'), ('bob@example.com', 'x'), ('b.o.b@example.com', 'x')`)
	require.NoError(t, err)
	var deleted int64
	require.NoError(t, walk.QueryRow(ctx, `INSERT INTO users (email, password_hash, deleted_at) VALUES (NULL, NULL, now()) RETURNING id`).Scan(&deleted))

	// The first pages of a search (at most five).
	ids := func(pool *pgxpool.Pool, q string, pageSize int) [][]int64 {
		st := store.New(pool, nil)
		var pages [][]int64
		for before := int64(0); len(pages) < 5; {
			p, err := st.SearchUsers(ctx, q, before, 0, pageSize)
			require.NoError(t, err)
			var page []int64
			for _, u := range p.Items {
				page = append(page, u.ID)
			}
			pages = append(pages, page)
			if p.NextCursor == 0 {
				return pages
			}
			before = p.NextCursor
		}
		return pages
	}
	emails := func(pool *pgxpool.Pool, q string) []string {
		p, err := store.New(pool, nil).SearchUsers(ctx, q, 0, 0, 50)
		require.NoError(t, err)
		var out []string
		for _, u := range p.Items {
			out = append(out, u.Email)
		}
		slices.Sort(out)
		return out
	}
	for _, q := range []string{"ann", "ANN_SMITH", "ann%s", `ann\s`, "smith@", "example", "zoë", "b.o", "nobody", "", fmt.Sprint(deleted)} {
		for _, size := range []int{50, 2} {
			require.Equal(t, ids(walk, q, size), ids(viaIndex, q, size), "search %q, %d a page", q, size)
		}
	}
	require.Equal(t, []string{"ann_smith@example.com"}, emails(viaIndex, "ANN_SMITH"))
	require.Equal(t, []string{"ann%smith@example.com"}, emails(viaIndex, "ann%s"))
	require.Equal(t, []string{`ann\smith@example.com`}, emails(viaIndex, `ann\s`))
	require.Equal(t, []string{"ANNE.Smith@Example.org", "ann%smith@example.com", "annXsmith@example.com", `ann\smith@example.com`, "ann_smith@example.com", "joanna@example.net", "zoë.ann@example.net"},
		emails(viaIndex, "ann"))
	require.Equal(t, [][]int64{{deleted}}, ids(viaIndex, fmt.Sprint(deleted), 50))
}
