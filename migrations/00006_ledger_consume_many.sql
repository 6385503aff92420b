-- Several spends in one call (and so one transaction and one round trip):
-- the store gathers spends that arrive while its lanes are busy
-- (store.Batcher) and runs them together. Each is exactly ledger_consume,
-- with the same answers; they run in user order (the lock order: anything
-- touching two users locks them in user-id order), and in arrival order
-- for one user. A spend that raises fails the whole call, and so does a
-- wait of more than 100 ms for an account lock (lock_timeout), so that a
-- batch never holds up the spends queued behind it for long; the store
-- then runs that batch's spends one by one, outside its lanes.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION ledger_consume_many(p_user_ids bigint[], p_service_slugs text[], p_idempotency_keys text[],
                                    p_fingerprints text[], p_api_key_ids bigint[])
RETURNS TABLE (ord integer, status text, usage_id bigint, service_slug text, credits bigint, balance bigint,
               drawn jsonb, created_at timestamptz)
LANGUAGE plpgsql
SET lock_timeout = '100ms'
AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    IF cardinality(p_service_slugs) <> cardinality(p_user_ids)
       OR cardinality(p_idempotency_keys) <> cardinality(p_user_ids)
       OR cardinality(p_fingerprints) <> cardinality(p_user_ids)
       OR cardinality(p_api_key_ids) <> cardinality(p_user_ids) THEN
        RAISE EXCEPTION 'ledger_consume_many: arrays of different lengths' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR r IN SELECT u.user_id, u.i FROM unnest(p_user_ids) WITH ORDINALITY AS u(user_id, i) ORDER BY u.user_id, u.i LOOP
        RETURN QUERY
            SELECT r.i::integer, c.status, c.usage_id, c.service_slug, c.credits, c.balance, c.drawn, c.created_at
              FROM ledger_consume(r.user_id, p_service_slugs[r.i], p_idempotency_keys[r.i], p_fingerprints[r.i],
                                  p_api_key_ids[r.i]) c;
    END LOOP;
END;
$$;
-- +goose StatementEnd

