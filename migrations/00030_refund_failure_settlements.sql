-- A refund that failed later (payment_refund_failures) is settled once
-- support has made it good another way — refunded in the provider's
-- dashboard, or the credits given back — and says how. Recorded once per
-- failure, append-only, with who; the customer's receipt then says it was
-- made good instead of asking them to get in touch.

-- +goose Up
CREATE TABLE payment_refund_failure_settlements (
    failure_id    bigint PRIMARY KEY REFERENCES payment_refund_failures (id),
    admin_user_id bigint NOT NULL REFERENCES users (id),
    note          text NOT NULL CHECK (note <> '' AND length(note) <= 2000),
    settled_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER payment_refund_failure_settlements_append_only BEFORE UPDATE OR DELETE ON payment_refund_failure_settlements
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER payment_refund_failure_settlements_no_truncate BEFORE TRUNCATE ON payment_refund_failure_settlements
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
