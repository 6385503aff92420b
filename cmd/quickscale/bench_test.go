package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The HTTP-level benchmarks (make bench runs them with -benchtime=1x).

func benchDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("BENCH_DURATION")); err == nil && d > 0 {
		return d
	}
	return 10 * time.Second
}

// newBenchApp is newTestApp for benchmarks.
func newBenchApp(b *testing.B, opts testAppOpts) *testApp {
	b.Helper()
	opts.QuietLogs = true
	return newTestApp(b, opts)
}

// signedEvent builds a checkout.session.completed for a recorded payment
// and signs it.
func signedEvent(secret string, p store.Payment) (body []byte, header string, id string) {
	ss := store.SimSession{
		ID: p.CheckoutSessionID, UserID: p.UserID, CustomerID: "cus_bench", AmountMinor: p.AmountMinor, Currency: p.Currency,
		Metadata: map[string]string{billing.MetaUserID: fmt.Sprint(p.UserID)}, SuccessURL: "http://x/s", CancelURL: "http://x/c",
		Status: "complete", PaymentStatus: "paid", PaymentIntentID: "pi_" + p.CheckoutSessionID, CreatedAt: time.Now(),
	}
	body, err := billing.NewEvent(stripe.EventTypeCheckoutSessionCompleted, billing.CheckoutSessionObject(ss))
	if err != nil {
		panic(err)
	}
	id = eventID(body)
	sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: time.Now()})
	return body, sp.Header, id
}

func eventID(body []byte) string {
	var e struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(body, &e)
	return e.ID
}

// benchPayments records n pending pack payments spread over users.
func benchPayments(b *testing.B, st *store.Store, users []store.User, n int) []store.Payment {
	b.Helper()
	pack, err := st.PackByCode(context.Background(), "pack_100")
	if err != nil {
		b.Fatal(err)
	}
	out := make([]store.Payment, n)
	for i := range n {
		p, err := st.CreatePayment(context.Background(), store.NewPayment{
			UserID: users[i%len(users)].ID, Pack: pack, CheckoutSessionID: fmt.Sprintf("cs_bench_%d_%d", time.Now().UnixNano(), i),
		})
		if err != nil {
			b.Fatal(err)
		}
		out[i] = p
	}
	return out
}

func benchUsers(b *testing.B, st *store.Store, n int) []store.User {
	b.Helper()
	ctx := context.Background()
	var users []store.User
	for i := range n {
		u, err := st.CreateUser(ctx, fmt.Sprintf("bench%d-%d@example.com", i, time.Now().UnixNano()), "not-a-hash", store.RoleUser, true)
		if err != nil {
			b.Fatal(err)
		}
		users = append(users, u)
	}
	return users
}

func postEvent(client *http.Client, base string, body []byte, header string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, base+"/webhooks/stripe", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", header)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	// Read to the end, or the transport closes the connection instead of
	// reusing it, and every event pays for a new TCP connection.
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, err
}

const pgbenchIngest = `BEGIN;
INSERT INTO bench_events (id, payload) VALUES ('evt_' || :client_id || '_' || random(), '{"object": "event", "type": "checkout.session.completed"}');
INSERT INTO bench_jobs (kind, args) VALUES ('stripe_event', '{"event_id": "evt"}');
END;
`

// BenchmarkWebhookIngest measures signed webhook POSTs at 16 concurrent
// clients through the real router (verify, store, enqueue, commit), next to
// pgbench running a two-INSERT transaction at 16 clients.
func BenchmarkWebhookIngest(b *testing.B) {
	ta := newBenchApp(b, testAppOpts{NoWorkers: true})
	users := benchUsers(b, ta.store, 50)
	const clients = 16
	// Pre-build more signed events than can be sent, so signing is not
	// timed: room for 15,000 events/s over the warm-up and the rounds
	// (about twice the fastest rate seen on the 2-core machine).
	const warm = 3 * time.Second
	pays := benchPayments(b, ta.store, users, 1)
	secret := ta.app.cfg.StripeWebhookSecret
	base, _, baseID := signedEvent(secret, pays[0])
	var queue [][2]string
	for i := range int((warm + benchDuration()).Seconds() * 15_000) {
		body := bytes.Replace(base, []byte(`"`+baseID+`"`), []byte(fmt.Sprintf(`"evt_bench_%d_%d"`, time.Now().UnixNano(), i)), 1)
		sp := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: body, Secret: secret, Timestamp: time.Now()})
		queue = append(queue, [2]string{string(body), sp.Header})
	}
	if _, err := ta.store.Pool().Exec(context.Background(), `
CREATE TABLE bench_events (id text PRIMARY KEY, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL, args jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		b.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}}
	// next is shared by every run: each event is sent once, so that no run
	// re-sends earlier runs' events (duplicates are acknowledged without a
	// job and would flatter the numbers).
	var next atomic.Int64
	run := func(d time.Duration) (float64, *storetest.Latencies) {
		var lat storetest.Latencies
		var sent atomic.Int64
		var failed atomic.Value
		deadline := time.Now().Add(d)
		start := time.Now()
		var wg sync.WaitGroup
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					i := next.Add(1) - 1
					if int(i) >= len(queue) {
						failed.Store(fmt.Errorf("ran out of pre-built events"))
						return
					}
					t0 := time.Now()
					code, err := postEvent(client, ta.URL, []byte(queue[i][0]), queue[i][1])
					if err != nil || code != http.StatusOK {
						failed.Store(fmt.Errorf("status %d: %v", code, err))
						return
					}
					lat.Add(time.Since(t0))
					sent.Add(1)
				}
			}()
		}
		wg.Wait()
		if err, ok := failed.Load().(error); ok {
			b.Fatal(err)
		}
		return float64(sent.Load()) / time.Since(start).Seconds(), &lat
	}
	run(warm)
	storetest.Pgbench(b, ta.app.cfg.DatabaseURL, pgbenchIngest, clients, time.Second)
	b.ResetTimer()
	// Three rounds alternating with the reference (see storetest.Compare).
	rate, lat, ref := storetest.Compare(b, 3, benchDuration(), run, ta.app.cfg.DatabaseURL, pgbenchIngest, clients)
	b.StopTimer()
	var stored int64
	if err := ta.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM stripe_events WHERE id LIKE 'evt_bench_%'`).Scan(&stored); err != nil || stored != next.Load() {
		b.Fatalf("%d events stored of %d sent (%v): every POST must be a new event", stored, next.Load(), err)
	}
	storetest.Report(os.Stdout, "webhook ingest, 16 clients (signed POSTs)", rate, lat.Quantile(.5), lat.Quantile(.99), &ref, "ratio >= 0.5")
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(rate/ref.TPS, "ratio")
}

// BenchmarkWebhookToCredits sends checkout.session.completed events at a
// steady 200 per second with workers running and measures, per event, the
// time from the accepted POST to the grant being committed (the River job
// that grants completes in the same transaction). One second of the same
// traffic first warms the process up (connection pool, caches, River's
// producers); it is not measured.
func BenchmarkWebhookToCredits(b *testing.B) {
	ta := newBenchApp(b, testAppOpts{})
	users := benchUsers(b, ta.store, 200)
	const perSecond = 200
	warm := perSecond
	n := int(benchDuration().Seconds()) * perSecond
	pays := benchPayments(b, ta.store, users, warm+n)
	secret := ta.app.cfg.StripeWebhookSecret
	events := make([]webhookEvent, len(pays))
	for i, p := range pays {
		body, hdr, _ := signedEvent(secret, p)
		events[i] = webhookEvent{body, hdr, p.CheckoutSessionID}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	sendAndWatch(b, ta, client, events[:warm], perSecond)

	b.ResetTimer()
	rate, lat := sendAndWatch(b, ta, client, events[warm:], perSecond)
	b.StopTimer()
	var grants int64
	if err := ta.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM grants WHERE source_kind = 'checkout_session'`).Scan(&grants); err != nil || grants != int64(warm+n) {
		b.Fatalf("%d grants for %d events (%v)", grants, warm+n, err)
	}
	fmt.Fprintf(os.Stdout, "%-44s %10.0f/s  p50 %8s  p99 %8s  (target p50 <= 150ms, p99 <= 1s)\n",
		"webhook → credits visible, at 200 events/s", rate,
		fmt.Sprintf("%.1fms", float64(lat.Quantile(.5))/1e6), fmt.Sprintf("%.1fms", float64(lat.Quantile(.99))/1e6))
	b.ReportMetric(float64(lat.Quantile(.5))/1e6, "p50-ms")
	b.ReportMetric(float64(lat.Quantile(.99))/1e6, "p99-ms")
}

// webhookEvent is a signed event ready to POST, with its checkout session.
type webhookEvent struct {
	body   []byte
	header string
	sid    string
}

// sendAndWatch POSTs events at perSecond and returns the rate achieved and,
// per event, the time from the answered POST until its grant is visible.
func sendAndWatch(b *testing.B, ta *testApp, client *http.Client, events []webhookEvent, perSecond int) (float64, *storetest.Latencies) {
	b.Helper()
	n := len(events)
	// A poller notes when each grant becomes visible to a reader: every
	// 5ms, a query for the sessions POSTed so far and not seen yet. (It
	// asks only about events already sent: asking about all of them
	// would load the database under test with thousands of lookups per
	// poll.)
	var (
		mu       sync.Mutex
		inflight = make([]string, 0, n)   // checkout session ids sent and not yet seen
		accepted = map[string]time.Time{} // checkout session id → POST answered
		visible  = map[string]time.Time{} // checkout session id → grant seen
	)
	done := make(chan struct{})
	pollCtx, stopPoll := context.WithCancel(context.Background())
	defer stopPoll()
	go func() {
		poll := time.NewTicker(5 * time.Millisecond) // the measuring reader's interval
		defer poll.Stop()
		for pollCtx.Err() == nil {
			mu.Lock()
			pending := slices.Clone(inflight)
			mu.Unlock()
			if len(pending) > 0 {
				// Grant ids commit out of order, so "newer than the last
				// id" would miss some: ask about each session.
				// (A failed query reaches CollectRows through rows.) A
				// source is indexed in grant_keys (migration 00015).
				rows, _ := ta.store.Pool().Query(pollCtx, `SELECT source_id FROM grant_keys WHERE source_kind = 'checkout_session' AND source_id = ANY($1)`, pending)
				found, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err == nil {
					now := time.Now()
					mu.Lock()
					for _, sid := range found {
						visible[sid] = now
					}
					inflight = slices.DeleteFunc(inflight, func(sid string) bool { _, ok := visible[sid]; return ok })
					all := len(visible) == n
					mu.Unlock()
					if all {
						close(done)
						return
					}
				}
			}
			select {
			case <-poll.C:
			case <-pollCtx.Done():
			}
		}
	}()
	tick := time.NewTicker(time.Second / time.Duration(perSecond))
	defer tick.Stop()
	var wg sync.WaitGroup
	var failures atomic.Int64
	start := time.Now()
	for _, e := range events {
		<-tick.C
		mu.Lock()
		inflight = append(inflight, e.sid)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := postEvent(client, ta.URL, e.body, e.header)
			if err != nil || code != http.StatusOK {
				failures.Add(1)
				return
			}
			mu.Lock()
			accepted[e.sid] = time.Now()
			mu.Unlock()
		}()
	}
	wg.Wait()
	sendTime := time.Since(start)
	if failures.Load() > 0 {
		b.Fatalf("%d POSTs failed", failures.Load())
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		stopPoll()
		mu.Lock()
		seen := len(visible)
		mu.Unlock()
		b.Fatalf("only %d of %d events turned into credits within 60s", seen, n)
	}
	var lat storetest.Latencies
	mu.Lock()
	defer mu.Unlock()
	for sid, t1 := range visible {
		// A grant seen before the client got its 200 counts as no delay.
		lat.Add(max(0, t1.Sub(accepted[sid])))
	}
	return float64(n) / sendTime.Seconds(), &lat
}

// BenchmarkCreditsPageDeepHistory renders /dashboard/credits for a user
// with 100,000 ledger entries and for one with ten.
func BenchmarkCreditsPageDeepHistory(b *testing.B) {
	ta := newBenchApp(b, testAppOpts{NoWorkers: true})
	ctx := context.Background()
	svc := storetest.NewService(b, ta.store, storetest.ServiceOpts{Slug: "bench", Cost: 1})
	for _, tc := range []struct {
		name    string
		entries int
	}{{"100,000 entries", 100_000}, {"10 entries", 10}} {
		u := storetest.NewUser(b, ta.store, storetest.UserOpts{})
		g := storetest.NewGrant(b, ta.store, u.ID, storetest.GrantOpts{Amount: 1_000_000})
		if _, err := ta.store.Pool().Exec(ctx, `
WITH cfg AS (SELECT set_config('quickscale.ledger', 'on', true)),
u AS (
    INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after)
    SELECT $1, s.id, 1, 'seed-' || x, 'seed', 1000000 - x FROM generate_series(1, $2::int) x, services s WHERE s.slug = $3
    RETURNING id
)
INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id) SELECT $1, $4, 'consume', -1, u.id FROM u, cfg ORDER BY u.id`,
			u.ID, tc.entries, svc, g.GrantID); err != nil {
			b.Fatal(err)
		}
		if _, err := ta.store.Pool().Exec(ctx, `ANALYZE`); err != nil {
			b.Fatal(err)
		}
		br := ta.browser()
		if r := br.post("/login", url.Values{"email": {u.Email}, "password": {storetest.DefaultPassword}}); r.Status != http.StatusSeeOther {
			b.Fatalf("login: %d", r.Status)
		}
		var lat storetest.Latencies
		start := time.Now()
		const renders = 1000
		for range renders {
			t0 := time.Now()
			if r := br.get("/dashboard/credits"); r.Status != http.StatusOK {
				b.Fatalf("credits page: %d", r.Status)
			}
			lat.Add(time.Since(t0))
		}
		storetest.Report(os.Stdout, "/dashboard/credits render, user with "+tc.name, renders/time.Since(start).Seconds(),
			lat.Quantile(.5), lat.Quantile(.99), nil, "p99 < 20ms")
	}
}
