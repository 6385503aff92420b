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
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

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
	path, _, nonce := refundForm(t, admin, pay.ID)
	mustRedirect(t, admin.post(path, url.Values{"amount": {"5"}, "reason": {"partly"}, "nonce": {nonce}}), fmt.Sprintf("/admin/users/%d", u.ID))
	waitRefunded(t, ta, pay, 500)
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
	require.Zero(t, doc.Find("table").Length())

	// A rollup far behind (catching up, or no workers) says so.
	_, err := ta.store.Pool().Exec(context.Background(), `UPDATE analytics_rollup_state SET final_through = current_date - 3, as_of = now() - interval '3 days', rolled_at = now()`)
	require.NoError(t, err)
	doc = admin.get("/admin/analytics").Doc(t)
	require.Contains(t, acctText(doc, "#usage-behind"), "The usage rollup is behind")
	require.Zero(t, doc.Find("#usage-as-of").Length())
}

// acctTextSel is acctText of a selection: its text, spaces collapsed, a
// table row's cells separated by a space.
func acctTextSel(sel *goquery.Selection) string {
	if cells := sel.Find("td"); cells.Length() > 0 {
		return strings.Join(cells.Map(func(_ int, c *goquery.Selection) string { return strings.Join(strings.Fields(c.Text()), " ") }), " ")
	}
	return strings.Join(strings.Fields(sel.Text()), " ")
}
