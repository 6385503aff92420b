-- Admin search by part of an address without reading every user.
--
-- /admin/users finds live users whose address contains what support typed
-- (store.SearchUsers: lower(email) LIKE '%…%'). No b-tree serves a
-- "contains" match, so with 1,000,000 users a search for one address read
-- them all: 0.4-0.8 s on the development machine. A trigram index answers
-- it from the index (README, "Benchmarks": admin user search).
--
-- pg_trgm is one of PostgreSQL's contrib extensions, shipped with Debian's
-- and Docker's postgres, with the binaries `make dev` downloads, and on the
-- managed services; it is a trusted extension, which the database's owner
-- (or any role with CREATE on the database) may create. Where it, or the
-- index, cannot be made for want of something (no contrib, no privilege,
-- an extension installed in a schema this role may not use), the migration
-- goes on without the index and search still works, by reading the users;
-- `migrate up` then logs a warning (store.Migrate). Any other error (a lock
-- timeout, a full disk) fails the migration, which runs again next time.
-- An index of that name made beforehand (e.g. CONCURRENTLY, to avoid the
-- lock below) is kept; store.Migrate warns when it is not the index search
-- needs (invalid, partial, another kind).
--
-- The index covers every user, not only live ones (a deleted account's
-- address is NULL anyway): the planner ignores the statistics of a partial
-- index's expression, and without them it takes any "contains" pattern for
-- a rare one, reading a quarter of the users through this index for a
-- search that walking the newest ids answers at once (measured: 220 ms
-- against 1 ms for a domain). Its statistics are sampled ten times finer
-- than the default: with the default, patterns matching under 1 in 100
-- sampled addresses were all estimated at ~125 rows, and short or common
-- fragments ("a.c", "e@g", "m@gmail.com", matching a few thousand of 1.27M
-- users) were read through the index in 140-400 ms where walking ids took
-- 5-90 ms. They are gathered by the next migration, outside this one's
-- lock (autovacuum would wait for a tenth of the table to change).
--
-- Building the index locks the users table against writes (sign-ups,
-- sign-ins that rehash a password, verifications, address and password
-- changes, role changes, deletions) while it runs: about 6 s per 1,000,000
-- users on the development machine.

-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    v_schema name;
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        -- The extension may have been created before, in another schema.
        SELECT n.nspname INTO v_schema
          FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pg_trgm';
        EXECUTE format('CREATE INDEX IF NOT EXISTS users_email_search_idx ON users USING gin (lower(email) %I.gin_trgm_ops)',
                       v_schema);
    EXCEPTION
        -- What a role or an installation may lack: no privilege (to create
        -- the extension, or to use the schema it is in), no contrib files,
        -- a schema or operator class that is not there.
        WHEN insufficient_privilege OR undefined_file OR feature_not_supported OR invalid_schema_name OR undefined_object THEN
            RAISE WARNING 'admin search index not made (%): search by address will read every user', SQLERRM;
            RETURN;
    END;
    BEGIN
        ALTER INDEX users_email_search_idx ALTER COLUMN 1 SET STATISTICS 1000;
    EXCEPTION
        -- An index of that name made beforehand on a column, not on
        -- lower(email): store.Migrate says so.
        WHEN feature_not_supported THEN
            RAISE WARNING 'statistics target of users_email_search_idx not set (%)', SQLERRM;
    END;
END;
$$;
-- +goose StatementEnd
