-- Rules the code relied on that the schema did not hold (found by an
-- audit that wrote to the tables directly, as the application's role):
--
-- * A grant or a usage inserted outside the ledger functions was accepted:
--   a grant without its entry raised the balance, a usage without entries
--   answered later spends with its key as "replayed" without drawing
--   anything. Both are now refused unless quickscale.ledger is on, as
--   entries and grant updates already were. Checked per row, as entries
--   are (the trigger function runs only when the switch is off): a
--   statement-level check would run before a statement's own
--   set_config(), which the test factories use. ledger_grant now turns the
--   switch on before inserting its grant.
-- * credit_adjustments (the keys of admin adjustments, "never changed")
--   could be emptied with TRUNCATE.
-- * A payment could name another user's grant (a refund of it would have
--   clawed back that user's credits), and a usage another user's API key.
--   Both keys now include the user.
-- * The settings page's API key form made a key each time it was sent
--   (F5 on the page showing a key, without JavaScript; a double click):
--   a key now records its form's key, unique per user.
-- * ledger_clawback took credits from a grant past its expiry that the
--   sweep had not closed yet, so a refund took back credits (as clawback)
--   or recorded a shortfall depending on when the sweep last ran. Credits
--   past their expiry are gone from that instant (ARCHITECTURE, "Credit
--   ledger"): a clawback now takes nothing from such a grant, as after the
--   sweep. (Refunds only claw back packs, which never expire; the rule
--   holds whatever grant a payment names.)
--
-- Adding the two foreign keys checks every existing payment and usage
-- (one index probe per row; a usage without an API key is skipped) while
-- the tables are locked: stop the api and workers while it runs, as for
-- 00015 (README). It takes all its table locks first, all or none: no
-- order suits every reader (a spend reads usages before grants, the credit
-- history grants before usages), so it waits at most 200 ms for each and,
-- if one is still held, lets go of all and tries again, up to 300 times,
-- rather than hold some while it waits for others (a deadlock, which
-- failed the migration in a review's trials). A grant whose call began
-- before it committed and inserts after (the old ledger_grant turns the
-- switch on after its insert) fails once, and a webhook job retries it.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    v_before text := current_setting('lock_timeout');
BEGIN
    FOR i IN 1 .. 300 LOOP
        BEGIN
            -- A subtransaction: when it fails, the locks it took go too.
            PERFORM set_config('lock_timeout', '200ms', true);
            LOCK TABLE payments, credit_adjustments, usages, grants, api_keys IN ACCESS EXCLUSIVE MODE;
            PERFORM set_config('lock_timeout', v_before, true);
            RETURN;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            PERFORM pg_sleep(0.05 * random());
        END;
    END LOOP;
    RAISE EXCEPTION 'could not lock the ledger tables in 300 tries: stop the api and worker processes and migrate again'
        USING ERRCODE = 'lock_not_available';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER grants_born_in_ledger BEFORE INSERT ON grants FOR EACH ROW
    WHEN (current_setting('quickscale.ledger', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER usages_only_in_ledger BEFORE INSERT ON usages FOR EACH ROW
    WHEN (current_setting('quickscale.ledger', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER credit_adjustments_no_truncate BEFORE TRUNCATE ON credit_adjustments
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

ALTER TABLE payments DROP CONSTRAINT payments_grant_id_fkey,
    ADD CONSTRAINT payments_grant_of_user_fkey FOREIGN KEY (grant_id, user_id) REFERENCES grant_keys (grant_id, user_id);

CREATE UNIQUE INDEX api_keys_user_id_key ON api_keys (user_id, id);
-- The settings page's form makes one key at most: sent again (F5, a
-- double click without JavaScript, at once or later), it finds its key.
ALTER TABLE api_keys ADD COLUMN form_key text CHECK (length(form_key) BETWEEN 1 AND 64);
CREATE UNIQUE INDEX api_keys_form_key ON api_keys (user_id, form_key) WHERE form_key IS NOT NULL;
DROP INDEX api_keys_user_idx;
ALTER TABLE usages DROP CONSTRAINT usages_api_key_fk,
    ADD CONSTRAINT usages_api_key_of_user_fkey FOREIGN KEY (user_id, api_key_id) REFERENCES api_keys (user_id, id);

-- ledger_grant as in 00015, with the ledger switch on before the grant is
-- inserted.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION ledger_grant(p_user_id bigint, p_kind text, p_amount bigint, p_expires_at timestamptz,
                                        p_source_kind text, p_source_id text, p_entry_kind text,
                                        p_actor bigint, p_reason text,
                                        OUT grant_id bigint, OUT created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM accounts a WHERE a.user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account for user %', p_user_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_source_kind || ':' || p_source_id, 15));
    SELECT k.grant_id INTO grant_id FROM grant_keys k
     WHERE k.source_kind = p_source_kind AND k.source_id = p_source_id;
    IF grant_id IS NOT NULL THEN
        created := false;
        RETURN;
    END IF;
    PERFORM set_config('quickscale.ledger', 'on', true);
    INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id)
    VALUES (p_user_id, p_kind, p_amount, p_amount, p_expires_at, p_source_kind, p_source_id)
    RETURNING id INTO grant_id;
    INSERT INTO ledger_entries (user_id, grant_id, kind, amount, actor_user_id, reason)
    VALUES (p_user_id, grant_id, p_entry_kind, p_amount, p_actor, p_reason);
    PERFORM set_config('quickscale.ledger', '', true);
    created := true;
END;
$$;
-- +goose StatementEnd

-- CREATE OR REPLACE resets a function's settings: ledger_grant names
-- grant_keys, which must be this schema's, never a temporary table's
-- (00015).
-- +goose StatementBegin
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION ledger_grant(bigint, text, bigint, timestamptz, text, text, text, bigint, text) SET search_path = %I, pg_temp', current_schema());
END;
$$;
-- +goose StatementEnd

-- ledger_clawback as in 00002, but a grant past its expiry (at the instant
-- after the locks) has nothing left to take.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION ledger_clawback(p_grant_id bigint, p_amount bigint, p_reason text, OUT taken bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_user bigint;
    v_left bigint;
    v_expires timestamptz;
BEGIN
    SELECT g.user_id INTO v_user FROM grants g WHERE g.id = p_grant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no grant %', p_grant_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    PERFORM 1 FROM accounts a WHERE a.user_id = v_user FOR UPDATE;
    SELECT g.remaining, g.expires_at INTO v_left, v_expires FROM grants g WHERE g.id = p_grant_id FOR UPDATE;
    IF v_expires IS NOT NULL AND v_expires <= clock_timestamp() THEN
        v_left := 0;
    END IF;
    taken := least(greatest(p_amount, 0), v_left);
    IF taken > 0 THEN
        PERFORM set_config('quickscale.ledger', 'on', true);
        UPDATE grants SET remaining = remaining - taken,
                          closed_at = CASE WHEN remaining = taken THEN now() END
         WHERE id = p_grant_id;
        INSERT INTO ledger_entries (user_id, grant_id, kind, amount, reason)
        VALUES (v_user, p_grant_id, 'clawback', -taken, p_reason);
        PERFORM set_config('quickscale.ledger', '', true);
    END IF;
END;
$$;
-- +goose StatementEnd
