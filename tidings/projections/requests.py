"""User and session events that ask for a message become notification.requested."""

from __future__ import annotations

import logging
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
from tidings.projections.users import notify_user, read_source_payload

log = logging.getLogger(__name__)

CREATOR = "tidings-projector"


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
        user_id = (
            payload.user_id if isinstance(payload, SessionOTPChallenged) else event.aggregate_id
        )
        if skip is None:
            user = await notify_user(conn, instance_id=event.instance_id, user_id=user_id)
            if user is not None and user.state == "removed":
                skip = f"user {user_id} was removed"
            elif user is None:
                log.info(
                    "requesting %s for %s although user %s is unknown; the worker decides",
                    source.message_type, where, user_id,
                )  # fmt: skip
        if skip is not None:
            log.info("not requesting %s for %s: %s", source.message_type, where, skip)
            return

        nid = notification_id(
            instance_id=event.instance_id,
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            sequence=event.sequence,
        )
        existing = await self._store.aggregate_sequence(
            instance_id=event.instance_id,
            aggregate_type=NOTIFICATION_AGGREGATE,
            aggregate_id=nid,
            conn=conn,
        )
        if existing:
            log.debug("notification %s for %s was requested before", nid, where)
            return
        request = self._request(event, source, payload, user_id)
        await self._store.append(
            [
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
            ],
            conn=conn,
        )
        log.info("requested %s %s via %s for %s", source.message_type, nid, request.channel, where)

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
