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
 WHERE s.status = 'canceled' AND s.canceled_at IS NOT NULL
   AND EXISTS (SELECT 1 FROM subscriptions o WHERE o.user_id = s.user_id AND o.id <> s.id AND o.status IN ('active', 'past_due'));
UPDATE payments p
   SET owed_back = CASE WHEN e.outcome_detail LIKE '%deleted the account%' THEN 'deleted_buyer' ELSE 'stopped_plan' END
  FROM stripe_events e
 WHERE p.product = 'subscription' AND p.invoice_id IS NOT NULL
   AND e.type = 'invoice.paid' AND e.outcome = 'failed'
   AND (e.outcome_detail LIKE '%deleted the account%' OR e.outcome_detail LIKE '%which ended here on%')
   AND (e.payload::jsonb #>> '{data,object,id}') = p.invoice_id;
