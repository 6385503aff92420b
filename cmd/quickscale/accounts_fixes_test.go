package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
)

func TestEmailChangeRevokesLinksSentToTheOldAddress(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "old@example.com"})
	// A reset link goes to the old address.
	anon := ta.browser()
	require.Equal(t, http.StatusOK, anon.post("/password/forgot", url.Values{"email": {"old@example.com"}}).Status)
	resetLink := linkIn(t, ta.waitMail("old@example.com", "Reset your").Text, "/password/reset?token=")
	// The owner moves to a new address and confirms it.
	b := ta.signIn(u.Email)
	mustRedirect(t, b.post("/settings/email", url.Values{"email": {"new@example.com"}, "current_password": {storetest.DefaultPassword}}), "/settings")
	confirm := linkIn(t, ta.waitMail("new@example.com", "Confirm your new email").Text, "/verify?token=")
	cu, _ := url.Parse(confirm)
	mustRedirect(t, b.post("/verify", url.Values{"token": {cu.Query().Get("token")}}), "/dashboard")
	// Whoever reads the old mailbox can no longer take the account over.
	ru, _ := url.Parse(resetLink)
	r := anon.post("/password/reset", url.Values{"token": {ru.Query().Get("token")}, "new_password": {"a brand new password"}})
	require.Equal(t, http.StatusBadRequest, r.Status)
	mustRedirect(t, ta.browser().post("/login", url.Values{"email": {"new@example.com"}, "password": {storetest.DefaultPassword}}), "/dashboard")
}

func TestSuccessfulReauthClearsTheSignInFailureCount(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email) // clears the counter too
	attacker := ta.browser()
	for range 9 {
		require.Equal(t, http.StatusUnprocessableEntity, attacker.post("/login", url.Values{"email": {u.Email}, "password": {"wrong password"}}).Status)
	}
	// The owner changes the password: the correct current password counts
	// as a successful sign-in and clears the nine failures.
	mustRedirect(t, b.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {"another good password"}}), "/settings")
	for range 5 {
		r := ta.browser().post("/login", url.Values{"email": {u.Email}, "password": {"wrong again"}})
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, "the owner's account is locked by failures it already outlived")
	}
}

func TestInputThatIsNotTextIsA400NeverA500(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 1})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	b := ta.signIn(admin.Email)
	anon := ta.browser()
	long := strings.Repeat("a", 6000) + "@example.com"
	for name, r := range map[string]response{
		"login invalid utf-8":   anon.post("/login", url.Values{"email": {"a\xffb@x.com"}, "password": {"whatever1"}}),
		"login NUL":             anon.post("/login", url.Values{"email": {"a\x00b@x.com"}, "password": {"whatever1"}}),
		"contact NUL":           anon.post("/contact", url.Values{"name": {"a\x00b"}, "email": {"a@example.com"}, "message": {"hello there, a message"}}),
		"use key NUL":           b.post("/services/render/use", url.Values{"idempotency_key": {"a\x00b"}}),
		"api key name NUL":      b.post("/settings/api-keys", url.Values{"name": {"a\x00b"}}),
		"buy invalid utf-8":     b.post("/dashboard/buy-credits", url.Values{"pack": {"\xff"}}),
		"success session NUL":   b.get("/dashboard/buy-credits/success?session_id=%00"),
		"admin webhooks filter": b.get("/admin/webhooks?type=%ff"),
		"admin webhooks cursor": b.get("/admin/webhooks?before_ts=1&before_id=%00"),
		"admin users search":    b.get("/admin/users?q=%ff"),
	} {
		if r.Status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, r.Status)
		}
	}
	// A long address is an ordinary failed sign-in, not a server error.
	r := anon.post("/login", url.Values{"email": {long}, "password": {"whatever1"}})
	if r.Status != http.StatusUnprocessableEntity {
		t.Errorf("6,000-character email: status %d, want 422", r.Status)
	}
	if strings.Contains(ta.logs.String(), "level=ERROR") {
		t.Errorf("bad input was logged as a server error:\n%s", tail(ta.logs.String(), 20))
	}
}

func TestPromotionEndsTheUsersSessions(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	require.Equal(t, http.StatusOK, b.get("/dashboard").Status)
	code, _, stderr := runCmd(t, map[string]string{"DATABASE_URL": ta.app.cfg.DatabaseURL}, "", "users", "promote", "--email", u.Email)
	require.Equal(t, 0, code, stderr)
	// The session from before the promotion is not an admin session.
	mustRedirect(t, b.get("/admin"), "/login")
	admin := ta.signIn(u.Email)
	require.Equal(t, http.StatusOK, admin.get("/admin").Status)
}
