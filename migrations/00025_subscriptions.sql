-- Subscriptions: monthly plans (Basic, Pro) sold through Stripe Checkout in
-- subscription mode. Each paid invoice is a payment (its receipt, its
-- refunds, its revenue) and grants the plan's credits as a subscription
-- grant that expires at the end of the period the invoice paid for.
--
-- A subscriptions row is recorded when its checkout is opened (who, which
-- plan, at what price: fulfilment trusts this row, not an event's
-- metadata), and follows Stripe's subscription from its events, never
-- backwards (state_at is Stripe's time of the latest event applied).

-- +goose Up
CREATE TABLE plans (
    code               text PRIMARY KEY CHECK (code ~ '^[a-z0-9_]{1,32}$'),
    name               text NOT NULL CHECK (name <> ''),
    credits_per_period bigint NOT NULL CHECK (credits_per_period > 0),
    price_minor        bigint NOT NULL CHECK (price_minor > 0),
    currency           text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    lookup_key         text NOT NULL UNIQUE CHECK (lookup_key <> ''),
    stripe_price_id    text,
    active             boolean NOT NULL DEFAULT true,
    sort               integer NOT NULL DEFAULT 0
);
INSERT INTO plans (code, name, credits_per_period, price_minor, currency, lookup_key, sort) VALUES
    ('basic', 'Basic', 1000, 1500, 'usd', 'quickscale_plan_basic', 1),
    ('pro',   'Pro',   2500, 3000, 'usd', 'quickscale_plan_pro',   2);

CREATE TABLE subscriptions (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                bigint NOT NULL REFERENCES users (id),
    plan_code              text NOT NULL REFERENCES plans (code),
    -- What was sold, as it was when the checkout opened.
    credits_per_period     bigint NOT NULL CHECK (credits_per_period > 0),
    price_minor            bigint NOT NULL CHECK (price_minor > 0),
    currency               text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- checkout: opened, not completed; abandoned: its checkout expired
    -- unpaid; active, past_due (a renewal failed; Stripe retries) and
    -- canceled follow Stripe's subscription.
    status                 text NOT NULL DEFAULT 'checkout'
                           CHECK (status IN ('checkout', 'abandoned', 'active', 'past_due', 'canceled')),
    checkout_session_id    text NOT NULL UNIQUE CHECK (checkout_session_id <> ''),
    checkout_url           text,
    -- Put in the Stripe subscription's metadata, so that its invoices find
    -- this row even before checkout.session.completed is applied.
    checkout_ref           text NOT NULL UNIQUE CHECK (checkout_ref ~ '^[A-Za-z0-9_-]{8,64}$'),
    customer_id            text NOT NULL CHECK (customer_id <> ''),
    stripe_subscription_id text UNIQUE CHECK (stripe_subscription_id <> ''),
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    canceled_at            timestamptz,
    state_at               timestamptz,
    -- When the user last changed cancel_at_period_end here (whole
    -- seconds): the provider's events of that second or before do not
    -- change it back (its times are whole seconds, so a Cancel and a Keep
    -- within one second could otherwise apply in either order).
    renewal_set_at         timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_started_has_id CHECK (status IN ('checkout', 'abandoned') OR stripe_subscription_id IS NOT NULL),
    CONSTRAINT subscriptions_period CHECK (
        (current_period_start IS NULL) = (current_period_end IS NULL) AND current_period_end > current_period_start),
    CONSTRAINT subscriptions_canceled_at CHECK ((status = 'canceled') = (canceled_at IS NOT NULL))
);
-- One live subscription a user: a second one's activation is refused.
CREATE UNIQUE INDEX subscriptions_one_live ON subscriptions (user_id) WHERE status IN ('active', 'past_due');
CREATE INDEX subscriptions_user_idx ON subscriptions (user_id, id);

-- A paid invoice is a payment: product 'subscription', no checkout
-- session of its own (the first invoice's checkout is the subscription's).
ALTER TABLE payments ALTER COLUMN checkout_session_id DROP NOT NULL;
ALTER TABLE payments DROP CONSTRAINT payments_product_check;
ALTER TABLE payments
    ADD CONSTRAINT payments_product_check CHECK (product IN ('pack', 'subscription')),
    ADD COLUMN plan_code text REFERENCES plans (code),
    ADD COLUMN subscription_id bigint REFERENCES subscriptions (id),
    ADD COLUMN invoice_id text UNIQUE CHECK (invoice_id <> ''),
    ADD COLUMN period_start timestamptz,
    ADD COLUMN period_end timestamptz,
    ADD CONSTRAINT payments_pack_has_session CHECK (product <> 'pack' OR checkout_session_id IS NOT NULL),
    ADD CONSTRAINT payments_subscription_has_invoice CHECK (product <> 'subscription' OR (
        invoice_id IS NOT NULL AND subscription_id IS NOT NULL AND plan_code IS NOT NULL AND
        checkout_session_id IS NULL AND period_end > period_start)),
    ADD CONSTRAINT payments_invoice_only_subscription CHECK (product = 'subscription' OR (
        invoice_id IS NULL AND subscription_id IS NULL AND plan_code IS NULL AND period_start IS NULL AND period_end IS NULL));
CREATE INDEX payments_subscription_idx ON payments (subscription_id, id) WHERE subscription_id IS NOT NULL;

-- The simulator: a checkout in subscription mode, its subscriptions (with
-- a clock that support can advance), and each invoice's charge kept as a
-- session of mode 'invoice' so that refunds work on it as on a pack's.
ALTER TABLE simulator_sessions
    ADD COLUMN mode text NOT NULL DEFAULT 'payment' CHECK (mode IN ('payment', 'subscription', 'invoice')),
    ADD COLUMN subscription_id text;

CREATE TABLE simulator_subscriptions (
    id                   text PRIMARY KEY,
    user_id              bigint NOT NULL REFERENCES users (id),
    customer_id          text NOT NULL,
    session_id           text NOT NULL UNIQUE REFERENCES simulator_sessions (id),
    amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
    currency             text NOT NULL,
    description          text NOT NULL,
    metadata             jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- past_due: its renewal's invoice failed (open_invoice_id), until
    -- it is paid or the retries run out (support's clock button).
    status               text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'past_due', 'canceled')),
    open_invoice_id      text REFERENCES simulator_sessions (id),
    current_period_start timestamptz NOT NULL,
    current_period_end   timestamptz NOT NULL,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    canceled_at          timestamptz,
    invoices             integer NOT NULL DEFAULT 0 CHECK (invoices >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (current_period_end > current_period_start),
    CHECK ((status = 'past_due') = (open_invoice_id IS NOT NULL))
);
CREATE INDEX simulator_subscriptions_due_idx ON simulator_subscriptions (current_period_end) WHERE status = 'active';
