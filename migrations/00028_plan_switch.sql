-- A live subscription can switch plans from its next renewal: the plan
-- chosen waits in next_* (the provider bills its price from then on, no
-- proration). Each paid invoice is fulfilled as the plan its amount paid
-- for, which becomes the subscription's plan (plan_code, price and credits
-- describe the plan billed last; each invoice payment keeps its own plan);
-- next_* then holds the plan chosen for the renewals after it, if it is
-- another. Only a live subscription has a next plan.

-- +goose Up
ALTER TABLE subscriptions
    ADD COLUMN next_plan_code          text REFERENCES plans (code),
    ADD COLUMN next_price_minor        bigint CHECK (next_price_minor > 0),
    ADD COLUMN next_credits_per_period bigint CHECK (next_credits_per_period > 0),
    ADD CONSTRAINT subscriptions_next_plan CHECK (
        (next_plan_code IS NULL) = (next_price_minor IS NULL)
        AND (next_plan_code IS NULL) = (next_credits_per_period IS NULL)
        AND (next_plan_code, next_price_minor) IS DISTINCT FROM (plan_code, price_minor)
        AND (next_plan_code IS NULL OR status IN ('active', 'past_due')));
