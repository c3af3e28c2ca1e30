"""What can go wrong with a feed, a mark, a stream or an end user's token."""

from __future__ import annotations

from typing import ClassVar

from tidings.errors import TidingsError


class FeedError(TidingsError):
    """The feed operation failed."""


class FeedItemNotFound(FeedError):
    """No such item in this user's feed (another user's item is not found either)."""

    fields: ClassVar[tuple[str, ...]] = ("instance_id", "user_id", "notification_id")
    instance_id: str | None
    user_id: str | None
    notification_id: str | None


class MarkRefused(FeedError):
    """A mark (seen, read, archived ...) may only follow an in-app send."""


class FeedBusy(FeedError):
    """The item kept changing under this mark; try again."""

    fields: ClassVar[tuple[str, ...]] = ("notification_id",)
    notification_id: str | None


class InvalidCursor(FeedError):
    """The cursor is not one this feed handed out; start from the first page."""


class AuthError(FeedError):
    """The end user's token is missing or not valid; sign in again."""

    fields: ClassVar[tuple[str, ...]] = ("reason",)
    reason: str | None
