package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	embeddedpostgres "github.com/fergusstrange/embedded-postgres"
	"github.com/jackc/pgx/v5"
)

// embeddedPort is where `dev` starts its own PostgreSQL when none answers.
const embeddedPort = 55432

// prepareDevDatabase makes sure cfg.DatabaseURL names a database that
// exists: it creates the database on a reachable server, or, when no
// server answers and DATABASE_URL was not set, starts an embedded
// PostgreSQL with data under DEV_DATA_DIR. The returned func stops it.
func prepareDevDatabase(ctx context.Context, cfg *Config, logger *slog.Logger, stdout io.Writer) (func(), error) {
	err := ensureDatabase(ctx, cfg.DatabaseURL, logger)
	if err == nil {
		return func() {}, nil
	}
	if cfg.databaseURLSet || !errors.Is(err, syscall.ECONNREFUSED) {
		return nil, fmt.Errorf("database %s: %w", redactURL(cfg.DatabaseURL), err)
	}
	logger.Info("no PostgreSQL answers; starting an embedded one", "url", redactURL(cfg.DatabaseURL))
	return startEmbedded(cfg, os.Geteuid(), postgresBinaries(), stdout)
}

// ensureDatabase connects to the server of dbURL and creates its database
// if it does not exist.
func ensureDatabase(ctx context.Context, dbURL string, logger *slog.Logger) error {
	// Either form of connection string (URL or key=value), as pgx reads it.
	admin, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return fmt.Errorf("DATABASE_URL is not a PostgreSQL connection string")
	}
	name := admin.Database
	if name == "" || name == "postgres" {
		return nil
	}
	admin.Database = "postgres"
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(cctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(cctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		var exists bool
		// Another process may have created it a moment ago.
		if qerr := conn.QueryRow(cctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); qerr == nil && exists {
			return nil
		}
		return fmt.Errorf("create database %s: %w", name, err)
	}
	logger.Info("created database", "name", name)
	return nil
}

// rootRefusal says exactly what to do when the embedded PostgreSQL cannot
// run because we are root.
const rootRefusal = `no PostgreSQL answers at %s, and QuickScale cannot start an embedded one because this process runs as root (PostgreSQL refuses to).
Do one of these, then run make dev again:
  - start the machine's PostgreSQL, e.g. on Debian: pg_ctlcluster 15 main start  (or: sudo systemctl start postgresql)
  - set DATABASE_URL to a PostgreSQL you can reach, e.g. DATABASE_URL=postgres://user:pass@host:5432/quickscale
  - run make dev as a regular (non-root) user: the embedded PostgreSQL then keeps its data under %s`

// startEmbedded runs PostgreSQL from the machine's installed binaries when
// there are some (else embedded-postgres downloads them) with data under
// DEV_DATA_DIR, and points cfg at it.
func startEmbedded(cfg *Config, euid int, binaries string, stdout io.Writer) (func(), error) {
	dataDir, err := filepath.Abs(cfg.DevDataDir)
	if err != nil {
		return nil, err
	}
	if euid == 0 {
		host := "the configured address"
		if pc, err := pgx.ParseConfig(cfg.DatabaseURL); err == nil {
			host = net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
		}
		return nil, fmt.Errorf(rootRefusal, host, filepath.Join(dataDir, "postgres"))
	}
	conf := embeddedpostgres.DefaultConfig().
		Port(embeddedPort).
		Database("quickscale").Username("quickscale").Password("quickscale").
		DataPath(filepath.Join(dataDir, "postgres")).
		RuntimePath(filepath.Join(dataDir, "postgres-runtime")).
		CachePath(filepath.Join(dataDir, "cache")).
		StartTimeout(60 * time.Second).
		// TCP only: a distribution build's default socket directory (e.g.
		// /var/run/postgresql) is not writable by ordinary users.
		StartParameters(map[string]string{"unix_socket_directories": "", "listen_addresses": "127.0.0.1"}).
		Logger(io.Discard)
	if binaries != "" {
		conf = conf.BinariesPath(binaries)
	}
	pg := embeddedpostgres.NewDatabase(conf)
	if err := pg.Start(); err != nil {
		return nil, fmt.Errorf("start embedded PostgreSQL (data in %s): %w", dataDir, err)
	}
	cfg.DatabaseURL = conf.GetConnectionURL() + "?sslmode=disable"
	fmt.Fprintf(stdout, "Started an embedded PostgreSQL on port %d (data in %s)\n", embeddedPort, filepath.Join(dataDir, "postgres"))
	return func() { _ = pg.Stop() }, nil
}

// postgresBinaries finds the newest installed PostgreSQL (Debian layout),
// or "" when none is installed.
func postgresBinaries() string {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(matches) == 0 {
		return ""
	}
	sort.Slice(matches, func(i, j int) bool {
		return versionOf(matches[i]) < versionOf(matches[j])
	})
	return filepath.Dir(filepath.Dir(matches[len(matches)-1]))
}

func versionOf(pgCtl string) int {
	var v int
	_, _ = fmt.Sscanf(filepath.Base(filepath.Dir(filepath.Dir(pgCtl))), "%d", &v)
	return v
}
