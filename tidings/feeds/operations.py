"""A user's feed as plain async functions: list, counts, marks, read-all, retention.

Reads go to the read model (tidings.feed_items and tidings.feed_counts); marks
are events appended to the notification aggregate, and the feed trigger
changes the item and the counts in the same transaction. Every function takes
the user whose feed it is: another user's item is simply not found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from tidings.eventstore import ConcurrencyError, EventStore, NewEvent
from tidings.eventstore.errors import translated_errors
from tidings.feeds.engagement import Action, Engagement, Mark, decide
from tidings.feeds.errors import FeedBusy, FeedItemNotFound, InvalidCursor
from tidings.feeds.sql import query
from tidings.notification.requests import NOTIFICATION_AGGREGATE

log = logging.getLogger("tidings.feeds")

Filter = Literal["all", "unread", "archived"]
FILTERS: tuple[str, ...] = get_args(Filter)
MAX_LIMIT = 100
# A mark re-reads the item and tries again when another mark of the same item
# was appended first (each refusal means that other one went through).
_MARK_TRIES = 200


def creator(user_id: str) -> str:
    """Who appended a mark: the user, on whose behalf it was."""
    return f"end-user:{user_id}"


@dataclass(frozen=True)
class FeedItem:
    notification_id: str
    position: int
    sequence: int
    sent_at: datetime
    message_type: str
    lang: str
    title: str
    body: str
    action_url: str
    data: dict[str, Any]
    seen_at: datetime | None
    read_at: datetime | None
    archived_at: datetime | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> FeedItem:
        return cls(*row)

    @property
    def engagement(self) -> Engagement:
        return Engagement(
            seen=self.seen_at is not None,
            read=self.read_at is not None,
            archived=self.archived_at is not None,
        )

    def to_json(self) -> dict[str, Any]:
        """As the API and the streams show it (`id` is the notification id)."""
        return {
            "id": self.notification_id,
            "position": self.position,
            "sent_at": self.sent_at.isoformat(),
            "message_type": self.message_type,
            "lang": self.lang,
            "title": self.title,
            "body": self.body,
            "action_url": self.action_url,
            "data": self.data,
            "seen": self.seen_at is not None,
            "read": self.read_at is not None,
            "archived": self.archived_at is not None,
        }


@dataclass(frozen=True)
class FeedCounts:
    total: int = 0
    unread: int = 0
    unseen: int = 0

    def to_json(self) -> dict[str, int]:
        return {"total": self.total, "unread": self.unread, "unseen": self.unseen}


@dataclass(frozen=True)
class FeedPage:
    """A page of the feed, newest first.

    `next_cursor` continues below the last item (None on the last page);
    `stream_after` is where a stream opened after this read resumes.
    """

    items: tuple[FeedItem, ...]
    next_cursor: str | None
    stream_after: int

    def to_json(self) -> dict[str, Any]:
        """The answer of GET /v1/me/feed."""
        return {
            "items": [item.to_json() for item in self.items],
            "next_cursor": self.next_cursor,
            "stream_after": self.stream_after,
        }


@dataclass(frozen=True)
class Marked:
    """The item after a mark, and where the mark landed (None: it already was so)."""

    item: FeedItem
    position: int | None


def parse_cursor(cursor: str | None) -> int | None:
    """A page cursor (a feed position) as handed out by list_feed, or InvalidCursor."""
    if cursor is None or cursor == "":
        return None
    if not cursor.isdigit() or len(cursor) > 19:
        raise InvalidCursor(f"cursor {cursor[:40]!r} is not one this feed handed out")
    return int(cursor)


async def list_feed(
    store: EventStore,
    *,
    instance_id: str,
    user_id: str,
    cursor: str | None = None,
    limit: int = 20,
    filter: Filter = "all",
) -> FeedPage:
    """One page of the user's feed, newest first, below `cursor`."""
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {filter!r}")
    limit = max(1, min(limit, MAX_LIMIT))
    before = parse_cursor(cursor)
    with translated_errors():
        async with store.pool.connection() as conn:
            # The horizon first: everything below it is in the page read next.
            cur = await conn.execute(query("stream_horizon"))
            row = await cur.fetchone()
            stream_after = int(row[0]) if row else 0
            cur = await conn.execute(
                query("feed_page"),
                {
                    "instance_id": instance_id,
                    "user_id": user_id,
                    "before": before if before is not None else 2**63 - 1,
                    "filter": filter,
                    "limit": limit + 1,
                },
            )
            rows = await cur.fetchall()
    items = tuple(FeedItem.from_row(r) for r in rows[:limit])
    more = len(rows) > limit
    return FeedPage(
        items=items,
        next_cursor=str(items[-1].position) if more and items else None,
        stream_after=stream_after,
    )


async def get_item(
    store: EventStore, *, instance_id: str, user_id: str, notification_id: str
) -> FeedItem:
    """One item of the user's feed, or FeedItemNotFound."""
    with translated_errors():
        async with store.pool.connection() as conn:
            cur = await conn.execute(
                query("feed_item"),
                {
                    "instance_id": instance_id,
                    "user_id": user_id,
                    "notification_id": notification_id,
                },
            )
            row = await cur.fetchone()
    if row is None:
        raise FeedItemNotFound(
            f"no item {notification_id} in the feed of user {user_id} (instance {instance_id})",
            instance_id=instance_id,
            user_id=user_id,
            notification_id=notification_id,
        )
    return FeedItem.from_row(row)


async def feed_counts(store: EventStore, *, instance_id: str, user_id: str) -> FeedCounts:
    """The badge: items not archived, of them unread, and unseen."""
    with translated_errors():
        async with store.pool.connection() as conn:
            cur = await conn.execute(
                query("feed_counts"), {"instance_id": instance_id, "user_id": user_id}
            )
            row = await cur.fetchone()
    return FeedCounts(*row) if row is not None else FeedCounts()


def _mark_event(
    instance_id: str, user_id: str, notification_id: str, event_type: str, expected: int
) -> NewEvent:
    return NewEvent(
        instance_id=instance_id,
        aggregate_type=NOTIFICATION_AGGREGATE,
        aggregate_id=notification_id,
        event_type=event_type,
        payload=Mark(user_id=user_id).model_dump(mode="json"),
        expected_sequence=expected,
        creator=creator(user_id),
    )


async def mark(
    store: EventStore,
    *,
    instance_id: str,
    user_id: str,
    notification_id: str,
    action: Action,
) -> Marked:
    """Mark an item seen, read, unread, archived or unarchived, idempotently.

    The mark expects the notification's sequence as the item showed it, so a
    concurrent mark of the same item refuses one of the two; that one reads
    the item again and decides anew (reading twice appends once).
    """
    for _ in range(_MARK_TRIES):
        item = await get_item(
            store, instance_id=instance_id, user_id=user_id, notification_id=notification_id
        )
        event_type = decide(item.engagement, action)
        if event_type is None:
            return Marked(item=item, position=None)
        event = _mark_event(instance_id, user_id, notification_id, event_type, item.sequence)
        try:
            appended = await store.append([event])
        except ConcurrencyError:
            continue
        after = await get_item(
            store, instance_id=instance_id, user_id=user_id, notification_id=notification_id
        )
        return Marked(item=after, position=appended[0].position)
    raise FeedBusy(
        f"item {notification_id} of user {user_id} (instance {instance_id}) changed "
        f"{_MARK_TRIES} times under this {action}; try again",
        notification_id=notification_id,
    )


async def read_all(store: EventStore, *, instance_id: str, user_id: str) -> int:
    """Mark every unread item of the feed read, in one transaction; how many were."""
    for _ in range(_MARK_TRIES):
        with translated_errors():
            async with store.pool.connection() as conn:
                cur = await conn.execute(
                    query("unread_items"), {"instance_id": instance_id, "user_id": user_id}
                )
                unread = await cur.fetchall()
        if not unread:
            return 0
        events = [
            _mark_event(instance_id, user_id, str(nid), "notification.read", int(seq))
            for nid, seq in unread
        ]
        try:
            await store.append(events)
        except ConcurrencyError:
            continue  # an item changed meanwhile: read the unread ones again
        return len(events)
    raise FeedBusy(
        f"the feed of user {user_id} (instance {instance_id}) changed {_MARK_TRIES} times "
        "under read-all; try again"
    )


async def prune_feed(
    store: EventStore, *, retention: timedelta, now: datetime, batch: int = 5000
) -> int:
    """Drop the items sent more than `retention` before `now` from the feed model.

    The log keeps them; only the read model forgets. Runs in transactions of
    about `batch` items; returns how many items went.
    """
    cutoff = now - retention
    dropped = 0
    while True:
        with translated_errors():
            async with store.pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    query("prune_lock_users"), {"cutoff": cutoff, "limit": batch}
                )
                users = await cur.fetchall()
                if not users:
                    break
                cur = await conn.execute(
                    query("prune_feed"),
                    {
                        "cutoff": cutoff,
                        "instance_ids": [u[0] for u in users],
                        "user_ids": [u[1] for u in users],
                    },
                )
                row = await cur.fetchone()
        gone = int(row[0]) if row else 0
        dropped += gone
        if gone == 0:
            break
    if dropped:
        log.info(
            "feed retention: dropped %d items sent before %s from the feed model "
            "(the log keeps them)", dropped, cutoff.isoformat(),
            extra={"dropped": dropped, "cutoff": cutoff.isoformat()},
        )  # fmt: skip
    return dropped


async def rebuild_feed(store: EventStore, *, retention: timedelta, now: datetime) -> int:
    """Rebuild the feed model from the log, keeping what retention keeps; how many items."""
    with translated_errors():
        async with store.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(query("rebuild_feed"), {"since": now - retention})
            row = await cur.fetchone()
    return int(row[0]) if row else 0
