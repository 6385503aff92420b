package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Markup that phones, keyboards, screen readers and browsers without
// JavaScript depend on. Helpers here start with ui so that they cannot
// collide with other files of the package.

// uiPayments records n pending payments of the user.
func uiPayments(t *testing.T, ta *testApp, userID int64, n int) {
	t.Helper()
	ctx := context.Background()
	packs, err := ta.store.Packs(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, packs)
	for i := range n {
		_, err := ta.store.CreatePayment(ctx, store.NewPayment{UserID: userID, Pack: packs[0], CheckoutSessionID: fmt.Sprintf("cs_test_ui_%d_%d", userID, i)})
		require.NoError(t, err)
	}
}

// uiHelpOf is the text of the help lines (not the error) under a form's field.
func uiHelpOf(doc *goquery.Document, form, field string) []string {
	return doc.Find(form + ` .field:has(input[name="` + field + `"]) p.help:not(.field-error)`).Map(func(_ int, s *goquery.Selection) string {
		return strings.TrimSpace(s.Text())
	})
}

// On a phone a wide table scrolls inside Bulma's .table-container rather
// than making the whole page scroll sideways.
func TestPaymentsTableScrollsInsideItsContainer(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	uiPayments(t, ta, u.ID, 1)

	doc := ta.signIn(u.Email).get("/dashboard/payments").Doc(t)

	require.Equal(t, 1, doc.Find("table#payments").Length(), "no payments table")
	if doc.Find(".table-container > table#payments").Length() != 1 {
		t.Fatal("the payments table is not inside a .table-container")
	}
}

func TestAPIKeysTableScrollsInsideItsContainerAndNamesEveryColumn(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, _ := ta.userWithKey(storetest.UserOpts{})

	doc := ta.signIn(u.Email).get("/settings/api-keys").Doc(t)

	require.Equal(t, 1, doc.Find("table#api-keys tr.api-key").Length(), "no key listed")
	if doc.Find(".table-container > table#api-keys").Length() != 1 {
		t.Fatal("the API keys table is not inside a .table-container")
	}
	doc.Find("table#api-keys thead th").Each(func(i int, th *goquery.Selection) {
		if strings.TrimSpace(th.Text()) == "" {
			t.Errorf("header cell %d has no name for screen readers", i+1)
		}
	})
	if got := strings.TrimSpace(doc.Find("table#api-keys thead th:last-child .is-sr-only").Text()); got != "Actions" {
		t.Errorf("the revoke column's hidden label is %q, want Actions", got)
	}
}

// The payments pager is a labelled landmark, like the credit history's.
func TestPaymentsPaginationIsLabelled(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	uiPayments(t, ta, u.ID, 21) // one more than a page
	b := ta.signIn(u.Email)

	doc := b.get("/dashboard/payments").Doc(t)
	older := doc.Find("#payments-older")
	require.Equal(t, 1, older.Length(), "no link to older payments")
	nav := older.Closest("nav.pagination")
	require.Equal(t, 1, nav.Length(), "the older link is not in the pager")

	if got := nav.AttrOr("aria-label", ""); got != "payment pages" {
		t.Errorf("the pager's aria-label is %q, want %q", got, "payment pages")
	}
	// The second page's pager (Newest and Newer, no Older) is labelled too.
	second := b.get(older.AttrOr("href", "")).Doc(t)
	require.Equal(t, "/dashboard/payments", second.Find("nav.pagination #payments-newest").AttrOr("href", ""), "no way back to the newest payments")
	require.Zero(t, second.Find("#payments-older").Length())
	if got := second.Find("nav.pagination").AttrOr("aria-label", ""); got != "payment pages" {
		t.Errorf("the second page's pager is labelled %q", got)
	}
	// Newer from the second page is the first page again.
	ids := func(doc *goquery.Document) []string {
		return doc.Find("#payments .payment-id").Map(func(_ int, s *goquery.Selection) string { return s.Text() })
	}
	newer, ok := second.Find("#payments-newer").Attr("href")
	require.True(t, ok, "no link to newer payments")
	back := b.get(newer).Doc(t)
	require.Equal(t, ids(doc), ids(back))
	require.Zero(t, back.Find("#payments-newer, #payments-newest").Length(), "the newest page links to no newer one")
}

// The burger is a real button: it is in the tab order, says whether the
// menu is open and which element it opens.
func TestNavBurgerIsAButtonThatControlsTheMenu(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	pages := map[string]*goquery.Document{
		"signed out": ta.browser().get("/").Doc(t),
		"signed in":  ta.signIn(u.Email).get("/dashboard").Doc(t),
	}
	for who, doc := range pages {
		burger := doc.Find(".navbar-burger")
		require.Equal(t, 1, burger.Length(), "%s: no burger", who)
		if tag := goquery.NodeName(burger); tag != "button" {
			t.Errorf("%s: the burger is a <%s>, want a <button>", who, tag)
		}
		if typ := burger.AttrOr("type", ""); typ != "button" {
			t.Errorf("%s: the burger's type is %q, want button (not a form submit)", who, typ)
		}
		controls := burger.AttrOr("aria-controls", "")
		if controls == "" || doc.Find("#"+controls+".navbar-menu").Length() != 1 {
			t.Errorf("%s: aria-controls=%q does not name the navbar menu", who, controls)
		}
		if got, ok := burger.Attr("aria-expanded"); !ok || got != "false" {
			t.Errorf("%s: aria-expanded is %q (present %v), want false while the menu is closed", who, got, ok)
		}
		if burger.AttrOr(":aria-expanded", "") == "" {
			t.Errorf("%s: aria-expanded does not follow the menu's state", who)
		}
		// Without JavaScript the menu is shown at every width.
		if !strings.Contains(doc.Find("head noscript").Text(), ".navbar-menu{display:block}") {
			t.Errorf("%s: no menu for visitors without JavaScript", who)
		}
	}
}

// The navbar says which of its links is the page shown.
func TestNavMarksTheCurrentPage(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	signedIn := ta.signIn(u.Email)
	for _, tc := range []struct {
		b    *browser
		path string
	}{
		{signedIn, "/dashboard/payments"},
		{signedIn, "/dashboard/credits"},
		{signedIn, "/settings"},
		{ta.browser(), "/about"},
	} {
		doc := tc.b.get(tc.path).Doc(t)
		current := doc.Find(`nav.navbar [aria-current="page"]`)
		if current.Length() != 1 || current.AttrOr("href", "") != tc.path {
			t.Errorf("%s: the current link is %v, want the one to %s", tc.path, current.Map(func(_ int, s *goquery.Selection) string { return s.AttrOr("href", "?") }), tc.path)
		}
	}
	// A page with no link of its own marks its section's link, as the
	// section ("true"), not as the page shown.
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	asAdmin := ta.signIn(admin.Email)
	for _, tc := range []struct {
		b             *browser
		path, section string
	}{
		{signedIn, "/settings/api-keys", "/settings"},
		{signedIn, "/dashboard/buy-credits/cancel", "/dashboard/buy-credits"},
		{asAdmin, "/admin/users", "/admin"},
		{asAdmin, fmt.Sprintf("/admin/users/%d", u.ID), "/admin"},
	} {
		doc := tc.b.get(tc.path).Doc(t)
		if n := doc.Find(`nav.navbar [aria-current="page"]`).Length(); n != 0 {
			t.Errorf("%s marks %d navbar links as the page shown", tc.path, n)
		}
		current := doc.Find(`nav.navbar [aria-current="true"]`)
		if current.Length() != 1 || current.AttrOr("href", "") != tc.section {
			t.Errorf("%s: the section marked is %v, want %s", tc.path, current.Map(func(_ int, s *goquery.Selection) string { return s.AttrOr("href", "?") }), tc.section)
		}
	}
	// An error page is in no section.
	for _, path := range []string{"/admin/nope", "/settings/nope", "/dashboard/payments/999999/receipt"} {
		r := asAdmin.get(path)
		require.Equal(t, http.StatusNotFound, r.Status, path)
		if n := r.Doc(t).Find(`nav.navbar [aria-current]`).Length(); n != 0 {
			t.Errorf("%s (not found) marks %d navbar links", path, n)
		}
	}
	// A form's POST answered with its page marks that page's link as the
	// page shown, whatever its address.
	r := signedIn.post("/settings/password", url.Values{"current_password": {"not the password"}, "new_password": {"another good password"}})
	require.Equal(t, http.StatusUnprocessableEntity, r.Status, r.Body)
	current := r.Doc(t).Find(`nav.navbar [aria-current]`)
	if current.Length() != 1 || current.AttrOr("href", "") != "/settings" || current.AttrOr("aria-current", "") != "page" {
		t.Errorf("POST /settings/password marks %v", current.Map(func(_ int, s *goquery.Selection) string {
			return s.AttrOr("href", "?") + "=" + s.AttrOr("aria-current", "")
		}))
	}
	// Marked by more than colour: the layout underlines the marked link.
	if css := signedIn.get("/dashboard").Doc(t).Find("head style").Text(); !strings.Contains(css, ".navbar-item[aria-current]{text-decoration:underline") {
		t.Errorf("no underline for the marked navbar link in the layout's style: %s", css)
	}
}

// Deleting the account needs no JavaScript: the confirmation form is in a
// native <details>, closed until asked for, and open again with its errors.
func TestDeleteAccountFormWorksWithoutJavaScript(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, b := acctNewUserSignedIn(ta, storetest.UserOpts{})

	doc := b.get("/settings").Doc(t)
	form := doc.Find("details > #delete-form")
	require.Equal(t, 1, form.Length(), "the delete form is not inside a <details>")
	details := form.Parent()
	if got := acctText(doc, "details:has(#delete-form) > summary"); got != "Delete my account…" {
		t.Errorf("the disclosure's summary says %q", got)
	}
	if _, open := details.Attr("open"); open {
		t.Error("the confirmation step is open before it was asked for")
	}
	// Nothing on the way from the page to the form needs Alpine to show it.
	form.AddSelection(form.ParentsUntil("body")).Each(func(_ int, s *goquery.Selection) {
		for _, a := range []string{"x-cloak", "x-show", ":class", "x-bind:class"} {
			if _, ok := s.Attr(a); ok {
				t.Errorf("<%s id=%q> has %s: it needs JavaScript to show the form", goquery.NodeName(s), s.AttrOr("id", ""), a)
			}
		}
	})
	for _, field := range []string{"current_password", "confirm"} {
		require.Equal(t, 1, form.Find(`input[name="`+field+`"]`).Length(), "no %s field", field)
	}
	require.Equal(t, 1, form.Find(`#f-delete-current_password`).Length())

	r := b.post("/settings/delete", url.Values{"current_password": {storetest.DefaultPassword}, "confirm": {"nope"}})

	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	again := r.Doc(t)
	if _, open := again.Find("details:has(#delete-form)").Attr("open"); !open {
		t.Error("the form with the error is folded away")
	}
}

// An error replaces the field's help: the two mostly say the same thing
// ("Use at least 8 characters." above "At least 8 characters.").
func TestFieldErrorReplacesItsHelpText(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})

	b := ta.browser()
	fresh := b.get("/signup").Doc(t)
	require.Equal(t, []string{"At least 8 characters."}, uiHelpOf(fresh, "#signup-form", "password"), "the help before any error")
	r := acctSignup(b, "short@example.com", "1234567")
	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc := r.Doc(t)
	require.NotEmpty(t, acctFieldError(doc, "#signup-form", "password"), "no error for a short password")
	if help := uiHelpOf(doc, "#signup-form", "password"); len(help) != 0 {
		t.Errorf("the sign-up password shows its help %q under the error %q", help, acctFieldError(doc, "#signup-form", "password"))
	}

	_, signedIn := acctNewUserSignedIn(ta, storetest.UserOpts{})
	r = signedIn.post("/settings/password", url.Values{"current_password": {storetest.DefaultPassword}, "new_password": {"1234567"}})
	acctRequireStatus(t, r, http.StatusUnprocessableEntity)
	doc = r.Doc(t)
	require.NotEmpty(t, acctFieldError(doc, "#password-form", "new_password"))
	if help := uiHelpOf(doc, "#password-form", "new_password"); len(help) != 0 {
		t.Errorf("the new password shows its help %q under the error", help)
	}
}

// uiPhone opens headless Chromium at a phone's width (375 px), signed in
// as the user; the browser closes when the test ends.
func uiPhone(t *testing.T, ta *testApp, email string) context.Context {
	t.Helper()
	ctx := browserContext(t, chromium(t))
	err := chromedp.Do(ctx,
		chromedp.EmulateViewport(375, 812),
		browserSignIn(ta.URL, email),
	)
	if err != nil {
		t.Fatalf("sign in at phone width: %v", err)
	}
	return ctx
}

// At a phone's width, a wide table scrolls inside its container: the page
// itself does not scroll sideways.
func TestBrowserPhonePagesWithTablesDoNotScrollSideways(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, _ := ta.userWithKey(storetest.UserOpts{})
	uiPayments(t, ta, u.ID, 3)
	// Long words people type: a key's name, a service's name and
	// description, an adjustment's reason, wrap rather than widen the page.
	long := strings.Repeat("W", 100)
	_, _, err := ta.store.CreateAPIKey(context.Background(), u.ID, long)
	require.NoError(t, err)
	for _, name := range []string{"second", "loader"} {
		_, _, err := ta.store.CreateAPIKey(context.Background(), u.ID, name)
		require.NoError(t, err)
	}
	// Keys in use show when they were last used.
	_, err = ta.store.Pool().Exec(context.Background(), `UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE user_id = $1`, u.ID)
	require.NoError(t, err)
	// A use of a service with an ordinary name, beside the long words.
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	_, _, err = ta.store.SetService(context.Background(), nil, store.ServiceChange{Slug: "transcription", Name: v1Ptr("Transcription"), CreditCost: v1Ptr[int64](1)}, "test")
	require.NoError(t, err)
	_, _, err = ta.store.Consume(context.Background(), store.ConsumeRequest{UserID: u.ID, Service: "transcription", IdempotencyKey: "t1"})
	require.NoError(t, err)
	_, err = ta.store.Adjust(context.Background(), store.Adjustment{UserID: u.ID, Delta: 5, Reason: strings.Repeat("R", 480)})
	require.NoError(t, err)
	name, desc := strings.Repeat("N", 100), strings.Repeat("D", 600)
	_, _, err = ta.store.SetService(context.Background(), nil, store.ServiceChange{Slug: "long-words", Name: &name, Description: &desc, CreditCost: v1Ptr[int64](1000)}, "test")
	require.NoError(t, err)
	ctx := uiPhone(t, ta, u.Email)

	for _, page := range []struct{ path, row string }{
		{"/settings/api-keys", "#api-keys tr.api-key"},
		{"/dashboard/payments", "#payments tr.payment"},
		{"/services", "#use-form-long-words"},
		{"/dashboard/credits", "tr.history-item"},
	} {
		if err := chromedp.Do(ctx, chromedp.Navigate(ta.URL+page.path), chromedp.WaitVisible(chromedp.CSS(page.row))); err != nil {
			t.Fatalf("open %s: %v", page.path, err)
		}
		overflow, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth - document.documentElement.clientWidth`))
		if err != nil {
			t.Fatal(err)
		}
		if overflow > 0 {
			t.Errorf("at 375 px %s is %d px wider than the screen", page.path, overflow)
		}
		// Nor does a table inside its scroll box: the long word wraps.
		wide, err := chromedp.Run(ctx, chromedp.Evaluate[int](`Math.max(0, ...Array.from(document.querySelectorAll(".table-container")).map(function(e){return e.scrollWidth - e.clientWidth;}))`))
		require.NoError(t, err)
		if wide > 375 {
			t.Errorf("at 375 px a table of %s is %d px wider than its box", page.path, wide)
		}
	}
	// In the credit history and the list of keys only long words people
	// typed break mid-word: the words around them ("Credits added by
	// support") and ordinary names ("Transcription", a key "second") stay
	// whole, however long the text beside them (they broke as "Admi n
	// credi ts", "Transcri ption", "secon d").
	for _, page := range []struct{ path, cells string }{
		{"/dashboard/credits", "tr.history-item td"},
		{"/settings/api-keys", "#api-keys tr.api-key td"},
	} {
		require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(ta.URL+page.path), chromedp.WaitVisible(chromedp.CSS(page.cells))))
		broken, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(function(){var bad=[];document.querySelectorAll(`+"`"+page.cells+"`"+`).forEach(function(td){
  var w=document.createTreeWalker(td,NodeFilter.SHOW_TEXT),n;while((n=w.nextNode())){var re=/\S+/g,m;while((m=re.exec(n.data))){
    if(m[0].length>=30)continue;var r=document.createRange();r.setStart(n,m.index);r.setEnd(n,m.index+m[0].length);
    if(r.getClientRects().length>1)bad.push(m[0]);}}});return bad.join(" ");})()`))
		require.NoError(t, err)
		require.Empty(t, broken, "words broken across lines in %s at 375 px", page.path)
	}
	// Each key's Revoke button is on the screen without scrolling the list
	// sideways.
	off, err := chromedp.Run(ctx, chromedp.Evaluate[int](`Array.from(document.querySelectorAll("#api-keys summary")).filter(function(b){return b.getBoundingClientRect().right > window.innerWidth;}).length`))
	require.NoError(t, err)
	require.Zero(t, off, "Revoke buttons off the screen at 375 px")
	// Using the service: the answer ("not enough credits") wraps too.
	err = chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.WaitVisible(chromedp.CSS(`#use-form-long-words button`)),
		chromedp.Click(chromedp.CSS(`#use-form-long-words button`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="insufficient"]`)),
	)
	require.NoError(t, err)
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth - document.documentElement.clientWidth`))
	require.NoError(t, err)
	if overflow > 0 {
		t.Errorf("at 375 px /services with the answer to Use is %d px wider than the screen", overflow)
	}
}

// At a phone's width the menu is behind the burger: Tab reaches it, and
// Enter opens the menu and says so.
func TestBrowserPhoneBurgerOpensTheMenuFromTheKeyboard(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	ctx := uiPhone(t, ta, u.Email)
	err := chromedp.Do(ctx,
		chromedp.WaitNotVisible(chromedp.CSS(`#nav-menu a[href="/dashboard/credits"]`)),
		// Alpine has set the navbar up: a key pressed before would be lost.
		chromedp.Poll[chromedp.Void](`window.Alpine !== undefined && "open" in Alpine.$data(document.querySelector("nav.navbar"))`),
		// Tab from the brand link: the burger comes next.
		chromedp.Focus(chromedp.CSS(`.navbar-brand a.navbar-item`)),
		chromedp.KeyEvent("\t"),
	)
	if err != nil {
		t.Fatal(err)
	}
	focused, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.activeElement === document.querySelector(".navbar-burger")`))
	if err != nil {
		t.Fatal(err)
	}
	if !focused {
		t.Fatal("Tab from the brand link skips the burger")
	}

	err = chromedp.Do(ctx,
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(chromedp.CSS(`#nav-menu a[href="/dashboard/credits"]`)),
	)
	if err != nil {
		t.Fatalf("Enter on the burger does not open the menu: %v", err)
	}
	expanded, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(`.navbar-burger`), "aria-expanded"))
	if err != nil {
		t.Fatal(err)
	}
	if expanded.Value != "true" {
		t.Errorf("with the menu open, aria-expanded is %q", expanded.Value)
	}
}

// Every table of the site scrolls inside its own container at phone width,
// not the whole page; every pagination is labelled.
func TestEveryTableScrollsInsideItsContainer(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u, b := uiOneOfEachList(t, ta)
	pages := map[string]*browser{
		"/dashboard/credits": ta.signIn(u.Email), "/dashboard/payments": ta.signIn(u.Email),
		"/admin/users": b, fmt.Sprintf("/admin/users/%d", u.ID): b, "/admin/audit": b, "/admin/webhooks": b,
	}
	for path, br := range pages {
		doc := br.get(path).Doc(t)
		tables := doc.Find("table")
		if tables.Length() == 0 {
			t.Errorf("%s: no table to check", path)
		}
		tables.Each(func(_ int, tb *goquery.Selection) {
			if !tb.Parent().HasClass("table-container") {
				t.Errorf("%s: table#%s is not inside a .table-container", path, tb.AttrOr("id", "?"))
			}
			// The box scrolls sideways on a phone: the keyboard must reach
			// it (Tab, then the arrow keys), and a screen reader name it.
			box := tb.Parent()
			if box.AttrOr("tabindex", "") != "0" || box.AttrOr("role", "") != "region" || box.AttrOr("aria-label", "") == "" {
				t.Errorf("%s: the scroll box of table#%s is not a focusable, named region", path, tb.AttrOr("id", "?"))
			}
		})
		doc.Find("nav.pagination").Each(func(_ int, nav *goquery.Selection) {
			if nav.AttrOr("aria-label", "") == "" {
				t.Errorf("%s: a pagination without aria-label", path)
			}
		})
	}
}

// On a phone the services are one column: the Use result, above them, is
// scrolled into view when the button used was far below it.
func TestBrowserPhoneUseResultComesIntoView(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	for i := range 6 {
		storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: fmt.Sprintf("svc-%d", i), Cost: 1})
	}
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	ctx := uiPhone(t, ta, u.Email)
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.WaitVisible(chromedp.CSS(`#use-form-svc-5 button`)),
		chromedp.ScrollIntoView(chromedp.CSS(`#use-form-svc-5 button`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	below, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById("use-result").getBoundingClientRect().bottom < 0`))
	if err != nil || !below {
		t.Fatalf("the result area should be out of sight before Use (%v)", err)
	}
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#use-form-svc-5 button`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="used"]`)),
		chromedp.Poll[chromedp.Void](`(function(){var r=document.getElementById("use-outcome").getBoundingClientRect();return r.top >= 0 && r.bottom <= window.innerHeight;})()`),
	)
	if err != nil {
		t.Fatalf("the Use result did not come into view: %v", err)
	}
	// The button, disabled while its request ran, has the keyboard focus
	// back (without scrolling the result away).
	err = chromedp.Do(ctx, chromedp.Poll[chromedp.Void](`document.activeElement === document.querySelector("#use-form-svc-5 button") && !document.activeElement.disabled`))
	if err != nil {
		t.Fatalf("the Use button did not get the focus back: %v", err)
	}
}

// Use on a service retired since the page was shown redraws the list
// without it: the keyboard focus goes to the answer's message, not to the
// first remaining service's Use button (where Enter would use that one).
func TestBrowserUseOfARetiredServiceDoesNotFocusAnotherService(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	first := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "aaa-first", Cost: 1})
	retired := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "zzz-retired", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	ctx := uiPhone(t, ta, u.Email)
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.WaitVisible(chromedp.CSS(`#use-form-`+retired+` button`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-form-`+first+` button`)),
	)
	require.NoError(t, err)
	inactive := false
	_, _, err = ta.store.SetService(context.Background(), nil, store.ServiceChange{Slug: retired, Active: &inactive}, "test")
	require.NoError(t, err)
	err = chromedp.Do(ctx,
		chromedp.Focus(chromedp.CSS(`#use-form-`+retired+` button`)),
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="gone"]`)),
		chromedp.Poll[chromedp.Void](`document.activeElement === document.getElementById("use-outcome")`),
	)
	if err != nil {
		focused, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.activeElement.outerHTML.slice(0, 200)`))
		t.Fatalf("the focus did not go to the answer (%v); it is on %s", err, focused)
	}
	require.Zero(t, whCount(t, ta, `SELECT count(*) FROM usages WHERE user_id = $1`, u.ID), "nothing was used")
}

// A service added while /services is open appears with the next Use, in
// place, without htmx errors, and the focus stays on the button used.
func TestBrowserUseShowsAServiceAddedSinceThePageWasLoaded(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	first := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "aaa-first", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	ctx := uiPhone(t, ta, u.Email)
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.WaitVisible(chromedp.CSS(`#use-form-`+first+` button`)),
		chromedp.Poll[chromedp.Void](`document.getElementById("use-form-`+first+`")["htmx-internal-data"] !== undefined`),
		chromedp.Evaluate[chromedp.Void](`window.oobErrors = 0; document.body.addEventListener("htmx:oobErrorNoTarget", function () { window.oobErrors++; })`),
	)
	require.NoError(t, err)
	added := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "mmm-added", Cost: 1})
	err = chromedp.Do(ctx,
		chromedp.Focus(chromedp.CSS(`#use-form-`+first+` button`)),
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="used"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-form-`+added+` button`)),
		chromedp.Poll[chromedp.Void](`document.activeElement === document.querySelector("#use-form-`+first+` button")`),
	)
	if err != nil {
		focused, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.activeElement.outerHTML.slice(0, 200)`))
		t.Fatalf("the new service or the focus (%v); the focus is on %s", err, focused)
	}
	oobErrors, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.oobErrors`))
	require.NoError(t, err)
	require.Zero(t, oobErrors, "htmx found no place for part of the answer")
	require.EqualValues(t, 1, whCount(t, ta, `SELECT count(*) FROM usages WHERE user_id = $1`, u.ID), "one use")
}

// uiOneOfEachList gives every list page one row: a user with a grant, a
// payment and an admin adjustment (the audit log), and a webhook event. It
// returns the user and an admin's browser.
func uiOneOfEachList(t *testing.T, ta *testApp) (store.User, *browser) {
	t.Helper()
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	uiPayments(t, ta, u.ID, 1)
	admin, b := whAdmin(t, ta)
	ctx := context.Background()
	_, err := ta.store.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 5, Actor: &admin.ID, Reason: "a row for the audit log", Via: "web"})
	require.NoError(t, err)
	_, err = ta.store.Pool().Exec(ctx, `INSERT INTO stripe_events (id, type, created, payload) VALUES ($1, 'customer.created', now(), '{}')`, whID("evt"))
	require.NoError(t, err)
	return u, b
}

// A new API key is shown once: htmx's history cache (sessionStorage) keeps
// no copy of the page that shows it, and Back asks the server again, which
// shows only the key's prefix.
func TestBrowserNewAPIKeyIsNotKeptInTheHistoryCache(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	ctx := uiPhone(t, ta, u.Email)
	var key string
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/settings/api-keys"),
		chromedp.WaitVisible(chromedp.CSS(`#apikey-form`)),
		chromedp.Poll[chromedp.Void](`document.getElementById("apikey-form")["htmx-internal-data"] !== undefined`),
		chromedp.SendKeys(chromedp.CSS(`#f-name`), "phone"),
		chromedp.Click(chromedp.CSS(`#apikey-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#new-key`)),
	)
	require.NoError(t, err)
	key, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("new-key").textContent.trim()`))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(key, store.APIKeyPrefix), "key %q", key)
	// Away through a boosted link (htmx snapshots the page it leaves), then Back.
	err = chromedp.Do(ctx,
		chromedp.Poll[chromedp.Void](`document.querySelector("a[href='/dashboard']")["htmx-internal-data"] !== undefined`),
		chromedp.Evaluate[chromedp.Void](`document.querySelector("a[href='/dashboard']").click()`),
		chromedp.Poll[chromedp.Void](`location.pathname === "/dashboard"`),
	)
	require.NoError(t, err)
	cached, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(sessionStorage)`))
	require.NoError(t, err)
	require.NotContains(t, cached, key, "htmx's history cache holds the key")
	err = chromedp.Do(ctx,
		chromedp.NavigateBack(),
		chromedp.Poll[chromedp.Void](`location.pathname === "/settings/api-keys" && document.querySelectorAll("#api-keys tr.api-key").length === 1`),
	)
	if err != nil {
		st, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + " | " + document.title + " | " + history.length + " | " + JSON.stringify(history.state)`))
		t.Fatalf("back: %v; %s", err, st)
	}
	html, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`))
	require.NoError(t, err)
	require.NotContains(t, html, key, "Back shows the key again")
	// The restored page's form makes a new key (its used form key is gone).
	err = chromedp.Do(ctx,
		chromedp.Poll[chromedp.Void](`document.getElementById("apikey-form")["htmx-internal-data"] !== undefined`),
		chromedp.SendKeys(chromedp.CSS(`#f-name`), "laptop"),
		chromedp.Click(chromedp.CSS(`#apikey-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`#new-key`)),
	)
	require.NoError(t, err, "a key made from the page Back restored")
	keys, _, err := ta.store.APIKeys(context.Background(), u.ID)
	require.NoError(t, err)
	require.Len(t, keys, 2)
}

// Back right after making a key restores the page as it was when its form
// was sent: that form's key was used, and a new key made from the
// restored page must not be refused as the same form sent again.
func TestBrowserKeyFormRestoredByBackMakesANewKey(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	ctx := uiPhone(t, ta, u.Email)
	create := func(name string) error {
		return chromedp.Do(ctx,
			chromedp.Poll[chromedp.Void](`document.getElementById("apikey-form") !== null && document.getElementById("apikey-form")["htmx-internal-data"] !== undefined && document.getElementById("new-key") === null`),
			chromedp.SendKeys(chromedp.CSS(`#f-name`), name),
			chromedp.Click(chromedp.CSS(`#apikey-form button[type=submit]`)),
			chromedp.WaitVisible(chromedp.CSS(`#new-key`)),
		)
	}
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(ta.URL+"/settings/api-keys")))
	require.NoError(t, create("first"))
	require.NoError(t, chromedp.Do(ctx, chromedp.NavigateBack()))
	if err := create("second"); err != nil {
		msg, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector("#apikey-form .form-message") || {}).textContent || ""`))
		t.Fatalf("no key from the page Back restored (%v): %q", err, msg)
	}
	keys, _, err := ta.store.APIKeys(context.Background(), u.ID)
	require.NoError(t, err)
	require.Len(t, keys, 2)
}

// uiSpender makes the services, then a user with 10 credits signed in at a
// phone's width, and counts the user's usages.
func uiSpender(t *testing.T, services ...storetest.ServiceOpts) (*testApp, store.User, context.Context, func() int) {
	t.Helper()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	for _, o := range services {
		storetest.NewService(t, ta.store, o)
	}
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	ctx := uiPhone(t, ta, u.Email)
	return ta, u, ctx, func() int { return whCount(t, ta, `SELECT count(*) FROM usages WHERE user_id = $1`, u.ID) }
}

// A double click on Use spends once: the answer (tens of milliseconds)
// brings fresh keys, and the second click, landing after it, was a second
// spend. A click once the form has cooled down spends again, and two
// submits of one form in the same instant spend once.
func TestBrowserDoubleClickOnUseSpendsOnce(t *testing.T) {
	t.Parallel()
	svc := "twice"
	ta, _, ctx, usages := uiSpender(t, storetest.ServiceOpts{Slug: svc, Cost: 1})
	form := `document.getElementById("use-form-` + svc + `")`
	// settled: no request of the form running and its cool-down over.
	settled := chromedp.Poll[chromedp.Void](`!` + form + `.classList.contains("htmx-request") && !` + form + `.hasAttribute("data-cooling")`)
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.Poll[chromedp.Void](form+` !== null && `+form+`["htmx-internal-data"] !== undefined`),
		chromedp.Click(chromedp.CSS(`#use-form-`+svc+` button`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="used"]`)),
		// The second click of the double click, after the answer.
		chromedp.Click(chromedp.CSS(`#use-form-`+svc+` button`)),
		settled,
	)
	require.NoError(t, err)
	require.Equal(t, 1, usages(), "a double click spent twice")

	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#use-form-`+svc+` button`)),
		chromedp.Poll[chromedp.Void](form+`.hasAttribute("data-cooling")`),
		settled,
	)
	require.NoError(t, err)
	require.Equal(t, 2, usages(), "a click after the cool-down did not spend")

	err = chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](form+`.requestSubmit(); `+form+`.requestSubmit();`),
		chromedp.Poll[chromedp.Void](form+`.hasAttribute("data-cooling")`),
		settled,
	)
	require.NoError(t, err)
	require.Equal(t, 3, usages(), "two submits at once")
	shown, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#balance-total`)))
	require.NoError(t, err)
	require.Equal(t, "7", strings.TrimSpace(shown))
}

// Back to a page showing the balance shows it as it is now, not as it
// was when the page was left (htmx kept a copy of the page for Back).
func TestBrowserBackShowsTheBalanceAsItIsNow(t *testing.T) {
	t.Parallel()
	svc := "back"
	ta, _, ctx, _ := uiSpender(t, storetest.ServiceOpts{Slug: svc, Cost: 3})
	link := `document.querySelector('a[href="/services"]')`
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/dashboard/credits"),
		chromedp.WaitVisible(chromedp.CSS(`#balance-total`)),
		// Through a boosted link, once htmx has taken it over.
		chromedp.Poll[chromedp.Void](link+` !== null && `+link+`["htmx-internal-data"] !== undefined`),
		chromedp.Evaluate[chromedp.Void](link+`.click()`),
		chromedp.Poll[chromedp.Void](`location.pathname === "/services" && document.getElementById("use-form-`+svc+`") !== null && document.getElementById("use-form-`+svc+`")["htmx-internal-data"] !== undefined`),
		chromedp.Click(chromedp.CSS(`#use-form-`+svc+` button`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="used"]`)),
		chromedp.NavigateBack(),
	)
	require.NoError(t, err)
	if err := pollAcrossLoads(ctx, 15*time.Second, `location.pathname === "/dashboard/credits" && document.getElementById("balance-total") !== null && document.getElementById("balance-total").textContent.trim() === "7"`); err != nil {
		shown, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.pathname + ": " + (document.getElementById("balance-total") || {}).textContent`))
		t.Fatalf("Back shows %q, want the balance 7: %v", shown, err)
	}
}

// A click on another service while a Use runs waits for its answer; if
// that answer redrew the list (it had changed), the waiting click is not
// sent, the page says so, and that button still works (it stayed "busy"
// for good, and every later click on it was ignored).
func TestBrowserUseQueuedBehindARedrawSaysItWasNotSent(t *testing.T) {
	t.Parallel()
	first, second, other := "aaa-first", "bbb-second", "ccc-other"
	ta, _, ctx, usages := uiSpender(t, storetest.ServiceOpts{Slug: first, Cost: 1},
		storetest.ServiceOpts{Slug: second, Cost: 1}, storetest.ServiceOpts{Slug: other, Cost: 1})
	form := func(slug string) string { return `document.getElementById("use-form-` + slug + `")` }
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.Poll[chromedp.Void](form(second)+` !== null && `+form(second)+`["htmx-internal-data"] !== undefined`),
	))
	renamed := "Renamed meanwhile"
	_, _, err := ta.store.SetService(context.Background(), nil, store.ServiceChange{Slug: other, Name: &renamed}, "test")
	require.NoError(t, err)
	err = chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](form(first)+`.querySelector("button").click(); `+form(second)+`.querySelector("button").click();`),
		chromedp.WaitVisible(chromedp.CSS(`#services-changed`)),
		chromedp.WaitVisible(chromedp.CSS(`#htmx-error`)),
	)
	require.NoError(t, err)
	msg, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#htmx-error`)))
	require.NoError(t, err)
	require.Contains(t, msg, "was not sent and nothing was charged")
	require.Equal(t, 1, usages())
	err = chromedp.Do(ctx,
		chromedp.Poll[chromedp.Void](`!`+form(second)+`.hasAttribute("data-busy")`),
		chromedp.Click(chromedp.CSS(`#use-form-`+second+` button`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="used"]`)),
		chromedp.Poll[chromedp.Void](`!`+form(second)+`.hasAttribute("data-busy")`),
	)
	require.NoError(t, err)
	require.Equal(t, 2, usages(), "the second service's button after the redraw")
}

// A Use whose answer comes after the page was left (a boosted link) does
// not leave its button dead when the page is opened again: it stayed
// "busy" for the rest of the tab.
func TestBrowserUseLeftInFlightDoesNotBlockItsButton(t *testing.T) {
	t.Parallel()
	svc := "slow"
	ta, u, ctx, usages := uiSpender(t, storetest.ServiceOpts{Slug: svc, Cost: 1})
	form := `document.getElementById("use-form-` + svc + `")`
	credits := `document.querySelector('a[href="/dashboard/credits"]')`
	services := `document.querySelector('a[href="/services"]')`
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.Poll[chromedp.Void](form+` !== null && `+form+`["htmx-internal-data"] !== undefined && `+credits+`["htmx-internal-data"] !== undefined`),
	))
	// The account is held (as by an admin's adjustment): the Use waits.
	blocker := storetest.HoldAccounts(t, ta.store.Pool(), u.ID)
	err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`#use-form-`+svc+` button`)),
		chromedp.Poll[chromedp.Void](form+`.hasAttribute("data-busy")`),
		chromedp.Evaluate[chromedp.Void](credits+`.click()`),
		chromedp.Poll[chromedp.Void](`location.pathname === "/dashboard/credits" && document.getElementById("use-form-`+svc+`") === null`),
	)
	require.NoError(t, err)
	require.NoError(t, blocker.Commit(context.Background()))
	storetest.WaitFor(t, "the Use to be made once the account is free", func() bool { return usages() == 1 })
	err = chromedp.Do(ctx,
		chromedp.Poll[chromedp.Void](services+` !== null && `+services+`["htmx-internal-data"] !== undefined`),
		chromedp.Evaluate[chromedp.Void](services+`.click()`),
		chromedp.Poll[chromedp.Void](`location.pathname === "/services" && `+form+` !== null && `+form+`["htmx-internal-data"] !== undefined && !`+form+`.hasAttribute("data-cooling")`),
		chromedp.Click(chromedp.CSS(`#use-form-`+svc+` button`)),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="used"]`)),
	)
	require.NoError(t, err, "Use after coming back to the page")
	require.Equal(t, 2, usages())
}

// Enter held down on a Use button spends once: key repeats are not
// clicks (one spend a second, each with a fresh key).
func TestBrowserEnterHeldDownOnUseSpendsOnce(t *testing.T) {
	t.Parallel()
	svc := "held"
	ta, _, ctx, usages := uiSpender(t, storetest.ServiceOpts{Slug: svc, Cost: 1})
	form := `document.getElementById("use-form-` + svc + `")`
	settled := chromedp.Poll[chromedp.Void](`!` + form + `.hasAttribute("data-busy") && !` + form + `.hasAttribute("data-cooling")`)
	enter := func(repeat bool) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, target *chromedp.Target) error {
			_, err := cdp.Call(ctx, target, input.DispatchKeyEvent, input.DispatchKeyEventParams{
				Type: input.DispatchKeyEventTypeKeyDown, Key: "Enter", Code: "Enter", Text: "\r",
				WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13, AutoRepeat: &repeat})
			return err
		})
	}
	err := chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/services"),
		chromedp.Poll[chromedp.Void](form+` !== null && `+form+`["htmx-internal-data"] !== undefined`),
		chromedp.Focus(chromedp.CSS(`#use-form-`+svc+` button`)),
		enter(false),
		chromedp.WaitVisible(chromedp.CSS(`#use-outcome[data-outcome="used"]`)),
		settled,
		// The key still down, repeating after the cool-down.
		enter(true),
		enter(true),
		settled,
	)
	require.NoError(t, err)
	require.Equal(t, 1, usages(), "a held Enter spent again")
}
