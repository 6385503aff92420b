package store

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// newUserLockSlots bounds the connections user locks hold: a quarter of
// the pool, at least two (so that one slow provider call does not stop
// every other user's) but never the whole pool, since each holder's work
// needs more connections from it. Requests beyond it wait for a slot
// holding no connection.
func newUserLockSlots(maxConns int) chan struct{} {
	return make(chan struct{}, max(1, min(max(2, maxConns/4), maxConns-1)))
}

// WithUserLock runs fn while holding an advisory lock on one user for one
// purpose (e.g. "subscribe"), so that one user's requests of that kind run
// one at a time, across processes, even around calls to the payment
// provider. In this process they queue first on their own (holding
// neither a connection nor a slot, so one user's burst never delays
// another user's); the one at the front takes one of a bounded number of
// slots and a connection of its own, on which it takes the lock (waiting
// there only for another process) and holds it while fn runs. It waits
// while ctx allows, and returns ctx's error when it ends first. If the
// lock cannot be given back (the connection broke, or the wait was
// cancelled at the instant it was granted), the connection is closed
// rather than returned to the pool, which frees the lock too.
func (s *Store) WithUserLock(ctx context.Context, purpose string, userID int64, fn func() error) error {
	unlock, err := s.userQueues.lock(ctx, fmt.Sprintf("%s:%d", purpose, userID))
	if err != nil {
		return err
	}
	defer unlock()
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

// keyedQueue lets one holder per key in at a time; the others wait, able
// to give up when their context ends. Keys nobody holds or waits for are
// forgotten.
type keyedQueue struct {
	mu   sync.Mutex
	keys map[string]*keyTurn
}

type keyTurn struct {
	turn chan struct{} // holds a token while someone is in
	refs int
}

func (q *keyedQueue) lock(ctx context.Context, key string) (unlock func(), err error) {
	q.mu.Lock()
	if q.keys == nil {
		q.keys = map[string]*keyTurn{}
	}
	k := q.keys[key]
	if k == nil {
		k = &keyTurn{turn: make(chan struct{}, 1)}
		q.keys[key] = k
	}
	k.refs++
	q.mu.Unlock()
	forget := func() {
		q.mu.Lock()
		if k.refs--; k.refs == 0 {
			delete(q.keys, key)
		}
		q.mu.Unlock()
	}
	select {
	case k.turn <- struct{}{}:
		return func() { <-k.turn; forget() }, nil
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}
