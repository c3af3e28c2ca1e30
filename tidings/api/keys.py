"""API keys per tenant: created and revoked as events, looked up by their hash.

A key is `tdk_` and 43 characters of URL-safe base64 (256 random bits). Only
its SHA-256 is stored, in the apikey.created event and in the tidings.api_keys
read model that a trigger keeps in the same transaction (migration 0008). A
random 256-bit key needs no slow hash: nobody can guess one from its digest.

Scopes: events:write (POST /v1/events), events:read (GET /v1/events),
notifications:write (POST /v1/notifications, cancel), notifications:read
(GET /v1/notifications..., GET /v1/presence/{user_id}). A key belongs to one
instance (tenant) and sees only that instance's data.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict

from tidings.api.sql import query
from tidings.errors import TidingsError
from tidings.eventstore import ConcurrencyError, Database, NewEvent
from tidings.eventstore.errors import translated_errors

SCOPES = ("events:write", "events:read", "notifications:write", "notifications:read")
APIKEY_AGGREGATE = "apikey"
CREATED = "apikey.created"
REVOKED = "apikey.revoked"
KEY_PREFIX = "tdk_"


class ApiKeyError(TidingsError):
    """The API key cannot be created or revoked as asked."""

    fields: ClassVar[tuple[str, ...]] = ("instance_id", "key_id")
    instance_id: str | None
    key_id: str | None


class KeyCreated(BaseModel):
    """Payload of apikey.created: never the key, only its digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    scopes: list[str]
    key_hash: str


class KeyRevoked(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str = ""


@dataclass(frozen=True)
class Principal:
    """Who calls: a key of one instance, with its scopes."""

    instance_id: str
    key_id: str
    name: str
    scopes: frozenset[str]

    @property
    def label(self) -> str:
        """How the key appears as an event's creator and in logs (never the key)."""
        return f"apikey:{self.name or self.key_id}"


@dataclass(frozen=True)
class KeyRow:
    instance_id: str
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def check_scopes(scopes: Sequence[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ApiKeyError(f"unknown scopes {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in scopes]


class ApiKeys:
    """Create, revoke, list and look up keys; lookups are cached for `cache_seconds`."""

    def __init__(self, *, db: Database, cache_seconds: float = 0.0) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def create(
        self, *, instance_id: str, name: str, scopes: Sequence[str], creator: str
    ) -> tuple[str, str]:
        """A new key for the instance: (key, key id). The key is shown once, never stored."""
        if not instance_id:
            raise ApiKeyError("an API key needs an instance (--instance)")
        chosen = check_scopes(scopes) if scopes else list(SCOPES)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = str(uuid.uuid4())
        payload = KeyCreated(name=name, scopes=chosen, key_hash=hash_key(key))
        await self._db.store.append(
            [
                NewEvent(
                    instance_id=instance_id,
                    aggregate_type=APIKEY_AGGREGATE,
                    aggregate_id=key_id,
                    event_type=CREATED,
                    payload=payload.model_dump(mode="json"),
                    expected_sequence=0,
                    creator=creator,
                )
            ]
        )
        return key, key_id

    async def revoke(self, *, instance_id: str, key_id: str, creator: str, reason: str) -> None:
        """Append apikey.revoked; a key unknown in the instance, or revoked, is an error."""
        store = self._db.store
        sequence = await store.aggregate_sequence(
            instance_id=instance_id, aggregate_type=APIKEY_AGGREGATE, aggregate_id=key_id
        )
        if sequence == 0:
            raise ApiKeyError(
                f"no API key {key_id} in instance {instance_id} (see `tidings apikeys list`)",
                instance_id=instance_id,
                key_id=key_id,
            )
        event = NewEvent(
            instance_id=instance_id,
            aggregate_type=APIKEY_AGGREGATE,
            aggregate_id=key_id,
            event_type=REVOKED,
            payload=KeyRevoked(reason=reason).model_dump(mode="json"),
            expected_sequence=1,  # created, and nothing since: revoked once
            creator=creator,
        )
        try:
            await store.append([event])
        except ConcurrencyError:
            raise ApiKeyError(
                f"API key {key_id} of instance {instance_id} is already revoked",
                instance_id=instance_id,
                key_id=key_id,
            ) from None

    async def list(self, *, instance_id: str | None = None) -> list[KeyRow]:
        with translated_errors():
            async with self._db.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query("list_keys"), {"instance_id": instance_id})
                return [KeyRow(**row) for row in await cur.fetchall()]

    async def principal(self, key: str) -> Principal | None:
        """Who a presented key is, or None for an unknown or revoked key."""
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self._lookup(digest)
        if self._cache_seconds > 0:
            if len(self._cache) > 10_000:  # a flood of made-up keys must not grow it unbounded
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, found)
        return found

    async def _lookup(self, digest: str) -> Principal | None:
        with translated_errors():
            async with self._db.pool.connection() as conn, conn.cursor() as cur:
                await cur.execute(query("key_by_hash"), {"key_hash": digest})
                row: Any = await cur.fetchone()
        if row is None or row[4] is not None:
            return None
        instance_id, key_id, name, scopes, _ = row
        return Principal(
            instance_id=instance_id, key_id=key_id, name=name, scopes=frozenset(scopes)
        )
