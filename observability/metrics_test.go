package observability

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// instrumentedRouter is a small chi router shaped like QuickScale's, with
// InstrumentHTTP in front as in api/routes.go.
func instrumentedRouter(m *Metrics) http.Handler {
	r := chi.NewRouter()
	r.Use(m.InstrumentHTTP)
	ok := func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }
	r.Get("/admin/users/{id}", ok)
	r.Get("/admin/users/{id}/credits", ok)
	r.Post("/services/{slug}/use", ok)
	r.Get("/boom", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	r.Route("/api/v1", func(r chi.Router) {
		r.Get("/balance", ok)
	})
	return r
}

func serve(t *testing.T, h http.Handler, method, target string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec.Code
}

// labelSets returns the label sets of every sample of a metric family.
func labelSets(t *testing.T, m *Metrics, name string) []map[string]string {
	t.Helper()
	samples, err := m.Samples(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, s := range samples {
		out = append(out, s.Labels)
	}
	return out
}

func requestCount(t *testing.T, m *Metrics, labels map[string]string) float64 {
	t.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != "quickscale_http_requests_total" {
			continue
		}
	samples:
		for _, mm := range f.GetMetric() {
			have := map[string]string{}
			for _, lp := range mm.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue samples
				}
			}
			sum += mm.GetCounter().GetValue()
		}
	}
	return sum
}

func TestHTTPMetricsLabelRoutePatternNotRawPath(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	h := instrumentedRouter(m)
	for _, p := range []string{"/admin/users/123", "/admin/users/456", "/admin/users/789"} {
		if code := serve(t, h, http.MethodGet, p); code != http.StatusOK {
			t.Fatalf("GET %s: %d", p, code)
		}
	}
	var routes []string
	for _, ls := range labelSets(t, m, "quickscale_http_requests_total") {
		routes = append(routes, ls["route"])
	}
	if want := []string{"/admin/users/{id}"}; !slices.Equal(routes, want) {
		t.Fatalf("route labels %q, want %q", routes, want)
	}
	if got := requestCount(t, m, map[string]string{"route": "/admin/users/{id}", "method": "GET", "code": "2xx"}); got != 3 {
		t.Fatalf("requests counted under the pattern: %v, want 3", got)
	}
	durations := labelSets(t, m, "quickscale_http_request_duration_seconds")
	if len(durations) != 1 || durations[0]["route"] != "/admin/users/{id}" {
		t.Fatalf("duration label sets %v, want one for /admin/users/{id}", durations)
	}
}

func TestHTTPMetricsNestedRoutersUseTheFullPattern(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	h := instrumentedRouter(m)
	serve(t, h, http.MethodGet, "/api/v1/balance")
	if got := requestCount(t, m, map[string]string{"route": "/api/v1/balance"}); got != 1 {
		t.Fatalf("requests under /api/v1/balance: %v; label sets %v", got, labelSets(t, m, "quickscale_http_requests_total"))
	}
}

func TestHTTPMetricsUnmatchedPathsShareOneLabel(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	h := instrumentedRouter(m)
	for _, p := range []string{"/nope", "/wp-login.php", "/admin/users", "/x/" + strings.Repeat("a", 300), "/users/alice@example.com"} {
		if code := serve(t, h, http.MethodGet, p); code != http.StatusNotFound {
			t.Fatalf("GET %s: %d, want 404", p, code)
		}
	}
	sets := labelSets(t, m, "quickscale_http_requests_total")
	if len(sets) != 1 || sets[0]["route"] != "unmatched" || sets[0]["code"] != "4xx" {
		t.Fatalf("label sets %v, want one {route=unmatched, code=4xx}", sets)
	}
}

func TestHTTPMetricsUnknownMethodsBecomeOther(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	h := instrumentedRouter(m)
	for _, method := range []string{"PROPFIND", "BREW", "get", "X-" + strings.Repeat("Z", 100)} {
		serve(t, h, method, "/admin/users/1")
	}
	serve(t, h, http.MethodGet, "/admin/users/1")
	var methods []string
	for _, ls := range labelSets(t, m, "quickscale_http_requests_total") {
		methods = append(methods, ls["method"])
	}
	slices.Sort(methods)
	methods = slices.Compact(methods)
	if want := []string{"GET", "other"}; !slices.Equal(methods, want) {
		t.Fatalf("method labels %q, want %q", methods, want)
	}
	if got := requestCount(t, m, map[string]string{"method": "other"}); got != 4 {
		t.Fatalf("requests with method other: %v, want 4", got)
	}
}

func TestHTTPMetricsCountStatusClasses(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	h := instrumentedRouter(m)
	serve(t, h, http.MethodGet, "/boom")
	serve(t, h, http.MethodPost, "/services/render/use")
	if got := requestCount(t, m, map[string]string{"route": "/boom", "code": "5xx"}); got != 1 {
		t.Fatalf("5xx on /boom: %v", got)
	}
	if got := requestCount(t, m, map[string]string{"route": "/services/{slug}/use", "method": "POST", "code": "2xx"}); got != 1 {
		t.Fatalf("2xx on /services/{slug}/use: %v", got)
	}
}

func TestEventTypeLabelKeepsStripeTypesAndBoundsEverythingElse(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{"checkout.session.completed", "charge.refunded", "invoice.payment_succeeded", "customer.subscription.updated"} {
		if got := EventTypeLabel(typ); got != typ {
			t.Errorf("EventTypeLabel(%q) = %q, want it unchanged", typ, got)
		}
	}
	hostile := []string{
		"", " ", "Checkout.Session.Completed", "alice@example.com", "user 123", "charge.refunded\n",
		"charge.refunded\x00", "évènement", "1234567", "a{b}", `x"y`, "../../etc/passwd",
		strings.Repeat("a", 65), strings.Repeat("a.", 40), "checkout.session.completed;DROP TABLE",
	}
	for _, typ := range hostile {
		if got := EventTypeLabel(typ); got != "other" {
			t.Errorf("EventTypeLabel(%q) = %q, want other", typ, got)
		}
	}
}

func TestCodeClassAndLabelSafeAreBounded(t *testing.T) {
	t.Parallel()
	cases := map[int]string{100: "1xx", 200: "2xx", 204: "2xx", 302: "3xx", 404: "4xx", 499: "4xx", 500: "5xx", 599: "5xx", 0: "other", 99: "other", 600: "other", -1: "other", 1000: "other"}
	for code, want := range cases {
		if got := CodeClass(code); got != want {
			t.Errorf("CodeClass(%d) = %q, want %q", code, got, want)
		}
	}
	if got := LabelSafe(strings.Repeat("x", 64)); got != "other" {
		t.Errorf("LabelSafe(64 chars) = %q, want other", got)
	}
	if got := LabelSafe("  "); got != "other" {
		t.Errorf("LabelSafe(blank) = %q, want other", got)
	}
	if got := LabelSafe("render-pdf"); got != "render-pdf" {
		t.Errorf("LabelSafe(render-pdf) = %q", got)
	}
}

func TestRiverEventsCountOutcomesByKindAndQueue(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	stats := &river.JobStatistics{RunDuration: 20 * time.Millisecond, QueueWaitDuration: 5 * time.Millisecond}
	job := func(state rivertype.JobState) *rivertype.JobRow {
		return &rivertype.JobRow{Kind: "send_email", Queue: "email", State: state}
	}
	m.ObserveRiverEvent(&river.Event{Kind: river.EventKindJobCompleted, Job: job(rivertype.JobStateCompleted), JobStats: stats})
	m.ObserveRiverEvent(&river.Event{Kind: river.EventKindJobFailed, Job: job(rivertype.JobStateRetryable), JobStats: stats})
	m.ObserveRiverEvent(&river.Event{Kind: river.EventKindJobFailed, Job: job(rivertype.JobStateDiscarded), JobStats: stats})
	m.ObserveRiverEvent(&river.Event{Kind: river.EventKindJobCancelled, Job: job(rivertype.JobStateCancelled), JobStats: stats})
	m.ObserveRiverEvent(&river.Event{Kind: river.EventKindJobSnoozed, Job: job(rivertype.JobStateScheduled)})
	m.ObserveRiverEvent(nil)
	m.ObserveRiverEvent(&river.Event{Kind: river.EventKindJobCompleted})

	var outcomes []string
	for _, ls := range labelSets(t, m, "quickscale_river_jobs_total") {
		if ls["kind"] != "send_email" || ls["queue"] != "email" {
			t.Fatalf("labels %v", ls)
		}
		outcomes = append(outcomes, ls["outcome"])
	}
	slices.Sort(outcomes)
	if want := []string{"cancelled", "completed", "discarded", "failed", "snoozed"}; !slices.Equal(outcomes, want) {
		t.Fatalf("outcomes %q, want %q", outcomes, want)
	}
	if sets := labelSets(t, m, "quickscale_river_job_run_duration_seconds"); len(sets) != 1 || sets[0]["kind"] != "send_email" {
		t.Fatalf("run duration label sets %v", sets)
	}
}

// userDataRE matches what must never become a label value: an email
// address or a path segment that is a number (a user, payment or key id).
var userDataRE = regexp.MustCompile(`@|(^|/)[0-9]+(/|$)`)

func TestNoLabelValueCarriesUserData(t *testing.T) {
	t.Parallel()
	m := NewMetrics()
	h := instrumentedRouter(m)
	paths := []string{
		"/admin/users/42", "/admin/users/42/credits", "/admin/users/alice@example.com",
		"/services/bob@example.com/use", "/api/v1/balance?email=carol@example.com", "/users/1234", "/1234",
	}
	for _, p := range paths {
		serve(t, h, http.MethodGet, p)
		serve(t, h, http.MethodPost, p)
	}
	m.WebhooksReceived.WithLabelValues(EventTypeLabel("dave@example.com")).Inc()
	m.WebhookOutcomes.WithLabelValues(EventTypeLabel("42"), "failed").Inc()
	m.CreditsConsumed.WithLabelValues("pack", LabelSafe(strings.Repeat("9", 80))).Add(1)

	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "quickscale_") {
			continue
		}
		for _, mm := range f.GetMetric() {
			for _, lp := range mm.GetLabel() {
				seen++
				if lp.GetName() == "le" {
					continue
				}
				if userDataRE.MatchString(lp.GetValue()) {
					t.Errorf("%s{%s=%q} carries user data", f.GetName(), lp.GetName(), lp.GetValue())
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("no labelled samples gathered")
	}
}
