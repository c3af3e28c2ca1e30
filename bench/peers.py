"""tidings next to a peer PostgreSQL queue, pgqueuer 1.6 on asyncpg, in one run.

Absolute figures on a shared machine say little; what this prints is each
figure's median over alternating runs and the ratio tidings / pgqueuer from the
same invocation, on the same embedded PostgreSQL (pgserver), a fresh database
per run:

- pgqueuer: the asyncpg driver, one QueueManager, a no-op async entrypoint with
  concurrency_limit 10, dequeue batch 10; jobs enqueued 1,000 per call.
- tidings bulk 10 / bulk 100: one process, one request worker, as `tidings run`
  runs it (Service, WorkerPool, the CLI's INFO log line per notification into
  /dev/null); every message claimed, its user looked up, rendered (texts and
  layout, code decrypted) and its outcome written as events. Only the channel
  is a no-op (bench/workers.py's). Requests (notification.requested, as the
  projector appends them) are appended 1,000 per append.

Each run: setup (schema, for tidings 1,000 users projected), then the enqueue
phase (all jobs, timed), then the processing phase (drain, timed), each in a
child process of its own, so its Python CPU is its own; PostgreSQL's CPU is
the server's processes over the phase. Pickup latency runs separately: the
worker runs idle in a child, this process enqueues one job at a time at a
steady rate, and latency = the job's start minus the time its enqueue returned
(committed). The same span for both: pgqueuer's start is its no-op entrypoint's
call; tidings' is the channel's send, so its span also holds the claim, the
lifecycle's decision, the rendering and the code's decryption. tidings' enqueue
is the append of notification.requested, as the projector makes it from a
source event: the projector's own step (source event -> requested) is not in
the span (bench/workers.py --only latency measures source event -> send).

With --processes 1,2, the real command `tidings run --processes N` (one
request worker per process, bulk 100, the log channel) drains the same queue
for each N, alternating: the scaling from more processes on this machine
(timed from the commit of all the requests, appended at once when every
process listens, to the last send recorded: start-up is left out).

With --baseline PATH (a checkout of tidings, e.g. `git worktree add /tmp/before
main`; repeatable), the tidings contenders run again from that checkout, labelled
by its folder's name, in the same alternation: before/after figures from one run.

    .venv/bin/python bench/peers.py                    # 10,000 jobs, 3 runs, ~5 minutes
    .venv/bin/python bench/peers.py --jobs 3000 --runs 1 --rate 100 --seconds 5   # quick
    .venv/bin/python bench/peers.py --baseline /tmp/before
    .venv/bin/python bench/peers.py --processes 1,2     # and `tidings run --processes N`
    .venv/bin/python bench/peers.py --enqueue-only --baseline /tmp/before  # appends alone (50,000)
    .venv/bin/python bench/peers.py --source-events    # the platform's source events (50,000)
    .venv/bin/python bench/peers.py --analyze          # queues the planner has statistics for
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ENTRYPOINT = "noop"
PGQ_CONCURRENCY = 10
PGQ_BATCH = 10
ENQUEUE_BATCH = 1_000
DOOR = "SELECT count(*) FROM tidings.append_events(%s::jsonb)"


# --- the children -------------------------------------------------------------------


def say(message: Any) -> None:
    print(message if isinstance(message, str) else json.dumps(message), flush=True)


async def wait_go() -> None:
    await asyncio.to_thread(sys.stdin.readline)


async def child_pgqueuer(opts: dict[str, Any]) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode
    from workers import configure_logging

    configure_logging("info")
    conn = await asyncpg.connect(opts["url"])
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    started: dict[int, float] = {}
    expected = opts["jobs"]
    everything = asyncio.Event()

    def manager() -> QueueManager:
        qm = QueueManager(queries=queries)

        @qm.entrypoint(ENTRYPOINT, concurrency_limit=PGQ_CONCURRENCY)
        async def noop(job: Job) -> None:
            started[int(job.id)] = time.time()
            if opts["mode"] == "latency" and len(started) >= expected:
                everything.set()
                qm.shutdown.set()

        return qm

    if opts["mode"] == "throughput":
        payload = opts["payload"].encode()
        say("ready")
        await wait_go()
        cpu, t0 = time.process_time(), time.perf_counter()
        for start in range(0, expected, ENQUEUE_BATCH):
            n = min(ENQUEUE_BATCH, expected - start)
            await queries.enqueue([ENTRYPOINT] * n, [payload] * n, [0] * n)
        say({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - cpu})
        await wait_go()
        if opts["enqueue_only"]:
            await conn.close()
            return
        qm = manager()
        cpu, t0 = time.process_time(), time.perf_counter()
        await qm.run(batch_size=PGQ_BATCH, mode=QueueExecutionMode.drain)
        elapsed = time.perf_counter() - t0
        say({"seconds": elapsed, "cpu": time.process_time() - cpu, "done": len(started)})
        await wait_go()  # the parent has read the server's CPU: connections may close now
    else:
        qm = manager()
        task = asyncio.create_task(qm.run(batch_size=PGQ_BATCH))
        await asyncio.sleep(1.0)  # listening
        say("ready")
        try:
            await asyncio.wait_for(everything.wait(), opts["timeout"])
        except TimeoutError:
            qm.shutdown.set()
        await task
        say({str(k): v for k, v in started.items()})
    await conn.close()


async def child_tidings(opts: dict[str, Any]) -> None:
    import psycopg
    from projector import source_events
    from workers import (
        INSTANCES,
        USERS,
        bench_settings,
        configure_logging,
        noop_service,
        request_events,
        user_added,
    )

    from tidings.eventstore import migrate, open_database
    from tidings.service import Service

    configure_logging("info")
    async with await psycopg.AsyncConnection.connect(opts["url"]) as conn:
        await migrate(conn)
    settings = bench_settings(opts["url"], bulk=opts["bulk"], workers=1)
    async with open_database(settings.database) as db:
        users = [user_added(f"user-{u}", instance_id=f"inst-{u % INSTANCES}") for u in range(USERS)]
        await db.store.append(users)
        await Service(db=db, settings=settings).projector.catch_up()
        service, noop = noop_service(db, settings)
        if opts["mode"] == "throughput" and opts.get("source_events"):
            # The platform's side: its source events, 1,000 per call through the
            # in-database door (what it calls in its own transaction).
            documents = [
                json.dumps(batch)
                for batch in _batches([e.model_dump() for e in source_events(opts["jobs"])])
            ]
            say("ready")
            await wait_go()
            cpu, t0 = time.process_time(), time.perf_counter()
            async with db.pool.connection() as conn:
                await conn.set_autocommit(True)
                for document in documents:
                    await conn.execute(DOOR, (document,))
                await conn.set_autocommit(False)
            say({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - cpu})
            await wait_go()
            await service.close()
            return
        if opts["mode"] == "throughput":
            events = request_events(opts["jobs"])
            say("ready")
            await wait_go()
            cpu, t0 = time.process_time(), time.perf_counter()
            for start in range(0, len(events), ENQUEUE_BATCH):
                await db.store.append(events[start : start + ENQUEUE_BATCH])
            say({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - cpu})
            await wait_go()
            if opts["enqueue_only"]:
                await service.close()
                return
            cpu, t0 = time.process_time(), time.perf_counter()
            await service.pool.run(
                stop=asyncio.Event(), workers=1, retry_workers=0, until_idle=True
            )
            elapsed = time.perf_counter() - t0
            say({"seconds": elapsed, "cpu": time.process_time() - cpu, "done": len(noop.sent)})
            await wait_go()  # the parent has read the server's CPU: connections may close now
        else:
            stop = asyncio.Event()
            task = asyncio.create_task(
                service.pool.run(stop=stop, workers=1, retry_workers=0, until_idle=False)
            )
            await asyncio.sleep(1.0)  # listening
            noop.expect(f"lat-{i:07d}" for i in range(opts["jobs"]))
            say("ready")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(noop.all_sent.wait(), opts["timeout"])
            stop.set()
            await task
            say(noop.sent)
        await service.close()


# --- the parent ---------------------------------------------------------------------


@dataclass
class Server:
    admin_uri: str
    uri_of: Any
    postmaster: psutil.Process | None

    async def admin(self, statement: str) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.admin_uri, autocommit=True) as conn:
            await conn.execute(statement.encode())

    async def create(self, name: str) -> str:
        await self.admin(f"DROP DATABASE IF EXISTS {name}")
        await self.admin(f"CREATE DATABASE {name}")
        return str(self.uri_of(name))

    async def analyze(self, url: str) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("ANALYZE")

    async def drop(self, name: str) -> None:
        await self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def cpu(self) -> float:
        """CPU seconds used by PostgreSQL so far: live processes and reaped backends."""
        if self.postmaster is None:
            return 0.0
        times = self.postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.postmaster.children():
            try:
                ct = child.cpu_times()
            except psutil.Error:
                continue
            total += ct.user + ct.system
        return total


@dataclass(frozen=True)
class Contender:
    label: str
    kind: str  # pgqueuer | tidings
    bulk: int = 0
    checkout: str | None = None  # PYTHONPATH for the child: another tidings checkout


@dataclass
class Figures:
    processed: list[float] = field(default_factory=list)  # jobs/s
    enqueued: list[float] = field(default_factory=list)  # jobs/s
    py_us: list[float] = field(default_factory=list)  # Python CPU per processed job, us
    pg_us: list[float] = field(default_factory=list)  # PostgreSQL CPU per processed job, us
    enq_py_us: list[float] = field(default_factory=list)
    enq_pg_us: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)  # pickup latency, ms
    p95: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    missing: int = 0


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, contender: Contender, opts: dict[str, Any]) -> Child:
        env = dict(os.environ)
        paths = [str(BENCH)] + ([contender.checkout] if contender.checkout else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", contender.kind, "--child-opts", json.dumps(opts),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
            limit=2**26,
        )  # fmt: skip
        child = cls(proc)
        line = await child.line(120)
        if line != "ready":
            raise SystemExit(f"{contender.label}: child did not start: {line!r}")
        return child

    async def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await self.proc.stdout.readline()
        if not raw:
            await self.proc.wait()
            raise SystemExit(f"a child ended (exit {self.proc.returncode})")
        return raw.decode().strip()

    async def report(self, timeout: float) -> Any:
        return json.loads(await self.line(timeout))

    async def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def sample_payload(source_events: bool = False) -> str:
    """A pgqueuer job carries as many bytes as a tidings request (or source event) does."""
    from projector import source_events as sources
    from workers import request_events

    return json.dumps((sources(1) if source_events else request_events(1))[0].payload)


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + ENQUEUE_BATCH] for i in range(0, len(items), ENQUEUE_BATCH)]


async def throughput_run(
    server: Server,
    contender: Contender,
    name: str,
    jobs: int,
    figures: Figures,
    enqueue_only: bool = False,
    source_events: bool = False,
    analyze: bool = False,
) -> None:
    url = await server.create(name)
    opts = {"mode": "throughput", "url": url, "jobs": jobs, "bulk": contender.bulk,
            "enqueue_only": enqueue_only, "source_events": source_events}  # fmt: skip
    if contender.kind == "pgqueuer":
        opts["payload"] = sample_payload(source_events)
    try:
        child = await Child.start(contender, opts)
        pg0 = server.cpu()
        await child.go()
        enq = await child.report(60 + jobs / 100)
        if analyze:  # as autovacuum does in a deployment that runs a while; not timed
            await server.analyze(url)
        pg1 = server.cpu()
        await child.go()
        if not enqueue_only:
            done = await child.report(60 + jobs / 50)
            pg2 = server.cpu()
            await child.go()
        await child.close()
    finally:
        await server.drop(name)
    figures.enqueued.append(jobs / enq["seconds"])
    figures.enq_py_us.append(enq["cpu"] / jobs * 1e6)
    figures.enq_pg_us.append((pg1 - pg0) / jobs * 1e6)
    if enqueue_only:
        print(
            f"  {contender.label:<26} enqueue {jobs / enq['seconds']:>8,.0f}/s  "
            f"cpu/job py {figures.enq_py_us[-1]:5.1f} us pg {figures.enq_pg_us[-1]:5.1f} us",
            flush=True,
        )
        return
    if done["done"] != jobs:
        raise SystemExit(f"{contender.label}: {done['done']} of {jobs} processed")
    figures.processed.append(jobs / done["seconds"])
    figures.py_us.append(done["cpu"] / jobs * 1e6)
    figures.pg_us.append((pg2 - pg1) / jobs * 1e6)
    print(
        f"  {contender.label:<26} enqueue {jobs / enq['seconds']:>8,.0f}/s  "
        f"processed {jobs / done['seconds']:>7,.0f}/s  "
        f"cpu/job py {figures.py_us[-1]:5.0f} us pg {figures.pg_us[-1]:5.0f} us",
        flush=True,
    )


async def latency_run(
    server: Server,
    contender: Contender,
    name: str,
    rate: float,
    seconds: float,
    figures: Figures,
) -> None:
    url = await server.create(name)
    warmup = int(rate)  # the first second: lazily opened connections, cold caches
    jobs = warmup + int(rate * seconds)
    opts = {"mode": "latency", "url": url, "jobs": jobs, "bulk": 10, "timeout": seconds + 60}
    try:
        child = await Child.start(contender, opts)
        if contender.kind == "pgqueuer":
            committed = await trickle_pgqueuer(url, jobs, rate)
        else:
            committed = await trickle_tidings(url, jobs, rate)
        started: dict[str, float] = await child.report(seconds + 120)
        await child.close()
    finally:
        await server.drop(name)
    measured = list(committed.items())[warmup:]
    values = [started[key] - at for key, at in measured if key in started]
    figures.missing += len(measured) - len(values)
    for p, target in ((50, figures.p50), (95, figures.p95), (99, figures.p99)):
        target.append(percentile(values, p) * 1000)
    print(
        f"  {contender.label:<26} pickup latency p50 {figures.p50[-1]:6.1f} ms  "
        f"p95 {figures.p95[-1]:6.1f} ms  p99 {figures.p99[-1]:6.1f} ms"
        f"  ({len(values):,} jobs at {rate:g}/s)",
        flush=True,
    )


async def steady(jobs: int, rate: float, enqueue: Any) -> dict[str, float]:
    committed: dict[str, float] = {}
    start = time.monotonic()
    for i in range(jobs):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        key = await enqueue(i)
        committed[key] = time.time()
    return committed


async def trickle_pgqueuer(url: str, jobs: int, rate: float) -> dict[str, float]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(conn))
    payload = sample_payload().encode()

    async def enqueue(_: int) -> str:
        ids = await queries.enqueue(ENTRYPOINT, payload)
        return str(int(ids[0]))

    try:
        return await steady(jobs, rate, enqueue)
    finally:
        await conn.close()


async def trickle_tidings(url: str, jobs: int, rate: float) -> dict[str, float]:
    import psycopg
    from psycopg.types.json import Jsonb
    from workers import CRYPTO, INSTANCES, USERS, requested

    from tidings.eventstore.models import EVENTS_CHANNEL
    from tidings.notification.codes import CodeCipher

    cipher = CodeCipher.from_settings(CRYPTO)
    events = [
        requested(
            f"lat-{i:07d}", user_id=f"user-{i % USERS}", instance_id=f"inst-{i % INSTANCES}",
            cipher=cipher,
        )
        for i in range(jobs)
    ]  # fmt: skip
    # Through tidings.append_events' array form, the same in every checkout: this
    # process's EventStore would refuse a --baseline checkout's database when the
    # two are at different schema versions. Only the commit time counts here.
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

        async def enqueue(i: int) -> str:
            e = events[i]
            await conn.execute(
                "SELECT tidings.append_events(ARRAY[%s], ARRAY[%s], ARRAY[%s], ARRAY[%s::bigint],"
                " ARRAY[%s], ARRAY[%s::jsonb], ARRAY[%s], ARRAY[%s], %s)",
                (e.instance_id, e.aggregate_type, e.aggregate_id, e.expected_sequence,
                 e.event_type, Jsonb(e.payload), e.owner, e.creator, EVENTS_CHANNEL),
            )  # fmt: skip
            return e.aggregate_id

        return await steady(jobs, rate, enqueue)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


ROWS = (  # attribute, label, format, which way is better
    ("processed", "processed/s", "{:,.0f}", "higher"),
    ("enqueued", "enqueue/s (batches of 1,000)", "{:,.0f}", "higher"),
    ("p50", "pickup latency p50 ms", "{:.1f}", "lower"),
    ("p95", "pickup latency p95 ms", "{:.1f}", "lower"),
    ("p99", "pickup latency p99 ms", "{:.1f}", "lower"),
    ("py_us", "Python CPU per job, us", "{:,.0f}", "lower"),
    ("pg_us", "PostgreSQL CPU per job, us", "{:,.0f}", "lower"),
    ("enq_py_us", "enqueue: Python CPU per job, us", "{:,.1f}", "lower"),
    ("enq_pg_us", "enqueue: PostgreSQL CPU per job, us", "{:,.1f}", "lower"),
)


def cell_of(contender: Contender, results: dict[str, Figures], attr: str, fmt: str) -> str:
    value = median(getattr(results[contender.label], attr))
    if value != value:  # not measured (nan)
        return "-"
    cell = fmt.format(value)
    base = median(getattr(results["pgqueuer"], attr))
    if contender.kind != "pgqueuer" and base:
        cell += f" ({value / base:.2f}x)"
    return cell


def print_table(contenders: Sequence[Contender], results: dict[str, Figures], runs: int) -> None:
    print(f"\nmedians of {runs} alternating runs; ratio = tidings / pgqueuer from this run")
    head = f"  {'':<38}" + "".join(f"{c.label:>22}" for c in contenders)
    print(head)
    for attr, label, fmt, _ in ROWS:
        cells = [f"{cell_of(c, results, attr, fmt):>22}" for c in contenders]
        print(f"  {label:<38}" + "".join(cells))
    print("\n  as a markdown table:\n")
    print("  | figure | " + " | ".join(c.label for c in contenders) + " |")
    print("  | --- |" + " ---: |" * len(contenders))
    for attr, label, fmt, better in ROWS:
        cells = [cell_of(c, results, attr, fmt) for c in contenders]
        print(f"  | {label} ({better} is better) | " + " | ".join(cells) + " |")
    print("\n  targets (issue 15), same-run ratios:")
    for c in contenders:
        if c.kind == "pgqueuer":
            continue
        checks = [("processed/s", "processed", ">=", 1.0), ("enqueue/s", "enqueued", ">=", 1.0)]
        if results[c.label].p99:
            checks.append(("pickup p99", "p99", "<=", 1.0))
        parts = []
        for name, attr, op, goal in checks:
            if not getattr(results[c.label], attr):
                continue  # not measured in this run (--enqueue-only)
            ratio = median(getattr(results[c.label], attr)) / median(
                getattr(results["pgqueuer"], attr)
            )
            met = ratio >= goal if op == ">=" else ratio <= goal
            parts.append(f"{name} {ratio:.2f}x ({op} {goal:g}: {'met' if met else 'not met'})")
        print(f"    {c.label:<22} " + "; ".join(parts))
    missing = {c.label: results[c.label].missing for c in contenders if results[c.label].missing}
    if missing:
        print(f"\n  latency jobs never seen started (left out): {missing}")


async def bench(server: Server, args: argparse.Namespace) -> None:
    from eventstore import machine_details
    from workers import describe_fingerprint, product_fingerprint, server_details

    print("machine")
    details = [
        *machine_details(),
        *await server_details(server.admin_uri),
        ("tidings", describe_fingerprint(product_fingerprint())),
        ("peer", f"pgqueuer {_version('pgqueuer')} on asyncpg {_version('asyncpg')}"),
    ]  # fmt: skip
    for checkout in args.baseline:
        details.append((checkout.name, f"tidings from {checkout}"))
    for key, value in details:
        print(f"  {key:<11} {value}")
    contenders = [Contender("pgqueuer", "pgqueuer")]
    for bulk in args.bulks:
        contenders.append(Contender(f"tidings bulk {bulk}", "tidings", bulk))
    for checkout in args.baseline:
        for bulk in args.bulks:
            contenders.append(
                Contender(f"{checkout.name} bulk {bulk}", "tidings", bulk, str(checkout))
            )
    results = {c.label: Figures() for c in contenders}
    print(
        f"\nthroughput: {args.jobs:,} jobs per run, one process, one worker, fresh database "
        f"per run (pgqueuer: concurrency {PGQ_CONCURRENCY}, batch {PGQ_BATCH})",
        flush=True,
    )
    for run in range(args.runs):
        order = contenders if run % 2 == 0 else contenders[::-1]
        for c in order:
            await throughput_run(
                server, c, f"peers_{run}", args.jobs, results[c.label], args.enqueue_only,
                args.source_events, args.analyze,
            )  # fmt: skip
    if args.enqueue_only:
        print_table(contenders, results, args.runs)
        return
    latency_contenders = [c for c in contenders if c.kind == "pgqueuer" or c.bulk == 10]
    print(
        f"\npickup latency: one job at a time at {args.rate:g}/s for {args.seconds:g} s "
        "(after a first second of warm-up), one worker (tidings: bulk 10)",
        flush=True,
    )
    for run in range(args.runs):
        order = latency_contenders if run % 2 == 0 else latency_contenders[::-1]
        for c in order:
            await latency_run(
                server, c, f"peers_lat_{run}", args.rate, args.seconds, results[c.label]
            )
    print_table(contenders, results, args.runs)
    if args.processes:
        print(
            f"\nprocesses: `tidings run --processes N --workers 1 --retry-workers 0`, bulk 100, "
            f"log channel, {args.jobs:,} requests queued first, time until all are sent",
            flush=True,
        )
        rates: dict[int, list[float]] = {n: [] for n in args.processes}
        for run in range(args.runs):
            order = args.processes if run % 2 == 0 else args.processes[::-1]
            for n in order:
                rates[n].append(await processes_run(server, n, args.jobs, f"peers_procs_{run}"))
        one = median(rates[args.processes[0]])
        for n in args.processes:
            print(
                f"  median --processes {n:<3} {median(rates[n]):>8,.0f}/s "
                f"({median(rates[n]) / one:.2f}x --processes {args.processes[0]})"
            )


async def processes_run(server: Server, processes: int, jobs: int, name: str) -> float:
    """`tidings run --processes N` (the real command) draining `jobs` requests: sent/s.

    The processes start on an empty queue; once every one of them listens for
    wake-ups, all the requests are appended in one transaction, and the span is
    that commit to the last send recorded, both by the database's clock. So no
    process's start-up (interpreter, imports, connections) is in it, and every
    N starts with all its processes ready.
    """
    import psycopg
    from workers import CRYPTO, INSTANCES, USERS, bench_settings, request_events, user_added

    from tidings.config import DatabaseSettings
    from tidings.eventstore import migrate, open_database
    from tidings.service import Service

    url = await server.create(name)
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await migrate(conn)
        key = CRYPTO.keys["k1"].get_secret_value()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_DATABASE_URL=url,
            TIDINGS_CRYPTO_KEYS=f"k1={key}",
            TIDINGS_CHANNELS_EMAIL="log",
            TIDINGS_CHANNELS_SMS="log",
            TIDINGS_NOTIFICATIONS_BULK_LIMIT="100",
        )
        argv = [sys.executable, "-m", "tidings", "--log-level", "warning", "run"]
        argv += ["--processes", str(processes), "--workers", "1", "--retry-workers", "0"]
        async with open_database(DatabaseSettings(url=url)) as db:
            users = [
                user_added(f"user-{u}", instance_id=f"inst-{u % INSTANCES}") for u in range(USERS)
            ]
            await db.store.append(users)
            await Service(db=db, settings=bench_settings(url)).projector.catch_up()
            events = request_events(jobs)
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as watch:
                    # Each process's worker pool holds one LISTEN connection (the
                    # projector's leader one more): wait for N of them.
                    await _until(
                        watch,
                        "SELECT count(*) >= %s FROM pg_stat_activity"
                        " WHERE datname = current_database() AND query LIKE 'LISTEN %%'",
                        (processes,),
                        timeout=60,
                        what=f"--processes {processes}: every process listening",
                    )
                    async with db.pool.connection() as conn:
                        async with conn.transaction():
                            for start in range(0, jobs, ENQUEUE_BATCH):
                                await db.store.append(
                                    events[start : start + ENQUEUE_BATCH], conn=conn
                                )
                        cur = await conn.execute("SELECT clock_timestamp()")
                        now = await cur.fetchone()
                        assert now is not None
                        committed = now[0]
                    await _until(
                        watch,
                        "SELECT count(*) >= %s FROM tidings.events"
                        " WHERE event_type = 'notification.sent'",
                        (jobs,),
                        timeout=60 + jobs / 20,
                        what=f"--processes {processes}: {jobs} sent",
                    )
                    cur = await watch.execute(
                        "SELECT extract(epoch FROM max(created_at) - %s) FROM tidings.events"
                        " WHERE event_type = 'notification.sent'",
                        (committed,),
                    )
                    span = await cur.fetchone()
                    assert span is not None
                    elapsed = float(span[0])
            finally:
                proc.terminate()
                await proc.wait()
    finally:
        await server.drop(name)
    rate = jobs / elapsed
    print(f"  tidings run --processes {processes:<3} {rate:>8,.0f}/s", flush=True)
    return rate


async def _until(
    conn: Any, query: str, params: tuple[Any, ...], *, timeout: float, what: str
) -> None:
    """Poll `query` (one boolean) every 50 ms until it holds; SystemExit after `timeout` s."""
    deadline = time.perf_counter() + timeout
    while True:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        if row is not None and row[0]:
            return
        if time.perf_counter() > deadline:
            raise SystemExit(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main() -> None:
    for name in [n for n in os.environ if n.startswith("TIDINGS_")]:
        del os.environ[name]  # settings from the environment would override the bench's own
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--jobs",
        type=int,
        help="jobs per run (default 10,000; 50,000 with --enqueue-only or --source-events, "
        "whose runs are otherwise a few tenths of a second, and swing with a checkpoint)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulks", default="10,100", help="tidings bulk limits, comma-separated")
    parser.add_argument("--rate", type=float, default=100.0, help="latency: jobs per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: seconds measured")
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another tidings checkout to compare with, labelled by its folder's name (repeatable)",
    )
    parser.add_argument(
        "--processes",
        default="",
        help="also time `tidings run --processes N` for these N, e.g. 1,2 (off by default)",
    )
    parser.add_argument(
        "--enqueue-only",
        action="store_true",
        help="only the enqueue phase of the throughput runs (no processing, no latency)",
    )
    parser.add_argument(
        "--source-events",
        action="store_true",
        help="with --enqueue-only: append the platform's source events (a password-reset code "
        "each) 1,000 per call through tidings.append_events(jsonb), not requests",
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="ANALYZE each run's database between enqueueing and processing (untimed), as "
        "autovacuum has done in a deployment that has run a while: the planner then knows "
        "the queue's size, as in production",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-opts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.bulks = [int(b) for b in args.bulks.split(",") if b]
    args.processes = [int(n) for n in args.processes.split(",") if n]
    if args.source_events:
        args.enqueue_only = True  # source events are not processed without the projector
        args.bulks = args.bulks[:1]  # the bulk only matters to processing
    if args.jobs is None:
        args.jobs = 50_000 if args.enqueue_only else 10_000
    if args.child:
        child = child_pgqueuer if args.child == "pgqueuer" else child_tidings
        asyncio.run(child(json.loads(args.child_opts)))
        return
    for checkout in args.baseline:
        if not (checkout / "tidings" / "__init__.py").exists():
            raise SystemExit(f"--baseline {checkout}: no tidings package there")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server
    root = Path(tempfile.mkdtemp(prefix="tidings-peers-"))
    pg = get_server(root / "data", cleanup_mode="delete")
    try:
        pid = pg.get_pid()
        server = Server(pg.get_uri(), pg.get_uri, psutil.Process(pid) if pid else None)
        started = time.perf_counter()
        asyncio.run(bench(server, args))
        print(f"\n  benchmark wall time {time.perf_counter() - started:,.0f} s")
    finally:
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
