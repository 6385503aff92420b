package main

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	"github.com/stripe/stripe-go/v76"
	"go.yaml.in/yaml/v3"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/store/storetest"
)

// repoRoot is the module root, seen from this package's directory.
const repoRoot = "../.."

// loadCompose parses compose.yaml the way `docker compose` does, without
// the caller's environment (defaults of ${VAR:-default} apply).
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "compose.yaml")},
		cli.WithWorkingDirectory(root), cli.WithEnv(nil), cli.WithResolvedPaths(true))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("compose.yaml has no %s service (has %v)", name, slices.Sorted(maps.Keys(p.Services)))
	}
	return s
}

// ourServices are the services that run the quickscale image.
func ourServices(t *testing.T, p *types.Project) map[string]types.ServiceConfig {
	t.Helper()
	out := map[string]types.ServiceConfig{}
	for name, s := range p.Services {
		if s.Build != nil || strings.HasPrefix(s.Image, "quickscale") {
			out[name] = s
		}
	}
	for _, want := range []string{"migrate", "api", "worker"} {
		if _, ok := out[want]; !ok {
			t.Fatalf("service %s does not run the quickscale image", want)
		}
	}
	return out
}

// env returns a service's environment as plain strings.
func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		} else {
			out[k] = ""
		}
	}
	return out
}

// runHelp runs the real program with --help after args.
func runHelp(args []string) error {
	argv := append(append([]string{"quickscale"}, args...), "--help")
	return run(context.Background(), argv, func(string) string { return "" }, strings.NewReader(""), io.Discard, io.Discard)
}

func TestComposeServicesRunRealSubcommands(t *testing.T) {
	t.Parallel()
	// The check itself must be able to fail.
	for _, bogus := range [][]string{{"serve"}, {"migrate", "down"}, {"workers"}} {
		if err := runHelp(bogus); err == nil {
			t.Fatalf("quickscale %v --help succeeded; the subcommand check cannot tell real commands from made-up ones", bogus)
		}
	}
	p := loadCompose(t)
	want := map[string][]string{"migrate": {"migrate", "up"}, "api": {"api"}, "worker": {"worker"}}
	for name, s := range ourServices(t, p) {
		cmd := []string(s.Command)
		if len(cmd) == 0 {
			t.Errorf("%s: no command (the image's default would run instead)", name)
			continue
		}
		if err := runHelp(cmd); err != nil {
			t.Errorf("%s: command %q is not a subcommand of quickscale: %v", name, cmd, err)
		}
		if w, ok := want[name]; ok && !slices.Equal(cmd, w) {
			t.Errorf("%s: command %q, want %q", name, cmd, w)
		}
		if len(s.Entrypoint) > 0 {
			t.Errorf("%s: overrides the image's entrypoint %q; the command must be quickscale's arguments", name, s.Entrypoint)
		}
	}
}

func TestComposeEnvironmentUsesOnlyConfigVariables(t *testing.T) {
	t.Parallel()
	known := map[string]bool{}
	for _, v := range envVars {
		known[v.Name] = true
	}
	p := loadCompose(t)
	for name, s := range ourServices(t, p) {
		e := env(s)
		if len(e) == 0 {
			t.Errorf("%s: no environment", name)
		}
		for k := range e {
			if !known[k] {
				t.Errorf("%s: sets %s, which quickscale does not read (see envVars in config.go)", name, k)
			}
		}
		if _, err := loadConfig(func(k string) string { return e[k] }); err != nil {
			t.Errorf("%s: quickscale rejects its environment: %v", name, err)
		}
		if !strings.Contains(e["DATABASE_URL"], "@postgres:") {
			t.Errorf("%s: DATABASE_URL %q does not point at the postgres service", name, e["DATABASE_URL"])
		}
	}
}

func TestComposeRunsTwoWorkerReplicas(t *testing.T) {
	t.Parallel()
	w := service(t, loadCompose(t), "worker")
	if w.Deploy == nil || w.Deploy.Replicas == nil || *w.Deploy.Replicas != 2 {
		t.Fatalf("worker deploy %+v, want replicas: 2", w.Deploy)
	}
	if w.GetScale() != 2 {
		t.Fatalf("worker scale %d, want 2", w.GetScale())
	}
	if w.ContainerName != "" || len(w.Ports) > 0 {
		t.Fatalf("a replicated worker can have no container_name or published ports (got %q, %v)", w.ContainerName, w.Ports)
	}
}

// The demo stack publishes nothing beyond this machine (h30): its mailbox
// shows everyone's sign-in and reset links, anyone can "pay" on the
// simulator, Grafana's admin password defaults to admin; and Prometheus
// cannot be stopped or reloaded over HTTP.
func TestComposePublishesOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	published := 0
	for _, s := range p.Services {
		for _, port := range s.Ports {
			published++
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %s on %q, not 127.0.0.1", s.Name, port.Published, port.HostIP)
			}
		}
	}
	if published < 4 {
		t.Errorf("%d ports published; the site, Grafana, Prometheus and the mailbox should be", published)
	}
	if slices.Contains(service(t, p, "prometheus").Command, "--web.enable-lifecycle") {
		t.Error("Prometheus can be stopped and reloaded over HTTP by anyone who reaches it")
	}
}

// Docker's default stop grace (10s) equals SHUTDOWN_TIMEOUT's default: a
// process still cancelling jobs would be killed and strand them "running".
func TestComposeGivesProcessesTimeToShutDown(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envFrom(nil))
	if err != nil {
		t.Fatal(err)
	}
	p := loadCompose(t)
	for _, name := range []string{"api", "worker"} {
		s := service(t, p, name)
		if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < cfg.ShutdownTimeout+10*time.Second {
			t.Errorf("%s: stop_grace_period %v, want at least SHUTDOWN_TIMEOUT (%s) + 10s", name, s.StopGracePeriod, cfg.ShutdownTimeout)
		}
	}
}

func TestComposeMigrateIsAOneShotDependencyOfAPIAndWorker(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	m := service(t, p, "migrate")
	if m.Restart != "" && m.Restart != types.RestartPolicyNo {
		t.Errorf("migrate restart %q: a one-shot service must not be restarted after it exits", m.Restart)
	}
	if m.Deploy != nil && m.Deploy.Replicas != nil && *m.Deploy.Replicas != 1 {
		t.Errorf("migrate has %d replicas", *m.Deploy.Replicas)
	}
	if d, ok := m.DependsOn["postgres"]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("migrate must wait for a healthy postgres, depends_on %+v", m.DependsOn)
	}
	pg := service(t, p, "postgres")
	if pg.HealthCheck == nil || len(pg.HealthCheck.Test) == 0 || pg.HealthCheck.Disable {
		t.Errorf("postgres has no healthcheck")
	}
	for _, name := range []string{"api", "worker"} {
		s := service(t, p, name)
		d, ok := s.DependsOn["migrate"]
		if !ok || d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s depends_on %+v, want migrate with condition %s", name, s.DependsOn, types.ServiceConditionCompletedSuccessfully)
		}
	}
}

// healthURL returns the URL a CMD healthcheck fetches.
func healthURL(t *testing.T, name string, hc *types.HealthCheckConfig) *url.URL {
	t.Helper()
	if hc == nil || hc.Disable || len(hc.Test) < 2 {
		t.Fatalf("%s has no healthcheck", name)
	}
	if hc.Test[0] != "CMD" {
		t.Fatalf("%s healthcheck %q: use the exec form [\"CMD\", ...]; the image has no bash", name, hc.Test)
	}
	if hc.Test[1] != "wget" {
		t.Fatalf("%s healthcheck %q: the final image only has busybox wget", name, hc.Test)
	}
	for _, a := range hc.Test[2:] {
		if strings.HasPrefix(a, "http://") {
			u, err := url.Parse(a)
			if err != nil {
				t.Fatal(err)
			}
			return u
		}
	}
	t.Fatalf("%s healthcheck %q fetches no URL", name, hc.Test)
	return nil
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return p
}

func TestComposeHealthchecksHitReadyz(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	cases := []struct {
		service, addrVar string
	}{
		{"api", "ADDR"},            // the API serves /readyz on its main address
		{"worker", "METRICS_ADDR"}, // the worker only listens on METRICS_ADDR
	}
	for _, c := range cases {
		s := service(t, p, c.service)
		u := healthURL(t, c.service, s.HealthCheck)
		if u.Path != "/readyz" {
			t.Errorf("%s healthcheck fetches %s, want /readyz", c.service, u)
		}
		if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" {
			t.Errorf("%s healthcheck host %q: it runs inside the container", c.service, h)
		}
		addr := env(s)[c.addrVar]
		if addr == "" {
			t.Errorf("%s sets no %s (the default listens on 127.0.0.1 only)", c.service, c.addrVar)
			continue
		}
		if u.Port() != port(t, addr) {
			t.Errorf("%s healthcheck port %s, but %s=%s", c.service, u.Port(), c.addrVar, addr)
		}
	}
	if final := finalStageBase(t); !strings.HasPrefix(final, "alpine") && !strings.Contains(final, "busybox") {
		t.Errorf("the healthchecks need wget, but the final image is %q", final)
	}
}

func TestComposeGrafanaIsAnonymousViewerWithProvisionedDashboards(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	g := service(t, p, "grafana")
	e := env(g)
	if e["GF_AUTH_ANONYMOUS_ENABLED"] != "true" || e["GF_AUTH_ANONYMOUS_ORG_ROLE"] != "Viewer" {
		t.Errorf("grafana anonymous access: enabled=%q role=%q, want true and Viewer", e["GF_AUTH_ANONYMOUS_ENABLED"], e["GF_AUTH_ANONYMOUS_ORG_ROLE"])
	}
	root, _ := filepath.Abs(repoRoot)
	mounts := map[string]string{}
	for _, v := range g.Volumes {
		if v.Type == types.VolumeTypeBind {
			mounts[v.Target] = v.Source
		}
	}
	if src := mounts["/etc/grafana/provisioning"]; src != filepath.Join(root, "observability/grafana/provisioning") {
		t.Errorf("grafana mounts %q at /etc/grafana/provisioning, want observability/grafana/provisioning", src)
	}
	var provider struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, filepath.Join(root, "observability/grafana/provisioning/dashboards/quickscale.yaml"), &provider)
	if len(provider.Providers) != 1 {
		t.Fatalf("want one dashboard provider, got %+v", provider)
	}
	if src := mounts[provider.Providers[0].Options.Path]; src != filepath.Join(root, "observability/grafana/dashboards") {
		t.Errorf("the provider reads %s, where grafana mounts %q, want observability/grafana/dashboards", provider.Providers[0].Options.Path, src)
	}
	var ds struct {
		Datasources []struct {
			URL string `yaml:"url"`
		} `yaml:"datasources"`
	}
	readYAML(t, filepath.Join(root, "observability/grafana/provisioning/datasources/prometheus.yaml"), &ds)
	if len(ds.Datasources) != 1 {
		t.Fatalf("want one datasource, got %+v", ds)
	}
	u, err := url.Parse(ds.Datasources[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Services[u.Hostname()]; !ok || u.Hostname() != "prometheus" || u.Port() != "9090" {
		t.Errorf("datasource URL %s does not reach the prometheus service", u)
	}
	if _, ok := g.DependsOn["prometheus"]; !ok {
		t.Errorf("grafana should start after prometheus")
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// promConfig is the part of prometheus.yml the compose tests read.
type promConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
		DNSSDConfigs []struct {
			Names []string `yaml:"names"`
			Type  string   `yaml:"type"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
	} `yaml:"scrape_configs"`
}

func TestComposePrometheusScrapesAPIAndEveryWorkerAndLoadsAlerts(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	prom := service(t, p, "prometheus")
	root, _ := filepath.Abs(repoRoot)
	var confDir string
	for _, v := range prom.Volumes {
		if v.Type == types.VolumeTypeBind && v.Source == filepath.Join(root, "observability/prometheus") {
			confDir = v.Target
		}
	}
	if confDir == "" {
		t.Fatalf("prometheus does not mount observability/prometheus (volumes %+v)", prom.Volumes)
	}
	configFile := confDir + "/prometheus.yml"
	if !slices.Contains([]string(prom.Command), "--config.file="+configFile) && !slices.Contains([]string(prom.Command), "--config.file=/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus command %q does not load %s", prom.Command, configFile)
	}

	var cfg promConfig
	readYAML(t, filepath.Join(root, "observability/prometheus/prometheus.yml"), &cfg)
	alerts := false
	for _, rf := range cfg.RuleFiles {
		resolved := rf
		if !filepath.IsAbs(rf) {
			resolved = confDir + "/" + rf
		}
		if resolved == confDir+"/alerts.yml" {
			alerts = true
		}
	}
	if !alerts {
		t.Errorf("prometheus.yml rule_files %q do not load the mounted alerts.yml", cfg.RuleFiles)
	}

	metricsPort := func(name string) string {
		s := service(t, p, name)
		addr := env(s)["METRICS_ADDR"]
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("%s METRICS_ADDR %q: %v", name, addr, err)
		}
		if host != "0.0.0.0" && host != "" {
			t.Errorf("%s METRICS_ADDR %q listens on %s only: Prometheus in another container cannot scrape it", name, addr, host)
		}
		return portStr
	}
	jobs := map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		jobs[sc.JobName] = true
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("job %s scrapes %s", sc.JobName, sc.MetricsPath)
		}
		switch sc.JobName {
		case "api":
			want := "api:" + metricsPort("api")
			if len(sc.StaticConfigs) != 1 || !slices.Equal(sc.StaticConfigs[0].Targets, []string{want}) {
				t.Errorf("job api targets %+v, want [%s]", sc.StaticConfigs, want)
			}
		case "worker":
			// One target per replica: DNS service discovery of the service
			// name, not a static "worker:9464" that hits one replica at random.
			if len(sc.StaticConfigs) > 0 {
				t.Errorf("job worker has static targets %+v; with replicas they would scrape a random replica", sc.StaticConfigs)
			}
			want := metricsPort("worker")
			if len(sc.DNSSDConfigs) != 1 || !slices.Equal(sc.DNSSDConfigs[0].Names, []string{"worker"}) ||
				sc.DNSSDConfigs[0].Type != "A" || strconv.Itoa(sc.DNSSDConfigs[0].Port) != want {
				t.Errorf("job worker dns_sd_configs %+v, want names [worker], type A, port %s", sc.DNSSDConfigs, want)
			}
		}
	}
	if !jobs["api"] || !jobs["worker"] {
		t.Errorf("prometheus.yml jobs %v, want api and worker (the alert rules and dashboards use these job names)", jobs)
	}
}

func TestComposeWorkersMailThroughMailpit(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	mp := service(t, p, "mailpit")
	if !strings.Contains(mp.Image, "mailpit") {
		t.Errorf("mailpit service runs %q", mp.Image)
	}
	w := service(t, p, "worker")
	u, err := url.Parse(env(w)["SMTP_URL"])
	if err != nil || u.Scheme != "smtp" || u.Hostname() != "mailpit" || u.Port() != "1025" {
		t.Fatalf("worker SMTP_URL %q, want smtp://mailpit:1025", env(w)["SMTP_URL"])
	}
	if _, ok := w.DependsOn["mailpit"]; !ok {
		t.Errorf("worker should start after mailpit")
	}
}

// dockerfile is Dockerfile's instructions, one per logical line.
func dockerfile(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	var cur strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(l)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		lines = append(lines, cur.String())
		cur.Reset()
	}
	return lines
}

// finalStageBase returns the image of the last FROM.
func finalStageBase(t *testing.T) string {
	t.Helper()
	var base string
	for _, l := range dockerfile(t) {
		if f := strings.Fields(l); len(f) >= 2 && strings.EqualFold(f[0], "FROM") {
			base = f[1]
		}
	}
	return base
}

func TestDockerfileBuildsAStaticVersionedBinaryIntoANonRootImage(t *testing.T) {
	t.Parallel()
	lines := dockerfile(t)
	args := map[string]string{}
	type stage struct {
		base, name string
		lines      []string
	}
	var stages []*stage
	for _, l := range lines {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "ARG":
			if k, v, ok := strings.Cut(f[1], "="); ok && len(stages) == 0 {
				args[k] = v
			}
		case "FROM":
			s := &stage{base: os.Expand(f[1], func(k string) string { return args[k] })}
			if len(f) == 4 && strings.EqualFold(f[2], "AS") {
				s.name = f[3]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) > 0 {
			stages[len(stages)-1].lines = append(stages[len(stages)-1].lines, l)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stages", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.base, "golang:") || build.name == "" {
		t.Fatalf("first stage %q (AS %q), want a named golang build stage", build.base, build.name)
	}
	// The build image must carry the go.mod toolchain's minor version.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goVersion == nil || !strings.HasPrefix(build.base, "golang:"+string(goVersion[1])) {
		t.Errorf("build image %q does not match go.mod's go %s", build.base, goVersion[1])
	}
	var goBuild string
	for _, l := range build.lines {
		if strings.HasPrefix(l, "RUN") && strings.Contains(l, "go build") {
			goBuild = l
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-X main.version=", "./cmd/quickscale"} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("the go build step lacks %q: %s", want, goBuild)
		}
	}
	if !versionIsLinkerSettable(t) {
		t.Errorf("-X main.version needs a package-level string variable version initialised by a constant in package main")
	}
	if strings.HasPrefix(final.base, "golang") {
		t.Errorf("the final image is the Go toolchain (%s)", final.base)
	}
	var user, entrypoint string
	copied := false
	for _, l := range final.lines {
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entrypoint = strings.Join(f[1:], " ")
		case "COPY":
			if strings.Contains(l, "--from="+build.name) {
				copied = true
			}
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("the final image runs as %q, want a non-root user", user)
	}
	if !copied {
		t.Errorf("the final stage copies nothing from the build stage %q", build.name)
	}
	if !strings.Contains(entrypoint, "quickscale") {
		t.Errorf("ENTRYPOINT %q is not the quickscale binary (compose commands are its arguments)", entrypoint)
	}
}

// versionIsLinkerSettable reports whether package main declares
// `var version = "<literal>"`, which is what -X main.version can set.
func versionIsLinkerSettable(t *testing.T) bool {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, sp := range gd.Specs {
				vs := sp.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if n.Name != "version" || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					return ok && lit.Kind == token.STRING && af.Name.Name == "main"
				}
			}
		}
	}
	return false
}

func TestDockerignoreKeepsSecretsAndDevDataOut(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns := strings.Fields(string(b))
	for _, want := range []string{".git", ".data"} {
		if !slices.Contains(patterns, want) {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
	for _, v := range envVars {
		if v.Name == "DEV_DATA_DIR" && v.Default != ".data" {
			t.Errorf("DEV_DATA_DIR defaults to %q; .dockerignore excludes .data", v.Default)
		}
	}
}

// In the demo stack the workers run the payments simulator apart from the
// api (h33): what their simulator sends (a plan's cancellation, say)
// reaches the api at SIMULATOR_WEBHOOK_URL and passes its signature check,
// both sharing STRIPE_WEBHOOK_SECRET; before, each process made up its own
// secret and posted to BASE_URL, the worker's own container.
func TestComposeWorkersSimulatorReachesTheAPI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := loadCompose(t)
	dbURL := storetest.NewDatabase(t)
	addr := freeAddr(t)
	apiEnv := env(service(t, p, "api"))
	apiEnv["DATABASE_URL"], apiEnv["ADDR"], apiEnv["METRICS_ADDR"] = dbURL, addr, "off"
	apiEnv["BASE_URL"] = "http://" + addr
	startRun(t, apiEnv, "api")
	waitHTTP(t, "http://"+addr+"/readyz", http.StatusOK, 30*time.Second)

	workerEnv := env(service(t, p, "worker"))
	require.Equal(t, "http://api:8080/webhooks/stripe", workerEnv["SIMULATOR_WEBHOOK_URL"])
	// The api as this test reaches it, in place of compose's "api" host.
	workerEnv["DATABASE_URL"], workerEnv["METRICS_ADDR"] = dbURL, "off"
	workerEnv["SIMULATOR_WEBHOOK_URL"] = "http://" + addr + "/webhooks/stripe"
	cfg, err := loadConfig(envFrom(workerEnv))
	require.NoError(t, err)
	pool, err := store.OpenPool(ctx, cfg.DatabaseURL, store.PoolOptions{MaxConns: 2, AppName: "compose-worker"})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	worker, err := newApp(ctx, "worker", cfg, discardLogger(), pool)
	require.NoError(t, err)
	sim, ok := worker.gateway.(*billing.Simulator)
	require.True(t, ok, "compose's worker does not run the simulator")
	require.NoError(t, sim.Emit(ctx, stripe.EventTypeCustomerSubscriptionDeleted, map[string]any{"id": "sub_compose", "object": "subscription", "status": "canceled"}),
		"the api refused what the worker's simulator sent")

	// And a worker simulating without a shared secret refuses to start.
	delete(workerEnv, "STRIPE_WEBHOOK_SECRET")
	code, _, stderr := runCmd(t, workerEnv, "", "worker")
	require.Equal(t, 1, code, stderr)
	require.Contains(t, stderr, "STRIPE_WEBHOOK_SECRET is not set")
}

// An operator who adds a real Stripe key to the demo stack but not its
// endpoint's secret is stopped (h34): compose's shared demo secret is
// public, would let anyone sign events, and Stripe's would be refused.
func TestComposeWithARealStripeKeyRefusesTheDemoSecret(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	for _, name := range []string{"api", "worker"} {
		e := env(service(t, p, name))
		require.Equal(t, composeDemoWebhookSecret, e["STRIPE_WEBHOOK_SECRET"], "%s: compose's demo secret changed; keep composeDemoWebhookSecret in step", name)
		e["STRIPE_SECRET_KEY"] = "sk_live_operator_added_only_this"
		_, err := loadConfig(envFrom(e))
		require.ErrorContains(t, err, "compose.yaml's demo secret", name)
	}
}
