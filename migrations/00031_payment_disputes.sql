-- Disputes (chargebacks) of payments: the customer's bank took the money
-- back and asks the merchant to answer (charge.dispute.* events). One row
-- per Stripe dispute, holding its latest state: the status moves on only
-- with a later event, never out of a final state (won, lost,
-- warning_closed), and what the dispute is of never changes. Nothing is
-- undone by itself: support is told (the event is failed with what to
-- do) and the payment's admin pages show it.

-- +goose Up
CREATE TABLE payment_disputes (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id        bigint NOT NULL REFERENCES payments (id),
    stripe_dispute_id text NOT NULL UNIQUE CHECK (stripe_dispute_id <> '' AND length(stripe_dispute_id) <= 255),
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    currency          text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    -- Stripe's reason (fraudulent, product_not_received, …).
    reason            text NOT NULL CHECK (reason <> '' AND length(reason) <= 100),
    status            text NOT NULL CHECK (status IN ('warning_needs_response', 'warning_under_review', 'warning_closed',
                                                      'needs_response', 'under_review', 'won', 'lost')),
    -- When the evidence is due at Stripe (none once answered or closed).
    evidence_due_by   timestamptz,
    -- Stripe's time the dispute was opened, and of the event that set its status.
    opened_at         timestamptz NOT NULL,
    status_at         timestamptz NOT NULL CHECK (status_at >= opened_at),
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_disputes_payment_idx ON payment_disputes (payment_id, id);

-- +goose StatementBegin
CREATE FUNCTION payment_disputes_move_on() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payment_id <> OLD.payment_id OR NEW.stripe_dispute_id <> OLD.stripe_dispute_id
       OR NEW.currency <> OLD.currency OR NEW.opened_at <> OLD.opened_at THEN
        RAISE EXCEPTION 'dispute %: what it is of never changes', OLD.stripe_dispute_id USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status_at < OLD.status_at THEN
        RAISE EXCEPTION 'dispute %: its state only moves on with a later event', OLD.stripe_dispute_id USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.status IN ('won', 'lost', 'warning_closed') AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'dispute %: it is closed (%)', OLD.stripe_dispute_id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER payment_disputes_move_on BEFORE UPDATE ON payment_disputes
    FOR EACH ROW EXECUTE FUNCTION payment_disputes_move_on();
CREATE TRIGGER payment_disputes_no_delete BEFORE DELETE ON payment_disputes
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER payment_disputes_no_truncate BEFORE TRUNCATE ON payment_disputes
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
