package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/mail"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"
)

// Roles.
const (
	RoleUser  = "user"
	RoleAdmin = "admin"
)

// User is a person who signs in with an email and a password.
type User struct {
	ID              int64      `db:"id"`
	Email           string     `db:"email"`
	PasswordHash    string     `db:"password_hash"`
	Role            string     `db:"role"`
	EmailVerifiedAt *time.Time `db:"email_verified_at"`
	SessionEpoch    int        `db:"session_epoch"`
	CreatedAt       time.Time  `db:"created_at"`
}

// Verified reports whether the user confirmed their email address.
func (u *User) Verified() bool { return u != nil && u.EmailVerifiedAt != nil }

// IsAdmin reports whether the user has the admin role.
func (u *User) IsAdmin() bool { return u != nil && u.Role == RoleAdmin }

const userColumns = `id, email, password_hash, role, email_verified_at, session_epoch, created_at`

// NormalizeEmail trims an address and checks its shape. Case is kept as
// typed; uniqueness and lookups are case-insensitive in the database.
func NormalizeEmail(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", Errorf(KindInvalid, "Enter your email address.")
	}
	if len(s) > 254 {
		return "", Errorf(KindInvalid, "That email address is too long.")
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" || !strings.Contains(s[strings.LastIndexByte(s, '@')+1:], ".") {
		return "", Errorf(KindInvalid, "Enter an email address like name@example.com.")
	}
	return s, nil
}

// NormalizeNewEmail is NormalizeEmail for an address an account is about to
// take (sign-up, a change of address, users create): it must also hold no
// invisible character (spaces of any kind, joiners, direction marks), so
// that no two accounts can look alike. Look-ups (sign-in, reset links) use
// NormalizeEmail, so that an address stored before this rule still works.
//
// It also refuses what would let one address stand in for another: a form
// other than the usual (NFKC) one of its text — a decomposed "ü", fullwidth
// letters, the Kelvin sign for K — and a letter whose lower case belongs
// to another capital (the dotted İ lowers to i, whose capital is I), since
// uniqueness compares lower(email): "İnfo@…" would otherwise take, and
// receive the resets of, "info@…". And it holds the address to the limits
// of mail (a local part of at most 64 octets; a domain of labels of 1 to 63
// octets, letters, digits and inner hyphens, not an IP address).
func NormalizeNewEmail(s string) (string, error) {
	s, err := NormalizeEmail(s)
	if err != nil {
		return "", err
	}
	if strings.ContainsFunc(s, invisibleInAddress) {
		return "", Errorf(KindInvalid, "Enter an email address without spaces or invisible characters.")
	}
	if !norm.NFKC.IsNormalString(s) {
		return "", Errorf(KindInvalid, "Enter the email address as it is usually written: some of its characters stand in for others (a decomposed accent, a fullwidth letter, a symbol for a letter).")
	}
	if i := strings.IndexFunc(s, lowersIntoAnother); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return "", Errorf(KindInvalid, "Write %q in lower case: as a capital in an address it stands in for another letter.", r)
	}
	at := strings.LastIndexByte(s, '@')
	if at > 64 {
		return "", Errorf(KindInvalid, "The part of the address before the @ is at most 64 characters.")
	}
	if !mailDomain(s[at+1:]) {
		return "", Errorf(KindInvalid, "Enter an email address with a domain name like example.com.")
	}
	return s, nil
}

// lowersIntoAnother reports a letter whose lower case is not its own: the
// capital of that lower case is another letter (İ, K the Kelvin sign).
func lowersIntoAnother(r rune) bool {
	l := unicode.ToLower(r)
	return l != r && unicode.ToUpper(l) != r
}

// mailDomain reports whether d is a domain name mail can be sent to: no IP
// address or literal, labels of 1 to 63 octets as DNS writes them
// (punycode for an internationalised one) that neither start nor end with
// a hyphen, ASCII ones of letters, digits and hyphens, and a top-level
// label that is not all digits.
func mailDomain(d string) bool {
	labels := strings.Split(d, ".")
	for _, l := range labels {
		encoded, err := idna.Punycode.ToASCII(l)
		if l == "" || err != nil || len(encoded) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		// A label already in DNS form (xn--…) stands for Unicode text,
		// which must pass what a label typed in Unicode passes.
		if lower := strings.ToLower(l); strings.HasPrefix(lower, "xn--") {
			u, err := idna.Punycode.ToUnicode(lower)
			if err != nil || u == lower || u != strings.ToLower(u) || !norm.NFKC.IsNormalString(u) || strings.ContainsFunc(u, invisibleInAddress) ||
				strings.IndexFunc(u, func(r rune) bool { return r >= utf8.RuneSelf }) < 0 {
				return false
			}
		}
		for _, c := range []byte(l) {
			if c < 0x80 && !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	tld := labels[len(labels)-1]
	return strings.Trim(tld, "0123456789") != ""
}

// CreateUser inserts a live user and its credit account. A taken address is a
// KindConflict error.
func CreateUser(ctx context.Context, db DBTX, email, passwordHash, role string, verified bool) (User, error) {
	const q = `
WITH u AS (
    INSERT INTO users (email, password_hash, role, email_verified_at)
    VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END)
    RETURNING ` + userColumns + `
), a AS (
    INSERT INTO accounts (user_id) SELECT id FROM u
)
SELECT * FROM u`
	rows, _ := db.Query(ctx, q, email, passwordHash, role, verified)
	u, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[User])
	if isUniqueViolation(err, "users_email_key") {
		return User{}, Errorf(KindConflict, "An account with that email already exists.")
	}
	if err != nil {
		return User{}, fmt.Errorf("create user: %w", err)
	}
	return u, nil
}

// CreateUser inserts a user in its own transaction.
func (s *Store) CreateUser(ctx context.Context, email, passwordHash, role string, verified bool) (User, error) {
	return CreateUser(ctx, s.pool, email, passwordHash, role, verified)
}

func oneUser(rows pgx.Rows, err error) (User, error) {
	if err != nil {
		return User{}, err
	}
	u, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[User])
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, ErrNotFound
	}
	return u, err
}

// UserByEmail finds a live user by address, ignoring case.
func (s *Store) UserByEmail(ctx context.Context, email string) (User, error) {
	return oneUser(s.pool.Query(ctx, `SELECT `+userColumns+` FROM users WHERE lower(email) = lower($1) AND deleted_at IS NULL`, email))
}

// DeletedUserByID finds an account its owner deleted (anonymised: no
// address, no password) and when, for the admin page that keeps its
// payments, ledger and audit log in view.
func (s *Store) DeletedUserByID(ctx context.Context, id int64) (User, time.Time, error) {
	var u User
	var deletedAt time.Time
	err := s.pool.QueryRow(ctx, `SELECT id, role, email_verified_at, session_epoch, created_at, deleted_at
  FROM users WHERE id = $1 AND deleted_at IS NOT NULL`, id).Scan(&u.ID, &u.Role, &u.EmailVerifiedAt, &u.SessionEpoch, &u.CreatedAt, &deletedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return User{}, time.Time{}, ErrNotFound
	}
	return u, deletedAt, err
}

// UserByID finds a live user.
func (s *Store) UserByID(ctx context.Context, id int64) (User, error) {
	return oneUser(s.pool.Query(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1 AND deleted_at IS NULL`, id))
}

// SetPasswordHash replaces a user's password hash. With endSessions, the
// session epoch is bumped so that every existing session ends; the new epoch
// is returned so the caller can keep its own session.
//
// With endSessions (a password change or reset, not a rehash) every
// one-time link still outstanding stops working too: a change-email link
// requested by someone who knew the old password must not move the
// account after its owner secured it.
func SetPasswordHash(ctx context.Context, db DBTX, userID int64, hash string, endSessions bool) (int, error) {
	var epoch int
	err := db.QueryRow(ctx, `
UPDATE users SET password_hash = $2,
       session_epoch = session_epoch + CASE WHEN $3 THEN 1 ELSE 0 END
 WHERE id = $1 AND deleted_at IS NULL
RETURNING session_epoch`, userID, hash, endSessions).Scan(&epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ErrNotFound
	}
	if err != nil || !endSessions {
		return epoch, err
	}
	if _, err = db.Exec(ctx, `UPDATE user_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL`, userID); err != nil {
		return epoch, err
	}
	// Browsers known from earlier sign-ins are forgotten too (they pass
	// the sign-in limit per address): someone who knew the old password
	// must not keep that.
	return epoch, ForgetDevices(ctx, db, userID)
}

// SetPasswordHash replaces a password hash in its own transaction.
func (s *Store) SetPasswordHash(ctx context.Context, userID int64, hash string, endSessions bool) (int, error) {
	return SetPasswordHash(ctx, s.pool, userID, hash, endSessions)
}

// SetRole changes a user's role. The user's sessions end, so that a
// privilege change always starts a new session (a session planted before a
// promotion never becomes an admin's).
func SetRole(ctx context.Context, db DBTX, userID int64, role string) error {
	tag, err := db.Exec(ctx, `UPDATE users SET role = $2, session_epoch = session_epoch + 1 WHERE id = $1 AND deleted_at IS NULL`, userID, role)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// ErrLastAdmin refuses what would leave no live admin: nobody could reach
// the admin pages after it.
var ErrLastAdmin = Errorf(KindConflict, "This is the last admin; make another user an admin first (quickscale users promote).")

// RefuseLastAdmin, in the caller's transaction, returns ErrLastAdmin when
// userID is the only live admin. It locks the live admins' rows, so that
// two demotions or deletions at once cannot both pass (nor a deletion of
// a user being promoted meanwhile pass as a plain user's); FOR NO KEY
// UPDATE, which the key checks of rows naming an admin (an adjustment's
// actor, say) do not wait for: FOR UPDATE made deleting an account
// deadlock with an admin's adjustment of it (the adjustment holds the
// account and checks its actor; the deletion held every admin and waited
// for the account).
func RefuseLastAdmin(ctx context.Context, db DBTX, userID int64) error {
	var admins int
	var isAdmin bool
	if err := db.QueryRow(ctx, `SELECT count(*), coalesce(bool_or(id = $1), false)
  FROM (SELECT id FROM users WHERE role = 'admin' AND deleted_at IS NULL FOR NO KEY UPDATE) a`, userID).Scan(&admins, &isAdmin); err != nil {
		return err
	}
	if isAdmin && admins <= 1 {
		return ErrLastAdmin
	}
	return nil
}

// DeleteUser anonymises a user: the address and password go, sessions end,
// and the row stays because payments and ledger entries refer to it. The
// last live admin cannot be deleted (ErrLastAdmin).
func DeleteUser(ctx context.Context, db DBTX, userID int64) (forfeited int64, err error) {
	if err := RefuseLastAdmin(ctx, db, userID); err != nil {
		return 0, err
	}
	// The user's row first, in a statement of its own: a transaction
	// recording a payment of the user (a subscription's invoice) holds it,
	// and the statement below, started after that one committed, then sees
	// its payment and erases its address too (one statement waiting for the
	// row read the payments as they were when it began: the check at
	// commit refused the deletion, a 500).
	if _, err := db.Exec(ctx, `SELECT 1 FROM users WHERE id = $1 FOR UPDATE`, userID); err != nil {
		return 0, err
	}
	// The payments stay, without the address (00022 checks both at commit).
	var deleted int
	err = db.QueryRow(ctx, `
WITH gone AS (
    UPDATE users SET email = NULL, password_hash = NULL, deleted_at = now(),
           session_epoch = session_epoch + 1
     WHERE id = $1 AND deleted_at IS NULL
    RETURNING id),
erased AS (
    UPDATE payments SET buyer_email = NULL
     WHERE user_id IN (SELECT id FROM gone) AND buyer_email IS NOT NULL)
SELECT count(*) FROM gone`, userID).Scan(&deleted)
	if err != nil {
		return 0, err
	}
	if deleted == 0 {
		return 0, ErrNotFound
	}
	if _, err = db.Exec(ctx, `DELETE FROM user_tokens WHERE user_id = $1`, userID); err != nil {
		return 0, err
	}
	return ForfeitCredits(ctx, db, userID)
}

// ForfeitReason is the reason of the entries ForfeitCredits writes; the
// history tells them by it (and their actor, the user) from support's.
const ForfeitReason = "account deleted: credits forfeited"

// ForfeitCredits takes away a deleted user's live credits in the caller's
// transaction, drawn the way a removal is (one adjust entry per grant, the
// user as actor), so that credits nobody can spend any more stop counting
// as owed: at deletion, and for a payment that settles after it. It
// returns how many it took.
func ForfeitCredits(ctx context.Context, db DBTX, userID int64) (int64, error) {
	// The account's lock first, so that the balance read is the one taken.
	if _, err := db.Exec(ctx, `SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE`, userID); err != nil {
		return 0, err
	}
	var balance int64
	if err := db.QueryRow(ctx, `SELECT coalesce(sum(remaining), 0)::bigint FROM grants WHERE user_id = $1 AND `+liveGrant, userID).Scan(&balance); err != nil {
		return 0, err
	}
	// Under the lock the balance can only fall, as grants reach their
	// expiry between the read and the debit: then the debit answers what is
	// live at its own instant, and that is taken instead.
	for range 5 {
		if balance == 0 {
			return 0, nil
		}
		var ok bool
		var live int64
		if err := db.QueryRow(ctx, `SELECT ok, balance FROM ledger_debit($1, $2, 'adjust', $1, $3)`, userID, balance, ForfeitReason).Scan(&ok, &live); err != nil {
			return 0, fmt.Errorf("forfeit credits: %w", err)
		}
		if ok {
			return balance, nil
		}
		balance = live
	}
	return 0, fmt.Errorf("forfeit credits: balance still %d after five tries under the account lock", balance)
}

// Token purposes and lifetimes.
const (
	TokenVerifyEmail   = "verify_email"
	TokenResetPassword = "reset_password"
	TokenChangeEmail   = "change_email"
)

// TokenTTL is how long a token of each purpose stays valid.
func TokenTTL(purpose string) (time.Duration, bool) {
	switch purpose {
	case TokenVerifyEmail, TokenChangeEmail:
		return 48 * time.Hour, true
	case TokenResetPassword:
		return time.Hour, true
	}
	return 0, false
}

// NewSecret returns 256 random bits, URL-safe.
func NewSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// CreateToken issues a one-time token for the user and returns it in clear;
// only its hash is stored. It replaces the user's unused token of the same
// purpose (a unique index allows one), so only the newest link works.
func CreateToken(ctx context.Context, db DBTX, userID int64, purpose, email string) (string, error) {
	ttl, ok := TokenTTL(purpose)
	if !ok {
		return "", fmt.Errorf("unknown token purpose %q", purpose)
	}
	// One statement on the one-live-token unique index: the new token
	// replaces any unused one, so its link stops working, and two
	// concurrent calls cannot both leave a live token behind.
	raw := NewSecret()
	_, err := db.Exec(ctx, `
INSERT INTO user_tokens (hash, user_id, purpose, email, expires_at, created_at)
VALUES ($1, $2, $3, $4, clock_timestamp() + $5::interval, clock_timestamp())
ON CONFLICT (user_id, purpose) WHERE used_at IS NULL DO UPDATE
   SET hash = EXCLUDED.hash, email = EXCLUDED.email,
       expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at`,
		hashSecret(raw), userID, purpose, email, ttl)
	if err != nil {
		return "", fmt.Errorf("create token: %w", err)
	}
	return raw, nil
}

// Token is a redeemed one-time token.
type Token struct {
	UserID int64
	Email  string
}

// UseToken redeems a token once: it must exist, match the purpose, be
// unused and unexpired. Anything else is KindInvalid with one message, so a
// guesser learns nothing.
func UseToken(ctx context.Context, db DBTX, raw, purpose string) (Token, error) {
	var t Token
	if raw == "" || len(raw) > 200 {
		return t, Errorf(KindInvalid, "This link is invalid or has expired.")
	}
	err := db.QueryRow(ctx, `
UPDATE user_tokens t SET used_at = now()
  FROM users u
 WHERE t.hash = $1 AND t.purpose = $2 AND t.used_at IS NULL AND t.expires_at > now()
   AND u.id = t.user_id AND u.deleted_at IS NULL
RETURNING t.user_id, t.email`, hashSecret(raw), purpose).Scan(&t.UserID, &t.Email)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, Errorf(KindInvalid, "This link is invalid or has expired.")
	}
	return t, err
}

// MarkVerified records that the user confirmed email. It reports false when
// email is no longer the user's address (a link to an address changed since).
func MarkVerified(ctx context.Context, db DBTX, userID int64, email string) (bool, error) {
	tag, err := db.Exec(ctx, `UPDATE users SET email_verified_at = COALESCE(email_verified_at, now())
 WHERE id = $1 AND lower(email) = lower($2) AND deleted_at IS NULL`, userID, email)
	return tag.RowsAffected() == 1, err
}

// ChangeEmail moves the user to a confirmed new address. Every link still
// outstanding (sent to the old address) stops working.
func ChangeEmail(ctx context.Context, db DBTX, userID int64, email string) error {
	_, err := db.Exec(ctx, `UPDATE users SET email = $2, email_verified_at = now() WHERE id = $1 AND deleted_at IS NULL`, userID, email)
	if isUniqueViolation(err, "users_email_key") {
		return Errorf(KindConflict, "That address is now used by another account.")
	}
	if err != nil {
		return err
	}
	_, err = db.Exec(ctx, `UPDATE user_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL`, userID)
	return err
}

// EmailOwner returns the address as the live account using it stores it,
// whatever the case given, or "" when no live account uses it.
func (s *Store) EmailOwner(ctx context.Context, email string) (string, error) {
	var stored string
	err := s.pool.QueryRow(ctx, `SELECT coalesce((SELECT email FROM users WHERE lower(email) = lower($1) AND deleted_at IS NULL), '')`, email).Scan(&stored)
	return stored, err
}

// SearchUsers lists live users whose address contains q (all when q is
// empty) and, when q is a number (or #number), the user with that id,
// deleted or not; newest first, keyset-paginated by id: those older than
// before (0: the newest) or, given after, those right above it
// (keysetList).
func (s *Store) SearchUsers(ctx context.Context, q string, before, after int64, limit int) (ListPage[User], error) {
	pattern := "%" + strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(strings.ToLower(strings.TrimSpace(q))) + "%"
	// A number (or #number) is also a user id, deleted accounts included:
	// support gets ids from payments, events and emails. A deleted
	// account's address and password are gone: listed with an empty email.
	id := int64(-1)
	if n, err := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(q), "#"), 10, 64); err == nil {
		id = n
	}
	// Planned with the pattern in hand (customPlan): a rare one is answered
	// from the trigram index (00013), a common one by walking ids newest
	// first; a generic plan would pick one way for both.
	return keysetList(2, "id", func(cond, tail string, extra ...any) ([]User, error) {
		rows, err := s.pool.Query(ctx, `SELECT id, coalesce(email, '') AS email, coalesce(password_hash, '') AS password_hash,
       role, email_verified_at, session_epoch, created_at FROM users
 WHERE ((deleted_at IS NULL AND lower(email) LIKE $1) OR id = $2) AND `+cond+tail,
			append([]any{customPlan, pattern, id}, extra...)...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowToStructByName[User])
	}, func(u User) int64 { return u.ID }, before, after, limit)
}

// EmailAndBalance returns a user's address ("" once the account is
// deleted) and live balance in one round trip, for emails about credits.
func EmailAndBalance(ctx context.Context, db DBTX, userID int64) (string, int64, error) {
	var email string
	var balance int64
	err := db.QueryRow(ctx, `
SELECT coalesce(u.email, ''),
       (SELECT coalesce(sum(g.remaining), 0)::bigint FROM grants g WHERE g.user_id = u.id AND `+liveGrant+`)
  FROM users u WHERE u.id = $1`, userID).Scan(&email, &balance)
	return email, balance, err
}
