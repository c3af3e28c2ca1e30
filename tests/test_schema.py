"""schema.sql is what the migrations build: one database from each, compared.

pg_dump --schema-only of both (tables, indexes, functions, triggers, views,
storage parameters, comments) must be identical, and both must record the same
migrations, so `tidings migrate` on a schema.sql install has nothing to do.
"""

from __future__ import annotations

from typing import Any

import psycopg

from tidings.eventstore import current_version, latest_version, migrate
from tidings.eventstore.migrate import migrations
from tidings.eventstore.schema import dump_schema, install, render, schema_sql


async def _recorded(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    cur = await conn.execute(
        "SELECT version, name, checksum FROM tidings.schema_migrations ORDER BY version"
    )
    return list(await cur.fetchall())


async def test_schema_sql_builds_what_the_migrations_build(empty_conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_conninfo, autocommit=True) as conn:
        await migrate(conn)
        migrated = dump_schema(empty_conninfo)
        migrated_versions = await _recorded(conn)
        await conn.execute("DROP SCHEMA tidings CASCADE")

        await install(conn)
        installed = dump_schema(empty_conninfo)
        assert await _recorded(conn) == migrated_versions
        assert await current_version(conn) == latest_version()
        assert await migrate(conn) == [], "nothing left to apply"

    assert "CREATE TABLE tidings.events" in installed
    assert "CREATE TRIGGER events_pending_notifications" in installed
    assert installed == migrated, "schema.sql differs: regenerate it with `python3 dev.py schema`"
    # And the file is exactly what the generator writes for these migrations.
    assert schema_sql() == render(migrated, migrations()), "run `python3 dev.py schema`"
