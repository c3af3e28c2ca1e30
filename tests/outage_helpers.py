"""A throw-away PostgreSQL of its own, to stop and start under a running tidings.

The session's server (tests/conftest.py) is shared by every test and must stay
up; a test that takes the database away gets a server of its own from pgserver
(the same binaries), stopped with `pg_ctl stop -m fast` (clients get 57P01
admin shutdown, then nothing answers until the start) and started again on
the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tidings.eventstore import migrate


class ThrowawayPostgres:
    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver import _commands
            from pgserver.postgres_server import get_server

        self._pg_ctl: Any = _commands.pg_ctl  # type: ignore[attr-defined]
        self._server = get_server(root / "data", cleanup_mode="delete")
        self._pgdata = root / "data"
        uri = urlparse(self._server.get_uri())
        self._socket_dir = parse_qs(uri.query)["host"][0]
        self.running = True
        self._server.psql("CREATE DATABASE tidings;")
        self.conninfo = make_conninfo(
            host=self._socket_dir, port=uri.port or 5432, user="postgres", dbname="tidings"
        )
        asyncio.run(self._migrate())

    async def _migrate(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.conninfo) as conn:
            await migrate(conn)

    def stop(self) -> None:
        """Shut the server down (fast: sessions are ended, nothing answers until start)."""
        self._pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self._pgdata, user=self._server.system_user
        )
        self.running = False

    def start(self) -> None:
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l",
             str(self._pgdata / "log"), "start"],
            pgdata=self._pgdata, user=self._server.system_user, timeout=30,
        )  # fmt: skip
        self.running = True

    def close(self) -> None:
        if not self.running:
            self.start()  # pgserver's cleanup stops the server it knows, then deletes
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl(
                ["-w", "-m", "immediate", "stop"],
                pgdata=self._pgdata,
                user=self._server.system_user,
            )
        self._server.cleanup()


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    root = Path(tempfile.mkdtemp(prefix="tidings-outage-"))
    server = ThrowawayPostgres(root)
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
