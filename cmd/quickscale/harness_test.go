package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/PuerkitoBio/goquery"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// testApp is the real program wired by newApp (the production wiring) on
// an isolated database, served over real HTTP by httptest.
type testApp struct {
	t      *testing.T // nil in benchmarks; harness code uses tb
	tb     testing.TB
	app    *app
	store  *store.Store
	server *httptest.Server
	URL    string
	logs   *syncBuffer
	// done receives every finished River job (when workers run).
	jobEvents chan *river.Event
}

type testAppOpts struct {
	// Env overrides environment variables (defaults are the dev ones).
	Env map[string]string
	// Mode is dev (default: site + workers + simulator + mailbox) or api.
	Mode string
	// NoWorkers keeps River from working jobs even in dev mode.
	NoWorkers bool
	// QuietLogs logs at info level to nowhere, as a benchmark wants.
	QuietLogs bool
}

// syncBuffer collects log output across goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestApp(t testing.TB, opts testAppOpts) *testApp {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dbURL := storetest.NewDatabase(t)
	srv := httptest.NewUnstartedServer(nil)
	base := "http://" + srv.Listener.Addr().String()
	env := map[string]string{
		"DATABASE_URL": dbURL, "BASE_URL": base, "ADDR": srv.Listener.Addr().String(),
		"LOG_LEVEL": "debug", "SHUTDOWN_TIMEOUT": "5s", "LIABILITY_REFRESH_INTERVAL": "1s",
	}
	for k, v := range opts.Env {
		env[k] = v
	}
	cfg, err := loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.QuietLogs {
		logger = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
		env["LOG_LEVEL"] = "info"
	}
	maxConns := int32(20)
	if _, set := opts.Env["DATABASE_MAX_CONNS"]; set {
		maxConns = cfg.DatabaseMaxConns
	}
	pool, err := store.OpenPool(ctx, cfg.DatabaseURL, store.PoolOptions{MaxConns: maxConns, AppName: "quickscale-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	mode := opts.Mode
	if mode == "" {
		mode = "dev"
	}
	a, err := newApp(ctx, mode, cfg, logger, pool)
	if err != nil {
		t.Fatalf("newApp: %v", err)
	}
	tt, _ := t.(*testing.T)
	ta := &testApp{t: tt, tb: t, app: a, store: a.store, server: srv, URL: base, logs: logs}
	if a.riverUI != nil {
		if err := a.riverUI.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if a.handler != nil {
		srv.Config.Handler = a.handler
		srv.Start()
		t.Cleanup(srv.Close)
	}
	if a.runsWorkers() && !opts.NoWorkers {
		events, cancelEvents := a.river.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed, river.EventKindJobCancelled, river.EventKindJobSnoozed)
		t.Cleanup(cancelEvents)
		ta.jobEvents = make(chan *river.Event, 10000)
		go func() {
			for ev := range events {
				a.metrics.ObserveRiverEvent(ev)
				select {
				case ta.jobEvents <- ev:
				default:
				}
			}
		}()
		if err := a.river.Start(context.WithoutCancel(ctx)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			_ = a.river.Stop(sctx)
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("application log:\n%s", tail(logs.String(), 60))
		}
	})
	return ta
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// eventually polls cond every 20ms until it is true or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			if cond() {
				return
			}
			t.Fatalf("timed out after %s waiting for %s", within, what)
		case <-poll.C:
		}
	}
}

// waitJob waits for a finished job of kind matching pred.
func (ta *testApp) waitJob(kind string, within time.Duration) *river.Event {
	ta.tb.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case ev := <-ta.jobEvents:
			if ev.Job.Kind == kind {
				return ev
			}
		case <-timer.C:
			ta.tb.Fatalf("no %s job finished within %s", kind, within)
			return nil
		}
	}
}

// browser is a person with a cookie jar.
type browser struct {
	t      testing.TB
	app    *testApp
	client *http.Client
	// last is the most recent response body.
	lastBody string
}

func (ta *testApp) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: ta.tb, app: ta, client: &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}}
}

// response is a read HTTP response.
type response struct {
	Status int
	Header http.Header
	Body   string
}

// Doc parses the body as HTML.
func (r response) Doc(t testing.TB) *goquery.Document {
	t.Helper()
	doc, err := goquery.NewDocumentFromReader(strings.NewReader(r.Body))
	if err != nil {
		t.Fatalf("parse HTML: %v", err)
	}
	return doc
}

func (b *browser) do(req *http.Request) response {
	b.t.Helper()
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatalf("read %s: %v", req.URL, err)
	}
	b.lastBody = string(body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: string(body)}
}

func (b *browser) url(path string) string {
	if strings.HasPrefix(path, "http") {
		return path
	}
	return b.app.URL + path
}

// get fetches a page without following redirects.
func (b *browser) get(path string, header ...string) response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodGet, b.url(path), nil)
	if err != nil {
		b.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return b.do(req)
}

// post submits a form (as a same-origin browser would) without following redirects.
func (b *browser) post(path string, form url.Values, header ...string) response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.url(path), strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.app.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return b.do(req)
}

// mustRedirect checks a 303 and returns where it points.
func mustRedirect(t testing.TB, r response, wantPrefix string) string {
	t.Helper()
	if r.Status != http.StatusSeeOther && r.Status != http.StatusFound {
		t.Fatalf("status %d, want a redirect to %s; body:\n%s", r.Status, wantPrefix, tail(r.Body, 30))
	}
	loc := r.Header.Get("Location")
	if !strings.HasPrefix(loc, wantPrefix) {
		t.Fatalf("redirect to %q, want %q…", loc, wantPrefix)
	}
	return loc
}

// mailbox returns the dev mailbox, newest first.
func (ta *testApp) mailbox() []store.Mail {
	ta.tb.Helper()
	resp, err := http.Get(ta.URL + "/dev/mailbox.json")
	if err != nil {
		ta.tb.Fatal(err)
	}
	defer resp.Body.Close()
	var mails []store.Mail
	if err := json.NewDecoder(resp.Body).Decode(&mails); err != nil {
		ta.tb.Fatalf("decode mailbox: %v", err)
	}
	return mails
}

// waitMail waits for a message to the address whose subject contains subject.
func (ta *testApp) waitMail(to, subject string) store.Mail {
	ta.tb.Helper()
	var found store.Mail
	eventually(ta.tb, 15*time.Second, fmt.Sprintf("mail %q to %s", subject, to), func() bool {
		for _, m := range ta.mailbox() {
			if strings.EqualFold(m.To, to) && strings.Contains(m.Subject, subject) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

var linkRE = regexp.MustCompile(`https?://[^\s"<>]+`)

// linkIn returns the first link in text that contains part.
func linkIn(t testing.TB, text, part string) string {
	t.Helper()
	for _, l := range linkRE.FindAllString(text, -1) {
		if strings.Contains(l, part) {
			return l
		}
	}
	t.Fatalf("no link containing %q in:\n%s", part, text)
	return ""
}

// signUpVerified signs a new user up through the site, follows the emailed
// link and signs in; it returns the signed-in browser.
func (ta *testApp) signUpVerified(email string) *browser {
	ta.tb.Helper()
	b := ta.browser()
	r := b.post("/signup", url.Values{"email": {email}, "password": {storetest.DefaultPassword}})
	if r.Status != http.StatusOK {
		ta.tb.Fatalf("signup: status %d", r.Status)
	}
	mail := ta.waitMail(email, "Confirm your email")
	link := linkIn(ta.tb, mail.Text, "/verify?token=")
	u, _ := url.Parse(link)
	mustRedirect(ta.tb, b.post("/verify", url.Values{"token": {u.Query().Get("token")}}), "/login")
	mustRedirect(ta.tb, b.post("/login", url.Values{"email": {email}, "password": {storetest.DefaultPassword}}), "/dashboard")
	return b
}

// userWithKey makes a verified user directly in the store with an API key.
func (ta *testApp) userWithKey(opts storetest.UserOpts) (store.User, string) {
	ta.tb.Helper()
	u := storetest.NewUser(ta.tb, ta.store, opts)
	raw, _, err := ta.store.CreateAPIKey(context.Background(), u.ID, "test")
	if err != nil {
		ta.tb.Fatal(err)
	}
	return u, raw
}

// metric reads one sample from the app's registry ("" labels match all).
func (ta *testApp) metric(name string, labels map[string]string) float64 {
	ta.tb.Helper()
	return metricValue(ta.tb, ta.app.metrics, name, labels)
}

func metricValue(t testing.TB, m *observability.Metrics, name string, labels map[string]string) float64 {
	t.Helper()
	samples, err := m.Samples(name)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
samples:
	for _, s := range samples {
		for k, v := range labels {
			if s.Labels[k] != v {
				continue samples
			}
		}
		sum += s.Value
	}
	return sum
}

// jobRows returns River jobs of a kind in any state.
func (ta *testApp) jobRows(kind string) []*rivertype.JobRow {
	ta.tb.Helper()
	res, err := ta.app.river.JobList(context.Background(), river.NewJobListParams().Kinds(kind).First(1000))
	if err != nil {
		ta.tb.Fatal(err)
	}
	return res.Jobs
}
