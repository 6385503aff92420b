package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// Helpers shared by the webhook, pipeline and admin webhook tests (prefix wh).

// whFixture loads one of Stripe's object shapes from testdata/stripe (see
// its README) as a map, so a test can fill in its own ids and amounts.
func whFixture(t testing.TB, resource string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "stripe", resource+".json"))
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	return m
}

// whID returns a fresh Stripe-looking id.
func whID(prefix string) string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return prefix + "_test_" + hex.EncodeToString(b)
}

// whEvent wraps obj in Stripe's event envelope of the pinned API version and
// returns the event id and its JSON.
func whEvent(t testing.TB, typ stripe.EventType, obj map[string]any, created time.Time) (string, []byte) {
	t.Helper()
	ev := whFixture(t, "event")
	id := whID("evt")
	ev["id"] = id
	ev["type"] = string(typ)
	ev["api_version"] = stripe.APIVersion
	ev["created"] = created.Unix()
	ev["data"] = map[string]any{"object": obj}
	ev["pending_webhooks"] = 1
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	return id, b
}

// whSession is a completed checkout.session of amount (USD minor units).
func whSession(t testing.TB, sessionID, paymentStatus string, amount int64, intent string) map[string]any {
	t.Helper()
	s := whFixture(t, "checkout.session")
	s["id"] = sessionID
	s["status"] = "complete"
	s["payment_status"] = paymentStatus
	s["amount_subtotal"] = amount
	s["amount_total"] = amount
	s["currency"] = "usd"
	s["payment_intent"] = intent
	s["url"] = nil
	s["created"] = time.Now().Add(-time.Minute).Unix()
	s["expires_at"] = time.Now().Add(23 * time.Hour).Unix()
	return s
}

// whCharge is a charge of a PaymentIntent of which refunded has been refunded.
func whCharge(t testing.TB, intent string, amount, refunded int64) map[string]any {
	t.Helper()
	c := whFixture(t, "charge")
	c["id"] = whID("ch")
	c["payment_intent"] = intent
	c["amount"] = amount
	c["amount_captured"] = amount
	c["captured"] = true
	c["amount_refunded"] = refunded
	c["refunded"] = refunded == amount
	c["currency"] = "usd"
	c["created"] = time.Now().Add(-time.Minute).Unix()
	return c
}

// whSign returns the Stripe-Signature header for body.
func whSign(body []byte, secret string, at time.Time) string {
	return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: at}).Header
}

// whPost sends body to the webhook endpoint with a Stripe-Signature header
// (none when sig is empty). It does not touch t, so goroutines may call it.
func whPost(baseURL string, body []byte, sig string) (response, error) {
	req, err := http.NewRequest(http.MethodPost, baseURL+"/webhooks/stripe", bytes.NewReader(body))
	if err != nil {
		return response{}, err
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	if sig != "" {
		req.Header.Set("Stripe-Signature", sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}, nil
}

// whDeliver signs body with the app's webhook secret, as Stripe would, and
// posts it.
func whDeliver(t testing.TB, ta *testApp, body []byte) response {
	t.Helper()
	r, err := whPost(ta.URL, body, whSign(body, ta.app.cfg.StripeWebhookSecret, time.Now()))
	require.NoError(t, err)
	return r
}

// whMustDeliver delivers body and requires a 200.
func whMustDeliver(t testing.TB, ta *testApp, body []byte) {
	t.Helper()
	r := whDeliver(t, ta, body)
	require.Equal(t, http.StatusOK, r.Status, "webhook answered %s", r.Body)
}

// whAck is the webhook's answer to an accepted event.
type whAck struct {
	Received  bool `json:"received"`
	Duplicate bool `json:"duplicate"`
}

// whProblem is a JSON problem body.
type whProblem struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id"`
}

func whDecode[T any](t testing.TB, r response) T {
	t.Helper()
	require.True(t, strings.HasPrefix(r.Header.Get("Content-Type"), "application/json"), "content type %q, body %s", r.Header.Get("Content-Type"), r.Body)
	var v T
	require.NoError(t, json.Unmarshal([]byte(r.Body), &v), "body %s", r.Body)
	return v
}

// whCount runs a count query.
func whCount(t testing.TB, ta *testApp, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, ta.store.Pool().QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// whStoredEvents counts the stored Stripe events.
func whStoredEvents(t testing.TB, ta *testApp) int {
	t.Helper()
	return whCount(t, ta, `SELECT count(*) FROM stripe_events`)
}

// whEventJobs counts the stripe_event jobs of one event, in any state.
func whEventJobs(t testing.TB, ta *testApp, eventID string) int {
	t.Helper()
	return whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'stripe_event' AND args->>'event_id' = $1`, eventID)
}

// whAllEventJobs counts every stripe_event job.
func whAllEventJobs(t testing.TB, ta *testApp) int {
	t.Helper()
	return whCount(t, ta, `SELECT count(*) FROM river_job WHERE kind = 'stripe_event'`)
}

// whWaitOutcome waits until the worker recorded how the event ended.
func whWaitOutcome(t testing.TB, ta *testApp, eventID string) store.StripeEvent {
	t.Helper()
	var ev store.StripeEvent
	eventually(t, 20*time.Second, "outcome of "+eventID, func() bool {
		var err error
		ev, err = ta.store.StripeEventByID(context.Background(), eventID)
		if store.ErrorKind(err) == store.KindNotFound {
			return false
		}
		require.NoError(t, err)
		return ev.Outcome != nil
	})
	return ev
}

func whOutcome(ev store.StripeEvent) string {
	if ev.Outcome == nil {
		return "pending"
	}
	return *ev.Outcome
}

func whDetail(ev store.StripeEvent) string {
	if ev.OutcomeDetail == nil {
		return ""
	}
	return *ev.OutcomeDetail
}

// whLogin signs a user made by storetest.NewUser in and returns the browser.
func whLogin(t *testing.T, ta *testApp, email string) *browser {
	t.Helper()
	b := ta.browser()
	b.t = t
	r := b.post("/login", url.Values{"email": {email}, "password": {storetest.DefaultPassword}})
	require.Equal(t, http.StatusSeeOther, r.Status, "login: %s", tail(r.Body, 20))
	return b
}

// whPurchase is a checkout opened the real way: a verified user asked for a
// pack at /dashboard/buy-credits and the simulator recorded the session.
type whPurchase struct {
	User      store.User
	Browser   *browser
	SessionID string
	Intent    string // the PaymentIntent our own events will name
	Amount    int64
	Credits   int64
}

// whBuy opens a checkout for pack_500 (500 credits for 20.00 USD).
// whBuyThenDeleteBuyer is a purchase whose checkout completed unpaid (a
// bank debit still to settle), its buyer's account deleted since.
func whBuyThenDeleteBuyer(t *testing.T, ta *testApp) whPurchase {
	t.Helper()
	p := whBuy(t, ta)
	id, body := p.completed(t, "unpaid")
	whApply(t, ta, id, body, store.OutcomeIgnored)
	require.NoError(t, ta.store.InTx(context.Background(), func(tx pgx.Tx) error {
		_, err := store.DeleteUser(context.Background(), tx, p.User.ID)
		return err
	}))
	return p
}

func whBuy(t *testing.T, ta *testApp) whPurchase {
	t.Helper()
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	b := whLogin(t, ta, u.Email)
	r := b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_500"}, "nonce": {whID("n")}})
	loc := mustRedirect(t, r, ta.URL+"/simulator/checkout/cs_sim_")
	p := whPurchase{User: u, Browser: b, SessionID: path.Base(loc), Intent: whID("pi"), Amount: 2000, Credits: 500}
	pay := whPayment(t, ta, p)
	require.Equal(t, store.PaymentPending, pay.Status)
	require.Equal(t, p.Amount, pay.AmountMinor)
	require.Equal(t, p.Credits, pay.Credits)
	return p
}

// completed is a signed-ready checkout.session.completed for the purchase.
func (p whPurchase) completed(t testing.TB, paymentStatus string) (string, []byte) {
	t.Helper()
	return whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, p.SessionID, paymentStatus, p.Amount, p.Intent), time.Now())
}

// refunded is a charge.refunded of the purchase with a cumulative refunded amount.
func (p whPurchase) refunded(t testing.TB, amountRefunded int64) (string, []byte) {
	t.Helper()
	return whEvent(t, stripe.EventTypeChargeRefunded, whCharge(t, p.Intent, p.Amount, amountRefunded), time.Now())
}

func whPayment(t testing.TB, ta *testApp, p whPurchase) store.Payment {
	t.Helper()
	pay, err := ta.store.UserPaymentBySession(context.Background(), p.User.ID, p.SessionID)
	require.NoError(t, err)
	return pay
}

func whBalance(t testing.TB, ta *testApp, userID int64) int64 {
	t.Helper()
	b, err := ta.store.Balance(context.Background(), userID)
	require.NoError(t, err)
	return b.Total
}

// whGrantsOf counts the grants paid for by a checkout session.
func whGrantsOf(t testing.TB, ta *testApp, sessionID string) int {
	t.Helper()
	return whCount(t, ta, `SELECT count(*) FROM grants WHERE source_kind = 'checkout_session' AND source_id = $1`, sessionID)
}

func whNoViolations(t testing.TB, ta *testApp) {
	t.Helper()
	if v := storetest.Violations(t, ta.store); len(v) > 0 {
		t.Fatalf("ledger invariants violated: %v", v)
	}
}

// whUnknownEvent is Stripe's event fixture as it is (a plan.created, which
// QuickScale does not handle) with a fresh id and the pinned version.
func whUnknownEvent(t testing.TB) (string, []byte) {
	t.Helper()
	ev := whFixture(t, "event")
	id := whID("evt")
	ev["id"] = id
	ev["api_version"] = stripe.APIVersion
	ev["created"] = time.Now().Unix()
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	return id, b
}

// Ingest: POST /webhooks/stripe. Workers are off so that what the endpoint
// itself did can be seen.

func TestWebhookStoresVerifiedEventAndEnqueuesItsJob(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	id, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, "cs_test_x", "paid", 2000, "pi_test_x"), time.Now())

	r := whDeliver(t, ta, body)

	require.Equal(t, http.StatusOK, r.Status, r.Body)
	if ack := whDecode[whAck](t, r); !ack.Received || ack.Duplicate {
		t.Fatalf("ack %+v, want received and not duplicate", ack)
	}
	ev, err := ta.store.StripeEventByID(context.Background(), id)
	require.NoError(t, err)
	if ev.Type != "checkout.session.completed" || ev.APIVersion != stripe.APIVersion || ev.Outcome != nil {
		t.Fatalf("stored event %s %s outcome %v", ev.Type, ev.APIVersion, ev.Outcome)
	}
	var stored, sent map[string]any
	require.NoError(t, json.Unmarshal(ev.Payload, &stored))
	require.NoError(t, json.Unmarshal(body, &sent))
	require.Equal(t, sent, stored, "the stored payload is the signed body")
	if n := whEventJobs(t, ta, id); n != 1 {
		t.Fatalf("%d stripe_event jobs for the event, want 1", n)
	}
}

func TestWebhookDuplicateDeliveryIsAcknowledgedAndStoredOnce(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	id, body := whUnknownEvent(t)
	whMustDeliver(t, ta, body)

	for i := 0; i < 3; i++ {
		r := whDeliver(t, ta, body)
		require.Equal(t, http.StatusOK, r.Status, r.Body)
		if ack := whDecode[whAck](t, r); !ack.Received || !ack.Duplicate {
			t.Fatalf("redelivery %d: ack %+v, want a received duplicate", i, ack)
		}
	}
	if n := whStoredEvents(t, ta); n != 1 {
		t.Fatalf("%d stored events, want 1", n)
	}
	if n := whEventJobs(t, ta, id); n != 1 {
		t.Fatalf("%d jobs, want 1", n)
	}
}

func TestWebhookConcurrentDuplicateDeliveriesStoreOneEventAndOneJob(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	id, body := whUnknownEvent(t)
	sig := whSign(body, ta.app.cfg.StripeWebhookSecret, time.Now())

	const n = 24
	acks := make([]whAck, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := whPost(ta.URL, body, sig)
			if err != nil || r.Status != http.StatusOK {
				t.Errorf("delivery %d: %v status %d %s", i, err, r.Status, r.Body)
				return
			}
			if err := json.Unmarshal([]byte(r.Body), &acks[i]); err != nil {
				t.Errorf("delivery %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	firsts := 0
	for _, a := range acks {
		if a.Received && !a.Duplicate {
			firsts++
		}
	}
	if firsts != 1 {
		t.Fatalf("%d deliveries were acknowledged as new, want exactly 1", firsts)
	}
	if s, j := whStoredEvents(t, ta), whEventJobs(t, ta, id); s != 1 || j != 1 {
		t.Fatalf("%d stored events and %d jobs, want 1 and 1", s, j)
	}
}

// whRefused checks a 400 problem with code and that nothing was stored.
func whRefused(t *testing.T, ta *testApp, r response, code string) {
	t.Helper()
	require.Equal(t, http.StatusBadRequest, r.Status, r.Body)
	if p := whDecode[whProblem](t, r); p.Error != code || p.Message == "" {
		t.Fatalf("problem %+v, want error %q with a message", p, code)
	}
	if s, j := whStoredEvents(t, ta), whAllEventJobs(t, ta); s != 0 || j != 0 {
		t.Fatalf("%d events and %d jobs stored for a refused request, want none", s, j)
	}
}

func TestWebhookRejectsSignatureMadeWithAnotherSecret(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, body := whUnknownEvent(t)
	r, err := whPost(ta.URL, body, whSign(body, "whsec_someone_else", time.Now()))
	require.NoError(t, err)
	whRefused(t, ta, r, "invalid_signature")
}

func TestWebhookRejectsMissingSignature(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, body := whUnknownEvent(t)
	r, err := whPost(ta.URL, body, "")
	require.NoError(t, err)
	whRefused(t, ta, r, "invalid_signature")
}

func TestWebhookRejectsMalformedSignatureHeader(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, body := whUnknownEvent(t)
	r, err := whPost(ta.URL, body, "t=abc,v1=zzz")
	require.NoError(t, err)
	whRefused(t, ta, r, "invalid_signature")
}

func TestWebhookRejectsSignatureOlderThanFiveMinutes(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, body := whUnknownEvent(t)
	r, err := whPost(ta.URL, body, whSign(body, ta.app.cfg.StripeWebhookSecret, time.Now().Add(-5*time.Minute-30*time.Second)))
	require.NoError(t, err)
	whRefused(t, ta, r, "invalid_signature")
}

func TestWebhookAcceptsSignatureYoungerThanFiveMinutes(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, body := whUnknownEvent(t)
	r, err := whPost(ta.URL, body, whSign(body, ta.app.cfg.StripeWebhookSecret, time.Now().Add(-4*time.Minute)))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, r.Status, r.Body)
}

func TestWebhookRejectsBodyChangedAfterSigning(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, "cs_test_x", "paid", 500, "pi_test_x"), time.Now())
	sig := whSign(body, ta.app.cfg.StripeWebhookSecret, time.Now())
	tampered := bytes.Replace(body, []byte(`"amount_total":500`), []byte(`"amount_total":5`), 1)
	require.NotEqual(t, body, tampered)
	r, err := whPost(ta.URL, tampered, sig)
	require.NoError(t, err)
	whRefused(t, ta, r, "invalid_signature")
}

func TestWebhookRejectsEventOfAnotherAPIVersion(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	ev := whFixture(t, "event")
	ev["id"] = whID("evt")
	ev["api_version"] = "2020-08-27"
	body, err := json.Marshal(ev)
	require.NoError(t, err)
	whRefused(t, ta, whDeliver(t, ta, body), "api_version_mismatch")
}

func TestWebhookRefusesOversizedBodyWithoutStoring(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	obj := whSession(t, "cs_test_big", "paid", 500, "pi_test_big")
	obj["metadata"] = map[string]any{"padding": strings.Repeat("x", 600<<10)}
	_, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, obj, time.Now())

	r := whDeliver(t, ta, body)

	require.Equal(t, http.StatusRequestEntityTooLarge, r.Status, tail(r.Body, 5))
	if p := whDecode[whProblem](t, r); p.Error != "body_too_large" {
		t.Fatalf("problem %+v", p)
	}
	require.Zero(t, whStoredEvents(t, ta))
}

func TestWebhookTruncatedEventsAreRefusedNever5xx(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	_, body := whEvent(t, stripe.EventTypeCheckoutSessionCompleted, whSession(t, "cs_test_t", "paid", 2000, "pi_test_t"), time.Now())
	secret := ta.app.cfg.StripeWebhookSecret

	for n := 0; n < len(body); n++ {
		cut := body[:n]
		r, err := whPost(ta.URL, cut, whSign(cut, secret, time.Now()))
		require.NoError(t, err)
		if r.Status != http.StatusBadRequest {
			t.Fatalf("body cut to %d of %d bytes: status %d %s, want 400", n, len(body), r.Status, r.Body)
		}
	}
	require.Zero(t, whStoredEvents(t, ta))
}

// whHostileBodies are signed with the right secret: the signature proves
// who sent them, not that they are sane.
func whHostileBodies(t *testing.T) map[string][]byte {
	ev := func(edit func(m map[string]any)) []byte {
		m := whFixture(t, "event")
		m["id"] = whID("evt")
		m["api_version"] = stripe.APIVersion
		edit(m)
		b, err := json.Marshal(m)
		require.NoError(t, err)
		return b
	}
	raw := func(s string) []byte { return []byte(s) }
	nested := func(depth int) []byte {
		return []byte(fmt.Sprintf(`{"id":"%s","object":"event","type":"x.y","api_version":%q,"data":{"object":%s1%s}}`,
			whID("evt"), stripe.APIVersion, strings.Repeat("[", depth), strings.Repeat("]", depth)))
	}
	manyKeys := func(n int) []byte {
		var sb strings.Builder
		fmt.Fprintf(&sb, `{"id":"%s","object":"event","type":"x.y","api_version":%q,"data":{"object":{`, whID("evt"), stripe.APIVersion)
		for i := 0; i < n; i++ {
			if i > 0 {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `"k%d":%d`, i, i)
		}
		sb.WriteString(`}}}`)
		return []byte(sb.String())
	}
	return map[string][]byte{
		"empty":                     raw(""),
		"whitespace":                raw(" \n\t "),
		"null":                      raw("null"),
		"array":                     raw(`[{"id":"evt_1","type":"x","data":{"object":{}}}]`),
		"string":                    raw(`"evt_1"`),
		"number":                    raw(`12345`),
		"empty object":              raw(`{}`),
		"not json":                  raw(`id=evt_1&type=charge.refunded`),
		"trailing garbage":          append(ev(func(map[string]any) {}), []byte(`{"id":"evt_2"}`)...),
		"id is a number":            ev(func(m map[string]any) { m["id"] = 42 }),
		"id is empty":               ev(func(m map[string]any) { m["id"] = "" }),
		"id is 10k long":            ev(func(m map[string]any) { m["id"] = strings.Repeat("e", 10000) }),
		"id holds NUL escape":       ev(func(m map[string]any) { m["id"] = "evt_\x00_nul" }),
		"type missing":              ev(func(m map[string]any) { delete(m, "type") }),
		"type is an object":         ev(func(m map[string]any) { m["type"] = map[string]any{"a": 1} }),
		"type holds NUL escape":     ev(func(m map[string]any) { m["type"] = "charge.\x00refunded" }),
		"data missing":              ev(func(m map[string]any) { delete(m, "data") }),
		"data is a string":          ev(func(m map[string]any) { m["data"] = "object" }),
		"data without object":       ev(func(m map[string]any) { m["data"] = map[string]any{"previous_attributes": map[string]any{}} }),
		"object is not event":       ev(func(m map[string]any) { m["object"] = "charge" }),
		"created is huge":           ev(func(m map[string]any) { m["created"] = int64(1) << 62 }),
		"created is year 300000":    ev(func(m map[string]any) { m["created"] = int64(9_400_000_000_000) }),
		"created is negative":       ev(func(m map[string]any) { m["created"] = -1 }),
		"created is a float":        ev(func(m map[string]any) { m["created"] = 1.5e300 }),
		"created is a string":       ev(func(m map[string]any) { m["created"] = "yesterday" }),
		"livemode is a string":      ev(func(m map[string]any) { m["livemode"] = "yes" }),
		"NUL escape deep in object": ev(func(m map[string]any) { m["data"] = map[string]any{"object": map[string]any{"name": "a\x00b"}} }),
		"raw NUL byte":              bytes.Replace(ev(func(map[string]any) {}), []byte(`"plan"`), []byte("\"pl\x00an\""), 1),
		"invalid UTF-8":             bytes.Replace(ev(func(map[string]any) {}), []byte(`"plan"`), []byte("\"pl\xff\xfean\""), 1),
		"lone surrogate":            bytes.Replace(ev(func(map[string]any) {}), []byte(`"plan"`), []byte(`"pl\ud800an"`), 1),
		"reversed surrogates":       bytes.Replace(ev(func(map[string]any) {}), []byte(`"plan"`), []byte(`"\udc00\ud800"`), 1),
		"duplicate ids":             bytes.Replace(ev(func(map[string]any) {}), []byte(`{`), []byte(`{"id":"evt_first",`), 1),
		"number beyond float64":     bytes.Replace(ev(func(map[string]any) {}), []byte(`"amount":2000`), []byte(`"amount":1e999999`), 1),
		"nested 1000 deep":          nested(1000),
		"nested 5000 deep":          nested(5000),
		"nested 9990 deep":          nested(9990),
		"nested 20000 deep":         nested(20000),
		"25k keys":                  manyKeys(25000),
		"utf-8 BOM":                 append([]byte("\xef\xbb\xbf"), ev(func(map[string]any) {})...),
		"checkout object is garbage": ev(func(m map[string]any) {
			m["type"] = "checkout.session.completed"
			m["data"] = map[string]any{"object": map[string]any{"object": "checkout.session", "id": 7}}
		}),
	}
}

func TestWebhookHostileSignedEventsNeverCause5xx(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	secret := ta.app.cfg.StripeWebhookSecret
	for name, body := range whHostileBodies(t) {
		before := whStoredEvents(t, ta)
		r, err := whPost(ta.URL, body, whSign(body, secret, time.Now()))
		require.NoError(t, err, name)
		after := whStoredEvents(t, ta)
		switch {
		case r.Status >= 500:
			t.Errorf("%s: status %d %s", name, r.Status, r.Body)
		case r.Status == http.StatusOK && after != before+1:
			t.Errorf("%s: accepted but %d events stored, want %d", name, after, before+1)
		case r.Status != http.StatusOK && after != before:
			t.Errorf("%s: refused with %d but an event was stored", name, r.Status)
		}
		if r.Status != http.StatusOK && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s: refusal is not a JSON problem: %q", name, r.Header.Get("Content-Type"))
		}
	}
}

// Signed events whose created time is out of Stripe's range (one so large
// that time.Unix wrapped it to 1969) or whose type holds anything but
// Stripe's characters (escape sequences, direction overrides shown to
// admins as they came) are refused, not stored.
func TestWebhookRefusesImpossibleTimesAndTypes(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	ev := func(edit func(m map[string]any)) []byte {
		m := whFixture(t, "event")
		m["id"], m["api_version"], m["created"] = whID("evt"), stripe.APIVersion, time.Now().Unix()
		edit(m)
		b, err := json.Marshal(m)
		require.NoError(t, err)
		return b
	}
	for name, body := range map[string][]byte{
		"created is the largest int64": ev(func(m map[string]any) { m["created"] = int64(math.MaxInt64) }),
		"created is in two days":       ev(func(m map[string]any) { m["created"] = time.Now().Add(48 * time.Hour).Unix() }),
		"type holds an escape":         ev(func(m map[string]any) { m["type"] = "charge.\x1b[31mrefunded" }),
		"type holds an override":       ev(func(m map[string]any) { m["type"] = "charge.\u202erefunded" }),
		"type is upper case":           ev(func(m map[string]any) { m["type"] = "CHARGE.REFUNDED" }),
	} {
		r, err := whPost(ta.URL, body, whSign(body, ta.app.cfg.StripeWebhookSecret, time.Now()))
		require.NoError(t, err, name)
		require.Equal(t, http.StatusBadRequest, r.Status, "%s: %s", name, r.Body)
	}
	require.Zero(t, whStoredEvents(t, ta))
}

func TestWebhookAnswers503WhenDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{Mode: "api"})
	_, body := whUnknownEvent(t)
	ta.app.pool.Close()

	r := whDeliver(t, ta, body)

	require.Equal(t, http.StatusServiceUnavailable, r.Status, r.Body)
	p := whDecode[whProblem](t, r)
	if p.Error != "unavailable" || p.Message == "" || p.RequestID == "" {
		t.Fatalf("problem %+v", p)
	}
	if strings.Contains(r.Body, "closed pool") || strings.Contains(strings.ToLower(r.Body), "pgx") {
		t.Fatalf("internal error text reached the client: %s", r.Body)
	}
}

func TestWebhookStoresNothingWhenItsJobCannotBeEnqueued(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	ctx := context.Background()
	_, err := ta.store.Pool().Exec(ctx, `
CREATE FUNCTION refuse_jobs() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'queue unavailable'; END $$;
CREATE TRIGGER refuse_jobs BEFORE INSERT ON river_job FOR EACH ROW EXECUTE FUNCTION refuse_jobs();`)
	require.NoError(t, err)
	id, body := whUnknownEvent(t)

	r := whDeliver(t, ta, body)

	require.Equal(t, http.StatusServiceUnavailable, r.Status, r.Body)
	require.Equal(t, "unavailable", whDecode[whProblem](t, r).Error)
	require.Zero(t, whStoredEvents(t, ta), "the event and its job commit together or not at all")

	// Stripe retries once the queue is back.
	_, err = ta.store.Pool().Exec(ctx, `DROP TRIGGER refuse_jobs ON river_job`)
	require.NoError(t, err)
	whMustDeliver(t, ta, body)
	require.Equal(t, 1, whEventJobs(t, ta, id))
}

// Stripe's event ids are letters, digits and underscores; an id with URL
// characters is refused (400, nothing stored), since the admin pages could
// not link to it.
func TestWebhookRefusesEventIDsThatAreNotStripeLike(t *testing.T) {
	t.Parallel()
	ta := newTestApp(t, testAppOpts{NoWorkers: true})
	id, good := whEvent(t, "x.y", map[string]any{"object": "thing"}, time.Now())
	for _, bad := range []string{"evt_a/b", "evt_q?x=1", "evt_hash#x", "evt_pct%41", "evt space", "evt_é"} {
		body := bytes.Replace(good, []byte(`"`+id+`"`), []byte(strconv.Quote(bad)), 1)
		r := whDeliver(t, ta, body)
		require.Equal(t, http.StatusBadRequest, r.Status, "id %q: %s", bad, r.Body)
	}
	require.Zero(t, whStoredEvents(t, ta))
	whMustDeliver(t, ta, good)
	require.Equal(t, 1, whStoredEvents(t, ta))
}

// Work the database refuses at commit is not counted: an event whose
// transaction a deferred check rolls back (here one refusing the forfeit
// of a deleted buyer's credits) is failed, and neither the credits granted
// nor those forfeited in it reach the counters.
func TestCountersSkipWorkTheDatabaseRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	p := whBuyThenDeleteBuyer(t, ta)
	_, err := ta.store.Pool().Exec(ctx, `
CREATE FUNCTION test_refuse_forfeit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.kind = 'adjust' AND NEW.reason = 'account deleted: credits forfeited' THEN
    RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'check_violation', CONSTRAINT = 'test_refuse_forfeit';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_refuse_forfeit AFTER INSERT ON ledger_entries DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_forfeit();`)
	require.NoError(t, err)
	forfeited := func() float64 {
		return ta.metric("quickscale_credits_removed_total", map[string]string{"reason": "forfeited"})
	}
	granted := func() float64 { return ta.metric("quickscale_credits_granted_total", nil) }
	forfeitedBefore, grantedBefore := forfeited(), granted()

	id, body := whEvent(t, stripe.EventTypeCheckoutSessionAsyncPaymentSucceeded, whSession(t, p.SessionID, "paid", p.Amount, p.Intent), time.Now())
	ev := whApply(t, ta, id, body, store.OutcomeFailed)
	require.Contains(t, whDetail(ev), "refused by the database")
	require.Zero(t, whGrantsOf(t, ta, p.SessionID), "rolled back: no grant")
	require.Equal(t, forfeitedBefore, forfeited(), "a forfeit rolled back was counted")
	require.Equal(t, grantedBefore, granted(), "a grant rolled back was counted")
}
