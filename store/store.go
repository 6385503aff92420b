// Package store is QuickScale's Postgres layer: the domain types, the credit
// ledger's rules and every SQL statement the product runs.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DBTX is what a query needs: a pool, a connection or a transaction. Methods
// that must compose with a caller's transaction (River's InsertTx,
// JobCompleteTx) take one explicitly.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Store runs QuickScale's queries against one pool.
type Store struct {
	pool     *pgxpool.Pool
	logger   *slog.Logger
	consumes *Batcher[ConsumeRequest, Spent]
	// alone bounds the connections spends running alone wait on.
	alone *aloneGate
	// userLocks bounds the connections WithUserLock holds; userQueues
	// queues one user's requests in this process.
	userLocks  chan struct{}
	userQueues keyedQueue
	// observeConsumes, when set, is told the size of every batch of
	// spends committed.
	observeConsumes func(n int)
}

// ObserveConsumeBatches sets fn to be told the number of spends in every
// batch committed (for metrics). Call it before the store is used.
func (s *Store) ObserveConsumeBatches(fn func(n int)) { s.observeConsumes = fn }

// New returns a Store on pool.
func New(pool *pgxpool.Pool, logger *slog.Logger) *Store {
	s := &Store{pool: pool, logger: logger}
	s.consumes = NewBatcher(consumeLanes, consumeMaxBatch, s.consumeGathered)
	// Half the pool: the other half serves everything else.
	s.alone = newAloneGate(int(pool.Config().MaxConns) / 2)
	s.userLocks = newUserLockSlots(int(pool.Config().MaxConns))
	return s
}

// Pool returns the underlying pool, for River and session storage.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// PoolOptions bounds a connection pool.
type PoolOptions struct {
	MaxConns int32
	// AppName shows in pg_stat_activity.
	AppName string
	// Logger, when set, receives what the server says besides answers:
	// warnings (e.g. a migration's) at warn level, notices at debug.
	Logger *slog.Logger
}

// ServerKeepalives are the server's TCP settings OpenPool asks for on each
// connection unless the database URL sets them: keepalive probes after 30
// idle seconds, every 10 s, 3 unanswered ending the session; unacknowledged
// data for 60 s ends it too. (Ignored on Unix-domain sockets.)
var ServerKeepalives = map[string]string{
	"tcp_keepalives_idle":     "30",
	"tcp_keepalives_interval": "10",
	"tcp_keepalives_count":    "3",
	"tcp_user_timeout":        "60000",
}

// OpenPool connects to Postgres with bounded pool settings and checks the
// connection before returning.
func OpenPool(ctx context.Context, url string, opts PoolOptions) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.MinConns = 0
	cfg.MaxConnLifetime = time.Hour
	cfg.MaxConnLifetimeJitter = 5 * time.Minute
	cfg.MaxConnIdleTime = 10 * time.Minute
	cfg.HealthCheckPeriod = 30 * time.Second
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	if opts.AppName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = opts.AppName
	}
	// The server notices a client that vanished without closing its
	// connections (a lost network, a frozen host) within about a minute
	// rather than the kernel's two hours, and ends its sessions: their
	// transactions roll back and their locks (row locks, the expiry sweep's
	// session lock) are freed. The database URL may set these itself.
	for k, v := range ServerKeepalives {
		if _, set := cfg.ConnConfig.RuntimeParams[k]; !set {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	if l := opts.Logger; l != nil {
		cfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			level := slog.LevelDebug
			if n.Severity == "WARNING" {
				level = slog.LevelWarn
			}
			l.Log(context.Background(), level, "postgres: "+n.Message, "severity", n.Severity, "code", n.Code)
		}
	}
	// Times come back in UTC, whatever the process's time zone (TZ): the
	// JSON API writes them as they are, and a replay answered by a process
	// in another zone must be the same body.
	cfg.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		conn.TypeMap().RegisterType(&pgtype.Type{Name: "timestamptz", OID: pgtype.TimestamptzOID, Codec: &pgtype.TimestamptzCodec{ScanLocation: time.UTC}})
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	return pool, nil
}

// RedactURL hides the password of a connection URL so that errors and logs
// can quote it.
func RedactURL(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		// user:password@ — the password runs to the last @, whatever it
		// holds (a password may contain spaces, /, ?, # or @, which also
		// make url.Parse misread the URL). A stray @ later in the URL makes
		// this hide more than the password, never less.
		rest := s[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if c := strings.Index(rest[:at], ":"); c >= 0 {
				s = s[:i+3] + rest[:c+1] + "xxxxx" + rest[at:]
			}
		}
	} else {
		s = barePassword.ReplaceAllString(s, "${1}xxxxx@")
	}
	// pgx also takes the password as a parameter: ?password=…,
	// &sslpassword=…, or password=… in libpq's key=value form.
	s = queryPassword.ReplaceAllString(s, "${1}xxxxx")
	return kvPassword.ReplaceAllString(s, "${1}xxxxx")
}

var (
	// user:password@ with no scheme before it.
	barePassword = regexp.MustCompile(`^(\s*[^:/@\s]+:).*@`)
	// ?password=… or &sslpassword=… in a URL's query.
	queryPassword = regexp.MustCompile(`(?i)([?&][^=&\s]*password=)[^&]*`)
	// password=value or sslpassword=value: a quoted value, or everything
	// after it (an unquoted value with a space in it is a mistake whose
	// rest must not show either).
	kvPassword = regexp.MustCompile(`(?i)((?:^|\s)\w*password\s*=\s*)('(?:[^'\\]|\\.)*'|.+)`)
)

// Ping checks that Postgres answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// customPlan, passed as a query's first argument, has Postgres plan that
// execution with its actual parameters instead of reusing a generic plan.
// Keyset pages of one user's rows need it: the best plan for a user with
// ten rows and for one with a million differ.
const customPlan = pgx.QueryExecModeExec

// isUniqueViolation reports whether err is a unique-constraint violation,
// optionally of the named constraint.
func isUniqueViolation(err error, constraint string) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		return false
	}
	return constraint == "" || pgErr.ConstraintName == constraint
}
