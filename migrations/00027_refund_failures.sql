-- Refunds that Stripe accepted and that failed later (the customer's card
-- or bank refused them: charge.refund.updated with status failed, or
-- canceled). The
-- refund was recorded when charge.refunded came, its credits taken back;
-- the money did not reach the customer. Support is told (the event is
-- failed with what to do) and the payment's admin pages show it until
-- someone acts. One row per provider refund, append-only.

-- +goose Up
CREATE TABLE payment_refund_failures (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id         bigint NOT NULL REFERENCES payments (id),
    provider_refund_id text NOT NULL UNIQUE CHECK (provider_refund_id <> ''),
    amount_minor       bigint NOT NULL CHECK (amount_minor > 0),
    currency           text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- failed (the card or bank refused it) or canceled.
    status             text NOT NULL CHECK (status IN ('failed', 'canceled')),
    -- Stripe's failure_reason (e.g. expired_or_canceled_card), when given.
    failure_reason     text CHECK (failure_reason <> '' AND length(failure_reason) <= 200),
    -- Stripe's time of the event that said so.
    failed_at          timestamptz NOT NULL,
    stripe_event_id    text NOT NULL UNIQUE REFERENCES stripe_events (id),
    recorded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_refund_failures_payment_idx ON payment_refund_failures (payment_id, id);
CREATE TRIGGER payment_refund_failures_append_only BEFORE UPDATE OR DELETE ON payment_refund_failures
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER payment_refund_failures_no_truncate BEFORE TRUNCATE ON payment_refund_failures
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- The payments simulator fails a refund it made when asked (the admin's
-- refund page offers it), once.
ALTER TABLE simulator_refunds ADD COLUMN failed_at timestamptz;
