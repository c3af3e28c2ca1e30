"""Benchmark of the tidings event store on a realistic mix of events.

Measures, on N events (default 100,000), the wall time and events per second of:

1. append, one event per transaction (sequential `store.append([event])`; on
   N/10 events unless `--single-events M` says otherwise),
2. append in batches of 100 events per call (one transaction each), N events,
3. the ordered reader: `store.read_ordered(limit=1000)` following `resume_after`,
4. streaming: in process through `store.stream`, untraced for speed and again
   under tracemalloc for its peak; then the real CLI, `python -m tidings replay
   --format jsonl > /dev/null`, whose peak RSS (os.wait4's rusage) is shown for
   1 event and for all N, so constant replay memory shows as two close figures.
5. batches of 1,000 (min(N, 10,000) events each way, alternating): through
   `store.append` and through the in-database door `tidings.append_events(jsonb)`
   that a platform calls in its own transaction.

The reads cover exactly the N batch-appended events (every position after the
single-event phase). Machine details come first.

    .venv/bin/python bench/eventstore.py [--events N] [--single-events M]
    .venv/bin/python bench/eventstore.py --database-url postgresql://... [--reuse]

Without --database-url a throwaway embedded PostgreSQL (pgserver) is started in a
temporary folder and deleted afterwards. With --database-url the schema is
migrated and the events are APPENDED INTO THAT DATABASE (they stay there); it
refuses a database whose log already holds events unless --reuse is given.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import psycopg

from tidings.config import DatabaseSettings
from tidings.eventstore import EventQuery, EventStore, NewEvent, migrate, open_database

USERS = 10_000
BATCH = 100
READ_LIMIT = 1000
ADDED = "user.human.added"
LATER_TYPES = ("user.human.password.code.added", "user.human.email.code.added",
               "user.human.password.changed")  # fmt: skip
LATER_WEIGHTS = (5, 3, 2)


def payload_of(event_type: str, user: int, rng: random.Random) -> dict[str, Any]:
    """A ~200-byte payload like the ones of a user's events."""
    if event_type == ADDED:
        email = f"user{user}@example.com"
        names = {"firstName": "Ada", "lastName": "Lovelace", "preferredLanguage": "en"}
        return {"userName": email, "email": email, "phone": "+41791234567", **names}
    crypted = base64.b64encode(rng.randbytes(33)).decode()
    return {
        "code": {"cryptoType": 0, "algorithm": "aes", "keyID": "notification", "crypted": crypted},
        "expiry": "10m",
        "url_template": "https://example.com/reset?code={{.Code}}",
    }


def make_events(count: int, rng: random.Random, known: set[int]) -> list[NewEvent]:
    """Events on ~10,000 users of 10 instances; a user's first event adds the user."""
    events = []
    for _ in range(count):
        user = rng.randrange(USERS)
        if user in known:
            event_type = rng.choices(LATER_TYPES, LATER_WEIGHTS)[0]
        else:
            known.add(user)
            event_type = ADDED
        event = NewEvent(
            instance_id=f"inst-{user % 10}",
            aggregate_type="user",
            aggregate_id=f"user-{user}",
            event_type=event_type,
            payload=payload_of(event_type, user, rng),
        )
        events.append(event)
    return events


def machine_details() -> list[tuple[str, str]]:
    cpu = platform.processor() or "unknown"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        ("cpu", cpu),
        ("cores", f"{os.cpu_count()} logical, {usable} usable by this process"),
        ("memory", f"{mem / 2**30:.1f} GiB"),
        ("python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("platform", platform.platform()),
    ]


def row(label: str, events: int, seconds: float, note: str = "") -> None:
    rate = events / seconds if seconds else float("inf")
    print(f"  {label:<38} {events:>9,} {seconds:>9.2f} s {rate:>11,.0f} ev/s  {note}".rstrip())


# Runs the replay as its child and prints that child's wall time and peak RSS. Not
# spawned from the benchmark itself: on Linux a child's ru_maxrss starts at the RSS
# of the process that forked it, so the benchmark's ~200 MiB would hide the
# replay's own figure; this small interpreter's ~10 MiB does not.
TIMER = """
import os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_replay(conninfo: str, after: int, limit: int | None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of `python -m tidings replay` into /dev/null."""
    cmd = [sys.executable, "-m", "tidings", "--log-level", "warning", "replay", "--format",
           "jsonl", "--after-position", str(after)]  # fmt: skip
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "TIDINGS_DATABASE_URL": conninfo}
    out = subprocess.run([sys.executable, "-c", TIMER, *cmd], env=env, stdout=subprocess.PIPE)
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) != 3 or int(fields[2]) != 0:
        raise SystemExit(f"replay failed: {' '.join(cmd)}")
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return float(fields[0]), int(fields[1]) * unit


async def stream_count(store: EventStore, after: int) -> int:
    count = 0
    async for _ in store.stream(EventQuery(position_after=after)):
        count += 1
    return count


async def prepare(conninfo: str, reuse: bool) -> str:
    """Migrate the database; refuse one that holds events unless reusing. Its version."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("SELECT to_regclass('tidings.events') IS NOT NULL")
        exists = await cur.fetchone()
        if exists and exists[0] and not reuse:
            cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM tidings.events)")
            if (found := await cur.fetchone()) and found[0]:
                raise SystemExit("the database already holds events; pass --reuse to add to them")
        await migrate(conn)
        cur = await conn.execute("SHOW server_version")
        version = await cur.fetchone()
        return str(version[0]) if version else "unknown"


async def bench(conninfo: str, where: str, events: int, singles: int, reuse: bool) -> None:
    server_version = await prepare(conninfo, reuse)
    print("machine")
    for key, value in [*machine_details(), ("postgresql", f"{server_version} ({where})")]:
        print(f"  {key:<11} {value}")
    rng = random.Random(42)
    known: set[int] = set()
    single_events = make_events(singles, rng, known)
    batch_events = make_events(events, rng, known)
    singles_note = "" if singles == events else f"(on {singles:,} events; --single-events M)"
    print(f"\nevents: {events:,} ({USERS:,} users, 10 instances, payloads ~200 bytes)\n")
    print(f"  {'phase':<38} {'events':>9} {'wall':>11} {'rate':>16}")

    settings = DatabaseSettings.model_validate(
        {"url": conninfo, "pool_min_size": 1, "pool_max_size": 4}
    )
    async with open_database(settings) as db:
        store = db.store
        started = time.perf_counter()
        for event in single_events:
            await store.append([event])
        row("append, 1 event per transaction", singles, time.perf_counter() - started, singles_note)

        start = await store.last_position()  # the reads below cover only what follows
        started = time.perf_counter()
        for i in range(0, events, BATCH):
            await store.append(batch_events[i : i + BATCH])
        row(f"append, {BATCH} events per transaction", events, time.perf_counter() - started)
        del single_events, batch_events

        read, after = 0, start
        started = time.perf_counter()
        while True:
            batch = await store.read_ordered(after=after, limit=READ_LIMIT)
            if not batch.events:
                break
            read += len(batch.events)
            after = batch.resume_after
        row(f"read_ordered, limit {READ_LIMIT}", read, time.perf_counter() - started)

        started = time.perf_counter()
        streamed = await stream_count(store, start)
        row("stream in process (EventQuery)", streamed, time.perf_counter() - started)
        tracemalloc.start()
        started = time.perf_counter()
        traced = await stream_count(store, start)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        row("stream in process, under tracemalloc", traced, seconds, f"peak {peak / 2**20:.1f} MiB")

        one_s, one_rss = await asyncio.to_thread(run_replay, conninfo, start, 1)
        all_s, all_rss = await asyncio.to_thread(run_replay, conninfo, start, None)
        replay, mib = "replay CLI, jsonl > /dev/null", 2**20
        row(f"{replay}, 1 event", 1, one_s, f"peak RSS {one_rss / mib:.1f} MiB (start-up)")
        row(replay, events, all_s, f"peak RSS {all_rss / mib:.1f} MiB")

        await batches_of_1000(store, make_events(2 * min(events, 10_000), rng, known))

        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*), pg_total_relation_size('tidings.events') FROM tidings.events"
            )
            total, size = await cur.fetchone() or (0, 0)
    print(f"\n  log now holds {total:,} events; table + indexes {size / 2**20:.0f} MiB")
    for name, got in (("read_ordered", read), ("stream", streamed), ("traced", traced)):
        if got != events:
            print(f"  WARNING: {name} saw {got:,} events, expected {events:,}")


async def batches_of_1000(store: EventStore, events: list[NewEvent]) -> None:
    """1,000 events per call, alternating: EventStore.append and the SQL door."""
    door = "SELECT count(*) FROM tidings.append_events(%s::jsonb)"
    seconds = {"store": 0.0, "door": 0.0}
    for n, i in enumerate(range(0, len(events), 1000)):
        batch = events[i : i + 1000]
        way = "store" if n % 2 == 0 else "door"
        started = time.perf_counter()
        if way == "store":
            await store.append(batch)
        else:
            document = json.dumps([e.model_dump() for e in batch])  # what the platform sends
            started = time.perf_counter()
            async with store.pool.connection() as conn:
                await conn.set_autocommit(True)
                await (await conn.execute(door, (document,))).fetchall()
                await conn.set_autocommit(False)
        seconds[way] += time.perf_counter() - started
    half = len(events) // 2
    row("append, 1,000 per call (store.append)", half, seconds["store"])
    row("append, 1,000 per call (SQL door)", half, seconds["door"], "tidings.append_events(jsonb)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="N (default 100000)")
    parser.add_argument("--single-events", type=int, help="events appended one per transaction "
                        "(default N/10)")  # fmt: skip
    parser.add_argument("--database-url", help="use this database (default: throwaway pgserver)")
    parser.add_argument("--reuse", action="store_true", help="accept a log that holds events")
    args = parser.parse_args()
    if args.events < 1 or (args.single_events or 0) < 0:
        parser.error("--events must be positive and --single-events not negative")
    singles = args.single_events if args.single_events is not None else max(1, args.events // 10)

    if args.database_url:
        asyncio.run(bench(args.database_url, "--database-url", args.events, singles, args.reuse))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server
    root = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    server = get_server(root / "data", cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tidings_bench")
        where = "embedded pgserver, throwaway"
        asyncio.run(bench(server.get_uri("tidings_bench"), where, args.events, singles, False))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
