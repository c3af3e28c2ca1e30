"""Notifications over HTTP: request one directly, read it, list them, cancel one.

A direct request is appended here as notification.requested (its model lives
in tidings.notification); the workers pick it up from the pending queue like
any other. Reading and listing go through the operators' code (`tidings
history`, `tidings notifications list`), scoped to the key's instance.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tidings.api.auth import requires
from tidings.api.keys import Principal
from tidings.api.problems import FieldProblem, Problem, problem_responses
from tidings.api.producers import NUL_MESSAGE, nul_path
from tidings.api.state import ApiState, state_of
from tidings.config.durations import Duration
from tidings.eventstore import ConcurrencyError, EventQuery, NewEvent, StoredEvent
from tidings.eventstore.errors import translated_errors
from tidings.notification.codes import EncryptedCode
from tidings.notification.compose import refuse_codes_in_app
from tidings.notification.direct import (
    CHANNEL_ORDER,
    IDEMPOTENCY_KEY_MAX,
    DirectRecipient,
    IdempotencyRef,
    fingerprint,
    request_notification_ids,
)
from tidings.notification.errors import CodeError, InAppRefused, RenderError
from tidings.notification.events import CANCELED, RETRY_REQUESTED, SENT, SETTLED, Canceled
from tidings.notification.messages import MESSAGE_TYPES, is_message_type_name
from tidings.notification.requests import (
    NOTIFICATION_AGGREGATE,
    REQUESTED,
    NotificationRequested,
    Request,
)
from tidings.projections import notify_user
from tidings.views.history import Step, history
from tidings.views.listing import NotificationFilter, State, list_notifications

log = logging.getLogger("tidings.api")

router = APIRouter(
    prefix="/v1", tags=["notifications"], responses=problem_responses((404, "No such notification"))
)

StateName = Literal["pending", "retrying", "sent", "canceled"]
_STATE_OF: dict[str, StateName] = {
    REQUESTED: "pending",
    RETRY_REQUESTED: "retrying",
    SENT: "sent",
    CANCELED: "canceled",
}
# Which texts a channel shows: a custom message type must have these.
_CHANNEL_FIELDS = {
    "email": ("subject", "body"),
    "sms": ("sms",),
    "inapp": ("inapp_title", "inapp_body"),
}


class PlainCode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    plain: str = Field(min_length=1, max_length=256)


ChannelName = Literal["email", "sms", "inapp"]
# What a channel needs to know where to send, when the request has no user_id.
_RECIPIENT_FIELD = {"email": "email", "sms": "phone"}


class NotificationIn(BaseModel):
    """A notification without a source event, for a user or an inline recipient."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "recipient": {"email": "ada@example.com", "name": "Ada", "language": "en"},
                    "message_type": "ExportReady",
                    "channel": "email",
                    "data": {"export_url": "https://example.com/exports/42"},
                },
                {
                    "user_id": "user-ada",
                    "message_type": "PasswordChange",
                    "channels": ["email", "inapp"],
                },
            ]
        },
    )

    user_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A user of the users read model; one not known yet is accepted. "
        "The inapp channel needs it: the feed is this user's.",
    )
    recipient: DirectRecipient | None = Field(
        default=None, description="Instead of user_id: the address to send to (email, sms)."
    )
    message_type: str = Field(
        min_length=1,
        max_length=64,
        description="A built-in type or one defined in the instance's template overrides.",
    )
    channel: ChannelName | None = Field(
        default=None, description="One channel; give either channel or channels."
    )
    channels: list[ChannelName] | None = Field(
        default=None,
        min_length=1,
        max_length=len(CHANNEL_ORDER),
        description="Several channels, each once: one notification per channel (its own id, "
        "attempts and retries), all requested in one transaction under the one "
        "Idempotency-Key.",
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="Template variables, as `args` in the texts."
    )
    code: PlainCode | EncryptedCode | None = Field(
        default=None, description='A code, as {"plain": "123456"} or encrypted; never echoed.'
    )
    code_expiry: Duration | None = Field(default=None, description="e.g. 10m")
    url_template: str | None = Field(default=None, max_length=2000)
    not_after: AwareDatetime | None = Field(
        default=None, description="Canceled (expired) rather than sent after this time."
    )

    @model_validator(mode="after")
    def _one_recipient(self) -> NotificationIn:
        if (self.user_id is None) == (self.recipient is None):
            raise ValueError("give either user_id or recipient, not both and not neither")
        if (self.channel is None) == (self.channels is None):
            raise ValueError(
                'give either channel or channels, not both and not neither (e.g. "channel": '
                '"email" or "channels": ["email", "inapp"])'
            )
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError("channels names a channel more than once")
        if len(json.dumps(self.data, default=str)) > 16 * 1024:
            raise ValueError("data has more than 16 KiB as JSON")
        return self

    @property
    def named(self) -> list[ChannelName]:
        """The channels asked for, in the order the request names them."""
        if self.channels is not None:
            return list(self.channels)
        return [self.channel] if self.channel is not None else []  # the validator gave one

    @property
    def channels_field(self) -> str:
        return "channel" if self.channels is None else "channels"


class NotificationAccepted(BaseModel):
    id: str
    state: StateName


class ChannelAccepted(BaseModel):
    channel: ChannelName
    id: str = Field(description="This channel's notification: GET /v1/notifications/{id}.")
    state: StateName


class RequestAccepted(NotificationAccepted):
    """The notifications a request made: `id` is the first channel's (the only one's)."""

    notifications: list[ChannelAccepted] = Field(
        description="One per channel, in the order the request named them."
    )


class TimelineStep(BaseModel):
    at: datetime
    event_type: str
    position: int
    summary: str


class NotificationView(BaseModel):
    id: str
    state: str = Field(description="pending, retrying, sent or canceled")
    message_type: str | None
    channel: str | None
    user_id: str | None
    attempts: int
    last_error: str | None
    cancel_reason: str | None
    requested_at: datetime
    settled_at: datetime | None
    next_due_at: datetime | None
    sent_via: str | None
    provider_message_id: str | None
    group: list[str] = Field(
        description="The notifications requested together with this one, one per channel "
        "(itself included); empty when its request named one channel."
    )
    timeline: list[TimelineStep]


class NotificationSummary(BaseModel):
    id: str
    state: str
    message_type: str | None
    channel: str | None
    user_id: str | None
    attempts: int | None
    last_error: str | None
    cancel_reason: str | None
    requested_at: datetime
    settled_at: datetime | None
    next_due_at: datetime | None
    sent_via: str | None


class NotificationPage(BaseModel):
    items: list[NotificationSummary]
    next_cursor: str | None = Field(description="Pass as cursor= for the next (older) page.")


@router.post(
    "/notifications",
    status_code=202,
    response_model=RequestAccepted,
    summary="Request a notification on one or several channels (idempotent by the "
    "Idempotency-Key header)",
    responses={
        200: {"model": RequestAccepted, "description": "The same request was made before"},
        **problem_responses(
            (422, "Invalid, a channel the request cannot go to (a one-time code in-app, "
             "no recipient for it), or the Idempotency-Key was used for another request"),
        ),
    },
)  # fmt: skip
async def request_notification(
    body: NotificationIn,
    response: Response,
    principal: Annotated[Principal, Depends(requires("notifications:write"))],
    api: Annotated[ApiState, Depends(state_of)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Required. Fixes the notification ids (one per channel): the same "
            "key is the same notifications for ever.",
        ),
    ] = None,
) -> RequestAccepted:
    if not idempotency_key or len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        raise Problem(
            400,
            "send an Idempotency-Key header (1 to 255 characters, e.g. a UUID of the "
            "business event): it makes a retried request the same notification",
            title="Idempotency-Key required",
        )
    instance = principal.instance_id
    where_nul = nul_path(body.model_dump(mode="json", exclude={"code"}), "body")
    if where_nul is not None:
        raise Problem(422, f"{where_nul.removeprefix('body.')} {NUL_MESSAGE}")
    named = body.named
    _check_channels(body, named)
    for channel in named:
        _check_texts(api, instance, body.message_type, channel)
    resource_owner = ""
    if body.user_id is not None:
        with translated_errors():
            async with api.db.pool.connection() as conn:
                user = await notify_user(conn, instance_id=instance, user_id=body.user_id)
        if user is not None and user.state == "removed":
            raise Problem(422, f"user {body.user_id} was removed; nothing was requested")
        resource_owner = user.resource_owner if user is not None else ""
    ids = request_notification_ids(
        instance_id=instance, idempotency_key=idempotency_key, channels=named
    )
    ref = IdempotencyRef(
        key=idempotency_key,
        fingerprint=fingerprint(_asked(body, list(ids))),
        requested_by=principal.label,
        group=tuple(ids.values()) if len(ids) > 1 else (),
    )
    code: dict[str, Any] | None = None
    if isinstance(body.code, PlainCode):
        code = api.encrypt(body.code.plain).model_dump(mode="json")
    elif body.code is not None:
        code = body.code.model_dump(mode="json")
    events = [
        NewEvent(
            instance_id=instance,
            aggregate_type=NOTIFICATION_AGGREGATE,
            aggregate_id=nid,
            event_type=REQUESTED,
            payload=NotificationRequested(
                request=Request(
                    user_id=body.user_id or "",
                    resource_owner=resource_owner,
                    message_type=body.message_type,
                    channel=channel,
                    recipient=body.recipient,
                    url_template=body.url_template,
                    code=code,
                    code_expiry=body.code_expiry,
                    args=body.data,
                    not_after=body.not_after,
                ),
                idempotency=ref,
            ).model_dump(mode="json"),
            expected_sequence=0,
            owner=resource_owner,
            creator=principal.label,
        )
        for channel, nid in ids.items()
    ]
    anchor = events[0].aggregate_id
    response.headers["Location"] = f"/v1/notifications/{anchor}"
    try:
        await api.appender.append(events)  # one transaction: every channel or none
    except ConcurrencyError:  # the key was used before (or at the same moment)
        return await _repeat(api, body, ref, ids, named, response, instance)
    for kind, nid in ids.items():
        log.debug(
            "notification %s instance %s: %s via %s requested by %s (idempotency key %s%s)",
            nid, instance, body.message_type, kind, principal.label, idempotency_key,
            f", with {', '.join(c for c in ids if c != kind)}" if len(ids) > 1 else "",
            extra={"notification_id": nid, "instance_id": instance, "api_key": principal.label},
        )  # fmt: skip
    return RequestAccepted(
        id=anchor,
        state="pending",
        notifications=[ChannelAccepted(channel=c, id=ids[c], state="pending") for c in named],
    )


def _asked(body: NotificationIn, channels: list[str]) -> dict[str, Any]:
    """What the fingerprint covers: the body, its code only as given or not, its
    channels in their fixed order (`channel: email` and `channels: ["email"]` are
    the same request, and so are two orders of the same channels)."""
    asked = body.model_dump(mode="json", exclude={"code", "channel", "channels"})
    asked["code"] = None if body.code is None else "given"
    if len(channels) == 1:
        asked["channel"] = channels[0]  # as a one-channel request was fingerprinted before
    else:
        asked["channels"] = channels
    return asked


def _check_channels(body: NotificationIn, named: list[ChannelName]) -> None:
    """422 when the request cannot go to one of its channels; nothing is appended."""
    where = body.channels_field
    for index, channel in enumerate(named):
        field = where if body.channels is None else f"{where}.{index}"
        if channel == "inapp":
            try:
                refuse_codes_in_app(body.message_type, has_code=body.code is not None)
            except InAppRefused as exc:
                detail = (
                    f"channel inapp refused for message type {body.message_type}: {exc}; "
                    "nothing was requested"
                )
                raise Problem(
                    422,
                    detail,
                    title="One-time codes never go in-app",
                    errors=[FieldProblem(field=field, message=detail)],
                ) from None
            if body.user_id is None:
                detail = (
                    "the inapp channel needs user_id: the feed is a user's of your "
                    "application (the user their token names), an inline recipient has none"
                )
                raise Problem(422, detail, errors=[FieldProblem(field="user_id", message=detail)])
        elif body.recipient is not None:
            needed = _RECIPIENT_FIELD[channel]
            if getattr(body.recipient, needed) is None:
                detail = f"the {channel} channel needs recipient.{needed}"
                raise Problem(
                    422, detail, errors=[FieldProblem(field=f"recipient.{needed}", message=detail)]
                )


def _check_texts(api: ApiState, instance: str, message_type: str, channel: str) -> None:
    if message_type in MESSAGE_TYPES and channel != "inapp":
        return  # every built-in type has its email and sms texts
    if message_type not in MESSAGE_TYPES and not is_message_type_name(message_type):
        raise Problem(
            422,
            f"message_type {message_type!r} is neither built in ({', '.join(MESSAGE_TYPES)}) "
            "nor a custom name (a capital letter, then letters and digits, like ExportReady)",
        )
    catalog = api.catalog
    try:
        found = {
            lang: catalog.texts(instance, lang, message_type)
            for lang in sorted(catalog.languages(instance))
        }
    except RenderError as exc:
        raise Problem(422, f"the texts of this instance cannot be read: {exc}") from None
    written = {lang: texts for lang, texts in found.items() if texts}
    if not written:
        raise Problem(
            422,
            f"message type {message_type} has no texts for this instance: add it to "
            "texts.<lang>.yaml in the template overrides (templates.dir), "
            "<dir>/<instance>/ or <dir>/_default/",
        )
    needed = _CHANNEL_FIELDS[channel]
    if not any(all(f in texts for f in needed) for texts in written.values()):
        raise Problem(
            422,
            f"message type {message_type} has no {' and '.join(needed)} text, which the "
            f"{channel} channel needs",
        )


async def _events(api: ApiState, instance: str, nid: str) -> list[StoredEvent]:
    return await api.db.store.query(
        EventQuery(
            instance_ids=(instance,),
            aggregate_types=(NOTIFICATION_AGGREGATE,),
            aggregate_ids=(nid,),
        )
    )


async def _repeat(
    api: ApiState,
    body: NotificationIn,
    ref: IdempotencyRef,
    ids: dict[ChannelName, str],
    named: list[ChannelName],
    response: Response,
    instance: str,
) -> RequestAccepted:
    """200 for the same request again; 422 when the key was used for another one."""
    anchor = next(iter(ids.values()))
    events = await _events(api, instance, anchor)
    if not events:  # cannot be: every request under the key appends the anchor
        raise Problem(409, f"notification {anchor} kept changing; try again")
    try:
        first = NotificationRequested.model_validate(events[0].payload)
    except ValidationError:
        first = None
    same = (
        first is not None
        and first.idempotency is not None
        and first.idempotency.fingerprint == ref.fingerprint
        and _same_code(api, body.code, first.request.code)
    )
    if not same:
        raise Problem(
            422,
            "the Idempotency-Key header was used before for a different request; "
            "send a new key for a new notification",
            title="Idempotency-Key reused",
        )
    states: dict[ChannelName, StateName] = {}
    for channel, nid in ids.items():
        own = events if nid == anchor else await _events(api, instance, nid)
        states[channel] = _STATE_OF.get(own[-1].event_type, "pending") if own else "pending"
    response.status_code = 200
    return RequestAccepted(
        id=anchor,
        state=states[next(iter(ids))],
        notifications=[ChannelAccepted(channel=c, id=ids[c], state=states[c]) for c in named],
    )


def _same_code(api: ApiState, given: PlainCode | EncryptedCode | None, stored: Any) -> bool:
    if given is None or stored is None:
        return given is None and stored is None
    if isinstance(given, EncryptedCode):
        return bool(given.model_dump(mode="json") == stored)
    if api.cipher is None:
        return False
    try:
        return api.cipher.decrypt(stored) == given.plain
    except CodeError:
        return False


@router.get(
    "/notifications/{notification_id}",
    response_model=NotificationView,
    summary="A notification's state, attempts, last error and timeline",
)
async def get_notification(
    notification_id: str,
    principal: Annotated[Principal, Depends(requires("notifications:read"))],
    api: Annotated[ApiState, Depends(state_of)],
) -> NotificationView:
    found = await api.db.store.query(
        EventQuery(
            instance_ids=(principal.instance_id,),
            aggregate_types=(NOTIFICATION_AGGREGATE,),
            aggregate_ids=(notification_id,),
            limit=1,
        )
    )
    if not found:
        raise Problem(404, f"no notification {notification_id}")
    steps = await history(api.db.store, notification_id)
    return _view(notification_id, steps)


def _view(nid: str, steps: list[Step]) -> NotificationView:
    own = [s for s in steps if s.event_type in _STATE_OF]
    requested, last = own[0], own[-1]
    request = requested.payload.get("request") or {}
    group = (requested.payload.get("idempotency") or {}).get("group") or []
    attempts, last_error, due = 0, None, requested.at
    sent_via = provider_id = reason = None
    for step in own[1:]:
        with contextlib.suppress(TypeError, ValueError):  # an unreadable payload shows as is
            attempts = int(step.payload.get("attempt", attempts) or 0)
        if step.event_type in (RETRY_REQUESTED, CANCELED):
            last_error = step.payload.get("error")
        if step.event_type == RETRY_REQUESTED:
            with contextlib.suppress(TypeError, ValueError):
                due = datetime.fromisoformat(str(step.payload.get("due_at")))
        if step.event_type == SENT:
            sent_via = step.payload.get("channel")
            provider_id = step.payload.get("provider_message_id")
        if step.event_type == CANCELED:
            reason = step.payload.get("reason")
    settled = last.event_type in SETTLED
    return NotificationView(
        id=nid,
        state=_STATE_OF[last.event_type],
        message_type=request.get("message_type"),
        channel=request.get("channel"),
        user_id=request.get("user_id") or None,
        attempts=attempts,
        last_error=last_error,
        cancel_reason=reason,
        requested_at=requested.at,
        settled_at=last.at if settled else None,
        next_due_at=None if settled else due,
        sent_via=sent_via,
        provider_message_id=provider_id,
        group=[str(nid) for nid in group],
        timeline=[
            TimelineStep(at=s.at, event_type=s.event_type, position=s.position, summary=s.summary)
            for s in steps
        ],
    )


@router.get(
    "/notifications",
    response_model=NotificationPage,
    summary="Notifications of the key's instance, newest first, a page at a time",
)
async def list_page(
    principal: Annotated[Principal, Depends(requires("notifications:read"))],
    api: Annotated[ApiState, Depends(state_of)],
    state: Annotated[list[StateName] | None, Query()] = None,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    message_type: Annotated[list[str] | None, Query()] = None,
    since: Annotated[AwareDatetime | None, Query(description="Requested at or after.")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Requested before.")] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> NotificationPage:
    after = _read_cursor(cursor) if cursor else None
    if after is not None:
        edge = after[0] + timedelta(microseconds=1)
        until = edge if until is None else min(until, edge)
    states: tuple[State, ...] = tuple(s for s in state or ())
    fetch = limit + 50
    while True:
        listing = await list_notifications(
            api.db.pool,
            NotificationFilter(
                instance_ids=(principal.instance_id,),
                user_id=user_id,
                states=states,
                message_types=tuple(message_type or ()),
                requested_since=since,
                requested_until=until,
                limit=fetch,
            ),
            now=api.clock(),
        )
        rows = listing.rows
        if after is not None:  # those at the cursor's time up to its id were on earlier pages
            rows = [
                r
                for r in rows
                if not (r.requested_at == after[0] and r.notification_id >= after[1])
            ]
        if len(rows) > limit or not listing.more:
            break
        fetch *= 4  # many at the cursor's very time (one projector batch): read further
    page = rows[:limit]
    more = len(rows) > limit or (listing.more and len(rows) >= limit)
    items = [
        NotificationSummary(
            id=r.notification_id,
            state=r.state,
            message_type=r.message_type,
            channel=r.channel,
            user_id=r.user_id or None,
            attempts=r.attempts,
            last_error=r.last_error,
            cancel_reason=r.cancel_reason,
            requested_at=r.requested_at,
            settled_at=r.settled_at,
            next_due_at=r.next_due_at,
            sent_via=r.sent_via,
        )
        for r in page
    ]
    next_cursor = _write_cursor(page[-1].requested_at, page[-1].notification_id) if more else None
    return NotificationPage(items=items, next_cursor=next_cursor)


def _write_cursor(at: datetime, nid: str) -> str:
    raw = json.dumps({"t": at.isoformat(), "id": nid}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        at = datetime.fromisoformat(data["t"])
        nid = str(data["id"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise Problem(
            400, "cursor is not one this API gave out: pass next_cursor as it came"
        ) from None
    if at.tzinfo is None:
        raise Problem(400, "cursor is not one this API gave out: pass next_cursor as it came")
    return at, nid


@router.post(
    "/notifications/{notification_id}/cancel",
    response_model=NotificationAccepted,
    summary="Cancel a notification that is still pending or retrying",
    responses=problem_responses((409, "Already sent or canceled")),
)
async def cancel_notification(
    notification_id: str,
    principal: Annotated[Principal, Depends(requires("notifications:write"))],
    api: Annotated[ApiState, Depends(state_of)],
) -> NotificationAccepted:
    for _ in range(3):  # a worker may record an attempt meanwhile: read again
        events = await _events(api, principal.instance_id, notification_id)
        if not events:
            raise Problem(404, f"no notification {notification_id}")
        last = events[-1]
        if last.event_type in SETTLED:
            raise Problem(
                409,
                f"notification {notification_id} is already {_STATE_OF[last.event_type]}; "
                "only pending or retrying ones can be canceled",
                title="Already settled",
            )
        attempts = int(last.payload.get("attempt", 0) or 0) if last.event_type != REQUESTED else 0
        canceled = Canceled(
            reason="canceled",
            error=f"canceled through the API by {principal.label}",
            attempt=attempts,
        )
        try:
            await api.db.store.append(
                [
                    NewEvent(
                        instance_id=principal.instance_id,
                        aggregate_type=NOTIFICATION_AGGREGATE,
                        aggregate_id=notification_id,
                        event_type=CANCELED,
                        payload=canceled.model_dump(mode="json"),
                        expected_sequence=last.sequence,
                        creator=principal.label,
                    )
                ]
            )
        except ConcurrencyError:
            continue
        log.info(
            "notification %s instance %s canceled through the API by %s after %d attempt(s); "
            "an attempt already in flight may still go out, its outcome is then refused",
            notification_id, principal.instance_id, principal.label, attempts,
            extra={"notification_id": notification_id, "instance_id": principal.instance_id,
                   "api_key": principal.label, "attempt": attempts},
        )  # fmt: skip
        return NotificationAccepted(id=notification_id, state="canceled")
    raise Problem(409, f"notification {notification_id} kept changing; try again")
