package store

import (
	"unicode/utf8"

	"github.com/alexedwards/argon2id"
)

// PasswordParams returns OWASP's argon2id recommendation (m=19 MiB, t=2, p=1).
func PasswordParams() argon2id.Params {
	return argon2id.Params{Memory: 19 * 1024, Iterations: 2, Parallelism: 1, SaltLength: 16, KeyLength: 32}
}

// Password length limits, in characters.
const (
	MinPasswordLen = 8
	MaxPasswordLen = 256
)

// CheckPasswordRules validates a new password.
func CheckPasswordRules(pw string) error {
	n := utf8.RuneCountInString(pw)
	switch {
	case n < MinPasswordLen:
		return Errorf(KindInvalid, "Use at least %d characters.", MinPasswordLen)
	case n > MaxPasswordLen:
		return Errorf(KindInvalid, "Use at most %d characters.", MaxPasswordLen)
	}
	return nil
}

// HashPassword hashes pw with argon2id and PasswordParams.
func HashPassword(pw string) (string, error) {
	p := PasswordParams()
	return argon2id.CreateHash(pw, &p)
}

// VerifyPassword reports whether pw matches hash and whether the hash should
// be recomputed because its parameters are not PasswordParams. An empty hash
// (no such user) still spends the time of one comparison.
func VerifyPassword(pw, hash string) (ok, rehash bool) {
	if hash == "" {
		// Spend one key derivation so that a failed sign-in costs the same
		// whether or not the address is known.
		_, _ = HashPassword(pw)
		return false, false
	}
	match, params, err := argon2id.CheckHash(pw, hash)
	if err != nil || !match {
		return false, false
	}
	return true, *params != PasswordParams()
}
