"""Group commit: requests joined into one transaction still fail or succeed alone."""

from __future__ import annotations

import asyncio

import pytest

from tests.projection_helpers import user_added
from tidings.api.grouping import GroupAppender
from tidings.eventstore import ConcurrencyError, EventQuery, EventStore, EventStoreError


async def test_joined_requests_fail_alone(store: EventStore) -> None:
    appender = GroupAppender(store=store)
    good = [user_added(f"user-{n}") for n in range(5)]
    unstorable = user_added("user-nul", username="a\x00b")  # PostgreSQL refuses it
    contested = [user_added("user-x").model_copy(update={"expected_sequence": 0}) for _ in range(3)]
    results = await asyncio.gather(
        *(appender.append([event]) for event in good),
        appender.append([good[0].model_copy(update={"aggregate_id": "user-y"}), unstorable]),
        *(appender.append([event]) for event in contested),
        return_exceptions=True,
    )
    assert all(isinstance(r, list) and len(r) == 1 for r in results[:5])
    assert isinstance(results[5], EventStoreError)
    outcomes = results[6:]
    assert sum(isinstance(r, list) for r in outcomes) == 1
    conflicts = [r for r in outcomes if isinstance(r, ConcurrencyError)]
    assert len(conflicts) == 2 and all(c.index == 0 for c in conflicts)
    stored = await store.query(EventQuery())
    assert sorted(e.aggregate_id for e in stored) == sorted(
        [f"user-{n}" for n in range(5)] + ["user-x"]
    ), "the request with the unstorable event left nothing, not even its good event"
    await appender.close()


async def test_an_idle_appender_commits_at_once(store: EventStore) -> None:
    appender = GroupAppender(store=store)
    (landed,) = await asyncio.wait_for(appender.append([user_added()]), timeout=10)
    assert landed.sequence == 1
    with pytest.raises(ConcurrencyError):
        await appender.append([user_added().model_copy(update={"expected_sequence": 0})])
