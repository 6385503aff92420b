package store

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// maxTxAttempts bounds how often InTx runs fn when Postgres reports a
// serialization failure or a deadlock.
const maxTxAttempts = 5

// InTx runs fn in a READ COMMITTED transaction and commits it. Serialization
// failures (40001) and deadlocks (40P01) roll back and run fn again, up to
// maxTxAttempts times with a short jittered backoff; fn must therefore be
// safe to repeat. Any other error rolls back and is returned as is.
func (s *Store) InTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return inTx(ctx, s.pool, fn)
}

type txBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

func inTx(ctx context.Context, db txBeginner, fn func(tx pgx.Tx) error) error {
	return retry(ctx, func() error { return runTx(ctx, db, fn) })
}

// retry runs fn, again after a short backoff while it fails with a
// retryable error (IsRetryable), up to maxTxAttempts times.
func retry(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 1; ; attempt++ {
		err = fn()
		if err == nil || !IsRetryable(err) || attempt >= maxTxAttempts {
			return err
		}
		backoff := time.Duration(attempt*attempt)*5*time.Millisecond + rand.N(5*time.Millisecond)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}

func runTx(ctx context.Context, db txBeginner, fn func(tx pgx.Tx) error) (err error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// The rollback must run even when ctx is already cancelled.
			rbCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = tx.Rollback(rbCtx)
			cancel()
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// IsRetryable reports whether err is a serialization failure or deadlock
// that a fresh transaction may not hit again.
func IsRetryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return false
}

// IsRefused reports whether the database refused a statement for what it
// did rather than for its own state: bad data (class 22), a broken
// constraint (23), a lost conflict such as a deadlock (40) or an error
// raised by a function (P0). Parts of a refused batch may succeed alone;
// rerunning them against an unavailable database would only add load.
func IsRefused(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) < 2 {
		return false
	}
	switch pgErr.Code[:2] {
	case "22", "23", "40", "P0":
		return true
	}
	return false
}

// IsUnavailable reports whether err means the database could not be
// reached, is shutting down, or was lost in the middle of a statement (so
// a retry later may succeed), as opposed to an error in the request.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "28") || pgErr.Code == "3D000") {
		// A wrong password, a role not allowed to connect, no such
		// database: a fault of the configuration, not a passing outage.
		return false
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) || errors.Is(err, puddle.ErrClosedPool) {
		return true
	}
	if errors.As(err, &pgErr) {
		// 08: connection exception; 57P: operator intervention (shutdown);
		// 57014: a statement cancelled (a statement_timeout, an operator's
		// pg_cancel_backend): nothing was applied, a retry may succeed.
		return strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P") || pgErr.Code == "57014" || pgErr.Code == "53300"
	}
	// A connection lost in the middle of a statement (the server or the
	// network went away): nothing is wrong with the request. The statement
	// may or may not have been applied, so a spend answered 503 may have
	// been made; a retry with its Idempotency-Key answers it either way.
	var opErr *net.OpError
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.As(err, &opErr) {
		return true
	}
	return pgconn.SafeToRetry(err) || errors.Is(err, net.ErrClosed)
}

// NotMigrated reports whether err is a missing table of a database whose
// migrations are not current (an api started before `quickscale migrate
// up`): not a fault of the request, and over once they run (/readyz says
// so meanwhile). A missing table of a migrated database is a bug, and
// stays one. It asks the database only for a missing table.
func (s *Store) NotMigrated(ctx context.Context, err error) bool {
	var pgErr *pgconn.PgError
	if s == nil || !errors.As(err, &pgErr) || pgErr.Code != "42P01" { // undefined_table
		return false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	st, serr := Status(ctx, s.pool)
	return serr == nil && !st.Current()
}

// IsBadInput reports whether Postgres refused the data it was given
// (class 22, data exception, e.g. invalid UTF-8 or a NUL byte; or 54000, a
// value too large for an index): the request, not the server, is at fault.
func IsBadInput(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || pgErr.Code == "54000")
}
