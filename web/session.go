package web

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/quickscale/quickscale/store"
)

// Session keys.
const (
	sessUserID = "user_id"
	sessEpoch  = "epoch"
	sessFlash  = "flash"
	// One-time notices for a page shown after the session ended (the home
	// page after a deletion, the sign-in page after a reset, with
	// sessKeysRevoked), one key each so that neither page consumes the
	// other's. Held in the session, not the URL, so a link cannot fake them.
	sessNoticeDeleted = "notice_deleted"
	sessNoticeReset   = "notice_reset"
	sessKeysRevoked   = "keys_revoked"
	// The address a change of email waits to be confirmed at, and since
	// when (Unix seconds), for the settings page of this session.
	sessPendingEmail     = "pending_email"
	sessPendingEmailAt   = "pending_email_at"
	sessPendingEmailUser = "pending_email_user"
)

const sessionLoadedKey ctxKey = 100

func hasSession(r *http.Request) bool {
	return r.Context().Value(sessionLoadedKey) != nil
}

// Sessions wraps next with session loading and saving, then resolves the
// signed-in user. A session whose user is gone, or whose epoch is older
// than the user's (password changed elsewhere), is signed out.
func (s *Site) WithSession(next http.Handler) http.Handler {
	return s.sessions.LoadAndSave(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), sessionLoadedKey, true)
		if id := s.sessions.GetInt64(ctx, sessUserID); id != 0 {
			u, err := s.store.UserByID(ctx, id)
			switch {
			case err == nil && u.SessionEpoch == s.sessions.GetInt(ctx, sessEpoch):
				ctx = context.WithValue(ctx, userKey, &u)
			case err == nil || store.ErrorKind(err) == store.KindNotFound:
				_ = s.sessions.Destroy(ctx)
				if err == nil {
					// In a new, anonymous session: why the visitor must sign in.
					s.flash(ctx, "You were signed out: your password or your access rights changed since you signed in.")
				}
			default:
				s.serverError(w, r.WithContext(ctx), err)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	}))
}

// signIn starts a fresh session for u (a new token defeats fixation).
func (s *Site) signIn(ctx context.Context, u store.User) error {
	if err := s.sessions.RenewToken(ctx); err != nil {
		return err
	}
	s.sessions.Put(ctx, sessUserID, u.ID)
	s.sessions.Put(ctx, sessEpoch, u.SessionEpoch)
	// A sign-in (another user in the same browser) or a password change
	// (which cancels every emailed link) ends a change of email waiting.
	s.sessions.Remove(ctx, sessPendingEmail)
	s.sessions.Remove(ctx, sessPendingEmailAt)
	s.sessions.Remove(ctx, sessPendingEmailUser)
	return nil
}

func (s *Site) flash(ctx context.Context, msg string) { s.sessions.Put(ctx, sessFlash, msg) }

func (s *Site) popFlash(r *http.Request) string { return s.sessions.PopString(r.Context(), sessFlash) }

// redirect sends a plain 303, or an HX-Redirect for htmx requests (which
// would otherwise follow the redirect inside the swapped fragment). A
// history restore gets the 303 too: htmx's restore ignores HX-Redirect and
// would swap in the empty answer (a tab whose htmx still asks restores with
// HX-Request, as htmx does by default).
func redirect(w http.ResponseWriter, r *http.Request, to string) {
	if isHtmxRequest(r) {
		w.Header().Set("HX-Redirect", to)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// pathOf is the path and query of a URL, or "": only those are kept, as
// a page of this site (sign-in checks it again, safeNext).
func pathOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Path == "" {
		return ""
	}
	return u.RequestURI()
}

// safeNext keeps a post-login destination on this site. A backslash is
// refused wherever it is: browsers read it as a slash, and the redirect's
// cleaning of dot-segments would turn "/x/../\\evil.example" into
// "/\\evil.example", which leaves the site.
func safeNext(next string) string {
	if next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsRune(next, '\\') {
		return "/dashboard"
	}
	if u, err := url.Parse(next); err != nil || u.Host != "" || u.Scheme != "" {
		return "/dashboard"
	}
	return next
}

// RequireUser sends anonymous visitors to the sign-in page.
func (s *Site) RequireUser(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if CurrentUser(r.Context()) == nil {
			// Back, after signing in, to the page the visitor was on. A
			// page asked for (GET, boosted or not) is that page. An htmx
			// request that is not a navigation (a poll, Use, a form sent in
			// place, a boosted form's POST) names in HX-Current-URL the page
			// it was made from: that page, not the fragment or the form's
			// action, is where to go; a form sent without JavaScript names
			// it in Referer.
			get := r.Method == http.MethodGet
			back := ""
			switch {
			case isHtmxRequest(r) && (r.Header.Get("HX-Boosted") != "true" || !get):
				back = pathOf(r.Header.Get("HX-Current-URL"))
			case get:
				back = r.URL.RequestURI()
			default:
				back = pathOf(r.Header.Get("Referer"))
			}
			// A form sent while signed out says so on the sign-in page, by
			// the address (undone=1): a flash would store a session for
			// every anonymous POST, and anyone can send those.
			q := url.Values{}
			if back != "" {
				q.Set("next", back)
			}
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				q.Set("undone", "1")
			}
			to := "/login"
			if len(q) > 0 {
				to += "?" + q.Encode()
			}
			redirect(w, r, to)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// RequireVerified lets only users with a confirmed email through: the one
// guard in front of every way to buy or spend.
func (s *Site) RequireVerified(next http.Handler) http.Handler {
	return s.RequireUser(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !CurrentUser(r.Context()).Verified() {
			s.errorPage(w, r, errorPage{Status: http.StatusForbidden, Heading: "Please verify your email first",
				Message:   "Buying and spending credits, and creating API keys that spend them, need a confirmed email address. Follow the link we emailed you, or send a new one from your dashboard.",
				ActionURL: "/dashboard", ActionLabel: "Go to your dashboard"})
			return
		}
		next.ServeHTTP(w, r)
	}))
}

// RequireAdmin lets only admins through: anonymous visitors go to sign in,
// signed-in non-admins get a 403.
func (s *Site) RequireAdmin(next http.Handler) http.Handler {
	return s.RequireUser(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !CurrentUser(r.Context()).IsAdmin() {
			s.forbidden(w, r, "This area is for administrators.")
			return
		}
		next.ServeHTTP(w, r)
	}))
}
