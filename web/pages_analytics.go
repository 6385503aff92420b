package web

import (
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/store"
)

// analyticsRanges are the ranges /admin/analytics offers, in days.
var analyticsRanges = []int{7, 30, 90, 365}

// revenueTotal sums a currency's days.
type revenueTotal struct {
	Currency                    string
	Payments, Refunds           int64
	RevenueMinor, RefundedMinor int64
	SubscriptionMinor           int64
	NetMinor                    int64
}

// recurringTotal is what live plans bill a month in one currency.
type recurringTotal struct {
	Currency     string
	MonthlyMinor int64
}

// AdminAnalytics serves GET /admin/analytics?days=7|30|90|365: revenue
// (live from payments and refunds), subscriptions (live now, started and
// ended) and usage (from the daily rollup) over the last days, today
// included, in UTC.
func (s *Site) AdminAnalytics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		days := 30
		if v := r.URL.Query().Get("days"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || !slices.Contains(analyticsRanges, n) {
				s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "No such range",
					Message: "Analytics cover the last 7, 30, 90 or 365 days.", ActionURL: "/admin/analytics", ActionLabel: "See the last 30 days"})
				return
			}
			days = n
		}
		last := time.Now().UTC().Truncate(24 * time.Hour)
		first := last.AddDate(0, 0, -(days - 1))
		revenue, err := s.store.RevenueBetween(ctx, first, last)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		usage, err := s.store.UsageBetween(ctx, first, last)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		plans, err := s.store.SubscriptionsSince(ctx, first)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		var recurring []recurringTotal
		anySubscriptions := false
		for _, p := range plans {
			anySubscriptions = anySubscriptions || p.Active+p.PastDue+p.Started+p.Ended > 0
			i := 0
			for i < len(recurring) && recurring[i].Currency != p.Currency {
				i++
			}
			if i == len(recurring) {
				recurring = append(recurring, recurringTotal{Currency: p.Currency})
			}
			recurring[i].MonthlyMinor += p.MonthlyMinor
		}
		var totals []revenueTotal
		for _, d := range revenue {
			i := 0
			for i < len(totals) && totals[i].Currency != d.Currency {
				i++
			}
			if i == len(totals) {
				totals = append(totals, revenueTotal{Currency: d.Currency})
			}
			t := &totals[i]
			t.Payments += d.Payments
			t.Refunds += d.Refunds
			t.RevenueMinor += d.RevenueMinor
			t.RefundedMinor += d.RefundedMinor
			t.SubscriptionMinor += d.SubscriptionMinor
			t.NetMinor += d.RevenueMinor - d.RefundedMinor
		}
		// Behind: the rollup counts spends older than its lag and a run's
		// period allow (catching up on a long history, or no workers).
		behind := usage.AsOf != nil && time.Since(*usage.AsOf) > store.RollupLag+2*jobs.RollupInterval
		s.render(w, r, http.StatusOK, "admin_analytics", "Analytics", map[string]any{
			"Behind": behind,
			"Days":   days, "Ranges": analyticsRanges, "First": first, "Last": last,
			"Revenue": revenue, "Totals": totals, "Usage": usage,
			"Plans": plans, "Recurring": recurring, "AnySubscriptions": anySubscriptions, "Lag": int(store.RollupLag / time.Minute),
		})
	})
}
