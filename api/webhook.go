package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/quickscale/quickscale/observability"
	"github.com/quickscale/quickscale/store"
	"github.com/quickscale/quickscale/web"
)

// maxWebhookBody caps a Stripe event; Stripe's are far smaller.
const maxWebhookBody = 512 << 10

// webhookTolerance is how old a signature may be.
const webhookTolerance = 5 * time.Minute

// handleStripeWebhook verifies, stores and enqueues one Stripe event:
// raw body (capped) → signature check → one transaction that inserts the
// event (id primary key, duplicates ignored) and, if new, enqueues
// jobs.StripeEvent (shared with concurrent deliveries: see ingester) → 200. Bad input is a 4xx; only an unavailable database
// is a 5xx (503, so Stripe retries).
func (s *server) handleStripeWebhook() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
		if err != nil {
			if isMaxBytesError(err) {
				writeProblem(w, r, http.StatusRequestEntityTooLarge, "body_too_large", "The event is larger than we accept.")
				return
			}
			writeProblem(w, r, http.StatusBadRequest, "unreadable_body", "The request body could not be read.")
			return
		}
		if err := webhook.ValidatePayloadWithTolerance(body, r.Header.Get("Stripe-Signature"), s.cfg.WebhookSecret, webhookTolerance); err != nil {
			s.metrics.WebhookSignatureFailures.Inc()
			s.logger.WarnContext(r.Context(), "webhook signature refused", "err", err, "request_id", RequestIDFrom(r.Context()))
			writeProblem(w, r, http.StatusBadRequest, "invalid_signature", "The Stripe-Signature header is missing, malformed, stale or does not match.")
			return
		}
		ev, ok := parseEvent(body)
		if !ok {
			writeProblem(w, r, http.StatusBadRequest, "invalid_event", "The body is not a Stripe event.")
			return
		}
		if ev.APIVersion != stripe.APIVersion && !s.cfg.IgnoreAPIVersion {
			s.logger.WarnContext(r.Context(), "webhook of another API version refused", "api_version", ev.APIVersion, "want", stripe.APIVersion, "event", ev.ID)
			writeProblem(w, r, http.StatusBadRequest, "api_version_mismatch", "Events must use API version "+stripe.APIVersion+"; set the webhook endpoint's API version.")
			return
		}
		typeLabel := observability.EventTypeLabel(ev.Type)
		s.metrics.WebhooksReceived.WithLabelValues(typeLabel).Inc()
		ctx := r.Context()
		inserted, err := s.ingest.submit(ctx, ev)
		if isDataException(err) {
			// Postgres refused the content (e.g. a \u0000 in a string):
			// the event is malformed, retrying cannot help.
			s.logger.WarnContext(ctx, "webhook event refused by the database", "err", err, "event", ev.ID)
			writeProblem(w, r, http.StatusBadRequest, "invalid_event", "The event contains data we cannot store.")
			return
		}
		if err != nil && web.CutByShutdown(ctx) {
			// Our process stopping, not a fault: Stripe retries it.
			s.logger.WarnContext(ctx, "request cut short by shutdown", "err", err, "event", ev.ID, "type", ev.Type)
			w.Header().Set("Retry-After", "5")
			writeProblem(w, r, http.StatusServiceUnavailable, "unavailable", "The server is restarting; the event was not stored; please retry.")
			return
		}
		if err != nil {
			s.logger.ErrorContext(ctx, "store webhook event", "err", err, "event", ev.ID, "type", ev.Type)
			writeProblem(w, r, http.StatusServiceUnavailable, "unavailable", "The event could not be stored; please retry.")
			return
		}
		if !inserted {
			s.metrics.WebhookDuplicates.Inc()
		}
		writeJSON(w, http.StatusOK, map[string]any{"received": true, "duplicate": !inserted})
	})
}

// stripeEpoch (2001-09-09) is safely before any Stripe event (its test
// fixtures use 2009 timestamps).
const stripeEpoch = 1_000_000_000

// parseEvent reads the envelope of a verified event. The object itself is
// kept raw for the worker.
func parseEvent(body []byte) (store.StripeEvent, bool) {
	var env struct {
		ID         string `json:"id"`
		Object     string `json:"object"`
		Type       string `json:"type"`
		APIVersion string `json:"api_version"`
		Created    int64  `json:"created"`
		Livemode   bool   `json:"livemode"`
		Data       struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	// One Unmarshal validates the whole body (a single value, nothing but
	// whitespace after it) and reads the envelope.
	if err := json.Unmarshal(body, &env); err != nil {
		return store.StripeEvent{}, false
	}
	// Stripe's ids are letters, digits and underscores (evt_1NG8Du2eZv…);
	// anything else could not be linked to from the admin pages either.
	if !validEventID(env.ID) || !validEventType(env.Type) ||
		(env.Object != "" && env.Object != "event") {
		return store.StripeEvent{}, false
	}
	// data.object must be an object (the worker decodes it).
	if len(env.Data.Object) == 0 || env.Data.Object[0] != '{' {
		return store.StripeEvent{}, false
	}
	// Stripe's events are from its lifetime; anything else is malformed
	// (and a timestamp far out of range would not survive storage).
	// (Compared as seconds: time.Unix of a huge value wraps around.)
	if env.Created < stripeEpoch || env.Created > time.Now().Add(24*time.Hour).Unix() {
		return store.StripeEvent{}, false
	}
	created := time.Unix(env.Created, 0)
	return store.StripeEvent{ID: env.ID, Type: env.Type, APIVersion: env.APIVersion, Livemode: env.Livemode, Created: created, Payload: body}, true
}

// isDataException reports a Postgres data exception (class 22): the input,
// not the database, is at fault.
func isDataException(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}

// validEventType accepts Stripe's event types (checkout.session.completed,
// invoice.payment_failed, v1.billing.meter.error_report_triggered): lower-case
// letters, digits, dots and underscores. Anything else (escape sequences,
// direction overrides) would be stored and shown to admins as it came.
func validEventType(t string) bool {
	if t == "" || len(t) > 255 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c == '_' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// validEventID reports whether id looks like a Stripe object id: 1 to 255
// ASCII letters, digits and underscores.
func validEventID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
