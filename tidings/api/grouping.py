"""Group commit: the appends of concurrent requests joined into one transaction.

Every append notifies listeners (pg_notify) in its transaction, and PostgreSQL
serializes the commits of notifying transactions, each waiting for its own
WAL flush: one request per transaction would cap the API at the database's
commit rate (about 1,000/s on the benchmark machine), whatever the number of
connections. So requests hand their events to one flusher: while a
transaction is committing, the requests that arrive wait, and go together in
the next one. An idle server adds no delay (the first request flushes at
once); a busy one commits many requests per fsync.

Each request stays all or nothing: a conflict (an expected sequence that does
not hold) is attributed to its request by the event index the store reports;
that request alone fails, and the others are appended again without it. A
conflict with an earlier request of the same transaction (two requests for
one new aggregate, e.g. the same Idempotency-Key at once) is no conflict yet:
that request waits until the others are committed and is then appended on its
own, so it fails against what was committed and can see it. Any
other failure of a joined transaction is retried one request at a time, so
one bad request cannot fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from tidings.eventstore import (
    AppendedEvent,
    ConcurrencyError,
    DatabaseUnavailable,
    EventStore,
    NewEvent,
)

log = logging.getLogger("tidings.api")


@dataclass
class _Pending:
    events: list[NewEvent]
    done: asyncio.Future[list[AppendedEvent]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupAppender:
    def __init__(self, *, store: EventStore, max_events: int = 2000) -> None:
        self._store = store
        self._max_events = max_events
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, events: Sequence[NewEvent]) -> list[AppendedEvent]:
        """Append `events` all together or not at all, in a transaction shared with
        other requests; raises what store.append raises, for these events alone."""
        pending = _Pending(list(events))
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="api group append")
        return await asyncio.shield(pending.done)

    async def _flush(self) -> None:
        while self._queue:
            group: list[_Pending] = []
            size = 0
            while self._queue and (
                not group or size + len(self._queue[0].events) <= self._max_events
            ):
                item = self._queue.pop(0)
                group.append(item)
                size += len(item.events)
            try:
                await self._commit(group)
            except Exception as exc:
                for item in group:
                    if not item.done.done():
                        item.done.set_exception(exc)

    async def _commit(self, group: list[_Pending]) -> None:
        deferred: list[_Pending] = []  # conflicting with another request of the group
        while group:
            events = [e for item in group for e in item.events]
            try:
                stored = await self._store.append(events)
            except ConcurrencyError as exc:
                culprit = _owner(group, exc.index)
                if culprit is None:
                    await self._one_by_one(group + deferred)
                    return
                item, offset = culprit
                if exc.index is not None and _conflicts_within(events, exc.index):
                    deferred.append(item)  # the other one is not committed: see it first
                else:
                    item.done.set_exception(_for_item(exc, offset))
                group = [g for g in group if g is not item]
                continue
            except DatabaseUnavailable:
                raise
            except Exception:
                if len(group) == 1 and not deferred:
                    raise
                await self._one_by_one(group + deferred)
                return
            at = 0
            for item in group:
                item.done.set_result(stored[at : at + len(item.events)])
                at += len(item.events)
            break
        await self._one_by_one(deferred)

    async def _one_by_one(self, group: list[_Pending]) -> None:
        for item in group:
            try:
                item.done.set_result(await self._store.append(item.events))
            except Exception as exc:
                item.done.set_exception(exc)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher


def _owner(group: list[_Pending], index: int | None) -> tuple[_Pending, int] | None:
    """The request an event index of the joined append belongs to, and its offset."""
    if index is None:
        return None
    at = 0
    for item in group:
        if index < at + len(item.events):
            return item, at
        at += len(item.events)
    return None


def _conflicts_within(events: list[NewEvent], index: int) -> bool:
    """Whether the event at `index` is for an aggregate an earlier event of the batch is for."""
    event = events[index]
    key = (event.instance_id, event.aggregate_type, event.aggregate_id)
    return any((e.instance_id, e.aggregate_type, e.aggregate_id) == key for e in events[:index])


def _for_item(exc: ConcurrencyError, offset: int) -> ConcurrencyError:
    """The conflict as the request's own append would have raised it."""
    index = exc.index - offset if exc.index is not None else None
    fields = {name: getattr(exc, name, None) for name in ConcurrencyError.fields}
    fields.update(index=index, sqlstate=getattr(exc, "sqlstate", None))
    return ConcurrencyError(str(exc), **fields)
