-- Two rules the code relied on without a constraint, found by exploratory
-- testing on 2026-11-26:
--
-- 1. A grant is at most 1,000,000,000 credits. The admin form capped it,
--    the CLI did not: one grant of 2^63-1 credits made the user's balance
--    (a sum of grants) overflow, and every later grant, spend and the
--    liability gauge failed. The cap is on the amount's domain, checked
--    when an amount is written (a CHECK on the table would be re-checked
--    by every spend's update of the grant). NOT VALID: a database that
--    already holds such a grant still migrates; the rule holds for every
--    grant from now on.
--
-- 2. An admin adjustment sent twice with the same form nonce is applied
--    once. Additions were kept once by their grant's unique source, but
--    removals (drawn like a spend, no grant) were applied again, and a
--    nonce reused with other values was reported as applied when nothing
--    was. credit_adjustments records each keyed adjustment; the key is the
--    user's, unique, and the row is never changed, so a second submission
--    can be recognised as the same (replayed) or a different one (refused).

-- +goose Up
ALTER DOMAIN credits_positive ADD CONSTRAINT credits_positive_cap CHECK (VALUE <= 1000000000) NOT VALID;

CREATE TABLE credit_adjustments (
    user_id    bigint      NOT NULL REFERENCES accounts (user_id),
    key        text        NOT NULL CHECK (key <> '' AND length(key) <= 100),
    delta      bigint      NOT NULL CHECK (delta <> 0 AND delta BETWEEN -1000000000 AND 1000000000),
    kind       ledger_grant_kind NOT NULL,
    expires_at timestamptz,
    reason     nonempty_text NOT NULL,
    actor_user_id bigint   REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE TRIGGER credit_adjustments_append_only BEFORE UPDATE OR DELETE ON credit_adjustments
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- +goose Down
DROP TABLE credit_adjustments;
ALTER DOMAIN credits_positive DROP CONSTRAINT credits_positive_cap;
