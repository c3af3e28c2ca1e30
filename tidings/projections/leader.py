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

from tidings.eventstore.outage import Outage, backoff_delays, wait_or_stop
from tidings.projections.sql import query

log = logging.getLogger(__name__)

# A server that does not answer at all must not hold a try for the kernel's
# TCP timeout (and with it a shutdown).
_CONNECT_TIMEOUT = 5


class LeaderLock:
    def __init__(self, *, conninfo: str, retry_every: float) -> None:
        self._conninfo = conninfo
        self._retry_every = retry_every
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._outage = Outage(
            "projector lock",
            retried="taking the lock is retried; no events are projected meanwhile",
            logger=log,
        )

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lock (True) or `stop` is set (False).

        Another holder is retried every `retry_every`; an unreachable database
        with backoff (from retry_every up to 10 s), logged once per outage.
        """
        waiting_logged = False
        delays = backoff_delays(first=self._retry_every, cap=max(10.0, self._retry_every))
        while not stop.is_set():
            try:
                held = await self._try()
            except psycopg.OperationalError as exc:
                await self.release()
                delay = next(delays)
                self._outage.failed(exc, retry_in=delay)
                if await wait_or_stop(stop, delay):
                    return False
                continue
            self._outage.recovered()
            delays = backoff_delays(first=self._retry_every, cap=max(10.0, self._retry_every))
            if held:
                log.info("this process is now the active projector")
                return True
            if not waiting_logged:
                log.info(
                    "another process holds the projector lock and is projecting; "
                    "standing by, trying every %gs",
                    self._retry_every,
                )
                waiting_logged = True
            if await wait_or_stop(stop, self._retry_every):
                return False
        return False

    async def _try(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                application_name="tidings-projector-leader",
                connect_timeout=_CONNECT_TIMEOUT,
            )
        cur = await self._conn.execute(query("leader_try_lock"))
        row = await cur.fetchone()
        return bool(row and row[0])

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
        with contextlib.suppress(psycopg.Error, TimeoutError):
            if not conn.closed:
                async with asyncio.timeout(2):  # closing the connection frees it anyway
                    await conn.execute(query("leader_unlock"))
        with contextlib.suppress(psycopg.Error):
            await conn.close()
