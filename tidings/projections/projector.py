"""The projector: feeds projections from the log, exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tidings.config import ProjectionSettings
from tidings.eventstore import Database, DatabaseUnavailable, StoredEvent, wakeups
from tidings.eventstore.errors import EventStoreError, translate
from tidings.eventstore.outage import Outage, backoff_delays, wait_or_stop
from tidings.projections.base import BatchProjection, Connection, InvalidEvent, Projection
from tidings.projections.leader import LeaderLock
from tidings.projections.sql import query

log = logging.getLogger(__name__)


class CheckpointMoved(DatabaseUnavailable):
    """Another projector advanced the checkpoint first; this batch was rolled back."""


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    lag_events: int
    oldest_unhandled: datetime | None
    failures: int
    unreachable: int = 0  # of lag_events: beyond any position handed out, never read

    def lag_seconds(self, now: datetime) -> float:
        """Age of the oldest event still to handle; 0 when caught up."""
        if not self.lag_events or self.oldest_unhandled is None:
            return 0.0
        return max((now - self.oldest_unhandled).total_seconds(), 0.0)


class Projector:
    """Runs projections over the log.

    Each batch is read with the ordered reader (so a late commit is never
    skipped) and handled in one transaction that also advances every
    projection's checkpoint: effects and checkpoint commit together or not at
    all, so a crash can neither lose nor double an event. An event a
    projection cannot handle is recorded in projection_failures and skipped.
    """

    def __init__(
        self,
        *,
        db: Database,
        projections: Sequence[Projection],
        settings: ProjectionSettings,
    ) -> None:
        if not projections:
            raise ValueError("a projector needs at least one projection")
        self._db = db
        self._projections = list(projections)
        self._settings = settings
        self._types = sorted(set().union(*(p.event_types for p in projections)))
        self._checkpoints_exist = False
        self._skipped: list[tuple[Projection, StoredEvent, str]] = []
        self._outage = Outage(
            "projector",
            retried="reading the log is retried without advancing; nothing is lost",
            logger=log,
        )

    @property
    def projections(self) -> list[Projection]:
        return list(self._projections)

    async def step(self, *, conn: Connection | None = None) -> int:
        """Handle the next batch; returns how many events it covered (0: caught up).

        With `conn`, runs inside the caller's transaction (used by rebuilds).
        """
        # A failure is told only once its batch committed: a batch rolled back
        # (an outage, another projector that moved on first) skipped nothing.
        self._skipped = []
        if conn is not None:
            covered = await self._step(conn)
        else:
            try:
                async with self._db.pool.connection() as own, own.transaction():
                    covered = await self._step(own)
            except psycopg.Error as exc:
                raise translate(exc) from exc
        for projection, event, error in self._skipped:
            log.warning(
                "projection %s skipped %s at position %s (%s %s/%s seq %s): %s; recorded as a "
                "failure (`tidings projections status`), the projector goes on",
                projection.name, event.event_type, event.position, event.instance_id,
                event.aggregate_type, event.aggregate_id, event.sequence, error,
                extra={**_event_fields(projection, event), "error": error},
            )  # fmt: skip
        self._skipped = []
        return covered

    async def _step(self, conn: Connection) -> int:
        if not self._checkpoints_exist:
            # Separate from the batch: an insert takes a transaction id, and a
            # batch transaction holding one would hold its own reads back.
            await self._ensure_checkpoints()
        positions = await self._checkpoints(conn)
        after = min(positions.values())
        batch = await self._db.store.read_ordered(
            after=after, limit=self._settings.batch_size, event_types=self._types, conn=conn
        )
        # A projection that takes runs of events gets them at once, up to the next
        # event a projection without that handles (the users projection comes
        # first: a request sees the user as of its own event, as one by one).
        runs: dict[str, list[StoredEvent]] = {}
        for event in batch.events:
            for projection in self._projections:
                if event.position > positions[projection.name] and (
                    event.event_type in projection.event_types
                ):
                    if isinstance(projection, BatchProjection):
                        runs.setdefault(projection.name, []).append(event)
                    else:
                        await self._handle_runs(runs, conn)
                        await self._handle(projection, event, conn)
        await self._handle_runs(runs, conn)
        # The checkpoints move up to the horizon even without events, so the
        # next read starts there; that alone is no progress (the write itself
        # takes a transaction id, which moves the horizon on), hence the
        # return value counts events only.
        for projection in self._projections:
            old = positions[projection.name]
            new = max(old, batch.resume_after)
            if new != old:
                cur = await conn.execute(
                    query("checkpoint_advance"),
                    {"name": projection.name, "position": new, "expected": old},
                )
                if cur.rowcount != 1:
                    raise CheckpointMoved(
                        f"projection {projection.name}: another projector moved the checkpoint "
                        f"from {old}; this batch was rolled back"
                    )
        return len(batch.events)

    async def _ensure_checkpoints(self) -> None:
        async with self._db.pool.connection() as conn, conn.transaction():
            for projection in self._projections:
                await conn.execute(query("checkpoint_ensure"), {"name": projection.name})
        self._checkpoints_exist = True

    async def _checkpoints(self, conn: Connection) -> dict[str, int]:
        positions: dict[str, int] = {}
        for projection in self._projections:
            cur = await conn.execute(query("checkpoint_get"), {"name": projection.name})
            row = await cur.fetchone()
            positions[projection.name] = int(row[0]) if row else 0
        return positions

    async def _handle_runs(self, runs: dict[str, list[StoredEvent]], conn: Connection) -> None:
        """Hand each batching projection its run of events; empties `runs`."""
        for projection in self._projections:
            events = runs.pop(projection.name, None)
            if events and isinstance(projection, BatchProjection):
                await self._handle_many(projection, events, conn)

    async def _handle_many(
        self, projection: BatchProjection, events: list[StoredEvent], conn: Connection
    ) -> None:
        """All at once in a savepoint; should that fail, one by one (as _handle)."""
        if len(events) > 1:
            try:
                async with conn.transaction():
                    await projection.handle_many(events, conn)
                return
            except DatabaseUnavailable:
                raise
            except psycopg.Error as exc:
                error = translate(exc)
                if isinstance(error, DatabaseUnavailable):
                    raise error from exc
                failed: Exception = error
            except Exception as exc:
                failed = exc
            log.debug(
                "projection %s: a run of %d events (positions %s to %s) failed at once (%s); "
                "handling them one by one", projection.name, len(events), events[0].position,
                events[-1].position, failed,
            )  # fmt: skip
        for event in events:
            await self._handle(projection, event, conn)

    async def _handle(self, projection: Projection, event: StoredEvent, conn: Connection) -> None:
        try:
            async with conn.transaction():  # a savepoint: a failed event undoes only itself
                await projection.handle(event, conn)
        except InvalidEvent as exc:
            await self._record_failure(projection, event, str(exc), conn)
        except (psycopg.Error, EventStoreError) as exc:
            # Only an outage stops the batch (to be retried); anything the
            # database refuses about this event's data (too long for an index,
            # invalid text, a broken constraint) is this event's failure. A
            # conflict is one too, unless another projector handled the event
            # first: then the checkpoint moved, and the whole batch rolls back.
            error = translate(exc)
            if isinstance(error, DatabaseUnavailable):
                raise error from exc
            await self._record_failure(projection, event, str(error), conn)
        except Exception as exc:  # a bug must not stop the projector: record, skip, tell
            log.exception(
                "projection %s failed on position %s", projection.name, event.position,
                extra=_event_fields(projection, event),
            )  # fmt: skip
            await self._record_failure(projection, event, f"{type(exc).__name__}: {exc}", conn)

    async def _record_failure(
        self, projection: Projection, event: StoredEvent, error: str, conn: Connection
    ) -> None:
        self._skipped.append((projection, event, error))
        await conn.execute(
            query("failure_record"),
            {
                "name": projection.name,
                "position": event.position,
                "instance_id": event.instance_id,
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "sequence": event.sequence,
                "event_type": event.event_type,
                "error": error,
            },
        )

    async def catch_up(
        self, *, give_up_after: float | None = 30.0, stop: asyncio.Event | None = None
    ) -> int:
        """Handle batches until none is left (or `stop` is set); returns the events covered.

        A database that went away is retried with backoff for `give_up_after`
        seconds (None: for ever) without advancing.
        """
        total = 0
        while (stop is None or not stop.is_set()) and (
            covered := await self._retrying(self.step, give_up_after, stop)
        ):
            total += covered
        return total

    async def run(
        self,
        *,
        stop: asyncio.Event,
        leader: LeaderLock | None = None,
        until_idle: bool = False,
    ) -> None:
        """Project until `stop` is set (or, with `until_idle`, until caught up).

        With a leader lock, only projects while holding it, and stands by otherwise.
        """
        poll = self._settings.poll_every.total_seconds()
        wake, listening = asyncio.Event(), asyncio.Event()
        listener = asyncio.create_task(self._listen(wake, poll, listening))
        try:
            # The first read follows the LISTEN, so no append falls between them
            # (at worst, with the database away, the poll picks it up).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(listening, stop), poll)
            while not stop.is_set():
                if leader is not None and not await leader.acquire(stop):
                    return
                checked = time.monotonic()
                while not stop.is_set():
                    # Cleared before reading: a wake-up that arrives while the step
                    # reads stays set and ends the wait below at once.
                    wake.clear()
                    covered = await self._retrying(
                        self.step, None if not until_idle else 30.0, stop
                    )
                    if covered:
                        continue
                    if until_idle:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_first(wake, stop), poll)
                    if leader is not None and time.monotonic() - checked >= poll:
                        checked = time.monotonic()
                        if not await leader.still_held():
                            break
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if leader is not None:
                await leader.release()

    async def _listen(self, wake: asyncio.Event, poll: float, listening: asyncio.Event) -> None:
        relevant = set(self._types)
        async for woke in wakeups(
            self._db.conninfo, timeout=poll, who="projector", on_listening=listening.set
        ):
            if woke is None or not woke.event_types or relevant & set(woke.event_types):
                wake.set()

    async def _retrying(
        self,
        step: Callable[[], Any],
        give_up_after: float | None,
        stop: asyncio.Event | None = None,
    ) -> int:
        """`step()`, retried with backoff while the database is away; 0 when `stop` is set.

        Every wait also waits on `stop`, so a stop request is honoured at once
        even in the middle of an outage.
        """
        delays = backoff_delays()
        started = time.monotonic()
        while True:
            try:
                result: int = await step()
            except CheckpointMoved as exc:
                # Not an outage: two projectors overlapped for a moment (a
                # standby took over while the old leader's batch was open).
                # The checkpoints' compare-and-set rolled this batch back, so
                # nothing was lost or doubled; read again from the new checkpoint.
                log.info("projector: %s; nothing lost, reading on from there", exc)
                if await wait_or_stop(stop, 0.05):
                    return 0
                continue
            except DatabaseUnavailable as exc:
                if give_up_after is not None and time.monotonic() - started >= give_up_after:
                    raise
                delay = next(delays)
                self._outage.failed(exc, retry_in=delay)
                if await wait_or_stop(stop, delay):
                    return 0
                continue
            self._outage.recovered()
            return result

    async def status(self) -> list[ProjectionStatus]:
        """Each projection's checkpoint, how many events it has still to handle, failures."""
        out: list[ProjectionStatus] = []
        await self._ensure_checkpoints()
        async with self._db.pool.connection() as conn:
            positions = await self._checkpoints(conn)
            for projection in self._projections:
                position = positions[projection.name]
                cur = await conn.execute(
                    query("lag_of"),
                    {"position": position, "event_types": sorted(projection.event_types)},
                )
                lag = await cur.fetchone()
                cur = await conn.execute(query("failures_count"), {"name": projection.name})
                failures = await cur.fetchone()
                out.append(
                    ProjectionStatus(
                        name=projection.name,
                        position=position,
                        lag_events=int(lag[0]) if lag else 0,
                        oldest_unhandled=lag[1] if lag else None,
                        failures=int(failures[0]) if failures else 0,
                        unreachable=int(lag[2]) if lag else 0,
                    )
                )
        return out

    async def failures(self, name: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """The events projection `name` skipped, newest first."""
        async with (
            self._db.pool.connection() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(query("failures_of"), {"name": name, "limit": limit})
            return list(await cur.fetchall())

    async def events_to_replay(self) -> int:
        """How many events a rebuild of this projector's projections reads."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(query("lag_of"), {"position": 0, "event_types": self._types})
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def rebuild(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Reset every projection of this projector and replay it from the log.

        One transaction: until it commits, readers keep seeing the old read
        model, never a half-built one. Returns the events replayed.
        """
        total = 0
        await self._ensure_checkpoints()  # before: the rebuild holds their rows locked
        async with self._db.pool.connection() as conn, conn.transaction():
            for projection in self._projections:
                await projection.reset(conn)
                await conn.execute(query("checkpoint_reset"), {"name": projection.name})
                await conn.execute(query("failures_reset"), {"name": projection.name})
            while covered := await self.step(conn=conn):
                total += covered
                if progress is not None:
                    progress(covered)
        return total


def _event_fields(projection: Projection, event: StoredEvent) -> dict[str, object]:
    """What a log line about one event carries, to find it in the log (no payload)."""
    return {
        "projection": projection.name,
        "position": event.position,
        "event_type": event.event_type,
        "instance_id": event.instance_id,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
    }


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
