"""Migrations: idempotent, recorded, and step by step equal to a fresh install."""

from __future__ import annotations

import psycopg
import pytest

from tidings.config import DatabaseSettings
from tidings.eventstore import (
    MigrationError,
    SchemaNotReady,
    current_version,
    latest_version,
    migrate,
    open_database,
)
from tidings.eventstore.schema import dump_schema as schema_dump


async def test_migrate_is_idempotent_and_records_versions(empty_conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_conninfo) as conn:
        assert await current_version(conn) == 0
        applied = await migrate(conn)
        assert [m.version for m in applied] == list(range(1, latest_version() + 1))
        assert await migrate(conn) == []
        assert await current_version(conn) == latest_version()
        cur = await conn.execute("SELECT version, name, checksum FROM tidings.schema_migrations")
        rows = await cur.fetchall()
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in applied]
    assert all(len(checksum) == 64 for _, _, checksum in rows)


async def test_step_by_step_equals_fresh_install(empty_conninfo: str) -> None:
    assert latest_version() >= 2, "the comparison needs at least two migrations"
    async with await psycopg.AsyncConnection.connect(empty_conninfo, autocommit=True) as conn:
        for target in range(1, latest_version() + 1):
            applied = await migrate(conn, target=target)
            assert [m.version for m in applied] == [target]
        stepwise = schema_dump(empty_conninfo)
        await conn.execute("DROP SCHEMA tidings CASCADE")
        await migrate(conn)
        fresh = schema_dump(empty_conninfo)
    assert "CREATE TABLE tidings.events" in fresh
    assert stepwise == fresh


async def test_edited_applied_migration_is_refused(empty_conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_conninfo, autocommit=True) as conn:
        await migrate(conn)
        await conn.execute("UPDATE tidings.schema_migrations SET checksum = 'x' WHERE version = 1")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn)


async def test_newer_database_than_this_tidings_is_refused(empty_conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_conninfo, autocommit=True) as conn:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO tidings.schema_migrations (version, name, checksum)"
            " VALUES (99, 'future', 'x')"
        )
        with pytest.raises(MigrationError, match="upgrade tidings"):
            await migrate(conn)


async def test_opening_an_unmigrated_database_says_to_migrate(empty_conninfo: str) -> None:
    with pytest.raises(SchemaNotReady, match="run `tidings migrate`"):
        async with open_database(DatabaseSettings(url=empty_conninfo)):
            pass


async def test_concurrent_migrations_apply_each_version_once(empty_conninfo: str) -> None:
    import asyncio

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(empty_conninfo) as conn:
            return [m.version for m in await migrate(conn)]

    results = await asyncio.gather(*(run() for _ in range(4)))
    applied = sorted(v for result in results for v in result)
    assert applied == list(range(1, latest_version() + 1))
