package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
	"github.com/quickscale/quickscale/web"
)

func TestSettingsNeedSignIn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})

	r := ta.browser().get("/settings")

	mustRedirect(t, r, "/login?next=%2Fsettings")
}

func TestChangePasswordNeedsCurrentPassword(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	r := b.post("/settings/password", url.Values{"current_password": {"not my password"}, "new_password": {acctNewPassword}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc := r.Doc(t)
	require.Equal(t, "That is not your current password.", acctFieldError(doc, "#password-form", "current_password"))
	v, _ := acctInput(doc, "#password-form", "new_password")
	require.Empty(t, v, "password echoed back")
	require.Equal(t, u.PasswordHash, acctUserByEmail(ta, u.Email).PasswordHash, "password changed without re-authentication")
}

// A refused boosted form keeps the page's address (a reload of the
// form's address would be a GET it does not answer), and that address,
// reached anyway, shows the page the forms are on.
func TestRefusedSettingsFormKeepsTheAddress(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	for _, path := range []string{"/settings/password", "/settings/email", "/settings/delete"} {
		r := b.post(path, url.Values{"current_password": {"not my password"}}, "HX-Request", "true", "HX-Boosted", "true")
		require.GreaterOrEqual(t, r.Status, 400, path)
		require.Equal(t, "false", r.Header.Get("HX-Push-Url"), "%s: a refusal must not push the form's address", path)
		mustRedirect(t, b.get(path), "/settings")
	}
	// A plain (non-htmx) refusal is an ordinary page.
	r := b.post("/settings/password", url.Values{"current_password": {"not my password"}})
	require.Empty(t, r.Header.Get("HX-Push-Url"))
}

// The settings forms' password check is limited per signed-in user:
// someone else's failed sign-ins at the address do not lock the owner out
// of their settings, and the owner's own wrong tries are bounded.
func TestSettingsPasswordCheckIsLimitedPerUser(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"TRUST_PROXY": "true"}})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	limits := web.DefaultLimits()
	for range limits.LoginPerAccountIP.Max {
		acctRequireStatus(t, acctLogin(ta.browser(), u.Email, "a guess", acctFrom("198.51.100.23")...), http.StatusUnprocessableEntity)
	}
	mustRedirect(t, b.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {acctNewPassword}}), "/settings")

	for range limits.ReauthPerUser.Max {
		acctRequireStatus(t, b.post("/settings/password", url.Values{"current_password": {"not my password"}, "new_password": {"another new password"}}), http.StatusUnprocessableEntity)
	}
	r := b.post("/settings/password", url.Values{"current_password": {acctNewPassword}, "new_password": {"another new password"}})
	acctRequireTooMany(t, r, int(limits.ReauthPerUser.Window.Seconds()))
}

func TestChangePasswordRejectsTooShortNewPassword(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	r := b.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {"1234567"}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	require.NotEmpty(t, acctFieldError(r.Doc(t), "#password-form", "new_password"))
	require.Equal(t, u.PasswordHash, acctUserByEmail(ta, u.Email).PasswordHash)
}

func TestChangePasswordEndsOtherSessionsAndKeepsThisOne(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, here := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "owner@example.com"})
	elsewhere := acctSignIn(ta, u.Email, storetest.DefaultPassword)

	r := here.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {acctNewPassword}})

	mustRedirect(t, r, "/settings")
	require.NotNil(t, acctSessionCookie(t, r), "the session token was not renewed")
	require.Contains(t, acctText(here.get("/settings").Doc(t), "#flash"), "password is changed")
	require.True(t, acctSignedIn(here), "the changing session was signed out")
	require.False(t, acctSignedIn(elsewhere), "another session survived the change")
	require.Contains(t, acctText(elsewhere.get("/login").Doc(t), "#flash"), "signed out: your password or your access rights changed", "the other session is told why")
	acctRequireStatus(t, acctLogin(ta.browser(), u.Email, storetest.DefaultPassword), http.StatusUnprocessableEntity)
	mustRedirect(t, acctLogin(ta.browser(), u.Email, acctNewPassword), "/dashboard")
	ta.waitMail(u.Email, "Your QuickScale password was changed")
}

func TestChangeEmailNeedsCurrentPassword(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	r := b.post("/settings/email", url.Values{"current_password": {"wrong"}, "email": {"new@example.com"}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc := r.Doc(t)
	require.Equal(t, "That is not your current password.", acctFieldError(doc, "#email-form", "current_password"))
	typed, _ := acctInput(doc, "#email-form", "email")
	require.Equal(t, "new@example.com", typed, "typed address not kept")
	require.Empty(t, acctEmailJobs(ta), "an email was sent without re-authentication")
}

func TestChangeEmailTakesEffectOnlyOnceNewAddressIsConfirmed(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "before@example.com"})

	r := b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"after@example.com"}})

	mustRedirect(t, r, "/settings")
	page := b.get("/settings").Doc(t)
	require.Contains(t, acctText(page, "#flash"), "after@example.com")
	require.Contains(t, acctText(page, "#pending-email"), "after@example.com", "the wait for confirmation is shown")
	require.Contains(t, acctText(b.get("/settings").Doc(t), "#pending-email"), "after@example.com", "and stays shown")
	require.Equal(t, "before@example.com", acctUserByEmail(ta, "before@example.com").Email, "address changed before confirmation")
	mail := ta.waitMail("after@example.com", "Confirm your new email address")
	token := acctTokenOf(t, mail.Text, "/verify?token=")

	mustRedirect(t, b.post("/verify", url.Values{"token": {token}}), "/dashboard")
	// The address the account left is told, with the new one.
	require.Contains(t, ta.waitMail("before@example.com", "Your QuickScale sign-in address was changed").Text, "after@example.com")

	after := acctUserByEmail(ta, "after@example.com")
	require.Equal(t, u.ID, after.ID)
	require.True(t, after.Verified)
	require.Equal(t, "after@example.com", acctText(b.get("/dashboard").Doc(t), "#account-email"))
	require.Zero(t, b.get("/settings").Doc(t).Find("#pending-email").Length(), "confirmed: nothing is pending")
	acctRequireStatus(t, acctLogin(ta.browser(), "before@example.com", storetest.DefaultPassword), http.StatusUnprocessableEntity)
	mustRedirect(t, acctLogin(ta.browser(), "after@example.com", storetest.DefaultPassword), "/dashboard")
}

func TestChangeEmailToTakenAddressRevealsNothing(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "Someone@Example.com"})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "curious@example.com"})

	taken := b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"SOMEONE@example.com"}})
	takenPage := b.get("/settings").Doc(t)
	takenFlash := acctText(takenPage, "#flash")
	require.Contains(t, acctText(takenPage, "#pending-email"), "SOMEONE@example.com", "a taken address waits like any other")
	free := b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"nobody@example.com"}})
	freeFlash := acctText(b.get("/settings").Doc(t), "#flash")

	mustRedirect(t, taken, "/settings")
	mustRedirect(t, free, "/settings")
	require.Equal(t, freeFlash, strings.Replace(takenFlash, "SOMEONE@example.com", "nobody@example.com", 1))
	// The settings page, too, waits for the address typed either way.
	require.Contains(t, acctText(b.get("/settings").Doc(t), "#pending-email"), "nobody@example.com")
	// The owner hears of it, at their address as stored, in words that fit.
	m := ta.waitMail("Someone@Example.com", "Someone tried to move an account to your address")
	require.Equal(t, "Someone@Example.com", m.To)
	require.Contains(t, m.Text, "change its email address to this one")
	require.Equal(t, "curious@example.com", acctUserByEmail(ta, "curious@example.com").Email)
	require.Equal(t, u.ID, acctUserByEmail(ta, "curious@example.com").ID)
}

func TestDeleteAccountNeedsTypedConfirmation(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	r := b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"delete"}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc := r.Doc(t)
	require.Equal(t, "Type DELETE in capitals to confirm.", acctFieldError(doc, "#delete-form", "confirm"))
	typed, _ := acctInput(doc, "#delete-form", "confirm")
	require.Equal(t, "delete", typed)
	_, hidden := doc.Find("#delete-form").Attr("x-cloak")
	require.False(t, hidden, "the form with the error is hidden")
	require.Equal(t, u.ID, acctUserByEmail(ta, u.Email).ID)
	require.True(t, acctSignedIn(b))
}

// Before deleting, the page says what is lost: the credits (paid ones
// too) and the API keys. Its fields have ids of their own.
func TestDeleteAccountSaysTheCreditsAreForfeited(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 350})
	doc := b.get("/settings").Doc(t)
	says := strings.Join(strings.Fields(doc.Find("#delete-consequences").Text()), " ")
	require.Contains(t, says, "your 350 credits are forfeited")
	one, b1 := acctNewUserSignedIn(ta, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, one.ID, storetest.GrantOpts{Amount: 1})
	require.Contains(t, strings.Join(strings.Fields(b1.get("/settings").Doc(t).Find("#delete-consequences").Text()), " "), "your 1 credit is forfeited: it cannot be used")
	require.Contains(t, says, "they cannot be used")
	require.Contains(t, says, "API keys stop working")
	ids := map[string]int{}
	doc.Find("[id]").Each(func(_ int, s *goquery.Selection) { ids[s.AttrOr("id", "")]++ })
	for id, n := range ids {
		require.Equal(t, 1, n, "id %q is used %d times", id, n)
	}
}

func TestDeleteAccountNeedsCurrentPassword(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	r := b.post("/settings/delete", url.Values{"current_password": {"wrong password"}, "confirm": {"DELETE"}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	require.Equal(t, "That is not your current password.", acctFieldError(r.Doc(t), "#delete-form", "current_password"))
	require.Equal(t, u.ID, acctUserByEmail(ta, u.Email).ID)
}

func TestDeleteAccountEndsEverySessionAndFreesTheAddress(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, here := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "leaving@example.com"})
	elsewhere := acctSignIn(ta, u.Email, storetest.DefaultPassword)

	r := here.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"DELETE"}})

	mustRedirect(t, r, "/")
	require.False(t, acctSignedIn(here))
	require.False(t, acctSignedIn(elsewhere), "another session survived deletion")
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM users WHERE id = $1 AND (email IS NOT NULL OR password_hash IS NOT NULL)`, u.ID),
		"the deleted account keeps its address or password")
	acctRequireStatus(t, acctLogin(ta.browser(), "leaving@example.com", storetest.DefaultPassword), http.StatusUnprocessableEntity)
	acctRequireStatus(t, acctSignup(ta.browser(), "leaving@example.com", storetest.DefaultPassword), http.StatusOK)
	require.NotEqual(t, u.ID, acctUserByEmail(ta, "leaving@example.com").ID, "the address was not free for a new account")
}

func TestHomeShowsNoticeAfterAccountDeletion(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	loc := mustRedirect(t, b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"DELETE"}}), "/")

	doc := b.get(loc).Doc(t)

	require.Contains(t, acctText(doc, "#deleted-notice"), "account is deleted")
	require.Equal(t, 1, doc.Find("#nav-signup").Length(), "home after deletion still shows a signed-in menu")
	require.Equal(t, 0, b.get("/").Doc(t).Find("#deleted-notice").Length(), "the notice is shown once")
	require.Equal(t, 0, ta.browser().get("/?deleted=1").Doc(t).Find("#deleted-notice").Length(), "a link must not fake the notice")
}

// Credits die with the account: each live grant is closed by an adjust
// entry, so they stop counting as owed, and the ledger still adds up.
func TestDeleteAccountForfeitsItsCredits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 50})
	_, err := ta.store.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 7, Kind: store.GrantPromo, Reason: "welcome"})
	require.NoError(t, err)

	mustRedirect(t, b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"DELETE"}}), "/")

	require.Zero(t, acctCount(ta, `SELECT count(*) FROM grants WHERE user_id = $1 AND closed_at IS NULL`, u.ID), "a grant stayed open")
	require.EqualValues(t, 2, acctCount(ta, `SELECT count(*) FROM ledger_entries WHERE user_id = $1 AND kind = 'adjust' AND amount < 0 AND reason LIKE 'account deleted%' AND actor_user_id = $1`, u.ID))
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM grants g WHERE user_id = $1 AND remaining <> (SELECT sum(amount) FROM ledger_entries e WHERE e.grant_id = g.id)`, u.ID), "a grant's entries do not sum to what remains")

	// Admins still see the account, read-only.
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	ab := ta.signIn(admin.Email)
	r := ab.get(fmt.Sprintf("/admin/users/%d", u.ID))
	require.Equal(t, http.StatusOK, r.Status)
	doc := r.Doc(t)
	require.Equal(t, 1, doc.Find("#deleted-account").Length())
	require.Contains(t, doc.Find("h1").Text(), fmt.Sprintf("Deleted account #%d", u.ID))
	require.Zero(t, doc.Find(fmt.Sprintf(`a[href="/admin/users/%d/credits"]`, u.ID)).Length(), "a deleted account offers an adjustment")
	// Its adjustment form says why there is none (409), not "not found".
	r = ab.get(fmt.Sprintf("/admin/users/%d/credits", u.ID))
	require.Equal(t, http.StatusConflict, r.Status)
	require.Contains(t, r.Doc(t).Find("main").Text(), "This account was deleted")
	require.Equal(t, http.StatusNotFound, ab.get("/admin/users/999999999").Status)
}

// Account takeover, closed: someone who knew the password asks to move the
// account to their address and waits; the owner resets the password. The
// pending link must not move the account afterwards, and API keys made
// meanwhile must stop working.
func TestPasswordResetCancelsPendingLinksAndRevokesAPIKeys(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, intruder := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "owner@example.com"})
	key, _, err := ta.store.CreateAPIKey(context.Background(), u.ID, "intruder's")
	require.NoError(t, err)
	mustRedirect(t, intruder.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"intruder@evil.example"}}), "/settings")
	moveToken := acctTokenOf(t, ta.waitMail("intruder@evil.example", "Confirm your new email address").Text, "/verify?token=")

	resetToken := acctResetToken(ta, "owner@example.com")
	owner := ta.browser()
	loc := mustRedirect(t, owner.post("/password/reset", url.Values{"token": {resetToken}, "new_password": {acctNewPassword}}), "/login")
	require.Equal(t, 1, owner.get(loc).Doc(t).Find("#keys-revoked-notice").Length(), "the owner is not told the keys were revoked")

	r := ta.browser().post("/verify", url.Values{"token": {moveToken}})
	require.NotEqual(t, http.StatusSeeOther, r.Status, "the pending change-email link still worked")
	require.Equal(t, "owner@example.com", acctUserByEmail(ta, "owner@example.com").Email)
	require.Equal(t, http.StatusUnauthorized, v1Do(t, ta, http.MethodGet, "/api/v1/balance", key, "").Status, "an API key survived the reset")
	// The notice says what the reset did, and its footer does not say
	// "ignore it".
	mail := ta.waitMail("owner@example.com", "Your QuickScale password was changed")
	require.Contains(t, mail.Text, "every device was signed out, and your API keys (1) were revoked")
	require.Contains(t, mail.Text, "Links we emailed you before this no longer work")
	require.NotContains(t, mail.HTML, "you can ignore it")
}

// A password change (the owner knows the password) also cancels pending
// links; it keeps the API keys (nothing says the account was lost).
func TestPasswordChangeCancelsPendingLinks(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "keeper@example.com"})
	mustRedirect(t, b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"other@example.com"}}), "/settings")
	moveToken := acctTokenOf(t, ta.waitMail("other@example.com", "Confirm your new email address").Text, "/verify?token=")
	mustRedirect(t, b.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {acctNewPassword}}), "/settings")
	r := b.post("/verify", url.Values{"token": {moveToken}})
	require.NotEqual(t, http.StatusSeeOther, r.Status, "a change-email link outlived the password change")
	require.Equal(t, "keeper@example.com", acctUserByEmail(ta, "keeper@example.com").Email)
}

// Each request to change the address emails the address typed: bounded
// per user, whether or not the password was right every time.
func TestChangeEmailRequestsAreLimitedPerUser(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	limit := web.DefaultLimits().ChangeEmailPerUser
	for i := range limit.Max {
		mustRedirect(t, b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {fmt.Sprintf("target%d@example.com", i)}}), "/settings")
	}
	r := b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"one-more@example.com"}})
	acctRequireTooMany(t, r, int(limit.Window.Seconds()))
	require.Len(t, ta.jobRows("send_email"), limit.Max, "emails beyond the limit")
}

// An unverified account cannot make API keys (they spend credits).
func TestAPIKeysNeedAVerifiedEmail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Unverified: true})
	require.Equal(t, 1, b.get("/settings/api-keys").Doc(t).Find("#apikey-needs-verified").Length())
	r := b.post("/settings/api-keys", url.Values{"name": {"squatter"}})
	require.Equal(t, http.StatusForbidden, r.Status)
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM api_keys`))
}

// The change of email waiting is this user's, in this session: another
// user signing in on the same browser does not see it, and a password
// change (which cancels the link) ends it.
func TestPendingEmailChangeIsTheUsersAndEndsWithAPasswordChange(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	bob, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "bob@example.com"})
	carol := storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "carol@example.com"})
	ask := func() {
		mustRedirect(t, b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"bob-new@example.com"}}), "/settings")
		require.Contains(t, acctText(b.get("/settings").Doc(t), "#pending-email"), "bob-new@example.com")
	}
	ask()
	mustRedirect(t, acctLogin(b, carol.Email, storetest.DefaultPassword), "/dashboard")
	require.Zero(t, b.get("/settings").Doc(t).Find("#pending-email").Length(), "carol sees bob's pending address")

	mustRedirect(t, acctLogin(b, bob.Email, storetest.DefaultPassword), "/dashboard")
	ask()
	mustRedirect(t, b.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {acctNewPassword}}), "/settings")
	require.Zero(t, b.get("/settings").Doc(t).Find("#pending-email").Length(), "the password change cancelled the link")
}

// The last live admin cannot delete their account (nobody could reach the
// admin pages after it), as they cannot be demoted; once another admin
// exists they can, and what they did stays attributed to their (deleted)
// account in the audit log, not to "CLI / system".
func TestLastAdminCannotDeleteTheirAccountAndAnAdminsActsStayTheirs(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(admin.Email)
	path := fmt.Sprintf("/admin/users/%d/credits", u.ID)
	mustRedirect(t, b.post(path, url.Values{"nonce": {"n1"}, "direction": {"add"}, "amount": {"7"}, "kind": {"admin"}, "reason": {"goodwill"}}), "/admin/users/")

	del := url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"DELETE"}}
	r := b.post("/settings/delete", del)
	require.Equal(t, http.StatusConflict, r.Status)
	require.Contains(t, r.Doc(t).Find(`.field-error[data-field="confirm"]`).Text(), "You are the last admin")
	_, err := ta.store.UserByEmail(context.Background(), admin.Email)
	require.NoError(t, err, "the account is still there")

	other := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	mustRedirect(t, b.post("/settings/delete", del), "/")
	doc := ta.signIn(other.Email).get("/admin/audit").Doc(t)
	actor := doc.Find(`tr.audit-entry[data-action="credits.adjust"] td.audit-actor`)
	require.Equal(t, 1, actor.Length())
	require.Equal(t, fmt.Sprintf("Deleted account #%d", admin.ID), strings.TrimSpace(actor.Text()))
	require.Equal(t, fmt.Sprintf("/admin/users/%d", admin.ID), actor.Find("a").AttrOr("href", ""))
	userPage := ta.signIn(other.Email).get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t)
	require.Contains(t, userPage.Find(`#audit td.audit-actor`).Text(), fmt.Sprintf("Deleted account #%d", admin.ID))
}

// Deleting an account closes its open pack checkouts at the provider too
// (as its plan checkouts), so that none is paid for an account that is
// gone: the payment is recorded cancelled and the simulator's checkout
// page no longer takes a payment. One the buyer finished is left to its
// event.
func TestDeletingAnAccountClosesItsOpenPackCheckouts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	p := whBuy(t, ta)
	second := p.Browser.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}, "nonce": {whID("n")}})
	secondSession := path.Base(mustRedirect(t, second, ta.URL+"/simulator/checkout/cs_sim_"))
	// The second is finished at the checkout (paid by bank debit, say), so
	// the provider will not close it.
	_, err := ta.store.Pool().Exec(ctx, `UPDATE simulator_sessions SET status = 'complete' WHERE id = $1`, secondSession)
	require.NoError(t, err)
	deleteAccount(t, p.Browser)

	// Closed by the close_checkout job enqueued with the deletion.
	eventually(t, 15*time.Second, "the open checkout cancelled", func() bool { return whPayment(t, ta, p).Cancelled() })
	var simStatus string
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT status FROM simulator_sessions WHERE id = $1`, p.SessionID).Scan(&simStatus))
	require.Equal(t, "expired", simStatus)
	var secondStatus string
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT status FROM payments WHERE checkout_session_id = $1`, secondSession).Scan(&secondStatus))
	require.Equal(t, store.PaymentPending, secondStatus, "a checkout finished at the provider is left to its event")
}

// A deleted account's checkouts are closed by a job enqueued with the
// deletion, retried while the provider is unreachable (h33: one the
// provider could not close stayed payable, and nothing tried again); the
// deletion itself does not wait on the provider.
func TestADeletedAccountsCheckoutsAreClosedByARetriedJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A provider that answers every call with a 503.
	var expires atomic.Int32
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/expire") {
			expires.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Stripe-Should-Retry", "false")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"type":"api_error","message":"Stripe is briefly unavailable"}}`))
	}))
	t.Cleanup(fake.Close)
	ta := newTestApp(t, testAppOpts{NoWorkers: true, Env: map[string]string{
		"STRIPE_SECRET_KEY": "sk_test_down", "STRIPE_WEBHOOK_SECRET": "whsec_down", "STRIPE_API_URL": fake.URL}})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	pack, err := ta.store.PackByCode(ctx, "pack_500")
	require.NoError(t, err)
	pay, err := ta.store.CreatePayment(ctx, store.NewPayment{UserID: u.ID, Pack: pack, CheckoutSessionID: "cs_test_down_open",
		CheckoutURL: "https://checkout.stripe.com/c/pay/cs_test_down_open", CustomerID: "cus_down"})
	require.NoError(t, err)
	deleteAccount(t, ta.signIn(u.Email))
	require.Zero(t, expires.Load(), "the deletion waited on the provider (no worker runs here)")
	require.Equal(t, store.PaymentPending, whPayment(t, ta, whPurchase{User: u, SessionID: pay.CheckoutSessionID}).Status)
	jobs := ta.jobRows("close_checkout")
	require.Len(t, jobs, 1, "nothing will try to close it again")
	require.JSONEq(t, fmt.Sprintf(`{"payment_id": %d}`, pay.ID), string(jobs[0].EncodedArgs))
}

// The job closes a pack's and a plan's checkout at the provider (here the
// simulator) and records them closed; run again, it changes nothing.
func TestTheCloseCheckoutJobClosesPackAndPlanCheckouts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	plan := openSubscriptionCheckout(t, ta, b, u.ID, "basic")
	r := b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}, "nonce": {whID("n")}})
	session := path.Base(mustRedirect(t, r, ta.URL+"/simulator/checkout/cs_sim_"))
	p := whPurchase{User: u, SessionID: session}
	pay := whPayment(t, ta, p)
	for range 2 {
		for _, args := range []jobs.CloseCheckout{{PaymentID: pay.ID}, {SubscriptionID: plan.ID}} {
			_, err := ta.app.river.Insert(ctx, args, nil)
			require.NoError(t, err)
		}
		eventually(t, 15*time.Second, "both checkouts closed", func() bool {
			sub, err := ta.store.SubscriptionByID(ctx, plan.ID)
			require.NoError(t, err)
			return whPayment(t, ta, p).Cancelled() && sub.Status == store.SubAbandoned
		})
		require.Equal(t, 2, whCount(t, ta, `SELECT count(*) FROM simulator_sessions WHERE id IN ($1, $2) AND status = 'expired'`, session, plan.CheckoutSessionID))
	}
}
