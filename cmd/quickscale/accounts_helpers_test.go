package main

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
)

// Helpers of the accounts, settings, shell and mail tests. Their names start
// with acct so that they cannot collide with other files of the package.

// acctNewPassword is a second valid password, for changes and resets.
const acctNewPassword = "a much better passphrase"

// acctSignup posts the sign-up form.
func acctSignup(b *browser, email, password string, header ...string) response {
	b.t.Helper()
	return b.post("/signup", url.Values{"email": {email}, "password": {password}}, header...)
}

// acctLogin posts the sign-in form.
func acctLogin(b *browser, email, password string, header ...string) response {
	b.t.Helper()
	return b.post("/login", url.Values{"email": {email}, "password": {password}}, header...)
}

// acctSignIn signs a stored user in with a new browser.
func acctSignIn(ta *testApp, email, password string) *browser {
	ta.t.Helper()
	b := ta.browser()
	mustRedirect(ta.t, acctLogin(b, email, password), "/dashboard")
	return b
}

// acctNewUserSignedIn makes a user in the store and signs them in.
func acctNewUserSignedIn(ta *testApp, opts storetest.UserOpts) (acctUser, *browser) {
	ta.t.Helper()
	u := storetest.NewUser(ta.t, ta.store, opts)
	pw := opts.Password
	if pw == "" {
		pw = storetest.DefaultPassword
	}
	return acctUserByEmail(ta, u.Email), acctSignIn(ta, u.Email, pw)
}

// acctTokenOf returns the token parameter of the first link in text whose
// URL contains part.
func acctTokenOf(t *testing.T, text, part string) string {
	t.Helper()
	u, err := url.Parse(linkIn(t, text, part))
	require.NoError(t, err)
	tok := u.Query().Get("token")
	require.NotEmpty(t, tok, "link without a token")
	return tok
}

// acctVerifyToken waits for the confirmation email to addr and returns its token.
func acctVerifyToken(ta *testApp, addr string) string {
	ta.t.Helper()
	return acctTokenOf(ta.t, ta.waitMail(addr, "Confirm your email").Text, "/verify?token=")
}

// acctResetToken asks for a reset link for addr and returns its token.
func acctResetToken(ta *testApp, addr string) string {
	ta.t.Helper()
	r := ta.browser().post("/password/forgot", url.Values{"email": {addr}})
	require.Equal(ta.t, http.StatusOK, r.Status, "forgot password")
	return acctTokenOf(ta.t, ta.waitMail(addr, "Reset your QuickScale password").Text, "/password/reset?token=")
}

// acctText is the trimmed text of the elements matching sel.
func acctText(doc *goquery.Document, sel string) string {
	return strings.Join(strings.Fields(doc.Find(sel).Text()), " ")
}

// acctFieldError is the error shown next to a form field.
func acctFieldError(doc *goquery.Document, form, field string) string {
	return acctText(doc, form+` .field-error[data-field="`+field+`"]`)
}

// acctInput is the value of a form's input field as re-displayed.
func acctInput(doc *goquery.Document, form, field string) (string, bool) {
	return doc.Find(form + ` input[name="` + field + `"]`).Attr("value")
}

// acctRequireStatus fails with the page's tail when the status differs.
func acctRequireStatus(t *testing.T, r response, want int) {
	t.Helper()
	if r.Status != want {
		t.Fatalf("status %d, want %d; body:\n%s", r.Status, want, tail(r.Body, 40))
	}
}

// acctErrorPage checks that r is the friendly error page for status, inside
// the site's layout, and returns its document.
func acctErrorPage(t *testing.T, r response, status int) *goquery.Document {
	t.Helper()
	acctRequireStatus(t, r, status)
	doc := r.Doc(t)
	require.Equal(t, 1, doc.Find("#error-page").Length(), "no #error-page")
	require.Equal(t, strconv.Itoa(status), doc.Find("#error-page").AttrOr("data-status", ""))
	require.Equal(t, 1, doc.Find("nav.navbar").Length(), "error page outside the layout")
	return doc
}

// acctSessionCookie returns the session cookie set by r, or nil.
func acctSessionCookie(t *testing.T, r response) *http.Cookie {
	t.Helper()
	for _, line := range r.Header.Values("Set-Cookie") {
		c, err := http.ParseSetCookie(line)
		require.NoError(t, err, "Set-Cookie %q", line)
		if c.Name == "qs_session" {
			return c
		}
	}
	return nil
}

// acctUser is a users row as the tests see it.
type acctUser struct {
	ID           int64
	Email        string
	PasswordHash string
	Role         string
	Verified     bool
	Epoch        int
}

// acctUserByEmail reads a live user; it fails the test when there is none.
func acctUserByEmail(ta *testApp, email string) acctUser {
	ta.t.Helper()
	var u acctUser
	err := ta.store.Pool().QueryRow(context.Background(), `
SELECT id, email, password_hash, role, email_verified_at IS NOT NULL, session_epoch
  FROM users WHERE lower(email) = lower($1) AND deleted_at IS NULL`, email).
		Scan(&u.ID, &u.Email, &u.PasswordHash, &u.Role, &u.Verified, &u.Epoch)
	require.NoError(ta.t, err, "user %s", email)
	return u
}

// acctCount runs a count query on the test database.
func acctCount(ta *testApp, sql string, args ...any) int64 {
	ta.t.Helper()
	var n int64
	require.NoError(ta.t, ta.store.Pool().QueryRow(context.Background(), sql, args...).Scan(&n), sql)
	return n
}

// acctExec runs a statement on the test database.
func acctExec(ta *testApp, sql string, args ...any) {
	ta.t.Helper()
	_, err := ta.store.Pool().Exec(context.Background(), sql, args...)
	require.NoError(ta.t, err, sql)
}

// acctCrossOriginPost submits a form the way a browser does from another site.
func acctCrossOriginPost(b *browser, path string, form url.Values) response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.url(path), strings.NewReader(form.Encode()))
	require.NoError(b.t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	return b.do(req)
}

// acctSignedIn reports whether the browser's session is signed in (the
// dashboard answers instead of sending it to the sign-in page).
func acctSignedIn(b *browser) bool {
	b.t.Helper()
	r := b.get("/dashboard")
	switch r.Status {
	case http.StatusOK:
		return true
	case http.StatusSeeOther:
		require.True(b.t, strings.HasPrefix(r.Header.Get("Location"), "/login"), "dashboard redirects to %q", r.Header.Get("Location"))
		return false
	}
	b.t.Fatalf("dashboard: status %d", r.Status)
	return false
}

// acctAgeToken moves a token's creation and expiry back by d, as if d had
// passed since it was issued.
func acctAgeToken(ta *testApp, token string, d time.Duration) {
	ta.t.Helper()
	hash := sha256.Sum256([]byte(token))
	acctExec(ta, `UPDATE user_tokens SET created_at = created_at - $2::interval, expires_at = expires_at - $2::interval WHERE hash = $1`, hash[:], d)
	require.EqualValues(ta.t, 1, acctCount(ta, `SELECT count(*) FROM user_tokens WHERE hash = $1`, hash[:]), "no such token")
}
