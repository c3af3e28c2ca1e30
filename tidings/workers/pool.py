"""The worker pool: request workers and retry workers over the pending queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter
from datetime import timedelta

from tidings.clock import Clock
from tidings.config import NotificationSettings
from tidings.errors import TidingsError
from tidings.eventstore import Database, DatabaseUnavailable, WakeUp, wakeups
from tidings.eventstore.outage import Outage
from tidings.metrics import Metrics
from tidings.notification.events import RETRY_REQUESTED
from tidings.notification.requests import REQUESTED
from tidings.workers.attempt import AttemptRunner, Outcome
from tidings.workers.queue import Claimed, Kind, PendingQueue

log = logging.getLogger("tidings.workers")


def default_owner() -> str:
    """Who holds a lease: host, process and a random part, for the queue's lease_owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class WorkerPool:
    """`workers` request workers and `retry_workers` retry workers, as asyncio tasks.

    Each worker claims up to bulk_limit due notifications in one statement,
    sends them concurrently, and records each outcome on its own. It wakes on
    an append of a request or retry, or every requeue_every /
    retry_requeue_every at the latest.
    """

    def __init__(
        self,
        *,
        db: Database,
        runner: AttemptRunner,
        settings: NotificationSettings,
        clock: Clock,
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._runner = runner
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self.owner = owner or default_owner()
        self.queue = PendingQueue(pool=db.pool)
        self._outcomes: Counter[str] = Counter()
        self._claims_outage = Outage(
            f"worker pool {self.owner}",
            retried="claiming is retried; nothing new is sent meanwhile",
            logger=log,
            fields={"owner": self.owner},
        )
        self.abandoned: list[Claimed] = []  # in flight when a shutdown ran out of time

    @property
    def unrecorded(self) -> int:
        """Attempts of the last run whose outcome could not be recorded."""
        return self._outcomes["unrecorded"] + len(self.abandoned)

    async def run(
        self,
        *,
        stop: asyncio.Event,
        workers: int,
        retry_workers: int,
        until_idle: bool = False,
    ) -> None:
        """Work until `stop` is set; with `until_idle`, until nothing of ours is pending.

        When `stop` is set, no new claims are made; the bulks in flight finish
        and their outcomes are recorded before this returns.
        """
        plan: tuple[tuple[Kind, int], ...] = (("request", workers), ("retry", retry_workers))
        kinds = tuple(kind for kind, count in plan if count > 0)
        if not kinds:
            return
        wakes: dict[Kind, list[asyncio.Event]] = {"request": [], "retry": []}
        fields = {
            "owner": self.owner,
            "request_workers": workers,
            "retry_workers": retry_workers,
            "bulk_limit": self._settings.bulk_limit,
            "lease_seconds": self._settings.transaction_duration.total_seconds(),
            "until_idle": until_idle,
        }
        log.info(
            "worker pool %s: %d request and %d retry workers, bulk %d",
            self.owner, workers, retry_workers, self._settings.bulk_limit, extra=fields,
        )  # fmt: skip
        self._outcomes = Counter()
        self.abandoned = []
        listening = asyncio.Event()
        listener = asyncio.create_task(self._listen(wakes, until_idle, listening))
        try:
            # The first claim follows the LISTEN, so no append falls between them.
            await _wait(stop, self._poll_seconds(), listening)
            # A task group: should a worker ever die of a bug, the others are
            # canceled and the error ends the process, instead of a pool that
            # silently lost its workers.
            async with asyncio.TaskGroup() as group:
                for kind, count in plan:
                    for number in range(count):
                        wake = asyncio.Event()
                        wakes[kind].append(wake)
                        group.create_task(
                            self._loop(kind, wake, stop, kinds, until_idle),
                            name=f"{kind}-worker-{number + 1}",
                        )
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            outcomes = dict(sorted(self._outcomes.items()))
            log.info(
                "worker pool %s stopped after %d attempts (%s)",
                self.owner, sum(outcomes.values()),
                ", ".join(f"{result} {n}" for result, n in outcomes.items()) or "none",
                extra={**fields, "attempts": outcomes},
            )  # fmt: skip

    async def _loop(
        self,
        kind: Kind,
        wake: asyncio.Event,
        stop: asyncio.Event,
        kinds: tuple[Kind, ...],
        until_idle: bool,
    ) -> None:
        interval = (
            self._settings.requeue_every
            if kind == "request"
            else self._settings.retry_requeue_every
        ).total_seconds()
        failures = 0
        while not stop.is_set():
            # Cleared before reading: a wake-up that arrives during the claim or
            # the idle check stays set and ends the wait below at once.
            wake.clear()
            try:
                claimed = await self.claim(kind)
                failures = 0
                self._claims_outage.recovered()
            except DatabaseUnavailable as exc:
                failures += 1
                delay = min(0.2 * 2**failures, 10.0)
                self._claims_outage.failed(exc, retry_in=delay)  # logged once for all workers
                await _wait(stop, delay)
                continue
            if claimed:
                await self.process(claimed)
                if len(claimed) >= self._settings.bulk_limit or wake.is_set():
                    continue
                # A short bulk took every row claimable at the claim, and an append
                # since then has woken this worker (or will, and ends the wait at
                # once): no second claim to find nothing, straight to the idle path.
            try:
                if until_idle and not await self.queue.has_pending(kinds):
                    return
                wait = await self._idle_wait(kind, interval)
            except TidingsError as exc:  # the idle path must never take a worker down
                log.warning("%s worker's idle check failed (%s); polling again", kind, exc)
                wait = interval
            await _wait(stop, wait, wake)

    async def claim(self, kind: Kind) -> list[Claimed]:
        now = self._clock()
        window = self._settings.handle_active_instances
        claimed = await self.queue.claim(
            kind=kind,
            limit=self._settings.bulk_limit,
            now=now,
            lease=self._settings.transaction_duration,
            owner=self.owner,
            active_since=now - window if window > timedelta(0) else None,
        )
        if self._metrics is not None:
            for c in claimed:
                # due_at: a request's is its request time, a retry's when it is due.
                # `claims` counts every claim of the notification, and each recorded
                # attempt took one: more than attempts + 1 means a lease ran out.
                self._metrics.picked_up(
                    c.kind,
                    (now - c.due_at).total_seconds(),
                    lease_expired=c.claims > c.attempts + 1,
                )
        return claimed

    async def process(self, claimed: list[Claimed]) -> list[Outcome]:
        """Send a claimed bulk concurrently; every outcome is recorded by its attempt."""
        try:
            outcomes = await self._runner.run_bulk(claimed)
        except asyncio.CancelledError:  # a shutdown that ran out of time: say what is open
            self.abandoned.extend(claimed)
            log.error(
                "stopped before the outcomes of %d notifications were recorded; each will be "
                "claimed again when its lease runs out, and one already sent sent again: %s",
                len(claimed),
                "; ".join(
                    f"notification {c.notification_id} (instance {c.instance_id}, "
                    f"attempt {c.attempt})"
                    for c in claimed
                ),
                extra={
                    "owner": self.owner,
                    "notification_ids": [c.notification_id for c in claimed],
                },
            )
            raise
        self._outcomes.update(outcome.result for outcome in outcomes)
        return outcomes

    async def _idle_wait(self, kind: Kind, interval: float) -> float:
        """Sleep until the next wake-up, the poll interval, or the next due time."""
        next_due = await self.queue.next_due((kind,))
        if next_due is None:
            return interval
        until_due = (next_due - self._clock()).total_seconds()
        return min(interval, max(until_due, 0.01))

    def _poll_seconds(self) -> float:
        every = min(self._settings.requeue_every, self._settings.retry_requeue_every)
        return max(every.total_seconds(), 0.1)

    async def _listen(
        self,
        wakes: dict[Kind, list[asyncio.Event]],
        until_idle: bool,
        listening: asyncio.Event,
    ) -> None:
        async for woke in wakeups(
            self._db.conninfo,
            timeout=self._poll_seconds(),
            who="workers",
            on_listening=listening.set,
        ):
            if woke is None:
                continue
            for kind in _kinds_woken(woke, until_idle):
                for event in wakes[kind]:
                    event.set()


def _kinds_woken(woke: WakeUp, until_idle: bool) -> list[Kind]:
    types = set(woke.event_types)
    if not types:  # a wake-up too large to list its types: wake everyone
        return ["request", "retry"]
    if until_idle and any(t.startswith("notification.") for t in types):
        return ["request", "retry"]  # a settled notification may be the last: look again
    woken: list[Kind] = []
    if REQUESTED in types:
        woken.append("request")
    if RETRY_REQUESTED in types:
        woken.append("retry")
    return woken


async def _wait(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    waiters = [asyncio.create_task(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.create_task(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
