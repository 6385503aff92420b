-- The credit ledger: services, grants, usages and append-only ledger entries.
--
-- Entries are the source of truth: a grant's `remaining` is only ever changed
-- by the statement trigger that applies newly inserted entries, so "per
-- grant, the sum of its entries equals remaining" holds by construction, and
-- the CHECK on remaining keeps every grant within 0..amount.

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
    CONSTRAINT grants_remaining_within_amount CHECK (remaining >= 0 AND remaining <= amount),
    CONSTRAINT grants_source_key UNIQUE (source_kind, source_id),
    CONSTRAINT grants_subscription_expires CHECK (kind <> 'subscription' OR expires_at IS NOT NULL),
    CONSTRAINT grants_pack_never_expires CHECK (kind <> 'pack' OR expires_at IS NULL),
    CONSTRAINT grants_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at),
    -- Lets ledger entries prove that their grant belongs to their user.
    CONSTRAINT grants_id_user_key UNIQUE (id, user_id)
);
-- Live grants of a user: the balance and the draw read only these.
CREATE INDEX grants_live_idx ON grants (user_id) WHERE remaining > 0;
-- What the expiry sweep looks for: cost grows with what is due, not with all grants.
CREATE INDEX grants_expiring_idx ON grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;

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
    CONSTRAINT usages_idempotency_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT usages_id_user_key UNIQUE (id, user_id)
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
    FOREIGN KEY (grant_id, user_id) REFERENCES grants (id, user_id),
    FOREIGN KEY (usage_id, user_id) REFERENCES usages (id, user_id),
    CONSTRAINT ledger_entries_consume_has_usage CHECK ((kind = 'consume') = (usage_id IS NOT NULL)),
    CONSTRAINT ledger_entries_sign CHECK (
        (kind = 'grant' AND amount > 0) OR
        (kind IN ('consume', 'expire', 'clawback') AND amount < 0) OR
        kind = 'adjust'),
    CONSTRAINT ledger_entries_adjust_has_reason CHECK (kind <> 'adjust' OR coalesce(btrim(reason), '') <> '')
);
CREATE INDEX ledger_entries_user_idx ON ledger_entries (user_id, id);
CREATE INDEX ledger_entries_grant_idx ON ledger_entries (grant_id);
CREATE INDEX ledger_entries_usage_idx ON ledger_entries (usage_id) WHERE usage_id IS NOT NULL;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER usages_append_only BEFORE UPDATE OR DELETE ON usages
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- New entries move their grants' remaining, once per statement.
-- +goose StatementBegin
CREATE FUNCTION ledger_apply_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE grants g SET remaining = g.remaining + d.total
      FROM (SELECT grant_id, sum(amount) AS total FROM new_entries GROUP BY grant_id) d
     WHERE g.id = d.grant_id;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER ledger_entries_apply AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_entries();

-- Grants are born empty (their 'grant' or 'adjust' entry fills them), never
-- change what they are, and change `remaining` only through entries.
-- +goose StatementBegin
CREATE FUNCTION grants_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.remaining <> 0 THEN
            RAISE EXCEPTION 'grants start with remaining = 0; insert a ledger entry to fill them'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.remaining IS DISTINCT FROM OLD.remaining AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'grants.remaining changes only through ledger entries'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.user_id, NEW.kind, NEW.amount, NEW.expires_at, NEW.source_kind, NEW.source_id, NEW.created_at)
       IS DISTINCT FROM
       (OLD.user_id, OLD.kind, OLD.amount, OLD.expires_at, OLD.source_kind, OLD.source_id, OLD.created_at) THEN
        RAISE EXCEPTION 'grants are immutable except for remaining'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER grants_guard BEFORE INSERT OR UPDATE ON grants
    FOR EACH ROW EXECUTE FUNCTION grants_guard();
CREATE TRIGGER grants_no_delete BEFORE DELETE OR TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- ledger_draw locks the user's live grants (in id order) and plans how to
-- draw p_amount from them: expiring grants first, soonest expiry first, then
-- never-expiring grants oldest first. It returns the live balance and, when
-- that covers p_amount, the grants to draw from and how much from each
-- (ok = false and empty arrays otherwise). It writes nothing. The caller
-- must hold the user's account row lock.
-- +goose StatementBegin
CREATE FUNCTION ledger_draw(p_user_id bigint, p_amount bigint,
                            OUT ok boolean, OUT balance bigint,
                            OUT grant_ids bigint[], OUT kinds text[], OUT takes bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g      record;
    v_need bigint := p_amount;
BEGIN
    balance := 0; grant_ids := '{}'; kinds := '{}'; takes := '{}';
    FOR g IN
        SELECT s.id, s.kind, s.remaining
          FROM (SELECT gr.id, gr.kind, gr.remaining, gr.expires_at
                  FROM grants gr
                 WHERE gr.user_id = p_user_id AND gr.remaining > 0
                   AND (gr.expires_at IS NULL OR gr.expires_at > now())
                 ORDER BY gr.id
                   FOR UPDATE) s
         ORDER BY s.expires_at ASC NULLS LAST, s.id ASC
    LOOP
        balance := balance + g.remaining;
        IF v_need > 0 THEN
            grant_ids := grant_ids || g.id;
            kinds     := kinds || g.kind;
            takes     := takes || least(v_need, g.remaining);
            v_need    := v_need - least(v_need, g.remaining);
        END IF;
    END LOOP;
    ok := v_need <= 0;
    IF NOT ok THEN
        grant_ids := '{}'; kinds := '{}'; takes := '{}';
    END IF;
END;
$$;
-- +goose StatementEnd

-- ledger_consume spends a service's cost for a user in one call (one round
-- trip): lock the account row, honour the idempotency key, draw, record.
-- status is one of created, replayed, conflict, insufficient, no_service,
-- no_account. Nothing is written unless status is created.
-- +goose StatementBegin
CREATE FUNCTION ledger_consume(p_user_id bigint, p_service_slug text, p_idempotency_key text,
                               p_fingerprint text, p_api_key_id bigint)
RETURNS TABLE (status text, usage_id bigint, service_slug text, credits bigint, balance bigint,
               drawn jsonb, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_usage   usages%ROWTYPE;
    v_service services%ROWTYPE;
    v_draw    record;
BEGIN
    PERFORM 1 FROM accounts a WHERE a.user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_account', NULL::bigint, p_service_slug, 0::bigint, 0::bigint, '[]'::jsonb, now();
        RETURN;
    END IF;

    SELECT * INTO v_usage FROM usages u WHERE u.user_id = p_user_id AND u.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF v_usage.fingerprint <> p_fingerprint THEN
            RETURN QUERY SELECT 'conflict', v_usage.id, p_service_slug, 0::bigint, 0::bigint, '[]'::jsonb, v_usage.created_at;
            RETURN;
        END IF;
        RETURN QUERY
            SELECT 'replayed', v_usage.id, s.slug, v_usage.credits, v_usage.balance_after,
                   coalesce((SELECT jsonb_agg(jsonb_build_object('grant_id', e.grant_id, 'kind', g.kind, 'credits', -e.amount) ORDER BY e.id)
                               FROM ledger_entries e JOIN grants g ON g.id = e.grant_id
                              WHERE e.usage_id = v_usage.id), '[]'::jsonb),
                   v_usage.created_at
              FROM services s WHERE s.id = v_usage.service_id;
        RETURN;
    END IF;

    SELECT * INTO v_service FROM services s WHERE s.slug = p_service_slug AND s.active;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_service', NULL::bigint, p_service_slug, 0::bigint, 0::bigint, '[]'::jsonb, now();
        RETURN;
    END IF;

    SELECT * INTO v_draw FROM ledger_draw(p_user_id, v_service.credit_cost);
    IF NOT v_draw.ok THEN
        RETURN QUERY SELECT 'insufficient', NULL::bigint, v_service.slug, v_service.credit_cost, v_draw.balance, '[]'::jsonb, now();
        RETURN;
    END IF;

    INSERT INTO usages (user_id, service_id, credits, idempotency_key, fingerprint, balance_after, api_key_id)
    VALUES (p_user_id, v_service.id, v_service.credit_cost, p_idempotency_key, p_fingerprint,
            v_draw.balance - v_service.credit_cost, p_api_key_id)
    RETURNING * INTO v_usage;

    INSERT INTO ledger_entries (user_id, grant_id, kind, amount, usage_id)
    SELECT p_user_id, t.id, 'consume', -t.take, v_usage.id
      FROM unnest(v_draw.grant_ids, v_draw.takes) AS t (id, take);

    RETURN QUERY
        SELECT 'created', v_usage.id, v_service.slug, v_usage.credits, v_usage.balance_after,
               coalesce((SELECT jsonb_agg(jsonb_build_object('grant_id', t.id, 'kind', t.kind, 'credits', t.take) ORDER BY t.ord)
                           FROM unnest(v_draw.grant_ids, v_draw.kinds, v_draw.takes) WITH ORDINALITY AS t (id, kind, take, ord)),
                        '[]'::jsonb),
               v_usage.created_at;
END;
$$;
-- +goose StatementEnd

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
    VALUES (p_user_id, p_kind, p_amount, 0, p_expires_at, p_source_kind, p_source_id)
    ON CONFLICT (source_kind, source_id) DO NOTHING
    RETURNING id INTO grant_id;
    IF grant_id IS NULL THEN
        SELECT g.id INTO grant_id FROM grants g WHERE g.source_kind = p_source_kind AND g.source_id = p_source_id;
        created := false;
        RETURN;
    END IF;
    INSERT INTO ledger_entries (user_id, grant_id, kind, amount, actor_user_id, reason)
    VALUES (p_user_id, grant_id, p_entry_kind, p_amount, p_actor, p_reason);
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
    v_draw record;
BEGIN
    PERFORM 1 FROM accounts a WHERE a.user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no account for user %', p_user_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT * INTO v_draw FROM ledger_draw(p_user_id, p_amount);
    ok := v_draw.ok;
    balance := v_draw.balance;
    drawn := '[]'::jsonb;
    IF NOT ok THEN
        RETURN;
    END IF;
    INSERT INTO ledger_entries (user_id, grant_id, kind, amount, actor_user_id, reason)
    SELECT p_user_id, t.id, p_entry_kind, -t.take, p_actor, p_reason
      FROM unnest(v_draw.grant_ids, v_draw.takes) AS t (id, take);
    balance := v_draw.balance - p_amount;
    SELECT coalesce(jsonb_agg(jsonb_build_object('grant_id', t.id, 'kind', t.kind, 'credits', t.take) ORDER BY t.ord), '[]'::jsonb)
      INTO drawn
      FROM unnest(v_draw.grant_ids, v_draw.kinds, v_draw.takes) WITH ORDINALITY AS t (id, kind, take, ord);
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
        INSERT INTO ledger_entries (user_id, grant_id, kind, amount, reason)
        VALUES (v_user, p_grant_id, 'clawback', -taken, p_reason);
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
             WHERE g.remaining > 0 AND g.expires_at IS NOT NULL AND g.expires_at <= now()
             ORDER BY g.expires_at
             LIMIT p_max_grants) d;
    IF v_users IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.user_id = ANY (v_users) ORDER BY a.user_id FOR UPDATE;
    RETURN QUERY
    WITH e AS (
        INSERT INTO ledger_entries (user_id, grant_id, kind, amount)
        SELECT g.user_id, g.id, 'expire', -g.remaining
          FROM grants g
         WHERE g.user_id = ANY (v_users) AND g.remaining > 0
           AND g.expires_at IS NOT NULL AND g.expires_at <= now()
         ORDER BY g.id
        RETURNING ledger_entries.user_id, ledger_entries.grant_id, ledger_entries.amount
    )
    SELECT g.kind, count(DISTINCT e.user_id), count(*), -sum(e.amount)::bigint
      FROM e JOIN grants g ON g.id = e.grant_id
     GROUP BY g.kind;
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
