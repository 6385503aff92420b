package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/web"
)

type apiCtxKey int

const (
	apiUserKey apiCtxKey = iota
	apiKeyKey
)

func apiUser(ctx context.Context) store.User {
	u, _ := ctx.Value(apiUserKey).(store.User)
	return u
}

func apiKeyOf(ctx context.Context) store.APIKey {
	k, _ := ctx.Value(apiKeyKey).(store.APIKey)
	return k
}

// apiKeyFailuresPerIP bounds requests with an invalid API key from one IP.
var apiKeyFailuresPerIP = store.Limit{Max: 100, Window: 15 * time.Minute}

// requireAPIKey authenticates `Authorization: Bearer <key>`.
func (s *server) requireAPIKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		scheme, token, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="quickscale"`)
			writeProblem(w, r, http.StatusUnauthorized, "unauthorized", "Send your API key as `Authorization: Bearer <key>`.")
			return
		}
		key, user, err := s.store.AuthenticateAPIKey(r.Context(), strings.TrimSpace(token))
		if store.ErrorKind(err) == store.KindUnauthorized {
			// Invalid keys are counted per IP (an IPv6 /64); past the limit
			// the answer says to stop. A valid key is never refused for
			// others' failures from the same address (a NAT, an office):
			// keys are 256-bit, the limit is a signal, not the defence.
			ok, retry, herr := s.store.Hit(r.Context(), "apikey-fail:ip:"+web.ClientIP(r, s.cfg.TrustProxy), apiKeyFailuresPerIP)
			if herr != nil {
				s.logger.WarnContext(r.Context(), "count an invalid API key", "err", herr)
			}
			if herr == nil && !ok {
				w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(retry.Seconds())))))
				writeProblem(w, r, http.StatusTooManyRequests, "too_many_failures",
					"Too many requests with API keys that are not valid from your address. Check the key, then retry after the time in Retry-After.")
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="quickscale", error="invalid_token"`)
			writeProblem(w, r, http.StatusUnauthorized, "invalid_api_key", "This API key is not valid or has been revoked.")
			return
		}
		if err != nil {
			s.apiError(w, r, err)
			return
		}
		ctx := context.WithValue(r.Context(), apiUserKey, user)
		ctx = context.WithValue(ctx, apiKeyKey, key)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// StatusClientClosedRequest answers a request whose client closed its
// connection first (nginx's 499): logged and counted as a 4xx.
const StatusClientClosedRequest = 499

// apiError turns an unexpected error into a 500 problem; the detail is
// logged, never sent.
func (s *server) apiError(w http.ResponseWriter, r *http.Request, err error) {
	if web.CutByShutdown(r.Context()) {
		// The process stopped with this request still running (its
		// shutdown deadline passed): ours, not the client's; retryable.
		s.logger.WarnContext(r.Context(), "request cut short by shutdown", "err", err, "path", r.URL.Path,
			"request_id", RequestIDFrom(r.Context()))
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, http.StatusServiceUnavailable, "unavailable", "The server is restarting; please retry (with the same Idempotency-Key).")
		return
	}
	if errors.Is(r.Context().Err(), context.Canceled) {
		// The client closed its connection before the answer (it gave up
		// waiting): nobody reads this, and it is no fault of ours, so it
		// is not a 5xx for the error-ratio alert. (Our own deadline, the
		// timeout middleware's, ends the context with DeadlineExceeded:
		// that is a 503 below.)
		s.logger.InfoContext(r.Context(), "request abandoned by the client", "err", err, "path", r.URL.Path,
			"request_id", RequestIDFrom(r.Context()))
		writeProblem(w, r, StatusClientClosedRequest, "client_closed_request", "The client closed the connection before the answer.")
		return
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, http.StatusServiceUnavailable, "unavailable", "The request took too long; please retry.")
		return
	}
	if store.IsBadInput(err) {
		writeProblem(w, r, http.StatusBadRequest, "invalid_request", "Part of the request could not be processed.")
		return
	}
	if store.IsUnavailable(err) || s.store.NotMigrated(r.Context(), err) {
		s.logger.WarnContext(r.Context(), "database unavailable", "err", err, "path", r.URL.Path)
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, http.StatusServiceUnavailable, "unavailable", "The service is briefly unavailable; please retry.")
		return
	}
	s.logger.ErrorContext(r.Context(), "api request failed", "err", err, "path", r.URL.Path, "request_id", RequestIDFrom(r.Context()))
	writeProblem(w, r, http.StatusInternalServerError, "internal_error", "Something went wrong on our side. Please try again.")
}

// handleAPIBalance serves GET /api/v1/balance.
func (s *server) handleAPIBalance() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bal, err := s.store.Balance(r.Context(), apiUser(r.Context()).ID)
		if err != nil {
			s.apiError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, bal)
	})
}

// handleAPIServices serves GET /api/v1/services.
func (s *server) handleAPIServices() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		services, err := s.store.ActiveServices(r.Context())
		if err != nil {
			s.apiError(w, r, err)
			return
		}
		if services == nil {
			services = []store.Service{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": services})
	})
}

// handleAPIConsume serves POST /api/v1/usage: {"service": "<slug>"} with a
// required Idempotency-Key header. 201 on a new usage, 200 with the same
// body on a replay, 402 when credits are short, 409 when the key was used
// for a different request.
func (s *server) handleAPIConsume() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		user, key := apiUser(ctx), apiKeyOf(ctx)
		idem := strings.TrimSpace(r.Header.Get("Idempotency-Key"))
		switch {
		case idem == "":
			writeProblem(w, r, http.StatusBadRequest, "idempotency_key_required", "Send an Idempotency-Key header (e.g. a UUID) so a retried request is not charged twice.")
			return
		case !utf8.ValidString(idem) || utf8.RuneCountInString(idem) > store.MaxIdempotencyKeyLen:
			writeProblem(w, r, http.StatusBadRequest, "invalid_idempotency_key", "The Idempotency-Key must be 1 to 255 characters of text.")
			return
		case strings.HasPrefix(idem, store.WebKeyPrefix):
			writeProblem(w, r, http.StatusBadRequest, "invalid_idempotency_key", "Idempotency-Keys starting with "+store.WebKeyPrefix+" are reserved for uses made on the website.")
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONMediaType(ct) {
			writeProblem(w, r, http.StatusUnsupportedMediaType, "unsupported_media_type", "Send the body as application/json, in UTF-8.")
			return
		}
		// A compressed body would be read as JSON text and refused as
		// malformed, or worse, taken: say what is wrong instead.
		if ce := r.Header.Values("Content-Encoding"); len(ce) > 0 && !(len(ce) == 1 && strings.EqualFold(strings.TrimSpace(ce[0]), "identity")) {
			writeProblem(w, r, http.StatusUnsupportedMediaType, "unsupported_media_type", "Send the body uncompressed, without a Content-Encoding.")
			return
		}
		// A declared length over the cap is refused before reading
		// (limitBody leaves it to here, after the key): reading would wait
		// for bytes a short body never sends, until the read timeout.
		if r.ContentLength > s.cfg.MaxBodyBytes {
			writeProblem(w, r, http.StatusRequestEntityTooLarge, "body_too_large", "The request body is too large.")
			return
		}
		body := &readErrorRecorder{r: r.Body}
		service, status, code, msg := decodeUsageBody(body)
		if status == http.StatusBadRequest && body.err != nil {
			// Not the JSON's fault: the body stopped coming.
			status, code, msg = http.StatusBadRequest, "invalid_request", "The request body was cut short; send it again (with the same Idempotency-Key)."
			var ne net.Error
			if errors.As(body.err, &ne) && ne.Timeout() {
				status, code, msg = http.StatusRequestTimeout, "request_timeout", "The request body came too slowly; send it again (with the same Idempotency-Key)."
			}
		}
		if status != 0 {
			writeProblem(w, r, status, code, msg)
			return
		}
		if service == nil || strings.TrimSpace(*service) == "" {
			writeProblem(w, r, http.StatusUnprocessableEntity, "service_required", "Name the service to use: {\"service\": \"<slug>\"}.")
			return
		}
		slug := strings.TrimSpace(*service)
		if !store.ValidSlug(slug) {
			writeProblem(w, r, http.StatusUnprocessableEntity, "invalid_service", "A service slug is 1-63 lowercase letters, digits and dashes, starting with a letter or digit.")
			return
		}
		if !user.Verified() {
			writeProblem(w, r, http.StatusForbidden, "email_not_verified", "Confirm your email address before spending credits.")
			return
		}
		keyID := key.ID
		usage, replayed, err := s.store.Consume(ctx, store.ConsumeRequest{UserID: user.ID, Service: slug, IdempotencyKey: idem, APIKeyID: &keyID})
		var short *store.InsufficientCreditsError
		switch {
		case err == nil:
		case errors.As(err, &short):
			bal, req := short.Balance, short.Required
			writeJSON(w, http.StatusPaymentRequired, problem{Error: "insufficient_credits", Message: "Not enough credits for this service.",
				RequestID: RequestIDFrom(ctx), Balance: &bal, Required: &req})
			return
		case store.ErrorKind(err) == store.KindConflict:
			writeProblem(w, r, http.StatusConflict, "idempotency_key_reused", "This Idempotency-Key was already used for a different request.")
			return
		case store.ErrorKind(err) == store.KindNotFound:
			writeProblem(w, r, http.StatusNotFound, "service_not_found", "No active service "+strconv.Quote(slug)+".")
			return
		case store.ErrorKind(err) == store.KindInvalid:
			writeProblem(w, r, http.StatusBadRequest, "invalid_request", err.Error())
			return
		default:
			s.apiError(w, r, err)
			return
		}
		if replayed {
			w.Header().Set("Idempotent-Replayed", "true")
			writeJSON(w, http.StatusOK, usage)
			return
		}
		web.RecordConsumption(s.metrics, usage)
		writeJSON(w, http.StatusCreated, usage)
	})
}

// decodeUsageBody reads POST /api/v1/usage's body, exactly one JSON object
// whose only field is "service" (a string or null), spelled exactly so and
// given once: encoding/json alone would also take "Service" or "ſervice"
// and let the last of two spellings win, so that a body naming one service
// could charge another. A non-zero status is the problem to answer.
func decodeUsageBody(body io.Reader) (service *string, status int, code, msg string) {
	const shape = "The body must be a JSON object like {\"service\": \"<slug>\"}."
	fail := func(err error, m string) (*string, int, string, string) {
		if isMaxBytesError(err) {
			return nil, http.StatusRequestEntityTooLarge, "body_too_large", "The request body is too large."
		}
		return nil, http.StatusBadRequest, "invalid_json", m
	}
	dec := json.NewDecoder(body)
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fail(err, shape)
	}
	seen := false
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fail(err, shape)
		}
		if name, _ := t.(string); name != "service" {
			return fail(nil, "Unknown field "+quoteFieldName(name)+": "+shape)
		} else if seen {
			return fail(nil, "The field \"service\" is given twice.")
		}
		seen = true
		if err := dec.Decode(&service); err != nil {
			return fail(err, shape)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return fail(err, shape)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fail(err, "The body must hold exactly one JSON object.")
	}
	return service, 0, "", ""
}

// quoteFieldName quotes a JSON field name for an error message, cut to
// its first 40 characters: a body's unknown field name may be as long as
// the body, and quoting can make it six times longer ("<" is \u003c).
func quoteFieldName(name string) string {
	const most = 40
	if r := []rune(name); len(r) > most {
		return strconv.Quote(string(r[:most])) + "…"
	}
	return strconv.Quote(name)
}

// usagePageSize is how many usages one API page holds.
const usagePageSize = 50

// handleAPIUsageList serves GET /api/v1/usage?cursor=…, newest first.
func (s *server) handleAPIUsageList() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var cursor int64
		if c := r.URL.Query().Get("cursor"); c != "" {
			v, err := strconv.ParseInt(c, 10, 64)
			if err != nil || v <= 0 {
				writeProblem(w, r, http.StatusBadRequest, "invalid_cursor", "Pass back the next_cursor of a previous page.")
				return
			}
			cursor = v
		}
		usages, next, err := s.store.Usages(r.Context(), apiUser(r.Context()).ID, cursor, usagePageSize)
		if err != nil {
			s.apiError(w, r, err)
			return
		}
		var nextCursor *string
		if next != 0 {
			c := strconv.FormatInt(next, 10)
			nextCursor = &c
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": usages, "next_cursor": nextCursor})
	})
}

// isJSONMediaType reports whether a Content-Type is application/json, in
// UTF-8 (JSON's only encoding, RFC 8259) if it names a charset.
func isJSONMediaType(ct string) bool {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8") || strings.EqualFold(cs, "utf8")
}

// readErrorRecorder keeps the first error reading the body gave other than
// its end, so that a body that stopped coming is not answered as bad JSON.
type readErrorRecorder struct {
	r   io.Reader
	err error
}

func (b *readErrorRecorder) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil && !isMaxBytesError(err) {
		b.err = err
	}
	return n, err
}
