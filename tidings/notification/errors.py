"""Why a message could not be sent, classified once: try again later, or never."""

from __future__ import annotations

from typing import ClassVar

from tidings.errors import TidingsError


class SendError(TidingsError):
    """The message could not be sent."""

    fields: ClassVar[tuple[str, ...]] = ("channel",)
    channel: str | None
    transient: ClassVar[bool] = False


class TransientSendError(SendError):
    """The message could not be sent now; a later attempt may succeed.

    `retry_after` (seconds) is the provider's own hint (HTTP Retry-After), when it gave one.
    """

    fields: ClassVar[tuple[str, ...]] = ("retry_after",)
    retry_after: float | None
    transient: ClassVar[bool] = True


class PermanentSendError(SendError):
    """The message can never be sent as requested; retrying will not help."""


class RecipientError(PermanentSendError):
    """The user has no address this message may go to."""


class RenderError(PermanentSendError):
    """A message template or text failed to render."""

    fields: ClassVar[tuple[str, ...]] = ("template", "line")
    template: str | None
    line: int | None


class CodeError(PermanentSendError):
    """A one-time code could not be decrypted (unknown key or tampered value)."""

    fields: ClassVar[tuple[str, ...]] = ("key_id",)
    key_id: str | None


class ChannelNotConfigured(PermanentSendError):
    """No channel is configured to send this kind of message."""


class InAppRefused(PermanentSendError):
    """This message may not go in-app: it carries a one-time code, and a feed keeps
    what it shows for months on every device the user is signed in to. Send it by
    email or SMS instead."""

    fields: ClassVar[tuple[str, ...]] = ("message_type",)
    message_type: str | None
