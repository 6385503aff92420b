-- A live subscription can switch plans from its next renewal: the plan
-- chosen waits in next_* (the provider bills its price from then on, no
-- proration), and the first invoice paid at that price makes it the
-- subscription's plan (plan_code, price and credits then describe the plan
-- now billed; each invoice payment keeps its own plan). Plans of a switch
-- share the subscription's currency.

-- +goose Up
ALTER TABLE subscriptions
    ADD COLUMN next_plan_code          text REFERENCES plans (code),
    ADD COLUMN next_price_minor        bigint CHECK (next_price_minor > 0),
    ADD COLUMN next_credits_per_period bigint CHECK (next_credits_per_period > 0),
    ADD CONSTRAINT subscriptions_next_plan CHECK (
        (next_plan_code IS NULL) = (next_price_minor IS NULL)
        AND (next_plan_code IS NULL) = (next_credits_per_period IS NULL)
        AND next_plan_code IS DISTINCT FROM plan_code);
