package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/robfig/cron/v3"

	"github.com/quickscale/quickscale/store"
)

// Config is every setting of the process, read once from the environment by
// loadConfig and passed down explicitly. Nothing else reads the environment.
type Config struct {
	DatabaseURL      string // DATABASE_URL
	databaseURLSet   bool   // whether DATABASE_URL was given (dev falls back to embedded Postgres only when it was not)
	baseURLSet       bool   // whether BASE_URL was given (a worker's email links need it)
	DatabaseMaxConns int32  // DATABASE_MAX_CONNS

	Addr        string // ADDR
	BaseURL     string // BASE_URL
	MetricsAddr string // METRICS_ADDR ("off" disables the separate metrics listener)

	LogLevel  slog.Level // LOG_LEVEL
	LogFormat string     // LOG_FORMAT: text or json

	ShutdownTimeout time.Duration // SHUTDOWN_TIMEOUT

	SessionIdleTimeout time.Duration // SESSION_IDLE_TIMEOUT
	SessionLifetime    time.Duration // SESSION_LIFETIME
	TrustProxy         bool          // TRUST_PROXY: take the client IP from X-Forwarded-For

	SMTPURL      string // SMTP_URL ("" keeps mail in the dev mailbox)
	DevMailbox   bool   // DEV_MAILBOX: let `worker` run without SMTP_URL
	MailFrom     string // MAIL_FROM
	ContactEmail string // CONTACT_EMAIL

	StripeSecretKey          string // STRIPE_SECRET_KEY ("" selects the payments simulator)
	StripeWebhookSecret      string // STRIPE_WEBHOOK_SECRET
	StripeAPIURL             string // STRIPE_API_URL (e.g. stripe-mock)
	SimulatorWebhookURL      string // SIMULATOR_WEBHOOK_URL: where the simulator posts its events
	webhookSecretSet         bool   // whether STRIPE_WEBHOOK_SECRET was given (not made up for this process)
	StripeIgnoreAPIVersion   bool   // STRIPE_WEBHOOK_IGNORE_API_VERSION (dev only)
	SimulatePayments         bool   // SIMULATE_PAYMENTS: let `api` and `worker` run the simulator
	ExpireCreditsSchedule    string // EXPIRE_CREDITS_SCHEDULE (cron spec, UTC)
	LiabilityRefreshInterval time.Duration

	DevDataDir string // DEV_DATA_DIR: where `dev` keeps an embedded Postgres
}

// simulatorSecret makes the webhook secret of a simulating process when
// none is set: random, so nobody outside the process can sign events for it.
func simulatorSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return "whsec_sim_" + hex.EncodeToString(b)
}

// envVar documents one environment variable; the README table is checked
// against this list by a test.
type envVar struct {
	Name, Default, Doc string
}

// composeDemoWebhookSecret is the simulator's shared secret in
// compose.yaml's demo stack (public: refused with a real Stripe key).
const composeDemoWebhookSecret = "whsec_compose_demo_simulator_only"

// envVars lists every variable loadConfig reads, with its default.
var envVars = []envVar{
	{"DATABASE_URL", "postgres://127.0.0.1:5432/quickscale?sslmode=disable", "PostgreSQL connection string."},
	{"DATABASE_MAX_CONNS", "20", "Upper bound of the connection pool per process."},
	{"ADDR", "127.0.0.1:8080", "Listen address of the HTTP server (api, dev)."},
	{"BASE_URL", "http://ADDR", "Public URL of the site, used in emails, redirects and Stripe return URLs."},
	{"METRICS_ADDR", "127.0.0.1:9464", "Listen address of the separate /metrics, /healthz, /readyz server (api, worker; dev too when the port is free); `off` disables it."},
	{"LOG_LEVEL", "info", "debug, info, warn or error."},
	{"LOG_FORMAT", "text", "text or json."},
	{"SHUTDOWN_TIMEOUT", "10s", "How long graceful shutdown waits for requests and jobs."},
	{"SESSION_IDLE_TIMEOUT", "12h", "Sign out after this long without a request."},
	{"SESSION_LIFETIME", "72h", "Sign out this long after sign-in, whatever the activity."},
	{"TRUST_PROXY", "false", "Take the client IP from X-Forwarded-For (only behind a proxy you control)."},
	{"SMTP_URL", "", "smtp://user:pass@host:port (STARTTLS when offered) or smtps://…; empty keeps mail in the dev mailbox (dev, or a worker with DEV_MAILBOX=true)."},
	{"DEV_MAILBOX", "false", "Let `worker` run without SMTP_URL, keeping mail in the database's dev mailbox (demos only: verification and reset links sit there in clear). `dev` always may."},
	{"MAIL_FROM", "QuickScale <no-reply@quickscale.localhost>", "Sender of every email."},
	{"CONTACT_EMAIL", "operator@quickscale.localhost", "Where the contact form is delivered."},
	{"STRIPE_SECRET_KEY", "", "Stripe secret key; empty selects the local payments simulator."},
	{"STRIPE_WEBHOOK_SECRET", "(random, simulator only)", "Signing secret of the webhook endpoint; required with STRIPE_SECRET_KEY."},
	{"STRIPE_API_URL", "", "Override Stripe's API URL (e.g. http://127.0.0.1:12111 for stripe-mock)."},
	{"SIMULATOR_WEBHOOK_URL", "", "Where the payments simulator posts its events (empty: BASE_URL/webhooks/stripe): a `worker` running it apart from the `api` (SIMULATE_PAYMENTS) posts to the api's address inside your network, e.g. http://api:8080/webhooks/stripe, signed with STRIPE_WEBHOOK_SECRET, which both must then share."},
	{"STRIPE_WEBHOOK_IGNORE_API_VERSION", "false", "dev only: accept events of another API version (for `stripe listen`)."},
	{"SIMULATE_PAYMENTS", "false", "Let `api` and `worker` run without STRIPE_SECRET_KEY, on the payments simulator (demos only: anyone can \"pay\"). `dev` always may."},
	{"EXPIRE_CREDITS_SCHEDULE", "* * * * *", "Cron spec (UTC) of the expired-credit sweep."},
	{"LIABILITY_REFRESH_INTERVAL", "30s", "How often the credit-liability gauges are recomputed."},
	{"DEV_DATA_DIR", ".data", "dev only: data directory of the embedded PostgreSQL."},
}

// loadConfig reads and validates the environment. Errors name the variable.
func loadConfig(getenv func(string) string) (Config, error) {
	get := func(name string) string {
		v := strings.TrimSpace(getenv(name))
		if v != "" {
			return v
		}
		for _, e := range envVars {
			if e.Name == name {
				return e.Default
			}
		}
		return ""
	}
	var errs []error
	bad := func(name, value string, why string) {
		errs = append(errs, fmt.Errorf("invalid %s %q: %s", name, value, why))
	}

	c := Config{
		DatabaseURL:    get("DATABASE_URL"),
		databaseURLSet: strings.TrimSpace(getenv("DATABASE_URL")) != "",
		baseURLSet:     strings.TrimSpace(getenv("BASE_URL")) != "",
		Addr:           get("ADDR"),
		MetricsAddr:    get("METRICS_ADDR"),
		LogFormat:      get("LOG_FORMAT"),
		SMTPURL:        get("SMTP_URL"),
		MailFrom:       get("MAIL_FROM"),
		ContactEmail:   get("CONTACT_EMAIL"),

		StripeSecretKey:       get("STRIPE_SECRET_KEY"),
		StripeWebhookSecret:   strings.TrimSpace(getenv("STRIPE_WEBHOOK_SECRET")),
		StripeAPIURL:          get("STRIPE_API_URL"),
		SimulatorWebhookURL:   get("SIMULATOR_WEBHOOK_URL"),
		ExpireCreditsSchedule: get("EXPIRE_CREDITS_SCHEDULE"),
		DevDataDir:            get("DEV_DATA_DIR"),
	}
	if strings.EqualFold(c.MetricsAddr, "off") {
		c.MetricsAddr = ""
	}

	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		bad("DATABASE_URL", redactURL(c.DatabaseURL), "not a PostgreSQL connection string"+parseConfigReason(err))
	}
	if n, err := strconv.Atoi(get("DATABASE_MAX_CONNS")); err != nil || n < 2 || n > 1000 {
		bad("DATABASE_MAX_CONNS", get("DATABASE_MAX_CONNS"), "want a whole number from 2 to 1000")
	} else {
		c.DatabaseMaxConns = int32(n)
	}
	if !validListenAddr(c.Addr) {
		bad("ADDR", c.Addr, "want host:port, the port from 0 to 65535")
	}
	if c.MetricsAddr != "" && !validListenAddr(c.MetricsAddr) {
		bad("METRICS_ADDR", c.MetricsAddr, "want host:port (the port from 0 to 65535) or off")
	}
	c.BaseURL = strings.TrimRight(strings.TrimSpace(getenv("BASE_URL")), "/")
	if c.BaseURL == "" {
		c.BaseURL = "http://" + c.Addr
	} else if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.User != nil || strings.ContainsAny(c.BaseURL, "?#") {
		// Links are made by appending paths: a query or fragment would
		// swallow them.
		bad("BASE_URL", c.BaseURL, "want an absolute http(s) URL without user, query or fragment")
	}
	switch level := strings.ToLower(get("LOG_LEVEL")); level {
	case "debug", "info", "warn", "error":
		_ = c.LogLevel.UnmarshalText([]byte(level))
	default: // not slog's offsets such as "info+2" either
		bad("LOG_LEVEL", get("LOG_LEVEL"), "want debug, info, warn or error")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("LOG_FORMAT", c.LogFormat, "want text or json")
	}
	durations := []struct {
		name     string
		dst      *time.Duration
		min, max time.Duration // max 0: none
	}{
		{"SHUTDOWN_TIMEOUT", &c.ShutdownTimeout, 0, 0},
		{"SESSION_IDLE_TIMEOUT", &c.SessionIdleTimeout, time.Minute, 0},
		{"SESSION_LIFETIME", &c.SessionLifetime, time.Minute, 0},
		// At most 5m: QuickScaleLiabilityStale fires when the gauges are
		// 10 minutes old.
		{"LIABILITY_REFRESH_INTERVAL", &c.LiabilityRefreshInterval, time.Second, 5 * time.Minute},
	}
	for _, d := range durations {
		v, err := time.ParseDuration(get(d.name))
		if err == nil && d.max > 0 && v > d.max {
			bad(d.name, get(d.name), fmt.Sprintf("want a duration from %s to %s, such as 30s", d.min, d.max))
			continue
		}
		if err != nil || v < d.min {
			// The example is always valid for this variable.
			example := "5m"
			if d.min < 30*time.Second {
				example = "30s or 5m"
			}
			bad(d.name, get(d.name), fmt.Sprintf("want a duration of at least %s, such as %s", d.min, example))
			continue
		}
		*d.dst = v
	}
	for _, b := range []struct {
		name string
		dst  *bool
	}{{"TRUST_PROXY", &c.TrustProxy}, {"STRIPE_WEBHOOK_IGNORE_API_VERSION", &c.StripeIgnoreAPIVersion}, {"SIMULATE_PAYMENTS", &c.SimulatePayments}, {"DEV_MAILBOX", &c.DevMailbox}} {
		v, err := strconv.ParseBool(get(b.name))
		if err != nil {
			bad(b.name, get(b.name), "want true or false")
			continue
		}
		*b.dst = v
	}
	if c.SMTPURL != "" {
		if u, err := url.Parse(c.SMTPURL); err != nil || (u.Scheme != "smtp" && u.Scheme != "smtps") || u.Hostname() == "" {
			bad("SMTP_URL", redactURL(c.SMTPURL), "want smtp://[user:pass@]host[:port] or smtps://…")
		}
	}
	// Parsed as mail will parse them: a sender that does not parse would
	// cancel every email at the first send.
	if _, err := mail.ParseAddress(c.MailFrom); err != nil {
		bad("MAIL_FROM", c.MailFrom, "want an email address, e.g. QuickScale <no-reply@example.com>")
	}
	if _, err := mail.ParseAddress(c.ContactEmail); err != nil {
		bad("CONTACT_EMAIL", c.ContactEmail, "want an email address")
	}
	if c.StripeSecretKey != "" && c.StripeWebhookSecret == "" {
		errs = append(errs, errors.New("STRIPE_WEBHOOK_SECRET is required when STRIPE_SECRET_KEY is set"))
	}
	// compose.yaml's demo secret is public: with real payments it would let
	// anyone sign events (h34), and Stripe's own would all be refused.
	if c.StripeSecretKey != "" && c.StripeWebhookSecret == composeDemoWebhookSecret {
		errs = append(errs, errors.New("STRIPE_WEBHOOK_SECRET is compose.yaml's demo secret, published with the code: with STRIPE_SECRET_KEY set it to your Stripe endpoint's signing secret"))
	}
	c.webhookSecretSet = c.StripeWebhookSecret != ""
	if c.StripeWebhookSecret == "" {
		c.StripeWebhookSecret = simulatorSecret()
	}
	if c.SimulatorWebhookURL != "" {
		if u, err := url.Parse(c.SimulatorWebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("SIMULATOR_WEBHOOK_URL", c.SimulatorWebhookURL, "want an absolute http(s) URL, e.g. http://api:8080/webhooks/stripe")
		}
	}
	if c.StripeAPIURL != "" {
		if u, err := url.Parse(c.StripeAPIURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("STRIPE_API_URL", c.StripeAPIURL, "want an absolute http(s) URL")
		}
	}
	if sched, err := cron.ParseStandard("CRON_TZ=UTC " + c.ExpireCreditsSchedule); err != nil {
		bad("EXPIRE_CREDITS_SCHEDULE", c.ExpireCreditsSchedule, "want a five-field cron spec such as '* * * * *'")
	} else if sched.Next(time.Now()).IsZero() {
		bad("EXPIRE_CREDITS_SCHEDULE", c.ExpireCreditsSchedule, "it never runs (no such date within five years)")
	}
	return c, errors.Join(errs...)
}

// Simulated reports whether payments go through the local simulator.
func (c Config) Simulated() bool { return c.StripeSecretKey == "" }

// redactURL hides a password in a URL so that errors can quote it.
func redactURL(s string) string { return store.RedactURL(s) }

// loopbackAddr reports whether the listen address addr (host:port) takes
// connections from this machine only: an empty host, or 0.0.0.0, listens
// on every interface.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validListenAddr reports whether addr is host:port with a port net.Listen
// accepts (0 picks a free one).
func validListenAddr(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n <= 65535
}

// parseConfigReason is pgx's reason for refusing a connection string
// (": sslmode is invalid"), without the string itself, which its error
// quotes first ("cannot parse `…`: "); "" when it has no such form.
func parseConfigReason(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "`: "); strings.HasPrefix(msg, "cannot parse `") && i > 0 {
		return ": " + msg[i+3:]
	}
	return ""
}
