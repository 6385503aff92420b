-- Usage analytics, rolled up by day (UTC) and service by a worker job, so
-- that the admin's analytics page reads a few hundred rows however many
-- spends there are.
--
-- A day's rows are recomputed whole from usages (by created_at) until the
-- day is final: its end is more than the rollup's lag in the past, so no
-- spend of it can still commit. The state row says through when the
-- figures are final and as of when today's are.
--
-- Usages had no index by time (every read of them is one user's); a BRIN
-- index on created_at finds a day's rows among millions and costs an
-- insert next to nothing (rows are appended in time order). Pages appended
-- since the index last summarised them are read by every search, so each
-- range of pages is summarised as soon as it is full (autosummarize, done
-- by autovacuum), not only when a vacuum comes.

-- +goose Up
CREATE INDEX usages_created_at_brin ON usages USING brin (created_at) WITH (autosummarize = on);

CREATE TABLE analytics_daily_usage (
    day        date NOT NULL,
    service_id bigint NOT NULL REFERENCES services (id),
    uses       bigint NOT NULL CHECK (uses > 0),
    credits    bigint NOT NULL CHECK (credits >= 0),
    PRIMARY KEY (day, service_id)
);

-- Revenue is read live, by the payments' paid_at (indexed here) and the
-- refunds' times: a payment applied after a worker outage keeps Stripe's
-- time of its event, which can fall on a day a rollup had closed already.
CREATE INDEX payments_paid_at_idx ON payments (paid_at) WHERE paid_at IS NOT NULL;
CREATE INDEX payment_refunds_at_idx ON payment_refunds ((coalesce(refunded_at, recorded_at)));

-- One row: days before final_through are final; the figures count every
-- spend made before as_of (the end of the last window rolled up).
CREATE TABLE analytics_rollup_state (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    final_through date,
    as_of         timestamptz,
    rolled_at     timestamptz,
    CHECK ((final_through IS NULL) = (as_of IS NULL) AND (as_of IS NULL) = (rolled_at IS NULL))
);
INSERT INTO analytics_rollup_state DEFAULT VALUES;
