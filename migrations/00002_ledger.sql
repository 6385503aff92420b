-- The credit ledger: services, grants, usages and append-only ledger entries.
--
-- Every change to credits happens inside one of the ledger_* functions
-- below, which update a grant's `remaining` and append the matching entry
-- in the same statement sequence. Triggers refuse grant and entry changes
-- made outside them, entries and usages are append-only, and CHECKs keep
-- every grant within 0..amount; tests check the sums after concurrent runs.
--
-- The hot path (ledger_consume) is built for speed: one call, a handful of
-- simple statements, and grant updates that stay HOT (no index on the grants
-- table mentions `remaining`).

-- +goose Up
CREATE TABLE services (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL CHECK (name <> '' AND length(name) <= 100),
    description text NOT NULL DEFAULT '',
    credit_cost bigint NOT NULL CHECK (credit_cost >= 0),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE grants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES accounts (user_id),
    kind        text NOT NULL CHECK (kind IN ('subscription', 'pack', 'admin', 'promo')),
    amount      bigint NOT NULL CHECK (amount > 0),
    remaining   bigint NOT NULL,
    expires_at  timestamptz,
    -- What paid for or caused the grant, e.g. ('checkout_session', 'cs_…').
    -- Unique, so that a replayed event can never grant twice.
    source_kind text NOT NULL CHECK (source_kind <> ''),
    source_id   text NOT NULL CHECK (source_id <> ''),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set once the grant holds nothing more: spent, expired or taken back.
    -- Indexes key off it instead of `remaining`, so most draws are HOT updates.
    closed_at   timestamptz,
    CONSTRAINT grants_remaining_within_amount CHECK (remaining >= 0 AND remaining <= amount),
    CONSTRAINT grants_closed_iff_empty CHECK ((remaining = 0) = (closed_at IS NOT NULL)),
    CONSTRAINT grants_source_key UNIQUE (source_kind, source_id),
    CONSTRAINT grants_subscription_expires CHECK (kind <> 'subscription' OR expires_at IS NOT NULL),
    CONSTRAINT grants_pack_never_expires CHECK (kind <> 'pack' OR expires_at IS NULL),
    CONSTRAINT grants_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at),
    -- Lets ledger entries prove that their grant belongs to their user.
    CONSTRAINT grants_id_user_key UNIQUE (id, user_id)
) WITH (fillfactor = 80);
-- Open grants of a user: the balance and the draw read only these.
CREATE INDEX grants_open_idx ON grants (user_id) WHERE closed_at IS NULL;
-- What the expiry sweep looks for: cost grows with what is due, not with all grants.
CREATE INDEX grants_expiring_idx ON grants (expires_at) WHERE closed_at IS NULL AND expires_at IS NOT NULL;

CREATE TABLE usages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES accounts (user_id),
    service_id      bigint NOT NULL REFERENCES services (id),
    credits         bigint NOT NULL CHECK (credits >= 0),
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- Hash of what was asked, so a reused key with another request is refused.
    fingerprint     text NOT NULL CHECK (fingerprint <> ''),
    balance_after   bigint NOT NULL CHECK (balance_after >= 0),
    api_key_id      bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- The key's scope as one value ("<user id>:<key>"), so that the lookup
    -- has exactly one index to use: with (user_id, key) the planner may pick
    -- the (user_id, id) index instead and scan a heavy user's whole history.
    idempotency_scope text GENERATED ALWAYS AS (user_id::text || ':' || idempotency_key) STORED,
    CONSTRAINT usages_idempotency_key UNIQUE (idempotency_scope)
);
CREATE INDEX usages_user_idx ON usages (user_id, id);

CREATE TABLE ledger_entries (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint NOT NULL,
    grant_id      bigint NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('grant', 'consume', 'expire', 'clawback', 'adjust')),
    amount        bigint NOT NULL CHECK (amount <> 0),
    usage_id      bigint,
    actor_user_id bigint REFERENCES users (id),
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- An entry belongs to its grant's user. (Its usage is the same user's
    -- by construction in ledger_consume; a composite key here would cost
    -- every consume one more index insert.)
    FOREIGN KEY (grant_id, user_id) REFERENCES grants (id, user_id),
    FOREIGN KEY (usage_id) REFERENCES usages (id),
    CONSTRAINT ledger_entries_consume_has_usage CHECK ((kind = 'consume') = (usage_id IS NOT NULL)),
    CONSTRAINT ledger_entries_sign CHECK (
        (kind = 'grant' AND amount > 0) OR
        (kind IN ('consume', 'expire', 'clawback') AND amount < 0) OR
        kind = 'adjust'),
    CONSTRAINT ledger_entries_adjust_has_reason CHECK (kind <> 'adjust' OR coalesce(btrim(reason), '') <> '')
);
-- History, newest first, per user; and the entries of one usage.
CREATE INDEX ledger_entries_user_idx ON ledger_entries (user_id, id);
CREATE INDEX ledger_entries_usage_idx ON ledger_entries (usage_id) WHERE usage_id IS NOT NULL;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER usages_append_only BEFORE UPDATE OR DELETE ON usages
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER grants_no_delete BEFORE DELETE OR TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Outside the ledger functions (which set quickscale.ledger while they
-- write) grants are born full and never change, and entries are not
-- written; inside, the ledger functions only ever change remaining and
-- closed_at. The WHEN clauses are evaluated without calling any function,
-- so the guards cost next to nothing on the hot path.
-- +goose StatementBegin
CREATE FUNCTION ledger_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% % is only allowed through the ledger functions', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER grants_born_full BEFORE INSERT ON grants FOR EACH ROW
    WHEN (NEW.remaining <> NEW.amount OR NEW.closed_at IS NOT NULL)
    EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER grants_change_only_in_ledger BEFORE UPDATE ON grants FOR EACH ROW
    WHEN (current_setting('quickscale.ledger', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION ledger_refuse();
CREATE TRIGGER ledger_entries_only_in_ledger BEFORE INSERT ON ledger_entries FOR EACH ROW
    WHEN (current_setting('quickscale.ledger', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION ledger_refuse();

-- ledger_take draws p_amount from the user's open, live grants in priority
-- order — expiring grants first (soonest expiry first), then never-expiring
-- grants oldest first — updating each grant and writing one entry of
-- p_kind per grant drawn. The caller holds the account row lock, has
-- checked that the live balance covers p_amount and has set
-- quickscale.ledger. Returns what was drawn, in order.
-- +goose StatementBegin
CREATE FUNCTION ledger_take(p_user_id bigint, p_amount bigint, p_kind text, p_usage_id bigint,
                            p_actor bigint, p_reason text, p_ids bigint[], p_kinds text[], p_remaining bigint[],
                            OUT drawn jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_need bigint := p_amount;
    v_take bigint;
    i      int := 1;
BEGIN
    drawn := '[]'::jsonb;
    WHILE v_need > 0 LOOP
        v_take := least(v_need, p_remaining[i]);
        UPDATE grants SET remaining = remaining - v_take,
                          closed_at = CASE WHEN remaining = v_take THEN now() END
         WHERE id = p_ids[i];
        INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id, actor_user_id, reason)
        VALUES (p_user_id, p_ids[i], p_kind, -v_take, p_usage_id, p_actor, p_reason);
        drawn := drawn || jsonb_build_object('grant_id', p_ids[i], 'kind', p_kinds[i], 'credits', v_take);
        v_need := v_need - v_take;
        i := i + 1;
    END LOOP;
END;
$$;
-- +goose StatementEnd

-- ledger_live_grants locks the user's open grants in id order and returns
-- the live ones (not yet expired when the locks are held) in draw order,
-- with their total.
-- (plpgsql, not sql: a sql function would be planned on every call.)
-- +goose StatementBegin
CREATE FUNCTION ledger_live_grants(p_user_id bigint, OUT ids bigint[], OUT kinds text[], OUT remaining bigint[], OUT total bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    SELECT coalesce(array_agg(s.id ORDER BY s.expires_at ASC NULLS LAST, s.id), '{}'),
           coalesce(array_agg(s.kind ORDER BY s.expires_at ASC NULLS LAST, s.id), '{}'),
           coalesce(array_agg(s.remaining ORDER BY s.expires_at ASC NULLS LAST, s.id), '{}'),
           coalesce(sum(s.remaining), 0)::bigint
      INTO ids, kinds, remaining, total
      FROM (SELECT g.id, g.kind, g.remaining, g.expires_at
              FROM grants g
             WHERE g.user_id = p_user_id AND g.closed_at IS NULL
             ORDER BY g.id
               FOR UPDATE) s
     WHERE s.expires_at IS NULL OR s.expires_at > clock_timestamp();
END;
$$;
-- +goose StatementEnd

-- ledger_consume spends a service's cost for a user in one call (one round
-- trip): lock the account row (the per-user serialisation point), honour
-- the idempotency key, draw, record. status is one of created, replayed,
-- conflict, insufficient, no_service, no_account; nothing is written unless
-- it is created.
-- +goose StatementBegin
CREATE FUNCTION ledger_consume(p_user_id bigint, p_service_slug text, p_idempotency_key text,
                               p_fingerprint text, p_api_key_id bigint)
RETURNS TABLE (status text, usage_id bigint, service_slug text, credits bigint, balance bigint,
               drawn jsonb, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_account   bigint;
    v_service   bigint;
    v_cost      bigint;
    v_prior     bigint;
    v_prior_fp  text;
    v_ids       bigint[];
    v_kinds     text[];
    v_rem       bigint[];
    v_total     bigint;
    v_need      bigint;
    v_take      bigint;
    v_now       timestamptz;
    i           int := 1;
BEGIN
    SELECT a.user_id, s.id, s.credit_cost
      INTO v_account, v_service, v_cost
      FROM accounts a
      LEFT JOIN services s ON s.slug = p_service_slug AND s.active
     WHERE a.user_id = p_user_id
       FOR UPDATE OF a;
    -- The instant of the spend is after the lock wait, not the start of the
    -- transaction: a grant that expired while we waited is not spendable.
    v_now := clock_timestamp();
    -- A statement of its own: its snapshot is taken after the lock is held,
    -- so it sees a usage committed by whoever held the lock before us.
    SELECT u.id, u.fingerprint INTO v_prior, v_prior_fp
      FROM usages u WHERE u.idempotency_scope = p_user_id::text || ':' || p_idempotency_key;
    service_slug := p_service_slug; credits := 0; balance := 0; drawn := '[]'::jsonb; created_at := now();
    IF v_account IS NULL THEN
        status := 'no_account'; RETURN NEXT; RETURN;
    END IF;
    IF v_prior IS NOT NULL THEN
        IF v_prior_fp <> p_fingerprint THEN
            status := 'conflict'; usage_id := v_prior; RETURN NEXT; RETURN;
        END IF;
        RETURN QUERY
            SELECT 'replayed', u.id, s.slug, u.credits, u.balance_after,
                   coalesce((SELECT jsonb_agg(jsonb_build_object('grant_id', e.grant_id, 'kind', g.kind, 'credits', -e.amount) ORDER BY e.id)
                               FROM ledger_entries e JOIN grants g ON g.id = e.grant_id
                              WHERE e.usage_id = u.id), '[]'::jsonb),
                   u.created_at
              FROM usages u JOIN services s ON s.id = u.service_id WHERE u.id = v_prior;
        RETURN;
    END IF;
    IF v_service IS NULL THEN
        status := 'no_service'; RETURN NEXT; RETURN;
    END IF;

    -- The live grants in draw order. No row locks: every writer of a
    -- user's grants holds the account row lock, which we hold, and the
    -- grants drawn from are locked by their UPDATE below. (Locking the
    -- others too would write WAL for rows that do not change.)
    SELECT coalesce(array_agg(g.id ORDER BY g.expires_at ASC NULLS LAST, g.id), '{}'),
           coalesce(array_agg(g.kind ORDER BY g.expires_at ASC NULLS LAST, g.id), '{}'),
           coalesce(array_agg(g.remaining ORDER BY g.expires_at ASC NULLS LAST, g.id), '{}'),
           coalesce(sum(g.remaining), 0)
      INTO v_ids, v_kinds, v_rem, v_total
      FROM grants g
     WHERE g.user_id = p_user_id AND g.closed_at IS NULL
       AND (g.expires_at IS NULL OR g.expires_at > v_now);
    IF v_total < v_cost THEN
        status := 'insufficient'; credits := v_cost; balance := v_total; RETURN NEXT; RETURN;
    END IF;

    PERFORM set_config('quickscale.ledger', 'on', true);
    INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after, api_key_id)
    VALUES (p_user_id, v_service, v_cost, p_idempotency_key, p_fingerprint, v_total - v_cost, p_api_key_id)
    RETURNING id, usages.created_at INTO usage_id, created_at;
    v_need := v_cost;
    WHILE v_need > 0 LOOP
        v_take := least(v_need, v_rem[i]);
        UPDATE grants SET remaining = remaining - v_take,
                          closed_at = CASE WHEN remaining = v_take THEN now() END
         WHERE id = v_ids[i];
        INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id)
        VALUES (p_user_id, v_ids[i], 'consume', -v_take, usage_id);
        drawn := drawn || jsonb_build_object('grant_id', v_ids[i], 'kind', v_kinds[i], 'credits', v_take);
        v_need := v_need - v_take;
        i := i + 1;
    END LOOP;
    PERFORM set_config('quickscale.ledger', '', true);
    status := 'created'; credits := v_cost; balance := v_total - v_cost;
    RETURN NEXT;
END;
$$;
-- +goose StatementEnd
-- Every statement of a consume is a keyed lookup. Right after a deploy the
-- tables are empty, so statistics say "empty" and a cached plan would
-- otherwise scan whole tables until autovacuum analyses them.
ALTER FUNCTION ledger_consume(bigint, text, text, text, bigint) SET enable_seqscan = off;

-- ledger_grant adds a grant and its first entry (kind 'grant', or 'adjust'
-- for admin additions) under the account lock. A grant whose source exists
-- already is not added again: created is false and the existing grant's id
-- is returned, which makes every fulfilment idempotent.
-- +goose StatementBegin
CREATE FUNCTION ledger_grant(p_user_id bigint, p_kind text, p_amount bigint, p_expires_at timestamptz,
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
    INSERT INTO grants (user_id, kind, amount, remaining, expires_at, source_kind, source_id)
    VALUES (p_user_id, p_kind, p_amount, p_amount, p_expires_at, p_source_kind, p_source_id)
    ON CONFLICT (source_kind, source_id) DO NOTHING
    RETURNING id INTO grant_id;
    IF grant_id IS NULL THEN
        SELECT g.id INTO grant_id FROM grants g WHERE g.source_kind = p_source_kind AND g.source_id = p_source_id;
        created := false;
        RETURN;
    END IF;
    PERFORM set_config('quickscale.ledger', 'on', true);
    INSERT INTO ledger_entries (user_id, grant_id, kind, amount, actor_user_id, reason)
    VALUES (p_user_id, grant_id, p_entry_kind, p_amount, p_actor, p_reason);
    PERFORM set_config('quickscale.ledger', '', true);
    created := true;
END;
$$;
-- +goose StatementEnd

-- ledger_debit takes credits away the way a consume would (admin removal),
-- without a usage. ok = false (nothing written) when the balance is short.
-- +goose StatementBegin
CREATE FUNCTION ledger_debit(p_user_id bigint, p_amount bigint, p_entry_kind text, p_actor bigint, p_reason text,
                             OUT ok boolean, OUT balance bigint, OUT drawn jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_live record;
BEGIN
    PERFORM 1 FROM accounts a WHERE a.user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account for user %', p_user_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT * INTO v_live FROM ledger_live_grants(p_user_id);
    ok := v_live.total >= p_amount;
    balance := v_live.total;
    drawn := '[]'::jsonb;
    IF NOT ok THEN
        RETURN;
    END IF;
    PERFORM set_config('quickscale.ledger', 'on', true);
    drawn := ledger_take(p_user_id, p_amount, p_entry_kind, NULL, p_actor, p_reason, v_live.ids, v_live.kinds, v_live.remaining);
    PERFORM set_config('quickscale.ledger', '', true);
    balance := v_live.total - p_amount;
END;
$$;
-- +goose StatementEnd

-- ledger_clawback takes back up to p_amount from one grant (a refund), never
-- more than it has left, and returns what it took.
-- +goose StatementBegin
CREATE FUNCTION ledger_clawback(p_grant_id bigint, p_amount bigint, p_reason text, OUT taken bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_user bigint;
    v_left bigint;
BEGIN
    SELECT g.user_id INTO v_user FROM grants g WHERE g.id = p_grant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no grant %', p_grant_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    PERFORM 1 FROM accounts a WHERE a.user_id = v_user FOR UPDATE;
    SELECT g.remaining INTO v_left FROM grants g WHERE g.id = p_grant_id FOR UPDATE;
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

-- ledger_expire_due sweeps one batch: up to p_max_grants overdue grants,
-- soonest first, with every other overdue grant of the same users. Account
-- rows are locked in user-id order. Returns per grant kind what expired.
-- +goose StatementBegin
CREATE FUNCTION ledger_expire_due(p_max_grants integer)
RETURNS TABLE (kind text, users bigint, grants bigint, credits bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_users bigint[];
BEGIN
    SELECT array_agg(DISTINCT d.user_id ORDER BY d.user_id) INTO v_users
      FROM (SELECT g.user_id FROM grants g
             WHERE g.closed_at IS NULL AND g.expires_at IS NOT NULL AND g.expires_at <= now()
             ORDER BY g.expires_at
             LIMIT p_max_grants) d;
    IF v_users IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.user_id = ANY (v_users) ORDER BY a.user_id FOR UPDATE;
    PERFORM set_config('quickscale.ledger', 'on', true);
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
    SELECT due.kind, count(DISTINCT due.user_id), count(*), sum(due.remaining)::bigint
      FROM due GROUP BY due.kind;
    PERFORM set_config('quickscale.ledger', '', true);
END;
$$;
-- +goose StatementEnd

-- API keys: only a SHA-256 of the key is stored; the prefix is for display.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id),
    name         text NOT NULL CHECK (btrim(name) <> '' AND length(name) <= 100),
    prefix       text NOT NULL CHECK (length(prefix) BETWEEN 4 AND 16),
    hash         bytea NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, id);
ALTER TABLE usages ADD CONSTRAINT usages_api_key_fk FOREIGN KEY (api_key_id) REFERENCES api_keys (id);
