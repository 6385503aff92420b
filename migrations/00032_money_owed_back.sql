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

-- +goose Up
ALTER TABLE subscriptions ADD COLUMN stopped_here_at timestamptz;
ALTER TABLE payments ADD COLUMN owed_back text
    CONSTRAINT payments_owed_back_kind CHECK (owed_back IN ('deleted_buyer', 'stopped_plan'));
ALTER TABLE payments ADD CONSTRAINT payments_owed_back_only_invoices CHECK (owed_back IS NULL OR product = 'subscription');
