-- At most one live (unused) one-time token per user and purpose, so that a
-- newer link always supersedes the older one, even when two emails are sent
-- by two workers at the same moment. Store.CreateToken upserts on this index.

-- +goose Up
UPDATE user_tokens t SET used_at = now()
 WHERE t.used_at IS NULL
   AND EXISTS (SELECT 1 FROM user_tokens n
                WHERE n.user_id = t.user_id AND n.purpose = t.purpose AND n.used_at IS NULL
                  AND (n.created_at, n.hash) > (t.created_at, t.hash));
CREATE UNIQUE INDEX user_tokens_one_live_idx ON user_tokens (user_id, purpose) WHERE used_at IS NULL;
