-- What the worker decides about an invoice paid that was not the
-- customer's to pay, kept where re-processing can read it (it used to be
-- worked out again from the state of the day, and could change its mind):
--
-- subscriptions.stopped_here_at: when a second live plan was ended here at
-- once (endIfDuplicate). Stripe may go on billing it should its
-- cancellation never get through; an invoice for a period from then on is
-- a renewal the customer does not owe, whatever their other plan does.
--
-- payments.owed_back: why a paid invoice's money is the customer's due —
-- paid after its buyer deleted the account, or renewing a plan stopped
-- here — set when it is recorded; none for an ordinary payment.
--
-- Rows from before are marked from what the worker worked out then: a
-- plan canceled while another of its user's plans is live was stopped
-- here (the rule the worker applied at each renewal); a paid invoice
-- whose invoice.paid event failed for either reason is owed back.

-- +goose Up
ALTER TABLE subscriptions ADD COLUMN stopped_here_at timestamptz;
ALTER TABLE payments ADD COLUMN owed_back text
    CONSTRAINT payments_owed_back_kind CHECK (owed_back IN ('deleted_buyer', 'stopped_plan'));
ALTER TABLE payments ADD CONSTRAINT payments_owed_back_only_invoices CHECK (owed_back IS NULL OR product = 'subscription');

UPDATE subscriptions s SET stopped_here_at = s.canceled_at
 WHERE s.status = 'canceled' AND s.canceled_at IS NOT NULL AND s.stripe_subscription_id IS NOT NULL
   AND (EXISTS (SELECT 1 FROM subscriptions o WHERE o.user_id = s.user_id AND o.id <> s.id AND o.status IN ('active', 'past_due'))
        -- Or its events say the worker ended it at once (its user's other
        -- plan may have ended since). Payloads are read as text: jsonb
        -- would refuse some that Stripe may send (a \u0000 in a string).
        OR EXISTS (SELECT 1 FROM stripe_events e
                    WHERE e.outcome_detail LIKE '%so this one was ended at once%'
                      AND (strpos(e.payload, '"' || s.stripe_subscription_id || '"') > 0
                           OR e.outcome_detail LIKE 'subscription ' || s.id || ': %')));
-- The whole of an event's history counts (re-processing appends to
-- outcome_detail): a renewal flagged, then settled by a refund, is still
-- owed back should that refund fail. A deleted buyer's only when it was
-- paid after the deletion (an earlier worker also failed re-processed
-- payments made while the account was live); a stopped plan's only for a
-- period from its stop.
UPDATE payments p
   SET owed_back = CASE WHEN e.outcome_detail LIKE '%which ended here on%' AND s.stopped_here_at IS NOT NULL
                             AND p.period_start >= s.stopped_here_at THEN 'stopped_plan' ELSE 'deleted_buyer' END
  FROM stripe_events e, subscriptions s, users u
 WHERE p.product = 'subscription' AND p.invoice_id IS NOT NULL
   AND s.id = p.subscription_id AND u.id = p.user_id
   AND e.type = 'invoice.paid' AND strpos(e.payload, '"' || p.invoice_id || '"') > 0
   AND ((e.outcome_detail LIKE '%which ended here on%' AND s.stopped_here_at IS NOT NULL AND p.period_start >= s.stopped_here_at)
        OR (e.outcome_detail LIKE '%deleted the account%' AND u.deleted_at IS NOT NULL
            AND p.paid_at >= date_trunc('second', u.deleted_at)));
