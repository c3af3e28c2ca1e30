"""The notification's lifecycle: the one place its rules live.

Pure: no I/O, no database, no clock or random source of its own. Two functions
in the decider shape:

- `evolve(state, event)`: the state after one more event of the notification's
  log, or `IllegalEvent` when that event may not follow (a notification starts
  with its request at sequence 1; nothing follows sent or canceled; attempts
  are numbered 1, 2, 3, ...; a feed mark follows only an in-app send, names
  the item's user and changes the item, and leaves the status sent).
  `audit verify` folds the log with it (through
  `step`, which also says what a reader continuing past a refused event sees);
  the pending queue's trigger (migration 0004) is checked against it by a
  property test.
- `decide(state, happened, now=, policy=)`: what to append after something
  happened to an open notification: it was picked up (`Due`: send it, or cancel
  it without sending), or an attempt ended (`Delivered`, `Failed`). Workers
  claim, ask, send, ask again and append what it says.

Durations are `timedelta` here; their `"2s"` text form exists only in the event
payloads (tidings.notification.wire).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from tidings.errors import TidingsError
from tidings.notification.backoff import Backoff
from tidings.notification.events import (
    ARCHIVED,
    CANCELED,
    MARKS,
    PAYLOADS,
    READ,
    RETRY_REQUESTED,
    SEEN,
    SENT,
    UNARCHIVED,
    UNREAD,
    Canceled,
    CancelReason,
    InAppContent,
    Mark,
    RetryRequested,
    Sent,
)
from tidings.notification.requests import REQUESTED, NotificationRequested, NotifyUser, Request
from tidings.notification.wire import format_duration

__all__ = [
    "CancelReason",
    "Decision",
    "Delivered",
    "Due",
    "Engagement",
    "Failed",
    "IllegalEvent",
    "LoggedEvent",
    "NotificationState",
    "Policy",
    "Status",
    "Verdict",
    "decide",
    "engage",
    "evolve",
    "mark_refused",
    "step",
]


class Status(StrEnum):
    """Where a notification is in its life."""

    REQUESTED = "requested"  # not attempted yet (or its first attempt is in flight)
    RETRYING = "retrying"  # an attempt failed; the next one is due at due_at
    SENT = "sent"
    CANCELED = "canceled"

    @property
    def is_open(self) -> bool:
        return self in (Status.REQUESTED, Status.RETRYING)


# The event that puts a notification into each status.
STATUS_AFTER: Mapping[str, Status] = {
    REQUESTED: Status.REQUESTED,
    RETRY_REQUESTED: Status.RETRYING,
    SENT: Status.SENT,
    CANCELED: Status.CANCELED,
}
EVENT_OF_STATUS: Mapping[Status, str] = {status: t for t, status in STATUS_AFTER.items()}
EVENT_TYPE_OF: Mapping[type[BaseModel], str] = {model: t for t, model in PAYLOADS.items()}
# The pending queue's kind of an open notification: request workers take the
# first attempt, retry workers the later ones (tidings.pending_notifications).
QUEUE_KIND: Mapping[Status, str] = {Status.REQUESTED: "request", Status.RETRYING: "retry"}

# Reasons that cancel after an attempt was made and failed: their canceled
# event counts that attempt. Every other reason cancels before sending.
CANCELED_AFTER_AN_ATTEMPT = frozenset({CancelReason.PERMANENT_ERROR, CancelReason.MAX_ATTEMPTS})


@dataclass(frozen=True)
class Engagement:
    """Where an in-app notification's feed item stands (its marks folded)."""

    seen: bool = False
    read: bool = False
    archived: bool = False


@dataclass(frozen=True, kw_only=True)
class NotificationState:
    """What the log says of one notification so far."""

    status: Status
    sequence: int  # of the last event: what the next append expects
    attempts: int = 0  # failed attempts while open; attempts made once settled
    requested_at: datetime | None = None  # max_ttl counts from here
    due_at: datetime | None = None  # open: when the next attempt may start
    backoff: timedelta | None = None  # the last retry's: the next one grows from it
    request: Request | None = None  # None: unreadable in the log
    notify_user: NotifyUser | None = None  # the first attempt's snapshot (retries)
    last_error: str | None = None
    cancel_reason: CancelReason | None = None
    sent_via: str | None = None  # the channel of its notification.sent
    inapp_user: str | None = None  # sent in-app: whose feed item it is
    engagement: Engagement = field(default_factory=Engagement)  # the item's marks

    @property
    def attempt(self) -> int:
        """The number of the next attempt."""
        return self.attempts + 1

    def queue_row(self) -> dict[str, Any] | None:
        """The row the pending queue holds for this notification (leases aside); None: none."""
        if not self.status.is_open:
            return None
        return {
            "kind": QUEUE_KIND[self.status],
            "sequence": self.sequence,
            "attempts": self.attempts,
            "requested_at": self.requested_at,
            "due_at": self.due_at,
            "backoff": self.backoff,
        }


class LoggedEvent(Protocol):
    """What evolve reads of a stored event (StoredEvent and the audit's rows have it)."""

    @property
    def event_type(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def payload(self) -> Mapping[str, Any] | None: ...


class IllegalEvent(TidingsError):
    """An event may not follow the notification's state."""

    fields = ("rule", "event_type", "sequence", "status")

    rule: str  # the audit rule it breaks (tidings.audit.report.RULES)
    event_type: str
    sequence: int
    status: Status | None  # the state it was refused in; None: nothing before it


# --- evolve -------------------------------------------------------------------------


def evolve(state: NotificationState | None, event: LoggedEvent) -> NotificationState:
    """The state after `event`; raises IllegalEvent (the first rule it breaks) if it may not."""
    after, refusals = step(state, event)
    if refusals:
        raise refusals[0]
    assert after is not None
    return after


def step(
    state: NotificationState | None, event: LoggedEvent
) -> tuple[NotificationState | None, tuple[IllegalEvent, ...]]:
    """The state after `event` and every rule it breaks (none: evolve accepts it).

    A reader that goes on past a refused event (the audit, to report every
    violation once) continues from the state returned: a settled notification
    stays settled; an unknown or unreadable event changes nothing but the
    settling; a miscounted attempt is taken at its word.
    """
    refusals: list[IllegalEvent] = []

    def refuse(rule: str, detail: str) -> None:
        refusals.append(
            IllegalEvent(
                detail,
                rule=rule,
                event_type=event.event_type,
                sequence=event.sequence,
                status=state.status if state is not None else None,
            )
        )

    if state is None and (event.sequence != 1 or event.event_type != REQUESTED):
        refuse(
            "starts-with-requested",
            f"the first event is {event.event_type} at sequence {event.sequence}; a "
            f"notification starts with {REQUESTED} at sequence 1",
        )
    elif state is not None and event.event_type == REQUESTED and state.status.is_open:
        refuse(
            "starts-with-requested",
            f"{REQUESTED} again at sequence {event.sequence}; only sequence 1 requests",
        )
    if event.event_type in MARKS:
        return _marked(state, event, refuse), tuple(refusals)
    if state is not None and not state.status.is_open:
        again = "settled again by" if event.event_type in (SENT, CANCELED) else "followed by"
        refuse(
            "settled-once",
            f"{EVENT_OF_STATUS[state.status]} at sequence {state.sequence} is {again} "
            f"{event.event_type} at sequence {event.sequence}; nothing may follow it",
        )
        return replace(state, sequence=event.sequence), tuple(refusals)

    model = PAYLOADS.get(event.event_type)
    if model is None:
        refuse(
            "unknown-event-type",
            f"{event.event_type} is not a notification event ({', '.join(PAYLOADS)})",
        )
        return _moved(state, event), tuple(refusals)
    try:
        payload = model.model_validate(event.payload)
    except ValidationError as exc:
        refuse("unreadable-payload", f"{event.event_type} does not read as {model.__name__}: "
               f"{describe_validation_error(exc)}")  # fmt: skip
        return _unreadable(state, event), tuple(refusals)

    if isinstance(payload, NotificationRequested):
        if state is not None:  # requested again while open: nothing changes
            return _moved(state, event), tuple(refusals)
        return NotificationState(
            status=Status.REQUESTED,
            sequence=event.sequence,
            requested_at=event.created_at,
            due_at=event.created_at,
            request=payload.request,
        ), tuple(refusals)

    failed = state.attempts if state is not None else 0
    if isinstance(payload, RetryRequested | Sent):
        if payload.attempt != failed + 1:
            what = "retry.requested for" if isinstance(payload, RetryRequested) else "sent on"
            refuse(
                "attempts",
                f"{what} attempt {payload.attempt} after {failed} failed, expected attempt "
                f"{failed + 1} (attempts are numbered 1, 2, 3, ...)",
            )
    elif isinstance(payload, Canceled):
        expected = failed + 1 if payload.reason in CANCELED_AFTER_AN_ATTEMPT else failed
        if payload.attempt != expected:
            refuse(
                "attempts",
                f"{CANCELED} ({payload.reason}) counts {payload.attempt} attempts after {failed} "
                f"failed, expected {expected}",
            )
    base = state or NotificationState(status=Status.REQUESTED, sequence=0)
    if isinstance(payload, RetryRequested):
        after = replace(
            base,
            status=Status.RETRYING,
            sequence=event.sequence,
            attempts=payload.attempt,
            due_at=payload.due_at,
            backoff=payload.backoff,
            request=payload.request,
            notify_user=payload.notify_user,
            last_error=payload.error,
        )
    elif isinstance(payload, Sent):
        after = _settled(base, event, Status.SENT, attempts=payload.attempt)
        inapp_user = payload.inapp.user_id if payload.inapp is not None else None
        after = replace(after, sent_via=payload.channel, inapp_user=inapp_user)
    else:
        assert isinstance(payload, Canceled)
        after = _settled(base, event, Status.CANCELED, attempts=payload.attempt)
        after = replace(after, cancel_reason=payload.reason, last_error=payload.error)
    return after, tuple(refusals)


def _marked(
    state: NotificationState | None, event: LoggedEvent, refuse: Callable[[str, str], None]
) -> NotificationState | None:
    """A feed mark: it follows an in-app send, names the item's user, and changes the item.

    The status stays sent; only the item's engagement moves.
    """
    try:
        mark = Mark.model_validate(event.payload)
    except ValidationError as exc:
        refuse("unreadable-payload", f"{event.event_type} does not read as Mark: "
               f"{describe_validation_error(exc)}")  # fmt: skip
        return _moved(state, event)
    settled = None if state is None or state.status.is_open else EVENT_OF_STATUS[state.status]
    why = mark_refused(
        settled_by=settled,
        channel=state.sent_via if state is not None else None,
        in_app=state is not None and state.inapp_user is not None,
    )
    if why is not None or state is None:
        refuse("marks", f"{event.event_type} at sequence {event.sequence}: {why}")
        return _moved(state, event)
    if mark.user_id != state.inapp_user:
        refuse(
            "marks",
            f"{event.event_type} is for user {mark.user_id}, the item is user {state.inapp_user}'s",
        )
    after = engage(state.engagement, event.event_type)
    if after == state.engagement:
        refuse(
            "marks",
            f"{event.event_type} at sequence {event.sequence} changes nothing "
            "(a mark is appended once: reading twice appends one read)",
        )
    return replace(state, sequence=event.sequence, engagement=after)


def mark_refused(*, settled_by: str | None, channel: str | None, in_app: bool) -> str | None:
    """Why a feed mark may not follow (None: it may): only an in-app notification.sent."""
    if settled_by != SENT:
        state = settled_by or "not settled"
        return f"a mark follows an in-app send only; the notification is {state}"
    if not in_app:
        return f"a mark follows an in-app send only; the notification was sent via {channel}"
    return None


def engage(engagement: Engagement, event_type: str) -> Engagement:
    """The feed item after a mark (as the feed trigger folds it; other types change nothing)."""
    if event_type == SEEN:
        return replace(engagement, seen=True)
    if event_type == READ:
        return replace(engagement, seen=True, read=True)
    if event_type == UNREAD:
        return replace(engagement, read=False)
    if event_type == ARCHIVED:
        return replace(engagement, archived=True)
    if event_type == UNARCHIVED:
        return replace(engagement, archived=False)
    return engagement


def _moved(state: NotificationState | None, event: LoggedEvent) -> NotificationState | None:
    return replace(state, sequence=event.sequence) if state is not None else None


def _unreadable(state: NotificationState | None, event: LoggedEvent) -> NotificationState | None:
    """An unreadable event still settles (its type says so); its fields count for nothing."""
    status = STATUS_AFTER.get(event.event_type)
    if status is Status.REQUESTED and state is None:
        return NotificationState(
            status=Status.REQUESTED,
            sequence=event.sequence,
            requested_at=event.created_at,
            due_at=event.created_at,
        )
    if status in (Status.SENT, Status.CANCELED):
        base = state or NotificationState(status=Status.REQUESTED, sequence=0)
        return _settled(base, event, status, attempts=base.attempts)
    return _moved(state, event)


def _settled(
    state: NotificationState, event: LoggedEvent, status: Status, *, attempts: int
) -> NotificationState:
    return replace(state, status=status, sequence=event.sequence, attempts=attempts, due_at=None)


def describe_validation_error(exc: ValidationError) -> str:
    """The first error of a payload that does not read: where and what."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "payload"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg']}{more}"


# --- decide -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Policy:
    """The settings the rules depend on (notifications.* in the settings)."""

    max_attempts: int
    max_ttl: timedelta
    backoff: Backoff  # with the random source it draws from
    wait: timedelta = timedelta(seconds=1)  # how long a WAIT puts the next pick-up off


@dataclass(frozen=True, kw_only=True)
class Due:
    """A worker picked the notification up, and found this."""

    user: NotifyUser | None  # the user as the users read model has it now (None: unknown)
    request_error: str | None = None  # the request could not be read: why
    # The users projection's checkpoint (a log position), read when the user is
    # unknown: past the request's source event, the user is unknown for good.
    users_checkpoint: int | None = None


@dataclass(frozen=True, kw_only=True)
class Delivered:
    """The channel accepted the message."""

    channel: str
    provider_message_id: str
    inapp: InAppContent | None = None  # the in-app channel's feed item, kept in notification.sent


@dataclass(frozen=True, kw_only=True)
class Failed:
    """The attempt failed; a transient failure may be retried, a permanent one never."""

    error: str  # already masked: it goes into the log
    permanent: bool = False
    retry_after: timedelta | None = None  # the provider's hint
    user: NotifyUser | None = None  # whom the message was for (a retry keeps this snapshot)


Happened = Due | Delivered | Failed


class Verdict(StrEnum):
    """What a decision amounts to."""

    SEND = "send"  # render for `Decision.user` and send, then decide again
    SENT = "sent"
    RETRY = "retry"
    CANCELED = "canceled"
    WAIT = "wait"  # not yet: no attempt made or counted, try again from `Decision.due_at`


@dataclass(frozen=True, kw_only=True)
class Decision:
    verdict: Verdict
    payloads: tuple[RetryRequested | Sent | Canceled, ...] = field(default=())
    user: NotifyUser | None = None  # SEND: the user to render for
    reason: CancelReason | None = None  # CANCELED
    due_at: datetime | None = None  # RETRY, WAIT
    why: str | None = None  # WAIT: what it waits for

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The notification events to append: (event type, JSON payload)."""
        return [(EVENT_TYPE_OF[type(p)], _payload(p)) for p in self.payloads]


def _payload(model: RetryRequested | Sent | Canceled) -> dict[str, Any]:
    # A sent event carries `inapp` only when there is one (other sends look as before).
    return model.payload() if isinstance(model, Sent) else model.model_dump(mode="json")


def decide(
    state: NotificationState, happened: Happened, *, now: datetime, policy: Policy
) -> Decision:
    """What happens next to an open notification, given what just happened to it."""
    if not state.status.is_open:
        raise IllegalEvent(
            f"notification is already {state.status}: nothing more is decided for it",
            rule="settled-once",
            event_type="",
            sequence=state.sequence,
            status=state.status,
        )
    if isinstance(happened, Due):
        return _picked_up(state, happened, now=now, policy=policy)
    if isinstance(happened, Delivered):
        sent = Sent(
            channel=happened.channel,
            provider_message_id=happened.provider_message_id,
            attempt=state.attempt,
            inapp=happened.inapp,
        )
        return Decision(verdict=Verdict.SENT, payloads=(sent,))
    return _failed(state, happened, now=now, policy=policy)


def _picked_up(state: NotificationState, due: Due, *, now: datetime, policy: Policy) -> Decision:
    if state.requested_at is not None and now > state.requested_at + policy.max_ttl:
        return _cancel(
            state, CancelReason.EXPIRED,
            f"not sent within max_ttl ({format_duration(policy.max_ttl)}) "
            f"of its request at {state.requested_at.isoformat()}",
        )  # fmt: skip
    if due.request_error is not None or state.request is None:
        error = due.request_error or "no readable request"
        return _cancel(
            state, CancelReason.INVALID_REQUEST, f"the request in the log cannot be read: {error}"
        )
    request = state.request
    if request.not_after is not None and now > request.not_after:
        return _cancel(
            state, CancelReason.EXPIRED,
            f"not sent by its not_after time {request.not_after.isoformat()}",
        )  # fmt: skip
    if request.source is not None and request.code is not None and request.code_expiry is not None:
        expires = request.source.created_at + request.code_expiry
        if now >= expires:
            valid = format_duration(request.code_expiry)
            return _cancel(
                state, CancelReason.CODE_EXPIRED,
                f"its code expired at {expires.isoformat()} ({valid} after "
                f"{request.source.event_type} at {request.source.created_at.isoformat()}); "
                "a message with it would be useless",
            )  # fmt: skip
    user_id = request.user_id
    if due.user is None and state.notify_user is None and request.source is None:
        # A direct request (POST /v1/notifications) has no source event to measure
        # the users model against: it waits for the user until max_ttl cancels it.
        return Decision(
            verdict=Verdict.WAIT,
            due_at=now + policy.wait,
            why=f"user {user_id} not in the users read model yet; a direct request "
            "waits for it until max_ttl",
        )
    if due.user is None and state.notify_user is None:
        assert request.source is not None
        source = request.source.position
        if due.users_checkpoint is None or due.users_checkpoint < source:
            # The users model has not read up to the request yet: the user may
            # be on the way. Not an attempt; the next pick-up asks again.
            seen = "nothing" if due.users_checkpoint is None else due.users_checkpoint
            return Decision(
                verdict=Verdict.WAIT,
                due_at=now + policy.wait,
                why=f"user {user_id} not in the users read model yet (it has read the log up "
                f"to position {seen}, the request's source event is at {source})",
            )
        return _cancel(
            state, CancelReason.USER_UNKNOWN,
            f"user {user_id} is not in the users read model, which has read the log up to "
            f"position {due.users_checkpoint}, past the request's source event at {source}",
        )  # fmt: skip
    if due.user is not None and due.user.state == "removed":
        return _cancel(state, CancelReason.USER_REMOVED, f"user {user_id} was removed")
    # The first attempt snapshots the user; retries render from that snapshot.
    return Decision(verdict=Verdict.SEND, user=state.notify_user or due.user)


def _failed(state: NotificationState, failed: Failed, *, now: datetime, policy: Policy) -> Decision:
    attempt = state.attempt
    user = state.notify_user or failed.user
    if failed.permanent or state.request is None or user is None:
        return _cancel(state, CancelReason.PERMANENT_ERROR, failed.error, attempted=True)
    if attempt >= policy.max_attempts:
        return _cancel(
            state,
            CancelReason.MAX_ATTEMPTS,
            f"attempt {attempt} of {policy.max_attempts} failed: {failed.error}",
            attempted=True,
        )
    backoff = policy.backoff.next(state.backoff)
    due = now + backoff
    if failed.retry_after is not None:
        due = max(due, now + failed.retry_after)
    retry = RetryRequested(
        request=state.request, notify_user=user, backoff=backoff, attempt=attempt,
        error=failed.error, due_at=due,
    )  # fmt: skip
    return Decision(verdict=Verdict.RETRY, payloads=(retry,), due_at=due)


def _cancel(
    state: NotificationState, reason: CancelReason, error: str, *, attempted: bool = False
) -> Decision:
    """Cancel; `attempted`: an attempt was made and failed, and counts."""
    assert attempted == (reason in CANCELED_AFTER_AN_ATTEMPT)
    made = state.attempt if attempted else state.attempts
    canceled = Canceled(reason=reason, error=error, attempt=made)
    return Decision(verdict=Verdict.CANCELED, payloads=(canceled,), reason=reason)
