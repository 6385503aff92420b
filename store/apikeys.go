package store

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// APIKey is a user's credential for the JSON API.
type APIKey struct {
	ID         int64      `db:"id"`
	UserID     int64      `db:"user_id"`
	Name       string     `db:"name"`
	Prefix     string     `db:"prefix"`
	CreatedAt  time.Time  `db:"created_at"`
	LastUsedAt *time.Time `db:"last_used_at"`
	RevokedAt  *time.Time `db:"revoked_at"`
}

// APIKeyPrefix starts every key, so leaked keys are easy to recognise.
const APIKeyPrefix = "qs_"

// MaxAPIKeysPerUser bounds how many live keys a user may hold.
const MaxAPIKeysPerUser = 25

const apiKeyColumns = `id, user_id, name, prefix, created_at, last_used_at, revoked_at`

// CreateAPIKey issues a key and returns it in clear: the only time it is
// ever available. Only its SHA-256 is stored.
func (s *Store) CreateAPIKey(ctx context.Context, userID int64, name string) (string, APIKey, error) {
	return s.createAPIKey(ctx, userID, name, "", nil)
}

// ErrAPIKeyFormUsed answers CreateAPIKeyFromForm for a form that made a
// key already: none is made now (and that one cannot be shown again).
var ErrAPIKeyFormUsed = Errorf(KindConflict, "This form was sent before, and its key was created and shown then; no other key was made. If you did not copy it, create another (and revoke that one, if it is still listed).")

// CreateAPIKeyFromForm is CreateAPIKey for the settings page's form, whose
// key (up to 64 characters) makes one API key at most: the same form sent
// again, at once or later (F5), answers ErrAPIKeyFormUsed. Without a key
// (a page from before forms had one) it is CreateAPIKey.
func (s *Store) CreateAPIKeyFromForm(ctx context.Context, userID int64, name, formKey string) (string, APIKey, error) {
	if len(formKey) > 64 {
		return "", APIKey{}, Errorf(KindInvalid, "This form's key is not one this site made; reload the page and try again.")
	}
	return s.createAPIKey(ctx, userID, name, formKey, nil)
}

// IssueAPIKey is CreateAPIKey done by an operator for a user (actor nil
// for the CLI): the key's issue is written to the audit log in the same
// transaction, since the key can spend the user's credits.
func (s *Store) IssueAPIKey(ctx context.Context, actor *int64, userID int64, name, via string) (string, APIKey, error) {
	return s.createAPIKey(ctx, userID, name, "", func(tx pgx.Tx, k APIKey) error {
		return Audit(ctx, tx, actor, "apikey.issue", &userID, map[string]any{"key_id": k.ID, "name": k.Name, "prefix": k.Prefix, "via": via})
	})
}

// CheckAPIKeyName refuses a key name that is not one line of up to 100
// visible characters (surrounding spaces aside).
func CheckAPIKeyName(name string) error {
	name = strings.TrimSpace(name)
	if BlankText(name) || !utf8.ValidString(name) || utf8.RuneCountInString(name) > 100 || UnsafeLine(name) {
		return Errorf(KindInvalid, "Name the key (up to 100 characters, no line breaks or control characters), e.g. after the app that uses it.")
	}
	return nil
}

func (s *Store) createAPIKey(ctx context.Context, userID int64, name, formKey string, audit func(pgx.Tx, APIKey) error) (string, APIKey, error) {
	name = strings.TrimSpace(name)
	if err := CheckAPIKeyName(name); err != nil {
		return "", APIKey{}, err
	}
	raw := APIKeyPrefix + NewSecret()
	var key APIKey
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		// The user's row lock serialises concurrent creations. The count is
		// a statement of its own so that its snapshot, taken after the lock
		// is held, sees the keys of whoever held it before.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE`, userID); err != nil {
			return err
		}
		var live int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL`, userID).Scan(&live); err != nil {
			return err
		}
		if formKey != "" {
			// Under the same lock: a twin sent at once waits, then finds
			// the key its form made (api_keys_form_key holds the rule).
			var used bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM api_keys WHERE user_id = $1 AND form_key = $2)`, userID, formKey).Scan(&used); err != nil {
				return err
			}
			if used {
				return ErrAPIKeyFormUsed
			}
		}
		if live >= MaxAPIKeysPerUser {
			return Errorf(KindConflict, "You have %d active keys, the most allowed. Revoke one first.", live)
		}
		rows, err := tx.Query(ctx, `INSERT INTO api_keys (user_id, name, prefix, hash, form_key) VALUES ($1, $2, $3, $4, NULLIF($5, '')) RETURNING `+apiKeyColumns,
			userID, name, raw[:len(APIKeyPrefix)+6], hashSecret(raw), formKey)
		if err != nil {
			return err
		}
		key, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[APIKey])
		if err != nil || audit == nil {
			return err
		}
		return audit(tx, key)
	})
	if err != nil {
		return "", APIKey{}, err
	}
	return raw, key, nil
}

// RevokeAllAPIKeys revokes every live key of a user (after a password
// reset: whoever held the account may have made keys) and reports how many.
func RevokeAllAPIKeys(ctx context.Context, db DBTX, userID int64) (int64, error) {
	tag, err := db.Exec(ctx, `UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL`, userID)
	return tag.RowsAffected(), err
}

// RevokedKeysListed is how many revoked keys APIKeys lists at most, the
// most recently made.
const RevokedKeysListed = 25

// APIKeys lists a user's keys, newest first: every live key (so each can
// be seen and revoked, however many were revoked since it was made) and
// the RevokedKeysListed newest revoked ones. olderRevoked says whether
// older revoked keys were left out.
func (s *Store) APIKeys(ctx context.Context, userID int64) (keys []APIKey, olderRevoked bool, err error) {
	rows, err := s.pool.Query(ctx, `(SELECT `+apiKeyColumns+` FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL)
UNION ALL
(SELECT `+apiKeyColumns+` FROM api_keys WHERE user_id = $1 AND revoked_at IS NOT NULL ORDER BY id DESC LIMIT $2)
ORDER BY id DESC`, userID, RevokedKeysListed+1)
	if err != nil {
		return nil, false, err
	}
	keys, err = pgx.CollectRows(rows, pgx.RowToStructByName[APIKey])
	if err != nil {
		return nil, false, err
	}
	revoked := 0
	for i, k := range keys {
		if k.RevokedAt == nil {
			continue
		}
		if revoked++; revoked > RevokedKeysListed {
			// The oldest revoked key read (live keys older than it may
			// follow): it only told that there are more.
			return append(keys[:i], keys[i+1:]...), true, nil
		}
	}
	return keys, false, nil
}

// RevokeAPIKey revokes one of the user's keys. Another user's key is not found.
func (s *Store) RevokeAPIKey(ctx context.Context, userID, keyID int64) error {
	tag, err := s.pool.Exec(ctx, `UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND user_id = $2`, keyID, userID)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// RevokeAPIKeyAsOperator revokes one of the user's keys for an operator
// (actor nil for the CLI) and audits it in the same transaction. It
// reports when the key had been revoked already (then nothing is written);
// another user's key is not found.
func (s *Store) RevokeAPIKeyAsOperator(ctx context.Context, actor *int64, userID, keyID int64, via string) (key APIKey, already bool, err error) {
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1 AND user_id = $2 FOR UPDATE`, keyID, userID)
		if err != nil {
			return err
		}
		key, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[APIKey])
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(KindNotFound, "The user has no API key %d.", keyID)
		}
		if err != nil {
			return err
		}
		if key.RevokedAt != nil {
			already = true
			return nil
		}
		if err := tx.QueryRow(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id = $1 RETURNING revoked_at`, keyID).Scan(&key.RevokedAt); err != nil {
			return err
		}
		return Audit(ctx, tx, actor, "apikey.revoke", &userID, map[string]any{"key_id": keyID, "name": key.Name, "via": via})
	})
	return key, already, err
}

// AuthenticateAPIKey finds the live key and its live user. Its last-used
// time is refreshed at most once a minute, so busy keys do not turn every
// read into a write.
func (s *Store) AuthenticateAPIKey(ctx context.Context, raw string) (APIKey, User, error) {
	if !strings.HasPrefix(raw, APIKeyPrefix) || len(raw) > 100 {
		return APIKey{}, User{}, Errorf(KindUnauthorized, "invalid API key")
	}
	var k APIKey
	var u User
	err := s.pool.QueryRow(ctx, `
SELECT k.id, k.user_id, k.name, k.prefix, k.created_at, k.last_used_at, k.revoked_at,
       u.id, u.email, u.password_hash, u.role, u.email_verified_at, u.session_epoch, u.created_at
  FROM api_keys k JOIN users u ON u.id = k.user_id
 WHERE k.hash = $1 AND k.revoked_at IS NULL AND u.deleted_at IS NULL`, hashSecret(raw)).Scan(
		&k.ID, &k.UserID, &k.Name, &k.Prefix, &k.CreatedAt, &k.LastUsedAt, &k.RevokedAt,
		&u.ID, &u.Email, &u.PasswordHash, &u.Role, &u.EmailVerifiedAt, &u.SessionEpoch, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, User{}, Errorf(KindUnauthorized, "invalid API key")
	}
	if err != nil {
		return APIKey{}, User{}, err
	}
	if k.LastUsedAt == nil || time.Since(*k.LastUsedAt) > time.Minute {
		if _, err := s.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now() WHERE id = $1`, k.ID); err != nil {
			return APIKey{}, User{}, err
		}
	}
	return k, u, nil
}

// UsageRecord is a past usage as the API lists it: the shape of the answer
// to the POST that created it (balance is the balance right after it).
type UsageRecord struct {
	ID           int64     `json:"usage_id"`
	Service      string    `json:"service"`
	Credits      int64     `json:"credits"`
	BalanceAfter int64     `json:"balance"`
	Drawn        []Drawn   `json:"drawn"`
	CreatedAt    time.Time `json:"created_at"`
}

// Usages lists a user's usages older than cursor (0: newest), newest first.
func (s *Store) Usages(ctx context.Context, userID, cursor int64, limit int) ([]UsageRecord, int64, error) {
	if cursor <= 0 {
		cursor = 1<<63 - 1
	}
	rows, err := s.pool.Query(ctx, `
SELECT u.id, s.slug, u.credits, u.balance_after, u.created_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object('grant_id', e.grant_id, 'kind', g.kind, 'credits', -e.amount) ORDER BY e.id)
                   FROM ledger_entries e JOIN grants g ON g.id = e.grant_id WHERE e.user_id = u.user_id AND e.usage_id = u.id), '[]'::jsonb)
  FROM usages u JOIN services s ON s.id = u.service_id
 WHERE u.user_id = $1 AND u.id < $2
 ORDER BY u.id DESC LIMIT $3`, customPlan, userID, cursor, limit+1)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	out := []UsageRecord{}
	for rows.Next() {
		var r UsageRecord
		if err := rows.Scan(&r.ID, &r.Service, &r.Credits, &r.BalanceAfter, &r.CreatedAt, &r.Drawn); err != nil {
			return nil, 0, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	out, next := keysetPage(out, limit, func(r UsageRecord) int64 { return r.ID })
	return out, next, nil
}
