"""The walk: the rules that one aggregate's own events must satisfy.

Events arrive in key order (instance, aggregate type, aggregate id,
sequence), so an aggregate's events come together and in sequence order;
the walk keeps the state of one aggregate at a time, whatever the size of
the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tidings.audit.report import Violation, ViolationLog
from tidings.notification.events import CANCELED, RETRY_REQUESTED, SENT
from tidings.notification.lifecycle import IllegalEvent, NotificationState, step
from tidings.notification.requests import NOTIFICATION_AGGREGATE, REQUESTED


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
    created_at: datetime

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> LogEvent:
        return cls(*row)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.instance_id, self.aggregate_type, self.aggregate_id)


@dataclass
class WalkCounts:
    events: int = 0
    aggregates: int = 0
    notifications: int = 0
    requests: int = 0
    sent: int = 0


class AggregateWalk:
    """Checks each aggregate as its events go by: sequences, and a notification's life.

    sequence-gap for every aggregate; a notification's events are folded with
    the lifecycle (tidings.notification.lifecycle.step), and every rule an
    event breaks is reported (starts-with-requested, settled-once, attempts,
    marks, unreadable-payload, unknown-event-type); the walk goes on from the state a
    reader continuing past it sees. attempts also compares the attempts made
    with notifications.max_attempts: a setting, not a rule of the log. Every
    check is done as the event goes by, so nothing is left to check after the
    last one.
    """

    def __init__(self, *, max_attempts: int, violations: ViolationLog) -> None:
        self._max_attempts = max_attempts
        self._violations = violations
        self.counts = WalkCounts()
        self._key: tuple[str, str, str] | None = None
        self._next_sequence = 1
        self._is_notification = False
        self._state: NotificationState | None = None
        self._over_max_reported = False

    def feed(self, event: LogEvent) -> None:
        if event.key != self._key:
            self._start(event)
        self.counts.events += 1
        self._check_sequence(event)
        self._next_sequence = event.sequence + 1
        if self._is_notification:
            self._check_notification(event)

    def _start(self, event: LogEvent) -> None:
        self._key = event.key
        self._next_sequence = 1
        self.counts.aggregates += 1
        self._is_notification = event.aggregate_type == NOTIFICATION_AGGREGATE
        self._state = None
        self._over_max_reported = False
        if self._is_notification:
            self.counts.notifications += 1

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

    def _check_notification(self, event: LogEvent) -> None:
        if event.event_type == REQUESTED:
            self.counts.requests += 1
        elif event.event_type == SENT:
            self.counts.sent += 1
        before = self._state
        after, refusals = step(before, event)
        self._state = after
        for refusal in refusals:
            self._refused(refusal, event)
        settled_before = before is not None and not before.status.is_open
        counted = event.event_type in (RETRY_REQUESTED, SENT, CANCELED)
        if after is None or settled_before or not counted:
            return
        if after.attempts > self._max_attempts and not self._over_max_reported:
            self._over_max_reported = True
            self._report(
                "attempts",
                event,
                f"attempt {after.attempts} is over notifications.max_attempts "
                f"({self._max_attempts})",
            )

    def _refused(self, refusal: IllegalEvent, event: LogEvent) -> None:
        self._report(refusal.rule, event, refusal.message)

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
