package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/jackc/pgx/v5"

	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/web"
)

type ctxKey int

const requestIDKey ctxKey = iota

// RequestIDFrom returns the request's id ("" outside a request).
func RequestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// requestID gives every request an id: a sane incoming X-Request-Id is
// kept (so ids follow a request across proxies), else a random one. It is
// echoed in the response and attached to log lines.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			b := make([]byte, 12)
			_, _ = rand.Read(b)
			id = hex.EncodeToString(b)
		}
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey, id)))
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// accessLog writes one structured line per request.
func (s *server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		defer func() {
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK
			}
			level := slog.LevelInfo
			probe := r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || r.URL.Path == "/metrics"
			switch {
			case probe && status == http.StatusServiceUnavailable:
				// Not ready is a state, polled every few seconds, not an
				// error each time: /readyz already says why.
				level = slog.LevelWarn
			case status >= 500:
				level = slog.LevelError
			case probe || strings.HasPrefix(r.URL.Path, "/static/"):
				level = slog.LevelDebug
			}
			s.logger.Log(r.Context(), level, "http request",
				"method", r.Method, "path", r.URL.Path, "route", observability.RoutePattern(r),
				"status", status, "bytes", ww.BytesWritten(), "duration", time.Since(start),
				"request_id", RequestIDFrom(r.Context()), "remote", r.RemoteAddr)
		}()
		next.ServeHTTP(ww, r)
	})
}

// recoverer turns a panic into a generic 500 (a page, or a JSON problem
// for the API and webhooks) and logs the panic with its stack.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			rec := recover()
			if rec == nil {
				return
			}
			if rec == http.ErrAbortHandler {
				panic(rec)
			}
			s.logger.ErrorContext(r.Context(), "panic serving request",
				"panic", fmt.Sprint(rec), "stack", string(debug.Stack()),
				"method", r.Method, "path", r.URL.Path, "request_id", RequestIDFrom(r.Context()))
			if wantsJSON(r) {
				writeProblem(w, r, http.StatusInternalServerError, "internal_error", "Something went wrong on our side. Please try again.")
				return
			}
			if s.site != nil {
				s.site.PanicPage(w, r)
				return
			}
			http.Error(w, "internal server error", http.StatusInternalServerError)
		}()
		next.ServeHTTP(w, r)
	})
}

func wantsJSON(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, "/webhooks/")
}

// limitBody caps every request body; handlers reading past it get an error.
func limitBody(n int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The JSON API checks the caller's key first (README): its
			// oversized bodies are refused when read, after that.
			if r.ContentLength > n && !strings.HasPrefix(r.URL.Path, "/api/") {
				if wantsJSON(r) {
					writeProblem(w, r, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("The request body is larger than %d bytes.", n))
				} else {
					http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
				}
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, n)
			next.ServeHTTP(w, r)
		})
	}
}

// timeout bounds the work of a request through its context.
func timeout(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// securityHeaders sets the headers every HTML page wants.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
		// Scripts come from the site only: no inline script, and Alpine's
		// CSP build, which evaluates no code from attributes (htmx's eval
		// is off too, in the layout's htmx-config).
		h.Set("Content-Security-Policy", contentSecurityPolicy("script-src 'self'"))
		next.ServeHTTP(w, r)
	})
}

func contentSecurityPolicy(scriptSrc string) string {
	return "default-src 'self'; " + scriptSrc + "; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self' https://checkout.stripe.com; frame-ancestors 'none'; base-uri 'self'"
}

// riverUIPolicy lets River UI, River's single-page app under /admin/river,
// evaluate code (its bundle calls eval); still no inline script, and only
// admins reach it.
func riverUIPolicy(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", contentSecurityPolicy("script-src 'self' 'unsafe-eval'"))
		next.ServeHTTP(w, r)
	})
}

// isMaxBytesError reports whether err came from a capped body.
func isMaxBytesError(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

// withoutNUL returns a decoded JSON value with every NUL in its strings and
// keys replaced by U+FFFD.
func withoutNUL(v any) any {
	clean := func(s string) string { return strings.ReplaceAll(s, "\x00", "\uFFFD") }
	switch x := v.(type) {
	case string:
		return clean(x)
	case []any:
		for i := range x {
			x[i] = withoutNUL(x[i])
		}
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[clean(k)] = withoutNUL(e)
		}
		return out
	}
	return v
}

// cleanPath refuses, with a 400, requests whose path holds bytes that are
// not text (invalid UTF-8, NUL and other control characters): River UI
// would pass them to PostgreSQL and answer 500.
func cleanPath(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; !utf8.ValidString(p) || strings.ContainsFunc(p, unicode.IsControl) {
			writeProblem(w, r, http.StatusBadRequest, "invalid_path", "The path is not valid text.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// auditRiverUI records every state-changing River UI request an admin
// makes (retry, cancel, delete jobs; pause queues) in the audit log, once
// River UI has accepted it. River UI writes through its own connections,
// so the record follows the action rather than sharing its transaction.
func (s *server) auditRiverUI(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		// What was acted on (the job ids, the queue) is in the JSON body:
		// its first 4 KiB are kept with the entry, and handed on intact.
		body, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		if ww.Status() >= 400 {
			return
		}
		details := map[string]any{"path": r.URL.Path}
		if len(body) > 0 {
			// PostgreSQL's jsonb holds no NUL character: one in the body
			// (raw, or escaped as \u0000 in a JSON string or key) is kept as
			// U+FFFD, or the entry could not be written at all while the
			// action stood. River UI gets the body as it came.
			var v any
			if json.Unmarshal(body, &v) == nil {
				details["request"] = withoutNUL(v)
			} else {
				details["request"] = strings.ReplaceAll(strings.ToValidUTF8(string(body), "\uFFFD"), "\x00", "\uFFFD")
			}
		}
		actor := web.CurrentUser(r.Context())
		var actorID *int64
		if actor != nil {
			actorID = &actor.ID
		}
		ctx := context.WithoutCancel(r.Context())
		err := s.store.InTx(ctx, func(tx pgx.Tx) error {
			return store.Audit(ctx, tx, actorID, "riverui."+strings.ToLower(r.Method), nil, details)
		})
		if err != nil {
			s.logger.ErrorContext(ctx, "audit river ui action", "err", err, "path", r.URL.Path)
		}
	})
}
