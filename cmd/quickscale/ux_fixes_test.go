package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
)

// Every page has one main landmark, and the first thing a keyboard reaches
// is a link that skips the navigation to it.
func TestLayoutHasAMainLandmarkAndASkipLink(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	for _, b := range []*browser{ta.browser(), ta.signIn(u.Email)} {
		doc := b.get("/about").Doc(t)
		require.Equal(t, 1, doc.Find("main").Length(), "main landmarks")
		require.Equal(t, 1, doc.Find("main #main").Length(), "the content is not inside main")
		first := doc.Find("body a, body button").First()
		require.Equal(t, "#main", first.AttrOr("href", ""), "the first control is not the skip link")
		require.Equal(t, "Skip to content", strings.TrimSpace(first.Text()))
		// Without JavaScript the menu is shown on phones only: on a wide
		// screen Bulma's menu shows anyway, and forcing it broke the bar.
		require.Contains(t, doc.Find("noscript").Text(), "@media screen and (max-width:1023px)")
	}
}

// The adjust-credits page says what it is in its title (browser tabs and
// history), not only whose page it is.
func TestAdminAdjustCreditsPageTitle(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(admin.Email)
	require.Equal(t, "Adjust credits: "+u.Email+" · QuickScale", acctText(b.get(fmt.Sprintf("/admin/users/%d/credits", u.ID)).Doc(t), "title"))
	require.Equal(t, u.Email+" · QuickScale", acctText(b.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t), "title"))
}

// htmx restoring a page it no longer has cached (Back past its ten) asks
// with HX-Request but without HX-Boosted; the answer is the whole page,
// while a real fragment request still gets the content block alone.
func TestHistoryRestoreGetsTheWholePage(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	doc := b.get("/dashboard/credits", "HX-Request", "true", "HX-History-Restore-Request", "true").Doc(t)
	require.Equal(t, 1, doc.Find("#nav-logout").Length(), "a restored page has its navbar")
	require.Equal(t, 1, doc.Find("footer").Length(), "a restored page has its footer")
	doc = b.get("/dashboard/credits", "HX-Request", "true").Doc(t)
	require.Zero(t, doc.Find("#nav-logout").Length(), "a fragment request gets the content alone")
}

// A history restore of a page that needs a session, once the session has
// ended, is answered with a plain redirect to sign in: htmx's restore does
// not follow HX-Redirect and swapped in the empty 204 (a blank page).
func TestHistoryRestoreOfASignedOutPageRedirects(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	r := ta.browser().get("/dashboard/credits", "HX-Request", "true", "HX-History-Restore-Request", "true")
	require.Equal(t, http.StatusSeeOther, r.Status)
	require.Empty(t, r.Header.Get("HX-Redirect"))
	require.True(t, strings.HasPrefix(r.Header.Get("Location"), "/login"), "Location %q", r.Header.Get("Location"))
	// A plain htmx request still gets HX-Redirect.
	r = ta.browser().get("/dashboard/credits", "HX-Request", "true")
	require.Equal(t, http.StatusNoContent, r.Status)
	require.True(t, strings.HasPrefix(r.Header.Get("HX-Redirect"), "/login"))
}
