package observability

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

// wantDashboards are the files compose provisions, with their titles.
var wantDashboards = map[string]string{
	"queues.json":  "Queues",
	"http.json":    "HTTP",
	"credits.json": "Credits and revenue",
}

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, err := filepath.Glob("grafana/dashboards/*.json")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]dashboard{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		dec := json.NewDecoder(strings.NewReader(string(b)))
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = d
	}
	return out
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

func provisionedDatasourceUID(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("grafana/provisioning/datasources/prometheus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(b, &ds); err != nil {
		t.Fatal(err)
	}
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].UID == "" {
		t.Fatalf("want one prometheus datasource with a fixed uid, got %+v", ds.Datasources)
	}
	return ds.Datasources[0].UID
}

func TestDashboardsAreProvisionedAndWellFormed(t *testing.T) {
	t.Parallel()
	dsUID := provisionedDatasourceUID(t)
	dashboards := loadDashboards(t)
	uids := map[string]string{}
	for file, title := range wantDashboards {
		d, ok := dashboards[file]
		if !ok {
			t.Errorf("dashboard %s is missing", file)
			continue
		}
		if d.Title != title {
			t.Errorf("%s: title %q, want %q", file, d.Title, title)
		}
	}
	for file, d := range dashboards {
		if d.UID == "" || len(d.UID) > 40 {
			t.Errorf("%s: uid %q must be set and at most 40 characters", file, d.UID)
		}
		if other, dup := uids[d.UID]; dup {
			t.Errorf("%s and %s share uid %q", file, other, d.UID)
		}
		uids[d.UID] = file
		ids := map[int]bool{}
		queries := 0
		for _, p := range allPanels(d.Panels) {
			if ids[p.ID] {
				t.Errorf("%s: panel id %d used twice", file, p.ID)
			}
			ids[p.ID] = true
			if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
				t.Errorf("%s: panel %q has no grid position", file, p.Title)
			}
			if p.Type == "row" {
				continue
			}
			if p.Title == "" {
				t.Errorf("%s: panel %d has no title", file, p.ID)
			}
			if p.Datasource == nil || p.Datasource.UID != dsUID {
				t.Errorf("%s: panel %q does not use the provisioned datasource %q", file, p.Title, dsUID)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", file, p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q has an empty query", file, p.Title)
				}
				if refs[tg.RefID] {
					t.Errorf("%s: panel %q repeats refId %q", file, p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				queries++
			}
		}
		if queries == 0 {
			t.Errorf("%s has no queries", file)
		}
	}
}

func TestDashboardProviderPointsAtTheDashboards(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("grafana/provisioning/dashboards/quickscale.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Providers []struct {
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Providers) != 1 || p.Providers[0].Type != "file" || !strings.HasPrefix(p.Providers[0].Options.Path, "/") {
		t.Fatalf("want one file provider with an absolute path, got %+v", p.Providers)
	}
}

// dashboardExprs returns every query of every dashboard, keyed for messages.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for file, d := range loadDashboards(t) {
		for _, p := range allPanels(d.Panels) {
			for _, tg := range p.Targets {
				out[file+": "+p.Title+" "+tg.RefID] = tg.Expr
			}
		}
	}
	return out
}

func TestDashboardsAggregateLeaderOnlyGaugesWithMax(t *testing.T) {
	t.Parallel()
	used := 0
	for where, expr := range dashboardExprs(t) {
		used += len(leaderGaugeRE.FindAllString(expr, -1))
		if bad := checkLeaderGaugesUseMax(expr); len(bad) > 0 {
			t.Errorf("%s: %v must be aggregated with max by (…), not summed or used raw: %s", where, bad, expr)
		}
	}
	if used == 0 {
		t.Fatal("no dashboard shows a leader-only gauge")
	}
}

var (
	histogramNames = []string{"quickscale_http_request_duration_seconds", "quickscale_river_job_run_duration_seconds", "quickscale_river_job_queue_wait_seconds"}
	quantileRE     = regexp.MustCompile(`histogram_quantile\(\s*0?\.\d+\s*,\s*sum by \(([^)]*)\) \(rate\((\w+)_bucket(\{[^}]*\})?\[[^\]]+\]\)\)\)`)
)

func TestDashboardLatenciesAreQuantilesOverBuckets(t *testing.T) {
	t.Parallel()
	shown := map[string]bool{}
	for where, expr := range dashboardExprs(t) {
		for _, h := range histogramNames {
			if !strings.Contains(expr, h) {
				continue
			}
			shown[h] = true
			m := quantileRE.FindStringSubmatch(expr)
			if m == nil || m[2] != h {
				t.Errorf("%s: %s must be shown as histogram_quantile(q, sum by (…, le) (rate(%s_bucket[…]))): %s", where, h, h, expr)
				continue
			}
			if !slices.Contains(splitLabels(m[1]), "le") {
				t.Errorf("%s: the quantile must keep le: %s", where, expr)
			}
		}
	}
	for _, h := range histogramNames {
		if !shown[h] {
			t.Errorf("no dashboard shows %s", h)
		}
	}
}

func splitLabels(s string) []string {
	var out []string
	for _, l := range strings.Split(s, ",") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// knownMetrics returns every series name QuickScale exports with its
// label names: the Metrics collectors (described, so that vectors with no
// children yet count), plus what a registry with a pool gathers (Go,
// process and pool collectors).
func knownMetrics(t *testing.T) map[string][]string {
	t.Helper()
	m := NewMetrics()
	pool, err := pgxpool.New(context.Background(), "postgres://127.0.0.1:1/unused?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	m.RegisterPool(pool.Stat)
	m.RegisterReady(func() bool { return true })

	known := map[string][]string{"up": nil}
	descRE := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok || v.Field(i).Type() == reflect.TypeOf(m.Registry) {
			continue
		}
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			sm := descRE.FindStringSubmatch(d.String())
			if sm == nil {
				t.Fatalf("cannot read %s", d)
			}
			labels := splitLabels(sm[2])
			known[sm[1]] = labels
			if isHistogram(c) {
				known[sm[1]+"_bucket"] = append(slices.Clone(labels), "le")
				known[sm[1]+"_sum"] = labels
				known[sm[1]+"_count"] = labels
			}
		}
	}
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if _, ok := known[f.GetName()]; ok {
			continue
		}
		var labels []string
		for _, s := range f.GetMetric() {
			for _, lp := range s.GetLabel() {
				labels = append(labels, lp.GetName())
			}
		}
		known[f.GetName()] = labels
	}
	return known
}

var (
	metricNameRE = regexp.MustCompile(`\b((?:quickscale|process|go)_[a-z0-9_]+|up)\b`)
	groupingRE   = regexp.MustCompile(`\b(?:by|on|without|ignoring)\s*\(([^)]*)\)`)
	matcherRE    = regexp.MustCompile(`\{([^}]*)\}`)
	matcherName  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// checkNamesAndLabels reports metric names QuickScale does not export and
// labels (in selectors and by/on clauses) that none of the expression's
// metrics carries: either would make a panel or alert silently empty or
// wrongly grouped.
func checkNamesAndLabels(known map[string][]string, expr string) []string {
	var problems []string
	labels := map[string]bool{"job": true, "instance": true}
	for _, name := range metricNameRE.FindAllString(expr, -1) {
		ls, ok := known[name]
		if !ok {
			problems = append(problems, "unknown metric "+name)
			continue
		}
		for _, l := range ls {
			labels[l] = true
		}
	}
	var used []string
	for _, g := range groupingRE.FindAllStringSubmatch(expr, -1) {
		used = append(used, splitLabels(g[1])...)
	}
	for _, m := range matcherRE.FindAllStringSubmatch(expr, -1) {
		for _, n := range matcherName.FindAllStringSubmatch(m[1], -1) {
			used = append(used, n[1])
		}
	}
	for _, l := range used {
		if !labels[l] {
			problems = append(problems, "label "+l+" is on none of the metrics")
		}
	}
	return problems
}

func TestDashboardsAndAlertsUseExportedMetricsAndLabels(t *testing.T) {
	t.Parallel()
	known := knownMetrics(t)
	for _, name := range []string{"quickscale_http_requests_total", "quickscale_river_job_run_duration_seconds_bucket", "quickscale_db_pool_acquired_connections", "process_start_time_seconds"} {
		if _, ok := known[name]; !ok {
			t.Fatalf("knownMetrics misses %s; it has %d names", name, len(known))
		}
	}
	if probs := checkNamesAndLabels(known, `sum by (kindd) (rate(quickscale_river_jobs_total{outcome="x"}[1m])) + quickscale_nope`); len(probs) != 2 {
		t.Fatalf("the checker should catch a wrong label and a wrong name, got %v", probs)
	}
	exprs := dashboardExprs(t)
	for _, r := range loadAlertRules(t) {
		exprs["alert "+r.Alert] = r.Expr
	}
	for where, expr := range exprs {
		for _, p := range checkNamesAndLabels(known, expr) {
			t.Errorf("%s: %s in %s", where, p, expr)
		}
	}
}

func TestDashboardsShowEveryQuickScaleMetric(t *testing.T) {
	t.Parallel()
	var all strings.Builder
	for _, e := range dashboardExprs(t) {
		all.WriteString(e)
		all.WriteString("\n")
	}
	for name := range knownMetrics(t) {
		if !strings.HasPrefix(name, "quickscale_") || strings.HasSuffix(name, "_sum") || strings.HasSuffix(name, "_count") {
			continue
		}
		name = strings.TrimSuffix(name, "_bucket")
		if !strings.Contains(all.String(), name) {
			t.Errorf("no dashboard panel shows %s", name)
		}
	}
}

// isHistogram reports a histogram collector, with or without labels.
func isHistogram(c prometheus.Collector) bool {
	switch c.(type) {
	case *prometheus.HistogramVec, prometheus.Histogram:
		return true
	}
	return false
}
