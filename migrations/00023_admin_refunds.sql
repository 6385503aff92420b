-- Support refunds a payment from its admin page.
--
-- A refund request is recorded (with the audit entry) before the provider
-- is asked, under a key from the form: the form sent twice, or a request
-- whose answer was lost and is sent again, asks the provider with the same
-- idempotency key and gets the same refund, never a second one (Stripe
-- keeps a key for 24 hours; the page does not ask again after 23, and
-- support closes such a request after checking Stripe's dashboard). The money
-- and the credits move only when the provider's charge.refunded event comes
-- back through the webhook pipeline, as for a refund made in Stripe's
-- dashboard; the request row says what was asked, by whom and why, and
-- what the provider answered.
--
-- The payments simulator keeps what it refunded of each checkout, and each
-- refund under its key, so that it answers a key it saw with the refund it
-- made and never refunds more than was paid.

-- +goose Up
CREATE TABLE refund_requests (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id         bigint NOT NULL REFERENCES payments (id),
    admin_id           bigint NOT NULL REFERENCES users (id),
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    -- What the payment had refunded when this was asked: once its refunded
    -- total reaches this plus amount_minor, the refund asked is (most
    -- likely) the one recorded, and the form stops counting it as waiting.
    refunded_before_minor bigint NOT NULL CHECK (refunded_before_minor >= 0),
    reason             text NOT NULL CHECK (btrim(reason) <> '' AND length(reason) <= 500),
    idempotency_key    text NOT NULL UNIQUE CHECK (idempotency_key <> ''),
    -- closed: left without an answer by support after checking the
    -- provider's dashboard (a request too old to ask again safely).
    status             text NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'accepted', 'refused', 'closed')),
    provider_refund_id text CHECK (provider_refund_id <> ''),
    refusal            text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    answered_at        timestamptz,
    CONSTRAINT refund_requests_answer CHECK (
        (status = 'requested' AND provider_refund_id IS NULL AND refusal IS NULL AND answered_at IS NULL) OR
        (status = 'accepted' AND provider_refund_id IS NOT NULL AND refusal IS NULL AND answered_at IS NOT NULL) OR
        (status IN ('refused', 'closed') AND provider_refund_id IS NULL AND coalesce(refusal, '') <> '' AND answered_at IS NOT NULL))
);
CREATE INDEX refund_requests_payment_idx ON refund_requests (payment_id, id);

ALTER TABLE simulator_sessions
    ADD COLUMN amount_refunded_minor bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT simulator_sessions_refund_within_amount CHECK (amount_refunded_minor BETWEEN 0 AND amount_minor),
    ADD CONSTRAINT simulator_sessions_refund_only_paid CHECK (amount_refunded_minor = 0 OR payment_status = 'paid');

CREATE TABLE simulator_refunds (
    id              text PRIMARY KEY,
    session_id      text NOT NULL REFERENCES simulator_sessions (id),
    idempotency_key text NOT NULL UNIQUE CHECK (idempotency_key <> ''),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
