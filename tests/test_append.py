"""Appending: atomic batches, optimistic concurrency, typed conflicts."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.helpers import event
from tidings.eventstore import ConcurrencyError, EventQuery, EventStore, NewEvent
from tidings.eventstore.errors import InvalidEventData


async def count(store: EventStore) -> int:
    return len(await store.query(EventQuery()))


async def test_append_numbers_sequences_per_aggregate(store: EventStore) -> None:
    stored = await store.append(
        [
            event("u1", expected=0),
            event("u1", "user.human.email.changed", expected=1),
            event("u2", expected=0),
        ]
    )
    assert [s.sequence for s in stored] == [1, 2, 1]
    positions = [s.position for s in stored]
    assert positions == sorted(positions)
    assert len(set(positions)) == 3

    more = await store.append([event("u1", "user.human.phone.changed")])
    assert more[0].sequence == 3
    assert more[0].position > positions[-1]


async def test_payload_and_metadata_round_trip(store: EventStore) -> None:
    new = NewEvent(
        instance_id="inst-9",
        aggregate_type="session",
        aggregate_id="s-1",
        event_type="session.otp.sms.challenged",
        payload={"user_id": "u1", "nested": {"list": [1, 2, 3]}, "text": "grüße"},
        owner="org-1",
        creator="svc-login",
    )
    (stored,) = await store.append([new])
    (read,) = await store.query(EventQuery(instance_ids=("inst-9",)))
    assert read.payload == new.payload
    assert (read.owner, read.creator, read.sequence) == ("org-1", "svc-login", 1)
    assert read.position == stored.position
    assert read.created_at == stored.created_at


@pytest.mark.parametrize(
    "bad",
    [
        {"payload": {"ratio": float("nan")}},
        {"payload": {"limit": float("inf")}},
        {"payload": {"text": "a\x00b"}},
        {"aggregate_id": "u\x00"},
    ],
    ids=["NaN", "infinity", "NUL in the payload", "NUL in an id"],
)
async def test_data_the_database_cannot_store_is_refused_and_writes_nothing(
    store: EventStore, bad: dict[str, object]
) -> None:
    """Refused as InvalidEventData with the batch around it; never stored altered (NaN as null)."""
    good = event("u1", expected=0)
    wrong = NewEvent.model_validate({**event("u2").model_dump(), **bad})
    with pytest.raises(InvalidEventData, match="refused the data"):
        await store.append([good, wrong])
    assert await count(store) == 0
    await store.append([good])
    assert await count(store) == 1


async def test_conflict_is_typed_and_writes_nothing(store: EventStore) -> None:
    await store.append([event("u1", expected=0), event("u1", "user.username.changed")])
    before = await count(store)

    with pytest.raises(ConcurrencyError) as caught:
        await store.append(
            [
                event("u2", expected=0),  # fine on its own
                event("u1", "user.removed", expected=1),  # stale: u1 is at 2
            ]
        )
    error = caught.value
    assert (error.instance_id, error.aggregate_type, error.aggregate_id) == ("inst-1", "user", "u1")
    assert (error.expected_sequence, error.actual_sequence) == (1, 2)
    assert error.index == 1
    assert "expected sequence 1" in str(error)
    assert "at 2" in str(error)
    assert await count(store) == before, "the batch must be all or nothing"


async def test_append_unread_writes_the_batch_or_nothing_as_append_does(store: EventStore) -> None:
    await store.append_unread([event("u1", expected=0), event("u1", "user.username.changed")])
    stored = await store.query(EventQuery())
    assert [(e.aggregate_id, e.sequence) for e in stored] == [("u1", 1), ("u1", 2)]

    with pytest.raises(ConcurrencyError) as caught:
        await store.append_unread(
            [event("u2", expected=0), event("u1", "user.removed", expected=1)]
        )
    assert caught.value.index == 1
    assert (caught.value.expected_sequence, caught.value.actual_sequence) == (1, 2)
    assert await count(store) == 2, "the batch must be all or nothing"
    await store.append_unread([])
    assert await count(store) == 2


async def test_expected_sequence_ahead_of_the_aggregate_is_a_conflict(store: EventStore) -> None:
    await store.append([event("u1", expected=0)])
    with pytest.raises(ConcurrencyError) as caught:
        await store.append([event("u1", "user.removed", expected=5)])
    assert caught.value.actual_sequence == 1
    assert (
        await store.aggregate_sequence(
            instance_id="inst-1", aggregate_type="user", aggregate_id="u1"
        )
        == 1
    )


async def test_same_aggregate_id_in_other_instance_is_another_aggregate(
    store: EventStore,
) -> None:
    a = await store.append([event("u1", expected=0, instance_id="a")])
    b = await store.append([event("u1", expected=0, instance_id="b")])
    assert a[0].sequence == b[0].sequence == 1


async def test_eight_concurrent_appenders_one_wins_each_sequence(store: EventStore) -> None:
    """8 writers race on one aggregate; every sequence has exactly one winner."""
    winners: dict[int, list[int]] = {}
    conflicts = 0
    rounds = 6

    async def writer(number: int) -> None:
        nonlocal conflicts
        for _ in range(rounds):
            seen = await store.aggregate_sequence(
                instance_id="inst-1", aggregate_type="user", aggregate_id="race"
            )
            try:
                (stored,) = await store.append(
                    [event("race", "user.profile.changed", expected=seen, payload={"w": number})]
                )
            except ConcurrencyError as exc:
                assert exc.aggregate_id == "race"
                conflicts += 1
            else:
                winners.setdefault(stored.sequence, []).append(number)

    await asyncio.gather(*(writer(n) for n in range(8)))

    events = await store.query(EventQuery(aggregate_ids=("race",)))
    sequences = [e.sequence for e in events]
    assert sequences == list(range(1, len(events) + 1)), "no gaps, no duplicates"
    assert all(len(w) == 1 for w in winners.values()), winners
    assert sorted(winners) == sequences
    assert [e.payload["w"] for e in events] == [winners[s][0] for s in sequences]
    assert conflicts > 0, "8 writers on one aggregate must have collided"
    assert len(events) + conflicts == 8 * rounds


async def test_unexpected_appends_from_many_writers_never_collide(store: EventStore) -> None:
    """expected_sequence None: append after whatever is last, serialised per aggregate."""
    await asyncio.gather(
        *(
            store.append([event("busy", "user.profile.changed", payload={"n": n})])
            for n in range(40)
        )
    )
    events = await store.query(EventQuery(aggregate_ids=("busy",)))
    assert [e.sequence for e in events] == list(range(1, 41))
    assert sorted(e.payload["n"] for e in events) == list(range(40))


async def test_append_inside_a_callers_transaction_rolls_back_with_it(
    store: EventStore, conninfo: str
) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        async with conn.transaction(force_rollback=True):
            await store.append([event("u1", expected=0)], conn=conn)
            await store.append([event("u1", "user.removed", expected=1)], conn=conn)
            assert len(await store.query(EventQuery(), conn=conn)) == 2
    assert await count(store) == 0


async def test_two_appends_in_one_transaction_keep_distinct_positions(
    store: EventStore, conninfo: str
) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn, conn.transaction():
        first = await store.append([event("u1"), event("u2")], conn=conn)
        second = await store.append([event("u3"), event("u1", "user.removed")], conn=conn)
    positions = [s.position for s in first + second]
    assert positions == sorted(positions)
    assert len({p >> 16 for p in positions}) == 1, "one transaction, one transaction id"


async def test_write_before_a_newer_event_is_refused_not_reordered(
    store: EventStore, conninfo: str
) -> None:
    """A transaction that wrote before another's append committed may not append after it."""
    async with await psycopg.AsyncConnection.connect(conninfo) as early:
        async with early.transaction(force_rollback=True):
            await store.append([event("other")], conn=early)  # takes its transaction id now
            await store.append([event("u1", expected=0)])  # a later transaction commits first
            with pytest.raises(ConcurrencyError) as caught:
                await store.append([event("u1", "user.removed", expected=1)], conn=early)
            assert "retry in a new transaction" in str(caught.value)
