package main

import (
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

func envFrom(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestConfigDefaultsAreTheDocumentedOnes(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envFrom(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:8080" || cfg.BaseURL != "http://127.0.0.1:8080" || cfg.LogFormat != "text" ||
		cfg.LogLevel != slog.LevelInfo || cfg.MetricsAddr != "127.0.0.1:9464" || cfg.ShutdownTimeout != 10*time.Second ||
		!cfg.Simulated() || !strings.HasPrefix(cfg.StripeWebhookSecret, "whsec_sim_") || cfg.DatabaseMaxConns != 20 {
		t.Fatalf("defaults = %+v", cfg)
	}
	if cfg.databaseURLSet {
		t.Fatal("an unset DATABASE_URL reported as set")
	}
}

func TestConfigBadValueNamesTheVariable(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"ADDR": "nonsense", "BASE_URL": "ftp://x", "LOG_LEVEL": "loud", "LOG_FORMAT": "xml",
		"METRICS_ADDR": "9464", "DATABASE_MAX_CONNS": "0", "SHUTDOWN_TIMEOUT": "soon",
		"SESSION_IDLE_TIMEOUT": "1s", "TRUST_PROXY": "maybe", "SMTP_URL": "http://mail",
		"MAIL_FROM": "nobody", "EXPIRE_CREDITS_SCHEDULE": "every minute", "STRIPE_API_URL": "localhost:12111",
		"DATABASE_URL": "postgres://[::1", "CONTACT_EMAIL": "x",
	}
	for name, value := range cases {
		_, err := loadConfig(envFrom(map[string]string{name: value}))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: error %v does not name the variable", name, value, err)
		}
	}
}

// Values that looked right to a first glance but would fail later: at the
// first email, or at listen without naming the variable.
func TestConfigRefusesAlmostRightValues(t *testing.T) {
	t.Parallel()
	for name, value := range map[string]string{
		"MAIL_FROM":     "QuickScale <no-reply@example.com", // unclosed angle bracket
		"CONTACT_EMAIL": "ops@example.com, boss@example.com",
		"ADDR":          "127.0.0.1:99999",
		"METRICS_ADDR":  "127.0.0.1:-1",
		// Email links are BASE_URL + path: a query or fragment swallows it.
		"BASE_URL": "https://example.com/app?src=mail#top",
		// slog would read these as levels between the documented ones.
		"LOG_LEVEL": "warn-4",
		// QuickScaleLiabilityStale fires at 10 minutes old.
		"LIABILITY_REFRESH_INTERVAL": "20m",
		// February 31st: a sweep that never runs.
		"EXPIRE_CREDITS_SCHEDULE": "0 0 31 2 *",
	} {
		_, err := loadConfig(envFrom(map[string]string{name: value}))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: error %v does not name the variable", name, value, err)
		}
	}
	for _, v := range []string{"https://example.com#", "https://example.com/app?"} {
		if _, err := loadConfig(envFrom(map[string]string{"BASE_URL": v})); err == nil || !strings.Contains(err.Error(), "BASE_URL") {
			t.Errorf("BASE_URL=%q: error %v, want it refused", v, err)
		}
	}
	// Refused with pgx's reason, never with the password.
	for v, reason := range map[string]string{
		"postgres://u:s3cret@db:abc/x":          "invalid port",
		"host=db password=s3cret port=x":        "invalid port",
		"postgres://u:s3cret@db/x?sslmode=nope": "sslmode is invalid",
		"postgres://u:s3cret@[::1/x":            "failed to parse as URL",
		"postgres://u:s3c%zzret@db/x":           "failed to parse as URL",
	} {
		if _, err := loadConfig(envFrom(map[string]string{"DATABASE_URL": v})); err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), reason) {
			t.Errorf("DATABASE_URL=%q: error %v (want one saying %q, without the password)", v, err, reason)
		}
	}
	for name, value := range map[string]string{"MAIL_FROM": "no-reply@example.com", "ADDR": "127.0.0.1:0",
		"BASE_URL": "https://example.com/app", "LOG_LEVEL": "DEBUG", "LIABILITY_REFRESH_INTERVAL": "5m"} {
		if _, err := loadConfig(envFrom(map[string]string{name: value})); err != nil {
			t.Errorf("%s=%q refused: %v", name, value, err)
		}
	}
}

func TestConfigStripeKeyNeedsWebhookSecret(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(envFrom(map[string]string{"STRIPE_SECRET_KEY": "sk_test_123"}))
	if err == nil || !strings.Contains(err.Error(), "STRIPE_WEBHOOK_SECRET") {
		t.Fatalf("got %v", err)
	}
	cfg, err := loadConfig(envFrom(map[string]string{"STRIPE_SECRET_KEY": "sk_test_123", "STRIPE_WEBHOOK_SECRET": "whsec_x"}))
	if err != nil || cfg.Simulated() {
		t.Fatalf("with key and secret: %v simulated=%v", err, cfg.Simulated())
	}
}

func TestConfigMetricsAddrOffDisablesIt(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"off", "OFF", "Off"} {
		cfg, err := loadConfig(envFrom(map[string]string{"METRICS_ADDR": v}))
		if err != nil || cfg.MetricsAddr != "" {
			t.Fatalf("METRICS_ADDR=%s: %q %v", v, cfg.MetricsAddr, err)
		}
	}
}

// TestReadmeDocumentsEveryVariable keeps README's configuration table and
// envVars in step: every variable with its default.
func TestReadmeDocumentsEveryVariable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range envVars {
		row := regexp.MustCompile("(?m)^\\| `" + v.Name + "` \\| ([^|]*) \\|")
		m := row.FindSubmatch(readme)
		if m == nil {
			t.Errorf("README has no table row for %s", v.Name)
			continue
		}
		def := strings.Trim(strings.TrimSpace(string(m[1])), "`")
		want := v.Default
		if want == "" {
			want = "(empty)"
		}
		if def != want {
			t.Errorf("README default of %s is %q, code says %q", v.Name, def, want)
		}
	}
}

func TestSimulatorSecretIsRandomPerProcess(t *testing.T) {
	t.Parallel()
	a, _ := loadConfig(envFrom(nil))
	b, _ := loadConfig(envFrom(nil))
	if a.StripeWebhookSecret == b.StripeWebhookSecret || len(a.StripeWebhookSecret) < 40 {
		t.Fatalf("simulator secrets %q and %q: want long and different", a.StripeWebhookSecret, b.StripeWebhookSecret)
	}
}

// An api taking real payments needs its public address: Stripe's
// checkouts send customers back to it (h30: it started with
// http://0.0.0.0:PORT as its address).
func TestAPIWithStripeRefusesToStartWithoutBaseURL(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/none", "METRICS_ADDR": "off", "ADDR": "0.0.0.0:0",
		"STRIPE_SECRET_KEY": "sk_live_x", "STRIPE_WEBHOOK_SECRET": "whsec_x"}
	code, _, stderr := runCmd(t, env, "", "api")
	if code != 1 || !strings.Contains(stderr, "BASE_URL is not set") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// Neither api nor worker runs on the simulator unless told to: a worker
// without the key would "end" real subscriptions in the simulator only
// (h30), while Stripe went on billing them.
func TestAPIAndWorkerRefuseToRunOnTheSimulatorUnlessAskedTo(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"api", "worker"} {
		env := map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/none", "METRICS_ADDR": "off",
			"BASE_URL": "https://billing.example.com", "SMTP_URL": "smtp://127.0.0.1:2525"}
		code, _, stderr := runCmd(t, env, "", mode)
		if code != 1 || !strings.Contains(stderr, "SIMULATE_PAYMENTS") || !strings.Contains(stderr, "STRIPE_SECRET_KEY is not set") {
			t.Errorf("%s: exit %d: %s", mode, code, stderr)
		}
	}
}
