"""The pending queue: inline projection, claims, leases, fairness, the plan."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.worker_helpers import requested
from tidings.eventstore import Database, NewEvent
from tidings.workers import PendingQueue
from tidings.workers.queue import claim_statement

LEASE = timedelta(minutes=1)


def now() -> datetime:
    return datetime.now(UTC)


async def claim(queue: PendingQueue, limit: int = 10, **kwargs: Any) -> list[str]:
    args: dict[str, Any] = {"kind": "request", "limit": limit, "now": now(), "lease": LEASE,
                            "owner": "test"}  # fmt: skip
    args.update(kwargs)
    return [c.notification_id for c in await queue.claim(**args)]


def event(
    nid: str, event_type: str, payload: dict[str, Any], seq: int, inst: str = "acme"
) -> NewEvent:
    return NewEvent(
        instance_id=inst, aggregate_type="notification", aggregate_id=nid,
        event_type=event_type, payload=payload, expected_sequence=seq,
    )  # fmt: skip


async def test_the_queue_follows_the_log_and_equals_a_rebuild(db: Database) -> None:
    queue = PendingQueue(pool=db.pool)
    await db.store.append([requested(f"n-{i}") for i in range(4)])
    assert len(await queue.snapshot()) == 4
    retry_payload = {"error": "503", "attempt": 1, "backoff": "1s500ms",
                     "due_at": "2030-01-01T00:00:00+00:00", "notify_user": {"x": 1}}  # fmt: skip
    await db.store.append(
        [
            event("n-0", "notification.sent", {"attempt": 1}, 1),
            event("n-1", "notification.canceled", {"reason": "expired"}, 1),
            event("n-2", "notification.retry.requested", retry_payload, 1),
        ]
    )
    live = await queue.snapshot()
    assert [(r["notification_id"], r["kind"], r["attempts"]) for r in live] == [
        ("n-2", "retry", 1),
        ("n-3", "request", 0),
    ]
    retry_row = live[0]
    assert retry_row["due_at"] == datetime(2030, 1, 1, tzinfo=UTC)
    assert (retry_row["backoff"], retry_row["last_error"]) == ("1s500ms", "503")
    assert retry_row["request"] is not None, "the retry keeps the original request"

    await claim(queue)  # leases are not part of the comparison
    assert await queue.rebuild() == 2
    assert await queue.snapshot() == live


async def test_a_malformed_retry_due_time_does_not_block_the_append(db: Database) -> None:
    queue = PendingQueue(pool=db.pool)
    await db.store.append([requested("n-1")])
    await db.store.append([event("n-1", "notification.retry.requested", {"due_at": "soon"}, 1)])
    (row,) = await queue.snapshot()
    assert row["kind"] == "retry"


async def test_claims_respect_the_limit_the_lease_and_each_other(db: Database) -> None:
    queue = PendingQueue(pool=db.pool)
    await db.store.append([requested(f"n-{i:02}") for i in range(25)])
    first = await claim(queue, limit=10)
    assert len(first) == 10
    concurrent = await asyncio.gather(*(claim(queue, limit=4) for _ in range(5)))
    taken = [nid for batch in concurrent for nid in batch]
    assert len(taken) == 15 and len(set(taken)) == 15
    assert not set(taken) & set(first)
    assert await claim(queue) == [], "everything is leased"
    later = await claim(queue, limit=100, now=now() + LEASE + timedelta(seconds=1))
    assert sorted(later) == sorted(first + taken), "leases ran out: all claimable again"


async def test_skip_locked_passes_over_rows_another_claim_holds(
    db: Database, conninfo: str
) -> None:
    queue = PendingQueue(pool=db.pool)
    await db.store.append([requested(f"n-{i}") for i in range(3)])
    async with await psycopg.AsyncConnection.connect(conninfo) as other:
        await other.execute("BEGIN")
        await other.execute(
            "SELECT 1 FROM tidings.pending_notifications WHERE notification_id = 'n-0' FOR UPDATE"
        )
        assert sorted(await claim(queue)) == ["n-1", "n-2"]
        await other.rollback()
    assert await claim(queue) == ["n-0"]


async def test_a_big_backlog_delays_another_instance_by_one_bulk_at_most(
    db: Database, conninfo: str
) -> None:
    """100,000 pending in one instance; another instance's one notification comes first."""
    template = requested("x")
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        for chunk in range(2):  # at most 65,536 events per transaction
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO tidings.events (instance_id, aggregate_type, aggregate_id,"
                    " sequence, event_type, payload, position)"
                    " SELECT 'busy', 'notification', 'busy-' || g, 1, 'notification.requested',"
                    " %s, (pg_current_xact_id()::text::bigint << 16) + g - %s"
                    " FROM generate_series(%s, %s) g",
                    (psycopg.types.json.Jsonb(template.payload), chunk * 50_000 + 1,
                     chunk * 50_000 + 1, (chunk + 1) * 50_000),
                )  # fmt: skip
    await db.store.append([requested("lonely", instance_id="quiet")])
    queue = PendingQueue(pool=db.pool)
    first = await claim(queue, limit=10)
    assert "lonely" in first
    assert len(first) == 10


async def test_round_robin_between_instances(db: Database) -> None:
    queue = PendingQueue(pool=db.pool)
    await db.store.append([requested(f"a-{i}", instance_id="a") for i in range(6)])
    await db.store.append([requested(f"b-{i}", instance_id="b") for i in range(2)])
    await db.store.append([requested("c-0", instance_id="c")])
    got = await claim(queue, limit=6)
    assert sorted(got) == ["a-0", "a-1", "a-2", "b-0", "b-1", "c-0"]


def round_robin(free: dict[str, list[tuple[datetime, str]]], bulk: int) -> set[str]:
    """The claim's rule, in Python: each instance's free rows in due order are its turns;
    the bulk takes turn 1 of every instance, then turn 2, ..., earliest due first."""
    turns = [
        (turn, due, nid)
        for rows in free.values()
        for turn, (due, nid) in enumerate(sorted(rows), start=1)
    ]
    return {nid for _, _, nid in sorted(turns)[:bulk]}


async def test_a_claim_hands_out_what_the_full_round_robin_would(
    db: Database, conninfo: str
) -> None:
    """Random queues (uneven instances, leased rows here and there, bulks from 1 to 15):
    every claim is the round-robin over all free rows, whether the instances' first
    turns were enough or it had to read further."""
    rng = random.Random(15)
    queue = PendingQueue(pool=db.pool)
    base = now() - timedelta(hours=1)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        for scenario in range(30):
            await conn.execute("DELETE FROM tidings.pending_notifications")  # test setup only
            counts = {
                f"i-{k}": rng.choice([0, 1, 2, 3, 5, 8, 13]) for k in range(rng.randint(1, 6))
            }
            ids = [
                (inst, f"s{scenario}-{inst}-{n}") for inst, c in counts.items() for n in range(c)
            ]
            if not ids:
                continue
            await db.store.append([requested(nid, instance_id=inst) for inst, nid in ids])
            # Distinct due times in a random order, and a few rows leased by someone else.
            dues = {nid: base + timedelta(microseconds=rng.randrange(10**6)) for _, nid in ids}
            leased = {nid for _, nid in ids if rng.random() < 0.25}
            await conn.execute(
                "UPDATE tidings.pending_notifications p SET due_at = d.due,"
                " leased_until = CASE WHEN d.leased THEN now() + interval '1 hour' END"
                " FROM unnest(%s::text[], %s::timestamptz[], %s::bool[]) AS d(id, due, leased)"
                " WHERE p.notification_id = d.id",
                (list(dues), list(dues.values()), [nid in leased for nid in dues]),
            )
            free: dict[str, list[tuple[datetime, str]]] = {}
            for inst, nid in ids:
                if nid not in leased:
                    free.setdefault(inst, []).append((dues[nid], nid))
            bulk = rng.randint(1, 15)
            got = await claim(queue, limit=bulk)
            assert len(got) == len(set(got))
            assert set(got) == round_robin(free, bulk), (scenario, counts, bulk)


async def test_workers_hammering_one_queue_never_hold_the_same_notification(
    db: Database,
) -> None:
    """Six claimers at once, bulks of 7, over 400 requests in 4 uneven instances, until
    nothing is left: each notification is claimed exactly once, and all of them are."""
    sizes = {"a": 250, "b": 100, "c": 40, "d": 10}
    await db.store.append(
        [requested(f"{inst}-{n}", instance_id=inst) for inst, c in sizes.items() for n in range(c)]
    )
    queue = PendingQueue(pool=db.pool)
    claims: list[list[str]] = []

    async def claimer() -> None:
        while got := await claim(queue, limit=7):
            claims.append(got)

    await asyncio.gather(*(claimer() for _ in range(6)))
    taken = Counter(nid for got in claims for nid in got)
    assert [nid for nid, n in taken.items() if n > 1] == []
    assert sum(taken.values()) == sum(sizes.values())
    assert await claim(queue, limit=100) == []
    # Fair under contention too: the first claim took from every instance.
    first = claims[0]
    assert {nid.split("-")[0] for nid in first} >= {"a", "b", "c", "d"}


async def test_only_active_instances_get_work(db: Database, conninfo: str) -> None:
    """handle_active_instances: instances without events in the window wait."""
    queue = PendingQueue(pool=db.pool)
    await db.store.append([requested("old", instance_id="sleepy")])
    await db.store.append([requested("new", instance_id="busy")])
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        # Test setup only: age the sleepy instance's events by two hours.
        await conn.execute(
            "UPDATE tidings.events SET created_at = created_at - interval '2 hours'"
            " WHERE instance_id = 'sleepy'"
        )
    assert await claim(queue, active_since=now() - timedelta(hours=1)) == ["new"]
    assert await claim(queue, active_since=now() - timedelta(hours=3)) == ["old"]


def _scans_of(node: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    """Every node of a JSON plan that reads `relation`, depth first."""
    found = [node] if node.get("Relation Name") == relation else []
    for child in node.get("Plans", []):
        found.extend(_scans_of(child, relation))
    return found


def _rows_read(scan: dict[str, Any]) -> float:
    """Rows a scan node looked at over all its loops: returned plus filtered out."""
    per_loop = (
        scan["Actual Rows"]
        + scan.get("Rows Removed by Filter", 0)
        + scan.get("Rows Removed by Index Recheck", 0)
    )
    return float(per_loop * scan["Actual Loops"])


async def test_the_claim_reads_a_bounded_number_of_rows_of_a_large_queue(
    db: Database, conninfo: str
) -> None:
    """50,000 pending in 20 instances, half of each instance's earliest ones leased: a
    claim of 10 reads at most 2 x bulk rows per instance (EXPLAIN ANALYZE, JSON plan),
    through the claim index, never a sequential scan."""
    instances, per_instance, bulk = 20, 2_500, 10
    template = requested("x")
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO tidings.events (instance_id, aggregate_type, aggregate_id,"
                " sequence, event_type, payload, position, created_at)"
                " SELECT 'i-' || (g %% %s), 'notification', 'n-' || g, 1,"
                " 'notification.requested', %s, (pg_current_xact_id()::text::bigint << 16) + g,"
                " now() - interval '1 second' + g * interval '1 microsecond'"  # in due order
                " FROM generate_series(1, %s) g",
                (instances, psycopg.types.json.Jsonb(template.payload),
                 instances * per_instance),
            )  # fmt: skip
        # Leases on the earliest rows of every instance: the claim steps over them.
        async with conn.transaction():
            await conn.execute(
                "UPDATE tidings.pending_notifications p SET leased_until = %s, lease_owner = 'w'"
                " FROM (SELECT instance_id, notification_id, row_number() OVER"
                "       (PARTITION BY instance_id ORDER BY due_at) AS turn"
                "       FROM tidings.pending_notifications) r"
                " WHERE r.instance_id = p.instance_id AND r.notification_id = p.notification_id"
                "   AND r.turn <= %s",
                (now() + LEASE, bulk // 2),
            )
        await conn.execute("ANALYZE tidings.pending_notifications")
        # EXPLAIN ANALYZE runs the claim: rolled back.
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(
                b"EXPLAIN (ANALYZE, FORMAT JSON) " + claim_statement(bulk),
                {"kind": "request", "now": now(), "lease_until": now() + LEASE,
                 "owner": "x", "active_since": None},
            )  # fmt: skip
            row = await cur.fetchone()
            assert row is not None
            (explained,) = row
    plan = explained[0]["Plan"]
    scans = _scans_of(plan, "pending_notifications")
    assert scans, "the plan reads the queue"
    assert all("Seq Scan" not in s["Node Type"] for s in scans), [s["Node Type"] for s in scans]
    assert {s.get("Index Name") for s in scans if "Index" in s["Node Type"]} >= {
        "pending_notifications_claim"
    }
    read = sum(_rows_read(s) for s in scans)
    assert sum(s.get("Rows Removed by Filter", 0) for s in scans) > 0, "leased rows stepped over"
    assert read <= 2 * bulk * instances, f"{read:.0f} rows read for a claim of {bulk}"
    assert (plan["Node Type"], plan["Actual Rows"]) == ("ModifyTable", bulk), "a full bulk"


# The claim's parameters as the server sees them once psycopg has prepared it.
CLAIM_PARAMS = {"kind": "text", "now": "timestamptz", "lease_until": "timestamptz",
                "owner": "text", "active_since": "timestamptz"}  # fmt: skip


async def test_the_prepared_claims_generic_plan_never_reads_the_whole_queue(
    db: Database, conninfo: str
) -> None:
    """psycopg prepares the claim after its fifth run and the server soon keeps one
    generic plan for it. With the bulk bound as a parameter, that plan expected
    hundreds of chosen rows and read the whole queue into a hash to update ten of
    them; with the bulk written in, it walks the claim index."""
    await db.store.append([requested(f"n-{i}", instance_id=f"i-{i % 10}") for i in range(3_000)])
    names = list(CLAIM_PARAMS)
    text = claim_statement(10).decode()
    placeholders = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", text)
    args = ["request", now(), now() + LEASE, "x", None]
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        await conn.execute("ANALYZE tidings.pending_notifications")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(
            f"PREPARE claim ({', '.join(CLAIM_PARAMS.values())}) AS {placeholders.rstrip(';')}"
        )
        async with conn.transaction(force_rollback=True):
            cur = psycopg.AsyncClientCursor(conn)
            await cur.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim (%s, %s, %s, %s, %s)", args
            )
            row = await cur.fetchone()
            assert row is not None
            (explained,) = row
    plan = explained[0]["Plan"]
    scans = _scans_of(plan, "pending_notifications")
    assert all("Seq Scan" not in s["Node Type"] for s in scans), [s["Node Type"] for s in scans]
    assert sum(_rows_read(s) for s in scans) <= 200, "a claim of 10 reads a few rows"
    assert (plan["Node Type"], plan["Actual Rows"]) == ("ModifyTable", 10)


async def test_next_due_of_a_free_request_is_a_loadable_time_in_the_past(
    db: Database, conninfo: str
) -> None:
    """Regression: the idle path once answered '-infinity', which psycopg cannot load."""
    queue = PendingQueue(pool=db.pool)
    assert await queue.next_due(("request",)) is None
    await db.store.append([requested("n-1"), requested("n-2")])
    due = await queue.next_due(("request",))
    assert due is not None and due < now()
    async with await psycopg.AsyncConnection.connect(conninfo) as other:
        await other.execute("BEGIN")
        await other.execute("SELECT 1 FROM tidings.pending_notifications FOR UPDATE")
        assert await claim(queue) == [], "both rows are locked by another claim"
        assert await queue.next_due(("request",)) is not None
        await other.rollback()
    leased = await claim(queue)
    assert sorted(leased) == ["n-1", "n-2"]
    until = await queue.next_due(("request",))
    assert until is not None and until > now(), "leased: due when the lease runs out"
