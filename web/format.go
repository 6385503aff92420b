package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
)

// dateTimeLayout is how pages write an instant ("datetime").
const dateTimeLayout = "2 Jan 2006 15:04 UTC"

// expiryTime writes an expiry ("expirytime"): to the minute, or to the
// second when it is not on a whole minute, so that two expiries a few
// seconds apart do not read alike, nor one read earlier than it is.
func expiryTime(tm time.Time) string {
	tm = tm.UTC()
	if tm.Second() != 0 || tm.Nanosecond() != 0 {
		return tm.Format("2 Jan 2006 15:04:05 UTC")
	}
	return tm.Format(dateTimeLayout)
}

// formatInt writes n with thousands separators.
func formatInt(n int64) string { return billing.FormatCredits(n) }

// formatMoney shows integer minor units as money.
func formatMoney(minor int64, currency string) string { return billing.FormatMoney(minor, currency) }

// perCredit shows a price per credit with enough precision to compare
// packs: in cents for US dollars ((2000, 500, usd) → "4.0¢"), else in the
// currency's units with two decimals more than it has ((5000, 500, kwd) →
// "KWD 0.01000", (3000, 500, jpy) → "JPY 6.00", (2000, 500, eur) →
// "€0.0400").
func perCredit(minor, credits int64, currency string) string {
	if credits <= 0 {
		return "–"
	}
	if strings.EqualFold(currency, "usd") {
		tenths := (minor*10 + credits/2) / credits
		return fmt.Sprintf("%s.%d¢", billing.FormatCredits(tenths/10), tenths%10)
	}
	// Hundredths of a minor unit, rounded: the currency's decimals plus two.
	hundredths := (minor*100 + credits/2) / credits
	d := billing.CurrencyDecimals(currency) + 2
	per := int64(1)
	for range d {
		per *= 10
	}
	// The currency's symbol or code, as money shows it ("€", "KWD ").
	zero := billing.FormatMoney(0, currency)
	symbol := zero[:strings.IndexByte(zero, '0')]
	return fmt.Sprintf("%s%s.%0*d", symbol, billing.FormatCredits(hundredths/per), d, hundredths%per)
}

// relativeTime says how long ago (or until) t is, for people.
func relativeTime(t time.Time) string {
	// Measured from the earlier end, so that a far-off time saturates to
	// the longest Duration instead of overflowing when negated.
	now := time.Now()
	future := t.After(now)
	d := now.Sub(t)
	if future {
		d = t.Sub(now)
	}
	// To the nearest unit: 9 days 23 hours is "in 10 days", not "in 9
	// days", which reads as a day more than there is.
	var s string
	switch {
	case d < time.Minute && future:
		return "in under a minute"
	case d < time.Minute:
		return "just now"
	case d.Round(time.Minute) < time.Hour:
		s = plural(int64(d.Round(time.Minute)/time.Minute), "minute")
	case d.Round(time.Hour) < 48*time.Hour:
		s = plural(int64(d.Round(time.Hour)/time.Hour), "hour")
	case d.Round(24*time.Hour) < 730*24*time.Hour:
		s = plural(int64(d.Round(24*time.Hour)/(24*time.Hour)), "day")
	default:
		// In seconds, which reach further than a Duration (about 292 years).
		s = plural(int64(math.Round(math.Abs(float64(t.Unix()-now.Unix()))/(365.25*24*3600))), "year")
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// navMark is a navbar link's aria-current: "page" when the page shown is
// the link's (linkPage: its template, e.g. after a form's POST answered
// with it), "true" when the address is below the link's (href) and
// section says the link heads a section ("/admin/users/7" under Admin),
// "" otherwise — and for an error page ("Page not found" at
// /admin/nope is in no section).
func navMark(page, path, linkPage, href string, section bool) string {
	switch {
	case page == "error":
		return ""
	case page == linkPage || path == href:
		return "page"
	case section && within(path, href):
		return "true"
	}
	return ""
}

// within says whether the page at path is section or below it:
// "/admin/users" is within "/admin", "/administrators" is not.
func within(path, section string) bool {
	return path == section || strings.HasPrefix(path, section+"/")
}

// drawnLabels tells apart each grant a history line drew on from the
// others of its kind on that line: by its expiry, or by when it was added
// if it never expires, and by its number where those are the same (two
// packs bought in one minute). "" for the only one of its kind.
func drawnLabels(drawn []store.Drawn) []string {
	now := time.Now()
	labels := make([]string, len(drawn))
	kinds := map[string]int{}
	alike := map[[2]string]int{}
	for i, d := range drawn {
		switch {
		case d.GrantExpiresAt == nil:
			labels[i] = "added " + d.GrantCreatedAt.UTC().Format(dateTimeLayout)
		case d.GrantExpiresAt.After(now):
			labels[i] = "expires " + expiryTime(*d.GrantExpiresAt)
		default:
			labels[i] = "expired " + expiryTime(*d.GrantExpiresAt)
		}
		kinds[d.Kind]++
		alike[[2]string{d.Kind, labels[i]}]++
	}
	// One pass each way: a use drawing 16,000 grants compared each with
	// every other (a 40 s page).
	for i, d := range drawn {
		switch {
		case kinds[d.Kind] == 1:
			labels[i] = ""
		case alike[[2]string{d.Kind, labels[i]}] > 1:
			labels[i] += ", grant #" + strconv.FormatInt(d.GrantID, 10)
		}
	}
	return labels
}

// maxDrawnListed bounds the grants a history line lists; the rest are
// summed ("and 9,950 more from 9,950 more grants"): a use drawing on
// 16,000 grants made a 2 MB page. The API's usage lists every one.
const maxDrawnListed = 50

// drawnFirst is what a history line lists of the grants it drew on.
func drawnFirst(drawn []store.Drawn) []store.Drawn {
	return drawn[:min(len(drawn), maxDrawnListed)]
}

// drawnSummary sums the grants a history line does not list.
type drawnSummary struct{ Grants, Credits int64 }

// drawnRest sums the grants past drawnFirst (nil: none).
func drawnRest(drawn []store.Drawn) *drawnSummary {
	if len(drawn) <= maxDrawnListed {
		return nil
	}
	var r drawnSummary
	for _, d := range drawn[maxDrawnListed:] {
		r.Grants++
		r.Credits += d.Credits
	}
	return &r
}

func plural(n int64, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// prettyJSON indents a JSON document for display; invalid JSON is shown as is.
func prettyJSON(b []byte) string {
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return string(b)
	}
	return out.String()
}

// countNoun writes n and a noun in the right number: "1 credit", "1,500 credits".
func countNoun(n int64, noun string) string {
	if n == 1 || n == -1 {
		return formatInt(n) + " " + noun
	}
	return formatInt(n) + " " + noun + "s"
}

// auditAmounts are the details' keys that hold credits: printed with
// thousands separators. Others (ids, a River UI request's body as sent)
// are printed as they are.
var auditAmounts = map[string]bool{"delta": true, "balance_after": true, "credit_cost": true}

// auditDetail prints one value of an audit entry's details (key: its
// name): text as it is; amounts with thousands separators ("delta:
// -1,500"); a service's details before a change (service.set's "before")
// as the entry's own values are printed, "{credit_cost: 1,500, name:
// Foo}"; other nested objects and lists as compact JSON (not Go's
// map[...] notation), exactly as stored.
func auditDetail(key string, v any) string {
	switch v := v.(type) {
	case map[string]any:
		if key == "before" {
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, len(keys))
			for i, k := range keys {
				parts[i] = k + ": " + auditDetail(k, v[k])
			}
			return "{" + strings.Join(parts, ", ") + "}"
		}
		if b, err := json.Marshal(v); err == nil {
			return string(b)
		}
	case []any:
		if b, err := json.Marshal(v); err == nil {
			return string(b)
		}
	case json.Number:
		if n, err := v.Int64(); err == nil && auditAmounts[key] {
			return formatInt(n)
		}
	}
	return fmt.Sprint(v)
}

// disputeLabel names a dispute's status as support reads it.
func disputeLabel(status string) string {
	switch status {
	case "warning_needs_response", "warning_under_review":
		return "Inquiry open"
	case "warning_closed":
		return "Inquiry closed"
	case "needs_response":
		return "Disputed: needs an answer"
	case "under_review":
		return "Disputed: under review"
	case "won":
		return "Dispute won"
	}
	return "Dispute lost"
}
