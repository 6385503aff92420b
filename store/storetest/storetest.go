// Package storetest gives every test its own migrated PostgreSQL database,
// cloned from a template that is built once per set of migrations, so tests
// can run with t.Parallel() against real Postgres and leave nothing behind.
//
// TEST_DATABASE_URL names the server (any database on it; default
// postgres://127.0.0.1:5432/postgres). The role needs CREATEDB.
package storetest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/quickscale/quickscale/migrations"
	"github.com/quickscale/quickscale/store"
)

// DefaultURL is used when TEST_DATABASE_URL is empty.
const DefaultURL = "postgres://127.0.0.1:5432/postgres?sslmode=disable"

// templateLockKey serialises template builds across test binaries, which
// `go test ./...` runs in parallel.
const templateLockKey int64 = 0x71735f746d706c

var (
	templateOnce sync.Once
	templateName string
	// templateInUse is a session held for the life of the test process,
	// holding a shared advisory lock on its template (templateUseKey):
	// a run of other migrations drops the template only when no process
	// holds it.
	templateInUse *pgx.Conn
	templateErr   error
)

// ServerURL returns the URL of the test server's maintenance database.
func ServerURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// NewDatabase creates an isolated database migrated to the current schema
// and returns its URL. It is dropped when the test ends. The test fails (never
// skips) when Postgres is unreachable.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	templateOnce.Do(func() { templateName, templateErr = buildTemplate(ctx) })
	if templateErr != nil {
		t.Fatalf("storetest: prepare template database on %s: %v", redact(ServerURL()), templateErr)
	}
	name := fmt.Sprintf("qs_t_%d_%s", time.Now().Unix(), randomHex(6))
	admin := adminConn(t, ctx)
	defer admin.Close(ctx)
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		_, err = admin.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{templateName}.Sanitize()))
		var pgErr *pgconn.PgError
		// 55006: the template is briefly in use by a concurrent clone.
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("storetest: create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), ServerURL())
		if err != nil {
			t.Errorf("storetest: connect to drop %s: %v", name, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{name}.Sanitize())); err != nil {
			t.Errorf("storetest: drop %s: %v", name, err)
		}
	})
	return withDatabase(ServerURL(), name)
}

// NewPool returns a pool on a fresh isolated database, closed when the test ends.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dbURL := NewDatabase(t)
	pool, err := store.OpenPool(context.Background(), dbURL, store.PoolOptions{MaxConns: 20, AppName: "quickscale-test"})
	if err != nil {
		t.Fatalf("storetest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// NewStore returns a Store on a fresh isolated database.
func NewStore(t testing.TB) *store.Store {
	t.Helper()
	return store.New(NewPool(t), slog.New(slog.DiscardHandler))
}

func adminConn(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		t.Fatalf("storetest: connect to %s (set TEST_DATABASE_URL, or start PostgreSQL): %v", redact(ServerURL()), err)
	}
	return c
}

// buildTemplate makes sure a template database migrated with the current
// migrations exists and returns its name. Its name carries a hash of the
// migrations so a changed migration builds a new template.
func buildTemplate(ctx context.Context) (string, error) {
	sum, err := migrationsHash()
	if err != nil {
		return "", err
	}
	prefix := "qs_tmpl_" + sum + "_"
	conn, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", templateLockKey); err != nil {
		return "", err
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", templateLockKey) //nolint:errcheck

	dropStale(ctx, conn, prefix)

	// qs_tmpl_<hash>_<unix time made>.
	var found []string
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname <> $2 ORDER BY datname DESC LIMIT 1", prefix, prefix+"build")
	if err == nil {
		found, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return "", err
	}
	if len(found) == 1 {
		return found[0], holdTemplate(ctx, found[0])
	}
	name := prefix + strconv.FormatInt(time.Now().Unix(), 10)
	building := prefix + "build"
	if _, err := conn.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{building}.Sanitize())); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s", pgx.Identifier{building}.Sanitize())); err != nil {
		return "", err
	}
	pool, err := store.OpenPool(ctx, withDatabase(ServerURL(), building), store.PoolOptions{MaxConns: 4})
	if err != nil {
		return "", err
	}
	_, err = store.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
	pool.Close()
	if err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s RENAME TO %s", pgx.Identifier{building}.Sanitize(), pgx.Identifier{name}.Sanitize())); err != nil {
		return "", err
	}
	return name, holdTemplate(ctx, name)
}

// templateUseKey is the advisory lock key of a template's users: a hash of
// its migrations (the name up to its time).
func templateUseKey(name string) int64 {
	h := fnv.New64a()
	hash, _, _ := strings.Cut(strings.TrimPrefix(name, "qs_tmpl_"), "_")
	h.Write([]byte(hash))
	return int64(h.Sum64())
}

// holdTemplate marks the template as used by this process until it ends
// (called under the build lock, before any run could drop it).
func holdTemplate(ctx context.Context, name string) error {
	c, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		return err
	}
	if _, err := c.Exec(ctx, "SELECT pg_advisory_lock_shared($1)", templateUseKey(name)); err != nil {
		c.Close(ctx)
		return err
	}
	if templateInUse != nil { // held once per process; never twice
		templateInUse.Close(ctx)
	}
	templateInUse = c
	return nil
}

// dropStale removes templates of older migrations and test databases left
// behind by killed test runs (older than an hour).
func dropStale(ctx context.Context, conn *pgx.Conn, keep string) {
	rows, err := conn.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE 'qs\\_t\\_%' OR datname LIKE 'qs\\_tmpl\\_%'")
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	cutoff := time.Now().Add(-time.Hour).Unix()
	for _, n := range names {
		stale := false
		switch {
		case strings.HasPrefix(n, "qs_tmpl_"):
			// Templates of other migrations (and half-built ones) that no
			// test process is using: a run of another checkout may be
			// cloning one (it holds the shared lock, holdTemplate).
			if strings.HasPrefix(n, keep) {
				break
			}
			key := templateUseKey(n)
			var free bool
			if conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&free) != nil || !free {
				break
			}
			_, _ = conn.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{n}.Sanitize()))
			_, _ = conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", key)
		case strings.HasPrefix(n, "qs_t_"):
			ts, _, _ := strings.Cut(strings.TrimPrefix(n, "qs_t_"), "_")
			sec, err := strconv.ParseInt(ts, 10, 64)
			stale = err == nil && sec < cutoff
		}
		if stale {
			_, _ = conn.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{n}.Sanitize()))
		}
	}
}

func migrationsHash() (string, error) {
	h := sha256.New()
	var names []string
	err := fs.WalkDir(migrations.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		names = append(names, p)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := fs.ReadFile(migrations.FS, n)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
		h.Write(b)
	}
	// River's schema version is part of the template too.
	fmt.Fprintf(h, "river:%d", store.RiverSchemaVersion())
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func withDatabase(serverURL, db string) string {
	u, err := url.Parse(serverURL)
	if err != nil {
		return serverURL
	}
	u.Path = "/" + db
	return u.String()
}

func redact(s string) string { return store.RedactURL(s) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
