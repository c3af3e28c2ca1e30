"""The ordered reader never skips an event whose transaction commits late."""

from __future__ import annotations

import psycopg

from tests.helpers import event
from tidings.eventstore import EventStore


async def read_all(store: EventStore, after: int) -> tuple[list[str], int]:
    seen: list[str] = []
    while True:
        batch = await store.read_ordered(after=after, limit=2)
        seen.extend(e.aggregate_id for e in batch.events)
        if batch.resume_after == after:
            return seen, after
        after = batch.resume_after


async def test_two_writers_committing_out_of_order(store: EventStore, conninfo: str) -> None:
    await store.append([event("before")])
    seen, checkpoint = await read_all(store, 0)
    assert seen == ["before"]

    async with (
        await psycopg.AsyncConnection.connect(conninfo) as slow,
        await psycopg.AsyncConnection.connect(conninfo) as fast,
    ):
        await slow.execute("BEGIN")
        (early,) = await store.append([event("slow")], conn=slow)  # lower position
        await fast.execute("BEGIN")
        (late,) = await store.append([event("fast")], conn=fast)
        assert early.position < late.position
        await fast.commit()  # the higher position commits first

        # The reader must not pass the still-open lower position.
        seen, checkpoint = await read_all(store, checkpoint)
        assert seen == []
        assert checkpoint < early.position

        await slow.commit()

    seen, checkpoint = await read_all(store, checkpoint)
    assert seen == ["slow", "fast"], "both, in position order, none skipped"


async def test_rolled_back_writer_leaves_no_gap_behind(store: EventStore, conninfo: str) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        await conn.execute("BEGIN")
        await store.append([event("doomed")], conn=conn)
        await store.append([event("kept")])
        assert (await store.read_ordered(after=0)).events == ()
        await conn.rollback()
    batch = await store.read_ordered(after=0)
    assert [e.aggregate_id for e in batch.events] == ["kept"]


async def test_resume_from_a_position_and_filter_by_type(store: EventStore) -> None:
    for n in range(5):
        await store.append([event(f"u{n}"), event(f"u{n}", "user.removed")])
    first = await store.read_ordered(after=0, limit=3)
    assert [e.aggregate_id for e in first.events] == ["u0", "u0", "u1"]
    assert first.resume_after == first.events[-1].position
    rest = await store.read_ordered(after=first.resume_after, limit=100)
    assert [e.aggregate_id for e in rest.events] == ["u1", "u2", "u2", "u3", "u3", "u4", "u4"]

    removed = await store.read_ordered(after=0, limit=100, event_types=["user.removed"])
    assert [e.aggregate_id for e in removed.events] == [f"u{n}" for n in range(5)]
    # Everything below the horizon was seen, so the checkpoint may move past it.
    assert removed.resume_after >= removed.events[-1].position
    again = await store.read_ordered(after=removed.resume_after, event_types=["user.removed"])
    assert again.events == ()
