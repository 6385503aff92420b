package store

import (
	"context"
	"time"
)

// Limit is a fixed-window rate limit: at most Max hits per Window.
type Limit struct {
	Max    int
	Window time.Duration
}

// Hit counts one attempt against key and reports whether it is allowed and,
// when it is not, how long until the window resets. Counters live in
// Postgres so that every api replica sees the same ones.
func (s *Store) Hit(ctx context.Context, key string, l Limit) (allowed bool, retryAfter time.Duration, err error) {
	var hits int
	var windowEnd, now time.Time
	err = s.pool.QueryRow(ctx, `
INSERT INTO rate_limits AS r (key, window_start, window_end, hits)
VALUES ($1, now(), now() + $2::interval, 1)
ON CONFLICT (key) DO UPDATE SET
    hits         = CASE WHEN r.window_end <= now() THEN 1 ELSE r.hits + 1 END,
    window_start = CASE WHEN r.window_end <= now() THEN now() ELSE r.window_start END,
    window_end   = CASE WHEN r.window_end <= now() THEN now() + $2::interval ELSE r.window_end END
RETURNING hits, window_end, now()`, key, l.Window).Scan(&hits, &windowEnd, &now)
	if err != nil {
		return false, 0, err
	}
	if hits > l.Max {
		return false, max(windowEnd.Sub(now), time.Second), nil
	}
	return true, 0, nil
}

// ResetLimit forgets the counter of key (e.g. after a successful sign-in).
func (s *Store) ResetLimit(ctx context.Context, key string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM rate_limits WHERE key = $1`, key)
	return err
}

// PruneExpired deletes finished rate-limit windows, expired sessions and
// expired or used one-time tokens, and returns how many rows went.
func (s *Store) PruneExpired(ctx context.Context) (int64, error) {
	var n int64
	for _, q := range []string{
		`DELETE FROM rate_limits WHERE window_end < now()`,
		`DELETE FROM sessions WHERE expiry < now()`,
		`DELETE FROM user_tokens WHERE expires_at < now() - interval '1 day' OR used_at < now() - interval '1 day'`,
		`DELETE FROM known_devices WHERE last_used_at < now() - interval '` + KnownDeviceLifetime + `'`,
	} {
		tag, err := s.pool.Exec(ctx, q)
		if err != nil {
			return n, err
		}
		n += tag.RowsAffected()
	}
	return n, nil
}
