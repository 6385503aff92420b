package store

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/quickscale/quickscale/migrations"
)

// migrateLockKey is the pg_advisory_lock key that serialises migrations
// across processes ("quickscale-migrate" as a 64-bit number).
const migrateLockKey int64 = 0x71735f6d69677261

// MigrateResult lists what one Migrate call applied.
type MigrateResult struct {
	App   []string // goose migration files applied
	River []int    // River migration versions applied
}

// Migrate applies QuickScale's goose migrations and River's migrations under
// one session-level advisory lock, so that several processes may run it at
// once: the first applies, the others wait and then find nothing to do.
func Migrate(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) (MigrateResult, error) {
	var res MigrateResult
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("acquire connection for migration lock: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrateLockKey); err != nil {
		return res, fmt.Errorf("take migration lock: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrateLockKey)
	}()

	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return res, fmt.Errorf("load app migrations: %w", err)
	}
	applied, err := provider.Up(ctx)
	if err != nil {
		return res, fmt.Errorf("apply app migrations: %w%s", err, migrateHint(err))
	}
	for _, r := range applied {
		res.App = append(res.App, path.Base(r.Source.Path))
		logger.Info("applied app migration", "file", path.Base(r.Source.Path), "duration", r.Duration)
	}

	if err := checkSearchIndex(ctx, pool, logger); err != nil {
		return res, err
	}

	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: logger})
	if err != nil {
		return res, fmt.Errorf("load river migrations: %w", err)
	}
	rr, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return res, fmt.Errorf("apply river migrations: %w", err)
	}
	for _, v := range rr.Versions {
		res.River = append(res.River, v.Version)
		logger.Info("applied river migration", "version", v.Version, "name", v.Name)
	}
	return res, nil
}

// checkSearchIndex warns when the admin search's trigram index (00013) is
// missing or is not the index search needs: 00013 goes on without it where
// it cannot be made, and keeps an index of that name made beforehand,
// whatever it is (its own warnings are server notices, which only a
// logging pool shows).
func checkSearchIndex(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	var state string
	err := pool.QueryRow(ctx, `SELECT CASE
  WHEN to_regclass('users_email_search_idx') IS NULL THEN 'missing'
  WHEN NOT EXISTS (SELECT 1 FROM pg_index i
                    WHERE i.indexrelid = to_regclass('users_email_search_idx') AND i.indrelid = to_regclass('users')) THEN 'not an index of users'
  WHEN (SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass('users_email_search_idx')) THEN 'invalid (a CREATE INDEX CONCURRENTLY that did not finish)'
  WHEN (SELECT i.indpred IS NOT NULL FROM pg_index i WHERE i.indexrelid = to_regclass('users_email_search_idx')) THEN 'partial (the planner would ignore its statistics)'
  WHEN pg_get_indexdef(to_regclass('users_email_search_idx')) !~ 'USING gin \(lower\(email\) ([a-z_0-9]+\.)?gin_trgm_ops\)$' THEN 'not a trigram index of lower(email)'
  ELSE 'ok' END`).Scan(&state)
	if err != nil {
		return fmt.Errorf("look for the search index: %w", err)
	}
	switch state {
	case "ok":
	case "missing":
		logger.Warn("admin search by address has no trigram index and reads every user: pg_trgm or the index could not be made with this role " +
			"(README, \"The database role\", says how to add the index later)")
	default:
		logger.Warn("admin search by address will not use users_email_search_idx: the index of that name is "+state+
			"; drop it and make it as README, \"The database role\", says", "index", state)
	}
	return nil
}

// migrateHint adds what an operator can do about a migration error, when
// there is something.
func migrateHint(err error) string {
	// PostgreSQL 15 lets only a superuser, or a role granted the parameter,
	// name a parameter no extension defines in a function's SET clause
	// (00005 onwards: SET quickscale.ledger = 'on').
	if strings.Contains(err.Error(), `permission denied to set parameter "quickscale.`) {
		return "; the ledger functions set quickscale.ledger, which PostgreSQL lets only a superuser or a role granted it put in a function:" +
			" run `quickscale migrate up` as a superuser, or have one run GRANT SET ON PARAMETER quickscale.ledger TO <this role> (README, \"The database role\")"
	}
	return ""
}

// MigrationStatus describes how far the database is from the migrations
// this binary carries.
type MigrationStatus struct {
	AppApplied []int64  // versions recorded in goose_db_version
	AppPending []string // embedded files not yet applied
	AppTarget  int64
	// AppUnknown are applied versions this binary has no file for: the
	// database was migrated by a newer binary.
	AppUnknown   []int64
	RiverCurrent int // highest applied River version (0 when none)
	RiverTarget  int
}

// Ahead reports whether the database holds migrations this binary does
// not know (a newer binary migrated it; this one is older).
func (s MigrationStatus) Ahead() bool {
	return len(s.AppUnknown) > 0 || s.RiverCurrent > s.RiverTarget
}

// Current reports whether both migration sets are fully applied.
func (s MigrationStatus) Current() bool {
	return len(s.AppPending) == 0 && s.RiverCurrent >= s.RiverTarget
}

// Problem explains in one line why the status is not current ("" when it is).
func (s MigrationStatus) Problem() string {
	var parts []string
	if n := len(s.AppPending); n > 0 {
		parts = append(parts, fmt.Sprintf("%d app migration(s) pending (first: %s)", n, s.AppPending[0]))
	}
	if s.RiverCurrent < s.RiverTarget {
		parts = append(parts, fmt.Sprintf("river migrations at version %d, want %d", s.RiverCurrent, s.RiverTarget))
	}
	if len(parts) > 0 {
		parts = append(parts, "run `quickscale migrate up`")
	}
	return strings.Join(parts, "; ")
}

// Status reads the applied migrations of both sets without changing anything.
func Status(ctx context.Context, pool *pgxpool.Pool) (MigrationStatus, error) {
	var st MigrationStatus
	files, err := appMigrationFiles()
	if err != nil {
		return st, err
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('goose_db_version') IS NOT NULL").Scan(&exists); err != nil {
		return st, fmt.Errorf("check goose table: %w", err)
	}
	if exists {
		rows, err := pool.Query(ctx, `SELECT version_id FROM goose_db_version WHERE version_id > 0 AND is_applied ORDER BY version_id`)
		if err != nil {
			return st, fmt.Errorf("read app migrations: %w", err)
		}
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return st, err
			}
			st.AppApplied = append(st.AppApplied, v)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return st, err
		}
	}
	known := map[int64]bool{}
	for _, f := range files {
		known[f.version] = true
		st.AppTarget = max(st.AppTarget, f.version)
		if !slices.Contains(st.AppApplied, f.version) {
			st.AppPending = append(st.AppPending, f.name)
		}
	}
	for _, v := range st.AppApplied {
		if !known[v] {
			st.AppUnknown = append(st.AppUnknown, v)
		}
	}

	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return st, err
	}
	for _, m := range migrator.AllVersions() {
		st.RiverTarget = max(st.RiverTarget, m.Version)
	}
	existing, err := migrator.ExistingVersions(ctx)
	if err != nil {
		return st, fmt.Errorf("read river migrations: %w", err)
	}
	for _, m := range existing {
		st.RiverCurrent = max(st.RiverCurrent, m.Version)
	}
	return st, nil
}

type migrationFile struct {
	version int64
	name    string
}

func appMigrationFiles() ([]migrationFile, error) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		return nil, err
	}
	var out []migrationFile
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a number and an underscore", e.Name())
		}
		out = append(out, migrationFile{version: v, name: e.Name()})
	}
	return out, nil
}

// RiverSchemaVersion is the River migration version this binary expects.
func RiverSchemaVersion() int {
	migrator, err := rivermigrate.New(riverpgxv5.New(nil), &rivermigrate.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0
	}
	v := 0
	for _, m := range migrator.AllVersions() {
		v = max(v, m.Version)
	}
	return v
}
