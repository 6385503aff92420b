-- Short sweep batches in one round trip.
--
-- The expiry sweep shares the database with spends. Measured on the 2-core
-- benchmark machine (README, "A fifth measurement day"), what decides the
-- spends' p99 while it runs is how long each of its statements keeps a
-- core: a plain CPU load with the sweep's duty cycle raised consume p99 to
-- 3.0x its idle value when it ran in 50 ms bursts and to 1.5x in 1 ms
-- bursts. The sweep now runs many small batches, each a single statement
-- in a transaction of its own (no BEGIN, SET, COMMIT round trips), so
-- ledger_expire_due sets what the store used to set with SET LOCAL:
--
-- * synchronous_commit = off, for the calling transaction: a sweep lost in
--   a crash is simply redone, and balances exclude overdue grants whether
--   or not they were swept;
-- * its statements are planned once (plan_cache_mode), not on every call;
-- * it starts where the previous batch of the same sweep stopped (p_after,
--   the latest expiry that batch closed, returned as last_expiry). The
--   index of open expiring grants keeps an entry for every grant swept
--   until vacuum removes it, and each batch used to walk over all of them
--   from the start: the cost of a batch grew with what the sweep had done
--   already, and small batches made the sweep quadratic. A grant created
--   during a sweep with an expiry before where the sweep stands is left to
--   the next sweep.
--
-- Otherwise as in 00005.

-- +goose Up
-- +goose StatementBegin
DROP FUNCTION ledger_expire_due(integer);
CREATE FUNCTION ledger_expire_due(p_max_grants integer, p_after timestamptz DEFAULT NULL)
RETURNS TABLE (kind text, users bigint, grants bigint, credits bigint, last_expiry timestamptz)
LANGUAGE plpgsql
SET quickscale.ledger = 'on'
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_users bigint[];
    v_last  timestamptz;
    v_ignored text;
BEGIN
    v_ignored := set_config('synchronous_commit', 'off', true);
    SELECT array_agg(DISTINCT d.user_id ORDER BY d.user_id), max(d.expires_at) INTO v_users, v_last
      FROM (SELECT g.user_id, g.expires_at FROM grants g
             WHERE g.closed_at IS NULL AND g.expires_at IS NOT NULL AND g.expires_at <= now()
               AND g.expires_at >= coalesce(p_after, '-infinity')
             ORDER BY g.expires_at
             LIMIT p_max_grants) d;
    IF v_users IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.user_id = ANY (v_users) ORDER BY a.user_id FOR UPDATE;
    RETURN QUERY
    WITH due AS (
        SELECT g.id, g.user_id, g.kind, g.remaining
          FROM grants g
         WHERE g.user_id = ANY (v_users) AND g.closed_at IS NULL
           AND g.expires_at IS NOT NULL AND g.expires_at <= now()
         ORDER BY g.id
           FOR UPDATE
    ), closed AS (
        UPDATE grants g SET remaining = 0, closed_at = now() FROM due WHERE g.id = due.id
    ), e AS (
        INSERT INTO ledger_entries (user_id, grant_id, kind, amount)
        SELECT due.user_id, due.id, 'expire', -due.remaining FROM due
    )
    SELECT due.kind::text, count(DISTINCT due.user_id), count(*), sum(due.remaining)::bigint, v_last
      FROM due GROUP BY due.kind;
END;
$$;
-- +goose StatementEnd
