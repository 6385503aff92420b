package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Accessibility of the server-rendered pages: names, labels, landmarks,
// focus and announcements that screen readers and keyboards depend on.
// Helpers here start with a11y so that they cannot collide with other
// files of the package.

// a11yTexts is the whitespace-normalised text (what a screen reader reads,
// visually hidden parts included) of each element matching sel.
func a11yTexts(doc *goquery.Document, sel string) []string {
	return doc.Find(sel).Map(func(_ int, s *goquery.Selection) string {
		return strings.Join(strings.Fields(s.Text()), " ")
	})
}

// a11yRequireDistinct fails when two of the names are the same, or when
// one does not start with the visible word.
func a11yRequireDistinct(t *testing.T, what, visible string, names []string) {
	t.Helper()
	require.GreaterOrEqual(t, len(names), 2, "%s: need two buttons to compare", what)
	seen := map[string]bool{}
	for _, n := range names {
		if !strings.HasPrefix(n, visible) {
			t.Errorf("%s: a button reads %q, want it to start with %q", what, n, visible)
		}
		if seen[n] {
			t.Errorf("%s: two buttons read %q: a screen reader's list of buttons cannot tell them apart", what, n)
		}
		seen[n] = true
	}
}

// a11yLabelled reports whether a form control has a name: aria-label, or
// a <label for> its id.
func a11yLabelled(doc *goquery.Document, control *goquery.Selection) bool {
	if strings.TrimSpace(control.AttrOr("aria-label", "")) != "" {
		return true
	}
	id := control.AttrOr("id", "")
	return id != "" && strings.TrimSpace(doc.Find(`label[for="`+id+`"]`).Text()) != ""
}

// Repeated buttons (Use, Buy, Revoke) each say what they act on.
func TestUIRepeatedButtonsHaveDistinctNames(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "a11y-resize", Cost: 1})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "a11y-render", Cost: 2})
	u, _ := ta.userWithKey(storetest.UserOpts{})
	_, _, err := ta.store.CreateAPIKey(context.Background(), u.ID, "second")
	require.NoError(t, err)
	b := ta.signIn(u.Email)

	services := b.get("/services").Doc(t)
	a11yRequireDistinct(t, "/services", "Use", a11yTexts(services, `#service-cards form button[type="submit"]`))
	// What the browser test and htmx rely on stays.
	require.Equal(t, 1, services.Find(`#use-form-a11y-resize button[data-keep-focus]`).Length(), "the Use button lost data-keep-focus")
	if got := strings.TrimSpace(services.Find(`#use-form-a11y-resize button .is-sr-only`).Text()); !strings.Contains(got, "a11y-resize") {
		t.Errorf("the hidden context of the Use button is %q, want the service's name", got)
	}
	// The visible word is still just Use.
	visible := services.Find(`#use-form-a11y-resize button`).Clone()
	visible.Find(".is-sr-only").Remove()
	require.Equal(t, "Use", strings.TrimSpace(visible.Text()))

	buy := b.get("/dashboard/buy-credits").Doc(t)
	a11yRequireDistinct(t, "/dashboard/buy-credits", "Buy", a11yTexts(buy, `.pack button[type="submit"]`))

	keys := b.get("/settings/api-keys").Doc(t)
	a11yRequireDistinct(t, "/settings/api-keys summaries", "Revoke", a11yTexts(keys, `tr.api-key details > summary`))
	a11yRequireDistinct(t, "/settings/api-keys buttons", "Revoke", a11yTexts(keys, `tr.api-key form button[type="submit"]`))
}

// An unverified user is told in so many words why Use is disabled, not
// only in a disabled button's tooltip; the disabled buttons are named too.
func TestUIServicesSayWhyAnUnverifiedUserCannotUseThem(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "a11y-one", Cost: 1})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "a11y-two", Cost: 1})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{Unverified: true})

	doc := b.get("/services").Doc(t)
	note := acctText(doc, "#services-needs-verification")
	require.Contains(t, note, "Confirm your email address", "no visible reason the services cannot be used")
	// Above the list, where it is read before the disabled buttons.
	require.Equal(t, 1, doc.Find("#services-needs-verification ~ #service-cards").Length(), "the sentence is not above the services")
	a11yRequireDistinct(t, "/services (unverified)", "Use", a11yTexts(doc, `#service-cards button[disabled]`))

	_, verified := acctNewUserSignedIn(ta, storetest.UserOpts{})
	if n := verified.get("/services").Doc(t).Find("#services-needs-verification").Length(); n != 0 {
		t.Error("a verified user is told to confirm their address")
	}
}

// The admin search and filters have names; the radios of Direction are a
// group named by a legend, not a label pointing at nothing.
func TestUIAdminControlsAreLabelled(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	_, b := whAdmin(t, ta)

	users := b.get("/admin/users").Doc(t)
	search := users.Find(`input[name="q"]`)
	require.Equal(t, 1, search.Length())
	if !a11yLabelled(users, search) {
		t.Error("/admin/users: the search box has only a placeholder for a name")
	}

	webhooks := b.get("/admin/webhooks").Doc(t)
	for _, name := range []string{"type", "outcome"} {
		sel := webhooks.Find(`#webhook-filter select[name="` + name + `"]`)
		require.Equal(t, 1, sel.Length(), "no %s filter", name)
		if !a11yLabelled(webhooks, sel) {
			t.Errorf("/admin/webhooks: the %s filter has no label", name)
		}
	}

	credits := b.get(fmt.Sprintf("/admin/users/%d/credits", u.ID)).Doc(t)
	radios := credits.Find(`#adjust-form input[type="radio"][name="direction"]`)
	require.Equal(t, 2, radios.Length())
	radios.Each(func(_ int, r *goquery.Selection) {
		fs := r.Closest("fieldset")
		if fs.Length() != 1 {
			t.Errorf("the %s radio is not inside a fieldset", r.AttrOr("value", "?"))
			return
		}
		if got := strings.TrimSpace(fs.ChildrenFiltered("legend").Text()); got != "Direction" {
			t.Errorf("the %s radio's group is named %q, want Direction", r.AttrOr("value", "?"), got)
		}
	})
	// Every label of the form names a control: for= a real id, or wraps one.
	credits.Find("#adjust-form label").Each(func(_ int, l *goquery.Selection) {
		if f := l.AttrOr("for", ""); f != "" {
			if credits.Find("#"+f).Length() != 1 {
				t.Errorf("label %q is for #%s, which is not on the page", strings.TrimSpace(l.Text()), f)
			}
			return
		}
		if l.Find("input, select, textarea").Length() == 0 {
			t.Errorf("label %q names no control", strings.TrimSpace(l.Text()))
		}
	})
}

// The admin tabs say which one is shown (not by colour alone) and wrap on
// a narrow screen.
func TestUIAdminTabsMarkTheCurrentOne(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, b := whAdmin(t, ta)
	for _, path := range []string{"/admin", "/admin/users", "/admin/analytics", "/admin/webhooks", "/admin/audit"} {
		doc := b.get(path).Doc(t)
		tabs := doc.Find(".tabs")
		require.Equal(t, 1, tabs.Length(), "%s: no admin tabs", path)
		current := tabs.Find(`[aria-current="page"]`)
		if current.Length() != 1 || current.AttrOr("href", "") != path {
			t.Errorf("%s: the tab marked current is %v", path, current.Map(func(_ int, s *goquery.Selection) string { return s.AttrOr("href", "?") }))
		}
		if !strings.Contains(strings.ReplaceAll(tabs.Find("ul").AttrOr("style", "")+" "+tabs.Find("ul").AttrOr("class", ""), " ", ""), "flex-wrap:wrap") {
			t.Errorf("%s: the tabs do not wrap on a narrow screen", path)
		}
	}
}

// The simulated checkout has one top-level heading.
func TestUISimulatorPageHasOneH1(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	checkout := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}}), ta.URL+"/simulator/checkout/")

	doc := b.get(checkout[len(ta.URL):]).Doc(t)
	h1 := doc.Find("h1")
	require.Equal(t, 1, h1.Length(), "the simulated checkout has %d h1", h1.Length())
	require.NotEmpty(t, strings.TrimSpace(h1.Text()))
}

// A list that fits on one page has no pager: an empty navigation landmark
// is announced for nothing.
func TestUIOnePageListsHaveNoEmptyPager(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, b := uiOneOfEachList(t, ta)

	for path, br := range map[string]*browser{
		"/dashboard/credits": ta.signIn(u.Email), fmt.Sprintf("/admin/users/%d", u.ID): b,
		"/admin/audit": b, "/admin/webhooks": b, "/admin/users?q=" + url.QueryEscape(u.Email): b,
	} {
		doc := br.get(path).Doc(t)
		require.NotZero(t, doc.Find("table tbody tr").Length(), "%s: no rows to page", path)
		doc.Find("nav.pagination").Each(func(_ int, nav *goquery.Selection) {
			t.Errorf("%s: a pager (%q) on a list of one page, holding %d links", path, nav.AttrOr("aria-label", ""), nav.Find("a").Length())
		})
	}
}

// Revoking a key takes a second step (a native <details>, no JavaScript)
// that says what it does.
func TestUIRevokingAKeyAsksFirst(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, _ := ta.userWithKey(storetest.UserOpts{})

	doc := ta.signIn(u.Email).get("/settings/api-keys").Doc(t)
	form := doc.Find(`tr.api-key form[action$="/revoke"]`)
	require.Equal(t, 1, form.Length(), "no revoke form")
	require.Equal(t, "post", strings.ToLower(form.AttrOr("method", "")))
	details := form.Closest("details")
	require.Equal(t, 1, details.Length(), "the revoke button is one click away: not inside a <details>")
	if _, open := details.Attr("open"); open {
		t.Error("the confirmation is open before it was asked for")
	}
	require.True(t, strings.HasPrefix(acctText(doc, "tr.api-key details > summary"), "Revoke"), "the summary says %q", acctText(doc, "tr.api-key details > summary"))
	require.Equal(t, 0, doc.Find("tr.api-key details > summary button, tr.api-key details > summary form").Length(), "the summary itself submits")
	require.Contains(t, strings.Join(strings.Fields(form.Text()), " "), "stop working", "the confirmation does not say what revoking does")
}

// A new key wraps rather than running off a phone's screen, and has a Copy
// button (Alpine's copy component, shown only where the clipboard works).
func TestUINewKeyWrapsAndHasACopyButton(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	r := ta.signIn(u.Email).post("/settings/api-keys", url.Values{"name": {"phone app"}, "form_key": {"k1"}})
	require.Equal(t, http.StatusOK, r.Status)
	doc := r.Doc(t)

	key := doc.Find("#new-key")
	require.Equal(t, 1, key.Length())
	style := strings.ReplaceAll(key.AttrOr("style", ""), " ", "")
	for _, want := range []string{"word-break:break-all", "white-space:pre-wrap"} {
		if !strings.Contains(style, want) {
			t.Errorf("#new-key lacks %s (style %q)", want, style)
		}
	}
	require.Equal(t, "text", key.AttrOr("x-ref", ""), "the copy component does not know what to copy")
	scope := key.Closest(`[x-data="copy"]`)
	require.Equal(t, 1, scope.Length(), "#new-key is not inside x-data=\"copy\"")
	button := scope.Find("button")
	require.Equal(t, 1, button.Length(), "no Copy button")
	for attr, want := range map[string]string{"type": "button", "x-show": "available", "@click": "copy", "x-text": "copyLabel"} {
		if got := button.AttrOr(attr, ""); got != want {
			t.Errorf("the Copy button's %s is %q, want %q", attr, got, want)
		}
	}
	if _, ok := button.Attr("x-cloak"); !ok {
		t.Error("the Copy button shows before Alpine knows whether the clipboard works")
	}
	// The example of the API scrolls inside its box.
	if !strings.Contains(strings.ReplaceAll(doc.Find("pre:has(#api-example)").AttrOr("style", ""), " ", ""), "overflow-x:auto") {
		t.Error("the API example does not scroll inside its box")
	}
}

// The checkout status is inside a live region that survives its own
// polling (it replaces itself with outerHTML), so its change is read out.
func TestUICheckoutStatusIsAnnounced(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	uiPayments(t, ta, u.ID, 1)
	b := ta.signIn(u.Email)
	session := fmt.Sprintf("cs_test_ui_%d_0", u.ID)

	doc := b.get("/dashboard/buy-credits/success?session_id=" + session).Doc(t)
	status := doc.Find("#checkout-status")
	require.Equal(t, 1, status.Length())
	require.Equal(t, "outerHTML", status.AttrOr("hx-swap", ""), "the status no longer polls as this test expects")
	live := status.Parent()
	if live.AttrOr("aria-live", "") != "polite" {
		t.Fatalf("the status's parent <%s id=%q> is not aria-live=polite", goquery.NodeName(live), live.AttrOr("id", ""))
	}
	// What polling swaps in is the status alone: the live region stays.
	part := b.get("/dashboard/buy-credits/status?session_id="+session, "HX-Request", "true")
	require.Equal(t, http.StatusOK, part.Status)
	fragment := part.Doc(t)
	require.Equal(t, 1, fragment.Find("#checkout-status").Length())
	if id := live.AttrOr("id", ""); id != "" && fragment.Find("#"+id).Length() != 0 {
		t.Errorf("the polled fragment replaces the live region #%s itself", id)
	}
	// A poll names the state it shows: unchanged, nothing is sent (204),
	// so nothing is swapped and read out again; changed, the new state is.
	poll := status.AttrOr("hx-get", "")
	require.Contains(t, poll, "shown=pending")
	require.Equal(t, http.StatusNoContent, b.get(poll, "HX-Request", "true").Status)
	require.Equal(t, http.StatusOK, b.get("/dashboard/buy-credits/status?session_id="+session+"&shown=pending-slow", "HX-Request", "true").Status)
}

// The credit history and the audit log show the exact time, not only in a
// tooltip, in a <time> element a machine can read.
func TestUIDatesAreShownExactly(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	admin, b := whAdmin(t, ta)
	_, err := ta.store.Adjust(context.Background(), store.Adjustment{UserID: u.ID, Delta: 5, Actor: &admin.ID, Reason: "a row for the audit log", Via: "web"})
	require.NoError(t, err)

	shown := regexp.MustCompile(`^\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2} UTC$`)
	check := func(where string, cell *goquery.Selection) {
		t.Helper()
		tm := cell.Find("time[datetime]")
		if tm.Length() != 1 {
			t.Errorf("%s: the first cell %q has no <time datetime>", where, strings.TrimSpace(cell.Text()))
			return
		}
		at, err := time.Parse(time.RFC3339, tm.AttrOr("datetime", ""))
		if err != nil || time.Since(at) > time.Hour || time.Since(at) < -time.Minute {
			t.Errorf("%s: datetime=%q is not this moment in RFC 3339 (%v)", where, tm.AttrOr("datetime", ""), err)
		}
		if text := strings.TrimSpace(tm.Text()); !shown.MatchString(text) {
			t.Errorf("%s: the visible time is %q, want like 26 Nov 2026 11:45 UTC", where, text)
		}
		if !strings.Contains(cell.Text(), "ago") && !strings.Contains(cell.Text(), "just now") {
			t.Errorf("%s: the relative time is gone: %q", where, strings.TrimSpace(cell.Text()))
		}
	}
	hist := ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Find("#history tr.history-item")
	require.NotZero(t, hist.Length())
	hist.Each(func(i int, row *goquery.Selection) { check(fmt.Sprintf("history row %d", i+1), row.Find("td").First()) })

	audit := b.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t).Find("#audit tr.audit-entry")
	require.NotZero(t, audit.Length())
	audit.Each(func(i int, row *goquery.Selection) { check(fmt.Sprintf("audit row %d", i+1), row.Find("td").First()) })
}

// Text colours that fall below 4.5:1 on white are replaced by the darker
// shades of Bulma's palette.
func TestUITextColoursHaveContrast(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	_, err := ta.store.Adjust(context.Background(), store.Adjustment{UserID: u.ID, Delta: -3, Actor: &admin.ID, Reason: "a removal", Via: "web"})
	require.NoError(t, err)
	b := ta.signIn(u.Email)

	doc := b.get("/dashboard/credits").Doc(t)
	amounts := doc.Find("#history tr.history-item td.has-text-right")
	require.GreaterOrEqual(t, amounts.Length(), 2)
	amounts.Each(func(_ int, td *goquery.Selection) {
		want := "has-text-success-dark"
		if strings.HasPrefix(strings.TrimSpace(td.Text()), "-") {
			want = "has-text-danger-dark"
		}
		if !td.HasClass(want) {
			t.Errorf("the amount %q is %q, want %s", strings.TrimSpace(td.Text()), td.AttrOr("class", ""), want)
		}
	})

	settings := b.get("/settings").Doc(t)
	h2 := settings.Find("h2").FilterFunction(func(_ int, s *goquery.Selection) bool { return strings.TrimSpace(s.Text()) == "Delete account" })
	require.Equal(t, 1, h2.Length())
	if h2.HasClass("has-text-danger") || !h2.HasClass("has-text-danger-dark") {
		t.Errorf("the Delete account heading is %q, want has-text-danger-dark", h2.AttrOr("class", ""))
	}

	r := b.get("/no-such-page-" + strconv.Itoa(int(u.ID)))
	acctRequireStatus(t, r, http.StatusNotFound)
	notFound := r.Doc(t)
	if n := notFound.Find("#error-page .has-text-grey-light").Length(); n != 0 {
		t.Errorf("the 404 page has %d light grey texts", n)
	}
}

// a11yContrast is the WCAG contrast ratio of two #rrggbb (or #rgb) colours.
func a11yContrast(t *testing.T, a, b string) float64 {
	t.Helper()
	lum := func(hex string) float64 {
		hex = strings.TrimPrefix(hex, "#")
		if len(hex) == 3 {
			hex = string([]byte{hex[0], hex[0], hex[1], hex[1], hex[2], hex[2]})
		}
		require.Len(t, hex, 6, "colour %q", hex)
		var c [3]float64
		for i := range 3 {
			v, err := strconv.ParseUint(hex[2*i:2*i+2], 16, 8)
			require.NoError(t, err)
			s := float64(v) / 255
			if s <= 0.03928 {
				c[i] = s / 12.92
			} else {
				c[i] = math.Pow((s+0.055)/1.055, 2.4)
			}
		}
		return 0.2126*c[0] + 0.7152*c[1] + 0.0722*c[2]
	}
	la, lb := lum(a), lum(b)
	if la < lb {
		la, lb = lb, la
	}
	return (la + 0.05) / (lb + 0.05)
}

// The emails' buttons and footers are readable: 4.5:1 at least.
func TestUIEmailColoursHaveContrast(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("..", "..", "workers", "templates", "email", "*.html"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	button := regexp.MustCompile(`background:\s*(#[0-9a-fA-F]{3,6});\s*color:\s*(#[0-9a-fA-F]{3,6})`)
	color := regexp.MustCompile(`(?:^|[;"\s])color:\s*(#[0-9a-fA-F]{3,6})`)
	buttons := 0
	for _, f := range files {
		body, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range button.FindAllStringSubmatch(string(body), -1) {
			buttons++
			if c := a11yContrast(t, m[1], m[2]); c < 4.5 {
				t.Errorf("%s: a button's %s on %s is %.1f:1", filepath.Base(f), m[2], m[1], c)
			}
		}
		// Text on the white page.
		for _, m := range color.FindAllStringSubmatch(button.ReplaceAllString(string(body), ""), -1) {
			if c := a11yContrast(t, m[1], "#fff"); c < 4.5 {
				t.Errorf("%s: text in %s on white is %.1f:1", filepath.Base(f), m[1], c)
			}
		}
	}
	require.NotZero(t, buttons, "no email button found to check")
}

// A form sent back with errors puts the focus on its first invalid field
// (autofocus), which names its error (aria-describedby): focus does not
// drop to the page's top, and the error is read out.
func TestUIFailedFormFocusesTheFirstInvalidField(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	acct, b := acctNewUserSignedIn(ta, storetest.UserOpts{})
	_, admin := whAdmin(t, ta)

	focused := func(t *testing.T, what string, r response, wantID string) {
		t.Helper()
		acctRequireStatus(t, r, http.StatusUnprocessableEntity)
		doc := r.Doc(t)
		auto := doc.Find("[autofocus]")
		if auto.Length() != 1 || auto.AttrOr("id", "") != wantID {
			t.Errorf("%s: autofocus is on %v, want only #%s", what, auto.Map(func(_ int, s *goquery.Selection) string { return "#" + s.AttrOr("id", "?") }), wantID)
			return
		}
		if d := auto.AttrOr("aria-describedby", ""); d == "" || strings.TrimSpace(doc.Find("#"+d).Text()) == "" {
			t.Errorf("%s: the focused field does not name its error (aria-describedby=%q)", what, d)
		}
	}

	// Nothing is focused on a page without errors.
	require.Zero(t, b.get("/settings").Doc(t).Find("[autofocus]").Length(), "/settings focuses a field before any error")

	focused(t, "wrong current password", b.post("/settings/password", url.Values{"current_password": {"wrong password"}, "new_password": {"1234567"}}), "f-current_password")
	focused(t, "short new password", b.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {"1234567"}}), "f-new_password")
	focused(t, "delete without DELETE", b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"nope"}}), "f-confirm")
	focused(t, "key without a name", b.post("/settings/api-keys", url.Values{"name": {""}}), "f-name")
	focused(t, "sign-up with a short password", acctSignup(ta.browser(), "a11y-"+strconv.Itoa(int(acct.ID))+"@example.com", "1234567"), "f-password")

	target := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	credits := fmt.Sprintf("/admin/users/%d/credits", target.ID)
	nonce := admin.get(credits).Doc(t).Find(`input[name="nonce"]`).AttrOr("value", "")
	// Amount and reason both wrong: the amount, first, has the focus.
	focused(t, "adjustment without amount or reason", admin.post(credits, url.Values{"direction": {"add"}, "amount": {""}, "kind": {"admin"}, "reason": {""}, "nonce": {nonce}}), "f-amount")
	focused(t, "adjustment without a reason", admin.post(credits, url.Values{"direction": {"add"}, "amount": {"5"}, "kind": {"admin"}, "reason": {""}, "nonce": {nonce}}), "f-reason")
}

// In a real browser, a failed boosted submit (htmx swaps the page in)
// leaves the focus on the invalid field; at a phone's width the admin tabs
// and a new API key fit the screen, and the key's Copy button shows.
func TestUIBrowserFocusAndPhoneWidth(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	ctx := uiPhone(t, ta, admin.Email)

	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/settings"),
		chromedp.WaitVisible(css(`#password-form`)),
		chromedp.Poll[chromedp.Void](`window.htmx !== undefined`),
		chromedp.SendKeys(css(`#f-current_password`), storetest.DefaultPassword),
		chromedp.SendKeys(css(`#f-new_password`), "1234567"),
		chromedp.Click(css(`#password-form button[type="submit"]`)),
		chromedp.WaitVisible(css(`#password-form .field-error[data-field="new_password"]`)),
		chromedp.Poll[chromedp.Void](`document.activeElement && document.activeElement.id === "f-new_password"`),
	)
	if err != nil {
		t.Fatalf("after a failed change of password the focus is not on the new password: %v", err)
	}

	overflow := func(what, expr string) {
		t.Helper()
		px, err := chromedp.Run(ctx, chromedp.Evaluate[int](expr))
		if err != nil {
			t.Fatal(err)
		}
		if px > 0 {
			t.Errorf("at 375 px %s is %d px too wide", what, px)
		}
	}
	for _, path := range []string{"/admin", "/admin/users", "/admin/analytics", "/admin/webhooks"} {
		if err := chromedp.Do(ctx, chromedp.Navigate(ta.URL+path), chromedp.WaitVisible(css(`.tabs`))); err != nil {
			t.Fatalf("open %s: %v", path, err)
		}
		overflow(path+" (tabs)", `(function(){var e=document.querySelector(".tabs");return e.scrollWidth-e.clientWidth;})()`)
		overflow(path+" (page)", `document.documentElement.scrollWidth - document.documentElement.clientWidth`)
	}
	// A service named and described in one unbroken word wraps on the
	// home page as on /services.
	long := strings.Repeat("Averylongunbrokenword", 4)
	_, err = ta.store.AddServiceIfMissing(t.Context(), store.Service{Slug: "long-one", Name: long, Description: long + long, CreditCost: 1_000_000, Active: true})
	require.NoError(t, err)
	for _, path := range []string{"/", "/services"} {
		if err := chromedp.Do(ctx, chromedp.Navigate(ta.URL+path), chromedp.WaitVisible(css(`#main`))); err != nil {
			t.Fatalf("open %s: %v", path, err)
		}
		overflow(path+" with a long word", `document.documentElement.scrollWidth - document.documentElement.clientWidth`)
	}

	err = chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/settings/api-keys"),
		chromedp.WaitVisible(css(`#apikey-form`)),
		chromedp.SendKeys(css(`#f-name`), "phone"),
		chromedp.Submit(css(`#apikey-form`)),
		chromedp.WaitVisible(css(`#new-key`)),
		chromedp.WaitVisible(css(`#new-key-box button`)),
	)
	if err != nil {
		t.Fatalf("the new key's Copy button does not show: %v", err)
	}
	overflow("the new key", `(function(){var e=document.getElementById("new-key");return e.scrollWidth-e.clientWidth;})()`)
	overflow("/settings/api-keys with a new key", `document.documentElement.scrollWidth - document.documentElement.clientWidth`)
	if label, err := chromedp.Run(ctx, chromedp.Text(css(`#new-key-box button`))); err != nil || strings.TrimSpace(label) != "Copy" {
		t.Errorf("the Copy button says %q (%v)", label, err)
	}
}
