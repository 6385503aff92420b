package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cdpbrowser "github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// exportCSV downloads a CSV export and returns its rows by column name,
// after checking that it is a download of that name.
func exportCSV(t *testing.T, b *browser, path, filename string, header []string) []map[string]string {
	t.Helper()
	r := b.get(path)
	acctRequireStatus(t, r, http.StatusOK)
	require.Equal(t, "text/csv; charset=utf-8", r.Header.Get("Content-Type"))
	require.Equal(t, `attachment; filename="`+filename+`"`, r.Header.Get("Content-Disposition"))
	require.Equal(t, "no-store", r.Header.Get("Cache-Control"))
	records, err := csv.NewReader(strings.NewReader(r.Body)).ReadAll()
	require.NoError(t, err, "the export is not CSV: %q", r.Body)
	require.NotEmpty(t, records, "no header row")
	require.Equal(t, header, records[0])
	var rows []map[string]string
	for _, rec := range records[1:] {
		row := map[string]string{}
		for i, name := range header {
			row[name] = rec[i]
		}
		rows = append(rows, row)
	}
	return rows
}

func csvInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	require.NoError(t, err, "not a whole number: %q", s)
	return n
}

// A customer downloads their credit history and payments, and an admin
// the payments and refunds of a range, as CSV: every entry with what it
// drew on and paid for, refunds negative, sums that agree with the
// balance and the analytics, text that a spreadsheet cannot run, nobody
// else's rows, and clear refusals of bad ranges and other people.
func TestCSVExportsForCustomersAndAccounts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	svc := storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 7})
	u, buyer, pay := simPurchase(t, ta)
	_, _, err := ta.store.Consume(ctx, store.ConsumeRequest{UserID: u.ID, Service: svc, IdempotencyKey: "k1"})
	require.NoError(t, err)
	_, err = ta.store.Adjust(ctx, store.Adjustment{UserID: u.ID, Delta: 3, Reason: "=HYPERLINK(\"http://evil\")"})
	require.NoError(t, err)
	_, admin := whAdmin(t, ta)
	refundBySupport(t, ta, admin, pay, "1.00", "partial refund", 100)
	// Someone else's credits and purchase are in nobody's export but theirs.
	other, _, otherPay := simPurchase(t, ta)

	historyHeader := []string{"entry_id", "time", "type", "credits", "credit_kind", "grant_id", "grant_expires_at",
		"usage_id", "service", "service_name", "payment_id", "reason"}
	rows := exportCSV(t, buyer, "/dashboard/credits/history.csv", "credits-all.csv", historyHeader)
	kinds := []string{}
	var sum int64
	var lastID int64
	for _, row := range rows {
		kinds = append(kinds, row["type"])
		sum += csvInt(t, row["credits"])
		id := csvInt(t, row["entry_id"])
		require.Greater(t, id, lastID, "entries are not oldest first")
		lastID = id
		_, err := time.Parse(time.RFC3339, row["time"])
		require.NoError(t, err)
		require.True(t, strings.HasSuffix(row["time"], "Z"), "time not in UTC: %s", row["time"])
	}
	require.Equal(t, []string{"grant", "consume", "adjust", "clawback"}, kinds)
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, bal.Total, sum, "the history's credits do not add up to the balance")
	bought, spent, added, clawed := rows[0], rows[1], rows[2], rows[3]
	require.Equal(t, fmt.Sprint(pay.Credits), bought["credits"])
	require.Equal(t, "pack", bought["credit_kind"])
	require.Equal(t, fmt.Sprint(pay.ID), bought["payment_id"], "the purchase's grant does not name its payment")
	require.Equal(t, "-7", spent["credits"])
	require.Equal(t, "render", spent["service"])
	require.NotEmpty(t, spent["usage_id"])
	require.Equal(t, bought["grant_id"], spent["grant_id"], "the use does not name the grant it drew on")
	require.Empty(t, spent["payment_id"])
	require.Equal(t, "admin", added["credit_kind"])
	require.Equal(t, "'=HYPERLINK(\"http://evil\")", added["reason"], "a reason a spreadsheet would run as a formula")
	require.Equal(t, fmt.Sprint(pay.ID), clawed["payment_id"], "the refund's clawback does not name its payment")
	require.Less(t, csvInt(t, clawed["credits"]), int64(0))

	// HEAD answers the download's headers, without a body.
	head, err := http.NewRequest(http.MethodHead, ta.URL+"/dashboard/credits/history.csv", nil)
	require.NoError(t, err)
	hr := buyer.do(head)
	require.Equal(t, http.StatusOK, hr.Status)
	require.Equal(t, `attachment; filename="credits-all.csv"`, hr.Header.Get("Content-Disposition"))
	require.Empty(t, hr.Body)

	// A range: days in UTC, both included; a range with nothing is a header.
	today := time.Now().UTC().Format(time.DateOnly)
	tomorrow := time.Now().UTC().AddDate(0, 0, 1).Format(time.DateOnly)
	require.Len(t, exportCSV(t, buyer, "/dashboard/credits/history.csv?from="+today+"&to="+today,
		"credits-"+today+"_"+today+".csv", historyHeader), 4)
	require.Empty(t, exportCSV(t, buyer, "/dashboard/credits/history.csv?from="+tomorrow,
		"credits-from-"+tomorrow+".csv", historyHeader))
	for _, q := range []string{"from=tomorrow", "to=2026-13-01", "from=" + tomorrow + "&to=" + today} {
		doc := acctErrorPage(t, buyer.get("/dashboard/credits/history.csv?"+q), http.StatusBadRequest)
		require.Contains(t, doc.Find("main").Text(), "range", q)
	}

	paymentsHeader := []string{"payment_id", "started_at", "paid_at", "status", "product", "pack", "plan",
		"period_start", "period_end", "credits", "amount", "currency", "refunded", "refunded_at", "credits_taken_back", "receipt_url"}
	payRows := exportCSV(t, buyer, "/dashboard/payments.csv", "payments-all.csv", paymentsHeader)
	require.Len(t, payRows, 1, "another customer's payment is listed")
	p := payRows[0]
	require.Equal(t, fmt.Sprint(pay.ID), p["payment_id"])
	require.Equal(t, store.PaymentPartiallyRefunded, p["status"])
	require.Equal(t, "pack", p["product"])
	require.Equal(t, "pack_500", p["pack"])
	require.Equal(t, fmt.Sprintf("%d.%02d", pay.AmountMinor/100, pay.AmountMinor%100), p["amount"])
	require.Equal(t, "1.00", p["refunded"])
	require.Equal(t, strconv.FormatInt(-csvInt(t, clawed["credits"]), 10), p["credits_taken_back"])
	require.Equal(t, ta.URL+fmt.Sprintf("/dashboard/payments/%d/receipt", pay.ID), p["receipt_url"])
	require.NotEmpty(t, p["paid_at"])
	require.NotEmpty(t, p["refunded_at"])

	// The pages offer the downloads, outside htmx's boost (a boosted GET
	// would swap the file into the page); the form is folded under the list.
	for page, action := range map[string]string{"/dashboard/credits": "/dashboard/credits/history.csv", "/dashboard/payments": "/dashboard/payments.csv"} {
		form := buyer.get(page).Doc(t).Find(`form.csv-export`)
		require.Equal(t, action, form.AttrOr("action", ""), page)
		require.Equal(t, "false", form.AttrOr("hx-boost", ""), page)
	}

	// The accounting export: each payment and refund of the range, refunds
	// negative, summing to the analytics' net for those days.
	moneyHeader := []string{"type", "time", "payment_id", "refund_id", "user_id", "buyer_email", "product", "pack", "plan",
		"period_start", "period_end", "credits", "amount_minor", "amount", "currency", "stripe_payment_intent", "stripe_invoice"}
	money := exportCSV(t, admin, "/admin/payments.csv?from="+today+"&to="+today, "payments-and-refunds-"+today+"_"+today+".csv", moneyHeader)
	var net int64
	byType := map[string]int{}
	for _, m := range money {
		net += csvInt(t, m["amount_minor"])
		byType[m["type"]]++
		switch m["payment_id"] {
		case fmt.Sprint(pay.ID):
			require.Equal(t, fmt.Sprint(u.ID), m["user_id"])
			require.Equal(t, u.Email, m["buyer_email"])
		case fmt.Sprint(otherPay.ID):
			require.Equal(t, fmt.Sprint(other.ID), m["user_id"])
		default:
			t.Fatalf("a payment not made: %v", m)
		}
		if m["type"] == "refund" {
			require.Equal(t, "-100", m["amount_minor"])
			require.Equal(t, "-1.00", m["amount"])
			require.Equal(t, clawed["credits"], m["credits"])
			require.NotEmpty(t, m["refund_id"])
		}
		require.NotEmpty(t, m["stripe_payment_intent"])
	}
	require.Equal(t, map[string]int{"payment": 2, "refund": 1}, byType)
	day := time.Now().UTC().Truncate(24 * time.Hour)
	revenue, err := ta.store.RevenueBetween(ctx, day, day)
	require.NoError(t, err)
	require.Len(t, revenue, 1)
	require.Equal(t, revenue[0].RevenueMinor-revenue[0].RefundedMinor, net, "the export's lines do not add up to the analytics' net")
	require.Empty(t, exportCSV(t, admin, "/admin/payments.csv?to=2001-01-01", "payments-and-refunds-to-2001-01-01.csv", moneyHeader))
	form := admin.get("/admin/analytics").Doc(t).Find(`form#money-export`)
	require.Equal(t, "/admin/payments.csv", form.AttrOr("action", ""))
	require.Equal(t, today, form.Find(`input[name="to"]`).AttrOr("value", ""), "the form does not default to the range shown")

	// Customers cannot read the accounting export, nor anyone signed out
	// their own.
	acctErrorPage(t, buyer.get("/admin/payments.csv"), http.StatusForbidden)
	for _, path := range []string{"/dashboard/credits/history.csv", "/dashboard/payments.csv"} {
		mustRedirect(t, ta.browser().get(path), "/login")
	}
}

// In Chromium at a phone's width, the folded form on the credits page
// downloads the history as a file named for its range: the browser saves
// it (htmx does not swap it into the page), the page stays as it was, and
// nothing is blocked by the content security policy.
func TestBrowserDownloadsTheCreditHistory(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	u, _, pay := simPurchase(t, ta)
	ctx := uiPhone(t, ta, u.Email)
	dir := t.TempDir()
	on := true
	_, err := chromedp.CallBrowser(ctx, cdpbrowser.SetDownloadBehavior, cdpbrowser.SetDownloadBehaviorParams{
		Behavior: cdpbrowser.SetDownloadBehaviorBehaviorAllowAndName, DownloadPath: dir, EventsEnabled: &on})
	require.NoError(t, err)
	begun := make(chan *cdpbrowser.EventDownloadWillBegin, 4)
	done := make(chan *cdpbrowser.EventDownloadProgress, 4)
	require.NoError(t, chromedp.ListenBrowser(ctx, func(ev any) {
		switch e := ev.(type) {
		case *cdpbrowser.EventDownloadWillBegin:
			select {
			case begun <- e:
			default:
			}
		case *cdpbrowser.EventDownloadProgress:
			if e.State != cdpbrowser.DownloadProgressStateInProgress {
				select {
				case done <- e:
				default:
				}
			}
		}
	}))
	today := time.Now().UTC().Format(time.DateOnly)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(ta.URL+"/dashboard/credits"),
		chromedp.WaitVisible(css("tr.history-item")),
		chromedp.Click(css("#history-export-box summary")),
		chromedp.WaitVisible(css("#history-export-from")),
		chromedp.SetValue(css("#history-export-from"), today),
		chromedp.Click(css(`#history-export button[type="submit"]`)),
	))
	var started *cdpbrowser.EventDownloadWillBegin
	select {
	case started = <-begun:
	case <-time.After(15 * time.Second):
		t.Fatal("no download began")
	}
	require.Equal(t, "credits-from-"+today+".csv", started.SuggestedFilename)
	var finished *cdpbrowser.EventDownloadProgress
	select {
	case finished = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the download did not finish")
	}
	require.Equal(t, cdpbrowser.DownloadProgressStateCompleted, finished.State)
	body, err := os.ReadFile(filepath.Join(dir, started.GUID))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(body), "entry_id,time,type,"), "not the history: %q", body)
	require.Contains(t, string(body), fmt.Sprintf(",grant,%d,pack,", pay.Credits))
	at, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Equal(t, ta.URL+"/dashboard/credits", at, "the download replaced the page")
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("tr.history-item").length`))
	require.NoError(t, err)
	require.Equal(t, 1, rows, "the page changed under the download")
	require.Empty(t, cspBlocked(t, ctx))
}
