package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/quickscale/quickscale/api"
	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
	"github.com/quickscale/quickscale/web"
)

const fuzzSecret = "whsec_fuzz_quickscale"

// fuzzServer is the HTTP edge as `quickscale api` wires it (insert-only
// River client) on an isolated database.
func fuzzServer(f *testing.F) (http.Handler, *store.Store) {
	f.Helper()
	logger := slog.New(slog.DiscardHandler)
	st := store.New(storetest.NewPool(f), logger)
	client, err := river.NewClient(riverpgxv5.New(st.Pool()), &river.Config{Logger: logger})
	if err != nil {
		f.Fatal(err)
	}
	const base = "http://quickscale.test"
	gateway := billing.NewSimulator(st, base, fuzzSecret, logger)
	metrics := observability.NewMetrics()
	site, err := web.NewSite(logger, web.Config{BaseURL: base, SessionIdleTimeout: time.Hour, SessionLifetime: 24 * time.Hour}, st, client, gateway, metrics)
	if err != nil {
		f.Fatal(err)
	}
	return api.NewServer(logger, api.Config{BaseURL: base, WebhookSecret: fuzzSecret}, st, client, gateway, site, metrics, nil), st
}

// fuzzSeeds builds events from Stripe's own shapes in
// cmd/quickscale/testdata/stripe (stripe-mock v0.183.0 fixtures).
func fuzzSeeds(f *testing.F) [][]byte {
	f.Helper()
	load := func(name string) map[string]any {
		b, err := os.ReadFile(filepath.Join("..", "cmd", "quickscale", "testdata", "stripe", name+".json"))
		if err != nil {
			f.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			f.Fatal(err)
		}
		return m
	}
	event := func(id, typ string, obj map[string]any) []byte {
		ev := load("event")
		ev["id"], ev["api_version"], ev["created"] = id, stripe.APIVersion, time.Now().Unix()
		if typ != "" {
			ev["type"] = typ
			ev["data"] = map[string]any{"object": obj}
		}
		b, err := json.Marshal(ev)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	sess := load("checkout.session")
	sess["status"], sess["payment_status"], sess["amount_total"], sess["currency"] = "complete", "paid", 2000, "usd"
	charge := load("charge")
	charge["payment_intent"], charge["amount_refunded"] = "pi_fuzz", 2000
	completed := event("evt_fuzz_completed", "checkout.session.completed", sess)
	return [][]byte{
		event("evt_fuzz_plan", "", nil),
		completed,
		event("evt_fuzz_async", "checkout.session.async_payment_succeeded", sess),
		event("evt_fuzz_refund", "charge.refunded", charge),
		completed[:len(completed)/2],
		[]byte(`{"id":"evt_fuzz_min","object":"event","type":"x","api_version":"` + stripe.APIVersion + `","data":{"object":{}}}`),
		[]byte(`{"id":"evt_fuzz_nul","type":"x","api_version":"` + stripe.APIVersion + `","data":{"object":"\u0000"}}`),
		[]byte(""),
	}
}

// FuzzStripeWebhook signs whatever body it is given with the right secret:
// the endpoint must never answer 5xx (the database is up), and an accepted
// event is stored exactly once with exactly one job.
func FuzzStripeWebhook(f *testing.F) {
	h, st := fuzzServer(f)
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	counts := func(t *testing.T) (events, jobs int) {
		err := st.Pool().QueryRow(context.Background(),
			`SELECT (SELECT count(*) FROM stripe_events), (SELECT count(*) FROM river_job WHERE kind = 'stripe_event')`).Scan(&events, &jobs)
		if err != nil {
			t.Fatal(err)
		}
		return events, jobs
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		events, jobs := counts(t)
		req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Stripe-Signature", webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: fuzzSecret, Timestamp: time.Now()}).Header)
		rec := httptest.NewRecorder()

		h.ServeHTTP(rec, req)

		if rec.Code >= 500 {
			t.Fatalf("status %d for a signed body: %s", rec.Code, rec.Body)
		}
		wantEvents, wantJobs := events, jobs
		if rec.Code == http.StatusOK {
			var ack struct {
				Received  bool `json:"received"`
				Duplicate bool `json:"duplicate"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &ack); err != nil || !ack.Received {
				t.Fatalf("200 with body %q", rec.Body)
			}
			if !ack.Duplicate {
				wantEvents, wantJobs = events+1, jobs+1
			}
		}
		if gotEvents, gotJobs := counts(t); gotEvents != wantEvents || gotJobs != wantJobs {
			t.Fatalf("status %d: events %d→%d, jobs %d→%d; want %d and %d", rec.Code, events, gotEvents, jobs, gotJobs, wantEvents, wantJobs)
		}
	})
}
