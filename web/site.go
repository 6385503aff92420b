// Package web is the server-rendered dashboard: page handlers (one file per
// area), html/template templates, vendored static assets and the session
// and access rules of signed-in people. api mounts its handlers in routes.go.
package web

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/alexedwards/scs/pgxstore"
	"github.com/alexedwards/scs/v2"

	"github.com/quickscale/quickscale/billing"
	"github.com/quickscale/quickscale/jobs"
	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
)

// Config is what the site needs to know about its deployment.
type Config struct {
	BaseURL            string
	Dev                bool // enables /dev/mailbox and template reloading
	ContactEmail       string
	SessionIdleTimeout time.Duration
	SessionLifetime    time.Duration
	TrustProxy         bool
	// TemplateDir, when set (dev), re-parses templates from disk on each
	// request so edits show on reload.
	TemplateDir string
	// Limits overrides the default rate limits (tests).
	Limits *Limits
}

// Limits are the rate limits of the public forms.
type Limits struct {
	// LoginPerAccountIP bounds sign-ins to one address from one IP, and
	// LoginPerAccount those from all IPs together, higher, so that no one
	// IP can lock an owner out.
	LoginPerAccountIP store.Limit
	LoginPerAccount   store.Limit
	LoginPerIP        store.Limit
	// ReauthPerUser bounds wrong current passwords typed on the settings
	// page, by the signed-in user only.
	ReauthPerUser store.Limit
	SignupPerIP   store.Limit
	// MailPerAddress bounds the mail one address is sent by sign-ups,
	// reset requests and email changes, each, from any number of IPs and
	// accounts. Sign-ups and reset requests past it are answered as usual
	// but send nothing (the mailbox has the earlier emails, with a valid
	// link), so that nobody can deny an owner a reset link; a change of
	// address past it is refused (429) to the signed-in user.
	MailPerAddress store.Limit
	ResetPerIP     store.Limit
	ContactPerIP   store.Limit
	ResendPerUser  store.Limit
	// ChangeEmailPerUser bounds requests to change the address (each emails
	// the address typed).
	ChangeEmailPerUser store.Limit
}

// DefaultLimits are generous for people and tight for scripts.
func DefaultLimits() Limits {
	return Limits{
		LoginPerAccountIP:  store.Limit{Max: 10, Window: 15 * time.Minute},
		LoginPerAccount:    store.Limit{Max: 100, Window: 15 * time.Minute},
		LoginPerIP:         store.Limit{Max: 50, Window: 15 * time.Minute},
		ReauthPerUser:      store.Limit{Max: 10, Window: 15 * time.Minute},
		SignupPerIP:        store.Limit{Max: 10, Window: time.Hour},
		MailPerAddress:     store.Limit{Max: 5, Window: time.Hour},
		ResetPerIP:         store.Limit{Max: 5, Window: time.Hour},
		ContactPerIP:       store.Limit{Max: 5, Window: time.Hour},
		ResendPerUser:      store.Limit{Max: 5, Window: time.Hour},
		ChangeEmailPerUser: store.Limit{Max: 5, Window: time.Hour},
	}
}

// Site holds the dashboard's dependencies; its methods make the handlers.
type Site struct {
	logger   *slog.Logger
	cfg      Config
	limits   Limits
	store    *store.Store
	jobs     jobs.Inserter
	gateway  billing.Gateway
	metrics  *observability.Metrics
	sessions *scs.SessionManager
	tmpl     *templates
	static   *staticFiles
	secure   bool
	exports  *exportLimiter
}

// NewSite parses the templates (failing when one is broken or refers to a
// missing partial) and sets up sessions stored in Postgres.
func NewSite(logger *slog.Logger, cfg Config, st *store.Store, inserter jobs.Inserter, gateway billing.Gateway, metrics *observability.Metrics) (*Site, error) {
	tmpl, err := loadTemplates(cfg.TemplateDir)
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	static, err := newStaticFiles()
	if err != nil {
		return nil, fmt.Errorf("static files: %w", err)
	}
	tmpl.static = static
	base, err := url.Parse(cfg.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("base url: %w", err)
	}
	s := &Site{
		logger: logger, cfg: cfg, store: st, jobs: inserter, gateway: gateway, metrics: metrics,
		tmpl: tmpl, static: static, secure: base.Scheme == "https",
		limits: DefaultLimits(), exports: newExportLimiter(4),
	}
	if cfg.Limits != nil {
		s.limits = *cfg.Limits
	}
	sm := scs.New()
	// Expired rows are pruned by the PruneExpired job, not by a goroutine here.
	sm.Store = pgxstore.NewWithCleanupInterval(st.Pool(), 0)
	sm.Lifetime = cfg.SessionLifetime
	sm.IdleTimeout = cfg.SessionIdleTimeout
	sm.Cookie.Name = "qs_session"
	sm.Cookie.HttpOnly = true
	sm.Cookie.SameSite = http.SameSiteLaxMode
	sm.Cookie.Secure = s.secure
	sm.Cookie.Path = "/"
	sm.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		s.serverError(w, r, fmt.Errorf("session: %w", err))
	}
	s.sessions = sm
	return s, nil
}

// Simulated reports whether payments go through the local simulator.
func (s *Site) Simulated() bool { return s.gateway.Simulated() }

// absURL makes a site-relative path absolute with BASE_URL.
func (s *Site) absURL(path string) string {
	return strings.TrimRight(s.cfg.BaseURL, "/") + path
}

// clientIP is the address rate limits count against.
func (s *Site) clientIP(r *http.Request) string {
	return ClientIP(r, s.cfg.TrustProxy)
}

// ClientIP returns the address rate limits count the caller under: the
// last X-Forwarded-For hop when the proxy is trusted (the last of all the
// header's lines: a proxy that adds its own line instead of appending leaves
// a client's forged line first; a port after it is dropped, and a hop that
// is no address falls back to the connection's), else the connection's
// address. An IPv6 address counts as its /64, which one host usually holds
// whole (a network that gives its hosts addresses in one /64 shares it).
func ClientIP(r *http.Request, trustProxy bool) string {
	if trustProxy {
		hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
		if ip, ok := limitAddr(strings.TrimSpace(hops[len(hops)-1])); ok {
			return ip
		}
	}
	if ip, ok := limitAddr(r.RemoteAddr); ok {
		return ip
	}
	return r.RemoteAddr
}

// limitAddr parses an address, with or without a port, into the form
// rate limits count: IPv4 as is, IPv6 as its /64.
func limitAddr(s string) (string, bool) {
	addr, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		if perr != nil {
			return "", false
		}
		addr = ap.Addr()
	}
	addr = addr.Unmap()
	if addr.Is4() {
		return addr.String(), true
	}
	return netip.PrefixFrom(addr.WithZone(""), 64).Masked().String(), true
}

type ctxKey int

const userKey ctxKey = iota

// CurrentUser returns the signed-in user of the request, or nil.
func CurrentUser(ctx context.Context) *store.User {
	u, _ := ctx.Value(userKey).(*store.User)
	return u
}
