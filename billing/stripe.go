package billing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/quickscale/quickscale/store"
)

// Stripe is the Gateway backed by Stripe's API through a per-instance
// stripe-go client (no global key or backend).
type Stripe struct {
	api *client.API
}

// StripeConfig configures the real gateway.
type StripeConfig struct {
	SecretKey string
	// APIURL overrides Stripe's API address (e.g. stripe-mock).
	APIURL     string
	HTTPClient *http.Client
}

// NewStripe returns a Stripe gateway.
func NewStripe(cfg StripeConfig) *Stripe {
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	// stripe-go's own logging is off: errors are returned and logged by the
	// caller, and an expected 404 (a product not created yet) is no error.
	bc := &stripe.BackendConfig{HTTPClient: hc, LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull}}
	if cfg.APIURL != "" {
		bc.URL = stripe.String(cfg.APIURL)
	}
	backends := &stripe.Backends{
		API:     stripe.GetBackendWithConfig(stripe.APIBackend, bc),
		Connect: stripe.GetBackendWithConfig(stripe.ConnectBackend, bc),
		Uploads: stripe.GetBackendWithConfig(stripe.UploadsBackend, bc),
	}
	return &Stripe{api: client.New(cfg.SecretKey, backends)}
}

// Simulated implements Gateway.
func (s *Stripe) Simulated() bool { return false }

// CreateCustomer implements Gateway. The idempotency key makes a retry
// after a lost response return the same customer.
func (s *Stripe) CreateCustomer(ctx context.Context, c CustomerParams) (string, error) {
	p := &stripe.CustomerParams{Email: stripe.String(c.Email)}
	p.Context = ctx
	p.AddMetadata(MetaUserID, strconv.FormatInt(c.UserID, 10))
	p.SetIdempotencyKey("quickscale-customer-" + strconv.FormatInt(c.UserID, 10))
	cust, err := s.api.Customers.New(p)
	if err != nil {
		return "", fmt.Errorf("stripe: create customer: %w", err)
	}
	return cust.ID, nil
}

// UpdateCustomerEmail implements Gateway.
func (s *Stripe) UpdateCustomerEmail(ctx context.Context, customerID, email string) error {
	p := &stripe.CustomerParams{Email: stripe.String(email)}
	p.Context = ctx
	_, err := s.api.Customers.Update(customerID, p)
	var se *stripe.Error
	if errors.As(err, &se) && se.HTTPStatusCode == http.StatusNotFound {
		return fmt.Errorf("stripe: update customer %s: %w (%w)", customerID, ErrCustomerMissing, err)
	}
	if err != nil {
		return fmt.Errorf("stripe: update customer %s: %w", customerID, err)
	}
	return nil
}

// ExpireCheckoutSession implements Gateway. Stripe refuses to expire a
// session that is not open with a 400 (invalid_request_error).
func (s *Stripe) ExpireCheckoutSession(ctx context.Context, id string) error {
	p := &stripe.CheckoutSessionExpireParams{}
	p.Context = ctx
	_, err := s.api.CheckoutSessions.Expire(id, p)
	var se *stripe.Error
	if errors.As(err, &se) && se.HTTPStatusCode == http.StatusBadRequest && se.Type == stripe.ErrorTypeInvalidRequest {
		// Refused: "not open" only if the session says so; any other
		// refusal stays an error of its own.
		gp := &stripe.CheckoutSessionParams{}
		gp.Context = ctx
		if sess, gerr := s.api.CheckoutSessions.Get(id, gp); gerr == nil && sess.Status == stripe.CheckoutSessionStatusExpired {
			return fmt.Errorf("stripe: expire checkout %s: %w", id, ErrCheckoutExpired)
		} else if gerr == nil && sess.Status != stripe.CheckoutSessionStatusOpen {
			return fmt.Errorf("stripe: expire checkout %s: %w (%s)", id, ErrCheckoutNotOpen, sess.Status)
		}
	}
	if err != nil {
		return fmt.Errorf("stripe: expire checkout %s: %w", id, err)
	}
	return nil
}

// Refund implements Gateway with Stripe's refunds API. A refusal (400,
// invalid_request_error: more than is left to refund, a charge refunded
// already) is a *RefundRefusedError with Stripe's message.
func (s *Stripe) Refund(ctx context.Context, r RefundParams) (string, error) {
	p := &stripe.RefundParams{
		PaymentIntent: stripe.String(r.PaymentIntentID),
		Amount:        stripe.Int64(r.AmountMinor),
		Reason:        stripe.String(string(stripe.RefundReasonRequestedByCustomer)),
	}
	p.Context = ctx
	p.AddMetadata(MetaPayment, strconv.FormatInt(r.PaymentID, 10))
	p.AddMetadata(MetaRequest, strconv.FormatInt(r.RequestID, 10))
	p.SetIdempotencyKey(r.IdempotencyKey)
	re, err := s.api.Refunds.New(p)
	var se *stripe.Error
	if errors.As(err, &se) && se.HTTPStatusCode == http.StatusBadRequest && se.Type == stripe.ErrorTypeInvalidRequest {
		return "", &RefundRefusedError{Reason: se.Msg}
	}
	if err != nil {
		return "", fmt.Errorf("stripe: refund %s: %w", r.PaymentIntentID, err)
	}
	if re.ID == "" {
		return "", errors.New("stripe: refund without an id")
	}
	return re.ID, nil
}

// CreateCheckoutSession implements Gateway: a one-off payment for a pack,
// by its synced price when known, else with inline price data.
func (s *Stripe) CreateCheckoutSession(ctx context.Context, cp CheckoutParams) (CheckoutSession, error) {
	item := &stripe.CheckoutSessionLineItemParams{Quantity: stripe.Int64(1)}
	if cp.Pack.StripePriceID != nil && *cp.Pack.StripePriceID != "" {
		item.Price = cp.Pack.StripePriceID
	} else {
		item.PriceData = &stripe.CheckoutSessionLineItemPriceDataParams{
			Currency:    stripe.String(cp.Pack.Currency),
			UnitAmount:  stripe.Int64(cp.Pack.PriceMinor),
			ProductData: &stripe.CheckoutSessionLineItemPriceDataProductDataParams{Name: stripe.String("QuickScale " + cp.Pack.Name)},
		}
	}
	userID := strconv.FormatInt(cp.UserID, 10)
	p := &stripe.CheckoutSessionParams{
		Mode:              stripe.String(string(stripe.CheckoutSessionModePayment)),
		Customer:          stripe.String(cp.CustomerID),
		LineItems:         []*stripe.CheckoutSessionLineItemParams{item},
		SuccessURL:        stripe.String(cp.SuccessURL),
		CancelURL:         stripe.String(cp.CancelURL),
		ClientReferenceID: stripe.String(userID),
		PaymentIntentData: &stripe.CheckoutSessionPaymentIntentDataParams{
			Metadata: map[string]string{MetaUserID: userID, MetaPackCode: cp.Pack.Code},
		},
	}
	p.Context = ctx
	p.AddMetadata(MetaUserID, userID)
	p.AddMetadata(MetaPackCode, cp.Pack.Code)
	if cp.IdempotencyKey != "" {
		p.SetIdempotencyKey(cp.IdempotencyKey)
	}
	sess, err := s.api.CheckoutSessions.New(p)
	if err != nil {
		return CheckoutSession{}, fmt.Errorf("stripe: create checkout session: %w", err)
	}
	if sess.ID == "" || sess.URL == "" {
		return CheckoutSession{}, errors.New("stripe: checkout session without id or url")
	}
	return CheckoutSession{ID: sess.ID, URL: sess.URL}, nil
}

// productID is the fixed Stripe product id of a pack.
func productID(p store.Pack) string { return "quickscale_" + p.Code }

// catalogItem is a pack or a plan as the catalog sync makes it: a product
// of a fixed id and its price, found by lookup key.
type catalogItem struct {
	productID, name, metaKey, code, lookupKey, currency string
	amount, credits                                     int64
	// monthly: the price recurs each month (a plan's).
	monthly bool
}

// SyncCatalog implements Gateway. Products have fixed ids; prices are found
// by lookup key and replaced (moving the lookup key) only when the amount or
// currency changed, since Stripe prices are immutable.
func (s *Stripe) SyncCatalog(ctx context.Context, packs []store.Pack) (map[string]string, error) {
	out := make(map[string]string, len(packs))
	for _, pk := range packs {
		id, err := s.syncItem(ctx, catalogItem{productID: productID(pk), name: "QuickScale " + pk.Name, metaKey: MetaPackCode, code: pk.Code,
			lookupKey: pk.LookupKey, currency: pk.Currency, amount: pk.PriceMinor, credits: pk.Credits})
		if err != nil {
			return out, err
		}
		out[pk.Code] = id
	}
	return out, nil
}

// SyncPlans does for the plans what SyncCatalog does for the packs, with
// monthly prices (products quickscale_plan_basic, …).
func (s *Stripe) SyncPlans(ctx context.Context, plans []store.Plan) (map[string]string, error) {
	out := make(map[string]string, len(plans))
	for _, pl := range plans {
		id, err := s.syncItem(ctx, catalogItem{productID: "quickscale_plan_" + pl.Code, name: "QuickScale " + pl.Name + " plan", metaKey: MetaPlanCode,
			code: pl.Code, lookupKey: pl.LookupKey, currency: pl.Currency, amount: pl.PriceMinor, credits: pl.CreditsPerPeriod, monthly: true})
		if err != nil {
			return out, err
		}
		out[pl.Code] = id
	}
	return out, nil
}

func (s *Stripe) syncItem(ctx context.Context, it catalogItem) (string, error) {
	if err := s.upsertProduct(ctx, it); err != nil {
		return "", err
	}
	lp := &stripe.PriceListParams{LookupKeys: []*string{stripe.String(it.lookupKey)}, Active: stripe.Bool(true)}
	lp.Context = ctx
	var existing *stripe.Price
	iter := s.api.Prices.List(lp)
	for iter.Next() {
		existing = iter.Price()
		break
	}
	if err := iter.Err(); err != nil {
		return "", fmt.Errorf("stripe: list prices of %s: %w", it.code, err)
	}
	recurs := existing != nil && existing.Recurring != nil && existing.Recurring.Interval == stripe.PriceRecurringIntervalMonth && existing.Recurring.IntervalCount <= 1
	if existing != nil && existing.UnitAmount == it.amount && string(existing.Currency) == it.currency &&
		existing.Product != nil && existing.Product.ID == it.productID && recurs == it.monthly {
		return existing.ID, nil
	}
	pp := &stripe.PriceParams{
		Product:           stripe.String(it.productID),
		Currency:          stripe.String(it.currency),
		UnitAmount:        stripe.Int64(it.amount),
		LookupKey:         stripe.String(it.lookupKey),
		TransferLookupKey: stripe.Bool(true),
	}
	key := fmt.Sprintf("quickscale-price-%s-%s-%d", it.code, it.currency, it.amount)
	if it.monthly {
		pp.Recurring = &stripe.PriceRecurringParams{Interval: stripe.String(string(stripe.PriceRecurringIntervalMonth))}
		key = fmt.Sprintf("quickscale-plan-price-%s-%s-%d", it.code, it.currency, it.amount)
	}
	pp.Context = ctx
	pp.AddMetadata(it.metaKey, it.code)
	pp.AddMetadata("credits", strconv.FormatInt(it.credits, 10))
	pp.SetIdempotencyKey(key)
	price, err := s.api.Prices.New(pp)
	if err != nil {
		return "", fmt.Errorf("stripe: create price of %s: %w", it.code, err)
	}
	return price.ID, nil
}

func (s *Stripe) upsertProduct(ctx context.Context, it catalogItem) error {
	gp := &stripe.ProductParams{}
	gp.Context = ctx
	_, err := s.api.Products.Get(it.productID, gp)
	var se *stripe.Error
	switch {
	case err == nil:
		up := &stripe.ProductParams{Name: stripe.String(it.name), Active: stripe.Bool(true)}
		up.Context = ctx
		up.AddMetadata(it.metaKey, it.code)
		if _, err := s.api.Products.Update(it.productID, up); err != nil {
			return fmt.Errorf("stripe: update product %s: %w", it.productID, err)
		}
		return nil
	case errors.As(err, &se) && se.HTTPStatusCode == http.StatusNotFound:
		np := &stripe.ProductParams{ID: stripe.String(it.productID), Name: stripe.String(it.name)}
		np.Context = ctx
		np.AddMetadata(it.metaKey, it.code)
		if _, err := s.api.Products.New(np); err != nil {
			return fmt.Errorf("stripe: create product %s: %w", it.productID, err)
		}
		return nil
	default:
		return fmt.Errorf("stripe: get product %s: %w", it.productID, err)
	}
}

// CreateSubscriptionCheckout implements Gateway: a checkout in subscription
// mode for one plan, by its synced price when known, else with inline
// monthly price data. The subscription carries our reference in its
// metadata, so that its invoices find our record.
func (s *Stripe) CreateSubscriptionCheckout(ctx context.Context, cp SubscriptionCheckoutParams) (CheckoutSession, error) {
	item := &stripe.CheckoutSessionLineItemParams{Quantity: stripe.Int64(1)}
	if cp.Plan.StripePriceID != nil && *cp.Plan.StripePriceID != "" {
		item.Price = cp.Plan.StripePriceID
	} else {
		item.PriceData = &stripe.CheckoutSessionLineItemPriceDataParams{
			Currency:    stripe.String(cp.Plan.Currency),
			UnitAmount:  stripe.Int64(cp.Plan.PriceMinor),
			Recurring:   &stripe.CheckoutSessionLineItemPriceDataRecurringParams{Interval: stripe.String(string(stripe.PriceRecurringIntervalMonth))},
			ProductData: &stripe.CheckoutSessionLineItemPriceDataProductDataParams{Name: stripe.String("QuickScale " + cp.Plan.Name + " plan")},
		}
	}
	userID := strconv.FormatInt(cp.UserID, 10)
	meta := map[string]string{MetaUserID: userID, MetaPlanCode: cp.Plan.Code, MetaSubscriptionRef: cp.Ref}
	p := &stripe.CheckoutSessionParams{
		Mode:              stripe.String(string(stripe.CheckoutSessionModeSubscription)),
		Customer:          stripe.String(cp.CustomerID),
		LineItems:         []*stripe.CheckoutSessionLineItemParams{item},
		SuccessURL:        stripe.String(cp.SuccessURL),
		CancelURL:         stripe.String(cp.CancelURL),
		ClientReferenceID: stripe.String(userID),
		SubscriptionData:  &stripe.CheckoutSessionSubscriptionDataParams{Metadata: meta},
	}
	p.Context = ctx
	for k, v := range meta {
		p.AddMetadata(k, v)
	}
	if cp.IdempotencyKey != "" {
		p.SetIdempotencyKey(cp.IdempotencyKey)
	}
	sess, err := s.api.CheckoutSessions.New(p)
	if err != nil {
		return CheckoutSession{}, fmt.Errorf("stripe: create subscription checkout: %w", err)
	}
	if sess.ID == "" || sess.URL == "" {
		return CheckoutSession{}, errors.New("stripe: checkout session without id or url")
	}
	return CheckoutSession{ID: sess.ID, URL: sess.URL}, nil
}

// SetCancelAtPeriodEnd implements Gateway.
func (s *Stripe) SetCancelAtPeriodEnd(ctx context.Context, subscriptionID string, cancel bool) error {
	p := &stripe.SubscriptionParams{CancelAtPeriodEnd: stripe.Bool(cancel)}
	p.Context = ctx
	if _, err := s.api.Subscriptions.Update(subscriptionID, p); err != nil {
		return fmt.Errorf("stripe: update subscription %s: %w", subscriptionID, subscriptionEnded(err))
	}
	return nil
}

// ChangeSubscriptionPlan implements Gateway: the subscription's one item
// takes the plan's synced price (or inline monthly price data on the
// item's product), with proration_behavior none.
func (s *Stripe) ChangeSubscriptionPlan(ctx context.Context, subscriptionID string, plan store.Plan) error {
	gp := &stripe.SubscriptionParams{}
	gp.Context = ctx
	cur, err := s.api.Subscriptions.Get(subscriptionID, gp)
	if err != nil {
		return fmt.Errorf("stripe: get subscription %s: %w", subscriptionID, subscriptionEnded(err))
	}
	if cur.Items == nil || len(cur.Items.Data) != 1 {
		return fmt.Errorf("stripe: subscription %s does not have one item", subscriptionID)
	}
	item := cur.Items.Data[0]
	ip := &stripe.SubscriptionItemsParams{ID: stripe.String(item.ID)}
	if plan.StripePriceID != nil && *plan.StripePriceID != "" {
		ip.Price = plan.StripePriceID
	} else {
		// The plan's own product (made by stripe sync), so that Stripe's
		// invoices name the plan billed; else the item's (a checkout with
		// inline price data made a product of its own).
		product := "quickscale_plan_" + plan.Code
		pp := &stripe.ProductParams{}
		pp.Context = ctx
		if _, err := s.api.Products.Get(product, pp); err != nil {
			var se *stripe.Error
			if !errors.As(err, &se) || se.HTTPStatusCode != http.StatusNotFound {
				return fmt.Errorf("stripe: get product %s: %w", product, err)
			}
			if item.Price == nil || item.Price.Product == nil || item.Price.Product.ID == "" {
				return fmt.Errorf("stripe: subscription %s: its item names no product", subscriptionID)
			}
			product = item.Price.Product.ID
		}
		ip.PriceData = &stripe.SubscriptionItemPriceDataParams{
			Currency:   stripe.String(plan.Currency),
			Product:    stripe.String(product),
			UnitAmount: stripe.Int64(plan.PriceMinor),
			Recurring:  &stripe.SubscriptionItemPriceDataRecurringParams{Interval: stripe.String(string(stripe.PriceRecurringIntervalMonth))},
		}
	}
	p := &stripe.SubscriptionParams{Items: []*stripe.SubscriptionItemsParams{ip}, ProrationBehavior: stripe.String("none")}
	p.Context = ctx
	p.AddMetadata(MetaPlanCode, plan.Code)
	if _, err := s.api.Subscriptions.Update(subscriptionID, p); err != nil {
		return fmt.Errorf("stripe: change subscription %s to %s: %w", subscriptionID, plan.Code, subscriptionEnded(err))
	}
	return nil
}

// CancelSubscription implements Gateway.
func (s *Stripe) CancelSubscription(ctx context.Context, subscriptionID string) error {
	p := &stripe.SubscriptionCancelParams{}
	p.Context = ctx
	if _, err := s.api.Subscriptions.Cancel(subscriptionID, p); err != nil {
		return fmt.Errorf("stripe: cancel subscription %s: %w", subscriptionID, subscriptionEnded(err))
	}
	return nil
}

// subscriptionEnded tells a change refused because the subscription has
// ended (Stripe: 404 once deleted, or a 400 saying it is canceled) from
// other errors.
func subscriptionEnded(err error) error {
	var se *stripe.Error
	if errors.As(err, &se) && (se.HTTPStatusCode == http.StatusNotFound ||
		(se.HTTPStatusCode == http.StatusBadRequest && strings.Contains(strings.ToLower(se.Msg), "canceled subscription"))) {
		return fmt.Errorf("%w (%w)", ErrSubscriptionEnded, err)
	}
	return err
}
