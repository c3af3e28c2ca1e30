"""The walk: the rules that one aggregate's own events must satisfy.

Events arrive in key order (instance, aggregate type, aggregate id,
sequence), so an aggregate's events come together and in sequence order;
the walk keeps the state of one aggregate at a time, whatever the size of
the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from tidings.audit.report import Violation, ViolationLog
from tidings.feeds.engagement import MARKS, Engagement, Mark, evolve, may_mark
from tidings.feeds.errors import MarkRefused
from tidings.notification.events import (
    CANCELED,
    PAYLOADS,
    RETRY_REQUESTED,
    SENT,
    SETTLED,
    Canceled,
    RetryRequested,
    Sent,
)
from tidings.notification.requests import NOTIFICATION_AGGREGATE, REQUESTED

# How the workers number attempts (tidings.workers.attempt): attempt k is the
# one after k - 1 failed ones; retry.requested and sent carry the attempt that
# was made. canceled carries the number of attempts made: the failed attempt
# included when an attempt was made and failed (permanent error, the last
# allowed attempt), not when the worker canceled before sending.
_CANCELED_AFTER_AN_ATTEMPT = frozenset({"permanent_error", "max_attempts"})


@dataclass(frozen=True)
class LogEvent:
    """What the walk reads of an event (the payload only on notifications)."""

    instance_id: str
    aggregate_type: str
    aggregate_id: str
    sequence: int
    event_type: str
    payload: dict[str, Any] | None
    position: int

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> LogEvent:
        return cls(*row)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.instance_id, self.aggregate_type, self.aggregate_id)


@dataclass
class _Notification:
    """What the walk remembers of the notification it is in."""

    settled_by: LogEvent | None = None
    failed_attempts: int = 0  # the last retry.requested's attempt
    over_max_reported: bool = False
    sent_via: str | None = None  # the channel of its notification.sent
    inapp_user: str | None = None  # whose feed item it is, when sent in-app
    engagement: Engagement = field(default_factory=Engagement)


@dataclass
class WalkCounts:
    events: int = 0
    aggregates: int = 0
    notifications: int = 0
    requests: int = 0
    sent: int = 0


class AggregateWalk:
    """Checks each aggregate as its events go by: sequences, and a notification's life.

    sequence-gap for every aggregate; for notifications also
    starts-with-requested, settled-once, attempts, marks, unreadable-payload
    and unknown-event-type. Every check is done as the event goes by, so nothing is
    left to check after the last one.
    """

    def __init__(self, *, max_attempts: int, violations: ViolationLog) -> None:
        self._max_attempts = max_attempts
        self._violations = violations
        self.counts = WalkCounts()
        self._key: tuple[str, str, str] | None = None
        self._next_sequence = 1
        self._notification: _Notification | None = None

    def feed(self, event: LogEvent) -> None:
        first = event.key != self._key
        if first:
            self._start(event)
        self.counts.events += 1
        self._check_sequence(event)
        self._next_sequence = event.sequence + 1
        if self._notification is not None:
            self._check_notification(self._notification, event, first=first)

    def _start(self, event: LogEvent) -> None:
        self._key = event.key
        self._next_sequence = 1
        self.counts.aggregates += 1
        is_notification = event.aggregate_type == NOTIFICATION_AGGREGATE
        self._notification = _Notification() if is_notification else None
        if is_notification:
            self.counts.notifications += 1
            if event.sequence != 1 or event.event_type != REQUESTED:
                self._report(
                    "starts-with-requested",
                    event,
                    f"the first event is {event.event_type} at sequence {event.sequence}; a "
                    f"notification starts with {REQUESTED} at sequence 1",
                )

    def _check_sequence(self, event: LogEvent) -> None:
        expected = self._next_sequence
        if event.sequence == expected:
            return
        missing = (
            str(expected) if event.sequence == expected + 1 else f"{expected}..{event.sequence - 1}"
        )
        where = "starts at" if expected == 1 else f"goes from {expected - 1} to"
        self._report(
            "sequence-gap",
            event,
            f"the aggregate {where} sequence {event.sequence}: sequence {missing} missing",
        )

    def _check_notification(self, state: _Notification, event: LogEvent, *, first: bool) -> None:
        if event.event_type == REQUESTED:
            self.counts.requests += 1
            if not first and state.settled_by is None:
                self._report(
                    "starts-with-requested",
                    event,
                    f"{REQUESTED} again at sequence {event.sequence}; only sequence 1 requests",
                )
        elif event.event_type == SENT:
            self.counts.sent += 1
        elif event.event_type in MARKS:
            self._check_mark(state, event)
            return
        settled = state.settled_by
        if settled is not None:
            again = "settled again by" if event.event_type in SETTLED else "followed by"
            self._report(
                "settled-once",
                event,
                f"{settled.event_type} at sequence {settled.sequence} is {again} "
                f"{event.event_type} at sequence {event.sequence}; nothing may follow it",
            )
            return  # its attempts no longer mean anything
        payload = self._parse(event)
        if event.event_type in SETTLED:
            state.settled_by = event
        if payload is not None:
            self._check_attempts(state, event, payload)
            if isinstance(payload, Sent):
                state.sent_via = payload.channel
                state.inapp_user = payload.inapp.user_id if payload.inapp else None

    def _check_mark(self, state: _Notification, event: LogEvent) -> None:
        """A mark follows an in-app send, names the item's user, and changes the item."""
        try:
            mark = Mark.model_validate(event.payload)
        except ValidationError as exc:
            self._report(
                "unreadable-payload",
                event,
                f"{event.event_type} does not read as Mark: {exc.errors()[0]['msg']}",
            )
            return
        settled = state.settled_by.event_type if state.settled_by else None
        try:
            may_mark(
                settled_by=settled, channel=state.sent_via, in_app=state.inapp_user is not None
            )
        except MarkRefused as exc:
            self._report("marks", event, f"{event.event_type} at sequence {event.sequence}: {exc}")
            return
        if mark.user_id != state.inapp_user:
            self._report(
                "marks",
                event,
                f"{event.event_type} is for user {mark.user_id}, the item is user "
                f"{state.inapp_user}'s",
            )
        after = evolve(state.engagement, event.event_type)
        if after == state.engagement:
            self._report(
                "marks",
                event,
                f"{event.event_type} at sequence {event.sequence} changes nothing "
                "(a mark is appended once: reading twice appends one read)",
            )
        state.engagement = after

    def _parse(self, event: LogEvent) -> BaseModel | None:
        model = PAYLOADS.get(event.event_type)
        if model is None:
            self._report(
                "unknown-event-type",
                event,
                f"{event.event_type} is not a notification event ({', '.join(PAYLOADS)})",
            )
            return None
        try:
            return model.model_validate(event.payload)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "payload"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            self._report(
                "unreadable-payload",
                event,
                f"{event.event_type} does not read as {model.__name__}: "
                f"{where}: {error['msg']}{more}",
            )
            return None

    def _check_attempts(self, state: _Notification, event: LogEvent, payload: BaseModel) -> None:
        failed = state.failed_attempts
        if isinstance(payload, RetryRequested | Sent):
            made = payload.attempt
            if made != failed + 1:
                what = "retry.requested for" if event.event_type == RETRY_REQUESTED else "sent on"
                self._report(
                    "attempts",
                    event,
                    f"{what} attempt {made} after {failed} failed, expected attempt "
                    f"{failed + 1} (attempts are numbered 1, 2, 3, ...)",
                )
            if isinstance(payload, RetryRequested):
                state.failed_attempts = made
        elif isinstance(payload, Canceled):
            made = payload.attempt
            tried = payload.reason in _CANCELED_AFTER_AN_ATTEMPT
            expected = failed + 1 if tried else failed
            if made != expected:
                self._report(
                    "attempts",
                    event,
                    f"{CANCELED} ({payload.reason}) counts {made} attempts after {failed} "
                    f"failed, expected {expected}",
                )
        else:
            return
        if made > self._max_attempts and not state.over_max_reported:
            state.over_max_reported = True
            self._report(
                "attempts",
                event,
                f"attempt {made} is over notifications.max_attempts ({self._max_attempts})",
            )

    def _report(self, rule: str, event: LogEvent, detail: str) -> None:
        self._violations.add(
            Violation(
                rule=rule,
                instance_id=event.instance_id,
                aggregate_type=event.aggregate_type,
                aggregate_id=event.aggregate_id,
                sequence=event.sequence,
                position=event.position,
                detail=detail,
            )
        )
