-- Browsers that signed in to an account before. Sign-in is limited per
-- address from all IPs together (so that guesses from many IPs stay
-- bounded); a browser its owner signed in with is exempt from that limit
-- (not from the per-IP ones), so that attackers filling it cannot lock the
-- owner out. The cookie holds a random token; only its SHA-256 is kept.
-- A password change or reset forgets the user's browsers.

-- +goose Up
CREATE TABLE known_devices (
    token_hash   bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX known_devices_user_idx ON known_devices (user_id);

-- +goose Down
DROP TABLE known_devices;
