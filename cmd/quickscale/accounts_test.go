package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/alexedwards/argon2id"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

func TestSignupShowsCheckYourEmailAndSendsConfirmationLink(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	b := ta.browser()

	r := acctSignup(b, "new.person@example.com", storetest.DefaultPassword)

	acctRequireStatus(t, r, http.StatusOK)
	require.Contains(t, acctText(r.Doc(t), "#signup-sent"), "new.person@example.com")
	mail := ta.waitMail("new.person@example.com", "Confirm your email")
	require.True(t, strings.HasPrefix(linkIn(t, mail.Text, "/verify?token="), ta.URL+"/verify?token="), "link not on BASE_URL")
	u := acctUserByEmail(ta, "new.person@example.com")
	require.False(t, u.Verified, "new account is verified before the link is followed")
	require.Equal(t, store.RoleUser, u.Role)
}

func TestSignupRejectsInvalidInputNextToFieldsKeepingEmail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	cases := []struct {
		name, email, password, field string
	}{
		{"malformed email", "not-an-email", storetest.DefaultPassword, "email"},
		// Hidden characters would make two accounts read the same.
		{"zero-width space in the email", "alice@example.com\u200b", storetest.DefaultPassword, "email"},
		{"direction override in the email", "alice\u202e@example.com", storetest.DefaultPassword, "email"},
		// A look-alike would take (and receive the resets of) kate@…
		{"Kelvin sign for K in the email", "\u212Aate@example.com", storetest.DefaultPassword, "email"},
		{"IP-literal domain", "x@[127.0.0.1]", storetest.DefaultPassword, "email"},
		{"password of 7 characters", "short@example.com", "1234567", "password"},
		{"password of 257 characters", "long@example.com", strings.Repeat("p", 257), "password"},
	}
	for _, c := range cases {
		r := acctSignup(ta.browser(), c.email, c.password)

		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
		doc := r.Doc(t)
		require.NotEmpty(t, acctFieldError(doc, "#signup-form", c.field), "%s: no error next to %s", c.name, c.field)
		email, _ := acctInput(doc, "#signup-form", "email")
		require.Equal(t, c.email, email, "%s: typed email not kept", c.name)
		pw, _ := acctInput(doc, "#signup-form", "password")
		require.Empty(t, pw, "%s: password echoed back into the page", c.name)
	}
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM users`))
}

func TestSignupAcceptsPasswordsOf8And256Characters(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	for _, n := range []int{8, 256} {
		email := fmt.Sprintf("len%d@example.com", n)
		r := acctSignup(ta.browser(), email, strings.Repeat("p", n))
		acctRequireStatus(t, r, http.StatusOK)
		mustRedirect(t, acctLogin(ta.browser(), email, strings.Repeat("p", n)), "/dashboard")
	}
}

func TestSignupStoresArgon2idHashWithOWASPParameters(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	acctRequireStatus(t, acctSignup(ta.browser(), "hash@example.com", storetest.DefaultPassword), http.StatusOK)

	u := acctUserByEmail(ta, "hash@example.com")

	require.True(t, strings.HasPrefix(u.PasswordHash, "$argon2id$v=19$m=19456,t=2,p=1$"), "hash %q", u.PasswordHash)
	ok, err := argon2id.ComparePasswordAndHash(storetest.DefaultPassword, u.PasswordHash)
	require.NoError(t, err)
	require.True(t, ok)
}

func TestSignupForExistingAddressAnswersAlikeAndEmailsTheOwner(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "taken@example.com"})

	fresh := acctSignup(ta.browser(), "fresh@example.com", storetest.DefaultPassword)
	taken := acctSignup(ta.browser(), "taken@example.com", "another password")

	require.Equal(t, fresh.Status, taken.Status)
	want := strings.Replace(acctText(fresh.Doc(t), "#main"), "fresh@example.com", "taken@example.com", 1)
	require.Equal(t, want, acctText(taken.Doc(t), "#main"), "the page tells a taken address apart")
	ta.waitMail("taken@example.com", "Someone tried to sign up with your address")
	require.EqualValues(t, 1, acctCount(ta, `SELECT count(*) FROM users WHERE lower(email) = 'taken@example.com'`))
}

func TestSignupIsCaseInsensitiveAboutTakenAddresses(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "Mixed.Case@Example.com"})

	r := acctSignup(ta.browser(), "mixed.case@example.COM", storetest.DefaultPassword)

	acctRequireStatus(t, r, http.StatusOK)
	m := ta.waitMail("mixed.case@example.COM", "Someone tried to sign up")
	require.Equal(t, "Mixed.Case@Example.com", m.To, "the owner is written to at the address as stored")
	require.EqualValues(t, 1, acctCount(ta, `SELECT count(*) FROM users`))
}

func TestLoginIgnoresCaseOfEmail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "Casey@Example.com"})

	r := acctLogin(ta.browser(), "  cASEY@example.COM ", storetest.DefaultPassword)

	mustRedirect(t, r, "/dashboard")
}

func TestVerifyLinkGetShowsConfirmButtonWithoutVerifying(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	acctSignup(ta.browser(), "scanner@example.com", storetest.DefaultPassword)
	link := linkIn(t, ta.waitMail("scanner@example.com", "Confirm your email").Text, "/verify?token=")

	r := ta.browser().get(link)

	acctRequireStatus(t, r, http.StatusOK)
	doc := r.Doc(t)
	require.Equal(t, acctTokenOf(t, link, "/verify"), doc.Find(`#verify-form input[name="token"]`).AttrOr("value", ""))
	require.Equal(t, "post", doc.Find("#verify-form").AttrOr("method", ""))
	require.False(t, acctUserByEmail(ta, "scanner@example.com").Verified, "a GET verified the address")
}

func TestVerifyConfirmsEmailAndSendsToSignIn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	b := ta.browser()
	acctSignup(b, "confirm@example.com", storetest.DefaultPassword)
	token := acctVerifyToken(ta, "confirm@example.com")

	r := b.post("/verify", url.Values{"token": {token}})

	mustRedirect(t, r, "/login")
	require.True(t, acctUserByEmail(ta, "confirm@example.com").Verified)
	require.Contains(t, acctText(b.get("/login").Doc(t), "#flash"), "confirm@example.com is confirmed")
	ta.waitMail("confirm@example.com", "Welcome to QuickScale")
}

func TestVerifyTokenWorksOnlyOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	acctSignup(ta.browser(), "once@example.com", storetest.DefaultPassword)
	token := acctVerifyToken(ta, "once@example.com")
	mustRedirect(t, ta.browser().post("/verify", url.Values{"token": {token}}), "/login")

	r := ta.browser().post("/verify", url.Values{"token": {token}})

	acctRequireStatus(t, r, http.StatusBadRequest)
	require.Equal(t, "This link is invalid or has expired.", acctText(r.Doc(t), ".form-message"))
	// What to do next depends on who opens it: signed out, sign in; the
	// owner, already confirmed, has nothing more to do (no "Resend" for them).
	require.Contains(t, acctText(r.Doc(t), "#verify-help"), "Sign in")
	signedIn := ta.signIn("once@example.com")
	help := acctText(signedIn.post("/verify", url.Values{"token": {token}}).Doc(t), "#verify-help")
	require.Contains(t, help, "confirmed already")
	require.NotContains(t, help, "Resend")
}

func TestVerifyTokenExpiresAfter48Hours(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	acctSignup(ta.browser(), "late@example.com", storetest.DefaultPassword)
	token := acctVerifyToken(ta, "late@example.com")
	hash := sha256.Sum256([]byte(token))
	var lifetime float64
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(),
		`SELECT extract(epoch FROM expires_at - created_at) FROM user_tokens WHERE hash = $1`, hash[:]).Scan(&lifetime))
	require.InDelta(t, 48*3600, lifetime, 5, "verification token lifetime")
	acctAgeToken(ta, token, 48*time.Hour+time.Second)

	r := ta.browser().post("/verify", url.Values{"token": {token}})

	acctRequireStatus(t, r, http.StatusBadRequest)
	require.Equal(t, "This link is invalid or has expired.", acctText(r.Doc(t), ".form-message"))
	require.False(t, acctUserByEmail(ta, "late@example.com").Verified)
}

func TestTokensHaveAtLeast128RandomBitsAndAreStoredHashed(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	acctSignup(ta.browser(), "secret@example.com", storetest.DefaultPassword)
	token := acctVerifyToken(ta, "secret@example.com")

	raw, err := base64.RawURLEncoding.DecodeString(token)
	require.NoError(t, err, "token is not base64url")
	require.GreaterOrEqual(t, len(raw)*8, 128, "token has fewer than 128 bits")
	hash := sha256.Sum256([]byte(token))
	require.EqualValues(t, 1, acctCount(ta, `SELECT count(*) FROM user_tokens WHERE hash = $1`, hash[:]))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM user_tokens t WHERE position($1 in t::text) > 0`, token),
		"the token is stored in clear")
}

func TestUnverifiedUserSeesDashboardWithResendBanner(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "pending@example.com", Unverified: true})

	r := b.get("/dashboard")

	acctRequireStatus(t, r, http.StatusOK)
	doc := r.Doc(t)
	require.Equal(t, "Email not confirmed", acctText(doc, "#verification-state"))
	require.Contains(t, acctText(doc, "#verify-banner"), "pending@example.com")
	require.Equal(t, "/verify/resend", doc.Find(`#verify-banner form[method="post"]`).AttrOr("action", ""))
	require.Equal(t, 1, doc.Find(`#verify-banner form button[type="submit"]`).Length())
}

func TestVerifiedUserSeesNoVerifyBanner(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	doc := b.get("/dashboard").Doc(t)

	require.Equal(t, 0, doc.Find("#verify-banner").Length())
	require.Equal(t, "Email confirmed", acctText(doc, "#verification-state"))
}

func TestResendVerificationSendsFreshLinkAndRevokesOldOne(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	b := ta.browser()
	acctSignup(b, "resend@example.com", storetest.DefaultPassword)
	first := acctVerifyToken(ta, "resend@example.com")
	mustRedirect(t, acctLogin(b, "resend@example.com", storetest.DefaultPassword), "/dashboard")

	mustRedirect(t, b.post("/verify/resend", nil), "/dashboard")

	require.Contains(t, acctText(b.get("/dashboard").Doc(t), "#flash"), "new confirmation link")
	var second string
	eventually(t, 15*time.Second, "a second confirmation email", func() bool {
		for _, m := range ta.mailbox() {
			if m.To == "resend@example.com" && strings.Contains(m.Subject, "Confirm your email") {
				if tok := acctTokenOf(t, m.Text, "/verify?token="); tok != first {
					second = tok
					return true
				}
			}
		}
		return false
	})
	acctRequireStatus(t, ta.browser().post("/verify", url.Values{"token": {first}}), http.StatusBadRequest)
	mustRedirect(t, b.post("/verify", url.Values{"token": {second}}), "/dashboard")
	require.True(t, acctUserByEmail(ta, "resend@example.com").Verified)
}

func TestUnverifiedUserCannotBuyCredits(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Unverified: true})

	r := b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_500"}, "nonce": {"n1"}})

	doc := acctErrorPage(t, r, http.StatusForbidden)
	require.Equal(t, "Please verify your email first", acctText(doc, "#error-page h1"))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM payments`), "a checkout was started")
}

func TestUnverifiedUserCannotSpendCredits(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{Unverified: true})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	slug := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 10})

	r := b.post("/services/"+slug+"/use", url.Values{"idempotency_key": {"k1"}})

	doc := acctErrorPage(t, r, http.StatusForbidden)
	require.Equal(t, "Please verify your email first", acctText(doc, "#error-page h1"))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM usages`), "credits were spent")
}

func TestLoginFailureLooksTheSameForUnknownEmailAndWrongPassword(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "known@example.com"})

	wrong := acctLogin(ta.browser(), "known@example.com", "not the password")
	unknown := acctLogin(ta.browser(), "nobody@example.com", "not the password")

	acctRequireStatus(t, wrong, http.StatusUnprocessableEntity)
	acctRequireStatus(t, unknown, http.StatusUnprocessableEntity)
	wd, ud := wrong.Doc(t), unknown.Doc(t)
	require.Equal(t, "That email and password do not match an account.", acctText(wd, "#login-form .form-message"))
	require.Equal(t, acctText(wd, "#main"), acctText(ud, "#main"))
	email, _ := acctInput(ud, "#login-form", "email")
	require.Equal(t, "nobody@example.com", email, "typed email not kept")
	pw, _ := acctInput(ud, "#login-form", "password")
	require.Empty(t, pw)
	require.Nil(t, acctSessionCookie(t, wrong), "a failed sign-in started a session")
}

func TestLoginGoesToTheNextPageOnThisSiteOnly(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "next@example.com"})
	b := ta.browser()
	loc := mustRedirect(t, b.get("/settings"), "/login?next=")
	next := b.get(loc).Doc(t).Find(`#login-form input[name="next"]`).AttrOr("value", "")
	require.Equal(t, "/settings", next)

	r := b.post("/login", url.Values{"email": {"next@example.com"}, "password": {storetest.DefaultPassword}, "next": {next}})
	require.Equal(t, "/settings", r.Header.Get("Location"))

	// A backslash is a slash to browsers, and the redirect cleans
	// dot-segments: "/x/../\\evil.example" would become "/\\evil.example".
	offsites := []string{"//evil.example/", "https://evil.example/", "/\\evil.example", "/x/../\\evil.example", "/dashboard/..\\evil.example", "/x/..\\/evil.example"}
	for _, offsite := range offsites {
		r := ta.browser().post("/login", url.Values{"email": {"next@example.com"}, "password": {storetest.DefaultPassword}, "next": {offsite}})
		require.Equal(t, "/dashboard", r.Header.Get("Location"), "next=%q", offsite)
		// Signed in already: the sign-in page sends its visitor on at once.
		require.Equal(t, "/dashboard", b.get("/login?next="+url.QueryEscape(offsite)).Header.Get("Location"), "signed in, next=%q", offsite)
	}
}

func TestLogoutEndsTheSession(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	require.EqualValues(t, 1, acctCount(ta, `SELECT count(*) FROM sessions`))

	mustRedirect(t, b.post("/logout", nil), "/")

	require.False(t, acctSignedIn(b))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM sessions`), "the session row outlives sign-out")
}

func TestLoginRehashesPasswordStoredWithOtherParameters(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "old@example.com"})
	weak := argon2id.Params{Memory: 8 * 1024, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}
	old, err := argon2id.CreateHash(storetest.DefaultPassword, &weak)
	require.NoError(t, err)
	_, err = ta.store.SetPasswordHash(context.Background(), u.ID, old, false)
	require.NoError(t, err)

	mustRedirect(t, acctLogin(ta.browser(), "old@example.com", storetest.DefaultPassword), "/dashboard")

	now := acctUserByEmail(ta, "old@example.com").PasswordHash
	require.NotEqual(t, old, now, "hash not recomputed")
	require.True(t, strings.HasPrefix(now, "$argon2id$v=19$m=19456,t=2,p=1$"), "new hash %q", now)
	ok, err := argon2id.ComparePasswordAndHash(storetest.DefaultPassword, now)
	require.NoError(t, err)
	require.True(t, ok)
}

func TestLoginKeepsHashWithCurrentParameters(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "current@example.com"})
	before := acctUserByEmail(ta, "current@example.com").PasswordHash

	mustRedirect(t, acctLogin(ta.browser(), "current@example.com", storetest.DefaultPassword), "/dashboard")

	require.Equal(t, before, acctUserByEmail(ta, "current@example.com").PasswordHash)
}

func TestLinksWithoutTokenExplainWhatIsMissing(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	verify := acctErrorPage(t, ta.browser().get("/verify"), http.StatusBadRequest)
	reset := acctErrorPage(t, ta.browser().get("/password/reset"), http.StatusBadRequest)

	require.Equal(t, "Link incomplete", acctText(verify, "#error-page h1"))
	require.Equal(t, "Link incomplete", acctText(reset, "#error-page h1"))
	require.Equal(t, "/password/forgot", reset.Find("#error-page a.button").AttrOr("href", ""))
}
