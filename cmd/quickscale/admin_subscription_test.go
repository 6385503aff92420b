package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Support ends a customer's plan from their admin page, with a reason
// kept in the audit log: at its period's end (the provider told first,
// the customer emailed), then at once (a job ends it at the provider; its
// event ends it here and the customer is emailed that our team ended it).
// No reason, another user's subscription or an ended plan change nothing.
func TestSupportEndsACustomersPlan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	admin, ab := whAdmin(t, ta)
	page := fmt.Sprintf("/admin/users/%d", u.ID)
	post := func(action, reason string) response {
		return ab.post(page+"/subscription", url.Values{"subscription": {formatID(sub.ID)}, "action": {action}, "reason": {reason}})
	}
	doc := ab.get(page).Doc(t)
	require.Equal(t, 2, doc.Find(".admin-end-subscription button[name=action]").Length())

	mustRedirect(t, post("cancel", " "), page)
	require.Contains(t, acctText(ab.get(page).Doc(t), "#flash"), "The plan was not changed. Say why")
	require.False(t, reload(t, ta, sub).CancelAtPeriodEnd)
	require.Equal(t, http.StatusBadRequest, post("pause", "asked").Status)
	other := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	r := ab.post(fmt.Sprintf("/admin/users/%d/subscription", other.ID), url.Values{"subscription": {formatID(sub.ID)}, "action": {"cancel"}, "reason": {"x"}})
	require.Equal(t, http.StatusNotFound, r.Status, "another user's subscription")

	end := sub.CurrentPeriodEnd.UTC().Format("2 Jan 2006")
	mustRedirect(t, post("cancel", "asked by phone, cannot sign in"), page)
	require.Contains(t, acctText(ab.get(page).Doc(t), "#flash"), "The Basic plan ends on "+end+" and does not renew")
	require.True(t, reload(t, ta, sub).CancelAtPeriodEnd)
	require.True(t, mustSimSub(t, ta, sub).CancelAtPeriodEnd, "the provider was not told")
	mail := ta.waitMail(u.Email, "Your Basic plan ends on "+end)
	require.Contains(t, mail.Text, "Our team set your Basic plan to end on "+end)
	require.Contains(t, mail.Text, "If you did not ask for this, contact us.")
	entries, err := ta.store.AuditFor(ctx, u.ID, 10)
	require.NoError(t, err)
	require.Equal(t, "subscription.cancel", entries[0].Action)
	require.Equal(t, admin.ID, *entries[0].ActorUserID)
	require.Equal(t, "asked by phone, cannot sign in", entries[0].Details["reason"])
	// Set to end: only End it now is offered.
	require.Equal(t, 1, ab.get(page).Doc(t).Find(".admin-end-subscription button[name=action]").Length())

	mustRedirect(t, post("end_now", "chargeback opened"), page)
	eventually(t, 10*time.Second, "the plan ended", func() bool { return reload(t, ta, sub).Status == store.SubCanceled })
	ended := ta.waitMail(u.Email, "Your Basic plan has ended")
	require.Contains(t, ended.Text, "It was ended by our team.")
	entries, err = ta.store.AuditFor(ctx, u.ID, 10)
	require.NoError(t, err)
	require.Equal(t, "subscription.end", entries[0].Action)
	require.Zero(t, ab.get(page).Doc(t).Find(".admin-end-subscription").Length(), "an ended plan offers no end")
	mustRedirect(t, post("end_now", "again"), page)
	require.Contains(t, acctText(ab.get(page).Doc(t), "#flash"), "has ended already: nothing was changed")
	whNoViolations(t, ta)
}

// In a real browser at a phone's width, support opens End this plan…,
// gives a reason and presses Cancel at its period's end: the dialog asks
// first, and the button pressed is the action sent (a boosted form keeps
// its submitter).
func TestBrowserSupportCancelsAPlanAtAPhonesWidth(t *testing.T) {
	t.Parallel()
	ta, u, b := subscriber(t)
	sub := simSubscribe(t, ta, b, u.ID, "basic")
	admin, _ := whAdmin(t, ta)
	phone := uiPhone(t, ta, admin.Email)
	go func() {
		for ev, err := range chromedp.Events(phone, page.JavascriptDialogOpening) {
			if err != nil {
				return
			}
			if strings.Contains(ev.Message, "End the customer's Basic plan?") {
				_, _ = chromedp.Call(phone, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
			}
		}
	}()
	require.NoError(t, chromedp.Do(phone,
		chromedp.Navigate(fmt.Sprintf("%s/admin/users/%d", ta.URL, u.ID)),
		chromedp.WaitVisible(css(".admin-end-subscription summary")),
		chromedp.Click(css(".admin-end-subscription summary")),
		chromedp.WaitVisible(css(fmt.Sprintf("#end-reason-%d", sub.ID))),
		chromedp.SendKeys(css(fmt.Sprintf("#end-reason-%d", sub.ID)), "asked by phone"),
		chromedp.Click(css(`.admin-end-subscription button[value="cancel"]`)),
		chromedp.WaitVisible(css("#flash")),
	))
	flash, err := chromedp.Run(phone, chromedp.Text(css("#flash")))
	require.NoError(t, err)
	require.Contains(t, flash, "The Basic plan ends on")
	require.True(t, reload(t, ta, sub).CancelAtPeriodEnd)
	require.Equal(t, store.SubActive, reload(t, ta, sub).Status, "End it now was sent instead")
	wide, err := chromedp.Run(phone, chromedp.Evaluate[int](`document.documentElement.scrollWidth - document.documentElement.clientWidth`))
	require.NoError(t, err)
	require.LessOrEqual(t, wide, 0, "the admin user page is wider than a 375 px screen")
	require.Empty(t, cspBlocked(t, phone))
}
