package billing_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/billing/billingtest"
	"github.com/quickscale/quickscale/store"
)

// The real gateway against stripe-mock v0.183.0, whose OpenAPI spec is
// Stripe's for API version 2023-10-16: it answers 400 to any parameter that
// version does not accept, and (with -strict-version-check) to requests made
// for another version.

// sent is one request the gateway made and how stripe-mock answered.
type sent struct {
	Method, Path string
	Query, Form  url.Values
	Header       http.Header
	Status       int
}

// recorder forwards to stripe-mock and keeps every request. override, when
// set, may answer a request itself (to play a state stripe-mock, which is
// stateless, cannot).
type recorder struct {
	mu       sync.Mutex
	reqs     []sent
	override func(*http.Request) *http.Response
}

func (rc *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		if body, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	form, _ := url.ParseQuery(string(body))
	var resp *http.Response
	if rc.override != nil {
		resp = rc.override(req)
	}
	if resp == nil {
		var err error
		if resp, err = http.DefaultTransport.RoundTrip(req); err != nil {
			return nil, err
		}
	}
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, sent{Method: req.Method, Path: req.URL.Path, Query: req.URL.Query(), Form: form, Header: req.Header.Clone(), Status: resp.StatusCode})
	rc.mu.Unlock()
	return resp, nil
}

func (rc *recorder) all() []sent {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]sent(nil), rc.reqs...)
}

// only returns the single request made, failing otherwise.
func (rc *recorder) only(t *testing.T) sent {
	t.Helper()
	reqs := rc.all()
	require.Len(t, reqs, 1)
	return reqs[0]
}

func newGateway(t *testing.T) (*billing.Stripe, *recorder) {
	t.Helper()
	rc := &recorder{}
	base := billingtest.StartStripeMock(t)
	return billing.NewStripe(billing.StripeConfig{SecretKey: "sk_test_123", APIURL: base, HTTPClient: &http.Client{Transport: rc, Timeout: 30 * time.Second}}), rc
}

func pack(code string, credits, price int64) store.Pack {
	return store.Pack{Code: code, Name: code + " credits", Credits: credits, PriceMinor: price, Currency: "usd", LookupKey: "quickscale_" + code, Active: true}
}

// requirePinnedVersion checks a request was made for API version 2023-10-16.
func requirePinnedVersion(t *testing.T, s sent) {
	t.Helper()
	require.Equal(t, "2023-10-16", stripe.APIVersion)
	require.Equal(t, stripe.APIVersion, s.Header.Get("Stripe-Version"), "%s %s", s.Method, s.Path)
	require.Equal(t, http.StatusOK, s.Status, "%s %s", s.Method, s.Path)
}

func TestStripeMockRejectsParamsTheAPIVersionDoesNotKnow(t *testing.T) {
	t.Parallel()
	base := billingtest.StartStripeMock(t)
	backends := &stripe.Backends{API: stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{URL: stripe.String(base), LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull}})}
	api := client.New("sk_test_123", backends)
	p := &stripe.CustomerParams{Email: stripe.String("a@example.com")}
	p.AddExtra("not_a_customer_field", "1")

	_, err := api.Customers.New(p)

	var se *stripe.Error
	require.ErrorAs(t, err, &se, "stripe-mock must refuse an unknown parameter, or the gateway tests prove nothing")
	require.Equal(t, http.StatusBadRequest, se.HTTPStatusCode)
}

func TestStripeCreateCustomerSendsAValidRequest(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)

	id, err := gw.CreateCustomer(context.Background(), billing.CustomerParams{UserID: 42, Email: "buyer@example.com"})

	require.NoError(t, err)
	require.True(t, strings.HasPrefix(id, "cus_"), "customer id %q", id)
	s := rc.only(t)
	requirePinnedVersion(t, s)
	require.Equal(t, "POST /v1/customers", s.Method+" "+s.Path)
	require.Equal(t, "buyer@example.com", s.Form.Get("email"))
	require.Equal(t, "42", s.Form.Get("metadata["+billing.MetaUserID+"]"))
	require.Equal(t, "quickscale-customer-42", s.Header.Get("Idempotency-Key"))
}

func TestStripeCheckoutSessionWithoutSyncedPriceSendsInlinePriceData(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)

	sess, err := gw.CreateCheckoutSession(context.Background(), billing.CheckoutParams{
		UserID: 7, CustomerID: "cus_test_7", Pack: pack("pack_500", 500, 2000),
		SuccessURL: "https://quickscale.test/dashboard/buy-credits/success?session_id={CHECKOUT_SESSION_ID}",
		CancelURL:  "https://quickscale.test/dashboard/buy-credits/cancel", IdempotencyKey: "quickscale-checkout-7-pack_500-n1",
	})

	require.NoError(t, err)
	require.True(t, strings.HasPrefix(sess.ID, "cs_"), "session id %q", sess.ID)
	require.NotEmpty(t, sess.URL)
	s := rc.only(t)
	requirePinnedVersion(t, s)
	require.Equal(t, "POST /v1/checkout/sessions", s.Method+" "+s.Path)
	want := map[string]string{
		"mode":                                          "payment",
		"customer":                                      "cus_test_7",
		"client_reference_id":                           "7",
		"line_items[0][quantity]":                       "1",
		"line_items[0][price_data][currency]":           "usd",
		"line_items[0][price_data][unit_amount]":        "2000",
		"line_items[0][price_data][product_data][name]": "QuickScale pack_500 credits",
		"metadata[" + billing.MetaPackCode + "]":        "pack_500",
		"payment_intent_data[metadata][" + billing.MetaUserID + "]": "7",
		"success_url": "https://quickscale.test/dashboard/buy-credits/success?session_id={CHECKOUT_SESSION_ID}",
	}
	for k, v := range want {
		require.Equal(t, v, s.Form.Get(k), "param %s", k)
	}
	require.False(t, s.Form.Has("line_items[0][price]"), "no price id without a synced price")
	require.Equal(t, "quickscale-checkout-7-pack_500-n1", s.Header.Get("Idempotency-Key"))
}

func TestStripeCheckoutSessionWithSyncedPriceSendsThePriceID(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	p := pack("pack_100", 100, 500)
	p.StripePriceID = stripe.String("price_1OPouiJN5vQBdWExAQaqTooZ")

	_, err := gw.CreateCheckoutSession(context.Background(), billing.CheckoutParams{
		UserID: 8, CustomerID: "cus_test_8", Pack: p,
		SuccessURL: "https://quickscale.test/ok", CancelURL: "https://quickscale.test/cancel",
	})

	require.NoError(t, err)
	s := rc.only(t)
	requirePinnedVersion(t, s)
	require.Equal(t, "price_1OPouiJN5vQBdWExAQaqTooZ", s.Form.Get("line_items[0][price]"))
	for k := range s.Form {
		require.False(t, strings.HasPrefix(k, "line_items[0][price_data]"), "inline price data sent with a synced price: %s", k)
	}
}

func TestStripeSyncCatalogUpdatesProductsAndCreatesChangedPrices(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	packs := []store.Pack{pack("pack_100", 100, 500), pack("pack_500", 500, 2000)}

	ids, err := gw.SyncCatalog(context.Background(), packs)

	require.NoError(t, err)
	require.Len(t, ids, 2)
	for _, pk := range packs {
		require.True(t, strings.HasPrefix(ids[pk.Code], "price_"), "price of %s: %q", pk.Code, ids[pk.Code])
	}
	var calls []string
	for _, s := range rc.all() {
		requirePinnedVersion(t, s)
		calls = append(calls, s.Method+" "+s.Path)
		switch {
		case s.Method == http.MethodPost && strings.HasPrefix(s.Path, "/v1/products/"):
			require.Equal(t, "true", s.Form.Get("active"))
			require.NotEmpty(t, s.Form.Get("name"))
		case s.Method == http.MethodGet && s.Path == "/v1/prices":
			require.Equal(t, "true", s.Query.Get("active"))
			require.True(t, strings.HasPrefix(s.Query.Get("lookup_keys[0]"), "quickscale_pack_"), "lookup key %q", s.Query.Get("lookup_keys[0]"))
		case s.Method == http.MethodPost && s.Path == "/v1/prices":
			code := s.Form.Get("metadata[" + billing.MetaPackCode + "]")
			require.Equal(t, "quickscale_"+code, s.Form.Get("product"))
			require.Equal(t, "quickscale_"+code, s.Form.Get("lookup_key"))
			require.Equal(t, "true", s.Form.Get("transfer_lookup_key"))
			require.Equal(t, "usd", s.Form.Get("currency"))
			require.NotEmpty(t, s.Form.Get("unit_amount"))
			require.NotEmpty(t, s.Header.Get("Idempotency-Key"))
		}
	}
	want := []string{
		"GET /v1/products/quickscale_pack_100", "POST /v1/products/quickscale_pack_100", "GET /v1/prices", "POST /v1/prices",
		"GET /v1/products/quickscale_pack_500", "POST /v1/products/quickscale_pack_500", "GET /v1/prices", "POST /v1/prices",
	}
	require.Equal(t, want, calls)
}

func TestStripeSyncCatalogCreatesAMissingProduct(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	// stripe-mock knows every id; play Stripe's 404 for the product lookup.
	rc.override = func(req *http.Request) *http.Response {
		if req.Method != http.MethodGet || !strings.HasPrefix(req.URL.Path, "/v1/products/") {
			return nil
		}
		body := `{"error":{"code":"resource_missing","message":"No such product: 'x'","param":"id","type":"invalid_request_error"}}`
		return &http.Response{StatusCode: http.StatusNotFound, Header: http.Header{"Content-Type": {"application/json"}, "Request-Id": {"req_test"}},
			Body: io.NopCloser(strings.NewReader(body)), Request: req}
	}

	_, err := gw.SyncCatalog(context.Background(), []store.Pack{pack("pack_1000", 1000, 3500)})

	require.NoError(t, err)
	var created *sent
	for _, s := range rc.all() {
		if s.Method == http.MethodPost && s.Path == "/v1/products" {
			created = &s
		}
	}
	require.NotNil(t, created, "a product was created: %v", rc.all())
	requirePinnedVersion(t, *created)
	require.Equal(t, "quickscale_pack_1000", created.Form.Get("id"))
	require.Equal(t, "QuickScale pack_1000 credits", created.Form.Get("name"))
	require.Equal(t, "pack_1000", created.Form.Get("metadata["+billing.MetaPackCode+"]"))
}

func TestStripeExpireCheckoutSessionSendsAValidRequest(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)

	require.NoError(t, gw.ExpireCheckoutSession(context.Background(), "cs_test_abc"))

	s := rc.only(t)
	requirePinnedVersion(t, s)
	require.Equal(t, "POST /v1/checkout/sessions/cs_test_abc/expire", s.Method+" "+s.Path)
}

// A refund is asked of Stripe's refunds API with the payment intent, the
// amount, our records in its metadata and the request's idempotency key
// (stripe-mock checks the parameters against API version 2023-10-16).
func TestStripeRefundSendsAValidRequest(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)

	id, err := gw.Refund(context.Background(), billing.RefundParams{PaymentIntentID: "pi_test_abc", AmountMinor: 550, PaymentID: 81, RequestID: 7, IdempotencyKey: "quickscale-refund-81-nonce"})

	require.NoError(t, err)
	require.True(t, strings.HasPrefix(id, "re_"), "refund id %q", id)
	s := rc.only(t)
	requirePinnedVersion(t, s)
	require.Equal(t, "POST /v1/refunds", s.Method+" "+s.Path)
	require.Equal(t, "pi_test_abc", s.Form.Get("payment_intent"))
	require.Equal(t, "550", s.Form.Get("amount"))
	require.Equal(t, "requested_by_customer", s.Form.Get("reason"))
	require.Equal(t, "81", s.Form.Get("metadata["+billing.MetaPayment+"]"))
	require.Equal(t, "7", s.Form.Get("metadata["+billing.MetaRequest+"]"))
	require.Equal(t, "quickscale-refund-81-nonce", s.Header.Get("Idempotency-Key"))
}

// Stripe refusing a refund (400, invalid_request_error) is a
// RefundRefusedError with Stripe's message; another failure is not.
func TestStripeRefundRefusedSaysWhy(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	status := http.StatusBadRequest
	rc.override = func(req *http.Request) *http.Response {
		body := `{"error":{"type":"invalid_request_error","message":"Refund amount is greater than unrefunded amount on charge","param":"amount"}}`
		if status != http.StatusBadRequest {
			body = `{"error":{"type":"api_error","message":"Something went wrong on Stripe's end."}}`
		}
		return &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)), Request: req}
	}
	params := billing.RefundParams{PaymentIntentID: "pi_test_abc", AmountMinor: 5000, PaymentID: 81, RequestID: 8, IdempotencyKey: "k1"}

	_, err := gw.Refund(context.Background(), params)
	var refused *billing.RefundRefusedError
	require.ErrorAs(t, err, &refused)
	require.Equal(t, "Refund amount is greater than unrefunded amount on charge", refused.Reason)

	status = http.StatusInternalServerError
	_, err = gw.Refund(context.Background(), params)
	require.Error(t, err)
	require.False(t, errors.As(err, &refused), "a server error is not a refusal: %v", err)
}

// A customer's new address is sent to Stripe's customers API.
func TestStripeUpdateCustomerEmailSendsAValidRequest(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)

	require.NoError(t, gw.UpdateCustomerEmail(context.Background(), "cus_test_abc", "after@example.com"))

	s := rc.only(t)
	requirePinnedVersion(t, s)
	require.Equal(t, "POST /v1/customers/cus_test_abc", s.Method+" "+s.Path)
	require.Equal(t, "after@example.com", s.Form.Get("email"))
}

// A plan's checkout is a checkout in subscription mode: monthly inline
// price data without a synced price, our reference in the subscription's
// metadata (its invoices carry it) and the form's idempotency key.
func TestStripeSubscriptionCheckoutSendsAValidRequest(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	plan := store.Plan{Code: "basic", Name: "Basic", CreditsPerPeriod: 1000, PriceMinor: 1500, Currency: "usd", LookupKey: "quickscale_plan_basic", Active: true}

	sess, err := gw.CreateSubscriptionCheckout(context.Background(), billing.SubscriptionCheckoutParams{
		UserID: 7, CustomerID: "cus_test_7", Plan: plan, Ref: "ref_abcdefgh",
		SuccessURL: "https://quickscale.test/dashboard/subscription/success?session_id={CHECKOUT_SESSION_ID}",
		CancelURL:  "https://quickscale.test/dashboard/subscription", IdempotencyKey: "quickscale-subscribe-7-basic-n1",
	})

	require.NoError(t, err)
	require.True(t, strings.HasPrefix(sess.ID, "cs_"), "session id %q", sess.ID)
	s := rc.only(t)
	requirePinnedVersion(t, s)
	require.Equal(t, "POST /v1/checkout/sessions", s.Method+" "+s.Path)
	want := map[string]string{
		"mode":                                   "subscription",
		"customer":                               "cus_test_7",
		"line_items[0][price_data][unit_amount]": "1500",
		"line_items[0][price_data][recurring][interval]":                   "month",
		"line_items[0][price_data][product_data][name]":                    "QuickScale Basic plan",
		"subscription_data[metadata][" + billing.MetaSubscriptionRef + "]": "ref_abcdefgh",
		"subscription_data[metadata][" + billing.MetaPlanCode + "]":        "basic",
		"metadata[" + billing.MetaUserID + "]":                             "7",
	}
	for k, v := range want {
		require.Equal(t, v, s.Form.Get(k), "param %s", k)
	}
	require.False(t, s.Form.Has("payment_intent_data[metadata]["+billing.MetaUserID+"]"), "subscription mode takes no payment_intent_data")
	require.Equal(t, "quickscale-subscribe-7-basic-n1", s.Header.Get("Idempotency-Key"))
}

// Cancelling at the period's end (and keeping) updates the subscription;
// an account's deletion cancels it now.
func TestStripeSubscriptionRenewalAndCancelSendValidRequests(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	ctx := context.Background()

	require.NoError(t, gw.SetCancelAtPeriodEnd(ctx, "sub_test_abc", true))
	require.NoError(t, gw.SetCancelAtPeriodEnd(ctx, "sub_test_abc", false))
	require.NoError(t, gw.CancelSubscription(ctx, "sub_test_abc"))

	reqs := rc.all()
	require.Len(t, reqs, 3)
	for _, s := range reqs {
		requirePinnedVersion(t, s)
	}
	require.Equal(t, "POST /v1/subscriptions/sub_test_abc", reqs[0].Method+" "+reqs[0].Path)
	require.Equal(t, "true", reqs[0].Form.Get("cancel_at_period_end"))
	require.Equal(t, "false", reqs[1].Form.Get("cancel_at_period_end"))
	require.Equal(t, "DELETE /v1/subscriptions/sub_test_abc", reqs[2].Method+" "+reqs[2].Path)
}

// A subscription Stripe no longer has (404) is ErrSubscriptionEnded, so
// that a retried deletion's job stops; a server error is not.
func TestStripeCancelOfAnEndedSubscriptionIsErrSubscriptionEnded(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	status := http.StatusNotFound
	rc.override = func(req *http.Request) *http.Response {
		body := `{"error":{"type":"invalid_request_error","message":"No such subscription: 'sub_gone'","param":"id"}}`
		if status != http.StatusNotFound {
			body = `{"error":{"type":"api_error","message":"Something went wrong on Stripe's end."}}`
		}
		return &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)), Request: req}
	}
	require.ErrorIs(t, gw.CancelSubscription(context.Background(), "sub_gone"), billing.ErrSubscriptionEnded)
	status = http.StatusInternalServerError
	err := gw.CancelSubscription(context.Background(), "sub_gone")
	require.Error(t, err)
	require.NotErrorIs(t, err, billing.ErrSubscriptionEnded)
}

// Switching plans reads the subscription's one item and gives it the
// plan's synced price, or inline monthly price data on the plan's own
// product (made by stripe sync; else the item's product), without
// proration; stripe-mock validates every request.
func TestStripeChangeSubscriptionPlanSendsValidRequests(t *testing.T) {
	t.Parallel()
	gw, rc := newGateway(t)
	ctx := context.Background()
	synced := "price_pro_monthly"
	pro := store.Plan{Code: "pro", Name: "Pro", CreditsPerPeriod: 2500, PriceMinor: 3000, Currency: "usd", StripePriceID: &synced}
	require.NoError(t, gw.ChangeSubscriptionPlan(ctx, "sub_test_abc", pro))
	pro.StripePriceID = nil
	require.NoError(t, gw.ChangeSubscriptionPlan(ctx, "sub_test_abc", pro))
	// Without the plan's product at Stripe: the item's own.
	rc.override = func(req *http.Request) *http.Response {
		if req.Method != http.MethodGet || !strings.HasPrefix(req.URL.Path, "/v1/products/") {
			return nil
		}
		body := `{"error":{"type":"invalid_request_error","message":"No such product: 'quickscale_plan_pro'","param":"id"}}`
		return &http.Response{StatusCode: http.StatusNotFound, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)), Request: req}
	}
	require.NoError(t, gw.ChangeSubscriptionPlan(ctx, "sub_test_abc", pro))

	reqs := rc.all()
	require.Len(t, reqs, 8)
	for i, s := range reqs {
		if i != 6 { // the product refused by the override
			requirePinnedVersion(t, s)
		}
	}
	require.Equal(t, "GET /v1/subscriptions/sub_test_abc", reqs[0].Method+" "+reqs[0].Path)
	update := reqs[1]
	require.Equal(t, "POST /v1/subscriptions/sub_test_abc", update.Method+" "+update.Path)
	require.NotEmpty(t, update.Form.Get("items[0][id]"), "the item changed is the subscription's own")
	require.Equal(t, synced, update.Form.Get("items[0][price]"))
	require.Equal(t, "none", update.Form.Get("proration_behavior"))
	require.Equal(t, "pro", update.Form.Get("metadata["+billing.MetaPlanCode+"]"))
	require.Equal(t, "GET /v1/products/quickscale_plan_pro", reqs[3].Method+" "+reqs[3].Path)
	inline := reqs[4]
	require.Equal(t, update.Form.Get("items[0][id]"), inline.Form.Get("items[0][id]"))
	require.False(t, inline.Form.Has("items[0][price]"))
	require.Equal(t, "quickscale_plan_pro", inline.Form.Get("items[0][price_data][product]"))
	require.Equal(t, "3000", inline.Form.Get("items[0][price_data][unit_amount]"))
	require.Equal(t, "usd", inline.Form.Get("items[0][price_data][currency]"))
	require.Equal(t, "month", inline.Form.Get("items[0][price_data][recurring][interval]"))
	require.Equal(t, "none", inline.Form.Get("proration_behavior"))
	fallback := reqs[7]
	require.Equal(t, http.StatusNotFound, reqs[6].Status)
	require.NotEmpty(t, fallback.Form.Get("items[0][price_data][product]"))
	require.NotEqual(t, "quickscale_plan_pro", fallback.Form.Get("items[0][price_data][product]"), "the item's own product")
}
