"""Notifications without a source event: what a producer asks for directly.

`POST /v1/notifications` requests a message for a user of the read model or
for a recipient given inline, under the producer's idempotency key. The key
fixes the notification id for ever (a UUIDv5 of instance and key), so a
repeated trigger is the same notification, never a second message; the
fingerprint of what was asked tells a true repeat from a key reused for
something else. A request that names several channels makes one notification
per channel under the one key (`request_notification_ids`), appended together.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tidings.notification.messages import Channel

# Not the namespace of source-event notifications: the two kinds of id never meet.
_DIRECT_NAMESPACE = uuid.UUID("0b7e3c55-2f4e-5d0a-a1c9-5e6d7f809a1b")
# The further channels of a request that names several: never an anchor's id.
_CHANNEL_NAMESPACE = uuid.UUID("4d2a9e61-7c3b-5f18-8e0d-2b6c1a9f3e57")
# The order a request's channels are taken in, whatever order it names them in.
CHANNEL_ORDER: tuple[Channel, ...] = ("email", "sms", "inapp")

IDEMPOTENCY_KEY_MAX = 255


def direct_notification_id(*, instance_id: str, idempotency_key: str) -> str:
    """The id of the notification a producer's idempotency key names, in its instance."""
    return str(uuid.uuid5(_DIRECT_NAMESPACE, f"{instance_id}\x1f{idempotency_key}"))


def request_notification_ids(
    *, instance_id: str, idempotency_key: str, channels: Sequence[Channel]
) -> dict[Channel, str]:
    """The notification id of each channel a request names, under its idempotency key.

    The first channel (in CHANNEL_ORDER) gets `direct_notification_id`, the
    request's anchor: every request under a key has it, so a key reused for
    other channels collides there and is told apart by its fingerprint. The
    others get their own UUIDv5 of instance, key and channel. One channel is
    the id a one-channel request always had.
    """
    ordered = [c for c in CHANNEL_ORDER if c in channels]
    anchor = direct_notification_id(instance_id=instance_id, idempotency_key=idempotency_key)
    ids = {ordered[0]: anchor}
    for channel in ordered[1:]:
        name = f"{instance_id}\x1f{idempotency_key}\x1f{channel}"
        ids[channel] = str(uuid.uuid5(_CHANNEL_NAMESPACE, name))
    return ids


def fingerprint(asked: dict[str, Any]) -> str:
    """A digest of what a producer asked for (its code left out: codes are never hashed
    into the log, where a six-digit code's digest would be as good as the code)."""
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DirectRecipient(_Frozen):
    """A recipient given inline: the producer vouches for the address."""

    email: str | None = Field(default=None, min_length=3, max_length=320)
    phone: str | None = Field(default=None, min_length=3, max_length=32)
    name: str = Field(default="", max_length=200)
    language: str = Field(default="", max_length=16)


class IdempotencyRef(_Frozen):
    """The producer's key and the fingerprint of what it asked for under it."""

    key: str = Field(min_length=1, max_length=IDEMPOTENCY_KEY_MAX)
    fingerprint: str
    requested_by: str = ""  # the API key's name (never the key)
    # A request naming several channels: every notification it made (one per
    # channel, the anchor first), the same list in each; empty for one channel.
    group: tuple[str, ...] = ()
