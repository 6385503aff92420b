-- When a payment was last refunded, for its receipt and the payments list.
--
-- The time is Stripe's: the charge.refunded event's creation, not when the
-- worker applied it (after an outage that is hours later); from now on a
-- payment's paid_at is its completing event's creation too, so that the
-- two read in order. Payments refunded before this migration have none
-- (their receipts show the amount without a date). A payment refunded
-- nothing has no refund time, and none is refunded before it was paid.

-- +goose Up
ALTER TABLE payments
    ADD COLUMN refunded_at timestamptz,
    ADD CONSTRAINT payments_refunded_at_needs_a_refund CHECK (refunded_at IS NULL OR amount_refunded_minor > 0),
    ADD CONSTRAINT payments_refunded_after_paid CHECK (refunded_at >= paid_at);
