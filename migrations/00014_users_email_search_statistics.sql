-- The statistics of 00013's search index, gathered outside 00013's
-- transaction: ANALYZE takes no lock that holds up writes, but inside 00013
-- it ran while the index build's lock did (3.6 s of the 12 s a write to
-- users waited, measured with 1,000,000 users at the index's statistics
-- target of 1000). Without statistics of lower(email) the planner reads
-- common fragments of addresses through the index, slowly, until
-- autovacuum analyses users (after a tenth of it has changed).

-- +goose NO TRANSACTION
-- +goose Up
ANALYZE users;
