"""Numbered SQL migrations, applied in order and recorded with their checksum."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from psycopg import AsyncConnection

from tidings.eventstore.errors import MigrationError, SchemaNotReady, translated_errors
from tidings.eventstore.sql import query

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The packaged migrations, by version."""
    found: list[Migration] = []
    for entry in resources.files("tidings.eventstore.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def latest_version() -> int:
    return len(migrations())


async def current_version(conn: AsyncConnection[Any]) -> int:
    """The schema version of the database (0 when never migrated)."""
    with translated_errors():
        cur = await conn.execute(query("schema_migrations_exists"))
        row = await cur.fetchone()
        if row is None or not row[0]:
            return 0
        cur = await conn.execute(query("schema_version"))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def migrate(conn: AsyncConnection[Any], *, target: int | None = None) -> list[Migration]:
    """Apply the missing migrations up to `target` (default: all) in one transaction.

    Idempotent: a second call applies nothing. Returns what was applied.
    """
    known = migrations()
    target = len(known) if target is None else target
    if not 0 <= target <= len(known):
        raise MigrationError(f"no migration {target}: this tidings knows 1..{len(known)}")
    applied: list[Migration] = []
    with translated_errors():
        async with conn.transaction():
            await conn.execute(query("migration_lock"))
            await conn.execute(query("create_schema"))
            await conn.execute(query("create_schema_migrations"))
            cur = await conn.execute(query("applied_migrations"))
            done = {int(v): (n, c) for v, n, c in await cur.fetchall()}
            newest = max(done, default=0)
            if newest > len(known):
                raise MigrationError(
                    f"the database schema is at version {newest}, newer than this tidings "
                    f"(knows 1..{len(known)}): upgrade tidings",
                    version=newest,
                )
            for migration in known:
                recorded = done.get(migration.version)
                if recorded is not None:
                    if recorded[1] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} was changed "
                            "after it was applied; restore the file, never edit an applied one",
                            version=migration.version,
                            name=migration.name,
                        )
                    continue
                if migration.version > target:
                    break
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    query("record_migration"),
                    {
                        "version": migration.version,
                        "name": migration.name,
                        "checksum": migration.checksum,
                    },
                )
                applied.append(migration)
    return applied


async def require_current_schema(conn: AsyncConnection[Any]) -> None:
    """Raise SchemaNotReady unless the database is migrated to this tidings' version."""
    version = await current_version(conn)
    expected = latest_version()
    if version < expected:
        raise SchemaNotReady(
            f"the database schema is at version {version}, this tidings needs {expected}: "
            "run `tidings migrate`",
            current_version=version,
            expected_version=expected,
        )
