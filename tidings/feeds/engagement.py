"""What a user may do with a feed item, as rules: data in, events out.

Engagement is recorded as events on the notification aggregate, appended on
the user's behalf after the notification was sent in-app:

    notification.seen        the item was shown (read implies seen)
    notification.read        the item was opened or marked read
    notification.unread      marked unread again
    notification.archived    taken out of the feed (and out of the counts)
    notification.unarchived  put back

Marks are idempotent: `decide` answers no event when the item already is what
the action asks (reading twice appends once). A mark follows only an in-app
notification.sent (`may_mark`). These rules are pure; tidings.feeds.operations
reads the item, asks them and appends. (They join the notification lifecycle's
evolve/decide when that module exists.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from tidings.feeds.errors import MarkRefused
from tidings.notification.events import (
    ARCHIVED,
    MARKS,
    READ,
    SEEN,
    UNARCHIVED,
    UNREAD,
    Mark,
)

__all__ = ["MARKS", "Action", "Engagement", "Mark", "decide", "evolve", "may_mark"]

Action = Literal["seen", "read", "unread", "archive", "unarchive"]
ACTIONS: tuple[str, ...] = get_args(Action)
ACTION_EVENTS: dict[str, str] = {
    "seen": SEEN,
    "read": READ,
    "unread": UNREAD,
    "archive": ARCHIVED,
    "unarchive": UNARCHIVED,
}


@dataclass(frozen=True)
class Engagement:
    """Where a feed item stands."""

    seen: bool = False
    read: bool = False
    archived: bool = False


def evolve(state: Engagement, event_type: str) -> Engagement:
    """The item after a mark (as the feed trigger folds it; unknown types change nothing)."""
    if event_type == SEEN:
        return replace(state, seen=True)
    if event_type == READ:
        return replace(state, seen=True, read=True)
    if event_type == UNREAD:
        return replace(state, read=False)
    if event_type == ARCHIVED:
        return replace(state, archived=True)
    if event_type == UNARCHIVED:
        return replace(state, archived=False)
    return state


def decide(state: Engagement, action: Action) -> str | None:
    """The mark to append for `action`, or None when the item already is so."""
    event_type = ACTION_EVENTS[action]
    return None if evolve(state, event_type) == state else event_type


def may_mark(*, settled_by: str | None, channel: str | None, in_app: bool) -> None:
    """Raise MarkRefused unless the notification was sent in-app (what a mark may follow)."""
    if settled_by != "notification.sent":
        state = settled_by or "not settled"
        raise MarkRefused(f"a mark follows an in-app send only; the notification is {state}")
    if not in_app:
        raise MarkRefused(
            f"a mark follows an in-app send only; the notification was sent via {channel}"
        )
