"""The workers' query: filters, exclusion, limit, FOR UPDATE SKIP LOCKED."""

from __future__ import annotations

from datetime import timedelta

import psycopg
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


async def test_exclude_aggregates_that_have_any_of_the_types(log: EventStore) -> None:
    pending = await log.query(
        EventQuery(
            event_types=("notification.requested",),
            exclude_aggregates_with=("notification.sent", "notification.canceled"),
        )
    )
    assert [e.aggregate_id for e in pending] == ["n2", "n3", "n9"]


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


async def test_skip_locked_hands_each_row_to_one_transaction(
    log: EventStore, conninfo: str
) -> None:
    q = EventQuery(event_types=("notification.requested",), limit=2)
    async with (
        await psycopg.AsyncConnection.connect(conninfo) as first,
        await psycopg.AsyncConnection.connect(conninfo) as second,
    ):
        async with first.transaction():
            a = await log.query(q, conn=first, for_update_skip_locked=True)
            async with second.transaction():
                b = await log.query(q, conn=second, for_update_skip_locked=True)
        assert [e.aggregate_id for e in a] == ["n1", "n2"]
        assert [e.aggregate_id for e in b] == ["n3", "n9"]
        # Once the first transaction ended, its rows are free again.
        async with second.transaction():
            c = await log.query(q, conn=second, for_update_skip_locked=True)
        assert [e.aggregate_id for e in c] == ["n1", "n2"]


async def test_skip_locked_needs_the_callers_transaction(log: EventStore) -> None:
    with pytest.raises(ValueError, match="caller's transaction"):
        await log.query(EventQuery(), for_update_skip_locked=True)
