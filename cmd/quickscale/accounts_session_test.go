package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
)

func TestLoginRenewsTheSessionToken(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	b := ta.browser()
	acctSignup(b, "renew@example.com", storetest.DefaultPassword)
	// Confirming the address leaves a flash in an anonymous session.
	before := acctSessionCookie(t, b.post("/verify", url.Values{"token": {acctVerifyToken(ta, "renew@example.com")}}))
	require.NotNil(t, before, "no anonymous session before sign-in")
	require.EqualValues(t, 1, acctCount(ta, `SELECT count(*) FROM sessions WHERE token = $1`, before.Value))

	r := acctLogin(b, "renew@example.com", storetest.DefaultPassword)

	mustRedirect(t, r, "/dashboard")
	after := acctSessionCookie(t, r)
	require.NotNil(t, after, "sign-in set no session cookie")
	require.NotEqual(t, before.Value, after.Value, "session token kept across sign-in")
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM sessions WHERE token = $1`, before.Value), "pre-sign-in token still valid")
	require.True(t, acctSignedIn(b))
}

func TestSessionCookieIsHttpOnlyLaxAndNotSecureOverHTTP(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "cookie@example.com"})

	r := acctLogin(ta.browser(), "cookie@example.com", storetest.DefaultPassword)

	c := acctSessionCookie(t, r)
	require.NotNil(t, c)
	require.True(t, c.HttpOnly, "HttpOnly")
	require.Equal(t, http.SameSiteLaxMode, c.SameSite)
	require.Equal(t, "/", c.Path)
	require.False(t, c.Secure, "Secure cookie on a plain-HTTP BASE_URL would never come back")
}

func TestSessionCookieIsSecureWhenBaseURLIsHTTPS(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"BASE_URL": "https://quickscale.example"}})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "tls@example.com"})

	r := acctLogin(ta.browser(), "tls@example.com", storetest.DefaultPassword)

	mustRedirect(t, r, "/dashboard")
	c := acctSessionCookie(t, r)
	require.NotNil(t, c)
	require.True(t, c.Secure, "Secure")
	require.True(t, c.HttpOnly, "HttpOnly")
	require.Equal(t, http.SameSiteLaxMode, c.SameSite)
}

// acctSessionExpiry is how far in the future the only session row expires.
func acctSessionExpiry(ta *testApp) time.Duration {
	ta.t.Helper()
	var secs float64
	require.NoError(ta.t, ta.store.Pool().QueryRow(context.Background(),
		`SELECT extract(epoch FROM expiry - now()) FROM sessions`).Scan(&secs))
	return time.Duration(secs * float64(time.Second))
}

func TestSessionIdleTimeoutSlidesWithActivityAndSignsOut(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"SESSION_IDLE_TIMEOUT": "1m", "SESSION_LIFETIME": "72h"}})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	require.InDelta(t, time.Minute.Seconds(), acctSessionExpiry(ta).Seconds(), 5, "idle expiry after sign-in")

	// Activity moves the idle deadline forward again.
	acctExec(ta, `UPDATE sessions SET expiry = now() + interval '5 seconds'`)
	require.True(t, acctSignedIn(b))
	require.InDelta(t, time.Minute.Seconds(), acctSessionExpiry(ta).Seconds(), 5, "idle expiry after a request")

	// A minute without requests ends the session.
	acctExec(ta, `UPDATE sessions SET expiry = now() - interval '1 second'`)
	require.False(t, acctSignedIn(b), "still signed in after the idle timeout")
}

func TestSessionLifetimeIsAbsoluteDespiteActivity(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"SESSION_IDLE_TIMEOUT": "12h", "SESSION_LIFETIME": "1m"}})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "absolute@example.com"})
	b := ta.browser()
	r := acctLogin(b, "absolute@example.com", storetest.DefaultPassword)
	mustRedirect(t, r, "/dashboard")
	require.InDelta(t, time.Minute.Seconds(), acctSessionExpiry(ta).Seconds(), 5, "lifetime after sign-in")
	c := acctSessionCookie(t, r)
	require.NotNil(t, c)
	require.WithinDuration(t, time.Now().Add(time.Minute), c.Expires, 5*time.Second, "cookie expiry")
	var first time.Time
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(), `SELECT expiry FROM sessions`).Scan(&first))

	require.True(t, acctSignedIn(b))

	var second time.Time
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(), `SELECT expiry FROM sessions`).Scan(&second))
	require.True(t, first.Equal(second), "activity moved the absolute expiry from %s to %s", first, second)
}

func TestCrossOriginLoginIsRejectedWith403(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "victim@example.com"})
	form := url.Values{"email": {"victim@example.com"}, "password": {storetest.DefaultPassword}}

	// A current browser sends Fetch metadata; an older one only Origin.
	fetchMetadata := acctCrossOriginPost(ta.browser(), "/login", form)
	b := ta.browser()
	req, err := http.NewRequest(http.MethodPost, b.url("/login"), strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	originOnly := b.do(req)

	for _, r := range []response{fetchMetadata, originOnly} {
		doc := acctErrorPage(t, r, http.StatusForbidden)
		require.Equal(t, "Request refused", acctText(doc, "#error-page h1"))
		require.Nil(t, acctSessionCookie(t, r), "a refused sign-in started a session")
	}
}

func TestCrossOriginPostsChangeNothingOnAnyForm(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "csrf@example.com"})
	slug := storetest.NewService(t, ta.store, storetest.ServiceOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	pw := storetest.DefaultPassword
	posts := []struct {
		path string
		form url.Values
	}{
		{"/signup", url.Values{"email": {"forged@example.com"}, "password": {pw}}},
		{"/login", url.Values{"email": {"csrf@example.com"}, "password": {pw}}},
		{"/logout", nil},
		{"/verify", url.Values{"token": {"x"}}},
		{"/verify/resend", nil},
		{"/password/forgot", url.Values{"email": {"csrf@example.com"}}},
		{"/password/reset", url.Values{"token": {"x"}, "new_password": {acctNewPassword}}},
		{"/settings/password", url.Values{"current_password": {pw}, "new_password": {acctNewPassword}}},
		{"/settings/email", url.Values{"current_password": {pw}, "email": {"forged@example.com"}}},
		{"/settings/delete", url.Values{"current_password": {pw}, "confirm": {"DELETE"}}},
		{"/contact", url.Values{"name": {"Forger"}, "email": {"f@example.com"}, "message": {"Sent from another site."}}},
		{"/dashboard/buy-credits", url.Values{"pack": {"pack_500"}, "nonce": {"n"}}},
		{"/services/" + slug + "/use", url.Values{"idempotency_key": {"k"}}},
	}
	for _, p := range posts {
		r := acctCrossOriginPost(b, p.path, p.form)
		acctErrorPage(t, r, http.StatusForbidden)
	}

	require.True(t, acctSignedIn(b), "a cross-origin sign-out worked")
	after := acctUserByEmail(ta, "csrf@example.com")
	require.Equal(t, u.PasswordHash, after.PasswordHash, "password changed")
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM users WHERE email = 'forged@example.com'`))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM usages`))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM payments`))
	require.Zero(t, len(ta.jobRows("send_email")), "an email was enqueued")
}

func TestStateChangingRoutesRefuseGET(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	for _, path := range []string{"/logout", "/verify/resend"} {
		r := b.get(path)
		acctErrorPage(t, r, http.StatusMethodNotAllowed)
		if allow := r.Header.Get("Allow"); !strings.Contains(allow, http.MethodPost) || strings.Contains(allow, http.MethodGet) {
			t.Errorf("GET %s: Allow %q, want the POST it takes", path, allow)
		}
	}
	// The settings forms' addresses (left in the address bar by a refused
	// form without JavaScript) show the settings page; they do nothing.
	for _, path := range []string{"/settings/password", "/settings/email", "/settings/delete"} {
		mustRedirect(t, b.get(path), "/settings")
	}
	require.True(t, acctSignedIn(b), "a GET signed out or deleted the account")

	require.True(t, acctSignedIn(b), "GET /logout signed out")
	require.EqualValues(t, 1, acctCount(ta, `SELECT count(*) FROM users WHERE deleted_at IS NULL`))
}

func TestHtmxSignInRedirectsWithHXRedirect(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "htmx@example.com"})
	b := ta.browser()

	r := acctLogin(b, "htmx@example.com", storetest.DefaultPassword, "HX-Request", "true", "HX-Boosted", "true")

	acctRequireStatus(t, r, http.StatusNoContent)
	require.Equal(t, "/dashboard", r.Header.Get("HX-Redirect"))
	require.True(t, acctSignedIn(b))
}

func TestHtmxFailedSignInShowsErrorInFullPage(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})

	r := acctLogin(ta.browser(), "nobody@example.com", "wrong password", "HX-Request", "true", "HX-Boosted", "true")

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc := r.Doc(t)
	require.Equal(t, 1, doc.Find("nav.navbar").Length(), "a boosted request needs the whole page")
	require.NotEmpty(t, acctText(doc, "#login-form .form-message"))
	email, _ := acctInput(doc, "#login-form", "email")
	require.Equal(t, "nobody@example.com", email)
}

// Monitors and link checkers send HEAD: it is answered wherever GET is.
func TestHeadIsAnsweredWhereGetIs(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	for _, path := range []string{"/", "/login", "/healthz", "/services"} {
		resp, err := http.Head(ta.URL + path)
		require.NoError(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("HEAD %s: %d", path, resp.StatusCode)
		}
	}
}
