-- Subscription analytics: the admin's analytics page counts the plans that
-- ended over a range of days, by when they ended, and the plans started,
-- by their first invoice payment: a range's payments (payments_paid_at_idx)
-- each checked for an earlier one of its subscription, found by
-- subscription and time. Live ones are found through subscriptions_one_live.

-- +goose Up
CREATE INDEX subscriptions_canceled_at_idx ON subscriptions (canceled_at) WHERE canceled_at IS NOT NULL;
CREATE INDEX payments_subscription_paid_idx ON payments (subscription_id, paid_at, id) WHERE subscription_id IS NOT NULL;
