"""Opening the database: the configured server, or the embedded one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tidings.config import DatabaseSettings
from tidings.config.masking import mask_url
from tidings.eventstore.embedded import start_embedded
from tidings.eventstore.errors import (
    DatabaseUnavailable,
    EmbeddedDatabaseRefused,
    translated_errors,
)
from tidings.eventstore.migrate import require_current_schema
from tidings.eventstore.store import EventStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Database:
    """A connected database: its conninfo (for listeners), pool and event store."""

    conninfo: str
    pool: AsyncConnectionPool[Any]
    store: EventStore

    @property
    def target(self) -> str:
        return describe_target(self.conninfo)


def describe_target(conninfo: str) -> str:
    """The conninfo with its password masked, fit for logs and errors."""
    return mask_url(conninfo)


async def resolve_conninfo(settings: DatabaseSettings) -> str:
    """database.url when set; otherwise start the embedded server and use it."""
    if settings.url is not None:
        return settings.url.get_secret_value()
    if not settings.allow_embedded:
        # The container image says so (TIDINGS_DATABASE_ALLOW_EMBEDDED=false): a
        # pgserver started in a pod would keep every event in the pod's own disk,
        # lost at its next restart, and each replica would have a log of its own.
        raise EmbeddedDatabaseRefused(
            "no database.url is set, and this tidings runs where the embedded PostgreSQL "
            "is not allowed (database.allow_embedded is false, as in the tidings container "
            "image): set TIDINGS_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME "
            "to your PostgreSQL, e.g. from a Kubernetes Secret or the compose env file"
        )
    data_dir = settings.embedded_data_dir()
    return await asyncio.to_thread(start_embedded, data_dir)


@asynccontextmanager
async def open_database(
    settings: DatabaseSettings, *, require_schema: bool = True
) -> AsyncIterator[Database]:
    """Connect (starting the embedded server if needed) and yield the Database.

    With `require_schema`, refuses a database that `tidings migrate` has not
    brought up to this version, before anything else touches it.
    """
    conninfo = await resolve_conninfo(settings)
    target = describe_target(conninfo)
    timeout = settings.connect_timeout.total_seconds()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=timeout,
        open=False,
        name="tidings",
    )
    try:
        await pool.open(wait=True, timeout=timeout)
    except PoolTimeout as exc:
        await pool.close()
        reason = await _why_unreachable(conninfo, timeout)
        raise DatabaseUnavailable(
            f"cannot connect to the database {target} within {timeout:g}s: {reason}; "
            "check that it runs and that database.url (TIDINGS_DATABASE_URL) is right",
            target=target,
        ) from exc
    try:
        if require_schema:
            with translated_errors():
                async with pool.connection() as conn:
                    await require_current_schema(conn)
        log.debug("connected to %s", target)
        yield Database(conninfo=conninfo, pool=pool, store=EventStore(pool=pool))
    finally:
        await pool.close()


async def _why_unreachable(conninfo: str, timeout: float) -> str:
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as exc:
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__
    await conn.close()
    return "the server answered only after the timeout"
