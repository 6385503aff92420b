package main

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/store/storetest"
)

func TestSimulatorPayCanBeRetriedWhenItsWebhookIsNotAccepted(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	ctx := context.Background()
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	checkout := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}}), ta.URL+"/simulator/checkout/")
	path := checkout[len(ta.URL):]

	// Our webhook endpoint cannot store events for a moment (503).
	_, err := ta.store.Pool().Exec(ctx, `
CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
CREATE TRIGGER refuse_events BEFORE INSERT ON stripe_events FOR EACH ROW EXECUTE FUNCTION refuse_events();`)
	require.NoError(t, err)
	r := b.post(path, url.Values{"action": {"pay"}})
	require.Equal(t, http.StatusBadGateway, r.Status, "a failed delivery must be reported, not swallowed")
	if got := b.get(path).Doc(t).Find("#simulator-session").AttrOr("data-status", ""); got != "open" {
		t.Fatalf("after a failed delivery the session is %q, want still open", got)
	}

	_, err = ta.store.Pool().Exec(ctx, `DROP TRIGGER refuse_events ON stripe_events`)
	require.NoError(t, err)
	mustRedirect(t, b.post(path, url.Values{"action": {"pay"}}), "/dashboard/buy-credits/success")
	eventually(t, 10*time.Second, "the credits", func() bool {
		bal, err := ta.store.Balance(ctx, u.ID)
		return err == nil && bal.Total == 100
	})
}

func TestSimulatorDoubleClickedBuyOpensOneCheckout(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	ctx := context.Background()
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	nonce := b.get("/dashboard/buy-credits").Doc(t).Find(`input[name="nonce"]`).First().AttrOr("value", "")
	require.NotEmpty(t, nonce, "the buy form carries a nonce")

	form := url.Values{"pack": {"pack_500"}, "nonce": {nonce}}
	first := mustRedirect(t, b.post("/dashboard/buy-credits", form), ta.URL+"/simulator/checkout/")
	second := mustRedirect(t, b.post("/dashboard/buy-credits", form), ta.URL+"/simulator/checkout/")
	require.Equal(t, first, second, "the same form posted twice must reuse its checkout session")

	// Another pack with the same nonce, and a fresh form, are other checkouts.
	other := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}, "nonce": {nonce}}), ta.URL+"/simulator/checkout/")
	require.NotEqual(t, first, other)
	fresh := b.get("/dashboard/buy-credits").Doc(t).Find(`input[name="nonce"]`).First().AttrOr("value", "")
	require.NotEqual(t, nonce, fresh, "each rendering of the form has its own nonce")
	require.NotEqual(t, first, mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_500"}, "nonce": {fresh}}), ta.URL+"/simulator/checkout/"))

	var sessions, payments int
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM simulator_sessions WHERE user_id = $1), (SELECT count(*) FROM payments WHERE user_id = $1)`, u.ID).Scan(&sessions, &payments))
	require.Equal(t, 3, sessions)
	require.Equal(t, 3, payments)

	// Paying the double-clicked checkout grants its pack once.
	mustRedirect(t, b.post(first[len(ta.URL):], url.Values{"action": {"pay"}}), "/dashboard/buy-credits/success")
	eventually(t, 10*time.Second, "the credits", func() bool {
		bal, err := ta.store.Balance(ctx, u.ID)
		return err == nil && bal.Total == 500
	})
	// Once it is paid, the same form (a page restored from history) buys
	// again instead of sending the customer to the finished checkout.
	again := mustRedirect(t, b.post("/dashboard/buy-credits", form), ta.URL+"/simulator/checkout/")
	require.NotEqual(t, first, again)
}

// A purchase still pending well after checkout (a bank payment clearing,
// or an event that failed) says so and polls less, instead of "usually a
// second or two" forever.
func TestCheckoutPageSaysWhenAPurchaseIsSlow(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	p := whBuy(t, ta)
	page := "/dashboard/buy-credits/success?session_id=" + p.SessionID
	status := p.Browser.get(page).Doc(t).Find("#checkout-status")
	require.Equal(t, "pending", status.AttrOr("data-state", ""))
	require.Equal(t, "every 1s", status.AttrOr("hx-trigger", ""))
	// Nothing is said to be received before it is: a checkout left unpaid
	// reads the same, and links back to it.
	require.Contains(t, status.Text(), "Checking your payment")
	require.NotContains(t, status.Text(), "Payment received")
	require.Contains(t, status.Find("#checkout-resume").AttrOr("href", ""), "/simulator/checkout/"+p.SessionID)

	_, err := ta.store.Pool().Exec(context.Background(), `UPDATE payments SET updated_at = now() - interval '5 minutes' WHERE checkout_session_id = $1`, p.SessionID)
	require.NoError(t, err)
	status = p.Browser.get(page).Doc(t).Find("#checkout-status")
	require.Equal(t, "pending-slow", status.AttrOr("data-state", ""))
	require.Equal(t, "every 30s", status.AttrOr("hx-trigger", ""))
	require.Contains(t, status.Text(), "have not received this payment yet")
}
