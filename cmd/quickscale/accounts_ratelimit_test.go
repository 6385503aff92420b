package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"testing"

	"github.com/alexedwards/argon2id"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
	"github.com/quickscale/quickscale/web"
)

// acctFrom is the header that makes a request come from ip (TRUST_PROXY=true).
func acctFrom(ip string) []string { return []string{"X-Forwarded-For", ip} }

// acctRequireTooMany checks the polite 429 page and its Retry-After.
func acctRequireTooMany(t *testing.T, r response, maxWait int) {
	t.Helper()
	doc := acctErrorPage(t, r, http.StatusTooManyRequests)
	require.Equal(t, "Too many attempts", acctText(doc, "#error-page h1"))
	secs, err := strconv.Atoi(r.Header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", r.Header.Get("Retry-After"))
	require.Greater(t, secs, 0)
	require.LessOrEqual(t, secs, maxWait)
	// The page tells people the same wait, in whole minutes rounded up.
	m := regexp.MustCompile(`Please wait (\d+) minutes?`).FindStringSubmatch(acctText(doc, "#error-message"))
	require.NotNil(t, m, "no wait in %q", acctText(doc, "#error-message"))
	require.Equal(t, strconv.Itoa((secs+59)/60), m[1], "the page says %s minutes, Retry-After %d seconds", m[1], secs)
}

// Guesses at one address from many IPs are bounded in all, each IP's
// share staying under its own limit.
func TestLoginIsLimitedPerAccountAcrossIPs(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "target@example.com"})
	limits := web.DefaultLimits()
	acctFillAddressLimit(t, ta, "target@example.com", "10.0")

	r := acctLogin(ta.browser(), "TARGET@example.com", "one more guess", acctFrom("10.1.0.1")...)

	acctRequireTooMany(t, r, int(limits.LoginPerAccount.Window.Seconds()))
}

// Guesses from one IP use up that IP's tries at the address, not its
// owner's: the owner, elsewhere, still signs in.
func TestLoginGuessesFromOneIPDoNotLockTheOwnerOut(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "owner@example.com"})
	limit := web.DefaultLimits().LoginPerAccountIP
	for i := range limit.Max {
		r := acctLogin(ta.browser(), "owner@example.com", "guess "+strconv.Itoa(i), acctFrom("198.51.100.66")...)
		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	}
	acctRequireTooMany(t, acctLogin(ta.browser(), "owner@example.com", storetest.DefaultPassword, acctFrom("198.51.100.66")...), int(limit.Window.Seconds()))

	mustRedirect(t, acctLogin(ta.browser(), "owner@example.com", storetest.DefaultPassword, acctFrom("203.0.113.5")...), "/dashboard")
}

// Guesses from the owner's own IP (a shared NAT) fill that IP's limit for
// the address, but the owner's known browser still signs in there; a new
// browser behind it waits.
func TestKnownBrowserSignsInPastItsIPsLimitForTheAddress(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "natted@example.com"})
	const nat = "198.51.100.77"
	owner := ta.browser()
	mustRedirect(t, acctLogin(owner, u.Email, storetest.DefaultPassword, acctFrom(nat)...), "/dashboard")
	require.Equal(t, http.StatusSeeOther, owner.post("/logout", nil).Status)
	limit := web.DefaultLimits().LoginPerAccountIP
	for i := range limit.Max {
		acctRequireStatus(t, acctLogin(ta.browser(), u.Email, "guess "+strconv.Itoa(i), acctFrom(nat)...), http.StatusUnprocessableEntity)
	}
	acctRequireTooMany(t, acctLogin(ta.browser(), u.Email, storetest.DefaultPassword, acctFrom(nat)...), int(limit.Window.Seconds()))

	mustRedirect(t, acctLogin(owner, u.Email, storetest.DefaultPassword, acctFrom(nat)...), "/dashboard")
}

// Guesses from many IPs can fill an address's limit, but not lock its
// owner out: a browser the owner signed in with before is exempt from that
// limit (not from the per-IP ones); a browser never used is refused, and a
// password change forgets the known browsers.
func TestKnownBrowserSignsInPastTheAddressLimit(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "besieged@example.com"})
	owner := ta.browser()
	mustRedirect(t, acctLogin(owner, u.Email, storetest.DefaultPassword, acctFrom("192.0.2.10")...), "/dashboard")
	require.Equal(t, http.StatusSeeOther, owner.post("/logout", nil).Status)
	limits := web.DefaultLimits()
	acctFillAddressLimit(t, ta, u.Email, "10.2")
	acctRequireTooMany(t, acctLogin(ta.browser(), u.Email, storetest.DefaultPassword, acctFrom("192.0.2.11")...), int(limits.LoginPerAccount.Window.Seconds()))

	mustRedirect(t, acctLogin(owner, u.Email, storetest.DefaultPassword, acctFrom("192.0.2.12")...), "/dashboard")

	// After a password change the browser is no longer known: the address's
	// limit applies to it again.
	mustRedirect(t, owner.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {acctNewPassword}}), "/settings")
	require.Equal(t, http.StatusSeeOther, owner.post("/logout", nil).Status)
	acctFillAddressLimit(t, ta, u.Email, "10.3")
	acctRequireTooMany(t, acctLogin(owner, u.Email, acctNewPassword, acctFrom("192.0.2.13")...), int(limits.LoginPerAccount.Window.Seconds()))
}

// A browser known to one account is not known to another whose address
// Unicode case folding equates with it (ſ folds to s; the database keeps
// the two apart): an attacker's own cookie exempts nobody else's address.
func TestKnownBrowserIsKnownToItsOwnAccountOnly(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	victim := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "sk@example.com"})
	attacker := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "ſk@example.com"})
	require.NotEqual(t, victim.ID, attacker.ID)
	theirs := ta.browser()
	mustRedirect(t, acctLogin(theirs, attacker.Email, storetest.DefaultPassword, acctFrom("192.0.2.20")...), "/dashboard")
	require.Equal(t, http.StatusSeeOther, theirs.post("/logout", nil).Status)
	limits := web.DefaultLimits()
	acctFillAddressLimit(t, ta, victim.Email, "10.4")

	acctRequireTooMany(t, acctLogin(theirs, victim.Email, "one more guess", acctFrom("192.0.2.21")...), int(limits.LoginPerAccount.Window.Seconds()))
}

// Resetting the password through the emailed link proves the mailbox: the
// failed sign-ins counted against the address stop holding it.
func TestPasswordResetClearsTheSignInLimit(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "relock@example.com"})
	from := acctFrom("192.0.2.200")
	limit := web.DefaultLimits().LoginPerAccountIP
	for range limit.Max {
		acctRequireStatus(t, acctLogin(ta.browser(), "relock@example.com", "wrong password", from...), http.StatusUnprocessableEntity)
	}
	acctRequireTooMany(t, acctLogin(ta.browser(), "relock@example.com", storetest.DefaultPassword, from...), int(limit.Window.Seconds()))

	token := acctResetToken(ta, "relock@example.com")
	mustRedirect(t, ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}}, from...), "/login")

	mustRedirect(t, acctLogin(ta.browser(), "relock@example.com", acctNewPassword, from...), "/dashboard")
}

// One address is sent at most so many reset and sign-up emails an hour,
// whatever the IPs asking. Past that the answer is the same and nothing is
// sent: the owner asking for a reset after an attacker used the allowance
// is not refused, and has the earlier emails, the newest with a valid link.
func TestMailToOneAddressIsLimited(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}, NoWorkers: true})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "victim@example.com"})
	limit := web.DefaultLimits().MailPerAddress
	toVictim := func() int {
		n := 0
		for _, m := range acctEmailJobs(ta) {
			if m.To == "victim@example.com" {
				n++
			}
		}
		return n
	}
	for i := range limit.Max + 2 {
		acctRequireStatus(t, ta.browser().post("/password/forgot", url.Values{"email": {"victim@example.com"}}, acctFrom(fmt.Sprintf("203.0.113.%d", i+1))...), http.StatusOK)
		acctRequireStatus(t, acctSignup(ta.browser(), "victim@example.com", storetest.DefaultPassword, acctFrom(fmt.Sprintf("198.51.100.%d", i+1))...), http.StatusOK)
	}
	require.Equal(t, 2*limit.Max, toVictim(), "emails to one address beyond its limits")

	// An address without an account is counted alike: the same answers,
	// and its counter grows the same.
	for i := range limit.Max + 1 {
		acctRequireStatus(t, ta.browser().post("/password/forgot", url.Values{"email": {"nobody@example.com"}}, acctFrom(fmt.Sprintf("192.0.2.%d", i+1))...), http.StatusOK)
	}
	var counted int
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(),
		`SELECT hits FROM rate_limits WHERE key LIKE 'forgot:acct:%' AND hits = $1`, limit.Max+1).Scan(&counted))
	require.Equal(t, limit.Max+1, counted)
}

// Each change of address emails the address typed: many accounts asking
// for one address are bounded per address too.
func TestChangeEmailToOneAddressIsLimited(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	limit := web.DefaultLimits().MailPerAddress
	for range limit.Max {
		_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
		mustRedirect(t, b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"flooded@example.com"}}), "/settings")
	}
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	r := b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"FLOODED@example.com"}})
	acctRequireTooMany(t, r, int(limit.Window.Seconds()))
}

func TestLoginLimitIsCheckedBeforeThePassword(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "locked@example.com"})
	// A hash with other parameters is rewritten by any sign-in that gets as
	// far as checking the password.
	weak := argon2id.Params{Memory: 8 * 1024, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}
	old, err := argon2id.CreateHash(storetest.DefaultPassword, &weak)
	require.NoError(t, err)
	_, err = ta.store.SetPasswordHash(context.Background(), u.ID, old, false)
	require.NoError(t, err)
	for range web.DefaultLimits().LoginPerAccountIP.Max {
		acctRequireStatus(t, acctLogin(ta.browser(), "locked@example.com", "wrong password"), http.StatusUnprocessableEntity)
	}

	r := acctLogin(ta.browser(), "locked@example.com", storetest.DefaultPassword)

	acctRequireTooMany(t, r, 900)
	require.Nil(t, acctSessionCookie(t, r), "a rate-limited sign-in started a session")
	require.Equal(t, old, acctUserByEmail(ta, "locked@example.com").PasswordHash, "the password was checked despite the limit")
}

func TestLoginIsLimitedPerIPAcrossAccounts(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	limit := web.DefaultLimits().LoginPerIP
	for i := range limit.Max {
		r := acctLogin(ta.browser(), fmt.Sprintf("spray%d@example.com", i), "password1", acctFrom("192.0.2.7")...)
		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	}

	r := acctLogin(ta.browser(), "another@example.com", "password1", acctFrom("192.0.2.7")...)

	acctRequireTooMany(t, r, int(limit.Window.Seconds()))
	other := acctLogin(ta.browser(), "another@example.com", "password1", acctFrom("192.0.2.8")...)
	acctRequireStatus(t, other, http.StatusUnprocessableEntity)
}

func TestSignupIsLimitedPerIP(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	limit := web.DefaultLimits().SignupPerIP
	for i := range limit.Max {
		r := ta.browser().post("/signup", url.Values{"email": {fmt.Sprintf("bot%d@example.com", i)}, "password": {"short"}}, acctFrom("198.51.100.1")...)
		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	}

	r := ta.browser().post("/signup", url.Values{"email": {"bot@example.com"}, "password": {storetest.DefaultPassword}}, acctFrom("198.51.100.1")...)

	acctRequireTooMany(t, r, int(limit.Window.Seconds()))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM users`), "a rate-limited sign-up made an account")
	require.Zero(t, len(ta.jobRows("send_email")), "a rate-limited sign-up sent mail")
	other := ta.browser().post("/signup", url.Values{"email": {"person@example.com"}, "password": {storetest.DefaultPassword}}, acctFrom("198.51.100.2")...)
	acctRequireStatus(t, other, http.StatusOK)
}

func TestPasswordResetIsLimitedPerIP(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}, NoWorkers: true})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "forgetful@example.com"})
	limit := web.DefaultLimits().ResetPerIP
	for range limit.Max {
		r := ta.browser().post("/password/forgot", url.Values{"email": {"forgetful@example.com"}}, acctFrom("203.0.113.9")...)
		acctRequireStatus(t, r, http.StatusOK)
	}

	forgot := ta.browser().post("/password/forgot", url.Values{"email": {"forgetful@example.com"}}, acctFrom("203.0.113.9")...)
	acctRequireTooMany(t, forgot, int(limit.Window.Seconds()))
	require.Len(t, ta.jobRows("send_email"), limit.Max, "reset emails beyond the limit")

	// Using links is counted apart from asking for them: the user who asked
	// the most may still use the link they got, but guesses are limited.
	for range limit.Max {
		r := ta.browser().post("/password/reset", url.Values{"token": {"guess"}, "new_password": {acctNewPassword}}, acctFrom("203.0.113.9")...)
		if r.Status == http.StatusTooManyRequests {
			t.Fatal("asking for reset links used up the allowance for using them")
		}
	}
	reset := ta.browser().post("/password/reset", url.Values{"token": {"guess"}, "new_password": {acctNewPassword}}, acctFrom("203.0.113.9")...)
	acctRequireTooMany(t, reset, int(limit.Window.Seconds()))
}

func TestRateLimitsHoldAcrossReplicas(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "replicas@example.com"})
	// A second api process on the same database.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	second, err := newApp(ctx, "api", ta.app.cfg, slog.New(slog.DiscardHandler), ta.app.pool)
	require.NoError(t, err)
	srv := httptest.NewServer(second.handler)
	t.Cleanup(srv.Close)
	for range web.DefaultLimits().LoginPerAccountIP.Max {
		acctRequireStatus(t, acctLogin(ta.browser(), "replicas@example.com", "wrong password"), http.StatusUnprocessableEntity)
	}

	r := ta.browser().post(srv.URL+"/login", url.Values{"email": {"replicas@example.com"}, "password": {"wrong password"}})

	acctRequireTooMany(t, r, 900)
}

// acctFillAddressLimit makes LoginPerAccount failed sign-ins at email, each
// IP (prefix.N.1) staying under its own limit for the address.
func acctFillAddressLimit(t *testing.T, ta *testApp, email, prefix string) {
	t.Helper()
	limits := web.DefaultLimits()
	perIP := limits.LoginPerAccountIP.Max - 1
	for i := range limits.LoginPerAccount.Max {
		r := acctLogin(ta.browser(), email, "guess "+strconv.Itoa(i), acctFrom(fmt.Sprintf("%s.%d.1", prefix, i/perIP))...)
		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	}
}
