-- What the admin webhook pages could not tell (exploratory testing,
-- 2026-11-26): an event whose processing kept failing showed "pending,
-- attempts 0" with no reason, because the attempt was counted inside the
-- transaction the failure rolled back. last_error keeps the latest failure
-- (or why the event waits), written outside that transaction.

-- +goose Up
ALTER TABLE stripe_events ADD COLUMN last_error text;

-- +goose Down
ALTER TABLE stripe_events DROP COLUMN last_error;
