-- Named queries of the migration runner.

-- name: migration_lock
-- Held while migrating, so two processes starting at once never apply the
-- same migration twice.
SELECT pg_advisory_xact_lock(7100, 1);

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS tidings;

-- name: create_schema_migrations
CREATE TABLE IF NOT EXISTS tidings.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version, name, checksum FROM tidings.schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO tidings.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: schema_migrations_exists
SELECT to_regclass('tidings.schema_migrations') IS NOT NULL;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM tidings.schema_migrations;
