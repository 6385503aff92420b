package store

import (
	"context"
	"crypto/sha256"
	"errors"

	"github.com/jackc/pgx/v5"
)

// KnownDeviceLifetime is how long a browser stays known without signing in.
const KnownDeviceLifetime = "365 days"

// RememberDevice records a browser that signed in as userID and returns the
// token for its cookie (only its hash is stored).
func (s *Store) RememberDevice(ctx context.Context, userID int64) (string, error) {
	token := NewSecret()
	sum := sha256.Sum256([]byte(token))
	_, err := s.pool.Exec(ctx, `INSERT INTO known_devices (token_hash, user_id) VALUES ($1, $2)`, sum[:], userID)
	return token, err
}

// DeviceEmail returns the address of the (not deleted) account a browser's
// token was given to, and notes the use; ok is false for an unknown token.
func (s *Store) DeviceEmail(ctx context.Context, token string) (email string, ok bool, err error) {
	if token == "" {
		return "", false, nil
	}
	sum := sha256.Sum256([]byte(token))
	err = s.pool.QueryRow(ctx, `
UPDATE known_devices d SET last_used_at = now()
  FROM users u
 WHERE d.token_hash = $1 AND u.id = d.user_id AND u.deleted_at IS NULL
   AND d.last_used_at > now() - $2::interval
RETURNING u.email`, sum[:], KnownDeviceLifetime).Scan(&email)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	return email, err == nil, err
}

// ForgetDevices forgets every browser of the user (a password change).
func ForgetDevices(ctx context.Context, db DBTX, userID int64) error {
	_, err := db.Exec(ctx, `DELETE FROM known_devices WHERE user_id = $1`, userID)
	return err
}
