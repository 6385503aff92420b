package main

import (
	"net/http"
	"net/url"
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
