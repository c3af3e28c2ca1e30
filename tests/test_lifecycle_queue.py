"""The SQL copy of the lifecycle cannot drift: the pending queue's trigger and the audit
against evolve, over random event sequences (legal and illegal) appended through the
real store.

For every generated notification: when evolve accepts its whole log, the row the
trigger left in tidings.pending_notifications is the one evolve's state asks for
(present or not, kind, sequence, attempts, due time, backoff, request, snapshot)
and `audit verify` reports nothing about it; when evolve refuses an event, the
audit reports the notification.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from tests.unit.lifecycle_helpers import request, user
from tidings.audit.verify import LogAuditor
from tidings.config import DatabaseSettings, NotificationSettings
from tidings.eventstore import EventQuery, NewEvent, open_database
from tidings.notification.events import (
    CANCELED,
    RETRY_REQUESTED,
    SENT,
    Canceled,
    CancelReason,
    RetryRequested,
    Sent,
    SourceSent,
)
from tidings.notification.lifecycle import IllegalEvent, NotificationState, evolve
from tidings.notification.requests import (
    NOTIFICATION_AGGREGATE,
    REQUESTED,
    NotificationRequested,
    NotifyUser,
    Request,
    SourceRef,
)
from tidings.notification.wire import parse_duration

PER_EXAMPLE = 50  # notifications per generated batch
EXAMPLES = 12  # batches: 600 sequences in all
BASE = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Step:
    """One event to append: its kind, how far its attempt number is off, a number."""

    kind: str  # requested, retry, sent, canceled:<reason>, unknown, unreadable
    attempt_off: int  # 0: the attempt the lifecycle expects
    number: int  # backoff (ms) and due offset (s)


kinds = st.sampled_from(
    ["retry"] * 6 + ["sent"] * 3 + [f"canceled:{r.value}" for r in CancelReason]
    + ["requested", "unknown", "unreadable"]
)  # fmt: skip
steps = st.builds(
    Step,
    kind=kinds,
    attempt_off=st.sampled_from([0] * 12 + [-1, 1, 2]),
    number=st.integers(1, 90_000),
)
lives = st.tuples(
    st.sampled_from(["requested"] * 12 + ["retry", "sent"]),  # what comes first
    st.lists(steps, max_size=6),
)


def _source(notification: str) -> SourceRef:
    return SourceRef(
        aggregate_type="user",
        aggregate_id=f"user-{notification}",
        sequence=1,
        event_type="user.human.password.code.added",
        position=1,
        created_at=BASE,
    )


def _request(notification: str) -> Request:
    return request(user_id=f"user-{notification}", source=_source(notification))


def _events(notification: str, first: str, rest: list[Step]) -> list[NewEvent]:
    """The notification's events, with the attempt numbers a worker would write (or not)."""
    out: list[NewEvent] = [_source_event(notification, "user.human.password.code.added", {})]
    failed = 0
    snapshot = user(f"user-{notification}")
    for index, step in enumerate([Step(first, 0, 1), *rest]):
        attempt = failed + 1 + step.attempt_off
        kind, _, reason = step.kind.partition(":")
        if kind == "requested":
            payload: Any = NotificationRequested(request=_request(notification))
        elif kind == "retry":
            payload = RetryRequested(
                request=_request(notification), notify_user=snapshot,
                backoff=timedelta(milliseconds=step.number), attempt=max(attempt, 1),
                error=f"busy {index}", due_at=BASE + timedelta(seconds=step.number),
            )  # fmt: skip
            failed = max(attempt, 1)
        elif kind == "sent":
            payload = Sent(channel="webhook", provider_message_id="p", attempt=max(attempt, 1))
            out.append(_source_sent(notification))
        elif kind == "canceled":
            tried = reason in ("permanent_error", "max_attempts")
            made = max((failed + 1 if tried else failed) + step.attempt_off, 0)
            payload = Canceled(reason=CancelReason(reason), error="no", attempt=made)
        elif kind == "unknown":
            out.append(_notification(notification, "notification.escalated", {}))
            continue
        else:  # unreadable: a sent without its channel
            out.append(_notification(notification, SENT, {"attempt": attempt}))
            continue
        event_type = {"requested": REQUESTED, "retry": RETRY_REQUESTED, "sent": SENT,
                      "canceled": CANCELED}[kind]  # fmt: skip
        out.append(_notification(notification, event_type, payload.model_dump(mode="json")))
    return out


def _notification(notification: str, event_type: str, payload: dict[str, Any]) -> NewEvent:
    return NewEvent(
        instance_id="acme",
        aggregate_type=NOTIFICATION_AGGREGATE,
        aggregate_id=notification,
        event_type=event_type,
        payload=payload,
    )


def _source_event(notification: str, event_type: str, payload: dict[str, Any]) -> NewEvent:
    return NewEvent(
        instance_id="acme",
        aggregate_type="user",
        aggregate_id=f"user-{notification}",
        event_type=event_type,
        payload=payload,
    )


def _source_sent(notification: str) -> NewEvent:
    sent = SourceSent(notification_id=notification, message_type="PasswordReset", channel="x")
    return _source_event(notification, "user.human.password.code.sent", sent.model_dump())


def _folded(events: list[Any]) -> NotificationState | None:
    """evolve over the stored events; None when it refuses one."""
    state: NotificationState | None = None
    try:
        for event in events:
            state = evolve(state, event)
    except IllegalEvent:
        return None
    return state


def _expected_row(state: NotificationState) -> dict[str, Any] | None:
    row = state.queue_row()
    if row is None:
        return None
    return {
        **row,
        "request": state.request,
        "notify_user": state.notify_user,
        "last_error": state.last_error,
    }


def _live_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "kind": row["kind"],
        "sequence": row["sequence"],
        "attempts": row["attempts"],
        "requested_at": row["requested_at"],
        "due_at": row["due_at"],
        "backoff": parse_duration(row["backoff"]) if row["backoff"] else None,
        "request": Request.model_validate(row["request"]),
        "notify_user": NotifyUser.model_validate(row["notify_user"])
        if row["notify_user"]
        else None,
        "last_error": row["last_error"],
    }


def _interleaved(lives: list[list[NewEvent]]) -> list[NewEvent]:
    """The lives' events taken in turn, each life's in its order: appends that mix them."""
    out: list[NewEvent] = []
    for round_ in range(max(len(life) for life in lives)):
        out.extend(life[round_] for life in lives if round_ < len(life))
    return out


async def _check(
    conninfo: str, batch: list[tuple[str, list[Step]]], *, chunk: int | None = None
) -> tuple[int, int]:
    """Append the batch's lives, check the queue and the audit against evolve.

    chunk None: one append per event, as separate writers would (each its own
    transaction). Otherwise the lives' events interleaved and appended `chunk`
    at a time: one statement then holds several notifications, some with one
    queue event, some with several (the trigger folds those in log order).
    """
    tag = uuid.uuid4().hex[:8]
    ids = [f"n-{tag}-{i}" for i in range(len(batch))]
    async with open_database(DatabaseSettings(url=conninfo, pool_max_size=2)) as db:
        lives = [
            _events(notification, first, rest)
            for notification, (first, rest) in zip(ids, batch, strict=True)
        ]
        if chunk is None:
            for life in lives:
                for new in life:
                    await db.store.append([new])
        else:
            stream = _interleaved(lives)
            for start in range(0, len(stream), chunk):
                await db.store.append(stream[start : start + chunk])
        stored = await db.store.query(
            EventQuery(aggregate_types=(NOTIFICATION_AGGREGATE,), aggregate_ids=tuple(ids))
        )
        by_id: dict[str, list[Any]] = {i: [] for i in ids}
        for event in stored:
            by_id[event.aggregate_id].append(event)
        async with (
            await psycopg.AsyncConnection.connect(conninfo) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                "SELECT * FROM tidings.pending_notifications WHERE notification_id = ANY(%s)",
                (ids,),
            )
            live = {row["notification_id"]: row for row in await cur.fetchall()}
        report = await LogAuditor(
            db=db, settings=NotificationSettings(max_attempts=100), max_violations=100_000
        ).verify()
    flagged = {v.aggregate_id for v in report.violations if v.aggregate_type == "notification"}
    flagged |= {
        v.aggregate_id.removeprefix("user-")
        for v in report.violations
        if v.aggregate_type == "user"
    }
    legal = 0
    for notification in ids:
        state = _folded(by_id[notification])
        if state is None:
            assert notification in flagged, f"{notification}: evolve refuses, the audit passes"
            continue
        legal += 1
        assert notification not in flagged, (
            f"{notification}: evolve accepts, the audit reports "
            f"{[v for v in report.violations if notification in v.aggregate_id]}"
        )
        assert _live_row(live.get(notification)) == _expected_row(state), notification
    return legal, len(ids) - legal


@pytest.mark.parametrize(
    "chunk", [None, 7, 100_000], ids=["one event per append", "7 per append", "one append"]
)
def test_trigger_and_audit_agree_with_evolve(conninfo: str, chunk: int | None) -> None:
    totals = {"legal": 0, "illegal": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
        # A batch is 50 lives in one database round: shrinking it would take
        # minutes, and the failing notification is named in the message anyway.
        phases=[Phase.explicit, Phase.generate],
    )
    @given(batch=st.lists(lives, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def check(batch: list[tuple[str, list[Step]]]) -> None:
        legal, illegal = asyncio.run(_check(conninfo, batch, chunk=chunk))
        totals["legal"] += legal
        totals["illegal"] += illegal

    check()
    # Both halves of the property were exercised, many times over.
    assert totals["legal"] >= 100 and totals["illegal"] >= 100, totals
    assert sum(totals.values()) >= 500, totals
