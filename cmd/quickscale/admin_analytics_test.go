package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// /admin/analytics shows the money paid and refunded by day (live) and the
// credits spent by service and day (from the rollup the workers keep: it
// runs when they start), over 7, 30, 90 or 365 days.
func TestAdminAnalyticsShowsRevenueAndUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u, buyer, pay := simPurchase(t, ta)
	adminUser, admin := whAdmin(t, ta)
	refundBySupport(t, ta, admin, pay, "5", "partly", 500)
	// Spends of yesterday (the rollup counts spends older than its lag).
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Cost: 1})
	yesterday := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -1)
	storetest.BackdatedUsage(t, ta.store.Pool(), u.ID, svc, 40, yesterday.Add(9*time.Hour))
	storetest.BackdatedUsage(t, ta.store.Pool(), u.ID, svc, 2, yesterday.Add(10*time.Hour))
	// The workers rolled up when they started; this run counts the spends
	// just written (yesterday is not final yet: the first run started on
	// the first account's day, today).
	eventually(t, 10*time.Second, "the rollup the workers run on start", func() bool {
		return whCount(t, ta, `SELECT count(*) FROM analytics_rollup_state WHERE as_of IS NOT NULL`) == 1
	})
	_, err := ta.store.Pool().Exec(ctx, `UPDATE analytics_rollup_state SET final_through = $1::date`, yesterday)
	require.NoError(t, err)
	_, err = ta.store.RollupUsage(ctx, time.Now().Add(time.Minute))
	require.NoError(t, err)

	r := admin.get("/admin/analytics")
	acctRequireStatus(t, r, http.StatusOK)
	doc := r.Doc(t)
	require.Equal(t, "/admin/analytics?days=30", doc.Find(`#analytics-ranges [aria-current="true"]`).AttrOr("href", ""))
	require.Equal(t, 1, doc.Find(`[aria-current="page"]`).Length(), "one link is the page shown")
	require.Equal(t, "/admin/analytics", doc.Find(`.tabs [aria-current="page"]`).AttrOr("href", ""))
	total := doc.Find(`.revenue-total[data-currency="usd"]`)
	require.Equal(t, 1, total.Length())
	require.Equal(t, "$20.00", acctTextSel(total.Find(".revenue-paid")))
	require.Equal(t, "$5.00", acctTextSel(total.Find(".revenue-refunded")))
	require.Equal(t, "$15.00", acctTextSel(total.Find(".revenue-net")))
	require.Equal(t, "Credit packs $20.00, plans $0.00", acctTextSel(total.Find(".revenue-split")))
	today := time.Now().UTC().Format("2006-01-02")
	require.Equal(t, 1, doc.Find(`tr.revenue-day[data-day="`+today+`"]`).Length(), "today's revenue line")
	row := doc.Find(`tr.usage-service[data-slug="` + svc + `"]`)
	require.Equal(t, "Service "+svc+" 2 42", acctTextSel(row))
	require.Equal(t, yesterday.Format("2 Jan 2006")+" 2 42", acctTextSel(doc.Find(`tr.usage-day[data-day="`+yesterday.Format("2006-01-02")+`"]`)))
	require.Contains(t, acctText(doc, "#usage-as-of"), "spends made before")

	require.Equal(t, http.StatusOK, admin.get("/admin/analytics?days=7").Status)
	for _, bad := range []string{"8", "abc", "-7", "0", "99999999999999999999"} {
		require.Equal(t, http.StatusBadRequest, admin.get("/admin/analytics?days="+bad).Status, bad)
	}
	require.Equal(t, http.StatusForbidden, buyer.get("/admin/analytics").Status)

	// At a phone's width the page and its tables fit the screen.
	phone := uiPhone(t, ta, adminUser.Email)
	require.NoError(t, chromedp.Do(phone, chromedp.Navigate(ta.URL+"/admin/analytics"), chromedp.WaitVisible(chromedp.CSS("#usage-days"))))
	wide, err := chromedp.Run(phone, chromedp.Evaluate[int](`Math.max(document.documentElement.scrollWidth - document.documentElement.clientWidth, ...Array.from(document.querySelectorAll(".table-container")).map(function(e){return e.scrollWidth - e.clientWidth;}))`))
	require.NoError(t, err)
	require.LessOrEqual(t, wide, 0, "the analytics page is wider than a 375 px screen")
}

// Before any payment or rollup, the page says so rather than show empty
// tables.
func TestAdminAnalyticsEmpty(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, admin := whAdmin(t, ta)
	doc := admin.get("/admin/analytics?days=365").Doc(t)
	require.Equal(t, "No payments or refunds in these days.", acctText(doc, "#no-revenue"))
	require.Contains(t, acctText(doc, "#no-usage"), "Usage is not rolled up yet")
	require.Equal(t, "No plan is live now, and none started or ended in these days.", acctText(doc, "#no-subscriptions"))
	require.Zero(t, doc.Find("table").Length())

	// A rollup far behind (catching up, or no workers) says so.
	_, err := ta.store.Pool().Exec(context.Background(), `UPDATE analytics_rollup_state SET final_through = current_date - 3, as_of = now() - interval '3 days', rolled_at = now()`)
	require.NoError(t, err)
	doc = admin.get("/admin/analytics").Doc(t)
	require.Contains(t, acctText(doc, "#usage-behind"), "The usage rollup is behind")
	require.Zero(t, doc.Find("#usage-as-of").Length())
}

// The analytics page and the leader's gauges count subscriptions by plan:
// live now (active, past due, set to end, what they bill a month) and
// started and ended in the range; revenue says what plans brought in.
// Three customers go through the simulator: one on Basic set to end, one
// on Pro whose renewal failed, one on Basic that ended.
func TestAdminAnalyticsAndGaugesCountSubscriptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	customer := func(plan string) (*browser, store.Subscription) {
		u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
		b := ta.signIn(u.Email)
		return b, simSubscribe(t, ta, b, u.ID, plan)
	}
	settle := func(what string, sub store.Subscription, ok func(store.Subscription) bool) {
		eventually(t, 10*time.Second, what, func() bool {
			s, err := ta.store.SubscriptionByID(ctx, sub.ID)
			return err == nil && ok(s)
		})
	}
	form := func(sub store.Subscription) url.Values { return url.Values{"subscription": {formatID(sub.ID)}} }

	a, subA := customer("basic")
	mustRedirect(t, a.post("/dashboard/subscription/cancel", form(subA)), "/dashboard/subscription")
	b, subB := customer("pro")
	mustRedirect(t, b.post("/dashboard/subscription/fail-renewal", form(subB)), "/dashboard/subscription")
	settle("Pro past due", subB, func(s store.Subscription) bool { return s.Status == store.SubPastDue })
	c, subC := customer("basic")
	mustRedirect(t, c.post("/dashboard/subscription/cancel", form(subC)), "/dashboard/subscription")
	settle("the provider's cancel applied", subC, func(s store.Subscription) bool { return s.CancelAtPeriodEnd })
	mustRedirect(t, c.post("/dashboard/subscription/renew", form(subC)), "/dashboard/subscription")
	settle("the second Basic ended", subC, func(s store.Subscription) bool { return s.Status == store.SubCanceled })
	settle("the first Basic set to end", subA, func(s store.Subscription) bool { return s.CancelAtPeriodEnd && s.Status == store.SubActive })

	adminUser, admin := whAdmin(t, ta)
	doc := admin.get("/admin/analytics?days=7").Doc(t)
	require.Zero(t, doc.Find("#no-subscriptions").Length())
	require.Equal(t, "$45.00", acctTextSel(doc.Find(`.recurring-total[data-currency="usd"] .recurring-monthly`)))
	require.Equal(t, "Basic 1 1 set to end $15.00 2 1", acctTextSel(doc.Find(`tr.subscription-plan[data-plan="basic"]`)))
	require.Equal(t, "Pro 1 1 past due $30.00 1 0", acctTextSel(doc.Find(`tr.subscription-plan[data-plan="pro"]`)))
	total := doc.Find(`.revenue-total[data-currency="usd"]`)
	require.Equal(t, "$60.00", acctTextSel(total.Find(".revenue-paid")))
	require.Equal(t, "Credit packs $0.00, plans $60.00", acctTextSel(total.Find(".revenue-split")))

	refreshLeaderGauges(t, ta)
	m := ta.app.metrics
	for _, g := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"quickscale_subscriptions", map[string]string{"plan": "basic", "status": "active"}, 1},
		{"quickscale_subscriptions", map[string]string{"plan": "basic", "status": "past_due"}, 0},
		{"quickscale_subscriptions", map[string]string{"plan": "pro", "status": "active"}, 0},
		{"quickscale_subscriptions", map[string]string{"plan": "pro", "status": "past_due"}, 1},
		{"quickscale_subscriptions_canceling", map[string]string{"plan": "basic"}, 1},
		{"quickscale_subscriptions_canceling", map[string]string{"plan": "pro"}, 0},
		{"quickscale_subscriptions_monthly_revenue_minor_units", map[string]string{"currency": "usd"}, 4500},
	} {
		require.Equal(t, g.want, metricValue(t, m, g.name, g.labels), "%s %v", g.name, g.labels)
	}
	require.Len(t, seriesOf(t, m, "quickscale_subscriptions"), 4, "a series for each plan and live status")

	// At a phone's width the subscriptions table fits the screen.
	phone := uiPhone(t, ta, adminUser.Email)
	require.NoError(t, chromedp.Do(phone, chromedp.Navigate(ta.URL+"/admin/analytics"), chromedp.WaitVisible(chromedp.CSS("#subscription-plans"))))
	wide, err := chromedp.Run(phone, chromedp.Evaluate[int](`Math.max(document.documentElement.scrollWidth - document.documentElement.clientWidth, ...Array.from(document.querySelectorAll(".table-container")).map(function(e){return e.scrollWidth - e.clientWidth;}))`))
	require.NoError(t, err)
	require.LessOrEqual(t, wide, 0, "the analytics page is wider than a 375 px screen")
}

// acctTextSel is acctText of a selection: its text, spaces collapsed, a
// table row's cells separated by a space.
func acctTextSel(sel *goquery.Selection) string {
	if cells := sel.Find("td"); cells.Length() > 0 {
		return strings.Join(cells.Map(func(_ int, c *goquery.Selection) string { return strings.Join(strings.Fields(c.Text()), " ") }), " ")
	}
	return strings.Join(strings.Fields(sel.Text()), " ")
}
