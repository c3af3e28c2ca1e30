"""Notifications without a source event: what a producer asks for directly.

`POST /v1/notifications` requests a message for a user of the read model or
for a recipient given inline, under the producer's idempotency key. The key
fixes the notification id for ever (a UUIDv5 of instance and key), so a
repeated trigger is the same notification, never a second message; the
fingerprint of what was asked tells a true repeat from a key reused for
something else.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Not the namespace of source-event notifications: the two kinds of id never meet.
_DIRECT_NAMESPACE = uuid.UUID("0b7e3c55-2f4e-5d0a-a1c9-5e6d7f809a1b")

IDEMPOTENCY_KEY_MAX = 255


def direct_notification_id(*, instance_id: str, idempotency_key: str) -> str:
    """The id of the notification a producer's idempotency key names, in its instance."""
    return str(uuid.uuid5(_DIRECT_NAMESPACE, f"{instance_id}\x1f{idempotency_key}"))


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
