package web

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
)

// serviceCard is one service with a fresh idempotency key for its Use
// button, so a double click or a resubmitted form never charges twice.
type serviceCard struct {
	Service store.Service
	Key     string
}

type servicesPage struct {
	Cards []serviceCard
	// Shown fingerprints the list as the page shows it (each service's
	// slug, name, description and cost). A Use sends it back, and the
	// answer redraws the list if it is no longer the one offered: a
	// service added, retired (other than the one used) or renamed since
	// the page was loaded.
	Shown   string
	Balance store.Balance
	// Result of the last Use, when the page answers one.
	Result *useResult
}

type useResult struct {
	Service  store.Service
	Usage    store.Usage
	Replayed bool
	// Short is set when the balance did not cover the cost.
	Short    bool
	Balance  int64
	Required int64
	// Repriced is set when the service's price changed since the page
	// showed it (ShownCost): nothing was charged.
	Repriced  bool
	ShownCost int64
	// Gone is set when the service was retired since the page showed it:
	// nothing was charged, and the page's list of services is refreshed.
	Gone bool
	// Changed is set when the list the page showed is no longer the one
	// offered (servicesPage.Shown): the answer redraws it. OnlyRepriced:
	// the one change is the new price of the service used.
	Changed      bool
	OnlyRepriced bool
}

// shownList fingerprints a list of services (servicesPage.Shown); with
// slug set, as it reads with that service at cost.
func shownList(cards []serviceCard, slug string, cost int64) string {
	h := sha256.New()
	for _, c := range cards {
		sv := c.Service
		if sv.Slug == slug {
			sv.CreditCost = cost
		}
		fmt.Fprintf(h, "%q %q %q %d\n", sv.Slug, sv.Name, sv.Description, sv.CreditCost)
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

func (s *Site) servicesPage(r *http.Request) (servicesPage, error) {
	var p servicesPage
	services, err := s.store.ActiveServices(r.Context())
	if err != nil {
		return p, err
	}
	for _, sv := range services {
		p.Cards = append(p.Cards, serviceCard{Service: sv, Key: store.NewSecret()[:24]})
	}
	p.Shown = shownList(p.Cards, "", 0)
	if u := CurrentUser(r.Context()); u != nil {
		if p.Balance, err = s.store.Balance(r.Context(), u.ID); err != nil {
			return p, err
		}
	}
	return p, nil
}

// Services serves GET /services.
func (s *Site) Services() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.servicesPage(r)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		s.render(w, r, http.StatusOK, "services", "Services", p)
	})
}

// UseService serves POST /services/{slug}/use. htmx gets the result and
// the new balance in place; a plain form post gets the whole page.
func (s *Site) UseService() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		u := CurrentUser(ctx)
		slug := chi.URLParam(r, "slug")
		f, _ := parseForm(r, "idempotency_key", "cost", "shown")
		// The page gives every button a key; a post without one is not
		// charged (it could not be told apart from its own resubmission).
		key := f.raw("idempotency_key")
		if key == "" {
			s.handleError(w, r, store.Errorf(store.KindInvalid, "This form has lost its key; reload the page and try again."))
			return
		}
		req := store.ConsumeRequest{UserID: u.ID, Service: slug, IdempotencyKey: store.WebKeyPrefix + key}
		res := &useResult{}
		status := http.StatusOK
		// The page's button says what a use costs: if the price went up
		// since, charge nothing and show the new one (unless this is a
		// resubmission of a use already made: that answers what it cost).
		shown, err := strconv.ParseInt(f.raw("cost"), 10, 64)
		if err == nil && shown >= 0 { // a page never shows less than 0
			res.ShownCost = shown
			if _, res.Repriced, err = s.store.PriceAbove(ctx, req, shown); err != nil {
				s.handleError(w, r, err)
				return
			}
		}
		var short *store.InsufficientCreditsError
		if !res.Repriced {
			res.Usage, res.Replayed, err = s.store.Consume(ctx, req)
		}
		switch {
		case res.Repriced:
			status = http.StatusConflict
		case err == nil:
			if !res.Replayed {
				RecordConsumption(s.metrics, res.Usage)
			}
		case errors.As(err, &short):
			res.Short, res.Balance, res.Required = true, short.Balance, short.Required
			status = http.StatusPaymentRequired
		case store.ErrorKind(err) == store.KindNotFound:
			res.Gone = true
			status = http.StatusGone
		default:
			s.handleError(w, r, err)
			return
		}
		useErr := err
		p, err := s.servicesPage(r)
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		for _, c := range p.Cards {
			if c.Service.Slug == slug {
				res.Service = c.Service
			}
		}
		if !res.Gone && res.Service.Slug == "" {
			// A replay of a use of a service retired since: name it.
			if res.Service, err = s.retiredService(r, slug); err != nil {
				s.handleError(w, r, err)
				return
			}
		}
		if res.Gone {
			if res.Service.Slug != "" {
				// Not found, yet offered: not a retired service (e.g. no
				// credit account); answer the error as it is.
				s.handleError(w, r, useErr)
				return
			}
			if res.Service, err = s.retiredService(r, slug); err != nil {
				s.handleError(w, r, err)
				return
			}
		}
		// Sent by htmx only: a plain form post gets the whole page anyway.
		res.Changed = f.raw("shown") != "" && f.raw("shown") != p.Shown
		// A new price of the service used is said by the answer; other
		// changes to the list (a service back, another renamed) are said
		// too.
		res.OnlyRepriced = res.Repriced && res.Changed && f.raw("shown") == shownList(p.Cards, slug, res.ShownCost)
		p.Result = res
		if isPartialRequest(r) {
			s.renderBlock(w, r, status, "services", "use-response", "Services", p)
			return
		}
		s.render(w, r, status, "services", "Services", p)
	})
}

// retiredService is the catalog's entry for slug, retired or not; a slug
// the catalog never had is a 404.
func (s *Site) retiredService(r *http.Request, slug string) (store.Service, error) {
	all, err := s.store.Services(r.Context())
	if err != nil {
		return store.Service{}, err
	}
	for _, sv := range all {
		if sv.Slug == slug {
			return sv, nil
		}
	}
	return store.Service{}, store.Errorf(store.KindNotFound, "No such service.")
}

// PaidBy is what paid for the use, one entry per kind of credits in the
// order drawn (a use drawing on two packs paid with "60 pack", not "28 pack
// + 32 pack").
func (u *useResult) PaidBy() []store.Drawn {
	var out []store.Drawn
	for _, d := range u.Usage.Drawn {
		if n := len(out); n > 0 && out[n-1].Kind == d.Kind {
			out[n-1].Credits += d.Credits
			continue
		}
		out = append(out, store.Drawn{Kind: d.Kind, Credits: d.Credits})
	}
	return out
}

// RecordConsumption counts spent credits by the kind of grant that paid
// and the service.
func RecordConsumption(m *observability.Metrics, u store.Usage) {
	if m == nil {
		return
	}
	for _, d := range u.Drawn {
		m.CreditsConsumed.WithLabelValues(d.Kind, observability.LabelSafe(u.Service)).Add(float64(d.Credits))
	}
}

type apiKeysPage struct {
	Keys []store.APIKey
	// OlderRevoked: revoked keys older than the RevokedListed newest are
	// not listed.
	OlderRevoked  bool
	RevokedListed int
	Form          *form
	NewKey        string
	NewName       string
	FormKey       string // the create form's key, new on every page
	APIBase       string // e.g. https://example.com/api/v1, for the examples
}

func (s *Site) renderAPIKeys(w http.ResponseWriter, r *http.Request, status int, p apiKeysPage) {
	keys, older, err := s.store.APIKeys(r.Context(), CurrentUser(r.Context()).ID)
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	p.Keys, p.OlderRevoked, p.RevokedListed = keys, older, store.RevokedKeysListed
	p.APIBase = s.absURL("/api/v1")
	if p.Form == nil {
		p.Form = newForm()
	}
	p.FormKey = store.NewSecret()[:24]
	s.render(w, r, status, "apikeys", "API keys", p)
}

// APIKeys serves GET /settings/api-keys.
func (s *Site) APIKeys() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.renderAPIKeys(w, r, http.StatusOK, apiKeysPage{})
	})
}

// CreateAPIKey serves POST /settings/api-keys. The key is shown once, in
// this response, and never again.
func (s *Site) CreateAPIKey() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, _ := parseForm(r, "name", "form_key")
		// The form's key is what makes a form sent again make no second
		// key: a post without one (a hand-made request, a page from before
		// the form had one) is refused, after its name is checked.
		if strings.TrimSpace(f.raw("form_key")) == "" {
			if err := store.CheckAPIKeyName(f.raw("name")); err != nil {
				f.fail("name", err.Error())
				s.renderAPIKeys(w, r, http.StatusUnprocessableEntity, apiKeysPage{Form: f})
				return
			}
			f.Message = "This form has lost its key, and without it a form sent twice would make two keys: no key was made. Reload the page and create the key from there."
			s.renderAPIKeys(w, r, http.StatusBadRequest, apiKeysPage{Form: f})
			return
		}
		raw, key, err := s.store.CreateAPIKeyFromForm(r.Context(), CurrentUser(r.Context()).ID, f.raw("name"), f.raw("form_key"))
		if errors.Is(err, store.ErrAPIKeyFormUsed) {
			f.Message = err.Error()
			s.renderAPIKeys(w, r, http.StatusOK, apiKeysPage{Form: f})
			return
		}
		if err != nil {
			if k := store.ErrorKind(err); k == store.KindInvalid || k == store.KindConflict {
				f.fail("name", err.Error())
				s.renderAPIKeys(w, r, http.StatusUnprocessableEntity, apiKeysPage{Form: f})
				return
			}
			s.serverError(w, r, err)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		s.renderAPIKeys(w, r, http.StatusOK, apiKeysPage{NewKey: raw, NewName: key.Name})
	})
}

// RevokeAPIKey serves POST /settings/api-keys/{id}/revoke.
func (s *Site) RevokeAPIKey() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
		if err != nil {
			s.NotFound().ServeHTTP(w, r)
			return
		}
		if err := s.store.RevokeAPIKey(r.Context(), CurrentUser(r.Context()).ID, id); err != nil {
			if store.ErrorKind(err) == store.KindNotFound {
				err = store.Errorf(store.KindNotFound, "You have no such API key: it may have been revoked already.")
			}
			s.handleError(w, r, err)
			return
		}
		s.flash(r.Context(), "The key is revoked. Programs using it can no longer call the API.")
		redirect(w, r, "/settings/api-keys")
	})
}
