-- A receipt says what was billed, to whom, and every refund of it.
--
-- 1. The buyer's address as it was when the checkout began: a receipt
--    showed the account's current address,
--    so after a change of email an old receipt named an address the
--    purchase was never billed to. Payments recorded before this
--    migration take the address their buyer has now (the best known).
--    Deleting an account clears it, as it clears the user's (payments
--    stay, without the address); a payment of a live account always has
--    one, and a deleted one's none. Both are enforced here, at commit,
--    whatever writes the rows.
--
-- 2. One row per refund: payments kept only the refunded total and the
--    latest refund's time, so a receipt of a payment refunded twice
--    showed one sum and one date. Each refund recorded from now on is a
--    row with its amount, the credits it took back (or could not), Stripe's
--    time of it and the event that brought it. Refunds recorded before this
--    migration become one row per payment with their totals and the time
--    00020 kept (none for refunds recorded before 00020). The rows are
--    append-only, and at commit a payment's totals must equal the sums of
--    its rows.

-- +goose Up
ALTER TABLE payments
    ADD COLUMN buyer_email text CONSTRAINT payments_buyer_email_not_blank CHECK (buyer_email <> '');
UPDATE payments p SET buyer_email = u.email FROM users u WHERE u.id = p.user_id AND u.email IS NOT NULL;

-- +goose StatementBegin
CREATE FUNCTION payments_buyer_email_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'payments' THEN
        -- A payment row has the address exactly while its buyer is live.
        IF (NEW.buyer_email IS NULL) = EXISTS (
               SELECT 1 FROM users u WHERE u.id = NEW.user_id AND u.deleted_at IS NULL) THEN
            RAISE EXCEPTION 'payment %: buyer_email must be kept while its buyer (user %) is live and only then', NEW.id, NEW.user_id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_buyer_email_kept';
        END IF;
    ELSE
        -- A deleted user: none of their payments keeps the address.
        IF NEW.deleted_at IS NOT NULL AND EXISTS (
               SELECT 1 FROM payments p WHERE p.user_id = NEW.id AND p.buyer_email IS NOT NULL) THEN
            RAISE EXCEPTION 'user % is deleted but payments still hold their address', NEW.id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_buyer_email_erased';
        END IF;
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE CONSTRAINT TRIGGER payments_buyer_email_kept AFTER INSERT OR UPDATE OF buyer_email, user_id ON payments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION payments_buyer_email_check();
CREATE CONSTRAINT TRIGGER payments_buyer_email_erased AFTER UPDATE OF deleted_at ON users
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.deleted_at IS NOT NULL) EXECUTE FUNCTION payments_buyer_email_check();

CREATE TABLE payment_refunds (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id      bigint NOT NULL REFERENCES payments (id),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    -- Credits this refund took back, and those it should have but that were
    -- gone (spent, removed or forfeited).
    credits_taken   bigint NOT NULL CHECK (credits_taken >= 0),
    credits_short   bigint NOT NULL CHECK (credits_short >= 0),
    -- Stripe's time of the refund; none for refunds recorded before 00020.
    refunded_at     timestamptz,
    -- The charge.refunded event that recorded it; none for rows made by
    -- this migration.
    stripe_event_id text UNIQUE REFERENCES stripe_events (id),
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_refunds_payment_idx ON payment_refunds (payment_id, id);
CREATE TRIGGER payment_refunds_append_only BEFORE UPDATE OR DELETE ON payment_refunds
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER payment_refunds_no_truncate BEFORE TRUNCATE ON payment_refunds
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

INSERT INTO payment_refunds (payment_id, amount_minor, credits_taken, credits_short, refunded_at)
SELECT id, amount_refunded_minor, credits_clawed_back, clawback_shortfall, refunded_at
  FROM payments WHERE amount_refunded_minor > 0 ORDER BY id;

-- +goose StatementBegin
CREATE FUNCTION payment_refunds_sum_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_payment bigint;
    v_bad     boolean;
BEGIN
    -- (Two branches: a record's field is looked up when reached.)
    IF TG_TABLE_NAME = 'payments' THEN
        v_payment := NEW.id;
    ELSE
        v_payment := NEW.payment_id;
    END IF;
    SELECT p.amount_refunded_minor <> coalesce(r.amount, 0)
        OR p.credits_clawed_back <> coalesce(r.taken, 0)
        OR p.clawback_shortfall <> coalesce(r.short, 0)
      INTO v_bad
      FROM payments p
      LEFT JOIN (SELECT sum(amount_minor) AS amount, sum(credits_taken) AS taken, sum(credits_short) AS short
                   FROM payment_refunds WHERE payment_id = v_payment) r ON true
     WHERE p.id = v_payment;
    IF v_bad THEN
        RAISE EXCEPTION 'payment %: its refunded totals differ from the sums of its refunds', v_payment
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payment_refunds_add_up';
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE CONSTRAINT TRIGGER payment_refunds_add_up AFTER INSERT ON payment_refunds
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION payment_refunds_sum_check();
CREATE CONSTRAINT TRIGGER payments_refunds_add_up
    AFTER INSERT OR UPDATE OF amount_refunded_minor, credits_clawed_back, clawback_shortfall ON payments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION payment_refunds_sum_check();
