"""Fan-out without a broker: one LISTEN per process, one query per wake-up, a queue per connection.

Each serve process runs one FeedHub. It keeps a cursor in the log (a
position). When an append wakes it (or every `poll_every` at the latest), it
reads the feed events of every user after its cursor in one query, below the
ordered reader's horizon, so an event that commits late is never passed over,
and hands each to the bounded queues of that user's connections on this
process. Another process does the same for its own connections, so a user
connected to two processes gets every event on both.

A connection subscribes with the position it has seen last (SSE's
Last-Event-ID, `?after=`). The subscription is registered first, so every
event the hub reads from then on reaches it; then the user's events after that
position are read from the log (the backfill), and the live events already
covered are dropped by position. So the stream has no gap and no duplicate.
A cursor older than what retention dropped, or one this log never handed out,
gets an explicit reset: the client reads the feed again.

A connection whose queue is full is too slow to keep up: it is closed with a
reason (SlowConsumer) and resumes from its last position, losing nothing.

While the hub does not follow the log (it has not read its starting point yet,
or the database stopped answering it) a new subscription is refused with
HubUnavailable (the routes answer 503); the connections it holds keep their
streams and get what they missed once the database answers. Who is connected
is shared with the other serve processes through tidings.feeds.presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from psycopg_pool import AsyncConnectionPool

from tidings.eventstore import DatabaseUnavailable, EventStore, WakeUp, wakeups
from tidings.eventstore.errors import translated_errors
from tidings.eventstore.outage import Outage
from tidings.feeds.engagement import MARKS
from tidings.feeds.errors import FeedError
from tidings.feeds.sql import query
from tidings.metrics import Metrics
from tidings.notification.events import SENT

if TYPE_CHECKING:
    from tidings.feeds.presence import Presence

log = logging.getLogger("tidings.feeds")

StreamKind = Literal["message", "state", "counts", "reset"]
Transport = Literal["sse", "ws", "poll"]
FEED_EVENT_TYPES = frozenset({SENT, *MARKS})
_CLOSED = object()


@dataclass(frozen=True)
class StreamEvent:
    """One message of a user's stream; `position` is its cursor (SSE id)."""

    kind: StreamKind
    position: int
    data: dict[str, Any]

    def sse(self) -> str:
        """As a Server-Sent Events message."""
        body = json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {self.kind}\nid: {self.position}\ndata: {body}\n\n"

    def to_json(self) -> dict[str, Any]:
        """As a WebSocket or long-poll message."""
        return {"event": self.kind, "id": self.position, "data": self.data}


class StreamClosed(FeedError):
    """The stream was closed; resume from the last position received."""

    fields: ClassVar[tuple[str, ...]] = ("reason", "resume_after")
    reason: str | None
    resume_after: int | None


class SlowConsumer(StreamClosed):
    """The connection could not keep up with its events; resume from the last position."""


class HubUnavailable(FeedError):
    """This serve process cannot stream right now (its hub does not follow the log); retry."""

    fields: ClassVar[tuple[str, ...]] = ("reason",)
    reason: str | None


@dataclass(frozen=True)
class _Row:
    instance_id: str
    user_id: str
    notification_id: str
    event_type: str
    payload: dict[str, Any]
    created_at: Any
    position: int
    counts: dict[str, int]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> _Row:
        (instance_id, user_id, nid, event_type, payload, created_at, position,
         total, unread, unseen) = row[:10]  # fmt: skip
        counts = {"total": total or 0, "unread": unread or 0, "unseen": unseen or 0}
        return cls(
            instance_id, user_id or "", nid, event_type, payload, created_at, position, counts
        )

    def stream_event(self) -> StreamEvent:
        if self.event_type == SENT:
            item = dict(self.payload.get("inapp") or {})
            item.pop("user_id", None)
            data = {
                "id": self.notification_id,
                "position": self.position,
                "sent_at": self.created_at.isoformat(),
                **item,
                "seen": False,
                "read": False,
                "archived": False,
            }
            return StreamEvent("message", self.position, data)
        change = self.event_type.removeprefix("notification.")
        return StreamEvent(
            "state",
            self.position,
            {"id": self.notification_id, "change": change, "at": self.created_at.isoformat()},
        )


@dataclass(frozen=True)
class _Page:
    """A page of one user's events, and what decides whether its cursor can resume."""

    rows: list[_Row]
    pruned_through: int  # the newest position retention dropped for this user
    last_position: int  # the log's last position: a cursor past it is not this log's


@dataclass(frozen=True)
class _Ask:
    """A stream's backfill waiting for the next gathered read."""

    instance_id: str
    user_id: str
    after: int
    page: asyncio.Future[_Page]


# Backfills read in one query at most: each is at most `batch` rows.
_BACKFILL_BATCH = 200


def _batches(rows: Iterable[_Row]) -> dict[tuple[str, str], list[_Row]]:
    by_user: dict[tuple[str, str], list[_Row]] = defaultdict(list)
    for row in rows:
        by_user[(row.instance_id, row.user_id)].append(row)
    return by_user


def _with_counts(rows: list[_Row]) -> list[StreamEvent]:
    """A user's events of one read, then their counts (as of that read)."""
    events = [row.stream_event() for row in rows]
    events.append(StreamEvent("counts", rows[-1].position, dict(rows[-1].counts)))
    return events


@dataclass(eq=False)
class Subscription:
    """One connection's view of a user's stream: iterate it for StreamEvents."""

    hub: FeedHub
    instance_id: str
    user_id: str
    transport: Transport
    connected_at: datetime
    last: int  # the last position handed to the consumer (or its starting cursor)
    queue: asyncio.Queue[Any]
    registered_at: int  # the hub's cursor when it registered: later events are queued
    backfill_from: int | None = None
    checked: bool = False  # whether the resume position was checked against the feed
    reset: bool = False
    counts_at: int = -1  # the position of the last counts handed to the consumer
    closed: StreamClosed | None = None
    registered: bool = True  # counted in the hub's connections (gauge, presence)
    # Set once the backfill is read (at once without one): from then on, live.
    live: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: list[StreamEvent] = field(default_factory=list)
    _expiry: asyncio.TimerHandle | None = None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            if self.closed is not None:  # closed while it read its backfill, too
                self.closed.resume_after = self.last
                raise self.closed
            if self._pending:
                return self._hand(self._pending.pop(0))
            if self.reset:
                self.reset = False
                return StreamEvent(
                    "reset", self.last, {"reason": "the cursor is older than the feed keeps"}
                )
            if self.backfill_from is not None:
                try:
                    await self._backfill()
                except StreamClosed as stopped:  # the hub stopped while it was read
                    stopped.resume_after = self.last
                    raise
                continue
            item = await self.queue.get()
            if item is _CLOSED:
                closed = self.closed or StreamClosed("the stream was closed")
                closed.resume_after = self.last
                raise closed
            assert isinstance(item, StreamEvent)
            if item.kind == "counts" and (
                item.position < self.last or item.position <= self.counts_at
            ):
                continue  # stale, or these counts were handed out by the backfill
            if item.kind != "counts" and item.position <= self.last:
                continue  # already handed out by the backfill
            return self._hand(item)

    def _hand(self, event: StreamEvent) -> StreamEvent:
        self.last = max(self.last, event.position)
        if event.kind == "counts":
            self.counts_at = event.position
        return event

    async def _backfill(self) -> None:
        """The next page of this user's events after the cursor, from the log.

        The first page also says whether the cursor can be resumed from: one
        older than what retention dropped for this user, or past the end of
        this log, gets a reset instead (and the stream goes on live).
        """
        after = self.backfill_from
        assert after is not None
        try:
            page = await self.hub.read_user_events(self.instance_id, self.user_id, after)
        except DatabaseUnavailable as exc:
            self.hub._unregister(self)
            raise StreamClosed(
                f"the database is unavailable ({exc}); resume from your last position "
                "in a few seconds",
                reason="database_unavailable",
            ) from None
        if not self.checked:
            self.checked = True
            if after < page.pruned_through or after > page.last_position:
                self.hub.metrics.feed_resets.inc()
                self.reset = True
                self.last = self.registered_at
                self.backfill_from = None
                self.live.set()
                return
        rows = page.rows
        if len(rows) < self.hub.batch:
            self.backfill_from = None  # caught up: the queue has everything after
            self.live.set()
        else:
            self.backfill_from = rows[-1].position
        if rows:
            self._pending.extend(_with_counts(rows))

    def _offer(self, events: list[StreamEvent]) -> bool:
        """Queue live events; False (and closed) when the consumer is too slow."""
        for event in events:
            try:
                self.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._close(
                    SlowConsumer(
                        f"too slow: {self.queue.maxsize} events were waiting for this "
                        f"connection; resume from your last position",
                        reason="slow_consumer",
                    )
                )
                return False
        return True

    def _close(self, reason: StreamClosed) -> None:
        if self.closed is not None:
            return
        self.closed = reason
        while not self.queue.empty():  # a closed stream delivers nothing more
            self.queue.get_nowait()
        self.queue.put_nowait(_CLOSED)

    def expire_at(self, when: datetime) -> None:
        """Close the stream when the token it was opened with expires (at once if it has)."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, (when - datetime.now(UTC)).total_seconds())
        self._expiry = loop.call_later(delay, self._close, StreamClosed(
            "the end-user token expired: get a new one and resume from your last position",
            reason="token_expired",
        ))  # fmt: skip

    async def close(self) -> None:
        """The connection ended (the client went away)."""
        if self._expiry is not None:
            self._expiry.cancel()
        self.hub._unregister(self)


class FeedHub:
    """The process's one reader of the feed's events, handing them to its connections."""

    def __init__(
        self,
        *,
        store: EventStore,
        conninfo: str,
        queue_size: int = 256,
        poll_every: float = 1.0,
        batch: int = 500,
        metrics: Metrics | None = None,
        presence: Presence | None = None,
        start_wait: float = 5.0,
    ) -> None:
        self._store = store
        self.metrics = metrics if metrics is not None else Metrics()
        self.presence = presence
        self._start_wait = start_wait  # how long a new connection waits for the hub
        self._conninfo = conninfo
        self.queue_size = queue_size
        self._poll_every = poll_every
        self.batch = batch
        self.cursor: int | None = None
        self._subs: dict[tuple[str, str], set[Subscription]] = defaultdict(set)
        self._ready = asyncio.Event()
        self._woken = asyncio.Event()
        self._last_woken = 0  # the newest position a wake-up announced
        self._reader: AsyncConnectionPool[Any] | None = None
        self._catching_up = asyncio.Lock()
        self._asks: list[_Ask] = []
        self._asked = asyncio.Event()
        self.dropped_slow = 0
        self.stopping = False
        self._outage = Outage(
            "feed hub", retried="new streams and polls are answered 503 meanwhile; "
            "open ones get what they missed once it answers", logger=log,
        )  # fmt: skip

    # --- presence ---------------------------------------------------------------

    def connections(self, instance_id: str, user_id: str) -> int:
        """How many connections this process holds for the user."""
        return len(self._subs.get((instance_id, user_id), ()))

    def connected(self) -> int:
        """How many connections this process holds in all."""
        return sum(len(subs) for subs in self._subs.values())

    def user_connections(self, instance_id: str, user_id: str) -> list[Subscription]:
        """This process's connections of the user (for presence)."""
        return list(self._subs.get((instance_id, user_id), ()))

    def users(self) -> list[tuple[str, str]]:
        """Every (instance, user) with a connection on this process."""
        return list(self._subs)

    # --- subscribing ------------------------------------------------------------

    async def subscribe(
        self,
        instance_id: str,
        user_id: str,
        *,
        after: int | None,
        transport: Transport = "sse",
        until: datetime | None = None,
    ) -> Subscription:
        """A stream of the user's feed after position `after` (None: from now on).

        `until` (the last moment the token it was opened with is accepted)
        closes it then, with reason token_expired: a stream lives no longer
        than its token.

        Use it as an async iterator; call close() when the connection ends.
        Registering costs no query: the backfill (and the check that `after`
        can be resumed from) is read when the stream is first read, so a storm
        of reconnects is limited by how fast the clients read, not by the hub.
        Raises HubUnavailable when the hub does not follow the log (not
        started within `start_wait` seconds, the database away, stopping).
        """
        if not self._ready.is_set() and not self.stopping and not self._outage.active:
            with contextlib.suppress(TimeoutError):  # starting: wait a moment for it
                async with asyncio.timeout(self._start_wait):
                    await self._ready.wait()
        self._check_following()
        assert self.cursor is not None
        registered_at = self.cursor  # every event after it reaches the queue from now on
        sub = Subscription(
            hub=self,
            instance_id=instance_id,
            user_id=user_id,
            transport=transport,
            connected_at=datetime.now(UTC),
            last=registered_at if after is None else after,
            queue=asyncio.Queue(self.queue_size),
            registered_at=registered_at,
            backfill_from=after,
        )
        self._subs[(instance_id, user_id)].add(sub)
        self.metrics.feed_connection(transport, +1)
        if self.presence is not None:
            self.presence.changed(instance_id, user_id)
        if after is None:
            sub.live.set()
        if until is not None:
            sub.expire_at(until)
        return sub

    def _check_following(self) -> None:
        if self.stopping:
            raise HubUnavailable(
                "this server is shutting down; connect again (to another server)",
                reason="shutting_down",
            )
        if self._outage.active:
            raise HubUnavailable(
                "the feed hub cannot read the log: the database is unavailable; "
                "try again in a few seconds",
                reason="database_unavailable",
            )
        if not self._ready.is_set():
            raise HubUnavailable(
                "the feed hub of this server is not running yet (it cannot read its "
                "starting point from the database); try again in a few seconds",
                reason="hub_not_running",
            )

    def _unregister(self, sub: Subscription) -> None:
        if not sub.registered:
            return
        sub.registered = False
        key = (sub.instance_id, sub.user_id)
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[key]
        self.metrics.feed_connection(sub.transport, -1)
        if self.presence is not None:
            self.presence.changed(sub.instance_id, sub.user_id)

    async def read_user_events(self, instance_id: str, user_id: str, after: int) -> _Page:
        """One page of a user's feed events after `after`, below the horizon.

        Asks are gathered: every backfill waiting when the hub's backfill task
        comes round is read in one query (up to _BACKFILL_BATCH), so a storm of
        reconnects costs a few queries, not one per client.
        """
        ask = _Ask(instance_id, user_id, after, asyncio.get_running_loop().create_future())
        self._asks.append(ask)
        self._asked.set()
        return await ask.page

    async def _serve_backfills(self) -> None:
        while True:
            await self._asked.wait()
            self._asked.clear()
            while self._asks:
                batch = self._asks[:_BACKFILL_BATCH]
                del self._asks[:_BACKFILL_BATCH]
                batch = [ask for ask in batch if not ask.page.done()]  # a client gone meanwhile
                if not batch:
                    continue
                try:
                    pages = await self._read_pages(batch)
                except Exception as exc:  # the clients see it; the hub goes on
                    for ask in batch:
                        if not ask.page.done():
                            ask.page.set_exception(exc)
                    continue
                for ask, page in zip(batch, pages, strict=True):
                    if not ask.page.done():
                        ask.page.set_result(page)

    async def _read_pages(self, batch: list[_Ask]) -> list[_Page]:
        params = {
            "instance_ids": [a.instance_id for a in batch],
            "user_ids": [a.user_id for a in batch],
            "afters": [a.after for a in batch],
        }
        raw = await self._fetch("users_feed_events_after", params)
        rows: dict[int, list[_Row]] = defaultdict(list)
        checks: dict[int, tuple[int, int]] = {}
        for r in raw:
            (n, nid, event_type, payload, created_at, position,
             total, unread, unseen, pruned_through, last_position) = r  # fmt: skip
            index = int(n) - 1
            checks[index] = (int(pruned_through), int(last_position))
            if position is not None:
                ask = batch[index]
                counts = {"total": total or 0, "unread": unread or 0, "unseen": unseen or 0}
                row = _Row(ask.instance_id, ask.user_id, nid, event_type, payload, created_at,
                           position, counts)  # fmt: skip
                rows[index].append(row)
        return [
            _Page(rows=rows[i], pruned_through=checks[i][0], last_position=checks[i][1])
            for i in range(len(batch))
        ]

    async def _read(self, name: str, params: dict[str, Any]) -> tuple[list[_Row], int]:
        raw = await self._fetch(name, params, self._reader)
        horizon = int(raw[0][10])
        return [_Row.from_row(r) for r in raw if r[6] is not None], horizon

    async def _fetch(
        self, name: str, params: dict[str, Any], pool: AsyncConnectionPool[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        with translated_errors():
            async with (pool or self._store.pool).connection() as conn:
                cur = await conn.execute(query(name), {**params, "limit": self.batch})
                rows: list[tuple[Any, ...]] = await cur.fetchall()
        return rows

    # --- the one reader ---------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until `stop` is set; then close every connection.

        The reader has a connection of its own, so live delivery never waits
        behind the backfills of reconnecting clients on the shared pool.
        """
        reader: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._conninfo, min_size=1, max_size=1, open=False, name="tidings-feed-hub"
        )
        await reader.open(wait=False)
        self._reader = reader
        self.stopping = False
        why, code = "the server is shutting down", "shutting_down"
        try:
            async with asyncio.TaskGroup() as group:
                helpers = [
                    group.create_task(self._listen()),
                    group.create_task(self._serve_backfills()),
                ]
                if self.presence is not None:
                    helpers.append(group.create_task(self.presence.run(self)))
                try:
                    await self._follow(stop)
                except BaseException:
                    why, code = "the feed hub of this server failed", "hub_failed"
                    raise
                finally:
                    for helper in helpers:
                        helper.cancel()
        finally:
            self.stopping = stop.is_set()
            self._ready.clear()
            self.cursor = None
            self.metrics.feed_hub_up.set(0)
            self._close_all(why, code)
            self._reader = None
            await reader.close()
            if self.presence is not None:
                await self.presence.leave()

    async def _start(self) -> None:
        with translated_errors():
            async with self._store.pool.connection() as conn:
                cur = await conn.execute(query("stream_horizon"))
                row = await cur.fetchone()
        assert row is not None
        self.cursor = int(row[0])
        self._ready.set()
        self.metrics.feed_hub_up.set(1)

    async def _follow(self, stop: asyncio.Event) -> None:
        delays = (0.1, 0.5, 1.0, 2.0, 5.0)
        held_back = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
        failures = held = 0
        while not stop.is_set():
            try:
                if self.cursor is None:
                    await self._start()
                caught_up = await self.catch_up()
                failures = 0
                self._outage.recovered()
                self.metrics.feed_hub_up.set(1)
            except DatabaseUnavailable as exc:
                delay = delays[min(failures, len(delays) - 1)]
                failures += 1
                self.metrics.feed_hub_up.set(0)
                self._outage.failed(exc, retry_in=delay)
                await _wait(stop, self._woken, delay, woken_ends=False)
                continue
            # A read that the horizon held back (an older writer still open) is
            # tried again soon, then less often; otherwise wait for the next
            # wake-up, or the poll.
            if caught_up:
                held = 0
                wait = self._poll_every
            else:
                wait = min(held_back[min(held, len(held_back) - 1)], self._poll_every)
                held += 1
            await _wait(stop, self._woken, wait)
            self._woken.clear()

    async def catch_up(self) -> bool:
        """Read and hand out every feed event after the cursor; False when held back."""
        async with self._catching_up:  # one reader at a time: each event is routed once
            return await self._catch_up()

    async def _catch_up(self) -> bool:
        assert self.cursor is not None
        while True:
            rows, horizon = await self._read("feed_events_after", {"after": self.cursor})
            self._route(rows)
            if len(rows) == self.batch:
                self.cursor = rows[-1].position
                continue
            self.cursor = max(self.cursor, horizon - 1)
            return self._last_woken <= self.cursor

    def _route(self, rows: list[_Row]) -> None:
        if rows:
            now = time.time()
            lag = self.metrics.feed_fanout_lag
            for row in rows:
                lag.observe(max(now - row.created_at.timestamp(), 0.0))
        handed = 0
        for key, user_rows in _batches(rows).items():
            subs = self._subs.get(key)
            if not subs:
                continue
            events = _with_counts(user_rows)
            for sub in list(subs):
                if sub._offer(events):
                    handed += len(events)
                else:
                    self.dropped_slow += 1
                    self.metrics.feed_slow_consumers.inc()
                    self._unregister(sub)
                    log.warning(
                        "feed stream of user %s (instance %s) closed: too slow, %d events "
                        "were waiting; the client resumes from its last position",
                        sub.user_id, sub.instance_id, self.queue_size,
                        extra={"instance_id": sub.instance_id, "user_id": sub.user_id},
                    )  # fmt: skip
        if handed:
            self.metrics.feed_fanned_out.inc(handed)

    async def _listen(self) -> None:
        async for woke in wakeups(self._conninfo, timeout=max(self._poll_every, 0.1)):
            if woke is None or _concerns_feeds(woke):
                if woke is not None and woke.position is not None:
                    self._last_woken = max(self._last_woken, woke.position)
                self._woken.set()

    def _close_all(self, why: str, code: str) -> None:
        for ask in self._asks:
            if not ask.page.done():
                ask.page.set_exception(
                    StreamClosed(f"{why}; resume from your last position", reason=code)
                )
        self._asks.clear()
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub._close(StreamClosed(f"{why}; resume from your last position", reason=code))
                self._unregister(sub)
        self._subs.clear()


def _concerns_feeds(woke: WakeUp) -> bool:
    types = set(woke.event_types)
    return not types or bool(types & FEED_EVENT_TYPES)


async def _wait(
    stop: asyncio.Event, woken: asyncio.Event, seconds: float, *, woken_ends: bool = True
) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if woken_ends:
        waiters.append(asyncio.ensure_future(woken.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
