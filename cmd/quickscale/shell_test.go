package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/PuerkitoBio/goquery"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
)

// acctAssets are the vendored files the layout loads, by selector.
var acctAssets = []struct {
	selector, attr, path, contentType string
}{
	{`link[rel="stylesheet"]`, "href", "vendor/bulma/bulma.min.css", "text/css"},
	{`script[src*="/vendor/htmx/"]`, "src", "vendor/htmx/htmx.min.js", "javascript"},
	{`script[src*="/vendor/alpinejs/"]`, "src", "vendor/alpinejs/alpine.min.js", "javascript"},
}

func TestLayoutLoadsVendoredAssetsUnderContentHashedNamesCachedForAYear(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	b := ta.browser()
	doc := b.get("/").Doc(t)
	name := regexp.MustCompile(`^/static/([0-9a-f]{12})/(.+)$`)

	for _, a := range acctAssets {
		ref := doc.Find("head "+a.selector).AttrOr(a.attr, "")
		m := name.FindStringSubmatch(ref)
		require.NotNil(t, m, "%s is loaded from %q, not a content-hashed name", a.path, ref)
		require.Equal(t, a.path, m[2])

		r := b.get(ref)

		acctRequireStatus(t, r, http.StatusOK)
		require.Equal(t, "public, max-age=31536000, immutable", r.Header.Get("Cache-Control"), ref)
		require.Contains(t, r.Header.Get("Content-Type"), a.contentType, ref)
		sum := sha256.Sum256([]byte(r.Body))
		require.Equal(t, hex.EncodeToString(sum[:])[:12], m[1], "the name of %s does not follow its content", a.path)
	}
}

func TestStaticAssetUnderStaleNameIsOnlyBrieflyCached(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	r := ta.browser().get("/static/000000000000/vendor/bulma/bulma.min.css")

	acctRequireStatus(t, r, http.StatusOK)
	require.Equal(t, "public, max-age=60", r.Header.Get("Cache-Control"))
	acctErrorPage(t, ta.browser().get("/static/000000000000/vendor/bulma/nothing.css"), http.StatusNotFound)
}

func TestVendoredAssetsArePinnedAndShipWithTheirLicences(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	f, err := os.Open("../../web/static/vendor/VERSIONS")
	require.NoError(t, err)
	defer f.Close()
	dirs := map[string]string{"bulma": "bulma", "htmx.org": "htmx", "@alpinejs/csp": "alpinejs"}
	assets := map[string]string{"bulma": "bulma.min.css", "htmx": "htmx.min.js", "alpinejs": "alpine.min.js"}
	seen := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		dir, ok := dirs[strings.TrimSpace(acctFirst(fields))]
		if !ok || len(fields) < 4 {
			continue
		}
		seen++
		version := fields[1]
		require.Regexp(t, `^\d+\.\d+\.\d+$`, version, "%s is not pinned to an exact version", fields[0])

		asset := ta.browser().get("/static/pinned/vendor/" + dir + "/" + assets[dir])
		acctRequireStatus(t, asset, http.StatusOK)
		require.Contains(t, asset.Body, version, "the served %s is not version %s", fields[0], version)
		licence := ta.browser().get("/static/pinned/vendor/" + dir + "/LICENSE")
		acctRequireStatus(t, licence, http.StatusOK)
		require.Greater(t, len(strings.TrimSpace(licence.Body)), 100, "%s licence is empty", fields[0])
	}
	require.NoError(t, sc.Err())
	require.Equal(t, len(dirs), seen, "VERSIONS does not list every vendored package")
}

func acctFirst(fields []string) string {
	if len(fields) == 0 {
		return ""
	}
	return fields[0]
}

func TestNavigationForAnonymousVisitorOffersSignUpAndSignIn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	doc := ta.browser().get("/about").Doc(t)

	require.Equal(t, "/signup", doc.Find("nav #nav-signup").AttrOr("href", ""))
	require.Equal(t, "/login", doc.Find("nav #nav-login").AttrOr("href", ""))
	require.Equal(t, 0, doc.Find("nav #nav-logout, nav #nav-settings, nav #nav-admin").Length())
	require.Equal(t, 0, doc.Find(`nav a[href="/dashboard"]`).Length())
}

func TestNavigationForSignedInUserOffersAccountAndSignOut(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "member@example.com"})

	doc := b.get("/about").Doc(t)

	require.Equal(t, "member@example.com", acctText(doc, "nav #nav-settings"))
	require.Equal(t, "/logout", doc.Find("nav #nav-logout").Closest("form").AttrOr("action", ""))
	require.Equal(t, "post", doc.Find("nav #nav-logout").Closest("form").AttrOr("method", ""))
	require.Equal(t, 1, doc.Find(`nav a[href="/dashboard"]`).Length())
	require.Equal(t, 0, doc.Find("nav #nav-signup, nav #nav-login, nav #nav-admin").Length())
}

func TestNavigationForAdminLinksToAdmin(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Admin: true})

	doc := b.get("/dashboard").Doc(t)

	require.Equal(t, "/admin", doc.Find("nav #nav-admin").AttrOr("href", ""))
	require.Equal(t, 1, doc.Find("nav #nav-logout").Length())
}

func TestPublicPagesAreServedInTheLayout(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	for path, heading := range map[string]string{"/": "Credits for your SaaS", "/about": "About QuickScale", "/contact": "Contact us"} {
		r := ta.browser().get(path)

		acctRequireStatus(t, r, http.StatusOK)
		doc := r.Doc(t)
		require.Contains(t, acctText(doc, "#main h1.title"), heading, path)
		require.True(t, strings.HasSuffix(acctText(doc, "head title"), "QuickScale"), "%s title %q", path, acctText(doc, "head title"))
		require.Equal(t, 1, doc.Find("nav.navbar").Length(), path)
		require.Equal(t, 1, doc.Find(`footer a[href="/contact"]`).Length(), path)
	}
}

func TestDashboardShowsEmailVerificationStateAndCreditsSummary(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "summary@example.com"})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 1500})

	r := b.get("/dashboard")

	acctRequireStatus(t, r, http.StatusOK)
	doc := r.Doc(t)
	require.Equal(t, "summary@example.com", acctText(doc, "#account-email"))
	require.Equal(t, "Email confirmed", acctText(doc, "#verification-state"))
	require.Equal(t, "1,500", acctText(doc, "#balance-summary #balance-total"))
}

func TestDashboardSendsVisitorsToSignIn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	mustRedirect(t, ta.browser().get("/dashboard"), "/login?next=%2Fdashboard")
}

func TestAdminLandingServesAdmins(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Admin: true})

	r := b.get("/admin")

	acctRequireStatus(t, r, http.StatusOK)
	require.Equal(t, "Admin", acctText(r.Doc(t), "#main h1.title"))
}

func TestAdminLandingRefusesUsersWithFriendly403(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "plain@example.com"})

	r := b.get("/admin")

	doc := acctErrorPage(t, r, http.StatusForbidden)
	require.Equal(t, "Access denied", acctText(doc, "#error-page h1"))
	require.Equal(t, "/dashboard", doc.Find("#error-page a.button").AttrOr("href", ""))
	require.Equal(t, "plain@example.com", acctText(doc, "nav #nav-settings"), "the 403 page lost the visitor's navigation")
}

func TestAdminLandingSendsVisitorsToSignIn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	mustRedirect(t, ta.browser().get("/admin"), "/login?next=%2Fadmin")
}

func TestUnknownPageIsFriendly404InTheLayout(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "lost@example.com"})

	r := b.get("/no/such/page")

	doc := acctErrorPage(t, r, http.StatusNotFound)
	require.Equal(t, "Page not found", acctText(doc, "#error-page h1"))
	require.Equal(t, "/", doc.Find("#error-page a.button").AttrOr("href", ""))
	require.Equal(t, "lost@example.com", acctText(doc, "nav #nav-settings"), "the 404 page lost the visitor's navigation")
}

func TestServerErrorIsFriendly500WithoutInternalDetails(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	acctExec(ta, `ALTER TABLE services RENAME TO services_gone`)

	r := ta.browser().get("/")

	doc := acctErrorPage(t, r, http.StatusInternalServerError)
	require.Equal(t, "Something went wrong", acctText(doc, "#error-page h1"))
	require.Equal(t, "We hit an unexpected problem and have been told about it. Please try again in a moment.", acctText(doc, "#error-message"))
	require.Contains(t, ta.logs.String(), `relation \"services\" does not exist`, "the cause was not logged")
}

func TestContactFormSendsMessageToOperator(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: map[string]string{"CONTACT_EMAIL": "ops@quickscale.example"}})

	r := ta.browser().post("/contact", url.Values{"name": {"Ada"}, "email": {"ada@example.com"}, "message": {"Do you offer volume discounts?"}})

	acctRequireStatus(t, r, http.StatusOK)
	require.NotEmpty(t, acctText(r.Doc(t), "#contact-sent"))
	mail := ta.waitMail("ops@quickscale.example", "Contact form: Ada")
	require.Contains(t, mail.Text, "ada@example.com")
	require.Contains(t, mail.Text, "Do you offer volume discounts?")
}

func TestContactFormShowsErrorsNextToFieldsKeepingInput(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	r := ta.browser().post("/contact", url.Values{"name": {"Grace"}, "email": {"grace-at-example"}, "message": {"Too short"}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc := r.Doc(t)
	require.NotEmpty(t, acctFieldError(doc, "#contact-form", "email"))
	require.NotEmpty(t, acctFieldError(doc, "#contact-form", "message"))
	require.Empty(t, acctFieldError(doc, "#contact-form", "name"))
	name, _ := acctInput(doc, "#contact-form", "name")
	email, _ := acctInput(doc, "#contact-form", "email")
	require.Equal(t, "Grace", name)
	require.Equal(t, "grace-at-example", email)
	require.Equal(t, "Too short", doc.Find(`#contact-form textarea[name="message"]`).Text())
	require.Empty(t, acctEmailJobs(ta))
}

// A name with line breaks could forge lines of the mail the operator gets.
func TestContactFormRefusesANameOnSeveralLines(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	r := ta.browser().post("/contact", url.Values{"name": {"Mallory\r\nFrom: Support <support@example.com>"}, "email": {"m@example.com"}, "message": {"hello there friend"}})
	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	require.Contains(t, acctFieldError(r.Doc(t), "#contact-form", "name"), "one line")
	require.Empty(t, acctEmailJobs(ta))
}

func TestContactFormHoneypotIsThankedAndDropped(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	require.Equal(t, 1, ta.browser().get("/contact").Doc(t).Find(`#contact-form .honeypot input[name="website"]`).Length(), "no honeypot field")

	r := ta.browser().post("/contact", url.Values{"name": {"Bot"}, "email": {"bot@example.com"},
		"message": {"Cheap watches, visit my site!"}, "website": {"https://spam.example"}})

	acctRequireStatus(t, r, http.StatusOK)
	require.NotEmpty(t, acctText(r.Doc(t), "#contact-sent"))
	require.Empty(t, acctEmailJobs(ta), "the honeypot message was sent")
}

func TestContactFormIsRateLimitedPerIP(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	form := url.Values{"name": {"Eager"}, "email": {"eager@example.com"}, "message": {"Hello, is anybody there?"}}
	for range 5 {
		acctRequireStatus(t, ta.browser().post("/contact", form), http.StatusOK)
	}

	r := ta.browser().post("/contact", form)

	acctRequireTooMany(t, r, 3600)
	require.Len(t, acctEmailJobs(ta), 5)
}

func TestContactFormPrefillsSignedInUsersEmail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "known@example.com"})

	v, _ := acctInput(b.get("/contact").Doc(t), "#contact-form", "email")

	require.Equal(t, "known@example.com", v)
}

// The contact form posts with htmx and swaps the answer (or the part of it
// that hx-select names) in place of its hx-target: each answer htmx swaps
// must bring what the visitor needs to see.
func TestContactFormHtmxAnswersCarryWhatIsSwappedIn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	form := ta.browser().get("/contact").Doc(t).Find("#contact-form")
	post, target := form.AttrOr("hx-post", ""), form.AttrOr("hx-target", "")
	require.NotEmpty(t, post, "the contact form is not enhanced with hx-post")
	require.NotEmpty(t, target, "the contact form has no hx-target")
	selected := func(r response) *goquery.Selection {
		doc := r.Doc(t)
		require.Equal(t, 0, doc.Find("nav.navbar").Length(), "htmx got the whole layout")
		if sel := form.AttrOr("hx-select", ""); sel != "" {
			return doc.Find(sel)
		}
		return doc.Selection
	}
	bad := url.Values{"name": {"Htmx"}, "email": {"bad"}, "message": {"short"}}

	invalid := ta.browser().post(post, bad, "HX-Request", "true")
	acctRequireStatus(t, invalid, http.StatusUnprocessableEntity)
	part := selected(invalid)
	require.Equal(t, 1, part.Find(target).AddSelection(part.Filter(target)).Length(), "the answer does not replace %s", target)
	require.NotEmpty(t, strings.TrimSpace(part.Find(`#contact-form .field-error[data-field="email"]`).Text()), "the swapped part lacks the errors")

	for range 4 {
		acctRequireStatus(t, ta.browser().post(post, bad, "HX-Request", "true"), http.StatusUnprocessableEntity)
	}
	limited := ta.browser().post(post, bad, "HX-Request", "true")
	acctRequireStatus(t, limited, http.StatusTooManyRequests)
	require.Equal(t, "429", selected(limited).Find("#error-page").AttrOr("data-status", ""), "the swapped part lacks the 429 page")
}

// A visitor signed out while a page polls or sends a form in place (htmx)
// is sent to sign in with the page as next, not the fragment it asked for
// (a purchase's status, which after sign-in showed a bare fragment or
// nothing); a form sent while signed out also says it was not done, by
// the address, so that it stores no session.
func TestSignedOutHtmxRequestsComeBackToTheirPage(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	page := "/dashboard/buy-credits/success?session_id=cs_x"
	anon := ta.browser()
	r := anon.get("/dashboard/buy-credits/status?session_id=cs_x&shown=pending",
		"HX-Request", "true", "HX-Current-URL", ta.URL+page)
	require.Equal(t, "/login?next="+url.QueryEscape(page), r.Header.Get("HX-Redirect"), "a poll")

	r = anon.post("/services/some-service/use", url.Values{"idempotency_key": {"k"}},
		"HX-Request", "true", "HX-Current-URL", ta.URL+"/services")
	require.Equal(t, "/login?next=%2Fservices&undone=1", r.Header.Get("HX-Redirect"), "Use")
	login := anon.get("/login?next=%2Fservices&undone=1")
	require.Contains(t, acctText(login.Doc(t), "#flash"), "You were signed out, so that was not done.")
	require.NotContains(t, acctText(anon.get("/login?next=%2Fservices").Doc(t), "#main"), "You were signed out", "a page asked for was not undone")

	// A boosted navigation is a page of its own: it is next.
	r = anon.get("/dashboard/credits", "HX-Request", "true", "HX-Boosted", "true", "HX-Current-URL", ta.URL+"/services")
	require.Equal(t, "/login?next=%2Fdashboard%2Fcredits", r.Header.Get("HX-Redirect"))

	// A boosted form (an admin's adjustment, a new API key) comes back to
	// the page it was sent from, not its action; so does a form sent
	// without JavaScript, by its Referer.
	r = anon.post("/admin/users/7/credits", url.Values{"delta": {"5"}},
		"HX-Request", "true", "HX-Boosted", "true", "HX-Current-URL", ta.URL+"/admin/users/7/credits?from=search")
	require.Equal(t, "/login?next="+url.QueryEscape("/admin/users/7/credits?from=search")+"&undone=1", r.Header.Get("HX-Redirect"), "a boosted form")
	r = anon.post("/settings/api-keys", url.Values{"name": {"ci"}}, "Referer", ta.URL+"/settings/api-keys")
	require.Equal(t, http.StatusSeeOther, r.Status)
	require.Equal(t, "/login?next=%2Fsettings%2Fapi-keys&undone=1", r.Header.Get("Location"), "a form without JavaScript")

	// None of this stored a session: anyone can send forms signed out, and
	// each used to store one (for its notice) for twelve hours.
	require.Zero(t, acctCount(ta, `SELECT count(*) FROM sessions`), "signed-out requests stored sessions")
}

// A form's address reached by GET (the address bar or a bookmark, on the
// page a form without JavaScript left) shows the page the form is on: it
// never repeats the form's action, and is not a 405.
func TestFormAddressesReachedByGetShowTheirPage(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	for path, page := range map[string]string{
		"/services/some-service/use": "/services",
		"/settings/password":         "/settings",
		"/settings/delete":           "/settings",
	} {
		r := b.get(path)
		require.Equal(t, http.StatusSeeOther, r.Status, path)
		require.Equal(t, page, r.Header.Get("Location"), path)
	}
}
