-- A grant expires at most 100 years after it is made.
--
-- Credits meant to last longer are credits that never expire (no expiry).
-- The bound keeps every expiry a date the JSON API can write (encoding/json
-- refuses years after 9999: GET /api/v1/balance answered 200 with an empty
-- body for a grant an admin had made good through 9999-12-31) and that the
-- pages can count down to (Go's durations end at about 292 years). The
-- admin form, the CLI and store.NewGrant check the same rule first, a day
-- more strictly (store.ExpiryTooFar), and say so in words.
--
-- The rule joins grants_expiry rather than standing as a CHECK of its own:
-- PostgreSQL 15 compiles every CHECK of a table for each statement that
-- writes it, and spends update grants (README, Credits). Calendar years
-- are counted in UTC, so the rule is the same in every session time zone.
--
-- It scans grants to validate the rule while it holds their lock, which
-- keeps spends, grants and balance reads waiting meanwhile: 0.21 s for
-- 1,000,000 grants on the benchmark machine (README, "Credits"). A grant made before it with an expiry further away fails
-- it, nothing applied; README says how to find and fix such grants.

-- +goose Up
ALTER TABLE grants
    DROP CONSTRAINT grants_expiry,
    -- Subscription credits expire, pack credits never do, and nothing
    -- expires before it was granted or more than 100 years after.
    ADD CONSTRAINT grants_expiry CHECK (CASE
        WHEN expires_at IS NULL THEN kind <> 'subscription'
        ELSE kind <> 'pack' AND expires_at > created_at
             AND (expires_at AT TIME ZONE 'UTC') <= (created_at AT TIME ZONE 'UTC') + interval '100 years' END);
