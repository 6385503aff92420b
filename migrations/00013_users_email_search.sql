-- Admin search by part of an address without reading every user.
--
-- /admin/users finds live users whose address contains what support typed
-- (store.SearchUsers: lower(email) LIKE '%…%'). No b-tree serves a
-- "contains" match, so with 1,000,000 users a search for one address read
-- them all: 0.5-0.8 s on the development machine. A trigram index answers
-- it from the index (README, "Benchmarks": admin user search).
--
-- pg_trgm is one of PostgreSQL's contrib extensions, shipped with Debian's
-- and Docker's postgres, with the binaries `make dev` downloads, and on the
-- managed services; it is a trusted extension, which the database's owner
-- (or any role with CREATE on the database) may create. Where it cannot be
-- created, the migration says so in a warning and goes on without the
-- index: search still works, by reading the users.
--
-- Building the index locks the users table against writes (sign-ups,
-- address changes) while it runs: about 6 s per 1,000,000 users here.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    v_schema name;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pg_trgm could not be created (%): admin search by address will read every user', SQLERRM;
        RETURN;
    END;
    -- The extension may have been created before, in another schema.
    SELECT n.nspname INTO v_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_trgm';
    -- Over every user, not only live ones (a deleted account's address is
    -- NULL anyway): ANALYZE keeps statistics of an index's expression only
    -- for an index without a WHERE clause, and without them the planner
    -- takes any "contains" pattern for a rare one, reading a quarter of
    -- the users from this index for a search that walking the newest ids
    -- answers at once (measured: 220 ms against 1 ms for a domain).
    EXECUTE format('CREATE INDEX users_email_search_idx ON users USING gin (lower(email) %I.gin_trgm_ops)', v_schema);
END;
$$;
-- +goose StatementEnd
