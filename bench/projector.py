"""Benchmark of the projector: source events -> notification.requested, per core and per WAL byte.

The projector is the one part of tidings that does not scale out within one
database: one process leads (an advisory lock), the others stand by. This
measures how many notifications a second that one leader requests, what it
costs in Python and in PostgreSQL CPU, and how much WAL it writes, on a
throwaway embedded PostgreSQL (pgserver):

1. USERS users (INSTANCES instances) added and projected first (the template of
   bench/workers.py);
2. N source events (user.human.password.code.added, an encrypted code each)
   appended as the platform would, --append-batch per transaction: the WAL they
   write per event is printed;
3. the real Projector (the Service's, as `tidings run` builds it) catches up
   with projections.batch_size --batch: wall time, Python CPU of this process,
   PostgreSQL CPU (the postmaster and its backends), WAL bytes, and the queue
   rows it wrote, per notification requested. Repeated --repeat times on fresh
   copies; medians printed.

    .venv/bin/python bench/projector.py                 # 20,000 events, 3 runs
    .venv/bin/python bench/projector.py --events 5000 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from eventstore import machine_details  # bench/eventstore.py (this script's folder)
from workers import (  # bench/workers.py: the same server, template and settings
    CRYPTO,
    INSTANCES,
    SOURCE_EVENT,
    USERS,
    Server,
    bench_settings,
    configure_logging,
    make_template,
    server_details,
)

from tidings.config import ProjectionSettings
from tidings.eventstore import NewEvent, open_database
from tidings.notification.codes import CodeCipher
from tidings.service import Service


@dataclass(frozen=True)
class Run:
    requested: int
    wall: float
    python_cpu: float
    pg_cpu: float
    wal_bytes: int


def source_events(count: int, seed: int = 7) -> list[NewEvent]:
    rng = random.Random(seed)
    cipher = CodeCipher.from_settings(CRYPTO)
    events = []
    for _ in range(count):
        user = rng.randrange(USERS)
        instance = f"inst-{user % INSTANCES}"
        events.append(
            NewEvent(
                instance_id=instance,
                aggregate_type="user",
                aggregate_id=f"user-{user}",
                event_type=SOURCE_EVENT,
                payload={
                    "code": cipher.encrypt(f"{rng.randrange(10**6):06d}").model_dump(),
                    "expiry": "10m",
                    "url_template": "https://x/reset?code={{.Code}}",
                },
                owner=f"org-{instance}",
            )
        )
    return events


async def wal_position(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def requested_count(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM tidings.events WHERE event_type = 'notification.requested'"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def one_run(
    server: Server, template: str, events: list[NewEvent], *, batch: int, append_batch: int
) -> tuple[Run, float]:
    name = "bench_projector_run"
    url = await server.create(name, template)
    try:
        settings = bench_settings(url)
        settings = settings.model_copy(update={"projections": ProjectionSettings(batch_size=batch)})
        async with open_database(settings.database) as db:
            before_append = await wal_position(url)
            for i in range(0, len(events), append_batch):
                await db.store.append(events[i : i + append_batch])
            before = await wal_position(url)
            append_wal = (before - before_append) / len(events)
            already = await requested_count(url)
            projector = Service(db=db, settings=settings).projector
            pg_before = server.cpu()
            cpu_before = time.process_time()
            started = time.perf_counter()
            await projector.catch_up()
            wall = time.perf_counter() - started
            python_cpu = time.process_time() - cpu_before
            pg_cpu = server.cpu() - pg_before
            after = await wal_position(url)
        requested = await requested_count(url) - already
    finally:
        await server.drop(name)
    return Run(requested, wall, python_cpu, pg_cpu, after - before), append_wal


async def bench(server: Server, args: argparse.Namespace) -> None:
    template = "bench_projector_template"
    await make_template(server, template)
    events = source_events(args.events)
    print(f"{args.events:,} {SOURCE_EVENT} events over {USERS:,} users, {INSTANCES} instances")
    print(f"projections.batch_size {args.batch}, appended {args.append_batch} per transaction\n")
    runs: list[Run] = []
    append_wals: list[float] = []
    for i in range(args.repeat):
        run, append_wal = await one_run(
            server, template, events, batch=args.batch, append_batch=args.append_batch
        )
        runs.append(run)
        append_wals.append(append_wal)
        print(
            f"  run {i + 1}: {run.requested:,} requested in {run.wall:.2f} s = "
            f"{run.requested / run.wall:,.0f}/s; python cpu {run.python_cpu:.2f} s, "
            f"postgresql cpu {run.pg_cpu:.2f} s, wal {run.wal_bytes / 2**20:.1f} MiB"
        )
    assert all(r.requested == args.events for r in runs), "every source event asks for one"

    def med(values: list[float]) -> float:
        return statistics.median(values)

    n = args.events
    print("\nsummary (medians)")
    for key, value in machine_details() + await server_details(server.admin_uri):
        print(f"  {key:<11} {value}")
    print(f"  projector, one leader: {med([n / r.wall for r in runs]):,.0f} requested/s")
    python_us = med([r.python_cpu / n for r in runs]) * 1e6
    pg_us = med([r.pg_cpu / n for r in runs]) * 1e6
    print(f"  python cpu per notification requested: {python_us:,.0f} us")
    print(f"  postgresql cpu per notification requested: {pg_us:,.0f} us")
    print(f"  wal per notification requested: {med([r.wal_bytes / n for r in runs]):,.0f} bytes")
    print(f"  wal per source event appended: {med(append_wals):,.0f} bytes")
    print(
        "  (the projector runs in this process, so python cpu is its own; postgresql cpu\n"
        "   and wal are the whole server's, which runs nothing else)"
    )


def main() -> None:
    for name in [n for n in os.environ if n.startswith("TIDINGS_")]:
        del os.environ[name]  # settings from the environment would override the bench's own
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="N source events (20000)")
    parser.add_argument("--batch", type=int, default=500, help="projections.batch_size (500)")
    parser.add_argument("--append-batch", type=int, default=100, help="source events per tx (100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs (3)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    args = parser.parse_args()
    configure_logging(args.log_level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server
    root = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    pg = get_server(root / "data", cleanup_mode="delete")
    try:
        pid = pg.get_pid()
        server = Server(
            admin_uri=pg.get_uri(),
            uri_of=pg.get_uri,
            postmaster=psutil.Process(pid) if pid else None,
        )
        started = time.perf_counter()
        asyncio.run(bench(server, args))
        print(f"\n  benchmark wall time {time.perf_counter() - started:,.0f} s")
    finally:
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
