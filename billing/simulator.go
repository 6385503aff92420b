package billing

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/quickscale/quickscale/store"
)

// Simulator is the Gateway used without a Stripe key: a local hosted
// checkout page with Pay and Decline, which emits events in Stripe's own
// JSON shapes (API version 2023-10-16, built from stripe-go's types),
// signed with the webhook secret and POSTed to our own /webhooks/stripe, so
// the whole real pipeline runs offline.
//
// It is built around Emit, so later products (invoices, a subscription
// clock) add event builders without changing how events are delivered.
type Simulator struct {
	store         *store.Store
	baseURL       string
	webhookURL    string // where events are posted (baseURL's /webhooks/stripe unless DeliverTo)
	webhookSecret string
	http          *http.Client
	logger        *slog.Logger
	// finishing admits one finishing checkout at a time: one holds a
	// database connection (and the session's row lock) while it delivers
	// its webhooks, which our own endpoint stores with another connection
	// of the same pool. Any number at once could hold every connection
	// the webhooks wait for (with a pool of 4, 12 Pays at once all failed
	// after 30 s). A finish takes milliseconds; a demo never notices.
	finishing chan struct{}
}

// DeliverTo makes the simulator post its events to url instead of
// baseURL's /webhooks/stripe (a worker running it apart from the api posts
// to the api's address inside the network); "" changes nothing.
func (s *Simulator) DeliverTo(url string) *Simulator {
	if url != "" {
		s.webhookURL = url
	}
	return s
}

// NewSimulator returns a simulator that delivers events to baseURL.
func NewSimulator(st *store.Store, baseURL, webhookSecret string, logger *slog.Logger) *Simulator {
	return &Simulator{
		store: st, baseURL: strings.TrimRight(baseURL, "/"), webhookURL: strings.TrimRight(baseURL, "/") + "/webhooks/stripe", webhookSecret: webhookSecret,
		http: &http.Client{Timeout: 15 * time.Second}, logger: logger,
		finishing: make(chan struct{}, 1),
	}
}

// oneAtATime runs fn as the only finish (or expiry pass) of this process,
// waiting for its turn until ctx ends.
func (s *Simulator) oneAtATime(ctx context.Context, fn func() error) error {
	select {
	case s.finishing <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.finishing }()
	return fn()
}

// Simulated implements Gateway.
func (s *Simulator) Simulated() bool { return true }

func simID(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + "_sim_" + hex.EncodeToString(b)
}

// CreateCustomer implements Gateway.
func (s *Simulator) CreateCustomer(ctx context.Context, c CustomerParams) (string, error) {
	return simID("cus"), nil
}

// UpdateCustomerEmail implements Gateway: the simulator's customers are
// ids only (its checkout page shows the signed-in user), so there is
// nothing to change.
func (s *Simulator) UpdateCustomerEmail(ctx context.Context, customerID, email string) error {
	return nil
}

// CreateCheckoutSession implements Gateway: the session lives in our
// database and its URL is the local checkout page. Like Stripe, a request
// repeated with the same idempotency key (a double-clicked Buy) returns the
// session the first one created, and a key reused for another purchase is
// refused.
func (s *Simulator) CreateCheckoutSession(ctx context.Context, p CheckoutParams) (CheckoutSession, error) {
	id, intent := simID("cs"), simID("pi")
	if p.IdempotencyKey != "" {
		sum := sha256.Sum256([]byte(p.IdempotencyKey))
		key := hex.EncodeToString(sum[:12])
		id, intent = "cs_sim_"+key, "pi_sim_"+key
	}
	ss := store.SimSession{
		ID: id, UserID: p.UserID, CustomerID: p.CustomerID,
		AmountMinor: p.Pack.PriceMinor, Currency: p.Pack.Currency, Description: "QuickScale " + p.Pack.Name,
		Metadata:   map[string]string{MetaUserID: strconv.FormatInt(p.UserID, 10), MetaPackCode: p.Pack.Code},
		SuccessURL: p.SuccessURL, CancelURL: p.CancelURL, PaymentIntentID: intent,
	}
	created, err := s.store.CreateSimSession(ctx, ss)
	if err != nil {
		return CheckoutSession{}, fmt.Errorf("simulator: create session: %w", err)
	}
	if !created {
		first, err := s.store.SimSessionOfUser(ctx, id, p.UserID)
		if err != nil || first.AmountMinor != ss.AmountMinor || first.Currency != ss.Currency || first.Metadata[MetaPackCode] != p.Pack.Code {
			return CheckoutSession{}, fmt.Errorf("simulator: idempotency key %q was used for another checkout", p.IdempotencyKey)
		}
	}
	return CheckoutSession{ID: id, URL: s.baseURL + "/simulator/checkout/" + id}, nil
}

// SyncCatalog implements Gateway: there is no remote catalog to update.
func (s *Simulator) SyncCatalog(ctx context.Context, packs []store.Pack) (map[string]string, error) {
	out := make(map[string]string, len(packs))
	for _, p := range packs {
		out[p.Code] = "price_sim_" + p.Code
	}
	return out, nil
}

// Session returns a user's simulator session for the checkout page.
func (s *Simulator) Session(ctx context.Context, id string, userID int64) (store.SimSession, error) {
	return s.store.SimSessionOfUser(ctx, id, userID)
}

// Pay completes the session as paid and delivers checkout.session.completed.
// It returns where the buyer goes next (the success URL).
func (s *Simulator) Pay(ctx context.Context, id string, userID int64) (string, error) {
	ss, err := s.store.SimSessionOfUser(ctx, id, userID)
	if err != nil {
		return "", err
	}
	if ss.Mode == "subscription" {
		return s.paySubscription(ctx, id, userID)
	}
	return s.finish(ctx, id, userID, true)
}

// ErrDeclineSubscription answers Decline on a subscription's checkout:
// Stripe's checkout keeps it open when a card is refused (a subscription
// starts only once paid), so the simulator offers Pay or going back.
var ErrDeclineSubscription = errors.New("simulator: a subscription's checkout is paid or left, not declined")

// Decline completes the session unpaid, as an asynchronous payment method
// (e.g. a bank debit) that then fails: checkout.session.completed with
// payment_status unpaid, then checkout.session.async_payment_failed.
func (s *Simulator) Decline(ctx context.Context, id string, userID int64) (string, error) {
	ss, err := s.store.SimSessionOfUser(ctx, id, userID)
	if err != nil {
		return "", err
	}
	if ss.Mode != "payment" {
		return "", ErrDeclineSubscription
	}
	return s.finish(ctx, id, userID, false)
}

func (s *Simulator) finish(ctx context.Context, id string, userID int64, paid bool) (string, error) {
	status := "unpaid"
	if paid {
		status = "paid"
	}
	// Deliver under the session's lock, then close it: if delivery fails
	// the session stays open and Pay can be pressed again (a second
	// delivery is harmless: grants are keyed by the session); a concurrent
	// click waits, then finds it finished and sends nothing, so Pay and
	// Decline pressed together cannot both be delivered.
	var ss store.SimSession
	err := s.oneAtATime(ctx, func() (err error) {
		ss, _, err = s.store.FinishSimSession(ctx, id, userID, status, func(ss store.SimSession) error {
			return s.deliver(ctx, ss)
		})
		return err
	})
	if err != nil {
		return "", err
	}
	return strings.ReplaceAll(ss.SuccessURL, "{CHECKOUT_SESSION_ID}", ss.ID), nil
}

// deliver emits what finishing ss tells Stripe's webhooks: completed (and,
// unpaid, async_payment_failed), or expired.
func (s *Simulator) deliver(ctx context.Context, ss store.SimSession) error {
	if ss.Status == "expired" {
		return s.Emit(ctx, stripe.EventTypeCheckoutSessionExpired, CheckoutSessionObject(ss))
	}
	if err := s.Emit(ctx, stripe.EventTypeCheckoutSessionCompleted, CheckoutSessionObject(ss)); err != nil {
		return err
	}
	if ss.PaymentStatus != "paid" {
		return s.Emit(ctx, stripe.EventTypeCheckoutSessionAsyncPaymentFailed, CheckoutSessionObject(ss))
	}
	return nil
}

// ExpireCheckoutSession implements Gateway: the session is expired at
// once and checkout.session.expired delivered, as Stripe does.
func (s *Simulator) ExpireCheckoutSession(ctx context.Context, id string) error {
	return s.oneAtATime(ctx, func() error {
		err := s.store.ExpireSimSession(ctx, id, func(ss store.SimSession) error { return s.deliver(ctx, ss) })
		if errors.Is(err, store.ErrSimSessionExpired) {
			return fmt.Errorf("simulator: expire checkout %s: %w", id, ErrCheckoutExpired)
		}
		if errors.Is(err, store.ErrSimSessionNotOpen) {
			return fmt.Errorf("simulator: expire checkout %s: %w", id, ErrCheckoutNotOpen)
		}
		return err
	})
}

// ExpireAbandoned expires checkouts left open past store.SimSessionExpiry
// (24 hours), as Stripe does, delivering checkout.session.expired for each
// (up to 100 a call). The processes that serve the simulator call it every
// minute; Pay and Decline on such a checkout expire it too.
func (s *Simulator) ExpireAbandoned(ctx context.Context) (n int, err error) {
	err = s.oneAtATime(ctx, func() (err error) {
		n, err = s.store.ExpireSimSessions(ctx, 100, func(ss store.SimSession) error {
			return s.deliver(ctx, ss)
		})
		return err
	})
	return n, err
}

// Refund implements Gateway: the session paid through the payment intent
// is refunded at once and charge.refunded delivered (its charge with the
// new refunded total), as Stripe does; a key seen before answers the same
// refund and delivers nothing.
func (s *Simulator) Refund(ctx context.Context, r RefundParams) (id string, err error) {
	err = s.oneAtATime(ctx, func() (err error) {
		id, err = s.store.RefundSimSession(ctx, r.PaymentIntentID, r.IdempotencyKey, r.AmountMinor, simID("re"), func(ss store.SimSession) error {
			return s.Emit(ctx, stripe.EventTypeChargeRefunded, ChargeObject(ss))
		})
		return err
	})
	switch {
	case errors.Is(err, store.ErrSimNotPaid):
		return "", &RefundRefusedError{Reason: "This payment was never paid, so there is nothing to refund."}
	case errors.Is(err, store.ErrSimRefundTooLarge):
		return "", &RefundRefusedError{Reason: "The refund is greater than what is left to refund of this payment."}
	case errors.Is(err, store.ErrSimRefundKeyReused):
		return "", &RefundRefusedError{Reason: "Keys for idempotent requests can only be used with the same parameters they were first used with."}
	case err != nil:
		return "", fmt.Errorf("simulator: refund %s: %w", r.PaymentIntentID, err)
	}
	return id, nil
}

// FailRefund makes a refund the simulator made fail, as a card that
// cannot take it back does: charge.refund.updated is delivered with the
// refund failed (expired_or_canceled_card). The simulator's charge keeps
// what it refunded; a refund fails once.
func (s *Simulator) FailRefund(ctx context.Context, refundID string) error {
	return s.oneAtATime(ctx, func() error {
		return s.store.FailSimRefund(ctx, refundID, func(ss store.SimSession, amount int64, created time.Time) error {
			re := RefundObject(ss, refundID, amount, created)
			re.Status, re.FailureReason = stripe.RefundStatusFailed, stripe.RefundFailureReasonExpiredOrCanceledCard
			return s.Emit(ctx, stripe.EventTypeChargeRefundUpdated, re)
		})
	})
}

// RefundObject renders a refund of a simulator session's charge, made at
// created, as Stripe's refund object (succeeded).
func RefundObject(ss store.SimSession, id string, amount int64, created time.Time) *stripe.Refund {
	return &stripe.Refund{
		ID: id, Object: "refund", Amount: amount,
		Charge:        &stripe.Charge{ID: ChargeObject(ss).ID},
		Currency:      stripe.Currency(ss.Currency),
		PaymentIntent: &stripe.PaymentIntent{ID: ss.PaymentIntentID},
		Status:        stripe.RefundStatusSucceeded,
		Created:       created.Unix(),
		Metadata:      map[string]string{},
	}
}

// ChargeObject renders the charge of a paid simulator session as Stripe's
// charge object, with what was refunded of it.
func ChargeObject(ss store.SimSession) *stripe.Charge {
	return &stripe.Charge{
		ID: "ch_" + strings.TrimPrefix(ss.PaymentIntentID, "pi_"), Object: "charge",
		Amount: ss.AmountMinor, AmountCaptured: ss.AmountMinor, AmountRefunded: ss.AmountRefundedMinor,
		Captured: true, Paid: true, Refunded: ss.AmountRefundedMinor == ss.AmountMinor,
		Currency:      stripe.Currency(ss.Currency),
		Customer:      &stripe.Customer{ID: ss.CustomerID},
		PaymentIntent: &stripe.PaymentIntent{ID: ss.PaymentIntentID},
		Status:        stripe.ChargeStatusSucceeded,
		Created:       ss.CreatedAt.Unix(),
		Metadata:      ss.Metadata,
	}
}

// CheckoutSessionObject renders a simulator session as Stripe's
// checkout.session object.
func CheckoutSessionObject(ss store.SimSession) *stripe.CheckoutSession {
	obj := &stripe.CheckoutSession{
		ID: ss.ID, Object: "checkout.session",
		AmountSubtotal: ss.AmountMinor, AmountTotal: ss.AmountMinor,
		Currency:           stripe.Currency(ss.Currency),
		Customer:           &stripe.Customer{ID: ss.CustomerID},
		ClientReferenceID:  ss.Metadata[MetaUserID],
		Created:            ss.CreatedAt.Unix(),
		ExpiresAt:          ss.CreatedAt.Add(24 * time.Hour).Unix(),
		Metadata:           ss.Metadata,
		Mode:               stripe.CheckoutSessionModePayment,
		PaymentIntent:      &stripe.PaymentIntent{ID: ss.PaymentIntentID},
		PaymentStatus:      stripe.CheckoutSessionPaymentStatus(ss.PaymentStatus),
		PaymentMethodTypes: []string{"card"},
		Status:             stripe.CheckoutSessionStatus(ss.Status),
		SuccessURL:         ss.SuccessURL,
		CancelURL:          ss.CancelURL,
		UIMode:             stripe.CheckoutSessionUIModeHosted,
	}
	if ss.Mode == "subscription" {
		// No payment intent of its own: the subscription's first invoice
		// has it.
		obj.Mode, obj.PaymentIntent = stripe.CheckoutSessionModeSubscription, nil
		if ss.SubscriptionID != nil {
			obj.Subscription = &stripe.Subscription{ID: *ss.SubscriptionID}
		}
	}
	return obj
}

// expandableFields lists fields that Stripe sends as an id unless
// expanded; Go's encoder would write stripe-go's structs as whole objects.
func expandableFields() []string {
	return []string{"customer", "payment_intent", "invoice", "subscription", "setup_intent", "payment_link", "charge", "balance_transaction"}
}

// ObjectJSON marshals a stripe-go object the way Stripe sends it in an
// event: expandable references collapsed to their ids.
func ObjectJSON(obj any) (json.RawMessage, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for _, k := range expandableFields() {
		if sub, ok := m[k].(map[string]any); ok {
			if id, _ := sub["id"].(string); id != "" {
				m[k] = id
			} else {
				m[k] = nil
			}
		}
	}
	return json.Marshal(m)
}

// NewEvent wraps an object in a stripe.Event envelope of the pinned API version.
func NewEvent(eventType stripe.EventType, obj any) ([]byte, error) {
	raw, err := ObjectJSON(obj)
	if err != nil {
		return nil, err
	}
	ev := stripe.Event{
		ID: simID("evt"), Object: "event", APIVersion: stripe.APIVersion,
		Created: time.Now().Unix(), Type: eventType, Data: &stripe.EventData{Raw: raw},
		Request: &stripe.EventRequest{},
	}
	return json.Marshal(ev)
}

// Emit builds an event around obj, signs it with the webhook secret and
// POSTs it to our own webhook endpoint, as Stripe would.
func (s *Simulator) Emit(ctx context.Context, eventType stripe.EventType, obj any) error {
	payload, err := NewEvent(eventType, obj)
	if err != nil {
		return fmt.Errorf("simulator: build %s: %w", eventType, err)
	}
	signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: s.webhookSecret, Timestamp: time.Now()})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.webhookURL, bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Stripe-Signature", signed.Header)
	req.Header.Set("User-Agent", "QuickScale-Simulator/1.0 (+https://stripe.com/docs/webhooks)")
	resp, err := s.http.Do(req)
	if err != nil {
		return fmt.Errorf("simulator: deliver %s: %w", eventType, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("simulator: deliver %s: webhook answered %d: %s", eventType, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	s.logger.DebugContext(ctx, "simulator delivered event", "type", eventType)
	return nil
}
