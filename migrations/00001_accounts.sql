-- Accounts: users, one-time tokens, sessions, rate limits, the audit log and
-- the dev mailbox.

-- +goose Up
CREATE TABLE users (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL only once the account is deleted: deletion anonymises the row
    -- instead of removing it, because payments and ledger entries refer to it.
    email             text,
    password_hash     text,
    role              text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    email_verified_at timestamptz,
    -- Bumped whenever every other session of the user must end (password
    -- change); sessions remember the epoch they were created in.
    session_epoch     integer NOT NULL DEFAULT 0 CHECK (session_epoch >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    CONSTRAINT users_live_has_credentials CHECK (
        deleted_at IS NOT NULL OR (email IS NOT NULL AND password_hash IS NOT NULL)),
    CONSTRAINT users_deleted_is_anonymous CHECK (
        deleted_at IS NULL OR (email IS NULL AND password_hash IS NULL)),
    CONSTRAINT users_email_shape CHECK (
        email IS NULL OR (email = btrim(email) AND length(email) BETWEEN 3 AND 254
                          AND email LIKE '_%@_%'))
);
-- Email identity is case-insensitive.
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE email IS NOT NULL;

-- One row per user: the credit account. Its row lock is the per-user
-- serialisation point of every ledger change.
CREATE TABLE accounts (
    user_id    bigint PRIMARY KEY REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One-time tokens for email verification, password reset and email change.
-- Only the SHA-256 of the token is stored.
CREATE TABLE user_tokens (
    hash       bytea PRIMARY KEY CHECK (length(hash) = 32),
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    text NOT NULL CHECK (purpose IN ('verify_email', 'reset_password', 'change_email')),
    -- The address the token was sent to; for change_email, the new address.
    email      text NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at > created_at)
);
CREATE INDEX user_tokens_user_purpose_idx ON user_tokens (user_id, purpose);
CREATE INDEX user_tokens_expires_idx ON user_tokens (expires_at);

-- alexedwards/scs pgxstore's table.
CREATE TABLE sessions (
    token  text PRIMARY KEY,
    data   bytea NOT NULL,
    expiry timestamptz NOT NULL
);
CREATE INDEX sessions_expiry_idx ON sessions (expiry);

-- Fixed-window counters shared by every api replica.
CREATE TABLE rate_limits (
    key          text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    hits         integer NOT NULL CHECK (hits > 0),
    CHECK (window_end > window_start)
);
CREATE INDEX rate_limits_window_end_idx ON rate_limits (window_end);

-- Every admin action, append-only.
CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor_user_id  bigint REFERENCES users (id),
    action         text NOT NULL CHECK (action <> ''),
    target_user_id bigint REFERENCES users (id),
    details        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_target_idx ON audit_log (target_user_id, id);

-- +goose StatementBegin
CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Mail kept locally when no SMTP server is configured (the dev default).
CREATE TABLE dev_mailbox (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    to_addr   text NOT NULL,
    subject   text NOT NULL,
    text_body text NOT NULL,
    html_body text NOT NULL,
    sent_at   timestamptz NOT NULL DEFAULT now()
);
