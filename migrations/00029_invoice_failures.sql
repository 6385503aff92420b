-- Renewals whose payment did not go through (invoice.payment_failed): one
-- row per failed attempt, append-only. The subscription turns past due
-- with its own event; these say what is owed — the amount, the plan it
-- bills (a switch chosen before takes effect with the renewal's invoice,
-- paid or not), the period and when the provider tries again — so that
-- the customer's and support's pages show it, and keep the record once the
-- invoice is paid (a payments row with its invoice_id) or never is.

-- +goose Up
CREATE TABLE invoice_failures (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES subscriptions (id),
    invoice_id      text NOT NULL CHECK (invoice_id <> ''),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    currency        text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- The plan the invoice bills, when its amount is one (NULL: not known).
    plan_code       text REFERENCES plans (code),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    -- Stripe's attempt_count and next_payment_attempt (NULL: no more tries).
    attempt         integer NOT NULL CHECK (attempt > 0),
    next_attempt_at timestamptz,
    -- Stripe's time of the event that said so.
    failed_at       timestamptz NOT NULL,
    stripe_event_id text NOT NULL UNIQUE REFERENCES stripe_events (id),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (period_end > period_start)
);
CREATE INDEX invoice_failures_subscription_idx ON invoice_failures (subscription_id, failed_at, id);
CREATE INDEX invoice_failures_invoice_idx ON invoice_failures (invoice_id);
CREATE TRIGGER invoice_failures_append_only BEFORE UPDATE OR DELETE ON invoice_failures
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER invoice_failures_no_truncate BEFORE TRUNCATE ON invoice_failures
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

