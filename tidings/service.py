"""The composition root of `tidings run`: projector, composer, channels, workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from tidings.clock import Clock, utc_now
from tidings.config import Settings
from tidings.config.durations import format_duration
from tidings.eventstore import Database, single_statement
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
            async with single_statement(self._db.pool) as conn:  # one SELECT
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
        """Run until `stop` (or idle); once stopping, give the work shutdown_grace to finish.

        In-flight attempts finish and record their outcomes; whatever is still
        running when the grace period ends (a database that does not answer) is
        canceled, and what could not be recorded is logged by notification.
        """
        if until_idle:
            work = asyncio.create_task(
                self._run_until_idle(stop, workers, retry_workers, projector)
            )
        else:
            work = asyncio.create_task(self._run_all(stop, workers, retry_workers, projector))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            grace = self._settings.notifications.shutdown_grace
            if not work.done():
                done, _ = await asyncio.wait({work}, timeout=grace.total_seconds())
                if not done:
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                    log.error(
                        "stopped after shutdown_grace (%s) with work still running (the "
                        "database did not answer); %d attempts not recorded, listed above: "
                        "they are claimed again when their lease runs out",
                        format_duration(grace), self.pool.unrecorded,
                        extra={"owner": self.pool.owner, "unrecorded": self.pool.unrecorded},
                    )  # fmt: skip
                    return
            work.result()
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
        if until_idle:
            return
        if self.pool.unrecorded:
            log.warning(
                "stopped: %d in-flight attempts could not be recorded (listed above); they are "
                "claimed again when their lease runs out",
                self.pool.unrecorded,
                extra={"owner": self.pool.owner, "unrecorded": self.pool.unrecorded},
            )
        else:
            log.info(
                "stopped: in-flight attempts finished and recorded",
                extra={"owner": self.pool.owner},
            )

    async def _run_all(
        self, stop: asyncio.Event, workers: int, retry_workers: int, projector: bool
    ) -> None:
        async with asyncio.TaskGroup() as group:  # one failing cancels the other
            group.create_task(
                self.pool.run(stop=stop, workers=workers, retry_workers=retry_workers)
            )
            if projector:
                group.create_task(
                    _stopped_promptly(self.projector.run(stop=stop, leader=self.leader()), stop)
                )

    async def _run_until_idle(
        self, stop: asyncio.Event, workers: int, retry_workers: int, projector: bool
    ) -> None:
        leader = self.leader() if projector else None
        if leader is not None and not await leader.acquire(stop):
            return
        try:
            while not stop.is_set():
                covered = await self.projector.catch_up(stop=stop) if projector else 0
                await self.pool.run(
                    stop=stop, workers=workers, retry_workers=retry_workers, until_idle=True
                )
                if not covered and (not projector or not await self.projector.catch_up(stop=stop)):
                    return
        finally:
            if leader is not None:
                await leader.release()

    async def close(self) -> None:
        await self.channels.close()


async def _stopped_promptly(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run `work`; once `stop` is set, give it a second, then cancel it.

    For the projector: a batch is one transaction, so canceling it mid-way
    rolls it back and loses nothing, and a database that hangs (a lock, a
    partition) cannot hold the shutdown for the whole grace period.
    """
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                log.info("projector stopped mid-batch: the batch was rolled back, nothing lost")
                return
        task.result()
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
