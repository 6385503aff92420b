package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store/storetest"
)

// acctEmailJobs returns the SendEmail jobs enqueued so far.
func acctEmailJobs(ta *testApp) []jobs.SendEmail {
	ta.t.Helper()
	var out []jobs.SendEmail
	for _, j := range ta.jobRows(jobs.SendEmail{}.Kind()) {
		var args jobs.SendEmail
		require.NoError(ta.t, json.Unmarshal(j.EncodedArgs, &args))
		out = append(out, args)
	}
	return out
}

func TestForgotPasswordAnswersAlikeForUnknownEmail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "known@example.com"})

	known := ta.browser().post("/password/forgot", url.Values{"email": {"known@example.com"}})
	unknown := ta.browser().post("/password/forgot", url.Values{"email": {"ghost@example.com"}})

	require.Equal(t, known.Status, unknown.Status)
	want := strings.Replace(acctText(known.Doc(t), "#main"), "known@example.com", "ghost@example.com", 1)
	require.Equal(t, want, acctText(unknown.Doc(t), "#main"), "the page tells an unknown address apart")
	require.Contains(t, acctText(unknown.Doc(t), "#forgot-sent"), "ghost@example.com")
	var to []string
	for _, m := range acctEmailJobs(ta) {
		to = append(to, m.Template+" "+m.To)
	}
	require.Equal(t, []string{jobs.EmailResetPassword + " known@example.com"}, to)
}

func TestResetPasswordThroughEmailedLink(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "reset@example.com"})
	b := ta.browser()
	acctRequireStatus(t, b.post("/password/forgot", url.Values{"email": {"reset@example.com"}}), http.StatusOK)
	link := linkIn(t, ta.waitMail("reset@example.com", "Reset your QuickScale password").Text, "/password/reset?token=")

	page := b.get(link)
	acctRequireStatus(t, page, http.StatusOK)
	token := page.Doc(t).Find(`#reset-form input[name="token"]`).AttrOr("value", "")
	require.Equal(t, acctTokenOf(t, link, "/password/reset"), token)
	r := b.post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}})

	mustRedirect(t, r, "/login")
	acctRequireStatus(t, acctLogin(ta.browser(), "reset@example.com", storetest.DefaultPassword), http.StatusUnprocessableEntity)
	mustRedirect(t, acctLogin(ta.browser(), "reset@example.com", acctNewPassword), "/dashboard")
	ta.waitMail("reset@example.com", "Your QuickScale password was changed")
}

func TestLoginPageShowsNoticeAfterPasswordReset(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	b := ta.browser()

	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "noticed@example.com"})
	token := acctResetToken(ta, "noticed@example.com")
	mustRedirect(t, b.post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}}), "/login")

	withNotice := b.get("/login").Doc(t)
	again := b.get("/login").Doc(t)

	require.Contains(t, acctText(withNotice, "#reset-notice"), "new password")
	require.Equal(t, 1, withNotice.Find("#login-form").Length())
	require.Equal(t, 0, withNotice.Find("#keys-revoked-notice").Length(), "no keys, no keys notice")
	require.Equal(t, 0, again.Find("#reset-notice").Length(), "the notice is shown once")
	// A link cannot fake it (it once came from the URL).
	require.Equal(t, 0, ta.browser().get("/login?reset=1&keys_revoked=1").Doc(t).Find("#reset-notice").Length())
}

func TestResetTokenExpiresAfterOneHour(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "slow@example.com"})
	token := acctResetToken(ta, "slow@example.com")
	hash := sha256.Sum256([]byte(token))
	var lifetime float64
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(),
		`SELECT extract(epoch FROM expires_at - created_at) FROM user_tokens WHERE hash = $1`, hash[:]).Scan(&lifetime))
	require.InDelta(t, time.Hour.Seconds(), lifetime, 5, "reset token lifetime")
	acctAgeToken(ta, token, time.Hour+time.Second)

	r := ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}})

	acctRequireStatus(t, r, http.StatusBadRequest)
	doc := r.Doc(t)
	require.Equal(t, "This link is invalid or has expired.", acctText(doc, ".form-message"))
	require.Equal(t, "/password/forgot", doc.Find(`#main a[href="/password/forgot"]`).AttrOr("href", ""), "no way to ask for a new link")
	mustRedirect(t, acctLogin(ta.browser(), "slow@example.com", storetest.DefaultPassword), "/dashboard")
}

func TestResetTokenWorksOnlyOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "twice@example.com"})
	token := acctResetToken(ta, "twice@example.com")
	mustRedirect(t, ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}}), "/login")

	r := ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {"yet another password"}})

	acctRequireStatus(t, r, http.StatusBadRequest)
	mustRedirect(t, acctLogin(ta.browser(), "twice@example.com", acctNewPassword), "/dashboard")
}

func TestNewResetLinkRevokesTheOlderOne(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "again@example.com"})
	for range 2 {
		acctRequireStatus(t, ta.browser().post("/password/forgot", url.Values{"email": {"again@example.com"}}), http.StatusOK)
	}
	var tokens []string
	eventually(t, 15*time.Second, "two reset emails", func() bool {
		tokens = tokens[:0]
		for _, m := range ta.mailbox() {
			if m.To == "again@example.com" && strings.Contains(m.Subject, "Reset your") {
				tokens = append(tokens, acctTokenOf(t, m.Text, "/password/reset?token="))
			}
		}
		return len(tokens) == 2
	})
	// The two emails may be sent by two workers at once; whichever token
	// was issued last is the one stored as live.
	older, newer := tokens[0], tokens[1]
	if acctTokenLive(ta, older) {
		older, newer = newer, older
	}
	require.True(t, acctTokenLive(ta, newer), "neither reset token is live")

	old := ta.browser().post("/password/reset", url.Values{"token": {older}, "new_password": {acctNewPassword}})

	acctRequireStatus(t, old, http.StatusBadRequest)
	mustRedirect(t, ta.browser().post("/password/reset", url.Values{"token": {newer}, "new_password": {acctNewPassword}}), "/login")
}

// acctTokenLive reports whether the token is stored unused.
func acctTokenLive(ta *testApp, token string) bool {
	ta.t.Helper()
	h := sha256.Sum256([]byte(token))
	return acctCount(ta, `SELECT count(*) FROM user_tokens WHERE hash = $1 AND used_at IS NULL`, h[:]) == 1
}

func TestResetEndsEverySessionOfTheUser(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, signedIn := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "stolen@example.com"})
	token := acctResetToken(ta, "stolen@example.com")

	mustRedirect(t, ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}}), "/login")

	require.False(t, acctSignedIn(signedIn), "an old session survived the reset")
}

func TestResetRejectsShortPasswordKeepingTheLink(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "short@example.com"})
	token := acctResetToken(ta, "short@example.com")

	r := ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {"short"}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc := r.Doc(t)
	require.NotEmpty(t, acctFieldError(doc, "#reset-form", "new_password"))
	kept, _ := acctInput(doc, "#reset-form", "token")
	require.Equal(t, token, kept, "the form lost its token")
	mustRedirect(t, ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}}), "/login")
}

func TestResetThroughEmailConfirmsTheAddress(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "unconfirmed@example.com", Unverified: true})
	token := acctResetToken(ta, "unconfirmed@example.com")

	mustRedirect(t, ta.browser().post("/password/reset", url.Values{"token": {token}, "new_password": {acctNewPassword}}), "/login")

	require.True(t, acctUserByEmail(ta, "unconfirmed@example.com").Verified)
}
