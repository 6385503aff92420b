-- A grant's identity (its id, its user and its source) in a table of its
-- own, which is written once and never changes, so that closing a grant
-- writes one index entry instead of three.
--
-- Closing a grant (spent to zero, expired, taken back) sets closed_at,
-- which the open-grant indexes' predicates name, so that update cannot be
-- HOT: the new row version goes into every index of grants whose predicate
-- it meets, which were the primary key and two unique keys that only serve
-- other purposes: (source_kind, source_id), which keeps every source
-- granted once, and (id, user_id), which lets a ledger entry prove that its
-- grant is its user's. The expiry sweep closes every grant it touches, so
-- these two cost it two of its four index insertions per grant. Both keys
-- now live on grant_keys, and grants keeps only its primary key and the two
-- partial indexes (which a closed grant leaves).
--
-- Measured (README, "The eleventh measurement day"): one backend sweeping
-- 100,000 overdue grants in batches of 50 took 1.75-1.88 s against
-- 2.17-2.22 s before (three interleaved pairs) with the keys moved, writing
-- 7.0 WAL records and 840 bytes per grant against 8.0 and 958; with the
-- row locks below gone too, 1.68-1.71 s and 6.0 records (787 bytes).
-- Spends' grant updates were HOT and stay so; the foreign-key check of
-- their entries now reads grant_keys instead of grants.
--
-- What keeps the two tables in step, all in the database:
-- * every grant gets its key row from a trigger (statement-level, so a bulk
--   insert is one statement), built from the grant's own columns;
-- * a key row names an existing grant (foreign key) and each grant has at
--   most one (primary key), so no other key row can exist;
-- * neither side's identity changes: key rows are append-only, and a
--   grant's id, user and source are refused in an UPDATE's SET list.
-- grants keeps its source columns (readers and inserters stay as they
-- were); the uniqueness of a source is grant_keys_source_key's now, and
-- ledger_grant looks a source up there.
--
-- It also drops two row locks that were logged for nothing: the grants'
-- ledger guard becomes a statement trigger (a BEFORE ROW UPDATE trigger
-- makes PostgreSQL lock every row it updates), and the sweep no longer
-- locks the due grants (their accounts are locked). The sweep writes two
-- WAL records fewer per grant than before 00015; a spend as many (its
-- entry's key check now locks the key row, where the grant row it checked
-- before was already locked by the row trigger).
--
-- It takes both tables' locks first, and holds them while it copies every
-- grant's key and re-checks every ledger entry's foreign key (5.7 s for a
-- million grants and three million entries on the benchmark machine): stop the api and workers while
-- it runs (README). Taken piecemeal, as it first was, a spend in flight
-- deadlocked with it and the migration failed.

-- +goose Up
LOCK TABLE grants, ledger_entries IN ACCESS EXCLUSIVE MODE;
-- The table, its rows, then its keys: faster than filling indexed tables.
CREATE TABLE grant_keys (
    grant_id    bigint NOT NULL,
    user_id     bigint NOT NULL,
    source_kind nonempty_text NOT NULL,
    source_id   nonempty_text NOT NULL
);
INSERT INTO grant_keys (grant_id, user_id, source_kind, source_id)
SELECT id, user_id, source_kind, source_id FROM grants;
ALTER TABLE grant_keys
    ADD PRIMARY KEY (grant_id),
    -- A source is granted once, whichever user it names.
    ADD CONSTRAINT grant_keys_source_key UNIQUE (source_kind, source_id),
    -- What ledger entries reference: a grant and its user.
    ADD CONSTRAINT grant_keys_grant_user_key UNIQUE (grant_id, user_id),
    ADD CONSTRAINT grant_keys_grant_id_fkey FOREIGN KEY (grant_id) REFERENCES grants (id);

-- +goose StatementBegin
CREATE FUNCTION grant_keys_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO grant_keys (grant_id, user_id, source_kind, source_id)
    SELECT n.id, n.user_id, n.source_kind, n.source_id FROM new_grants n;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER grants_keyed AFTER INSERT ON grants
    REFERENCING NEW TABLE AS new_grants
    FOR EACH STATEMENT EXECUTE FUNCTION grant_keys_add();

-- +goose StatementBegin
CREATE FUNCTION grant_identity_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a grant''s id, user and source never change (grant %)', OLD.id
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
-- Considered only for an UPDATE whose SET list names one of these columns:
-- the ledger's own updates (remaining, closed_at) skip it. AFTER, not
-- BEFORE: see below.
CREATE TRIGGER grants_identity_fixed AFTER UPDATE OF id, user_id, source_kind, source_id ON grants
    FOR EACH ROW
    WHEN (NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id
          OR NEW.source_kind <> OLD.source_kind OR NEW.source_id <> OLD.source_id)
    EXECUTE FUNCTION grant_identity_refuse();
CREATE TRIGGER grant_keys_append_only BEFORE UPDATE OR DELETE ON grant_keys
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER grant_keys_no_truncate BEFORE TRUNCATE ON grant_keys
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- No BEFORE ROW UPDATE trigger on grants: with one, PostgreSQL locks each
-- row before updating it, and logs that lock: one WAL record more for
-- every grant a spend draws on and every grant the sweep closes. The
-- ledger switch does not depend on the row, so its guard fires once per
-- statement instead.
DROP TRIGGER grants_change_only_in_ledger ON grants;
CREATE TRIGGER grants_change_only_in_ledger BEFORE UPDATE ON grants FOR EACH STATEMENT
    WHEN (current_setting('quickscale.ledger', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION ledger_refuse();

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_grant_id_user_id_fkey;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_grant_fkey
    FOREIGN KEY (grant_id, user_id) REFERENCES grant_keys (grant_id, user_id);
ALTER TABLE grants DROP CONSTRAINT grants_id_user_key;
ALTER TABLE grants DROP CONSTRAINT grants_source_key;

-- ledger_grant as in 00002, but a source is looked up in grant_keys, and
-- grants of one source take turns on an advisory lock of it (grants has no
-- unique key on the source any more for ON CONFLICT to wait on). Two users'
-- grants can share no source, so the account lock alone would not do. Lock
-- order: the account row, then the source. The lock is held until commit:
-- a transaction granting thousands of sources would fill PostgreSQL's lock
-- table (max_locks_per_transaction x max_connections, 6,400 by default);
-- every caller grants one source per transaction.
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
    INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id)
    VALUES (p_user_id, p_kind, p_amount, p_amount, p_expires_at, p_source_kind, p_source_id)
    RETURNING id INTO grant_id;
    PERFORM set_config('quickscale.ledger', 'on', true);
    INSERT INTO ledger_entries (user_id, grant_id, kind, amount, actor_user_id, reason)
    VALUES (p_user_id, grant_id, p_entry_kind, p_amount, p_actor, p_reason);
    PERFORM set_config('quickscale.ledger', '', true);
    created := true;
END;
$$;
-- +goose StatementEnd

-- ledger_expire_due as in 00008, but the due grants are no longer locked
-- before they are closed: the accounts of their users are (every writer of
-- a grant locks its account first), and the lock was one more WAL record
-- per grant, which the row trigger above used to write anyway.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION ledger_expire_due(p_max_grants integer, p_after timestamptz DEFAULT NULL)
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

-- The two functions that name grant_keys find it in this schema, never in
-- a temporary table of the same name (which would come first on the
-- default search path and take the key rows, or answer the lookups).
-- +goose StatementBegin
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION grant_keys_add() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION ledger_grant(bigint, text, bigint, timestamptz, text, text, text, bigint, text) SET search_path = %I, pg_temp', current_schema());
END;
$$;
-- +goose StatementEnd

ANALYZE grant_keys;
