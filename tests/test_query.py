"""The workers' query: filters, exclusion, limit, FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.helpers import event
from tidings.eventstore import EventQuery, EventStore


@pytest.fixture
async def log(store: EventStore) -> EventStore:
    await store.append(
        [
            event("n1", "notification.requested", aggregate_type="notification"),
            event("n1", "notification.sent", aggregate_type="notification"),
            event("n2", "notification.requested", aggregate_type="notification"),
            event("n3", "notification.requested", aggregate_type="notification"),
            event("n3", "notification.retry.requested", aggregate_type="notification"),
            event("u1", "user.human.added"),
            event("n9", "notification.requested", aggregate_type="notification", instance_id="b"),
            event("x1", "notification_requested", aggregate_type="odd"),
        ]
    )
    return store


def ids(events: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(e.aggregate_id, e.event_type) for e in events]


async def test_filters_by_instance_type_and_id(log: EventStore) -> None:
    got = await log.query(EventQuery(instance_ids=("inst-1",), aggregate_types=("notification",)))
    assert {e.aggregate_id for e in got} == {"n1", "n2", "n3"}
    got = await log.query(EventQuery(aggregate_ids=("n3",)))
    assert ids(got) == [("n3", "notification.requested"), ("n3", "notification.retry.requested")]
    got = await log.query(EventQuery(instance_ids=("b",)))
    assert ids(got) == [("n9", "notification.requested")]


async def test_event_type_wildcard_does_not_treat_underscore_as_a_wildcard(
    log: EventStore,
) -> None:
    got = await log.query(EventQuery(event_types=("notification.*",)))
    assert "x1" not in {e.aggregate_id for e in got}
    assert len(got) == 6
    got = await log.query(EventQuery(event_types=("notification.requested", "user.*")))
    assert [e.aggregate_id for e in got] == ["n1", "n2", "n3", "u1", "n9"]


async def test_position_and_time_filters_and_limit(log: EventStore) -> None:
    everything = await log.query(EventQuery())
    third = everything[2]
    after = await log.query(EventQuery(position_after=third.position))
    assert after == everything[3:]
    assert await log.query(EventQuery(limit=2)) == everything[:2]
    one_second = timedelta(seconds=1)
    assert await log.query(EventQuery(created_before=third.created_at - one_second)) == []
    assert await log.query(EventQuery(created_after=third.created_at - one_second)) == everything
    assert await log.query(EventQuery(created_after=third.created_at + one_second)) == []


async def test_naive_times_are_refused() -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="time zone"):
        EventQuery(created_after=datetime(2026, 1, 1))
