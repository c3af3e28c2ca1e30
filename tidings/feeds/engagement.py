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
notification.sent (`may_mark`). What a mark does to the item, and when one
may follow, are the notification lifecycle's rules (tidings.notification.
lifecycle: `engage`, `mark_refused`, and `step`, which the audit folds the log
with); this module adds the user's actions on top. tidings.feeds.operations
reads the item, asks `decide` and appends.
"""

from __future__ import annotations

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
from tidings.notification.lifecycle import Engagement, engage, mark_refused

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


def evolve(state: Engagement, event_type: str) -> Engagement:
    """The item after a mark (the lifecycle's `engage`; unknown types change nothing)."""
    return engage(state, event_type)


def decide(state: Engagement, action: Action) -> str | None:
    """The mark to append for `action`, or None when the item already is so."""
    event_type = ACTION_EVENTS[action]
    return None if evolve(state, event_type) == state else event_type


def may_mark(*, settled_by: str | None, channel: str | None, in_app: bool) -> None:
    """Raise MarkRefused unless the notification was sent in-app (what a mark may follow)."""
    why = mark_refused(settled_by=settled_by, channel=channel, in_app=in_app)
    if why is not None:
        raise MarkRefused(why)
