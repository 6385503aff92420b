package store

import (
	"context"
	"runtime"
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

// passwordSlots bounds the key derivations running at once in this
// process. Each holds 19 MiB while it runs, and the sign-in, sign-up and
// reset limits count requests, not how many run at the same moment: 50
// wrong sign-ins sent at once took a server from 76 MB to 1.4 GB. One
// derivation keeps a core busy, so more at once than cores would finish
// none sooner. The others wait, holding no memory, until their request's
// deadline.
var passwordSlots = make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))

// withPasswordSlot runs derive once a slot is free, or returns ctx's error.
func withPasswordSlot(ctx context.Context, derive func()) error {
	select {
	case passwordSlots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-passwordSlots }()
	derive()
	return nil
}

// HashPassword hashes pw with argon2id and PasswordParams, once one of the
// process's few derivation slots is free (passwordSlots); an error is
// ctx's when its deadline comes first.
func HashPassword(ctx context.Context, pw string) (hash string, err error) {
	p := PasswordParams()
	if werr := withPasswordSlot(ctx, func() { hash, err = argon2id.CreateHash(pw, &p) }); werr != nil {
		return "", werr
	}
	return hash, err
}

// VerifyPassword reports whether pw matches hash and whether the hash should
// be recomputed because its parameters are not PasswordParams. An empty hash
// (no such user) still spends the time of one comparison. Like
// HashPassword it waits for a derivation slot; err is ctx's error.
func VerifyPassword(ctx context.Context, pw, hash string) (ok, rehash bool, err error) {
	if hash == "" {
		// Spend one key derivation so that a failed sign-in costs the same
		// whether or not the address is known.
		_, err := HashPassword(ctx, pw)
		return false, false, err
	}
	var match bool
	var params *argon2id.Params
	var cerr error
	if err := withPasswordSlot(ctx, func() { match, params, cerr = argon2id.CheckHash(pw, hash) }); err != nil {
		return false, false, err
	}
	if cerr != nil || !match {
		return false, false, nil
	}
	return true, *params != PasswordParams(), nil
}
