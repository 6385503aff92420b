package main

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
)

// A renewal that fails after a switch bills the plan switched to: the
// page, the email and support's page say so (what is owed, for which
// period, when it is tried again) rather than "paid for" and the old plan;
// plans cannot be changed while it is owed (the overdue invoice bills what
// it bills); cancelling says it is still tried; when it goes through, the
// flash names the plan paid for, the receipt says the plan ends as asked
// (not "renews for" the amount paid), and the failure stays on record as
// paid.
func TestAnOverdueRenewalIsShownAsWhatItBills(t *testing.T) {
	t.Parallel()
	ta, u, b := subscriber(t)
	_, admin := whAdmin(t, ta)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	end := *sub.CurrentPeriodEnd
	form := url.Values{"subscription": {formatID(sub.ID)}}
	status := func() store.Subscription { return reload(t, ta, sub) }

	mustRedirect(t, b.post("/dashboard/subscription/switch", switchForm(sub, "pro")), "/dashboard/subscription")
	mustRedirect(t, b.post("/dashboard/subscription/fail-renewal", form), "/dashboard/subscription")
	eventually(t, 10*time.Second, "past due", func() bool { return status().Status == store.SubPastDue })
	mail := ta.waitMail(u.Email, "Your Pro plan's payment of $30.00 did not go through")
	require.Contains(t, mail.Text, "We will try again on")

	period := end.UTC().Format("2 Jan 2006") + " – " + end.AddDate(0, 1, 0).UTC().Format("2 Jan 2006")
	var doc = b.get("/dashboard/subscription").Doc(t)
	eventually(t, 10*time.Second, "the overdue invoice shown", func() bool {
		doc = b.get("/dashboard/subscription").Doc(t)
		return doc.Find("#overdue-amount").Length() == 1
	})
	overdue := acctText(doc, "#subscription-past-due")
	require.Equal(t, "$30.00", acctText(doc, "#overdue-amount"))
	require.Equal(t, "Pro", acctText(doc, "#overdue-plan"))
	require.Contains(t, overdue, period)
	require.Contains(t, overdue, "tried once; the payment provider tries again on")
	require.Contains(t, overdue, "It is the first month of the plan you chose.")
	require.Contains(t, acctText(doc, "#subscription-period"), "Payment due for "+period)
	require.NotContains(t, acctText(doc, "#main"), "Paid for")
	require.Zero(t, doc.Find("#subscription-stay, .subscription-switch-form, #subscription-switch").Length(), "plan changes offered while a payment is owed")
	row := doc.Find("#subscription-failures .subscription-failure")
	require.Equal(t, 1, row.Length())
	require.Equal(t, "false", row.AttrOr("data-paid", ""))
	require.Equal(t, "$30.00Pro", acctTextSel(row.Find("td").Eq(2)))
	require.Contains(t, acctTextSel(row), "Tried once; next try")

	// Support finds the customer from the unpaid invoice, the
	// subscription and its checkout, as Stripe's dashboard shows them.
	unpaid := row.AttrOr("data-invoice", "")
	userLink := fmt.Sprintf(`#customer-found a[href="/admin/users/%d"]`, u.ID)
	for _, q := range []string{unpaid, *sub.StripeSubscriptionID, sub.CheckoutSessionID + "."} {
		require.Equal(t, 1, admin.get("/admin/users?q="+url.QueryEscape(q)).Doc(t).Find(userLink).Length(), "q=%q", q)
	}

	// Staying on Basic now would promise $15 while $30 is still owed.
	r := b.post("/dashboard/subscription/switch", switchForm(sub, "basic"))
	require.Equal(t, http.StatusConflict, r.Status)
	require.Contains(t, acctText(r.Doc(t), "#main"), "overdue")
	require.Equal(t, "pro", *status().NextPlanCode, "the plan chosen changed")

	mustRedirect(t, b.post("/dashboard/subscription/cancel", form), "/dashboard/subscription")
	require.Contains(t, acctText(b.get("/dashboard/subscription").Doc(t), "#flash"), "The overdue payment of $30.00 for "+end.UTC().Format("2 Jan")+" – "+end.AddDate(0, 1, 0).UTC().Format("2 Jan 2006")+" is still tried")

	mustRedirect(t, b.post("/dashboard/subscription/pay-overdue", form), "/dashboard/subscription")
	require.Contains(t, acctText(b.get("/dashboard/subscription").Doc(t), "#flash"), "Your Pro plan is active again")
	eventually(t, 10*time.Second, "the overdue month paid", func() bool {
		return status().Status == store.SubActive && len(subscriptionPayments(t, ta, sub)) == 2
	})
	paid := subscriptionPayments(t, ta, sub)[1]
	require.Equal(t, "pro", *paid.PlanCode)
	receipt := ta.waitMail(u.Email, "Receipt: $30.00 for your Pro plan ("+period+")")
	require.Contains(t, receipt.Text, "It is set to end on "+end.AddDate(0, 1, 0).UTC().Format("2 Jan 2006")+" and does not renew")
	require.NotContains(t, receipt.Text, "It renews on")

	doc = b.get("/dashboard/subscription").Doc(t)
	require.Zero(t, doc.Find("#subscription-past-due").Length())
	row = doc.Find("#subscription-failures .subscription-failure")
	require.Equal(t, "true", row.AttrOr("data-paid", ""))
	require.Contains(t, acctTextSel(row), fmt.Sprintf("payment #%d", paid.ID))

	// Paid, its invoice finds the payment.
	require.Contains(t, acctText(admin.get("/admin/users?q="+url.QueryEscape(unpaid)).Doc(t), "#payment-found"), fmt.Sprintf("Payment #%d", paid.ID))
	li := admin.get(fmt.Sprintf("/admin/users/%d", u.ID)).Doc(t).Find("#admin-invoice-failures .admin-invoice-failure")
	require.Equal(t, 1, li.Length())
	require.Contains(t, acctTextSel(li), "$30.00 (Pro) for "+period+": failed once")
	require.Contains(t, acctTextSel(li), fmt.Sprintf("(payment #%d)", paid.ID))
	whNoViolations(t, ta)
}
