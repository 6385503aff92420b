package web

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/quickscale/quickscale/store"
)

func TestRelativeTimeSaysWhichWay(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		at   time.Time
		want string
	}{
		{now.Add(30 * time.Second), "in under a minute"}, // "26 credits expire just now" read as past
		{now.Add(-30 * time.Second), "just now"},
		{now.Add(5*time.Minute + 10*time.Second), "in 5 minutes"},
		{now.Add(-3*time.Hour - time.Minute), "3 hours ago"},
		{now.Add(72*time.Hour + time.Minute), "in 3 days"},
		{now.Add(10*24*time.Hour - time.Minute), "in 10 days"},
		{now.Add(time.Minute + 59*time.Second), "in 2 minutes"},
		{now.Add(59*time.Minute + 40*time.Second), "in 1 hour"},
		{now.Add(-47*time.Hour - 50*time.Minute), "2 days ago"},
		{now.AddDate(0, 0, 729), "in 729 days"},
		{now.AddDate(0, 0, 731), "in 2 years"},
		{now.AddDate(100, 0, 0), "in 100 years"},
		// Further than a time.Duration reaches (about 292 years): it used to
		// overflow and read "in under a minute".
		{now.AddDate(400, 0, 0), "in 400 years"},
		{now.AddDate(-400, 0, 0), "400 years ago"},
	} {
		if got := relativeTime(c.at); got != c.want {
			t.Errorf("relativeTime(now%+v) = %q, want %q", c.at.Sub(now).Round(time.Second), got, c.want)
		}
	}
}

func TestCountNounCountsOneAsOne(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{1: "1 credit", -1: "-1 credit", 0: "0 credits", 2: "2 credits", 1000: "1,000 credits"} {
		if got := countNoun(n, "credit"); got != want {
			t.Errorf("countNoun(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestAuditDetailPrintsNestedValuesAsJSON(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		key  string
		v    any
		want string
	}{
		{"reason", "text", "text"},
		{"reason", "1000000", "1000000"},
		{"delta", json.Number("1000000"), "1,000,000"},
		{"balance_after", json.Number("-1500"), "-1,500"},
		{"delta", json.Number("2.5"), "2.5"},
		{"credit_cost", json.Number("2000"), "2,000"},
		{"grant_id", json.Number("1000000"), "1000000"},
		{"id", json.Number("12345"), "12345"},
		{"request", json.Number("20261127"), "20261127"}, // a River UI body, as sent
		{"service", map[string]any{"active": true, "credit_cost": json.Number("5000")}, `{"active":true,"credit_cost":5000}`},
		{"drawn", []any{map[string]any{"grant_id": json.Number("3")}}, `[{"grant_id":3}]`},
		{"before", map[string]any{"slug": "ocr", "credit_cost": json.Number("1500"), "active": true}, "{active: true, credit_cost: 1,500, slug: ocr}"},
		{"request", map[string]any{"before": json.Number("1500")}, `{"before":1500}`},
	} {
		if got := auditDetail(c.key, c.v); got != c.want {
			t.Errorf("auditDetail(%q, %#v) = %q, want %q", c.key, c.v, got, c.want)
		}
	}
}

// Event details link the users they name, and stay escaped text otherwise.
func TestUserLinksLinkUsersAndEscapeTheRest(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"granted 500 credits to user 4":           `granted 500 credits to <a href="/admin/users/4">user 4</a>`,
		"paid after its buyer (user #12) deleted": `paid after its buyer (<a href="/admin/users/12">user #12</a>) deleted`,
		"<script>user 7</script>":                 `&lt;script&gt;<a href="/admin/users/7">user 7</a>&lt;/script&gt;`,
		"superuser 5 and users 6":                 "superuser 5 and users 6",
	} {
		if got := string(userLinks(in)); got != want {
			t.Errorf("userLinks(%q) = %q, want %q", in, got, want)
		}
	}
}

// Grants of one kind on a history line are told apart by expiry, by when
// they were added, and by number when those read alike; a kind drawn once
// needs no label.
func TestDrawnLabelTellsGrantsOfOneKindApart(t *testing.T) {
	t.Parallel()
	soon := time.Now().Add(time.Hour).UTC().Truncate(time.Minute)
	later := soon.Add(24 * time.Hour)
	gone := soon.Add(-48 * time.Hour)
	added := time.Date(2026, 11, 2, 10, 4, 5, 0, time.UTC)
	drawn := []store.Drawn{
		{GrantID: 1, Kind: "subscription", GrantExpiresAt: &gone},
		{GrantID: 2, Kind: "subscription", GrantExpiresAt: &later},
		{GrantID: 3, Kind: "promo", GrantExpiresAt: &soon},
		{GrantID: 4, Kind: "promo", GrantExpiresAt: &soon},
		{GrantID: 5, Kind: "pack", GrantCreatedAt: added},
		{GrantID: 6, Kind: "pack", GrantCreatedAt: added.Add(time.Second)},
		{GrantID: 7, Kind: "admin", GrantCreatedAt: added},
	}
	at := func(tm time.Time) string { return tm.Format("2 Jan 2006 15:04 UTC") }
	got := drawnLabels(drawn)
	for i, want := range []string{
		"expired " + at(gone),
		"expires " + at(later),
		"expires " + at(soon) + ", grant #3",
		"expires " + at(soon) + ", grant #4",
		"added 2 Nov 2026 10:04 UTC, grant #5",
		"added 2 Nov 2026 10:04 UTC, grant #6",
		"",
	} {
		if got[i] != want {
			t.Errorf("label of grant %d = %q, want %q", drawn[i].GrantID, got[i], want)
		}
	}
}

// Expiries a few seconds apart read apart; one on a whole minute reads as
// every other time on the pages.
func TestExpiryTimeShowsSecondsOnlyWhenThereAreAny(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 27, 12, 5, 0, 0, time.UTC)
	for tm, want := range map[time.Time]string{
		at:                                   "27 Nov 2026 12:05 UTC",
		at.Add(10 * time.Second):             "27 Nov 2026 12:05:10 UTC",
		at.Add(50 * time.Second):             "27 Nov 2026 12:05:50 UTC",
		at.Add(time.Millisecond):             "27 Nov 2026 12:05:00 UTC",
		at.In(time.FixedZone("NST", -12600)): "27 Nov 2026 12:05 UTC",
	} {
		if got := expiryTime(tm); got != want {
			t.Errorf("expiryTime(%v) = %q, want %q", tm, got, want)
		}
	}
}

// Money is shown in its currency's units: cents for most, whole units for
// Stripe's zero-decimal currencies (3,000 JPY is not 30.00).
func TestFormatMoneyKnowsZeroDecimalCurrencies(t *testing.T) {
	for _, c := range []struct {
		minor    int64
		currency string
		want     string
	}{
		{2000, "usd", "$20.00"}, {123456, "eur", "€1,234.56"}, {-550, "gbp", "-£5.50"},
		{1500, "cad", "CAD 15.00"}, {3000, "jpy", "JPY 3,000"}, {5, "krw", "KRW 5"},
		// Stripe's three-decimal currencies count thousandths (fils, baisa).
		{1000, "kwd", "KWD 1.000"}, {1234567, "bhd", "BHD 1,234.567"}, {-50, "omr", "-OMR 0.050"}, {5, "jod", "JOD 0.005"}, {10, "TND", "TND 0.010"},
	} {
		if got := formatMoney(c.minor, c.currency); got != c.want {
			t.Errorf("formatMoney(%d, %s) = %q, want %q", c.minor, c.currency, got, c.want)
		}
	}
}

// A refund's amount is read in the payment's currency: its own symbol or
// code, commas only between thousands, cents only where it has them.
func TestParseAmountReadsThePaymentsCurrency(t *testing.T) {
	for _, c := range []struct {
		in, currency string
		want         int64
		ok           bool
	}{
		{"12.50", "usd", 1250, true}, {"$12.5", "usd", 1250, true}, {"1,012.50", "usd", 101250, true}, {" 5 ", "usd", 500, true},
		{"€5", "usd", 0, false}, {"1,0", "usd", 0, false}, {"12,50", "eur", 0, false}, {"5.555", "usd", 0, false}, {"-5", "usd", 0, false},
		{"CAD 15.00", "cad", 1500, true}, {"15", "cad", 1500, true}, {"usd 5", "cad", 0, false},
		{"3,000", "jpy", 3000, true}, {"¥3000", "jpy", 3000, true}, {"JPY 3000", "jpy", 3000, true}, {"30.00", "jpy", 0, false},
		{"1.000", "kwd", 1000, true}, {"1.5", "kwd", 1500, true}, {"KWD 12.25", "kwd", 12250, true}, {"1,000.005", "bhd", 1000005, true},
		{"1.0005", "kwd", 0, false}, {"1.", "kwd", 0, false},
	} {
		got, ok := parseAmount(c.in, c.currency)
		if ok != c.ok || got != c.want {
			t.Errorf("parseAmount(%q, %s) = %d, %v; want %d, %v", c.in, c.currency, got, ok, c.want, c.ok)
		}
	}
	if got := amountInput(300000, "jpy"); got != "300000" {
		t.Errorf("amountInput in JPY = %q", got)
	}
	if got := amountInput(1505, "usd"); got != "15.05" {
		t.Errorf("amountInput in USD = %q", got)
	}
	if got := amountInput(1505, "kwd"); got != "1.505" {
		t.Errorf("amountInput in KWD = %q", got)
	}
}

// A price per credit is in the pack's currency (h33: a KWD pack showed
// "10.0¢"): cents for US dollars, else the currency's units with two more
// decimals than it has.
func TestPerCreditIsInThePacksCurrency(t *testing.T) {
	for _, c := range []struct {
		minor, credits int64
		currency, want string
	}{
		{2000, 500, "usd", "4.0¢"}, {1500, 1000, "usd", "1.5¢"}, {5000, 500, "kwd", "KWD 0.01000"},
		{3000, 500, "jpy", "JPY 6.00"}, {2000, 500, "eur", "€0.0400"}, {1, 3, "gbp", "£0.0033"}, {100, 0, "usd", "–"},
		// Thousands grouped as money is (h34).
		{100000000, 10, "jpy", "JPY 10,000,000.00"}, {10000, 10, "usd", "1,000.0¢"}, {99999999, 1, "chf", "CHF 999,999.9900"},
	} {
		if got := perCredit(c.minor, c.credits, c.currency); got != c.want {
			t.Errorf("perCredit(%d, %d, %s) = %q, want %q", c.minor, c.credits, c.currency, got, c.want)
		}
	}
}
