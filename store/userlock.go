package store

import (
	"context"
	"fmt"
	"time"
)

// WithUserLock runs fn while holding an advisory lock on one user for one
// purpose (e.g. "subscribe"), taken on a connection of its own, so that
// one user's requests of that kind run one at a time, across processes,
// even around calls to the payment provider. It waits for the lock while
// ctx allows. If the lock cannot be given back (the connection broke, or
// the wait was cancelled at the instant it was granted), the connection is
// closed rather than returned to the pool, which frees the lock too.
func (s *Store) WithUserLock(ctx context.Context, purpose string, userID int64, fn func() error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire a connection for the %s lock: %w", purpose, err)
	}
	const key = `hashtextextended('quickscale.' || $1::text || ':' || $2::bigint, 0)`
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(`+key+`)`, purpose, userID); err != nil {
		_ = conn.Hijack().Close(context.WithoutCancel(ctx))
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
