-- Subscription analytics: the admin's analytics page counts the plans that
-- ended over a range of days, by when they ended. Started plans are found
-- through their first invoice payment (payments_paid_at_idx,
-- payments_subscription_idx); live ones through subscriptions_one_live.

-- +goose Up
CREATE INDEX subscriptions_canceled_at_idx ON subscriptions (canceled_at) WHERE canceled_at IS NOT NULL;
