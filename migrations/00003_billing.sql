-- Stripe billing: the credit-pack catalog, customers, payments and the
-- durable store of webhook events; plus the local simulator's sessions.

-- +goose Up
CREATE TABLE credit_packs (
    code            text PRIMARY KEY CHECK (code ~ '^[a-z0-9_]{1,32}$'),
    name            text NOT NULL CHECK (name <> ''),
    credits         bigint NOT NULL CHECK (credits > 0),
    price_minor     bigint NOT NULL CHECK (price_minor > 0),
    currency        text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    lookup_key      text NOT NULL UNIQUE CHECK (lookup_key <> ''),
    -- Filled by `quickscale stripe sync`; checkout falls back to inline
    -- price data when it is empty.
    stripe_price_id text,
    active          boolean NOT NULL DEFAULT true,
    sort            integer NOT NULL DEFAULT 0
);
INSERT INTO credit_packs (code, name, credits, price_minor, currency, lookup_key, sort) VALUES
    ('pack_100',  '100 credits',   100,  500, 'usd', 'quickscale_pack_100',  1),
    ('pack_500',  '500 credits',   500, 2000, 'usd', 'quickscale_pack_500',  2),
    ('pack_1000', '1,000 credits', 1000, 3500, 'usd', 'quickscale_pack_1000', 3);

CREATE TABLE stripe_customers (
    user_id     bigint PRIMARY KEY REFERENCES users (id),
    customer_id text NOT NULL UNIQUE CHECK (customer_id <> ''),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id               bigint NOT NULL REFERENCES users (id),
    product               text NOT NULL CHECK (product IN ('pack')),
    pack_code             text REFERENCES credit_packs (code),
    credits               bigint NOT NULL CHECK (credits > 0),
    amount_minor          bigint NOT NULL CHECK (amount_minor > 0),
    currency              text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    status                text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'succeeded', 'failed', 'expired', 'partially_refunded', 'refunded')),
    -- What was recorded when the checkout session was created; fulfilment
    -- trusts this row, not the event's metadata.
    checkout_session_id   text NOT NULL UNIQUE CHECK (checkout_session_id <> ''),
    checkout_url          text,
    customer_id           text,
    payment_intent_id     text UNIQUE,
    grant_id              bigint REFERENCES grants (id),
    amount_refunded_minor bigint NOT NULL DEFAULT 0,
    credits_clawed_back   bigint NOT NULL DEFAULT 0 CHECK (credits_clawed_back >= 0),
    -- Credits a refund should have taken back but that were already spent.
    clawback_shortfall    bigint NOT NULL DEFAULT 0 CHECK (clawback_shortfall >= 0),
    failure_reason        text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    paid_at               timestamptz,
    CONSTRAINT payments_refund_within_amount CHECK (amount_refunded_minor BETWEEN 0 AND amount_minor),
    CONSTRAINT payments_clawback_within_credits CHECK (credits_clawed_back + clawback_shortfall <= credits),
    CONSTRAINT payments_paid_has_grant CHECK (
        status NOT IN ('succeeded', 'partially_refunded', 'refunded') OR (grant_id IS NOT NULL AND paid_at IS NOT NULL)),
    CONSTRAINT payments_refund_status CHECK (
        (status = 'refunded') = (amount_refunded_minor = amount_minor) AND
        (status = 'partially_refunded') = (amount_refunded_minor > 0 AND amount_refunded_minor < amount_minor)),
    CONSTRAINT payments_pack_has_code CHECK (product <> 'pack' OR pack_code IS NOT NULL)
);
CREATE INDEX payments_user_idx ON payments (user_id, id);
CREATE UNIQUE INDEX payments_grant_key ON payments (grant_id) WHERE grant_id IS NOT NULL;

-- Every verified Stripe event, stored before it is acknowledged.
CREATE TABLE stripe_events (
    id             text PRIMARY KEY CHECK (id <> ''),
    type           text NOT NULL,
    api_version    text NOT NULL DEFAULT '',
    livemode       boolean NOT NULL DEFAULT false,
    created        timestamptz NOT NULL,
    -- The body exactly as Stripe signed it. Text, not jsonb: ingest must be
    -- cheap, and the worker parses it anyway. Validated as JSON on receipt.
    payload        text COMPRESSION lz4 NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    outcome        text CHECK (outcome IN ('applied', 'ignored', 'failed')),
    outcome_detail text,
    processed_at   timestamptz,
    attempts       integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    CHECK ((outcome IS NULL) = (processed_at IS NULL))
);
CREATE INDEX stripe_events_received_idx ON stripe_events (received_at DESC, id);
CREATE INDEX stripe_events_type_idx ON stripe_events (type, received_at DESC);
-- Only events that need a look are indexed by outcome (the admin filter for
-- "failed" or "pending"); applied and ignored ones are the bulk.
CREATE INDEX stripe_events_attention_idx ON stripe_events (received_at DESC)
    WHERE outcome IS NULL OR outcome = 'failed';

-- The payments simulator's checkout sessions (used only without a Stripe key).
CREATE TABLE simulator_sessions (
    id                text PRIMARY KEY,
    user_id           bigint NOT NULL REFERENCES users (id),
    customer_id       text NOT NULL,
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    currency          text NOT NULL,
    description       text NOT NULL,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    success_url       text NOT NULL,
    cancel_url        text NOT NULL,
    status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'complete', 'expired')),
    payment_status    text NOT NULL DEFAULT 'unpaid' CHECK (payment_status IN ('unpaid', 'paid')),
    payment_intent_id text NOT NULL UNIQUE,
    created_at        timestamptz NOT NULL DEFAULT now()
);
