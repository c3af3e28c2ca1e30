"""The composition root of `tidings run`: projector, composer, channels, workers."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime
from pathlib import Path

from tidings.clock import Clock, utc_now
from tidings.config import Settings
from tidings.eventstore import Database
from tidings.eventstore.errors import translated_errors
from tidings.metrics import Metrics
from tidings.notification.backoff import Backoff, Uniform
from tidings.notification.requests import NotifyUser
from tidings.notification.setup import build_channels, build_composer
from tidings.projections import (
    LeaderLock,
    Projector,
    default_projections,
    notify_users,
    users_checkpoint,
)
from tidings.workers import AttemptRunner, Claimed, WorkerPool

log = logging.getLogger("tidings")


class Service:
    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        clock: Clock = utc_now,
        uniform: Uniform = random.uniform,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self.metrics = metrics
        self._settings = settings
        n = settings.notifications
        self.channels = build_channels(settings)
        self.runner = AttemptRunner(
            store=db.store,
            composer=build_composer(settings),
            channels=self.channels,
            users=self.users,
            users_checkpoint=self.users_checkpoint,
            release=self.release,
            settings=n,
            backoff=Backoff(
                min_delay=n.min_retry_delay,
                max_delay=n.max_retry_delay,
                factor=n.retry_delay_factor,
                uniform=uniform,
            ),
            clock=clock,
            metrics=metrics,
        )
        self.pool = WorkerPool(
            db=db, runner=self.runner, settings=n, clock=clock, owner=owner, metrics=metrics
        )
        self.projector = Projector(
            db=db, projections=default_projections(db, settings), settings=settings.projections
        )

    @property
    def outbox(self) -> Path:
        return self._settings.channels.filesystem.outbox(self._settings.database.data_folder())

    async def users(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], NotifyUser]:
        """The users read model's answer for a bulk, for the workers."""
        with translated_errors():
            async with self._db.pool.connection() as conn:
                return await notify_users(conn, keys)

    async def users_checkpoint(self) -> int:
        """How far the users read model has read the log, for the workers."""
        with translated_errors():
            async with self._db.pool.connection() as conn:
                return await users_checkpoint(conn)

    async def release(self, put_off: list[tuple[Claimed, datetime]]) -> None:
        await self.pool.queue.release(put_off)

    def leader(self) -> LeaderLock:
        return LeaderLock(
            conninfo=self._db.conninfo,
            retry_every=self._settings.projections.leader_retry_every.total_seconds(),
        )

    async def run(
        self,
        *,
        stop: asyncio.Event,
        workers: int,
        retry_workers: int,
        projector: bool,
        until_idle: bool,
    ) -> None:
        if until_idle:
            await self._run_until_idle(stop, workers, retry_workers, projector)
            return
        async with asyncio.TaskGroup() as group:  # one failing cancels the other
            group.create_task(
                self.pool.run(stop=stop, workers=workers, retry_workers=retry_workers)
            )
            if projector:
                group.create_task(self.projector.run(stop=stop, leader=self.leader()))
        log.info(
            "stopped: in-flight attempts finished and recorded", extra={"owner": self.pool.owner}
        )

    async def _run_until_idle(
        self, stop: asyncio.Event, workers: int, retry_workers: int, projector: bool
    ) -> None:
        leader = self.leader() if projector else None
        if leader is not None and not await leader.acquire(stop):
            return
        try:
            while not stop.is_set():
                covered = await self.projector.catch_up() if projector else 0
                await self.pool.run(
                    stop=stop, workers=workers, retry_workers=retry_workers, until_idle=True
                )
                if not covered and (not projector or not await self.projector.catch_up()):
                    return
        finally:
            if leader is not None:
                await leader.release()

    async def close(self) -> None:
        await self.channels.close()
