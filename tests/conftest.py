"""Test harness: one real PostgreSQL per session, a fresh database per test.

pgserver starts PostgreSQL 16 once (as its own system user when we are root).
pytest-postgresql's noproc fixture builds a template database with the schema
migrated into it, and its client fixture clones a fresh database from that
template for every test and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor

from tidings.config import DatabaseSettings
from tidings.eventstore import Database, EventStore, migrate, open_database


@pytest.fixture(scope="session")
def pg_server() -> Iterator[NoopExecutor]:
    """A PostgreSQL server for the whole session, listening on a Unix socket only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    server = get_server(root / "data", cleanup_mode="delete")
    uri = urlparse(server.get_uri())
    socket_dir = parse_qs(uri.query)["host"][0]
    base = NoopExecutor(
        host=socket_dir,
        port=uri.port or 5432,
        user=uri.username or "postgres",
        options="",
        dbname="tidings_base",
    )
    # The noproc fixtures below clone the base's (empty) template database.
    server.psql(f"CREATE DATABASE {base.template_dbname};")
    try:
        yield base
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def load_schema(
    *, host: str, port: int, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    """Migrate the template database that every test database is cloned from."""
    conninfo = make_conninfo(host=host, port=port, user=user, dbname=dbname, password=password)

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await migrate(conn)

    asyncio.run(run())


tidings_template = factories.postgresql_noproc(depends_on="pg_server", load=[load_schema])
pg_connection = factories.postgresql("tidings_template")
empty_template = factories.postgresql_noproc(depends_on="pg_server", dbname="tidings_empty")
empty_connection = factories.postgresql("empty_template")


def _conninfo(conn: psycopg.Connection[Any]) -> str:
    info = conn.info
    return make_conninfo(host=info.host, port=info.port, user=info.user, dbname=info.dbname)


@pytest.fixture
def conninfo(pg_connection: psycopg.Connection[Any]) -> str:
    """A fresh, migrated database of its own for this test."""
    return _conninfo(pg_connection)


@pytest.fixture
def empty_conninfo(empty_connection: psycopg.Connection[Any]) -> str:
    """A fresh database with no schema at all (for migration tests)."""
    return _conninfo(empty_connection)


@pytest.fixture
def db_settings(conninfo: str) -> DatabaseSettings:
    return DatabaseSettings(url=conninfo, pool_min_size=1, pool_max_size=12)


@pytest.fixture
async def db(db_settings: DatabaseSettings) -> AsyncIterator[Database]:
    async with open_database(db_settings) as database:
        yield database


@pytest.fixture
def store(db: Database) -> EventStore:
    return db.store
