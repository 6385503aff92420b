package store

import (
	"context"
	"crypto/sha256"
	"errors"

	"github.com/jackc/pgx/v5"
)

// KnownDeviceLifetime is how long a browser stays known without signing in.
const KnownDeviceLifetime = "365 days"

// maxKnownDevices bounds the browsers remembered per user: signing in again
// and again (each without the cookie) cannot grow the table without end.
const maxKnownDevices = 20

// RememberDevice records a browser that signed in as userID and returns the
// token for its cookie (only its hash is stored). The user's least
// recently used browsers beyond maxKnownDevices are forgotten.
func (s *Store) RememberDevice(ctx context.Context, userID int64) (string, error) {
	token := NewSecret()
	sum := sha256.Sum256([]byte(token))
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO known_devices (token_hash, user_id) VALUES ($1, $2)`, sum[:], userID); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM known_devices WHERE user_id = $1 AND token_hash NOT IN (
  SELECT token_hash FROM known_devices WHERE user_id = $1 ORDER BY last_used_at DESC, created_at DESC LIMIT $2)`, userID, maxKnownDevices)
		return err
	})
	return token, err
}

// DeviceUser returns the (not deleted) account a browser's token was given
// to, and notes the use; ok is false for an unknown or stale token.
func (s *Store) DeviceUser(ctx context.Context, token string) (userID int64, ok bool, err error) {
	if token == "" {
		return 0, false, nil
	}
	sum := sha256.Sum256([]byte(token))
	err = s.pool.QueryRow(ctx, `
UPDATE known_devices d SET last_used_at = now()
  FROM users u
 WHERE d.token_hash = $1 AND u.id = d.user_id AND u.deleted_at IS NULL
   AND d.last_used_at > now() - $2::interval
RETURNING u.id`, sum[:], KnownDeviceLifetime).Scan(&userID)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return userID, err == nil, err
}

// ForgetDevices forgets every browser of the user (a password change).
func ForgetDevices(ctx context.Context, db DBTX, userID int64) error {
	_, err := db.Exec(ctx, `DELETE FROM known_devices WHERE user_id = $1`, userID)
	return err
}
