"""Who is connected, on which serve process: shared through two small tables (migration 0010).

Each serve process knows only its own connections. Its Presence keeps them in
tidings.feed_presence, one row per (process, instance, user) with how many
connections of which transport and since when, so any process can answer
GET /v1/presence/{user_id} for all of them.

The hot path stays cheap: a connection that opens or closes only marks its
user as changed (a set and an event, no query); the changes are written a
moment later, all in one transaction (`flush_every`), and a message never
writes anything. Every `heartbeat` the process beats (tidings.feed_processes),
which also deletes the processes that stopped beating (killed, partitioned)
for `3 x heartbeat`, their presence rows with them. A process whose own row
was cleaned meanwhile (a long outage) writes its presence again in full. A
clean stop deletes the process's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tidings.eventstore import DatabaseUnavailable, EventStore
from tidings.eventstore.errors import translated_errors
from tidings.eventstore.outage import Outage
from tidings.feeds.sql import query

if TYPE_CHECKING:
    from tidings.feeds.hub import FeedHub

log = logging.getLogger("tidings.feeds")

EXPIRY_BEATS = 3  # a process that missed this many heartbeats is gone


@dataclass(frozen=True)
class ProcessPresence:
    """A user's connections on one serve process."""

    process_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    connections: int
    transports: dict[str, int]
    since: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "host": self.host,
            "pid": self.pid,
            "connections": self.connections,
            "transports": self.transports,
            "since": self.since.isoformat(),
            "process_started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
        }


async def presence_of(store: EventStore, instance_id: str, user_id: str) -> list[ProcessPresence]:
    """Where the user is connected now: one entry per live serve process, oldest first."""
    with translated_errors():
        async with store.pool.connection() as conn:
            cur = await conn.execute(
                query("presence_of_user"), {"instance_id": instance_id, "user_id": user_id}
            )
            rows = await cur.fetchall()
    return [
        ProcessPresence(
            process_id=r[0],
            host=r[1],
            pid=int(r[2]),
            started_at=r[3],
            heartbeat_at=r[4],
            connections=int(r[5]),
            transports={k: int(v) for k, v in r[6].items()},
            since=r[7],
        )
        for r in rows
    ]


class Presence:
    """One serve process's part of the shared presence; the hub runs it beside itself."""

    def __init__(
        self,
        *,
        store: EventStore,
        heartbeat: float = 10.0,
        flush_every: float = 0.2,
        host: str | None = None,
    ) -> None:
        self._store = store
        self.heartbeat = heartbeat
        self._flush_every = flush_every
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.process_id = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.started_at = datetime.now(UTC)
        self._changed: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._joined = False
        self._outage = Outage(
            "feed presence",
            retried="presence is written again once it answers (streams are not affected)",
            logger=log, fields={"process_id": self.process_id},
        )  # fmt: skip

    def changed(self, instance_id: str, user_id: str) -> None:
        """A connection of the user opened or closed here: written at the next flush."""
        self._changed.add((instance_id, user_id))
        self._wake.set()

    async def run(self, hub: FeedHub) -> None:
        """Beat and write the changes until cancelled (the hub stops)."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        full = True  # the first write says everything this process holds
        while True:
            timeout = max(next_beat - loop.time(), 0.0)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
            # cancel that comes as the wake-up does (a connection closing as the
            # hub stops), and the hub would wait on this task for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if self._wake.is_set():
                await asyncio.sleep(self._flush_every)  # gather a burst of connects into one write
            self._wake.clear()
            beat = loop.time() >= next_beat
            try:
                full = await self._write(hub, beat=beat or full, full=full)
            except DatabaseUnavailable as exc:
                self._outage.failed(exc, retry_in=self.heartbeat)
                full = True  # what was lost meanwhile is written in full
                next_beat = loop.time() + self.heartbeat
                continue
            self._outage.recovered()
            if beat:
                next_beat = loop.time() + self.heartbeat

    async def _write(self, hub: FeedHub, *, beat: bool, full: bool) -> bool:
        """One transaction: the heartbeat when due, then the changed users; False when done."""
        changed, self._changed = self._changed, set()
        try:
            with translated_errors():
                async with self._store.pool.connection() as conn, conn.transaction():
                    if beat:
                        cur = await conn.execute(query("presence_join"), self._process_row())
                        row = await cur.fetchone()
                        if row is not None and row[0] and self._joined:
                            full = True  # our row was cleaned while we could not beat
                        self._joined = True
                        await conn.execute(query("presence_expire"))
                    if full:
                        await conn.execute(query("presence_clear"), {"process_id": self.process_id})
                        changed = set(hub.users())
                    await self._write_users(conn, hub, changed)
        except BaseException:
            self._changed |= changed  # written with the next try
            raise
        return False

    async def _write_users(self, conn: Any, hub: FeedHub, users: set[tuple[str, str]]) -> None:
        keep: list[tuple[str, str, int, str, datetime]] = []
        drop: list[tuple[str, str]] = []
        for instance_id, user_id in sorted(users):
            subs = hub.user_connections(instance_id, user_id)
            if not subs:
                drop.append((instance_id, user_id))
                continue
            transports = Counter(sub.transport for sub in subs)
            since = min(sub.connected_at for sub in subs)
            keep.append((instance_id, user_id, len(subs), json.dumps(transports), since))
        if drop:
            await conn.execute(
                query("presence_drop"),
                {
                    "process_id": self.process_id,
                    "instance_ids": [d[0] for d in drop],
                    "user_ids": [d[1] for d in drop],
                },
            )
        if keep:
            await conn.execute(
                query("presence_set"),
                {
                    "process_id": self.process_id,
                    "instance_ids": [k[0] for k in keep],
                    "user_ids": [k[1] for k in keep],
                    "connections": [k[2] for k in keep],
                    "transports": [k[3] for k in keep],
                    "since": [k[4] for k in keep],
                },
            )

    def _process_row(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "expiry": self.heartbeat * EXPIRY_BEATS,
        }

    async def leave(self) -> None:
        """The process stops: its rows go (best effort; otherwise they expire)."""
        self._joined = False
        self._changed.clear()
        try:
            async with asyncio.timeout(2.0):
                with translated_errors():
                    async with self._store.pool.connection() as conn:
                        await conn.execute(query("presence_leave"), {"process_id": self.process_id})
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.warning(
                "feed presence of process %s could not be removed at stop (%s); it expires "
                "within %.0fs",
                self.process_id, exc, self.heartbeat * EXPIRY_BEATS,
                extra={"process_id": self.process_id},
            )  # fmt: skip
