"""Claiming due notifications from the pending queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic_core import from_json

from tidings.eventstore.errors import translated_errors
from tidings.eventstore.store import single_statement
from tidings.workers.sql import query

Kind = Literal["request", "retry"]


@dataclass(frozen=True)
class Claimed:
    """A notification a worker holds a lease on, with what it needs to send it."""

    instance_id: str
    notification_id: str
    kind: Kind
    sequence: int  # the outcome is appended expecting this sequence
    attempts: int  # failed attempts so far; this one is attempts + 1
    requested_at: datetime
    due_at: datetime
    claims: int  # >1: an earlier lease ran out
    request: Any
    notify_user: Any
    backoff: str | None
    last_error: str | None
    leased_until: datetime | None = None  # by the workers' clock; None: not from the queue
    # The users read model's row for the request's user, read with the claim (None:
    # not known to it); only when `user_read`, else the runner looks the user up.
    user: dict[str, Any] | None = None
    user_read: bool = False

    @property
    def attempt(self) -> int:
        return self.attempts + 1


# The users read model's columns claim_due returns after the queue's own, in this
# order (all NULL: a user it does not know).
_USER_COLUMNS = (
    "user_id", "resource_owner", "username", "first_name", "last_name", "display_name",
    "preferred_language", "last_email", "verified_email", "last_phone", "verified_phone",
    "state", "sequence", "change_date",
)  # fmt: skip
_QUEUE_COLUMNS = 13  # instance_id .. leased_until, as Claimed declares them


def _json(text: str | None) -> Any:
    """A jsonb column the claim returns as text (None: NULL).

    pydantic_core's parser takes less CPU than json.loads (2.4 against 4.0 us
    for a request); what it refuses (it stops at a depth json.loads still
    reads) goes to json.loads, so a request reads as before, and one that does
    not read is the attempt's to refuse.
    """
    if text is None:
        return None
    try:
        return from_json(text)
    except ValueError:
        return json.loads(text)


def _claimed(row: tuple[Any, ...]) -> Claimed:
    """A claim_due row (a plain tuple: no dict per row on the hot path): the queue's
    columns, then the user's (NULL: unknown)."""
    (
        instance_id, notification_id, kind, sequence, attempts, requested_at, due_at, claims,
        request_text, notify_user_text, backoff, last_error, leased_until,
    ) = row[:_QUEUE_COLUMNS]  # fmt: skip
    request, notify_user = _json(request_text), _json(notify_user_text)
    user: dict[str, Any] | None = None
    if row[_QUEUE_COLUMNS] is not None:
        user = dict(zip(_USER_COLUMNS, row[_QUEUE_COLUMNS:], strict=True))
        user["instance_id"] = instance_id
    return Claimed(
        instance_id=instance_id,
        notification_id=notification_id,
        kind=kind,
        sequence=sequence,
        attempts=attempts,
        requested_at=requested_at,
        due_at=due_at,
        claims=claims,
        request=request,
        notify_user=notify_user,
        backoff=backoff,
        last_error=last_error,
        leased_until=leased_until,
        user=user,
        user_read=True,
    )


@lru_cache(maxsize=16)
def claim_statement(bulk: int) -> bytes:
    """The claim of up to `bulk` notifications, the bulk written in (see claim_due).

    One text per bulk size, so each connection prepares it once and the server's
    generic plan knows the LIMIT.
    """
    return query("claim_due").format(bulk=sql.Literal(bulk)).as_string().encode()


class PendingQueue:
    def __init__(self, *, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def claim(
        self,
        *,
        kind: Kind,
        limit: int,
        now: datetime,
        lease: timedelta,
        owner: str,
        active_since: datetime | None = None,
    ) -> list[Claimed]:
        """Lease up to `limit` due notifications of `kind` (one short statement)."""
        params = {
            "kind": kind,
            "now": now,
            "lease_until": now + lease,
            "owner": owner,
            "active_since": active_since,
        }
        with translated_errors():
            async with single_statement(self._pool) as conn:
                cur = await conn.execute(claim_statement(limit), params)
                rows = await cur.fetchall()
        return [_claimed(row) for row in rows]

    async def release(self, put_off: list[tuple[Claimed, datetime]]) -> None:
        """Give leases back early: each notification is claimable again from its time.

        For notifications put off without an attempt (waiting for the users
        model). Fenced by the sequence seen at claim time, like an outcome.
        """
        params = {
            "instance_ids": [c.instance_id for c, _ in put_off],
            "notification_ids": [c.notification_id for c, _ in put_off],
            "sequences": [c.sequence for c, _ in put_off],
            "untils": [until for _, until in put_off],
        }
        with translated_errors():
            async with self._pool.connection() as conn:
                await conn.execute(query("release_leases"), params)

    async def has_pending(self, kinds: tuple[Kind, ...]) -> bool:
        with translated_errors():
            async with single_statement(self._pool) as conn:
                cur = await conn.execute(query("has_pending"), {"kinds": list(kinds)})
                row = await cur.fetchone()
        return bool(row and row[0])

    async def next_due(self, kinds: tuple[Kind, ...]) -> datetime | None:
        """When the earliest pending notification of these kinds becomes claimable."""
        with translated_errors():
            async with single_statement(self._pool) as conn:
                cur = await conn.execute(query("next_due"), {"kinds": list(kinds)})
                row = await cur.fetchone()
        return row[0] if row else None

    async def counts(self, now: datetime) -> dict[str, dict[str, int]]:
        """Per kind: pending, due and leased notifications."""
        with translated_errors():
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query("queue_counts"), {"now": now})
                rows = await cur.fetchall()
        return {row.pop("kind"): row for row in rows}

    async def rebuild(self) -> int:
        """Rebuild the queue from the log; returns the open notifications found."""
        with translated_errors():
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(query("rebuild_pending"))
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def snapshot(self) -> list[dict[str, Any]]:
        """Every row but the leases, for comparing the live queue with a rebuild."""
        with translated_errors():
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query("pending_all"))
                return list(await cur.fetchall())
