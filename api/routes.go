package api

import (
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// routes lists every route QuickScale serves.
func (s *server) routes() http.Handler {
	site := s.site
	r := chi.NewRouter()
	// HEAD is answered wherever GET is (monitors and link checkers use it);
	// net/http sends no body.
	r.Use(requestID, s.accessLog, s.metrics.InstrumentHTTP, s.recoverer, limitBody(s.cfg.MaxBodyBytes), middleware.GetHead)

	// Operations.
	r.Get("/healthz", Healthz().ServeHTTP)
	r.Get("/readyz", readyzHandler(s.ready).ServeHTTP)
	if s.cfg.Dev {
		r.Get("/metrics", s.metrics.Handler().ServeHTTP)
	}

	// Stripe webhooks: raw body, signature checked, stored, enqueued.
	r.With(timeout(s.cfg.RequestTimeout)).Post("/webhooks/stripe", s.handleStripeWebhook().ServeHTTP)

	// JSON API (bearer API keys; no cookies, so no CSRF exposure).
	r.Route("/api/v1", func(r chi.Router) {
		r.Use(timeout(s.cfg.RequestTimeout))
		// The key is checked after routing (a group's middleware wraps each
		// route's handler), so that a refused key is logged and counted
		// under the route it was for; unknown paths and methods check it
		// too, first.
		r.Group(func(r chi.Router) {
			r.Use(s.requireAPIKey)
			r.Get("/balance", s.handleAPIBalance().ServeHTTP)
			r.Get("/services", s.handleAPIServices().ServeHTTP)
			r.Post("/usage", s.handleAPIConsume().ServeHTTP)
			r.Get("/usage", s.handleAPIUsageList().ServeHTTP)
		})
		r.NotFound(s.requireAPIKey(http.HandlerFunc(apiNotFound)).ServeHTTP)
		r.MethodNotAllowed(s.requireAPIKey(http.HandlerFunc(apiMethodNotAllowed)).ServeHTTP)
	})

	// The web dashboard: sessions, cross-origin protection on every
	// state-changing request, security headers.
	cop := http.NewCrossOriginProtection()
	if u, err := url.Parse(s.cfg.BaseURL); err == nil && u.Host != "" {
		_ = cop.AddTrustedOrigin(u.Scheme + "://" + u.Host)
	}
	cop.SetDenyHandler(site.WithSession(site.CrossOriginDenied()))
	// Static files: no session (a cacheable response must not carry or
	// refresh a session cookie).
	r.With(securityHeaders).Get("/static/*", site.Static().ServeHTTP)

	r.Group(func(r chi.Router) {
		r.Use(securityHeaders, timeout(s.cfg.RequestTimeout), cop.Handler, site.CleanInput, site.WithSession)

		r.Get("/", site.Home().ServeHTTP)
		r.Get("/about", site.About().ServeHTTP)
		r.Get("/contact", site.Contact().ServeHTTP)
		r.Post("/contact", site.Contact().ServeHTTP)

		// Accounts.
		r.Get("/signup", site.Signup().ServeHTTP)
		r.Post("/signup", site.Signup().ServeHTTP)
		r.Get("/login", site.Login().ServeHTTP)
		r.Post("/login", site.Login().ServeHTTP)
		r.Post("/logout", site.Logout().ServeHTTP)
		r.Get("/verify", site.Verify().ServeHTTP)
		r.Post("/verify", site.Verify().ServeHTTP)
		r.Get("/password/forgot", site.ForgotPassword().ServeHTTP)
		r.Post("/password/forgot", site.ForgotPassword().ServeHTTP)
		r.Get("/password/reset", site.ResetPassword().ServeHTTP)
		r.Post("/password/reset", site.ResetPassword().ServeHTTP)

		// Signed-in people.
		r.Group(func(r chi.Router) {
			r.Use(site.RequireUser)
			r.Post("/verify/resend", site.ResendVerification().ServeHTTP)
			r.Get("/dashboard", site.Dashboard().ServeHTTP)
			r.Get("/dashboard/credits", site.Credits().ServeHTTP)
			r.Get("/dashboard/credits/history.csv", site.CreditsCSV().ServeHTTP)
			r.Get("/services", site.Services().ServeHTTP)
			r.Get("/dashboard/buy-credits", site.BuyCredits().ServeHTTP)
			r.Get("/dashboard/buy-credits/success", site.CheckoutSuccess().ServeHTTP)
			r.Get("/dashboard/buy-credits/status", site.CheckoutStatus().ServeHTTP)
			r.Get("/dashboard/buy-credits/cancel", site.CheckoutCancel().ServeHTTP)
			r.Get("/dashboard/subscription", site.Subscription().ServeHTTP)
			r.Get("/dashboard/subscription/success", site.SubscriptionSuccess().ServeHTTP)
			r.Get("/dashboard/subscription/status", site.SubscriptionStatus().ServeHTTP)
			r.Post("/dashboard/subscription/cancel", site.SetSubscriptionRenewal(true).ServeHTTP)
			r.Post("/dashboard/subscription/resume", site.SetSubscriptionRenewal(false).ServeHTTP)
			r.Post("/dashboard/subscription/switch", site.SwitchSubscriptionPlan().ServeHTTP)
			// The simulator's clock (Not Found with Stripe).
			r.Post("/dashboard/subscription/renew", site.RenewSimulatedSubscription().ServeHTTP)
			r.Post("/dashboard/subscription/fail-renewal", site.SimulateRenewalFailure().ServeHTTP)
			r.Post("/dashboard/subscription/pay-overdue", site.PayOverdueSimulated().ServeHTTP)
			r.Get("/dashboard/subscription/{form:cancel|resume|switch|renew|fail-renewal|pay-overdue}", http.RedirectHandler("/dashboard/subscription", http.StatusSeeOther).ServeHTTP)
			r.Get("/dashboard/payments", site.Payments().ServeHTTP)
			r.Get("/dashboard/payments.csv", site.PaymentsCSV().ServeHTTP)
			r.Get("/dashboard/payments/{id}/receipt", site.Receipt().ServeHTTP)
			r.Post("/dashboard/payments/{id}/cancel", site.CancelCheckout().ServeHTTP)
			r.Get("/dashboard/payments/{id}/cancel", http.RedirectHandler("/dashboard/payments", http.StatusSeeOther).ServeHTTP)
			r.Get("/settings", site.Settings().ServeHTTP)
			r.Post("/settings/password", site.ChangePassword().ServeHTTP)
			r.Post("/settings/email", site.ChangeEmail().ServeHTTP)
			r.Post("/settings/delete", site.DeleteAccount().ServeHTTP)
			// The forms' addresses, reached by a reload or a bookmark, show
			// the page the forms are on.
			r.Get("/settings/{form:password|email|delete}", http.RedirectHandler("/settings", http.StatusSeeOther).ServeHTTP)
			// Where a Use without JavaScript leaves the browser: reached by
			// GET (the address bar, a bookmark), it shows the services.
			r.Get("/services/{slug}/use", http.RedirectHandler("/services", http.StatusSeeOther).ServeHTTP)
			r.Get("/settings/api-keys", site.APIKeys().ServeHTTP)
			r.Post("/settings/api-keys/{id}/revoke", site.RevokeAPIKey().ServeHTTP)
		})

		// Buying and spending: verified email required.
		r.Group(func(r chi.Router) {
			r.Use(site.RequireVerified)
			r.Post("/services/{slug}/use", site.UseService().ServeHTTP)
			r.Post("/dashboard/buy-credits", site.StartCheckout().ServeHTTP)
			r.Post("/dashboard/subscription", site.StartSubscription().ServeHTTP)
			// A key spends credits: only an account whose address is proven
			// may make one (an unverified sign-up may be a squatter's).
			r.Post("/settings/api-keys", site.CreateAPIKey().ServeHTTP)
		})

		// The payments simulator's hosted checkout (only without a Stripe key).
		if s.gateway.Simulated() {
			r.Group(func(r chi.Router) {
				r.Use(site.RequireUser)
				r.Get("/simulator/checkout/{id}", site.SimulatorCheckout().ServeHTTP)
				r.Post("/simulator/checkout/{id}", site.SimulatorCheckout().ServeHTTP)
			})
		}

		// Administration.
		r.Group(func(r chi.Router) {
			r.Use(site.RequireAdmin)
			r.Get("/admin", site.AdminHome().ServeHTTP)
			r.Get("/admin/users", site.AdminUsers().ServeHTTP)
			r.Get("/admin/users/{id}", site.AdminUser().ServeHTTP)
			r.Get("/admin/users/{id}/credits", site.AdminCredits().ServeHTTP)
			r.Post("/admin/users/{id}/credits", site.AdminCredits().ServeHTTP)
			r.Post("/admin/users/{id}/subscription", site.AdminEndSubscription().ServeHTTP)
			r.Get("/admin/payments/{id}/refund", site.AdminRefund().ServeHTTP)
			r.Post("/admin/payments/{id}/refund", site.AdminRefund().ServeHTTP)
			r.Get("/admin/analytics", site.AdminAnalytics().ServeHTTP)
			r.Get("/admin/payments.csv", site.AdminMoneyCSV().ServeHTTP)
			r.Get("/admin/webhooks", site.AdminWebhooks().ServeHTTP)
			r.Get("/admin/audit", site.AdminAudit().ServeHTTP)
			r.Get("/admin/webhooks/{id}", site.AdminWebhook().ServeHTTP)
			r.Post("/admin/webhooks/{id}/reprocess", site.AdminReprocessWebhook().ServeHTTP)
			if s.riverUI != nil {
				ui := cleanPath(riverUIPolicy(s.auditRiverUI(s.riverUI)))
				r.Handle("/admin/river", ui)
				r.Handle("/admin/river/*", ui)
			}
		})

		if s.cfg.Dev {
			r.Get("/dev/mailbox", site.Mailbox().ServeHTTP)
			r.Get("/dev/mailbox.json", site.MailboxJSON().ServeHTTP)
		}
	})

	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		if wantsJSON(r) {
			apiNotFound(w, r)
			return
		}
		securityHeaders(site.WithSession(site.NotFound())).ServeHTTP(w, r)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		setAllow(w, r)
		if wantsJSON(r) {
			apiMethodNotAllowed(w, r)
			return
		}
		securityHeaders(site.WithSession(site.MethodNotAllowed())).ServeHTTP(w, r)
	})
	return r
}

func apiNotFound(w http.ResponseWriter, r *http.Request) {
	writeProblem(w, r, http.StatusNotFound, "not_found", "No such endpoint.")
}

// setAllow lists in Allow the methods the requested path does take, as a
// 405 must (RFC 9110): the router is asked for each method in turn.
func setAllow(w http.ResponseWriter, r *http.Request) {
	rctx := chi.RouteContext(r.Context())
	if rctx == nil || rctx.Routes == nil {
		return
	}
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		if rctx.Routes.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	if slices.Contains(allowed, http.MethodGet) && !slices.Contains(allowed, http.MethodHead) {
		allowed = slices.Insert(allowed, 1, http.MethodHead) // middleware.GetHead answers it
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
	}
}

func apiMethodNotAllowed(w http.ResponseWriter, r *http.Request) {
	setAllow(w, r)
	writeProblem(w, r, http.StatusMethodNotAllowed, "method_not_allowed", "This endpoint does not accept "+r.Method+".")
}
