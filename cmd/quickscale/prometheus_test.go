package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"go.yaml.in/yaml/v3"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// The Prometheus tests run the real prometheus and promtool binaries
// (Debian's, 2.42) against the real program. Missing binaries fail the
// tests: the dashboards and alerts cannot be trusted unchecked.

func lookPathOrFail(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not in PATH (%v): install Prometheus (Debian: apt-get install prometheus) to run the observability tests", name, err)
	}
	return p
}

func TestPromtoolAcceptsComposeConfigAndAlertRules(t *testing.T) {
	t.Parallel()
	promtool := lookPathOrFail(t, "promtool")
	dir := filepath.Join(repoRoot, "observability/prometheus")
	for _, args := range [][]string{
		{"check", "config", "prometheus.yml"},
		{"check", "rules", "alerts.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			continue
		}
		if !strings.Contains(string(out), "SUCCESS") {
			t.Errorf("promtool %s did not report success:\n%s", strings.Join(args, " "), out)
		}
	}
}

// promServer is a prometheus process scraping a test app.
type promServer struct {
	t   *testing.T
	url string
	out *syncBuffer
}

// startPrometheus runs prometheus with scrape and rule evaluation every
// second. The test app is scraped twice, as job api and as job worker: two
// instances exporting the same series, as a worker that just lost River
// leadership may briefly do next to the new leader.
func startPrometheus(t *testing.T, target string) *promServer {
	t.Helper()
	bin := lookPathOrFail(t, "prometheus")
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join(repoRoot, "observability/prometheus/alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: api
    static_configs: [{targets: [%q]}]
  - job_name: worker
    static_configs: [{targets: [%q]}]
`, rules, target, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)

	out := &syncBuffer{}
	cmd := exec.Command(bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", tail(out.String(), 40))
		}
	})
	ps := &promServer{t: t, url: "http://" + addr, out: out}
	eventually(t, 30*time.Second, "prometheus to be ready", func() bool {
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", out.String())
		default:
		}
		resp, err := http.Get(ps.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return ps
}

// promResponse is the envelope of Prometheus' HTTP API.
type promResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

func (p *promServer) get(path string, params url.Values) promResponse {
	p.t.Helper()
	u := p.url + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	resp, err := http.Get(u)
	if err != nil {
		p.t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	var r promResponse
	if err := json.Unmarshal(body, &r); err != nil {
		p.t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	return r
}

// querySample is one element of an instant vector.
type querySample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s querySample) float(t *testing.T) float64 {
	t.Helper()
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		t.Fatalf("sample value %v: %v", s.Value, err)
	}
	return f
}

// query evaluates expr now. It returns the samples (a scalar becomes one
// sample) or the error Prometheus reported.
func (p *promServer) query(expr string) ([]querySample, error) {
	p.t.Helper()
	r := p.get("/api/v1/query", url.Values{"query": {expr}})
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", r.ErrorType, r.Error)
	}
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(r.Data, &data); err != nil {
		p.t.Fatal(err)
	}
	switch data.ResultType {
	case "vector":
		var v []querySample
		if err := json.Unmarshal(data.Result, &v); err != nil {
			p.t.Fatal(err)
		}
		return v, nil
	case "scalar":
		var s [2]any
		if err := json.Unmarshal(data.Result, &s); err != nil {
			p.t.Fatal(err)
		}
		return []querySample{{Value: s}}, nil
	}
	return nil, fmt.Errorf("unexpected result type %s", data.ResultType)
}

// waitScrapedAfter waits until every target was scraped at least twice
// after mark, so that every series that existed at mark has two samples
// after it and rate() and increase() over it return a value.
func (p *promServer) waitScrapedAfter(mark time.Time) {
	p.t.Helper()
	eventually(p.t, 30*time.Second, "two scrapes of every target after the workload", func() bool {
		now := time.Now()
		// Samples in (mark, now]: the window ends at the evaluation time.
		window := now.Sub(mark).Milliseconds()
		r := p.get("/api/v1/query", url.Values{
			"query": {fmt.Sprintf(`count_over_time(up{job=~"api|worker"}[%dms])`, window)},
			"time":  {strconv.FormatFloat(float64(now.UnixMilli())/1000, 'f', 3, 64)},
		})
		var data struct {
			Result []querySample `json:"result"`
		}
		if r.Status != "success" || json.Unmarshal(r.Data, &data) != nil || len(data.Result) != 2 {
			return false
		}
		for _, x := range data.Result {
			if x.float(p.t) < 2 {
				return false
			}
		}
		return true
	})
}

// grafanaVariables replaces Grafana's built-in variables with windows that
// suit a test that ran for seconds with a one-second scrape interval.
var grafanaVariables = strings.NewReplacer(
	"$__rate_interval", "1m",
	"${__rate_interval}", "1m",
	"$__interval", "1s",
	"${__interval}", "1s",
	"$__range", "10m",
	"${__range}", "10m",
)

var leftoverVariableRE = regexp.MustCompile(`\$\{?\w+|\[\[\w+\]\]`)

// dashboardQuery is one panel target of a provisioned dashboard.
type dashboardQuery struct {
	file, panel, refID, expr string
}

func dashboardQueries(t *testing.T) []dashboardQuery {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "observability/grafana/dashboards/*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("found %d dashboards, want queues, http and credits", len(files))
	}
	type panel struct {
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
		Panels json.RawMessage `json:"panels"`
	}
	var out []dashboardQuery
	var walk func(file string, raw json.RawMessage)
	walk = func(file string, raw json.RawMessage) {
		if len(raw) == 0 {
			return
		}
		var ps []panel
		if err := json.Unmarshal(raw, &ps); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, p := range ps {
			for _, tg := range p.Targets {
				out = append(out, dashboardQuery{file: filepath.Base(file), panel: p.Title, refID: tg.RefID, expr: tg.Expr})
			}
			walk(file, p.Panels)
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels json.RawMessage `json:"panels"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		walk(f, d.Panels)
	}
	return out
}

// workload is what the metrics workload did, for the checks afterwards.
type workload struct {
	emails  []string
	userIDs []int64
}

// runMetricsWorkload moves every metric the dashboards show: sign-ups
// (emails), a purchase paid and one declined through the simulator, a
// partial refund, a refund that fails to apply, service usage from the
// site and the API, an expiring and an expired grant swept by the expiry
// job, a cancelled job, a webhook with a bad signature, admin pages with
// ids in their paths and unmatched paths.
func runMetricsWorkload(t *testing.T, ta *testApp) workload {
	t.Helper()
	ctx := context.Background()
	var w workload
	buyerEmail := "prom-buyer@example.com"
	b := ta.signUpVerified(buyerEmail)
	buyer, err := ta.store.UserByEmail(ctx, buyerEmail)
	if err != nil {
		t.Fatal(err)
	}
	w.emails = append(w.emails, buyerEmail)
	w.userIDs = append(w.userIDs, buyer.ID)

	// A pack bought and paid.
	loc := mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_500"}, "nonce": {"prom-1"}}), ta.URL+"/simulator/checkout/")
	success := mustRedirect(t, b.post(loc[len(ta.URL):], url.Values{"action": {"pay"}}), "/dashboard/buy-credits/success?session_id=cs_sim_")
	eventually(t, 15*time.Second, "the paid pack's credits", func() bool {
		return b.get(success).Doc(t).Find("#checkout-status").AttrOr("data-state", "") == "succeeded"
	})
	// A pack declined by the bank.
	loc = mustRedirect(t, b.post("/dashboard/buy-credits", url.Values{"pack": {"pack_500"}, "nonce": {"prom-2"}}), ta.URL+"/simulator/checkout/")
	b.post(loc[len(ta.URL):], url.Values{"action": {"decline"}})
	eventually(t, 15*time.Second, "the declined payment", func() bool {
		return ta.metric("quickscale_payments_total", map[string]string{"status": store.PaymentFailed}) > 0
	})

	// Refunds, delivered as Stripe would: half of the paid pack, then one
	// in another currency, which the worker records as failed.
	var intent, currency string
	var amount int64
	if err := ta.store.Pool().QueryRow(ctx, `SELECT payment_intent_id, currency, amount_minor FROM payments WHERE user_id = $1 AND status = 'succeeded'`, buyer.ID).Scan(&intent, &currency, &amount); err != nil {
		t.Fatalf("paid payment: %v", err)
	}
	sim, ok := ta.app.gateway.(*billing.Simulator)
	if !ok {
		t.Fatalf("gateway is %T, want the simulator", ta.app.gateway)
	}
	refund := func(id, cur string) {
		t.Helper()
		ch := &stripe.Charge{ID: id, Object: "charge", Amount: amount, AmountRefunded: amount / 2, Currency: stripe.Currency(cur),
			Paid: true, Status: stripe.ChargeStatusSucceeded, PaymentIntent: &stripe.PaymentIntent{ID: intent}}
		if err := sim.Emit(ctx, stripe.EventTypeChargeRefunded, ch); err != nil {
			t.Fatal(err)
		}
	}
	refund("ch_sim_prom_refund", currency)
	eventually(t, 15*time.Second, "the refund", func() bool { return ta.metric("quickscale_refunds_minor_units_total", nil) > 0 })
	refund("ch_sim_prom_wrong_currency", "eur")
	eventually(t, 15*time.Second, "the failed refund event", func() bool {
		return ta.metric("quickscale_webhook_events_processed_total", map[string]string{"outcome": store.OutcomeFailed}) > 0
	})

	// Spending from the dashboard and from the API.
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "render", Cost: 10})
	storetest.NewService(t, ta.store, storetest.ServiceOpts{Slug: "transcode", Cost: 25})
	for i := range 3 {
		if r := b.post("/services/render/use", url.Values{"idempotency_key": {fmt.Sprintf("prom-use-%d", i)}}); r.Status != http.StatusOK {
			t.Fatalf("use render: %d", r.Status)
		}
	}
	key, _, err := ta.store.CreateAPIKey(ctx, buyer.ID, "prometheus test")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, ta.URL+"/api/v1/usage", strings.NewReader(`{"service":"transcode"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Idempotency-Key", "prom-api-1")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/v1/usage: %d", resp.StatusCode)
	}

	// A subscription period ending in three days, and promo credits that
	// expire in a moment and are swept by the expiry job.
	soon := time.Now().Add(72 * time.Hour)
	storetest.NewGrant(t, ta.store, buyer.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 300, ExpiresAt: &soon})
	expiry := time.Now().Add(time.Second)
	storetest.NewGrant(t, ta.store, buyer.ID, storetest.GrantOpts{Kind: store.GrantPromo, Amount: 40, ExpiresAt: &expiry})
	eventually(t, 5*time.Second, "the promo grant to expire", func() bool { return time.Now().After(expiry) })
	var lastInsert time.Time
	eventually(t, 30*time.Second, "the expiry sweep", func() bool {
		if ta.metric("quickscale_credits_expired_total", nil) > 0 {
			return true
		}
		// The sweep is unique while one is queued or running; a run that
		// started before the expiry would miss the grant, so ask again.
		if time.Since(lastInsert) > 500*time.Millisecond {
			if _, err := ta.app.river.Insert(ctx, jobs.ExpireCredits{}, nil); err != nil {
				t.Fatal(err)
			}
			lastInsert = time.Now()
		}
		return false
	})

	// A job the worker refuses: an email template that does not exist.
	if _, err := ta.app.river.Insert(ctx, jobs.SendEmail{Template: "no_such_template", To: "nobody@example.com"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the cancelled job", func() bool {
		return ta.metric("quickscale_river_jobs_total", map[string]string{"outcome": "cancelled"}) > 0
	})

	// A forged webhook.
	resp, err = http.Post(ta.URL+"/webhooks/stripe", "application/json", strings.NewReader(`{"id":"evt_forged","object":"event","type":"charge.refunded","data":{"object":{}}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("forged webhook: %d, want 400", resp.StatusCode)
	}

	// An admin looks at the buyer: ids in paths must not become labels.
	admin := storetest.NewUser(t, ta.store, storetest.UserOpts{Admin: true})
	w.emails = append(w.emails, admin.Email)
	w.userIDs = append(w.userIDs, admin.ID)
	ab := ta.browser()
	mustRedirect(t, ab.post("/login", url.Values{"email": {admin.Email}, "password": {storetest.DefaultPassword}}), "/dashboard")
	for _, p := range []string{fmt.Sprintf("/admin/users/%d", buyer.ID), fmt.Sprintf("/admin/users/%d/credits", buyer.ID), "/admin/river/api/jobs?state=completed"} {
		if r := ab.get(p); r.Status != http.StatusOK {
			t.Fatalf("GET %s as admin: %d", p, r.Status)
		}
	}
	for _, p := range []string{fmt.Sprintf("/users/%d", buyer.ID), "/" + buyerEmail, "/wp-login.php"} {
		if r := ab.get(p); r.Status != http.StatusNotFound {
			t.Fatalf("GET %s: %d, want 404", p, r.Status)
		}
	}
	// Support removes a credit (the credits-removed panel).
	mustRedirect(t, ab.post(fmt.Sprintf("/admin/users/%d/credits", buyer.ID), url.Values{"nonce": {"prom-remove"}, "direction": {"remove"}, "amount": {"1"}, "reason": {"metrics workload"}}), "/admin/users/")
	return w
}

// refreshLeaderGauges waits for the app's River client to lead and then
// refreshes the leader-only gauges, as the worker's loop does every few
// seconds, so that the test need not wait for its ticker.
func refreshLeaderGauges(t *testing.T, ta *testApp) {
	t.Helper()
	ctx := context.Background()
	eventually(t, 30*time.Second, "River leadership", func() bool {
		id, err := ta.store.RiverLeaderID(ctx)
		return err == nil && id == ta.app.river.ID()
	})
	ta.app.gauges.RefreshQueues(ctx)
	ta.app.gauges.RefreshSweep(ctx)
	ta.app.gauges.RefreshLiability(ctx)
	for _, name := range leaderOnlyGauges {
		if len(seriesOf(t, ta.app.metrics, name)) == 0 {
			t.Fatalf("the leader exports no %s", name)
		}
	}
}

var leaderOnlyGauges = []string{
	"quickscale_subscriptions", "quickscale_subscriptions_canceling", "quickscale_subscriptions_monthly_revenue_minor_units",
	"quickscale_river_queue_jobs", "quickscale_river_queue_oldest_available_age_seconds",
	"quickscale_credits_outstanding", "quickscale_credits_expiring_7d",
	"quickscale_credits_swept_through_timestamp_seconds", "quickscale_credits_sweep_schedule_gap_seconds",
	// and when they were refreshed: a former leader's would only age
	"quickscale_metrics_refreshed_timestamp_seconds",
}

// seriesOf returns the label sets a registry exports for one metric.
func seriesOf(t testing.TB, m *observability.Metrics, name string) []map[string]string {
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

func TestPrometheusEvaluatesEveryDashboardQueryAndAlertRule(t *testing.T) {
	t.Parallel()
	started := time.Now()
	ta := newTestApp(t, testAppOpts{})
	gctx, stopGauges := context.WithCancel(context.Background())
	var gaugesDone sync.WaitGroup
	gaugesDone.Add(1)
	go func() { defer gaugesDone.Done(); ta.app.gauges.Run(gctx) }()
	t.Cleanup(func() { stopGauges(); gaugesDone.Wait() })

	prom := startPrometheus(t, strings.TrimPrefix(ta.URL, "http://"))
	w := runMetricsWorkload(t, ta)
	refreshLeaderGauges(t, ta)
	mark := time.Now()
	prom.waitScrapedAfter(mark)
	t.Logf("workload and scrapes took %s", time.Since(started).Round(time.Millisecond))

	t.Run("every dashboard query returns series", func(t *testing.T) {
		t.Parallel()
		queries := dashboardQueries(t)
		if len(queries) < 30 {
			t.Fatalf("only %d dashboard queries found", len(queries))
		}
		for _, q := range queries {
			expr := grafanaVariables.Replace(q.expr)
			if v := leftoverVariableRE.FindString(expr); v != "" {
				t.Errorf("%s %q %s: unknown Grafana variable %s in %s", q.file, q.panel, q.refID, v, q.expr)
				continue
			}
			samples, err := prom.query(expr)
			if err != nil {
				t.Errorf("%s %q %s: %v\n  %s", q.file, q.panel, q.refID, err, expr)
				continue
			}
			if len(samples) == 0 {
				t.Errorf("%s %q %s returns no series after the workload:\n  %s", q.file, q.panel, q.refID, expr)
			}
		}
	})

	t.Run("every alert rule parses and evaluates", func(t *testing.T) {
		t.Parallel()
		b, err := os.ReadFile(filepath.Join(repoRoot, "observability/prometheus/alerts.yml"))
		if err != nil {
			t.Fatal(err)
		}
		var file struct {
			Groups []struct {
				Rules []struct {
					Alert string `yaml:"alert"`
					Expr  string `yaml:"expr"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		}
		if err := yaml.Unmarshal(b, &file); err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, g := range file.Groups {
			for _, r := range g.Rules {
				names[r.Alert] = true
				if _, err := prom.query(r.Expr); err != nil {
					t.Errorf("alert %s: %v\n  %s", r.Alert, err, r.Expr)
				}
			}
		}
		if len(names) == 0 {
			t.Fatal("no alert rules")
		}
		// Prometheus loaded the same file and evaluates it every second:
		// every rule must have been evaluated without error since the mark.
		eventually(t, 20*time.Second, "every rule evaluated after the workload", func() bool {
			r := prom.get("/api/v1/rules", nil)
			var data struct {
				Groups []struct {
					Rules []struct {
						Name           string    `json:"name"`
						Health         string    `json:"health"`
						LastError      string    `json:"lastError"`
						LastEvaluation time.Time `json:"lastEvaluation"`
					} `json:"rules"`
				} `json:"groups"`
			}
			if err := json.Unmarshal(r.Data, &data); err != nil {
				t.Fatal(err)
			}
			loaded := 0
			for _, g := range data.Groups {
				for _, rule := range g.Rules {
					loaded++
					if rule.Health == "err" || rule.LastError != "" {
						t.Fatalf("alert %s fails to evaluate: %s", rule.Name, rule.LastError)
					}
					if !rule.LastEvaluation.After(mark) || rule.Health != "ok" {
						return false
					}
				}
			}
			if loaded != len(names) {
				t.Fatalf("prometheus loaded %d rules, alerts.yml has %d", loaded, len(names))
			}
			return true
		})
	})

	t.Run("leader-only gauges are not double counted", func(t *testing.T) {
		t.Parallel()
		// Both jobs export the same liability; the dashboard must show it once.
		l, err := ta.store.CreditLiability(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var want int64
		for _, n := range l.ByKind {
			want += n
		}
		// The credit panels read what the leader last exported.
		if got := metricValue(t, ta.app.metrics, "quickscale_credits_outstanding", nil); int64(got) != want {
			t.Fatalf("exported liability %v, store says %d (did the workload move after the refresh?)", got, want)
		}
		s, err := prom.query(`sum(max by (kind) (quickscale_credits_outstanding))`)
		if err != nil || len(s) != 1 {
			t.Fatalf("liability query: %v %v", s, err)
		}
		if got := s[0].float(t); int64(got) != want || want == 0 {
			t.Fatalf("liability in Prometheus %v, want %d", got, want)
		}
		s, err = prom.query(`max(quickscale_credits_expiring_7d)`)
		if err != nil || len(s) != 1 || int64(s[0].float(t)) != l.Expiring7d || l.Expiring7d == 0 {
			t.Fatalf("expiring within 7 days: %v %v, want %d", s, err, l.Expiring7d)
		}
		s, err = prom.query(`count(quickscale_credits_outstanding{kind="pack"})`)
		if err != nil || len(s) != 1 || s[0].float(t) != 2 {
			t.Fatalf("want the pack liability exported by two instances (the premise of this check), got %v %v", s, err)
		}
	})

	t.Run("no label value carries user data", func(t *testing.T) {
		t.Parallel()
		r := prom.get("/api/v1/labels", nil)
		var names []string
		if err := json.Unmarshal(r.Data, &names); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(names, "route") || !slices.Contains(names, "kind") {
			t.Fatalf("label names %v lack route and kind: did the scrape work?", names)
		}
		ids := map[string]bool{}
		for _, id := range w.userIDs {
			ids[strconv.FormatInt(id, 10)] = true
		}
		numericSegment := regexp.MustCompile(`(^|/)[0-9]+(/|$)`)
		var routes []string
		for _, name := range names {
			if name == "le" || name == "quantile" {
				continue // bucket bounds and quantiles are numbers by design
			}
			r := prom.get("/api/v1/label/"+url.PathEscape(name)+"/values", nil)
			var values []string
			if err := json.Unmarshal(r.Data, &values); err != nil {
				t.Fatal(err)
			}
			for _, v := range values {
				lower := strings.ToLower(v)
				for _, e := range w.emails {
					if strings.Contains(lower, strings.ToLower(e)) {
						t.Errorf("label %s=%q contains the email %s", name, v, e)
					}
				}
				if strings.Contains(v, "@") {
					t.Errorf("label %s=%q looks like it carries an email", name, v)
				}
				if ids[v] || numericSegment.MatchString(v) {
					t.Errorf("label %s=%q carries a numeric id", name, v)
				}
			}
			if name == "route" {
				routes = values
			}
		}
		for _, want := range []string{"/admin/users/{id}", "/admin/users/{id}/credits", "/services/{slug}/use", "unmatched"} {
			if !slices.Contains(routes, want) {
				t.Errorf("route %q missing from %q", want, routes)
			}
		}
	})
}

// TestLeaderOnlyGaugesComeFromOneWorker runs two worker processes on one
// database and moves River leadership between them: only the current
// leader may export the leader-only gauges, or max across instances would
// show a former leader's stale values.
func TestLeaderOnlyGaugesComeFromOneWorker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ta := newTestApp(t, testAppOpts{})
	u := storetest.NewUser(t, ta.store, storetest.UserOpts{})
	soon := time.Now().Add(48 * time.Hour)
	storetest.NewGrant(t, ta.store, u.ID, storetest.GrantOpts{Kind: store.GrantSubscription, Amount: 120, ExpiresAt: &soon})

	pool, err := store.OpenPool(ctx, ta.app.cfg.DatabaseURL, store.PoolOptions{MaxConns: 10, AppName: "quickscale-test-worker2"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	second, err := newApp(ctx, "worker", ta.app.cfg, ta.app.logger.With("process", "worker2"), pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.river.Start(context.WithoutCancel(ctx)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = second.river.Stop(sctx)
	})

	apps := []*app{ta.app, second}
	leaderIndex := func() int {
		id, err := ta.store.RiverLeaderID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i, a := range apps {
			if a.river.ID() == id {
				return i
			}
		}
		return -1
	}
	// checkExports refreshes both processes' gauges and checks that only
	// apps[leader] exports the leader-only series.
	checkExports := func(leader int) {
		t.Helper()
		for _, a := range apps {
			a.gauges.RefreshQueues(ctx)
			a.gauges.RefreshSweep(ctx)
			a.gauges.RefreshLiability(ctx)
		}
		for i, a := range apps {
			for _, name := range leaderOnlyGauges {
				n := len(seriesOf(t, a.metrics, name))
				if i == leader && n == 0 {
					t.Errorf("the leader (process %d) exports no %s", i, name)
				}
				if i != leader && n > 0 {
					t.Errorf("process %d is not the leader but exports %d %s series", i, n, name)
				}
			}
		}
		if got := metricValue(t, apps[leader].metrics, "quickscale_credits_expiring_7d", nil); got != 120 {
			t.Errorf("leader reports %v credits expiring within 7 days, want 120", got)
		}
		// Nothing is overdue: the sweep is behind by nothing, the
		// watermark is the refresh's now; sweeps run every minute.
		if got := metricValue(t, apps[leader].metrics, "quickscale_credits_swept_through_timestamp_seconds", nil); math.Abs(got-float64(time.Now().UnixMilli())/1000) > 5 {
			t.Errorf("leader reports swept through %v, want about now (%v)", got, time.Now().Unix())
		}
		if got := metricValue(t, apps[leader].metrics, "quickscale_credits_sweep_schedule_gap_seconds", nil); got != 60 {
			t.Errorf("leader reports %v s between scheduled sweeps, want 60", got)
		}
	}

	var first int
	eventually(t, 30*time.Second, "a River leader among the two processes", func() bool {
		first = leaderIndex()
		return first >= 0
	})
	checkExports(first)

	// The leader stops (a deploy, a crash): River hands leadership over.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := apps[first].river.Stop(sctx); err != nil {
		t.Fatalf("stop the leader: %v", err)
	}
	next := 1 - first
	eventually(t, 30*time.Second, "leadership to move to the other process", func() bool { return leaderIndex() == next })
	checkExports(next)
}
