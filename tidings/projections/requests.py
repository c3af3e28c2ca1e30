"""User and session events that ask for a message become notification.requested."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tidings.clock import Clock, utc_now
from tidings.config import NotificationSettings
from tidings.eventstore import EventStore, NewEvent, StoredEvent
from tidings.notification.requests import (
    NOTIFICATION_AGGREGATE,
    REQUESTED,
    NotificationRequested,
    Request,
    SourceRef,
    notification_id,
)
from tidings.notification.sources import (
    MESSAGE_SOURCES,
    CodeAdded,
    DomainClaimed,
    MessageSource,
    PasswordCodeAdded,
    SessionOTPChallenged,
)
from tidings.projections.base import Connection, InvalidEvent
from tidings.projections.sql import query
from tidings.projections.users import notify_users, read_source_payload

log = logging.getLogger(__name__)

CREATOR = "tidings-projector"


_NOT_REQUESTING = "not requesting %s for %s: %s"
_UNKNOWN_USER = "requesting %s for %s although user %s is unknown; the worker decides"
_BEFORE = "notification %s for %s was requested before"
_REQUESTED = "requested %s %s via %s for %s"


async def _requested_before(conn: Connection, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (instance id, notification id) have events already."""
    if not keys:
        return set()
    params = {"instance_ids": [k[0] for k in keys], "notification_ids": [k[1] for k in keys]}
    cur = await conn.execute(query("notifications_existing"), params)
    return {(row[0], row[1]) for row in await cur.fetchall()}


class RequestsProjection:
    """Appends one notification.requested per source event that wants a message.

    The notification's id is derived from the source event and appended as a
    new aggregate (expected sequence 0), so a re-run or a rebuild never
    requests the same message twice.
    """

    name = "requests"
    event_types = frozenset(MESSAGE_SOURCES)

    def __init__(
        self, *, store: EventStore, settings: NotificationSettings, clock: Clock = utc_now
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock

    async def handle(self, event: StoredEvent, conn: Connection) -> None:
        await self.handle_many([event], conn)

    async def handle_many(self, events: Sequence[StoredEvent], conn: Connection) -> None:
        """handle() for each event in turn, in three statements for all of them.

        The users are read at once (the projector hands over no event that
        changes a user between these), so are the notifications requested
        before, and the new requests are appended together. Raises InvalidEvent
        for the first event that cannot be used, having written nothing; the
        log lines follow only once the requests are written.
        """
        lines: list[tuple[int, str, tuple[Any, ...]]] = []
        wanted: list[tuple[StoredEvent, MessageSource, Any, str, str]] = []
        for event in events:
            source = MESSAGE_SOURCES[event.event_type]
            if event.aggregate_type != source.aggregate_type:
                raise InvalidEvent(
                    f"{event.event_type} at position {event.position} is on a "
                    f"{event.aggregate_type!r} aggregate, expected {source.aggregate_type!r}",
                    position=event.position,
                    event_type=event.event_type,
                )
            payload = read_source_payload(event, source.payload)
            where = (
                f"{event.instance_id} {event.aggregate_type}/{event.aggregate_id} "
                f"seq {event.sequence} (position {event.position})"
            )
            skip = self._skip_reason(event, source, payload)
            if skip is not None:
                lines.append((logging.INFO, _NOT_REQUESTING, (source.message_type, where, skip)))
                continue
            user_id = (
                payload.user_id if isinstance(payload, SessionOTPChallenged) else event.aggregate_id
            )
            wanted.append((event, source, payload, user_id, where))
        users = await notify_users(conn, sorted({(w[0].instance_id, w[3]) for w in wanted}))
        requests: list[tuple[StoredEvent, MessageSource, Any, str, str, str]] = []
        for event, source, payload, user_id, where in wanted:
            user = users.get((event.instance_id, user_id))
            if user is not None and user.state == "removed":
                skip = f"user {user_id} was removed"
                lines.append((logging.INFO, _NOT_REQUESTING, (source.message_type, where, skip)))
                continue
            if user is None:
                lines.append((logging.INFO, _UNKNOWN_USER, (source.message_type, where, user_id)))
            nid = notification_id(
                instance_id=event.instance_id,
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id,
                sequence=event.sequence,
            )
            requests.append((event, source, payload, user_id, where, nid))
        before = await _requested_before(conn, [(r[0].instance_id, r[5]) for r in requests])
        appended: list[NewEvent] = []
        for event, source, payload, user_id, where, nid in requests:
            if (event.instance_id, nid) in before:
                lines.append((logging.DEBUG, _BEFORE, (nid, where)))
                continue
            request = self._request(event, source, payload, user_id)
            appended.append(
                NewEvent(
                    instance_id=event.instance_id,
                    aggregate_type=NOTIFICATION_AGGREGATE,
                    aggregate_id=nid,
                    event_type=REQUESTED,
                    payload=NotificationRequested(request=request).model_dump(mode="json"),
                    expected_sequence=0,
                    owner=event.owner,
                    creator=CREATOR,
                )
            )
            lines.append(
                (logging.INFO, _REQUESTED, (source.message_type, nid, request.channel, where))
            )
        await self._store.append(appended, conn=conn)
        for level, message, args in lines:
            log.log(level, message, *args)

    def _skip_reason(self, event: StoredEvent, source: MessageSource, payload: Any) -> str | None:
        if source.setting is not None and not getattr(self._settings, source.setting):
            return f"notifications.{source.setting} is off"
        if isinstance(payload, CodeAdded):
            if payload.code_returned:
                return "the code was returned to the caller (code_returned)"
            if payload.expiry is not None and event.created_at + payload.expiry <= self._clock():
                return f"the code expired at {(event.created_at + payload.expiry).isoformat()}"
        return None

    def _request(
        self, event: StoredEvent, source: MessageSource, payload: Any, user_id: str
    ) -> Request:
        channel = source.channel
        if channel is None:
            channel = (
                payload.notification_type if isinstance(payload, PasswordCodeAdded) else "email"
            )
        args: dict[str, Any] = {}
        if isinstance(payload, SessionOTPChallenged):
            args["session_id"] = event.aggregate_id
        if isinstance(payload, DomainClaimed):
            args["temporary_username"] = payload.username
        code = payload if isinstance(payload, CodeAdded) else None
        return Request(
            user_id=user_id,
            resource_owner=event.owner,
            source=SourceRef(
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id,
                sequence=event.sequence,
                event_type=event.event_type,
                position=event.position,
                created_at=event.created_at,
            ),
            message_type=source.message_type,
            channel=channel,
            sent_event_type=source.sent_event_type,
            url_template=getattr(payload, "url_template", None),
            code=code.code if code is not None else None,
            code_expiry=code.expiry if code is not None else None,
            args=args,
            is_otp=source.is_otp,
            unverified_channel=source.unverified_channel,
        )

    async def reset(self, conn: Connection) -> None:
        """Nothing to forget: requests are events, and a rebuild re-requests none."""
