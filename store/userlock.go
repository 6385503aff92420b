package store

import (
	"context"
	"fmt"
	"time"
)

// newUserLockSlots bounds the connections user locks hold, waiting for
// the lock or holding it (a quarter of the pool): each holder's work
// needs more connections from the same pool, so many requests at once
// must not take them all. Requests beyond it wait for a slot holding no
// connection.
func newUserLockSlots(maxConns int) chan struct{} {
	return make(chan struct{}, max(1, maxConns/4))
}

// WithUserLock runs fn while holding an advisory lock on one user for one
// purpose (e.g. "subscribe"), so that one user's requests of that kind run
// one at a time, across processes, even around calls to the payment
// provider. The lock is taken and held on a connection of its own (one of
// a bounded number of slots); it waits while ctx allows, and ctx's error
// is returned when it ends first. If the lock cannot be given back (the
// connection broke, or the wait was cancelled at the instant it was
// granted), the connection is closed rather than returned to the pool,
// which frees the lock too.
func (s *Store) WithUserLock(ctx context.Context, purpose string, userID int64, fn func() error) error {
	select {
	case s.userLocks <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.userLocks }()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire a connection for the %s lock: %w", purpose, err)
	}
	const key = `hashtextextended('quickscale.' || $1::text || ':' || $2::bigint, 0)`
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(`+key+`)`, purpose, userID); err != nil {
		_ = conn.Hijack().Close(context.WithoutCancel(ctx))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("take the %s lock of user %d: %w", purpose, userID, err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		var freed bool
		if err := conn.QueryRow(uctx, `SELECT pg_advisory_unlock(`+key+`)`, purpose, userID).Scan(&freed); err != nil || !freed {
			_ = conn.Hijack().Close(uctx)
			return
		}
		conn.Release()
	}()
	return fn()
}
