package main

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/quickscale/quickscale/billing/billingtest"
	"github.com/quickscale/quickscale/store/storetest"
)

func stripeEnv(t *testing.T) map[string]string {
	return map[string]string{
		"STRIPE_SECRET_KEY": "sk_test_123", "STRIPE_WEBHOOK_SECRET": "whsec_test_123",
		"STRIPE_API_URL": billingtest.StartStripeMock(t),
	}
}

func TestStripeSyncRecordsThePriceOfEveryPack(t *testing.T) {
	t.Parallel()
	st, env := cliStore(t)
	for k, v := range stripeEnv(t) {
		env[k] = v
	}
	code, stdout, stderr := runCmd(t, env, "", "stripe", "sync")
	require.Equal(t, 0, code, stderr)
	packs, err := st.Packs(context.Background())
	require.NoError(t, err)
	require.Len(t, packs, 3)
	for _, p := range packs {
		if p.StripePriceID == nil || !strings.HasPrefix(*p.StripePriceID, "price_") {
			t.Errorf("pack %s has no Stripe price after sync: %v", p.Code, p.StripePriceID)
		}
		if !strings.Contains(stdout, p.Code) || !strings.Contains(stdout, "lookup_key="+p.LookupKey) {
			t.Errorf("sync output does not report %s:\n%s", p.Code, stdout)
		}
	}
	plans, err := st.Plans(context.Background())
	require.NoError(t, err)
	require.Len(t, plans, 2)
	for _, p := range plans {
		if p.StripePriceID == nil || !strings.HasPrefix(*p.StripePriceID, "price_") {
			t.Errorf("plan %s has no Stripe price after sync: %v", p.Code, p.StripePriceID)
		}
		require.Contains(t, stdout, "lookup_key="+p.LookupKey)
	}
	// Running it again is safe.
	code, _, stderr = runCmd(t, env, "", "stripe", "sync")
	require.Equal(t, 0, code, stderr)
}

// With Stripe, Subscribe opens a checkout in subscription mode at Stripe
// (stripe-mock checks the request) and records the subscription at its
// checkout, pending; nothing is granted before its invoice is paid.
func TestSubscribingWithStripeRecordsTheCheckoutAndRedirects(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: stripeEnv(t), NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	doc := b.get("/dashboard/subscription").Doc(t)
	require.Zero(t, doc.Find("#subscription-sim-renew").Length())
	r := b.post("/dashboard/subscription", url.Values{"plan": {"pro"}, "nonce": {"n"}})
	require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	require.True(t, strings.HasPrefix(r.Header.Get("Location"), "https://checkout.stripe.com/"), r.Header.Get("Location"))
	open, found, err := ta.store.OpenSubscriptionCheckout(context.Background(), u.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, "pro", open.PlanCode)
	require.True(t, strings.HasPrefix(open.CheckoutSessionID, "cs_"))
	// The page offers to go back to it.
	require.Equal(t, 1, b.get("/dashboard/subscription").Doc(t).Find("#subscription-open").Length())
	// The simulator's clock does not exist with a real gateway.
	r = b.post("/dashboard/subscription/renew", url.Values{"subscription": {"1"}})
	require.Equal(t, http.StatusNotFound, r.Status)
}

func TestBuyingWithStripeRecordsTheSessionAndRedirectsToCheckout(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Env: stripeEnv(t), NoWorkers: true})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := ta.signIn(u.Email)
	if b.get("/dashboard/buy-credits").Doc(t).Find("#simulated-banner").Length() != 0 {
		t.Fatal("the simulated-payments banner shows with a Stripe key")
	}
	r := b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}, "nonce": {"n"}})
	require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	loc := r.Header.Get("Location")
	if !strings.HasPrefix(loc, "https://checkout.stripe.com/") {
		t.Fatalf("redirected to %q, want Stripe Checkout", loc)
	}
	page, err := ta.store.PaymentsOfUser(context.Background(), u.ID, 0, 0, 10)
	require.NoError(t, err)
	ps := page.Items
	if len(ps) != 1 || ps[0].Status != "pending" || !strings.HasPrefix(ps[0].CheckoutSessionID, "cs_") || ps[0].AmountMinor != 500 {
		t.Fatalf("payments after checkout: %+v", ps)
	}
	customer, err := ta.store.CustomerID(context.Background(), u.ID)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(customer, "cus_"), "customer %q", customer)
	// The simulator's pages do not exist with a real gateway.
	if r := b.get("/simulator/checkout/" + ps[0].CheckoutSessionID); r.Status != http.StatusNotFound {
		t.Fatalf("simulator page with Stripe: %d", r.Status)
	}
}

// After a change of address, the user's Stripe customer is given the new
// one by a job (stripe-mock checks the request against API version
// 2023-10-16), so that Stripe's own receipts follow.
func TestChangeOfAddressUpdatesTheStripeCustomer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{Env: stripeEnv(t)})
	u, b := acctNewUserSignedIn(ta, storetest.UserOpts{Email: "buyer-before@example.com"})
	r := b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_100"}, "nonce": {"n"}})
	require.Equal(t, http.StatusSeeOther, r.Status, r.Body)
	customer, err := ta.store.CustomerID(ctx, u.ID)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(customer, "cus_"), "customer %q", customer)

	mustRedirect(t, b.post("/settings/email", url.Values{"current_password": {storetest.DefaultPassword}, "email": {"buyer-after@example.com"}}), "/settings")
	token := acctTokenOf(t, ta.waitMail("buyer-after@example.com", "Confirm your new email address").Text, "/verify?token=")
	mustRedirect(t, b.post("/verify", url.Values{"token": {token}}), "/dashboard")
	eventually(t, 10*time.Second, "the customer updated", func() bool {
		return whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'sync_customer_email' AND state = 'completed' AND (args->>'user_id')::bigint = $1`, u.ID) == 1
	})
}
