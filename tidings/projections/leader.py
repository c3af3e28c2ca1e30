"""One active projector: a PostgreSQL session advisory lock held on its own connection.

When the holder dies, its connection closes and PostgreSQL frees the lock, so a
standby takes over on its next try. The checkpoints' compare-and-set keeps
the log safe even if two projectors ever overlap for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from tidings.projections.sql import query

log = logging.getLogger(__name__)


class LeaderLock:
    def __init__(self, *, conninfo: str, retry_every: float) -> None:
        self._conninfo = conninfo
        self._retry_every = retry_every
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lock (True) or `stop` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            if await self._try():
                log.info("this process is now the active projector")
                return True
            if not waiting_logged:
                log.info(
                    "another process is projecting; standing by, trying every %gs",
                    self._retry_every,
                )
                waiting_logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._retry_every)
        return False

    async def _try(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name="tidings-projector-leader"
                )
            cur = await self._conn.execute(query("leader_try_lock"))
            row = await cur.fetchone()
            return bool(row and row[0])
        except psycopg.OperationalError as exc:
            log.warning("cannot reach the database to take the projector lock: %s", exc)
            await self.release()
            return False

    async def still_held(self) -> bool:
        """Whether the lock's connection is alive (and so the lock still ours)."""
        if self._conn is None or self._conn.closed:
            return False
        try:
            await self._conn.execute("SELECT 1")
        except psycopg.OperationalError:
            log.warning("lost the connection that holds the projector lock")
            await self.release()
            return False
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            if not conn.closed:
                await conn.execute(query("leader_unlock"))
        with contextlib.suppress(psycopg.Error):
            await conn.close()
