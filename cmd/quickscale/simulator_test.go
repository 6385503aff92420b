package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
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
	require.Equal(t, again, mustRedirect(t, b.post("/dashboard/buy-credits", form), ta.URL+"/simulator/checkout/"),
		"a double click on the restored page opens one checkout too")
	// And again once that one is finished (declined, here): a third
	// checkout, not the finished second one.
	mustRedirect(t, b.post(again[len(ta.URL):], url.Values{"action": {"decline"}}), "/dashboard/buy-credits/success")
	eventually(t, 10*time.Second, "the declined payment", func() bool {
		p, err := ta.store.UserPaymentBySession(ctx, u.ID, again[len(ta.URL+"/simulator/checkout/"):])
		return err == nil && p.Status == store.PaymentFailed
	})
	third := mustRedirect(t, b.post("/dashboard/buy-credits", form), ta.URL+"/simulator/checkout/")
	require.NotEqual(t, first, third)
	require.NotEqual(t, again, third)
	r := b.get(third[len(ta.URL):])
	require.Equal(t, "open", r.Doc(t).Find("#simulator-session").AttrOr("data-status", ""))
}

// Pay and Decline pressed at once on one checkout deliver one outcome, as
// Stripe finishes a checkout once: the other click finds it finished.
func TestSimulatorPayAndDeclineAtOnceDeliverOneOutcome(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	ctx := context.Background()
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	for round := range 5 {
		checkout := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}}), ta.URL+"/simulator/checkout/")
		path, id := checkout[len(ta.URL):], checkout[len(ta.URL+"/simulator/checkout/"):]
		var wg sync.WaitGroup
		for _, action := range []string{"pay", "decline", "pay", "decline"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest(http.MethodPost, b.url(path), strings.NewReader(url.Values{"action": {action}}.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.Header.Set("Origin", ta.URL)
				req.Header.Set("Sec-Fetch-Site", "same-origin")
				if res, err := b.client.Do(req); err == nil {
					res.Body.Close()
				}
			}()
		}
		wg.Wait()
		var completed, failed int
		require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT
  count(*) FILTER (WHERE type = 'checkout.session.completed'),
  count(*) FILTER (WHERE type = 'checkout.session.async_payment_failed')
  FROM stripe_events WHERE payload::jsonb->'data'->'object'->>'id' = $1`, id).Scan(&completed, &failed))
		require.Equal(t, 1, completed, "round %d: one completed event", round)
		require.LessOrEqual(t, failed, 1, "round %d", round)
	}
}

// Pays at once, more than the database pool has connections, all go
// through: a finishing checkout holds a connection while it delivers its
// webhook, which needs another; the simulator finishes one checkout at a
// time, so it never holds the connections its own webhooks wait for.
func TestSimulatorPaysAtOnceDoNotStarveThePool(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true, Env: map[string]string{"DATABASE_MAX_CONNS": "4"}})
	ctx := context.Background()
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	const pays = 12
	paths := make([]string, pays)
	for i := range paths {
		checkout := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}}), ta.URL+"/simulator/checkout/")
		paths[i] = checkout[len(ta.URL):]
	}
	statuses := make([]int, pays)
	var wg sync.WaitGroup
	for i, path := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, b.url(path), strings.NewReader(url.Values{"action": {"pay"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", ta.URL)
			req.Header.Set("Sec-Fetch-Site", "same-origin")
			client := *b.client
			client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			if res, err := client.Do(req); err == nil {
				res.Body.Close()
				statuses[i] = res.StatusCode
			}
		}()
	}
	wg.Wait()
	for i, st := range statuses {
		require.Equal(t, http.StatusSeeOther, st, "pay %d", i)
	}
	var completed int
	require.NoError(t, ta.store.Pool().QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE type = 'checkout.session.completed'`).Scan(&completed))
	require.Equal(t, pays, completed)
}

// A simulated checkout left open for 24 hours expires, as Stripe's do: the
// simulator delivers checkout.session.expired (every minute, for the ones
// nobody touches) and refuses to take payment for it.
func TestSimulatorExpiresAbandonedCheckouts(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{})
	ctx := context.Background()
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	sim := ta.app.gateway.(*billing.Simulator)
	open := func() (path, id string) {
		checkout := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}}), ta.URL+"/simulator/checkout/")
		return checkout[len(ta.URL):], checkout[len(ta.URL+"/simulator/checkout/"):]
	}
	age := func(id string, d string) {
		_, err := ta.store.Pool().Exec(ctx, `UPDATE simulator_sessions SET created_at = now() - $2::interval WHERE id = $1`, id, d)
		require.NoError(t, err)
	}
	abandoned, recent := "", ""
	_, abandoned = open()
	_, recent = open()
	payPath, paid := open()
	age(abandoned, "25 hours")
	age(recent, "23 hours")

	n, err := sim.ExpireAbandoned(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n, "only the checkout open for more than 24 hours")
	eventually(t, 10*time.Second, "the abandoned payment expired", func() bool {
		p, err := ta.store.UserPaymentBySession(ctx, u.ID, abandoned)
		return err == nil && p.Status == store.PaymentExpired
	})
	p, err := ta.store.UserPaymentBySession(ctx, u.ID, recent)
	require.NoError(t, err)
	require.Equal(t, store.PaymentPending, p.Status)
	n, err = sim.ExpireAbandoned(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "expired once")

	// Pressing Pay on a checkout that expired, before the minute's pass
	// reached it, expires it instead: 409, nothing charged.
	age(paid, "2 days")
	r := b.post(payPath, url.Values{"action": {"pay"}})
	require.Equal(t, http.StatusConflict, r.Status, r.Body)
	require.Contains(t, r.Doc(t).Text(), "It expired and can no longer be paid")
	eventually(t, 10*time.Second, "the payment pressed too late expired", func() bool {
		p, err := ta.store.UserPaymentBySession(ctx, u.ID, paid)
		return err == nil && p.Status == store.PaymentExpired
	})
	bal, err := ta.store.Balance(ctx, u.ID)
	require.NoError(t, err)
	require.Zero(t, bal.Total)
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
