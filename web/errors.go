package web

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/quickscale/quickscale/store"
)

// errorPage is the data of templates/pages/error.html.
type errorPage struct {
	Status  int
	Heading string
	Message string
	// Action optionally links somewhere useful.
	ActionURL, ActionLabel string
}

func (s *Site) errorPage(w http.ResponseWriter, r *http.Request, e errorPage) {
	s.render(w, r, e.Status, "error", e.Heading, e)
}

// NotFound renders the friendly 404 page.
func (s *Site) NotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.errorPage(w, r, errorPage{Status: http.StatusNotFound, Heading: "Page not found",
			Message:   "We could not find that page. It may have moved, or the link may be mistyped.",
			ActionURL: "/", ActionLabel: "Go to the home page"})
	})
}

// MethodNotAllowed renders a 405 in the site's layout.
func (s *Site) MethodNotAllowed() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.errorPage(w, r, errorPage{Status: http.StatusMethodNotAllowed, Heading: "Not allowed",
			Message: "That page does not accept this kind of request."})
	})
}

func (s *Site) forbidden(w http.ResponseWriter, r *http.Request, msg string) {
	if msg == "" {
		msg = "You do not have access to this page."
	}
	s.errorPage(w, r, errorPage{Status: http.StatusForbidden, Heading: "Access denied", Message: msg,
		ActionURL: "/dashboard", ActionLabel: "Back to your dashboard"})
}

// CrossOriginDenied is the 403 page for a refused cross-origin request.
func (s *Site) CrossOriginDenied() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.errorPage(w, r, errorPage{Status: http.StatusForbidden, Heading: "Request refused",
			Message: "This form was sent from another site, so we did not act on it. If you meant to do this, open QuickScale and try again from there."})
	})
}

// tooManyRequests renders the 429 page with Retry-After.
func (s *Site) tooManyRequests(w http.ResponseWriter, r *http.Request, retryAfter time.Duration) {
	secs := int(retryAfter.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	// Whole minutes rounded up, from the same seconds as Retry-After.
	minutes := (secs + 59) / 60
	msg := "You have tried this too many times. Please wait " + plural(int64(minutes), "minute") + " and try again."
	s.errorPage(w, r, errorPage{Status: http.StatusTooManyRequests, Heading: "Too many attempts", Message: msg})
}

// serverError logs an unexpected error and shows the generic 500 page;
// internal error text never reaches the client.
func (s *Site) serverError(w http.ResponseWriter, r *http.Request, err error) {
	if CutByShutdown(r.Context()) {
		// Our process stopping (its shutdown deadline passed with this
		// request still running), not the client: a 503 of ours.
		s.logger.WarnContext(r.Context(), "request cut short by shutdown", "err", err, "method", r.Method, "path", r.URL.Path)
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if errors.Is(r.Context().Err(), context.Canceled) {
		// The browser closed its connection before the answer (the user
		// left or gave up): nobody reads a page, and it is no fault of
		// ours (nginx's 499; logged and counted as a 4xx). Our own
		// deadline ends the context with DeadlineExceeded instead.
		s.logger.InfoContext(r.Context(), "request abandoned by the client", "err", err, "method", r.Method, "path", r.URL.Path)
		w.WriteHeader(499)
		return
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Our own deadline (the request timeout): as the JSON API, a 503 to
		// retry, not the "unexpected problem" page.
		s.logger.WarnContext(r.Context(), "request timed out", "err", err, "method", r.Method, "path", r.URL.Path)
		w.Header().Set("Retry-After", "5")
		s.errorPage(w, r, errorPage{Status: http.StatusServiceUnavailable, Heading: "That took too long",
			Message: "We could not finish it in time. Please try again in a few seconds."})
		return
	}
	if store.IsBadInput(err) {
		// Postgres refused the request's data: a client mistake CleanInput
		// did not foresee, not a fault of ours.
		s.logger.WarnContext(r.Context(), "input refused by the database", "err", err, "method", r.Method, "path", r.URL.Path)
		s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "Bad request",
			Message: "Part of that request could not be processed. Check what you typed and try again."})
		return
	}
	if store.IsUnavailable(err) || s.store.NotMigrated(r.Context(), err) {
		// The database is briefly out of reach (a restart, a failover, a
		// dropped connection), or not migrated yet (an api started before
		// `migrate up`): nothing is wrong with the request, and the JSON
		// API and /readyz say 503 too.
		s.logger.WarnContext(r.Context(), "database unavailable", "err", err, "method", r.Method, "path", r.URL.Path)
		w.Header().Set("Retry-After", "5")
		s.errorPage(w, r, errorPage{Status: http.StatusServiceUnavailable, Heading: "Briefly unavailable",
			Message: "We could not reach our database just now. Please try again in a few seconds."})
		return
	}
	s.logger.ErrorContext(r.Context(), "request failed", "err", err, "method", r.Method, "path", r.URL.Path)
	s.errorPage(w, r, errorPage{Status: http.StatusInternalServerError, Heading: "Something went wrong",
		Message: "We hit an unexpected problem and have been told about it. Please try again in a moment."})
}

// PanicPage is what the recovery middleware shows after a panic.
func (s *Site) PanicPage(w http.ResponseWriter, r *http.Request) {
	s.errorPage(w, r, errorPage{Status: http.StatusInternalServerError, Heading: "Something went wrong",
		Message: "We hit an unexpected problem and have been told about it. Please try again in a moment."})
}

// handleError turns a domain error into the right page; anything else is a 500.
func (s *Site) handleError(w http.ResponseWriter, r *http.Request, err error) {
	var de *store.Error
	if errors.As(err, &de) {
		switch de.Kind {
		case store.KindNotFound:
			s.errorPage(w, r, errorPage{Status: http.StatusNotFound, Heading: "Not found", Message: de.Message})
			return
		case store.KindInvalid:
			s.errorPage(w, r, errorPage{Status: http.StatusBadRequest, Heading: "That did not work", Message: de.Message})
			return
		case store.KindConflict:
			s.errorPage(w, r, errorPage{Status: http.StatusConflict, Heading: "That did not work", Message: de.Message})
			return
		case store.KindForbidden, store.KindUnauthorized:
			s.forbidden(w, r, de.Message)
			return
		}
	}
	s.serverError(w, r, err)
}

// ErrShutdown is the cause the server cancels its requests' contexts with
// when its shutdown deadline passes with requests still running.
var ErrShutdown = errors.New("the server shut down before the answer")

// CutByShutdown reports whether ctx, a request's, was ended by the
// server's shutdown rather than by its client or its deadline.
func CutByShutdown(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), ErrShutdown)
}
