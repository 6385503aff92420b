package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/PuerkitoBio/goquery"
	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// signIn signs an existing user in with the default test password.
func (ta *testApp) signIn(email string) *browser {
	ta.t.Helper()
	b := ta.browser()
	mustRedirect(ta.t, b.post("/login", url.Values{"email": {email}, "password": {storetest.DefaultPassword}}), "/dashboard")
	return b
}

func serviceKey(t *testing.T, doc *goquery.Document, slug string) string {
	t.Helper()
	key, ok := doc.Find("#key-" + slug).Attr("value")
	if !ok || key == "" {
		t.Fatalf("no idempotency key for %s on the page", slug)
	}
	return key
}

func TestServicesPageListsActiveServicesWithCosts(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "resize", Cost: 3})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "retired", Cost: 3, Inactive: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	doc := ta.signIn(u.Email).get("/services").Doc(t)
	if got := doc.Find(`.service[data-service="resize"] .cost`).Text(); got != "3 credits" {
		t.Fatalf("resize cost shown as %q", got)
	}
	if doc.Find(`.service[data-service="retired"]`).Length() != 0 {
		t.Fatal("an inactive service is listed")
	}
}

// useWhileTheAccountIsHeld signs in a user with 100 credits on a
// /services page offering "render" (10 credits), and holds the user's
// account in a transaction, as a stuck request would, until release.
// It returns the Use button's key.
func useWhileTheAccountIsHeld(t *testing.T) (ta *testApp, b *browser, u store.User, key string, release func()) {
	t.Helper()
	ta = newTestApp(t, testAppOpts{NoWorkers: true})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 10})
	u = storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	b = ta.signIn(u.Email)
	key = serviceKey(t, b.get("/services").Doc(t), "render")
	return ta, b, u, key, holdAccount(t, ta, u.ID)
}

func requireNothingCharged(t *testing.T, ta *testApp, u store.User) {
	t.Helper()
	// Not before every spend the database was asked for has ended: one it
	// carried on with after the request was answered (its client gone)
	// would take the account once released, and be made then.
	storetest.WaitFor(t, "no spend left running in the database", func() bool {
		return whCount(t, ta, `SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND state <> 'idle' AND query LIKE '%ledger_consume%' AND pid <> pg_backend_pid()`) == 0
	})
	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 100, bal.Total, "nothing charged")
}

// A browser that leaves while its Use waits (here for an account a
// transaction holds) is not a server error: a 499 logged at info, no
// error line, nothing charged.
func TestUseAbandonedByTheBrowserIsNotAServerError(t *testing.T) {
	t.Parallel()
	ta, b, u, key, release := useWhileTheAccountIsHeld(t)
	req, err := http.NewRequest(http.MethodPost, b.url("/services/render/use"),
		strings.NewReader(url.Values{"idempotency_key": {key}}.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", ta.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	sendAndAbandon(t, ta, b.client, req)
	logs := ta.logs.String()
	require.Contains(t, logs, "request abandoned by the client")
	require.Contains(t, logs, "status=499")
	require.NotContains(t, logs, "level=ERROR")
	release()
	requireNothingCharged(t, ta, u)
}

// A use that runs into the request timeout (here waiting 30 s for an
// account a transaction holds) is a 503 to retry, as on the JSON API, not
// the "unexpected problem" page; nothing is charged.
func TestUseThatTimesOutIs503(t *testing.T) {
	t.Parallel()
	ta, b, u, key, release := useWhileTheAccountIsHeld(t)
	// A client that waits longer than the server's 30 s (the harness's
	// gives up at 30 s too).
	patient := *b.client
	patient.Timeout = 2 * time.Minute
	b.client = &patient
	r := b.post("/services/render/use", url.Values{"idempotency_key": {key}})
	require.Equal(t, http.StatusServiceUnavailable, r.Status)
	require.NotEmpty(t, r.Header.Get("Retry-After"))
	require.Contains(t, r.Doc(t).Find("#error-page h1").Text(), "That took too long")
	require.NotContains(t, ta.logs.String(), "level=ERROR msg=\"request failed\"")
	release()
	requireNothingCharged(t, ta, u)
}

func TestUseServiceWithHtmxUpdatesResultAndBalanceInPlace(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 10})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	exp := time.Now().Add(24 * time.Hour)
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 4, ExpiresAt: &exp})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 100})
	b := ta.signIn(u.Email)
	key := serviceKey(t, b.get("/services").Doc(t), "render")

	r := b.post("/services/render/use", url.Values{"idempotency_key": {key}}, "HX-Request", "true")
	require.Equal(t, http.StatusOK, r.Status, r.Body)
	doc := r.Doc(t)
	if doc.Find("nav.navbar").Length() != 0 {
		t.Fatal("htmx got the whole page, want a fragment")
	}
	if got := doc.Find("#use-outcome").AttrOr("data-outcome", ""); got != "used" {
		t.Fatalf("outcome %q", got)
	}
	var paid []string
	doc.Find(".paid-by").Each(func(_ int, s *goquery.Selection) {
		paid = append(paid, s.AttrOr("data-kind", "")+":"+strings.TrimSpace(s.Text()))
	})
	if strings.Join(paid, ",") != "subscription:4 subscription,pack:6 pack" {
		t.Fatalf("paid by %q, want subscription first then pack", paid)
	}
	if got := doc.Find(`#balance-wrap[hx-swap-oob] #balance-total`).Text(); got != "94" {
		t.Fatalf("out-of-band balance %q, want 94", got)
	}
	fresh := doc.Find(`input#key-render[hx-swap-oob]`).AttrOr("value", "")
	if fresh == "" || fresh == key {
		t.Fatalf("the form did not get a fresh idempotency key (%q)", fresh)
	}
}

func TestUseServiceTwiceWithTheSameKeyChargesOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 10})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	b := ta.signIn(u.Email)
	key := serviceKey(t, b.get("/services").Doc(t), "render")
	first := b.post("/services/render/use", url.Values{"idempotency_key": {key}})
	require.Equal(t, http.StatusOK, first.Status)
	// A resubmitted form (reload, double click) replays.
	again := b.post("/services/render/use", url.Values{"idempotency_key": {key}})
	require.Equal(t, http.StatusOK, again.Status)
	if got := again.Doc(t).Find("#use-outcome").AttrOr("data-outcome", ""); got != "replayed" {
		t.Fatalf("second submit outcome %q, want replayed", got)
	}
	// It says the balance it shows is from then, not now.
	require.Contains(t, again.Doc(t).Find("#use-outcome").Text(), "nothing was charged now")
	// A post without its key is refused, not charged under a new one.
	r := b.post("/services/render/use", url.Values{})
	require.Equal(t, http.StatusBadRequest, r.Status)
	require.Contains(t, r.Doc(t).Find("#error-message").Text(), "reload the page")
	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 90, bal.Total)
}

// A service retired while its page was open: Use charges nothing, says so,
// and the page's list of services is refreshed in place (htmx) or in full.
func TestUseServiceRetiredSinceThePageShowedIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "old-render", Cost: 1})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "new-render", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	b := ta.signIn(u.Email)
	page := b.get("/services").Doc(t)
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "old-render", Cost: 1, Inactive: true})
	use := url.Values{"idempotency_key": {serviceKey(t, page, "old-render")}, "cost": {"1"}}
	for _, htmx := range []bool{true, false} {
		var r response
		if htmx {
			r = b.post("/services/old-render/use", use, "HX-Request", "true")
		} else {
			r = b.post("/services/old-render/use", use)
		}
		require.Equal(t, http.StatusGone, r.Status, r.Body)
		doc := r.Doc(t)
		require.Equal(t, "gone", doc.Find("#use-outcome").AttrOr("data-outcome", ""), "htmx %v", htmx)
		require.Contains(t, doc.Find("#use-outcome").Text(), "is no longer offered")
		cards := doc.Find("#service-cards")
		if htmx {
			require.Equal(t, "innerHTML", cards.AttrOr("hx-swap-oob", ""), "the list is swapped in")
		}
		require.Zero(t, cards.Find(`.service[data-service="old-render"]`).Length(), "the retired service is gone from the list")
		require.Equal(t, 1, cards.Find(`.service[data-service="new-render"] form`).Length(), "the others can still be used")
	}
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 100, bal.Total, "nothing was charged by the retired service")
	// A resubmitted use made before the retirement replays, naming it.
	fresh := b.get("/services").Doc(t)
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "new-render", Cost: 1, Inactive: false})
	made := url.Values{"idempotency_key": {serviceKey(t, fresh, "new-render")}, "cost": {"1"}}
	require.Equal(t, http.StatusOK, b.post("/services/new-render/use", made, "HX-Request", "true").Status)
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "new-render", Cost: 1, Inactive: true})
	replay := b.post("/services/new-render/use", made, "HX-Request", "true")
	require.Equal(t, http.StatusOK, replay.Status, replay.Body)
	require.Equal(t, "replayed", replay.Doc(t).Find("#use-outcome").AttrOr("data-outcome", ""))
	require.NotEmpty(t, strings.TrimSpace(replay.Doc(t).Find("#use-outcome strong").First().Text()), "the replay names the service")
	// A slug the catalog never had is still a plain 404.
	require.Equal(t, http.StatusNotFound, b.post("/services/never-was/use", use, "HX-Request", "true").Status)
}

// A Use answers with the whole list of services when the list the page
// showed is no longer the one offered (a service added or renamed since it
// was loaded); otherwise only with the used card's fresh key.
func TestUseRedrawsAListOfServicesThatChangedSinceThePageShowedIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 1})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "resize", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	b := ta.signIn(u.Email)
	page := b.get("/services").Doc(t)
	shown := page.Find("#shown-services").AttrOr("value", "")
	require.NotEmpty(t, shown, "the page says which list it shows")
	require.Equal(t, "#shown-services", page.Find("#use-form-render").AttrOr("hx-include", ""), "Use sends it")
	use := func(key, shown string) *goquery.Document {
		r := b.post("/services/render/use", url.Values{"idempotency_key": {key}, "cost": {"1"}, "shown": {shown}}, "HX-Request", "true")
		require.Equal(t, http.StatusOK, r.Status, r.Body)
		doc := r.Doc(t)
		require.Equal(t, "used", doc.Find("#use-outcome").AttrOr("data-outcome", ""))
		return doc
	}

	// Unchanged: no list, fresh keys for the cards shown.
	doc := use(serviceKey(t, page, "render"), shown)
	require.Zero(t, doc.Find("#service-cards").Length(), "an unchanged list is not redrawn")
	require.Zero(t, doc.Find("#services-changed").Length())
	require.Equal(t, "true", doc.Find("#key-render").AttrOr("hx-swap-oob", ""))

	// A service added: the list is redrawn with it, and says so.
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "upscale", Cost: 2})
	doc = use(serviceKey(t, doc, "render"), shown)
	cards := doc.Find("#service-cards")
	require.Equal(t, "innerHTML", cards.AttrOr("hx-swap-oob", ""), "the changed list is swapped in")
	require.Equal(t, 1, cards.Find(`.service[data-service="upscale"] form`).Length(), "the new service can be used")
	require.Contains(t, doc.Find("#services-changed").Text(), "list of services changed")
	again := cards.Find("#shown-services").AttrOr("value", "")
	require.NotEmpty(t, again)
	require.NotEqual(t, shown, again, "the redrawn list carries its own fingerprint")
	require.Zero(t, doc.Find(`#key-render[hx-swap-oob]`).Length(), "no separate key besides the redrawn list")

	// Renamed: redrawn again with the new name; then unchanged again.
	name := "Resize, faster"
	_, _, err := ta.store.SetService(ctx, nil, store.ServiceChange{Slug: "resize", Name: &name}, "test")
	require.NoError(t, err)
	doc = use(serviceKey(t, doc, "render"), again)
	require.Contains(t, doc.Find(`#service-cards .service[data-service="resize"]`).Text(), name)
	latest := doc.Find("#shown-services").AttrOr("value", "")
	doc = use(serviceKey(t, doc, "render"), latest)
	require.Zero(t, doc.Find("#service-cards").Length(), "an unchanged list is not redrawn")

	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 96, bal.Total, "each of the four uses was charged once")
}

// A price raised while the page was open is not charged: the form says
// what it showed, and the answer shows the new price instead. A use made
// before the rise and resubmitted after it is a replay, and a lowered price
// is simply charged.
func TestUseServiceAfterAPriceRiseChargesNothingAndShowsTheNewPrice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	b := ta.signIn(u.Email)
	balance := func() int64 {
		bal, err := ta.store.Balance(ctx, u.ID)
		require.NoError(t, err)
		return bal.Total
	}
	outcome := func(r response) string { return r.Doc(t).Find("#use-outcome").AttrOr("data-outcome", "") }
	first, second := b.get("/services").Doc(t), b.get("/services").Doc(t)
	require.Equal(t, "1", first.Find("#shown-cost-render").AttrOr("value", ""))
	used := url.Values{"idempotency_key": {serviceKey(t, first, "render")}, "cost": {"1"}}
	require.Equal(t, "used", outcome(b.post("/services/render/use", used, "HX-Request", "true")))
	require.EqualValues(t, 99, balance())

	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 4})
	r := b.post("/services/render/use", used, "HX-Request", "true")
	require.Equal(t, http.StatusOK, r.Status, "a resubmission after the rise is a replay")
	require.Equal(t, "replayed", outcome(r))

	stale := url.Values{"idempotency_key": {serviceKey(t, second, "render")}, "cost": {"1"}}
	r = b.post("/services/render/use", stale, "HX-Request", "true")
	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	doc := r.Doc(t)
	require.Equal(t, "repriced", doc.Find("#use-outcome").AttrOr("data-outcome", ""))
	require.Contains(t, strings.Join(strings.Fields(doc.Find("#use-outcome").Text()), " "), "now costs 4 credits (the page showed 1 credit)")
	require.Equal(t, "4", doc.Find(`input#shown-cost-render[hx-swap-oob]`).AttrOr("value", ""))
	require.Equal(t, "4 credits", strings.TrimSpace(doc.Find(`#cost-render[hx-swap-oob]`).Text()))
	require.EqualValues(t, 99, balance(), "nothing was charged")
	// Sent with the page's list (htmx): the list is redrawn at the new
	// price, and only the price change is said.
	withList := url.Values{"idempotency_key": {serviceKey(t, second, "render")}, "cost": {"1"}, "shown": {second.Find("#shown-services").AttrOr("value", "")}}
	r = b.post("/services/render/use", withList, "HX-Request", "true")
	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	doc = r.Doc(t)
	require.Equal(t, "4 credits", strings.TrimSpace(doc.Find(`#service-cards #cost-render`).Text()))
	require.Zero(t, doc.Find("#services-changed").Length(), "the list's change is the price, said once")
	require.EqualValues(t, 99, balance(), "nothing was charged")
	// With another change to the list besides the price (a service
	// added), that is said too.
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "transcribe", Cost: 1})
	r = b.post("/services/render/use", withList, "HX-Request", "true")
	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	doc = r.Doc(t)
	require.Equal(t, "repriced", doc.Find("#use-outcome").AttrOr("data-outcome", ""))
	require.Contains(t, doc.Find("#services-changed").Text(), "list of services changed", "a service added besides the new price")
	require.Equal(t, 1, doc.Find(`#service-cards #use-form-transcribe`).Length())

	// At the price now shown, it is charged.
	stale.Set("cost", "4")
	require.Equal(t, "used", outcome(b.post("/services/render/use", stale, "HX-Request", "true")))
	require.EqualValues(t, 95, balance())

	// A page still showing 4 after a cut to 2 pays 2.
	third := b.get("/services").Doc(t)
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 2})
	cut := url.Values{"idempotency_key": {serviceKey(t, third, "render")}, "cost": {"4"}}
	require.Equal(t, "used", outcome(b.post("/services/render/use", cut, "HX-Request", "true")))
	require.EqualValues(t, 93, balance())
}

// A use paid by two grants of one kind names the kind once, and one
// credit is "1 credit".
func TestUseServiceSaysWhatPaidOncePerKind(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 60})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "ping", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 28})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 100})
	b := ta.signIn(u.Email)
	page := b.get("/services").Doc(t)
	r := b.post("/services/render/use", url.Values{"idempotency_key": {serviceKey(t, page, "render")}}, "HX-Request", "true")
	require.Equal(t, http.StatusOK, r.Status, r.Body)
	outcome := strings.Join(strings.Fields(r.Doc(t).Find("#use-outcome").Text()), " ")
	require.Contains(t, outcome, "used for 60 credits, paid with 60 pack credits.")
	r = b.post("/services/ping/use", url.Values{"idempotency_key": {serviceKey(t, page, "ping")}}, "HX-Request", "true")
	require.Equal(t, http.StatusOK, r.Status, r.Body)
	outcome = strings.Join(strings.Fields(r.Doc(t).Find("#use-outcome").Text()), " ")
	require.Contains(t, outcome, "used for 1 credit, paid with 1 pack credit.")
}

func TestUseServiceWithoutEnoughCreditsSaysSoAndLinksToBuy(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "summary", Cost: 25})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 7})
	b := ta.signIn(u.Email)
	key := serviceKey(t, b.get("/services").Doc(t), "summary")
	r := b.post("/services/summary/use", url.Values{"idempotency_key": {key}}, "HX-Request", "true")
	require.Equal(t, http.StatusPaymentRequired, r.Status)
	out := r.Doc(t).Find(`#use-outcome[data-outcome="insufficient"]`)
	if out.Length() != 1 || out.Find(`a[href="/dashboard/buy-credits"]`).Length() != 1 {
		t.Fatalf("no insufficient-credits message with a buy link:\n%s", r.Body)
	}
	if !strings.Contains(out.Text(), "costs 25 credits and you have 7") {
		t.Fatalf("message %q", strings.TrimSpace(out.Text()))
	}
}

func TestUnverifiedUserCannotSpendOrBuy(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{Unverified: true})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 100})
	b := ta.signIn(u.Email)
	doc := b.get("/services").Doc(t)
	if doc.Find("#use-form-render").Length() != 0 {
		t.Fatal("an unverified user is offered the Use button")
	}
	for _, path := range []string{"/services/render/use", "/dashboard/buy-credits"} {
		r := b.post(path, url.Values{"idempotency_key": {"k"}, "pack": {"pack_100"}})
		if r.Status != http.StatusForbidden {
			t.Errorf("POST %s: %d, want 403", path, r.Status)
		}
	}
	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 100, bal.Total, "credits were spent by an unverified user")
}

func TestCreditsPageShowsBalanceByKindAndWhichGrantsPaid(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 10})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	exp := time.Now().Add(72 * time.Hour)
	sub := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 6, ExpiresAt: &exp})
	pack := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 50})
	_, _, err := ta.store.Consume(context.Background(), store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "k1"})
	require.NoError(t, err)
	doc := ta.signIn(u.Email).get("/dashboard/credits").Doc(t)
	if got := doc.Find(`#balance-by-kind tr[data-kind="pack"] td`).Eq(1).Text(); got != "46" {
		t.Fatalf("pack credits shown as %q", got)
	}
	if got := doc.Find(`#balance-by-kind tr[data-kind="subscription"] td`).Eq(1).Text(); got != "0" {
		t.Fatalf("subscription credits shown as %q", got)
	}
	use := doc.Find(`tr.history-item[data-kind="consume"]`)
	require.Equal(t, 1, use.Length())
	var drawn []string
	use.Find(".drawn").Each(func(_ int, s *goquery.Selection) {
		drawn = append(drawn, s.AttrOr("data-grant", "")+"/"+s.AttrOr("data-kind", ""))
	})
	want := fmt.Sprintf("%d/subscription,%d/pack", sub.GrantID, pack.GrantID)
	if strings.Join(drawn, ",") != want {
		t.Fatalf("usage paid by %q, want %q", drawn, want)
	}
	if doc.Find("#next-expiry").Length() != 0 {
		t.Fatal("no subscription credits are left, yet an expiry is shown")
	}
}

// Two grants of one kind on a history line are told apart: by their
// expiry, or by when they were added if they never expire. One grant of
// a kind needs no more than its kind.
func TestCreditsHistoryTellsApartTwoGrantsOfOneKind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 10})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	soon, later := time.Now().Add(48*time.Hour).UTC(), time.Now().Add(30*24*time.Hour).UTC()
	sub1 := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 4, ExpiresAt: &soon})
	sub2 := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 3, ExpiresAt: &later})
	pack1 := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 5})
	pack2 := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 50})
	// 4 + 3 subscription + 3 pack; then 2 + 8 pack from two packs.
	_, _, err := ta.store.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "k1"})
	require.NoError(t, err)
	_, _, err = ta.store.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "k2"})
	require.NoError(t, err)
	created := map[int64]time.Time{}
	rows, err := ta.app.pool.Query(ctx, `SELECT id, created_at FROM grants WHERE user_id = $1`, u.ID)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		var at time.Time
		require.NoError(t, rows.Scan(&id, &at))
		created[id] = at
	}
	require.NoError(t, rows.Err())

	uses := ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Find(`tr.history-item[data-kind="consume"]`)
	require.Equal(t, 2, uses.Length())
	read := func(use *goquery.Selection) map[string]string {
		got := map[string]string{}
		use.Find(".drawn").Each(func(_ int, d *goquery.Selection) {
			got[d.AttrOr("data-grant", "")] = strings.Join(strings.Fields(d.Text()), " ")
		})
		return got
	}
	at := func(tm time.Time) string { return tm.UTC().Format("2 Jan 2006 15:04 UTC") }
	// Expiries to the second (these are not on a whole minute).
	expAt := func(tm time.Time) string { return tm.UTC().Format("2 Jan 2006 15:04:05 UTC") }
	first := read(uses.Eq(1)) // newest first
	want := map[string]string{
		fmt.Sprint(sub1.GrantID):  "4 subscription (expires " + expAt(soon) + ")",
		fmt.Sprint(sub2.GrantID):  "3 subscription (expires " + expAt(later) + ")",
		fmt.Sprint(pack1.GrantID): "3 pack",
	}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first use's grants (-want +got):\n%s", diff)
	}
	second := read(uses.Eq(0))
	// Both packs added within the test's minute or so: if their times read
	// alike, their numbers tell them apart.
	label := func(id int64) string {
		l := "added " + at(created[id])
		if at(created[pack1.GrantID]) == at(created[pack2.GrantID]) {
			l += fmt.Sprintf(", grant #%d", id)
		}
		return l
	}
	want = map[string]string{
		fmt.Sprint(pack1.GrantID): "2 pack (" + label(pack1.GrantID) + ")",
		fmt.Sprint(pack2.GrantID): "8 pack (" + label(pack2.GrantID) + ")",
	}
	if diff := cmp.Diff(want, second); diff != "" {
		t.Errorf("second use's grants (-want +got):\n%s", diff)
	}
	require.NotEqual(t, second[fmt.Sprint(pack1.GrantID)][2:], second[fmt.Sprint(pack2.GrantID)][2:], "the two packs read alike")
	// The numbers are on the grants' own lines.
	grants := ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Find(`tr.history-item[data-kind="grant"] .grant-ref`).Map(func(_ int, s *goquery.Selection) string { return s.Text() })
	require.Contains(t, grants, fmt.Sprintf("grant #%d", pack1.GrantID))
	require.Contains(t, grants, fmt.Sprintf("grant #%d", pack2.GrantID))
}

func TestCreditsHistoryPagesWithoutSplittingAUsage(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 3})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	// Many small grants so that usages draw from two grants each.
	for range 40 {
		storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 2})
	}
	for i := range 26 {
		_, _, err := ta.store.Consume(context.Background(), store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: fmt.Sprint(i)})
		require.NoError(t, err)
	}
	b := ta.signIn(u.Email)
	seen := 0
	var consumedShown int
	// rows reads a page's lines (as text), checking that no usage is split.
	rows := func(doc *goquery.Document) []string {
		var lines []string
		doc.Find("tr.history-item").Each(func(_ int, s *goquery.Selection) {
			lines = append(lines, strings.Join(strings.Fields(s.Text()), " "))
			if s.AttrOr("data-kind", "") == "consume" {
				total := 0
				s.Find(".drawn").Each(func(_ int, d *goquery.Selection) {
					var n int
					fmt.Sscanf(d.Text(), "%d", &n)
					total += n
				})
				if total != 3 {
					t.Errorf("a usage shows %d credits drawn, want 3 (split across pages?)", total)
				}
			}
		})
		return lines
	}
	var all, last []string
	var doc *goquery.Document
	path := "/dashboard/credits"
	for pages := 0; path != ""; pages++ {
		require.Less(t, pages, 20, "pagination does not end")
		doc = b.get(path).Doc(t)
		if pages == 0 {
			require.Zero(t, doc.Find("#history-newer, #history-newest").Length(), "the newest page links to no newer one")
		} else {
			require.Equal(t, "/dashboard/credits", doc.Find("#history-newest").AttrOr("href", ""))
		}
		last = rows(doc)
		all = append(all, last...)
		consumedShown += doc.Find(`tr.history-item[data-kind="consume"]`).Length()
		seen += len(last)
		path, _ = doc.Find("#history-older").Attr("href")
	}
	if consumedShown != 26 || seen != 26+40 {
		t.Fatalf("walked %d items (%d usages), want 66 (26 usages)", seen, consumedShown)
	}

	// Back up with Newer from the oldest page: each page is the one right
	// above the last, with no usage split, up to the newest page.
	tail := last
	var newest []string
	for pages := 0; ; pages++ {
		require.Less(t, pages, 20, "Newer does not end")
		newer, ok := doc.Find("#history-newer").Attr("href")
		if !ok {
			newest = rows(doc)
			break
		}
		require.Contains(t, newer, "/dashboard/credits?after=")
		doc = b.get(newer).Doc(t)
		require.Equal(t, 1, doc.Find("#history-older").Length(), "a newer page links to an older one")
		if doc.Find("#history-newer").Length() == 0 {
			newest = rows(doc)
			break
		}
		tail = append(rows(doc), tail...)
	}
	require.Equal(t, all[len(all)-len(tail):], tail, "the pages Newer went through are the history's lines above the oldest page, in order")
	require.Equal(t, all[:len(newest)], newest, "Newer ends on the newest page")
	require.GreaterOrEqual(t, len(newest)+len(tail), len(all), "Newer skipped lines")
}

func TestCreditsPageEmptyState(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	doc := ta.signIn(u.Email).get("/dashboard/credits").Doc(t)
	if doc.Find("#history-empty").Length() != 1 || doc.Find("#balance-total").Text() != "0" {
		t.Fatal("no empty state for a user without credits")
	}
}

// Each expiry date of live credits is shown with its kind, subscription
// ones included, not only the soonest of all kinds.
func TestCreditsPageShowsWhenEachKindExpires(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	day := time.Now().UTC().Truncate(time.Minute)
	first, second, promo := day.Add(5*24*time.Hour), day.Add(35*24*time.Hour), day.Add(48*time.Hour)
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 50, ExpiresAt: &first})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 30, ExpiresAt: &second})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 5, ExpiresAt: &promo})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPack, Amount: 100})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 3})
	doc := ta.signIn(u.Email).get("/dashboard/credits").Doc(t)
	expiring := func(kind string) []string {
		var out []string
		doc.Find(`#balance-by-kind tr[data-kind="` + kind + `"] .expiring`).Each(func(_ int, s *goquery.Selection) {
			out = append(out, strings.Join(strings.Fields(s.Text()), " "))
		})
		return out
	}
	at := func(t time.Time) string { return t.Format("2 Jan 2006 15:04 MST") }
	require.Equal(t, []string{
		"50 expire " + at(first) + " (in 5 days)",
		"30 expire " + at(second) + " (in 35 days)",
	}, expiring("subscription"))
	require.Equal(t, []string{"5 expire " + at(promo) + " (in 2 days)"}, expiring("promo"))
	require.Empty(t, expiring("pack"))
	require.Contains(t, doc.Find(`#balance-by-kind tr[data-kind="pack"]`).Text(), "Never expire")
	// A kind partly expiring says how much never does; a kind with nothing
	// says nothing about expiry.
	require.Equal(t, "3 never expire", strings.TrimSpace(doc.Find(`#balance-by-kind tr[data-kind="promo"] .never-expiring`).Text()))
	require.Empty(t, doc.Find(`#balance-by-kind tr[data-kind="subscription"] .never-expiring`).Text())
	require.Equal(t, "—", strings.TrimSpace(doc.Find(`#balance-by-kind tr[data-kind="admin"] td`).Last().Text()))
	require.Contains(t, doc.Find("#spending-order").Text(), "soonest expiry first")
	// The totals, summed from the same read as the lines, are the balance.
	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	for _, kind := range store.GrantKinds() {
		require.Equal(t, fmt.Sprint(bal.ByKind[kind]), strings.TrimSpace(doc.Find(`#balance-by-kind tr[data-kind="`+kind+`"] td`).Eq(1).Text()), kind)
	}
	require.Equal(t, "188", doc.Find("#balance-total").Text())
	require.EqualValues(t, 188, bal.Total)
	require.Contains(t, strings.Join(strings.Fields(doc.Find("#next-expiry").Text()), " "), "5 credits expire in 2 days ("+at(promo)+")")
}

// Past the last page the history says so, not "no activity yet".
func TestCreditsPagePastTheEndSaysNothingOlder(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	doc := ta.signIn(u.Email).get("/dashboard/credits?cursor=1").Doc(t)
	require.Contains(t, doc.Find("#history-empty").Text(), "Nothing older")
}

func TestDashboardShowsBalanceSummary(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 1234})
	doc := ta.signIn(u.Email).get("/dashboard").Doc(t)
	if got := doc.Find("#balance-total").Text(); got != "1,234" {
		t.Fatalf("dashboard balance %q", got)
	}
}

func TestAdminAdjustsCreditsWithAReasonAndItIsAudited(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 10})
	b := ta.signIn(admin.Email)
	path := fmt.Sprintf("/admin/users/%d/credits", u.ID)

	r := b.post(path, url.Values{"direction": {"add"}, "amount": {"25"}, "kind": {"promo"}, "reason": {""}})
	require.Equal(t, http.StatusUnprocessableEntity, r.Status)
	if r.Doc(t).Find(`.field-error[data-field="reason"]`).Length() != 1 {
		t.Fatal("a missing reason is not shown next to the field")
	}
	// So is any reason the ledger would refuse, with why.
	for reason, why := range map[string]string{strings.Repeat("r", 501): "500 characters or fewer", "refund \u202egnp": "on one line"} {
		r = b.post(path, url.Values{"nonce": {"t0"}, "direction": {"add"}, "amount": {"25"}, "kind": {"promo"}, "reason": {reason}})
		require.Equal(t, http.StatusUnprocessableEntity, r.Status)
		require.Contains(t, r.Doc(t).Find(`.field-error[data-field="reason"]`).Text(), why)
	}
	mustRedirect(t, b.post(path, url.Values{"nonce": {"t1"}, "direction": {"add"}, "amount": {"25"}, "kind": {"promo"}, "reason": {"launch promo"}}),
		fmt.Sprintf("/admin/users/%d", u.ID))
	r = b.post(path, url.Values{"nonce": {"t2"}, "direction": {"remove"}, "amount": {"100"}, "reason": {"too much"}})
	require.Equal(t, http.StatusUnprocessableEntity, r.Status)
	if !strings.Contains(r.Doc(t).Find(`.field-error[data-field="amount"]`).Text(), "only 35 credits") {
		t.Fatal("removing more than the balance is not explained")
	}
	mustRedirect(t, b.post(path, url.Values{"nonce": {"t3"}, "direction": {"remove"}, "amount": {"5"}, "reason": {"chargeback"}}), "/admin/users/")

	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	if bal.Total != 30 || bal.ByKind[store.GrantPromo] != 25 {
		t.Fatalf("balance %+v, want 30 with 25 promo", bal)
	}
	doc := b.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t)
	actions := doc.Find(`#audit tr.audit-entry[data-action="credits.adjust"]`)
	if actions.Length() != 2 || !strings.Contains(actions.Eq(0).Text(), "chargeback") || !strings.Contains(actions.Eq(0).Text(), admin.Email) {
		t.Fatalf("audit log on the user page:\n%s", doc.Find("#audit").Text())
	}
	var entries int
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(),
		`SELECT count(*) FROM ledger_entries WHERE user_id = $1 AND kind = 'adjust' AND actor_user_id = $2 AND reason IS NOT NULL`, u.ID, admin.ID).Scan(&entries))
	require.Equal(t, 2, entries, "adjust entries with who and why")
	// The user sees which kind of credits each adjustment touched.
	hist := ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Find(`tr.history-item[data-kind="adjust"]`)
	require.Equal(t, 2, hist.Length())
	require.Contains(t, strings.Join(strings.Fields(hist.Eq(0).Text()), " "), "Pack credits removed by support -5 5 pack · chargeback")
	// A removal drawing on two grants is one line, as a use is.
	mustRedirect(t, b.post(path, url.Values{"nonce": {"t4"}, "direction": {"remove"}, "amount": {"12"}, "reason": {"goodwill reversed"}}), "/admin/users/")
	hist = ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Find(`tr.history-item[data-kind="adjust"]`)
	require.Equal(t, 3, hist.Length(), "one line for the removal, not one per grant")
	// One credit is "1 credit".
	mustRedirect(t, b.post(path, url.Values{"nonce": {"t5"}, "direction": {"remove"}, "amount": {"17"}, "reason": {"all but one"}}), "/admin/users/")
	r = b.post(path, url.Values{"nonce": {"t6"}, "direction": {"remove"}, "amount": {"2"}, "reason": {"too much"}})
	require.Equal(t, http.StatusUnprocessableEntity, r.Status)
	require.Contains(t, r.Doc(t).Find(`.field-error[data-field="amount"]`).Text(), "The user has only 1 credit;")
	require.Contains(t, strings.Join(strings.Fields(hist.Eq(0).Text()), " "), "Credits removed by support -12 5 pack, 7 promo · goodwill reversed")

	// Operators see credits leave other than by spending: removed by
	// support (5 + 12 + 17; the refused removals took nothing), and the
	// last credit forfeited when the account is deleted.
	removed := func(reason string) float64 {
		return metricValue(t, ta.app.metrics, "quickscale_credits_removed_total", map[string]string{"reason": reason})
	}
	require.Equal(t, float64(34), removed("support"))
	deleteAccount(t, ta.signIn(u.Email))
	require.Equal(t, float64(1), removed("forfeited"))
}

func TestAdminPagesRefuseNonAdmins(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	for _, p := range []string{"/admin", "/admin/users", fmt.Sprintf("/admin/users/%d/credits", u.ID), "/admin/webhooks"} {
		if r := b.get(p); r.Status != http.StatusForbidden {
			t.Errorf("GET %s as a user: %d, want 403", p, r.Status)
		}
	}
	r := b.post(fmt.Sprintf("/admin/users/%d/credits", u.ID), url.Values{"direction": {"add"}, "amount": {"1000"}, "reason": {"self"}})
	if r.Status != http.StatusForbidden {
		t.Fatalf("POST credits as a user: %d", r.Status)
	}
	anon := ta.browser()
	mustRedirect(t, anon.get("/admin/users"), "/login?next=")
}

// The admin's user search pages both ways: Next, Previous (the page right
// above) and First page, keeping the query.
func TestAdminUserSearchPagesBothWays(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	_, err := ta.store.Pool().Exec(context.Background(), `INSERT INTO users (email, password_hash)
SELECT 'u' || g || '@paging.example', 'not a hash' FROM generate_series(1, 120) g`)
	require.NoError(t, err)
	b := ta.signIn(admin.Email)
	ids := func(doc *goquery.Document) []string {
		return doc.Find("#users tr.user-row").Map(func(_ int, s *goquery.Selection) string { return s.AttrOr("data-id", "") })
	}
	var pages [][]string
	var docs []*goquery.Document
	for path := "/admin/users?q=paging.example"; path != ""; {
		require.Less(t, len(pages), 5, "Next does not end")
		doc := b.get(path).Doc(t)
		pages, docs = append(pages, ids(doc)), append(docs, doc)
		path = doc.Find("#users-next").AttrOr("href", "")
	}
	require.Len(t, pages, 3)
	require.Len(t, pages[0], 50)
	require.Len(t, pages[2], 20)
	require.Zero(t, docs[0].Find("#users-previous, #users-first").Length(), "the first page has nothing before it")
	for i := 2; i > 0; i-- {
		prev, ok := docs[i].Find("#users-previous").Attr("href")
		require.True(t, ok, "page %d links to the one before", i+1)
		require.Contains(t, prev, "q=paging.example")
		require.Equal(t, "/admin/users?q=paging.example", docs[i].Find("#users-first").AttrOr("href", ""))
		require.Equal(t, pages[i-1], ids(b.get(prev).Doc(t)), "Previous from page %d", i+1)
	}
}

func TestAdminSearchesUsersByEmail(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "alice@corp.example.com"})
	storetest.NewUser(t, ta.store, storetest.UserOpts{Email: "bob@other.example.com"})
	doc := ta.signIn(admin.Email).get("/admin/users?q=CORP").Doc(t)
	rows := doc.Find("#users tr.user-row")
	if rows.Length() != 1 || !strings.Contains(rows.Text(), "alice@corp.example.com") {
		t.Fatalf("search for CORP found:\n%s", rows.Text())
	}
	doc = ta.signIn(admin.Email).get("/admin/users?q=nobody-at-all").Doc(t)
	if doc.Find("#no-users").Length() != 1 {
		t.Fatal("no empty state for a search without results")
	}
	// A user id finds the user, a deleted account too (its address is gone).
	gone := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	require.NoError(t, ta.store.InTx(context.Background(), func(tx pgx.Tx) error {
		_, err := store.DeleteUser(context.Background(), tx, gone.ID)
		return err
	}))
	for _, q := range []string{fmt.Sprint(gone.ID), fmt.Sprintf("%%23%d", gone.ID)} {
		// (Addresses holding the number match too.)
		row := ta.signIn(admin.Email).get("/admin/users?q=" + q).Doc(t).Find(fmt.Sprintf(`#users tr.user-row[data-id="%d"]`, gone.ID))
		require.Equal(t, 1, row.Length(), "q=%s", q)
		require.Equal(t, fmt.Sprintf("Deleted account #%d", gone.ID), strings.TrimSpace(row.Find("a").Text()))
	}
	// Past the last page: no "no users match", a way back.
	require.Contains(t, ta.signIn(admin.Email).get("/admin/users?cursor=1").Doc(t).Find("#no-users").Text(), "First page")
	// A query longer than an address is cut at a character, not a byte:
	// the page stays valid UTF-8.
	r := ta.signIn(admin.Email).get("/admin/users?q=a" + strings.Repeat("%C3%A9", 127))
	require.Equal(t, http.StatusOK, r.Status)
	require.True(t, utf8.ValidString(r.Body), "the page is not valid UTF-8")
	r = ta.signIn(admin.Email).get("/admin/users?q=%FF")
	require.Equal(t, http.StatusBadRequest, r.Status, "a query that is not text is refused, not a 500")
}

// adminOnCreditsPage makes an admin and a user, and returns the admin's
// signed-in browser, the user and the user's adjust-credits page.
func adminOnCreditsPage(t *testing.T, ta *testApp) (*browser, store.User, string) {
	t.Helper()
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	return ta.signIn(admin.Email), u, fmt.Sprintf("/admin/users/%d/credits", u.ID)
}

func TestAdminAddFormResubmittedAddsOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	b, u, path := adminOnCreditsPage(t, ta)
	page := b.get(path).Doc(t)
	nonce := page.Find(`#adjust-form input[name="nonce"]`).AttrOr("value", "")
	require.NotEmpty(t, nonce)
	require.Contains(t, page.Find("#adjust-form").Text(), "shown to the user", "the admin is told the user sees the reason")
	form := url.Values{"direction": {"add"}, "amount": {"40"}, "kind": {"admin"}, "reason": {"goodwill"}, "nonce": {nonce}}
	mustRedirect(t, b.post(path, form), "/admin/users/")
	mustRedirect(t, b.post(path, form), "/admin/users/") // a double click or a reload
	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 40, bal.Total)
	audit, err := ta.store.AuditFor(context.Background(), u.ID, 10)
	require.NoError(t, err)
	require.Len(t, audit, 1)
}

// Back after an adjustment reloads the form under a fresh key; a browser
// that refills what was typed would apply it twice. The same adjustment
// (admin, user, amount, reason) within minutes asks first, and a tick
// applies it again. The form also asks browsers not to refill it.
func TestAdminSameAdjustmentAgainUnderAFreshKeyAsksFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	b, u, path := adminOnCreditsPage(t, ta)
	fresh := func() url.Values {
		page := b.get(path).Doc(t)
		require.Equal(t, "off", page.Find("#adjust-form").AttrOr("autocomplete", ""))
		nonce := page.Find(`#adjust-form input[name="nonce"]`).AttrOr("value", "")
		return url.Values{"direction": {"add"}, "amount": {"15"}, "kind": {"admin"}, "reason": {"goodwill"}, "nonce": {nonce}}
	}
	balance := func() int64 {
		bal, err := ta.store.Balance(ctx, u.ID)
		require.NoError(t, err)
		return bal.Total
	}
	mustRedirect(t, b.post(path, fresh()), "/admin/users/")
	again := fresh()
	r := b.post(path, again)
	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	doc := r.Doc(t)
	require.Contains(t, doc.Find("#adjust-form").Text(), "You made this same adjustment")
	require.Equal(t, 1, doc.Find(`#confirm-repeat input[name="confirm_repeat"]`).Length())
	require.EqualValues(t, 15, balance(), "nothing applied without the tick")
	// Another amount or reason is another adjustment: no question.
	other := fresh()
	other.Set("amount", "16")
	mustRedirect(t, b.post(path, other), "/admin/users/")
	require.EqualValues(t, 31, balance())
	// Ticked, it is applied again.
	again.Set("confirm_repeat", "yes")
	mustRedirect(t, b.post(path, again), "/admin/users/")
	require.EqualValues(t, 46, balance())
}

func TestAdminRemoveFormResubmittedRemovesOnceAndAReusedFormIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	_, err := ta.store.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 100, Reason: "start"})
	require.NoError(t, err)
	b := ta.signIn(admin.Email)
	path := fmt.Sprintf("/admin/users/%d/credits", u.ID)
	nonce := b.get(path).Doc(t).Find(`#adjust-form input[name="nonce"]`).AttrOr("value", "")
	require.NotEmpty(t, nonce)
	form := url.Values{"direction": {"remove"}, "amount": {"10"}, "kind": {"admin"}, "reason": {"duplicate charge"}, "nonce": {nonce}}
	mustRedirect(t, b.post(path, form), "/admin/users/")
	mustRedirect(t, b.post(path, form), "/admin/users/") // a double click or a reload
	form.Set("kind", "promo")                            // "when adding": nothing to a removal
	mustRedirect(t, b.post(path, form), "/admin/users/")
	if page := b.get(fmt.Sprintf("/admin/users/%d", u.ID)).Body; !strings.Contains(page, "already applied") {
		t.Fatalf("the resubmission is not reported as already applied:\n%s", page)
	}
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 90, bal.Total, "a resubmitted removal must remove once")

	// The same form with other values is refused, and says so.
	form.Set("amount", "20")
	r := b.post(path, form)
	require.Equal(t, http.StatusConflict, r.Status)
	require.Contains(t, r.Body, "already used for another adjustment")
	bal, err = ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 90, bal.Total)
	audit, err := ta.store.AuditFor(ctx, u.ID, 10)
	require.NoError(t, err)
	require.Len(t, audit, 2, "the first grant and one removal")

	// The key is the database's rule too: it is never rewritten.
	_, err = ta.store.Pool().Exec(ctx, `UPDATE credit_adjustments SET delta = -20 WHERE user_id = $1`, u.ID)
	require.Error(t, err)
}

// The form's key is what makes a resubmission harmless and a repeat
// asked about: a post without one (or with one longer than a page's) is refused,
// not applied without either safeguard.
func TestAdminAdjustmentWithoutTheFormsKeyIsRefused(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	b, u, path := adminOnCreditsPage(t, ta)
	for name, nonce := range map[string][]string{"none": nil, "empty": {""}, "too long": {strings.Repeat("n", 65)}} {
		form := url.Values{"direction": {"add"}, "amount": {"6"}, "kind": {"admin"}, "reason": {"no key"}}
		if nonce != nil {
			form["nonce"] = nonce
		}
		r := b.post(path, form)
		require.Equal(t, http.StatusBadRequest, r.Status, name)
		require.Contains(t, r.Doc(t).Find("#adjust-form").Text(), "lost its key", name)
	}
	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.Zero(t, bal.Total, "nothing applied")
}

// An expiry further than 100 years away is refused in words (the JSON
// API could not write a year after 9999, and credits meant to last that
// long never expire); 99 years is fine.
func TestAdminCreditsExpireWithinACentury(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u, key := ta.userWithKey(storetest.UserOpts{})
	b := ta.signIn(admin.Email)
	path := fmt.Sprintf("/admin/users/%d/credits", u.ID)
	for i, day := range []string{"9999-12-31", time.Now().UTC().AddDate(100, 0, 1).Format("2006-01-02")} {
		r := b.post(path, url.Values{"nonce": {fmt.Sprintf("far%d", i)}, "direction": {"add"}, "amount": {"3"}, "kind": {"promo"}, "expires": {day}, "reason": {"forever"}})
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, day)
		require.Contains(t, r.Doc(t).Find(`.field-error[data-field="expires"]`).Text(), "less than 100 years ahead", day)
	}
	day := time.Now().UTC().AddDate(99, 0, 0).Format("2006-01-02")
	mustRedirect(t, b.post(path, url.Values{"nonce": {"near"}, "direction": {"add"}, "amount": {"3"}, "kind": {"promo"}, "expires": {day}, "reason": {"long"}}), "/admin/users/")
	// The pages count down to it in years, and the API writes it.
	require.Contains(t, ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Text(), "in 99 years")
	req, _ := http.NewRequest(http.MethodGet, ta.URL+"/api/v1/balance", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	var body struct {
		Balance    int64   `json:"balance"`
		NextExpiry *string `json:"next_expiry"`
	}
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	require.EqualValues(t, 3, body.Balance)
	require.NotNil(t, body.NextExpiry)
	// Good through day: it expires when day ends, which on 31 December is
	// in the next year.
	end, _ := time.Parse("2006-01-02", day)
	got, err := time.Parse(time.RFC3339, *body.NextExpiry)
	require.NoError(t, err)
	require.True(t, got.Equal(end.AddDate(0, 0, 1)), "next_expiry %s, want the end of %s", *body.NextExpiry, day)
}

// An expiry date in the form means the credits are good through that
// day: today is accepted, and they expire when the day ends (UTC).
func TestAdminAddsCreditsGoodThroughADay(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	b, u, path := adminOnCreditsPage(t, ta)
	now := time.Now().UTC()
	today := now
	if today.Hour() == 23 && today.Minute() >= 58 {
		today = today.Add(5 * time.Minute) // do not race midnight
	}
	day := today.Format("2006-01-02")
	mustRedirect(t, b.post(path, url.Values{"nonce": {"t5"}, "direction": {"add"}, "amount": {"8"}, "kind": {"promo"}, "expires": {day}, "reason": {"today only"}}), "/admin/users/")
	bal, err := ta.store.Balance(context.Background(), u.ID)
	require.NoError(t, err)
	require.EqualValues(t, 8, bal.Total)
	require.NotNil(t, bal.NextExpiry)
	want, _ := time.Parse("2006-01-02", day)
	require.True(t, bal.NextExpiry.Equal(want.AddDate(0, 0, 1)), "expires %s, want the end of %s", bal.NextExpiry, day)
	// Yesterday by the real clock: the shifted "today" may be tomorrow,
	// and its yesterday a day that has not ended.
	yesterday := now.AddDate(0, 0, -1).Format("2006-01-02")
	r := b.post(path, url.Values{"nonce": {"t6"}, "direction": {"add"}, "amount": {"8"}, "kind": {"promo"}, "expires": {yesterday}, "reason": {"late"}})
	require.Equal(t, http.StatusUnprocessableEntity, r.Status)
}

// Support answers "my credits vanished" from the admin's user page: it
// has the user's whole credit history (a deleted account's forfeiture
// too) and pages through every payment, not only the last ten.
func TestAdminUserPageShowsCreditHistoryAndEveryPayment(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, b := whAdmin(t, ta)
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 600})
	packs, err := ta.store.Packs(ctx)
	require.NoError(t, err)
	for i := range 12 {
		_, err := ta.store.CreatePayment(ctx, store.NewPayment{UserID: u.ID, Pack: packs[0], CheckoutSessionID: fmt.Sprintf("cs_test_admin_%d_%d", u.ID, i)})
		require.NoError(t, err)
	}
	require.NoError(t, ta.store.InTx(ctx, func(tx pgx.Tx) error {
		_, err := store.DeleteUser(ctx, tx, u.ID)
		return err
	}))

	path := fmt.Sprintf("/admin/users/%d", u.ID)
	doc := b.get(path).Doc(t)
	require.Equal(t, 1, doc.Find("#deleted-account").Length())
	kinds := doc.Find("#history tr.history-item").Map(func(_ int, s *goquery.Selection) string { return s.AttrOr("data-kind", "") })
	require.Equal(t, []string{"adjust", "grant"}, kinds, "the forfeiture, then the grant")
	forfeit := strings.Join(strings.Fields(doc.Find(`#history tr.history-item[data-kind="adjust"]`).Text()), " ")
	require.Contains(t, forfeit, "-600")
	require.Contains(t, forfeit, "credits forfeited", "the owner's deletion is not support's adjustment")

	seen := doc.Find("#payments tr.payment-row").Length()
	require.Equal(t, 10, seen)
	older, ok := doc.Find("#payments-older").Attr("href")
	require.True(t, ok, "a link to the older payments")
	doc = b.get(older).Doc(t)
	seen += doc.Find("#payments tr.payment-row").Length()
	require.Equal(t, 12, seen)
	require.Zero(t, doc.Find("#payments-older").Length())
	// Paging one list keeps the other where it was.
	newest, _ := doc.Find(`nav[aria-label="payment pages"] .pagination-previous`).Attr("href")
	require.Equal(t, fmt.Sprintf("/admin/users/%d?history=0", u.ID), newest)
	newer, ok := doc.Find("#payments-newer").Attr("href")
	require.True(t, ok, "a link to the newer payments")
	require.True(t, strings.HasPrefix(newer, fmt.Sprintf("/admin/users/%d?history=0&payments_after=", u.ID)), newer)
	doc = b.get(newer).Doc(t)
	require.Equal(t, 10, doc.Find("#payments tr.payment-row").Length(), "Newer from the last page is the first")
	require.Zero(t, doc.Find("#payments-newer").Length())
	require.Equal(t, 1, doc.Find("#payments-older").Length())
}

// The audit log shows credits as whole numbers, however large, with
// thousands separators as every other page (ids without).
func TestAdminAuditLogShowsLargeAmountsInFull(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	_, err := ta.store.Adjust(context.Background(), store.Adjustment{UserID: u.ID, Delta: 987_654_321, Reason: "migration", Actor: &admin.ID})
	require.NoError(t, err)
	res, err := ta.store.Adjust(context.Background(), store.Adjustment{UserID: u.ID, Delta: 987_654_321, Reason: "migration", Actor: &admin.ID})
	require.NoError(t, err)
	asAdmin := ta.signIn(admin.Email)
	for _, page := range []string{fmt.Sprintf("/admin/users/%d", u.ID), "/admin/audit?action=credits.adjust"} {
		details := asAdmin.get(page).Doc(t).Find(`#audit tr.audit-entry[data-action="credits.adjust"]`).First().Text()
		require.Contains(t, details, "delta: 987,654,321", page)
		require.Contains(t, details, "balance_after: 1,975,308,642", page)
		require.Contains(t, details, fmt.Sprintf("grant_id: %d;", res.GrantID), page)
		require.NotContains(t, details, "e+", page)
	}
}

// A swept grant's entry says its credits expired (past tense), and when.
func TestCreditsPageSaysSweptCreditsExpired(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	soon := time.Now().Add(time.Hour)
	g := storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 26, ExpiresAt: &soon})
	// Its expiry passes (moved back in the ledger's own mode), and the sweep runs.
	tx, err := ta.store.Pool().Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT set_config('quickscale.ledger', 'on', true)`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE grants SET expires_at = now() - interval '1 minute', created_at = now() - interval '1 hour' WHERE id = $1`, g.GrantID)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	res, err := ta.store.ExpireOverdueBatch(ctx, 10)
	require.NoError(t, err)
	require.EqualValues(t, 26, res.Credits)

	row := ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Find(`tr.history-item[data-kind="expire"]`)
	require.Equal(t, 1, row.Length())
	require.Contains(t, row.Text(), "expired ")
	require.NotContains(t, row.Text(), "expires ")
}

// The buy page counts the balance in words that agree with it.
func TestBuyPageSaysTheBalanceInTheRightNumber(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	say := func() string {
		return strings.Join(strings.Fields(b.get("/dashboard/buy-credits").Doc(t).Find("#current-balance").Parent().Text()), " ")
	}
	require.Contains(t, say(), "You have 0 credits.")
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Amount: 1})
	require.Contains(t, say(), "You have 1 credit.")
}

// More expiry dates than the page lists: the list shows the soonest, and
// none of the others is counted as never expiring.
func TestCreditsPageWithManyExpiryDates(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	day := time.Now().UTC().Truncate(time.Minute)
	for i := range 55 {
		at := day.Add(time.Duration(i+1) * 24 * time.Hour)
		storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 1, ExpiresAt: &at})
	}
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 4})
	later := day.Add(400 * 24 * time.Hour)
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantAdmin, Amount: 5, ExpiresAt: &later})
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantAdmin, Amount: 3})
	doc := ta.signIn(u.Email).get("/dashboard/credits").Doc(t)
	row := doc.Find(`#balance-by-kind tr[data-kind="promo"]`)
	require.Equal(t, 50, row.Find(".expiring").Length())
	require.Equal(t, "4 never expire", strings.TrimSpace(row.Find(".never-expiring").Text()))
	// Another kind's dates are listed whatever the first kind's count.
	admin := doc.Find(`#balance-by-kind tr[data-kind="admin"]`)
	require.Equal(t, 1, admin.Find(".expiring").Length(), "the admin credits' expiry is listed")
	require.Equal(t, "3 never expire", strings.TrimSpace(admin.Find(".never-expiring").Text()))
}

// A use refused as not found while the service is offered (here: no credit
// account) is that refusal, a 404, not a "retired" answer nor a 500.
func TestUseServiceWithoutAnAccountIsNotFound(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 1})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	page := b.get("/services").Doc(t)
	_, err := ta.store.Pool().Exec(context.Background(), `DELETE FROM accounts WHERE user_id = $1`, u.ID)
	require.NoError(t, err)
	r := b.post("/services/render/use", url.Values{"idempotency_key": {serviceKey(t, page, "render")}, "cost": {"1"}}, "HX-Request", "true")
	require.Equal(t, http.StatusNotFound, r.Status, r.Body)
	require.Contains(t, r.Doc(t).Find("#error-message").Text(), "No credit account")
}

// A user's admin page links to every audit entry about them; the audit log
// filtered by user lists only those, paged with the filter kept.
func TestAdminAuditLogFiltersByUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	other := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	for i := range 55 {
		_, err := ta.store.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 1, Actor: &admin.ID, Reason: fmt.Sprint("r", i)})
		require.NoError(t, err)
	}
	_, err := ta.store.Adjust(ctx, store.Adjustment{UserID: other.ID, Delta: 1, Actor: &admin.ID, Reason: "other"})
	require.NoError(t, err)
	b := ta.signIn(admin.Email)
	link := b.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t).Find("#user-audit").AttrOr("href", "")
	require.Equal(t, fmt.Sprintf("/admin/audit?user=%d", u.ID), link)
	seen := 0
	for path := link; path != ""; {
		doc := b.get(path).Doc(t)
		doc.Find("#audit tr.audit-entry").Each(func(_ int, row *goquery.Selection) {
			seen++
			require.Contains(t, row.Text(), fmt.Sprintf("user #%d", u.ID), "an entry about another user")
		})
		path = doc.Find("#audit-older").AttrOr("href", "")
		if path != "" {
			require.Contains(t, path, fmt.Sprintf("user=%d", u.ID), "the next page keeps the filter")
		}
	}
	require.Equal(t, 55, seen)
}

// A grant's line in the history says "expires" while its expiry is ahead
// and "expired" once it has passed, before the sweep's own line as after.
func TestCreditHistorySaysExpiredOnceTheExpiryHasPassed(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.BackdatedGrant(t, ta.store.Pool(), u.ID, store.GrantSubscription, 5, time.Now().Add(-time.Hour), time.Now().Add(-time.Minute))
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 7, ExpiresAt: v1Ptr(time.Now().Add(24 * time.Hour))})
	doc := ta.signIn(u.Email).get("/dashboard/credits").Doc(t)
	said := map[string]string{} // by the line's credits
	doc.Find(`tr.history-item[data-kind="grant"]`).Each(func(_ int, s *goquery.Selection) {
		said[strings.TrimSpace(s.Find("td").Eq(2).Text())] = strings.Fields(s.Find(".grant-expiry").Text())[0]
	})
	require.Equal(t, map[string]string{"+5": "expired", "+7": "expires"}, said)
}

// An adjustment sent from a form loaded before its account was deleted is
// refused with why (409), not "not found"; nothing is written.
func TestAdminAdjustmentToADeletedAccountSaysItWasDeleted(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	ctx := context.Background()
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(admin.Email)
	path := fmt.Sprintf("/admin/users/%d/credits", u.ID)
	require.Equal(t, http.StatusOK, b.get(path).Status)
	require.NoError(t, ta.store.InTx(ctx, func(tx pgx.Tx) error {
		_, err := store.DeleteUser(ctx, tx, u.ID)
		return err
	}))

	r := b.post(path, url.Values{"nonce": {"d1"}, "direction": {"add"}, "amount": {"25"}, "kind": {"promo"}, "reason": {"goodwill"}})
	require.Equal(t, http.StatusConflict, r.Status)
	doc := r.Doc(t)
	require.Contains(t, doc.Find("main").Text(), "This account was deleted")
	require.Contains(t, doc.Find("main").Text(), "Nothing was changed")
	require.Equal(t, 1, doc.Find(fmt.Sprintf(`main a[href="/admin/users/%d"]`, u.ID)).Length())
	var n int
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT count(*) FROM grants WHERE user_id = $1`, u.ID).Scan(&n))
	require.Zero(t, n)
	// A user that never existed is still not found.
	require.Equal(t, http.StatusNotFound, b.get("/admin/users/999999999/credits").Status)
}

// A kind with more expiry dates than the page lists (50) ends its list with
// one line for the rest: every credit is on a line.
func TestCreditsPageSaysWhatExpiresAfterTheDatesListed(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	first := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Minute)
	storetest.ManyGrants(t, ta.store.Pool(), u.ID, store.GrantPromo, 55, &first)
	doc := ta.signIn(u.Email).get("/dashboard/credits").Doc(t)
	row := doc.Find(`#balance-by-kind tr[data-kind="promo"]`)
	require.Equal(t, 50, row.Find(".expiring").Length())
	last := first.Add(54 * time.Minute)
	require.Equal(t, "5 more expire later, at 5 more times up to "+last.Format("2 Jan 2006 15:04 MST"),
		strings.Join(strings.Fields(row.Find(".expiring-later").Text()), " "))
}

// A use drawing on more grants than a history line lists (50) sums the
// rest on the line (a use drawing on 16,000 made a 2 MB page); the API's
// usage still lists every grant.
func TestCreditsHistorySumsTheGrantsALineDoesNotList(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	storetest.ManyGrants(t, ta.store.Pool(), u.ID, store.GrantPromo, 60, nil)
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 60})
	used, _, err := ta.store.Consume(context.Background(), store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "many"})
	require.NoError(t, err)
	require.Len(t, used.Drawn, 60)
	line := ta.signIn(u.Email).get("/dashboard/credits").Doc(t).Find(`tr.history-item[data-kind="consume"]`)
	require.Equal(t, 50, line.Find(".drawn").Length())
	require.Equal(t, "and 10 more from 10 more grants", strings.Join(strings.Fields(line.Find(".drawn-rest").Text()), " "))
}
