"""The users read model: what a message needs to know about each user."""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from pydantic import ValidationError

from tidings.eventstore import StoredEvent
from tidings.notification.requests import NotifyUser
from tidings.notification.sources import USER_EVENTS, SourcePayload
from tidings.projections.base import Connection, InvalidEvent
from tidings.projections.sql import query

# Which statement each user event runs.
_STATEMENTS = {
    "user.human.added": "user_added",
    "user.human.profile.changed": "user_profile_changed",
    "user.human.email.changed": "user_email_changed",
    "user.human.email.verified": "user_email_verified",
    "user.human.phone.changed": "user_phone_changed",
    "user.human.phone.verified": "user_phone_verified",
    "user.human.phone.removed": "user_phone_removed",
    "user.username.changed": "user_username_changed",
    "user.domain.claimed": "user_username_changed",
    "user.removed": "user_removed",
}


def read_source_payload(event: StoredEvent, model: type[SourcePayload]) -> Any:
    """The event's payload as its model, or InvalidEvent naming what is wrong."""
    try:
        return model.model_validate(event.payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidEvent(
            f"{event.event_type} at position {event.position} has an invalid payload: {problems}",
            position=event.position,
            event_type=event.event_type,
        ) from exc


LIVE_TABLE = sql.Identifier("tidings", "users")


class UsersProjection:
    """Keeps tidings.users (or another table of its shape) up to date from user events.

    `table` is tidings.users for the projector; the audit replays the same
    projection into a private copy to compare the two.
    """

    name = "users"
    event_types = frozenset(_STATEMENTS)

    def __init__(self, table: sql.Identifier = LIVE_TABLE) -> None:
        self._statements = {
            name: query(name).format(users=table) for name in {*_STATEMENTS.values(), "users_reset"}
        }

    async def handle(self, event: StoredEvent, conn: Connection) -> None:
        if event.aggregate_type != "user":
            raise InvalidEvent(
                f"{event.event_type} at position {event.position} is on a "
                f"{event.aggregate_type!r} aggregate, expected 'user'",
                position=event.position,
                event_type=event.event_type,
            )
        payload = read_source_payload(event, USER_EVENTS[event.event_type])
        params: dict[str, Any] = {
            **payload.model_dump(),
            "instance_id": event.instance_id,
            "user_id": event.aggregate_id,
            "resource_owner": event.owner,
            "sequence": event.sequence,
            "change_date": event.created_at,
        }
        cur = await conn.execute(self._statements[_STATEMENTS[event.event_type]], params)
        if cur.rowcount == 0:
            raise InvalidEvent(
                f"{event.event_type} at position {event.position} is for user "
                f"{event.instance_id}/{event.aggregate_id}, who was never added",
                position=event.position,
                event_type=event.event_type,
            )

    async def reset(self, conn: Connection) -> None:
        await conn.execute(self._statements["users_reset"])


async def notify_user(conn: Connection, *, instance_id: str, user_id: str) -> NotifyUser | None:
    """The user as a message sees it, or None when the read model does not know them."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query("user_get"), {"instance_id": instance_id, "user_id": user_id})
        row = await cur.fetchone()
    return NotifyUser.model_validate(row) if row is not None else None


async def notify_users(
    conn: Connection, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], NotifyUser]:
    """Many users at once, by (instance id, user id); unknown ones are left out."""
    if not keys:
        return {}
    params = {"instance_ids": [k[0] for k in keys], "user_ids": [k[1] for k in keys]}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query("users_get_many"), params)
        users = [NotifyUser.model_validate(row) for row in await cur.fetchall()]
    return {(u.instance_id, u.user_id): u for u in users}


async def users_checkpoint(conn: Connection) -> int:
    """Where the users read model stands: the users projection's checkpoint (0: never ran).

    Every user event at or below it is in the model; a user unknown to the model
    whose events all lie below it is unknown for good.
    """
    cur = await conn.execute(query("checkpoint_get"), {"name": UsersProjection.name})
    row = await cur.fetchone()
    return int(row[0]) if row else 0
