"""Benchmark of the tidings worker pool with a channel that sends nothing.

Every message is still claimed, looked up, rendered (texts and layouts, the code
decrypted) and recorded exactly as `tidings run` does it; only the channel is a
no-op that returns an id at once (installed in the Service's channel registry).
On a throwaway embedded PostgreSQL (pgserver):

1. throughput, notification.requested -> notification.sent: N requests (users
   added and projected first) drained by `WorkerPool.run(until_idle=True)`, for
   bulk_limit 10 and 100, 1 and 4 request workers per process, in one process and
   in two processes sharing the queue (this script again, as `--child pool`);
   one extra run without the per-notification INFO log line, and one run under
   cProfile whose top costs are listed, with the PostgreSQL side's counters;
1b. the ingredients of one notification (claim share, user lookup, rendering,
   recording the outcome, one round trip), one at a time, and batched per 100;
2. pickup latency of the whole pipeline: source events (password code added,
   encrypted code) appended by another process at a steady rate while the
   service runs as `tidings run` does (projector + 1 request + 1 retry worker);
   latency = the no-op channel's send call minus the source append's commit;
3. claim cost against the size of the history: steady-state claims of 100 from
   10,000 open notifications, with 10,000 and with 1,000,000 settled
   notifications (requested + sent, written set-based with the trigger firing)
   in the log, as written (autovacuum off, so the history's dead queue rows
   stay) and after VACUUM ANALYZE.

    .venv/bin/python bench/workers.py            # full size, ~10 minutes
    .venv/bin/python bench/workers.py --quick    # small sizes, ~2 minutes
    .venv/bin/python bench/workers.py --only throughput,latency --notifications 5000

Logging is configured as the CLI's default (INFO, one line per notification),
written to /dev/null; `--log-level warning` turns those lines off everywhere.

The product's source files are fingerprinted at the start and at the end of a run:
a run during which they changed says so (its figures mix two versions).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import hashlib
import json
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
from eventstore import machine_details  # bench/eventstore.py (this script's folder)
from psycopg import sql
from psycopg.types.json import Jsonb

import tidings
from tidings.clock import utc_now as now_utc
from tidings.config import (
    ChannelSettings,
    CryptoSettings,
    DatabaseSettings,
    FilesystemChannelSettings,
    NotificationSettings,
    Settings,
)
from tidings.eventstore import Database, NewEvent, migrate, open_database
from tidings.notification.channels.base import OutgoingMessage
from tidings.notification.codes import CodeCipher
from tidings.notification.requests import (
    NotificationRequested,
    NotifyUser,
    Request,
    SourceRef,
    notification_id,
)
from tidings.notification.setup import build_composer
from tidings.projections import notify_user
from tidings.service import Service
from tidings.workers import PendingQueue
from tidings.workers.attempt import sent_events
from tidings.workers.queue import Claimed

INSTANCES = 10
USERS = 1_000
APPEND_BATCH = 500
SOURCE_EVENT = "user.human.password.code.added"
CHUNK = 30_000  # settled notifications per transaction: 60,000 events (< 65,536)
TOP = 20
# The events are built here as tests/worker_helpers.py builds them (same shapes), so
# the benchmark depends on the product's models only.
CRYPTO = CryptoSettings(keys={"k1": base64.b64encode(b"k" * 32).decode()}, active_key="k1")


def user_added(user_id: str, *, instance_id: str) -> NewEvent:
    payload = {
        "username": user_id.removeprefix("user-"),
        "first_name": "Ada",
        "last_name": "Lovelace",
        "display_name": "Ada Lovelace",
        "email": f"{user_id}@example.com",
        "email_verified": True,
        "phone": "+41790000001",
        "phone_verified": True,
        "preferred_language": "en",
    }
    return NewEvent(
        instance_id=instance_id,
        aggregate_type="user",
        aggregate_id=user_id,
        event_type="user.human.added",
        payload=payload,
        owner=f"org-{instance_id}",
    )


def requested(notification: str, *, user_id: str, instance_id: str, cipher: CodeCipher) -> NewEvent:
    """A notification.requested for a password reset email, as the projector appends it."""
    request = Request(
        user_id=user_id,
        resource_owner=f"org-{instance_id}",
        source=SourceRef(
            aggregate_type="user",
            aggregate_id=user_id,
            sequence=1,
            event_type=SOURCE_EVENT,
            position=1,
            created_at=datetime.now(UTC),
        ),
        message_type="PasswordReset",
        channel="email",
        sent_event_type="user.human.password.code.sent",
        url_template="https://login.example.com/reset?code={{.Code}}",
        code=cipher.encrypt("482913").model_dump(),
        code_expiry=timedelta(minutes=10),
    )
    return NewEvent(
        instance_id=instance_id,
        aggregate_type="notification",
        aggregate_id=notification,
        event_type="notification.requested",
        payload=NotificationRequested(request=request).model_dump(mode="json"),
        expected_sequence=0,
        owner=f"org-{instance_id}",
        creator="bench",
    )


# --- the no-op channel --------------------------------------------------------------


class NoopChannel:
    """Sends nothing: notes the wall time of each call and returns an id at once."""

    name = "noop"

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.all_sent = asyncio.Event()  # set once every expected notification was sent
        self._waiting: set[str] = set()

    def expect(self, notification_ids: Iterable[str]) -> None:
        self._waiting = set(notification_ids) - set(self.sent)
        if not self._waiting:
            self.all_sent.set()

    async def send(self, message: OutgoingMessage) -> str:
        self.sent[message.notification_id] = time.time()
        if self._waiting:
            self._waiting.discard(message.notification_id)
            if not self._waiting:
                self.all_sent.set()
        return f"noop-{message.idempotency_key}"

    async def close(self) -> None:
        return None


def bench_settings(url: str, *, bulk: int = 10, workers: int = 1, pool: int = 10) -> Settings:
    outbox = Path(tempfile.gettempdir()) / "tidings-bench-outbox"  # never written: no-op channel
    return Settings(
        database=DatabaseSettings(url=url, pool_max_size=pool),
        notifications=NotificationSettings(bulk_limit=bulk, workers=workers, retry_workers=0),
        channels=ChannelSettings(filesystem=FilesystemChannelSettings(outbox_dir=outbox)),
        crypto=CRYPTO,
    )


def noop_service(db: Database, settings: Settings) -> tuple[Service, NoopChannel]:
    """The real Service, its channel registry handing out the no-op channel."""
    service = Service(db=db, settings=settings)
    noop = NoopChannel()
    for name in {settings.channels.email, settings.channels.sms}:
        service.channels._built[name] = noop
    return service, noop


class ClaimTimer:
    """Times every claim of a pool (a wrapper around its queue's claim)."""

    def __init__(self, queue: PendingQueue) -> None:
        self.claims: list[tuple[float, int]] = []  # (seconds, rows) per claim, in order
        self._original = queue.claim
        setattr(queue, "claim", self)  # noqa: B010 - an instance attribute on purpose

    async def __call__(self, **kwargs: Any) -> list[Claimed]:
        started = time.perf_counter()
        claimed = await self._original(**kwargs)
        self.claims.append((time.perf_counter() - started, len(claimed)))
        return claimed


def configure_logging(level: str) -> None:
    """As `tidings run` does (`--log-level`, the text format, the keys masked), but into
    /dev/null: every attempt's INFO line is formatted and masked as in production."""
    from tidings.cli.logs import configure_logging as configure

    stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    keys = [key.get_secret_value() for key in CRYPTO.keys.values()]
    configure(level=level, log_format="text", secrets=keys, stream=stream)


# --- the server and its databases ---------------------------------------------------


@dataclass
class Server:
    admin_uri: str
    uri_of: Callable[[str], str]  # database name -> conninfo
    postmaster: psutil.Process | None

    async def admin(self, statement: str) -> None:
        async with await psycopg.AsyncConnection.connect(self.admin_uri, autocommit=True) as conn:
            await conn.execute(statement.encode())

    async def create(self, name: str, template: str | None = None) -> str:
        await self.admin(f"DROP DATABASE IF EXISTS {name}")
        await self.admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return str(self.uri_of(name))

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


async def server_details(uri: str) -> list[tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'),"
            " current_setting('synchronous_commit'), current_setting('fsync'),"
            " current_setting('max_connections')"
        )
        row = await cur.fetchone()
    assert row is not None
    return [
        ("postgresql", f"{row[0]} (embedded pgserver, throwaway)"),
        (
            "pg config",
            f"shared_buffers {row[1]}, synchronous_commit {row[2]}, fsync {row[3]}, "
            f"max_connections {row[4]}",
        ),
    ]


async def make_template(server: Server, name: str) -> None:
    """A migrated database with USERS users in INSTANCES instances, projected."""
    url = await server.create(name)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await migrate(conn)
    settings = bench_settings(url)
    async with open_database(settings.database) as db:
        users = [user_added(f"user-{u}", instance_id=f"inst-{u % INSTANCES}") for u in range(USERS)]
        await db.store.append(users)
        await Service(db=db, settings=settings).projector.catch_up()


def request_events(count: int) -> list[NewEvent]:
    cipher = CodeCipher.from_settings(CRYPTO)
    return [
        requested(
            f"bench-{i:07d}",
            user_id=f"user-{i % USERS}",
            instance_id=f"inst-{i % INSTANCES}",
            cipher=cipher,
        )
        for i in range(count)
    ]


# --- 1. throughput ------------------------------------------------------------------


@dataclass
class Throughput:
    label: str
    procs: int
    workers: int
    bulk: int
    count: int
    seconds: float
    python_cpu: float
    pg_cpu: float
    split: list[int]
    log_level: str
    claim_seconds: float  # all claims of all workers, summed
    claims: int  # claims that returned rows
    claim_first: float  # median claim (seconds) in the first tenth of each process's claims
    claim_last: float  # ... and in the last tenth: growth shows a queue slowing as it drains
    pg_lines: list[str] = field(default_factory=list)  # the profiled run's postgresql side

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def claim_stats(reports: list[dict[str, Any]]) -> tuple[float, int, float, float]:
    total, count, first, last = 0.0, 0, [], []
    for report in reports:
        full = [seconds for seconds, rows in report["claims"] if rows]
        total += sum(seconds for seconds, _ in report["claims"])
        count += len(full)
        tenth = max(1, len(full) // 10)
        first += full[:tenth]
        last += full[-tenth:]
    return total, count, pct(first, 50), pct(last, 50)


async def child_pool(opts: dict[str, Any]) -> None:
    """One process of a throughput run: ready, wait for go, drain the queue, report."""
    configure_logging(opts["log_level"])
    settings = bench_settings(
        opts["url"], bulk=opts["bulk"], workers=opts["workers"], pool=opts["pool"]
    )
    async with open_database(settings.database) as db:
        service, noop = noop_service(db, settings)
        timer = ClaimTimer(service.pool.queue)
        profiler = cProfile.Profile() if opts.get("profile") else None
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        cpu, started = time.process_time(), time.time()
        if profiler is not None:
            profiler.enable()
        try:
            await service.pool.run(
                stop=asyncio.Event(), workers=opts["workers"], retry_workers=0, until_idle=True
            )
        except Exception:
            traceback.print_exc()
            os._exit(3)  # at once: workers still running must not hold the exit up
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(opts["profile"])
        ended = time.time()
        report = {
            "sent": len(noop.sent),
            "started": started,
            "ended": ended,
            "cpu": time.process_time() - cpu,
            "claims": timer.claims,
        }
        print(json.dumps(report), flush=True)
        await service.close()


async def spawn(mode: str, opts: dict[str, Any]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        mode,
        "--child-opts",
        json.dumps(opts),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=2**26,  # a child reports in one JSON line (the claims, the trickle's records)
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() != b"ready":
        raise SystemExit(f"child {mode} did not start: {line!r}")
    return proc


async def go_and_collect(
    procs: list[asyncio.subprocess.Process], timeout: float
) -> list[dict[str, Any]]:
    """Start the children's work at once; their reports, or an error after `timeout` s."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()

    async def report(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if await proc.wait() != 0 or not line:
            raise SystemExit(f"a child failed (exit {proc.returncode})")
        result: dict[str, Any] = json.loads(line)
        return result

    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*(report(proc) for proc in procs)))
    except TimeoutError:
        raise SystemExit(f"the children did not finish within {timeout:.0f} s") from None
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def fill_queue(url: str, events: Sequence[NewEvent]) -> float:
    """Append the requests, APPEND_BATCH per transaction; the seconds it took."""
    async with open_database(DatabaseSettings(url=url)) as db:
        started = time.perf_counter()
        for i in range(0, len(events), APPEND_BATCH):
            await db.store.append(events[i : i + APPEND_BATCH])
        return time.perf_counter() - started


async def settled_counts(url: str) -> tuple[int, int, int]:
    """sent notifications, other outcomes, still pending."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE event_type = 'notification.sent'),"
            " count(*) FILTER (WHERE event_type IN ('notification.canceled',"
            "                                       'notification.retry.requested')),"
            " (SELECT count(*) FROM tidings.pending_notifications)"
            " FROM tidings.events WHERE aggregate_type = 'notification'"
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def throughput_run(
    server: Server,
    template: str,
    events: Sequence[NewEvent],
    *,
    procs: int,
    workers: int,
    bulk: int,
    pool: int,
    log_level: str,
    profile: str | None = None,
) -> Throughput:
    name = f"bench_tp_{procs}_{workers}_{bulk}"
    url = await server.create(name, template)
    pg_lines: list[str] = []
    try:
        if profile:  # time the plpgsql functions too (the append, the queue's trigger)
            await server.admin(f"ALTER DATABASE {name} SET track_functions = 'pl'")
        fill_before = await db_counters(url)
        await fill_queue(url, events)
        db_before = await db_counters(url)
        fill_wal = (db_before["wal_bytes"] - fill_before["wal_bytes"]) / max(len(events), 1)
        opts = {
            "url": url,
            "bulk": bulk,
            "workers": workers,
            "pool": pool,
            "log_level": log_level,
            "profile": profile,
        }
        children = [await spawn("pool", opts) for _ in range(procs)]
        pg_before = server.cpu()
        go = time.time()
        reports = await go_and_collect(children, timeout=60 + len(events) / 50)
        pg_cpu = server.cpu() - pg_before
        sent, other, pending = await settled_counts(url)
        if profile:
            pg_lines = await pg_side(url, db_before, sent)
            pg_lines.append(
                f"    wal_bytes {fill_wal:.2f} per notification.requested appended before the"
                f" run ({APPEND_BATCH} per transaction, the queue's trigger included)"
            )
    finally:
        await server.drop(name)
    if sent != len(events) or other or pending:
        raise SystemExit(f"{name}: {sent} sent, {other} other outcomes, {pending} pending")
    done = max(r["ended"] for r in reports) - go  # the last outcome recorded, and looked again
    label = f"{procs} proc x {workers} worker{'s' if workers > 1 else ''}, bulk {bulk}"
    result = Throughput(
        label,
        procs,
        workers,
        bulk,
        sent,
        done,
        sum(r["cpu"] for r in reports),
        pg_cpu,
        [int(r["sent"]) for r in reports],
        log_level,
        *claim_stats(reports),
        pg_lines=pg_lines,
    )
    split = "+".join(f"{n:,}" for n in result.split)
    print(
        f"  {label + ('' if log_level == 'info' else f', log {log_level}'):<44} "
        f"{result.count:>7,} {result.seconds:>7.2f} s {result.rate:>8,.0f}/s  "
        f"cpu py {result.python_cpu:5.1f} s pg {result.pg_cpu:5.1f} s  split {split}"
        f"  claims {result.claims:,} {result.claim_seconds:5.2f} s, p50 first/last tenth "
        f"{result.claim_first * 1000:.1f}/{result.claim_last * 1000:.1f} ms",
        flush=True,
    )
    return result


async def db_counters(url: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted,"
            " tup_returned + tup_fetched, pg_current_wal_lsn() - '0/0'::pg_lsn"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        row = await cur.fetchone()
    # wal_bytes: the server's whole WAL (every database of the throwaway server), the
    # figure that bounds one PostgreSQL's write rate in docs/scaling.md.
    names = ("commits", "rollbacks", "inserted", "updated", "deleted", "read", "wal_bytes")
    return dict(zip(names, (int(v) for v in row or (0,) * len(names)), strict=True))


async def pg_side(url: str, before: dict[str, int], sent: int) -> list[str]:
    """The run's database counters and plpgsql function times, per notification."""
    await asyncio.sleep(1.0)  # backends report their counters at most once a second
    after = await db_counters(url)
    per = {key: (after[key] - before[key]) / sent for key in after}
    lines = [
        "  postgresql side, per notification sent (pg_stat_database): "
        + ", ".join(f"{key} {value:.2f}" for key, value in per.items()),
        "    (commits: the workers' transactions, and one per NOTIFY (append) that each LISTEN"
        " connection receives)",
    ]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT schemaname || '.' || funcname, calls, total_time, self_time"
            " FROM pg_stat_user_functions ORDER BY total_time DESC LIMIT 6"
        )
        for func, calls, total, own in await cur.fetchall():
            lines.append(
                f"    {func:<36} {calls:>8,} calls  total {total / 1000:6.2f} s "
                f"({total / calls * 1000:6.1f} us/call)  own {own / 1000:6.2f} s"
            )
    return lines


def profile_summary(path: str) -> list[str]:
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in raw.values()) or 1.0
    groups: dict[str, float] = {}
    for (filename, _, func), (_, _, tt, _, _) in raw.items():
        key = _area(filename, func)
        groups[key] = groups.get(key, 0.0) + tt
    lines = [f"  own time by area ({total:.1f} s profiled, cProfile overhead included):"]
    for key, tt in sorted(groups.items(), key=lambda kv: -kv[1])[:14]:
        lines.append(f"    {key:<44} {tt:7.2f} s {100 * tt / total:5.1f} %")
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:TOP]
    lines.append(f"  top {TOP} functions by own time (tottime; ncalls, cumtime):")
    for (filename, line, func), (_, nc, tt, ct, _) in rows:
        where = _short(filename, line, func)
        lines.append(f"    {tt:7.2f} s {100 * tt / total:5.1f} %  {nc:>9,}  {ct:7.2f} s  {where}")
    rows = sorted(
        ((k, v) for k, v in raw.items() if "tidings" in k[0] or "psycopg" in k[0]),
        key=lambda kv: -kv[1][3],
    )[:TOP]
    lines.append(f"  top {TOP} tidings/psycopg functions by cumulative time:")
    for (filename, line, func), (_, nc, _, ct, _) in rows:
        where = _short(filename, line, func)
        lines.append(f"    {ct:7.2f} s {100 * ct / total:5.1f} %  {nc:>9,}  {where}")
    return lines


def _area(filename: str, func: str) -> str:
    if filename == "~":
        if "poll" in func or "select" in func:
            return "waiting in epoll (idle: database round trips)"
        return "builtins: " + func.split(" of ")[0].replace("<built-in method ", "")[:30]
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/tidings/" in filename:
        return "tidings." + filename.split("/tidings/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in filename:
        rest = filename.split("/lib/python3", 1)[1].split("/", 1)
        return "stdlib " + (rest[1].split("/", 1)[0].removesuffix(".py") if len(rest) > 1 else "")
    return filename


def _short(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line} {func}"


# --- 2. pickup latency --------------------------------------------------------------


async def child_trickle(opts: dict[str, Any]) -> None:
    """Append source events at `rate` per second; report (nid, before, committed) each."""
    cipher = CodeCipher.from_settings(CRYPTO)
    rng = random.Random(7)
    async with open_database(DatabaseSettings(url=opts["url"], pool_max_size=2)) as db:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        records = []
        start = time.monotonic()
        for i in range(opts["count"]):
            delay = start + i / opts["rate"] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            user = rng.randrange(USERS)
            instance = f"inst-{user % INSTANCES}"
            payload = {
                "code": cipher.encrypt(f"{rng.randrange(10**6):06d}").model_dump(),
                "expiry": "10m",
                "url_template": "https://x/reset?code={{.Code}}",
            }
            event = NewEvent(
                instance_id=instance,
                aggregate_type="user",
                aggregate_id=f"user-{user}",
                event_type=SOURCE_EVENT,
                payload=payload,
                owner=f"org-{instance}",
            )
            before = time.time()
            appended = await db.store.append([event])
            committed = time.time()
            nid = notification_id(
                instance_id=instance,
                aggregate_type="user",
                aggregate_id=f"user-{user}",
                sequence=appended[0].sequence,
            )
            records.append((nid, before, committed))
        print(json.dumps(records), flush=True)


@dataclass
class Latency:
    count: int
    warmup: int
    missing: int
    total: list[float]
    projector_hop: list[float]
    worker_hop: list[float]
    append: list[float]
    achieved_rate: float


async def latency_run(server: Server, template: str, *, rate: float, seconds: float) -> Latency:
    name = "bench_latency"
    url = await server.create(name, template)
    warmup = int(rate)  # the first second: connections are opened lazily
    count = warmup + int(rate * seconds)
    settings = bench_settings(url)
    try:
        async with open_database(settings.database) as db:
            service, noop = noop_service(db, settings)
            stop = asyncio.Event()
            task = asyncio.create_task(
                service.run(stop=stop, workers=1, retry_workers=1, projector=True, until_idle=False)
            )
            await asyncio.sleep(1.5)  # the leader lock taken, the listeners connected
            child = await spawn("trickle", {"url": url, "rate": rate, "count": count})
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            line = await child.stdout.readline()
            if await child.wait() != 0 or not line:
                raise SystemExit(f"the appending child failed (exit {child.returncode})")
            records: list[tuple[str, float, float]] = [tuple(r) for r in json.loads(line)]
            noop.expect(r[0] for r in records)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(noop.all_sent.wait(), 30)
            stop.set()
            await task
            await service.close()
            async with db.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT aggregate_id, extract(epoch FROM created_at) FROM tidings.events"
                    " WHERE event_type = 'notification.requested'"
                )
                requested_at = {str(nid): float(at) for nid, at in await cur.fetchall()}
    finally:
        await server.drop(name)
    measured = records[warmup:]
    done = [r for r in measured if r[0] in noop.sent]
    span = measured[-1][2] - measured[0][1] if len(measured) > 1 else 1.0
    return Latency(
        count=len(measured),
        warmup=warmup,
        missing=len(measured) - len(done),
        total=[noop.sent[n] - committed for n, _, committed in done],
        projector_hop=[
            requested_at[n] - committed for n, _, committed in done if n in requested_at
        ],
        worker_hop=[noop.sent[n] - requested_at[n] for n, _, _ in done if n in requested_at],
        append=[committed - before for _, before, committed in measured],
        achieved_rate=len(measured) / span,
    )


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms_row(label: str, values: Sequence[float]) -> str:
    figures = " ".join(f"{pct(values, p) * 1000:8.1f}" for p in (50, 95, 99, 100))
    return f"  {label:<44} {figures}"


# --- 3. claim cost vs history -------------------------------------------------------

EVENTS_INSERT = f"""
INSERT INTO tidings.events (instance_id, aggregate_type, aggregate_id, sequence, event_type,
                            payload, owner, creator, position)
SELECT 'inst-' || (g %% {INSTANCES}), 'notification', %(prefix)s || g, %(sequence)s,
       %(event_type)s, %(payload)s, 'org-inst-' || (g %% {INSTANCES}), 'bench',
       (pg_current_xact_id()::text::bigint << 16) + %(offset)s + (g - %(lo)s)
FROM generate_series(%(lo)s, %(hi)s - 1) AS g
ORDER BY g
"""


@dataclass
class ClaimPhase:
    rate: float  # rows claimed per second, bulk 100, as the client sees it
    p50: float  # seconds per claim, median
    server_ms: float  # one claim's execution time on the server (EXPLAIN ANALYZE)
    buffers: int  # shared buffers that claim touched
    dead: int  # dead rows in the pending table (pg_stat_user_tables) before measuring


@dataclass
class ClaimCost:
    history: int
    write_seconds: float
    phases: dict[str, ClaimPhase] = field(default_factory=dict)
    events: int = 0
    sizes: str = ""


async def write_notifications(
    conn: psycopg.AsyncConnection[Any], prefix: str, count: int, *, settle: bool
) -> None:
    """`count` requested notifications (and their sent events), CHUNK per transaction."""
    request = Jsonb(request_events(1)[0].payload)
    sent = Jsonb({"channel": "filesystem", "provider_message_id": "noop", "attempt": 1})
    for lo in range(0, count, CHUNK):
        hi = min(lo + CHUNK, count)
        async with conn.transaction():
            params = {"prefix": prefix, "lo": lo, "hi": hi}
            await conn.execute(
                EVENTS_INSERT.encode(),
                {
                    **params,
                    "sequence": 1,
                    "offset": 0,
                    "event_type": "notification.requested",
                    "payload": request,
                },
            )
            if settle:
                await conn.execute(
                    EVENTS_INSERT.encode(),
                    {
                        **params,
                        "sequence": 2,
                        "offset": hi - lo,
                        "event_type": "notification.sent",
                        "payload": sent,
                    },
                )


RELEASE = sql.SQL(
    "UPDATE tidings.pending_notifications p SET leased_until = NULL, lease_owner = NULL"
    " FROM unnest(%(instance_ids)s::text[], %(ids)s::text[]) AS k(i, n)"
    " WHERE p.instance_id = k.i AND p.notification_id = k.n"
)
WARMUP_CLAIMS = 5
AFTER_VACUUM = "after VACUUM ANALYZE"


async def measure_claims(
    url: str, claims: int, active_since: timedelta | None
) -> tuple[float, float, float, int]:
    """Steady-state claims of 100: each claim's rows are released again (untimed), so
    every claim faces the same queue. Rows claimed per second, the median claim (s),
    and the server's own median execution time (ms) and buffers (EXPLAIN ANALYZE)."""
    # Imported here: peers.py --baseline imports this module over older checkouts.
    from tidings.workers.queue import claim_statement

    settings = bench_settings(url, pool=2)
    async with open_database(settings.database) as db:
        queue = PendingQueue(pool=db.pool)
        durations: list[float] = []
        rows = 0
        explain = b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + claim_statement(100)
        plans: list[tuple[float, int]] = []
        for k in range(WARMUP_CLAIMS + claims):
            now = now_utc()
            since = now - active_since if active_since else None
            started = time.perf_counter()
            claimed = await queue.claim(
                kind="request",
                limit=100,
                now=now,
                owner="bench",
                lease=timedelta(minutes=5),
                active_since=since,
            )
            elapsed = time.perf_counter() - started
            if len(claimed) != 100:
                raise SystemExit(f"a claim returned {len(claimed)} rows, expected 100")
            if k >= WARMUP_CLAIMS:
                durations.append(elapsed)
                rows += len(claimed)
            async with db.pool.connection() as conn:
                await conn.execute(
                    RELEASE,
                    {
                        "instance_ids": [c.instance_id for c in claimed],
                        "ids": [c.notification_id for c in claimed],
                    },
                )
                if k >= WARMUP_CLAIMS and k % max(claims // 5, 1) == 0:  # 5 samples, rolled back
                    params = {
                        "kind": "request",
                        "bulk": 100,
                        "now": now,
                        "owner": "bench",
                        "lease_until": now + timedelta(minutes=5),
                        "active_since": since,
                    }
                    async with conn.transaction(force_rollback=True):
                        cur = await conn.execute(explain, params)
                        row = await cur.fetchone()
                    plan = row[0][0] if row else {}
                    top = plan.get("Plan", {})
                    touched = int(top.get("Shared Hit Blocks", 0))
                    touched += int(top.get("Shared Read Blocks", 0))
                    plans.append((float(plan.get("Execution Time", 0.0)), touched))
    server_ms = pct([ms for ms, _ in plans], 50)
    buffers = int(pct([float(b) for _, b in plans], 50))
    return rows / sum(durations), pct(durations, 50), server_ms, buffers


async def dead_rows(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables"
            " WHERE schemaname = 'tidings' AND relname = 'pending_notifications'"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else -1


async def claim_run(
    server: Server, template: str, *, history: int, pending: int, claims: int
) -> ClaimCost:
    name = f"bench_claim_{history}"
    url = await server.create(name, template)
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            # No autovacuum in the middle of a measurement (it would take one of the two
            # cores): "as written" keeps the history's dead rows, then VACUUM clears them.
            for table in ("tidings.events", "tidings.pending_notifications"):
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)".encode())
            started = time.perf_counter()
            await write_notifications(conn, "settled-", history, settle=True)
            result = ClaimCost(history=history, write_seconds=time.perf_counter() - started)
            cur = await conn.execute("SELECT count(*) FROM tidings.pending_notifications")
            row = await cur.fetchone()
            if not row or row[0] != 0:
                raise SystemExit(f"the pending table holds {row} rows after settling the history")
            await write_notifications(conn, "open-", pending, settle=False)
            cur = await conn.execute(
                "SELECT (SELECT count(*) FROM tidings.pending_notifications),"
                " (SELECT count(*) FROM tidings.events),"
                " pg_size_pretty(pg_total_relation_size('tidings.events')),"
                " pg_size_pretty(pg_total_relation_size('tidings.pending_notifications'))"
            )
            row = await cur.fetchone()
            assert row is not None
            if row[0] != pending:
                raise SystemExit(f"the pending table holds {row[0]} rows, expected {pending}")
            result.events, result.sizes = int(row[1]), f"events {row[2]}, pending {row[3]}"
        for phase, command in (("as written", "ANALYZE"), (AFTER_VACUUM, "VACUUM ANALYZE")):
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(command.encode())
            dead = await dead_rows(url)
            for suffix, window in (("", None), (", active window 1h", timedelta(hours=1))):
                measured = await measure_claims(url, claims, window)
                result.phases[phase + suffix] = ClaimPhase(*measured, dead=dead)
    finally:
        await server.drop(name)
    return result


# --- 1b. the ingredients of one notification ----------------------------------------


@dataclass
class Ingredient:
    label: str
    count: int  # notifications covered
    wall: float
    python_cpu: float
    pg_cpu: float

    def row(self) -> str:
        per = 1e6 / self.count
        return (
            f"  {self.label:<52} {self.wall * per:>8,.0f} {self.python_cpu * per:>8,.0f} "
            f"{self.pg_cpu * per:>8,.0f}"
        )


class Meter:
    """Wall, this process's CPU and PostgreSQL's CPU over a block."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def __enter__(self) -> Meter:
        self._start = (time.perf_counter(), time.process_time(), self._server.cpu())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu, pg = self._start
        self.wall = time.perf_counter() - wall
        self.python_cpu = time.process_time() - cpu
        self.pg_cpu = self._server.cpu() - pg

    def ingredient(self, label: str, count: int) -> Ingredient:
        return Ingredient(label, count, self.wall, self.python_cpu, self.pg_cpu)


USERS_BATCH = sql.SQL(
    "SELECT u.* FROM tidings.users u"
    " JOIN unnest(%(instance_ids)s::text[], %(user_ids)s::text[]) AS k(i, u)"
    "   ON u.instance_id = k.i AND u.user_id = k.u"
)


def outcome_events(claimed: Claimed, request: Request) -> list[NewEvent]:
    """What AttemptRunner appends for a sent notification: sent + the source's sent event."""
    return sent_events(claimed, request, "filesystem", "noop")


async def ingredients_run(server: Server, template: str, count: int) -> list[Ingredient]:
    """Each step of an attempt on its own, one at a time (sequential, one connection),
    as the worker does it, and batched per 100 as it could be."""
    name = "bench_ingredients"
    url = await server.create(name, template)
    count -= count % 200
    half = count // 2
    found: list[Ingredient] = []
    settings = bench_settings(url, pool=2)
    try:
        await fill_queue(url, request_events(count))
        async with open_database(settings.database) as db:
            queue = PendingQueue(pool=db.pool)
            claimed: list[Claimed] = []
            with Meter(server) as meter:
                while batch := await queue.claim(
                    kind="request",
                    limit=100,
                    now=now_utc(),
                    lease=timedelta(minutes=5),
                    owner="bench",
                ):
                    claimed += batch
            found.append(meter.ingredient("claim, bulk 100 (per notification)", len(claimed)))
            with Meter(server) as meter:
                requests = [Request.model_validate(c.request) for c in claimed]
            found.append(meter.ingredient("read the request (pydantic)", len(claimed)))
            users: list[NotifyUser | None] = []
            with Meter(server) as meter:
                for c, r in zip(claimed, requests, strict=True):
                    async with db.pool.connection() as conn:
                        users.append(
                            await notify_user(conn, instance_id=c.instance_id, user_id=r.user_id)
                        )
            found.append(
                meter.ingredient("user lookup: a query + transaction per notification", count)
            )
            with Meter(server) as meter:
                async with db.pool.connection() as conn:
                    for i in range(0, count, 100):
                        part = list(zip(claimed[i : i + 100], requests[i : i + 100], strict=True))
                        cur = await conn.execute(
                            USERS_BATCH,
                            {
                                "instance_ids": [c.instance_id for c, _ in part],
                                "user_ids": [r.user_id for _, r in part],
                            },
                        )
                        rows = await cur.fetchall()
                        assert len(rows) == len(part)
                        await conn.commit()
            found.append(meter.ingredient("user lookup: one query per bulk of 100", count))
            composer = build_composer(settings)
            with Meter(server) as meter:
                for c, r, u in zip(claimed, requests, users, strict=True):
                    assert u is not None
                    composer.compose(
                        notification_id=c.notification_id,
                        instance_id=c.instance_id,
                        attempt=c.attempt,
                        request=r,
                        user=u,
                    )
            found.append(meter.ingredient("compose: decrypt, render texts + html + txt", count))
            with Meter(server) as meter:
                for c, r in zip(claimed[:half], requests[:half], strict=True):
                    await db.store.append(outcome_events(c, r))
            found.append(
                meter.ingredient("record outcome: one append + commit per notification", half)
            )
            with Meter(server) as meter:
                for i in range(half, count, 100):
                    pairs = zip(claimed[i : i + 100], requests[i : i + 100], strict=True)
                    events = [event for c, r in pairs for event in outcome_events(c, r)]
                    await db.store.append(events)
            found.append(
                meter.ingredient("record outcome: one append + commit per bulk of 100", half)
            )
            with Meter(server) as meter:
                async with db.pool.connection() as conn:
                    for _ in range(count):
                        await conn.execute("SELECT 1")
            found.append(meter.ingredient("for scale: one round trip (SELECT 1)", count))
            sent, other, pending = await settled_counts(url)
            if sent != count or other or pending:
                raise SystemExit(f"ingredients: {sent} sent, {other} other, {pending} pending")
    finally:
        await server.drop(name)
    return found


# --- the run ------------------------------------------------------------------------


@dataclass
class Options:
    notifications: int
    profile_notifications: int
    bulks: list[int]
    workers: list[int]
    procs: list[int]
    pool: int
    log_level: str
    rate: float
    seconds: float
    history: list[int]
    pending: int
    claims: int
    only: set[str]
    ingredients: int


def product_fingerprint() -> tuple[str, int, float]:
    """sha256 of tidings' sources (py, sql, yaml, templates), their count, newest mtime."""
    root = Path(tidings.__file__).parent
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc")
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    newest = max((p.stat().st_mtime for p in files), default=0.0)
    return digest.hexdigest()[:12], len(files), newest


def describe_fingerprint(fingerprint: tuple[str, int, float]) -> str:
    digest, count, newest = fingerprint
    changed = datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"tidings sources sha256 {digest} ({count} files, newest change {changed})"


async def bench(server: Server, opts: Options) -> None:
    fingerprint = product_fingerprint()
    print("machine")
    details = [
        *machine_details(),
        *await server_details(server.admin_uri),
        ("product", describe_fingerprint(fingerprint)),
    ]
    for key, value in details:
        print(f"  {key:<11} {value}")
    print(
        f"\nsetting up: template database with {USERS:,} users in {INSTANCES} instances, projected",
        flush=True,
    )
    template = "bench_template"
    await make_template(server, template)
    throughput: list[Throughput] = []
    profile_lines: list[str] = []
    latency: Latency | None = None
    claims: list[ClaimCost] = []

    if "throughput" in opts.only:
        events = request_events(opts.notifications)
        url = await server.create("bench_fill", template)
        fill = await fill_queue(url, events)
        await server.drop("bench_fill")
        print(
            f"\n1. throughput, notification.requested -> sent, {opts.notifications:,} "
            f"notifications (appending them, {APPEND_BATCH} per transaction: "
            f"{opts.notifications / fill:,.0f}/s, not counted)"
        )
        print(
            "  (cpu: python = the worker processes, pg = every PostgreSQL process; claims: time"
            " spent in PendingQueue.claim, all\n  workers summed, which includes waiting for a"
            " pooled connection and for the event loop; p50 of each process's first and last tenth)"
        )
        print(f"  {'run':<44} {'sent':>7} {'wall':>9} {'rate':>10}")
        for procs in opts.procs:
            for bulk in opts.bulks:
                for workers in opts.workers:
                    throughput.append(
                        await throughput_run(
                            server,
                            template,
                            events,
                            procs=procs,
                            workers=workers,
                            bulk=bulk,
                            pool=opts.pool,
                            log_level=opts.log_level,
                        )
                    )
        single = [t for t in throughput if t.procs == 1 and t.bulk == max(opts.bulks)]
        best = max(single or throughput, key=lambda t: t.rate)
        if opts.log_level == "info":
            throughput.append(
                await throughput_run(
                    server,
                    template,
                    events,
                    procs=1,
                    workers=best.workers,
                    bulk=best.bulk,
                    pool=opts.pool,
                    log_level="warning",
                )
            )
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "pool.prof")
            sample = events[: opts.profile_notifications]
            print(
                f"\n  profiling one process x {best.workers} workers, bulk {best.bulk}, "
                f"{len(sample):,} notifications, under cProfile:",
                flush=True,
            )
            profiled = await throughput_run(
                server,
                template,
                sample,
                procs=1,
                workers=best.workers,
                bulk=best.bulk,
                pool=opts.pool,
                log_level=opts.log_level,
                profile=path,
            )
            profile_lines = [
                f"  (under cProfile: {profiled.rate:,.0f}/s, python cpu "
                f"{profiled.python_cpu:.1f} s, postgres cpu {profiled.pg_cpu:.1f} s)",
                *profile_summary(path),
                *profiled.pg_lines,
            ]
        print("\n".join(profile_lines))

    if "ingredients" in opts.only:
        print(
            f"\n1b. ingredients of one notification, one step at a time on one connection "
            f"({opts.ingredients:,} notifications; microseconds per notification)"
        )
        print(f"  {'step':<52} {'wall':>8} {'py cpu':>8} {'pg cpu':>8}")
        ingredients = await ingredients_run(server, template, opts.ingredients)
        for ingredient in ingredients:
            print(ingredient.row())

    if "latency" in opts.only:
        print(
            f"\n2. pickup latency: {SOURCE_EVENT} at {opts.rate:g}/s for {opts.seconds:g} s, "
            "service running (projector + 1 request + 1 retry worker, bulk 10)",
            flush=True,
        )
        latency = await latency_run(server, template, rate=opts.rate, seconds=opts.seconds)
        print_latency(latency)

    if "claim" in opts.only:
        print(
            f"\n3. claim cost: bulk-100 claims from {opts.pending:,} open notifications, "
            f"{opts.claims} claims per phase (after {WARMUP_CLAIMS} unmeasured), each claim's "
            "rows released again untimed; against settled histories",
            flush=True,
        )
        for history in opts.history:
            cost = await claim_run(
                server, template, history=history, pending=opts.pending, claims=opts.claims
            )
            claims.append(cost)
            print(
                f"  history {history:>9,} settled: written in {cost.write_seconds:6.1f} s "
                f"({2 * history / cost.write_seconds:,.0f} events/s, trigger firing); "
                f"{cost.events:,} events; {cost.sizes}"
            )
            for phase, m in cost.phases.items():
                print(
                    f"    {phase:<38} {m.rate:>7,.0f} rows/s  claim p50 {m.p50 * 1000:5.2f} ms"
                    f" (server {m.server_ms:5.2f} ms, {m.buffers:,} buffers)"
                    f"  pending dead rows {m.dead:,}",
                    flush=True,
                )

    print_summary(opts, details, throughput, latency, claims)
    now = product_fingerprint()
    if now[0] != fingerprint[0]:
        print(
            f"\n  WARNING: the product changed during the run: now {describe_fingerprint(now)};"
            " the figures above mix versions"
        )


def print_latency(lat: Latency) -> None:
    print(
        f"  {lat.count:,} source events measured (first {lat.warmup} excluded as warm-up), "
        f"{lat.achieved_rate:.1f}/s achieved; {lat.missing} not sent within 30 s"
    )
    print(f"  {'ms':<44} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    print(ms_row("source committed -> channel send (total)", lat.total))
    print(ms_row("  source committed -> request appended", lat.projector_hop))
    print(ms_row("  request appended -> channel send", lat.worker_hop))
    print(ms_row("(the source append itself, one per tx)", lat.append))
    print("  'request appended' is the projector transaction's start (created_at = now()).")


def print_summary(
    opts: Options,
    details: list[tuple[str, str]],
    throughput: list[Throughput],
    latency: Latency | None,
    claims: list[ClaimCost],
) -> None:
    print("\n" + "=" * 100 + "\nsummary")
    for key, value in details:
        print(f"  {key:<11} {value}")
    if throughput:
        print(
            f"\n  throughput, no-op channel, {opts.notifications:,} notifications, "
            f"log level {opts.log_level}, pool_max_size {opts.pool} per process"
        )
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        print(
            f"  {'procs':>5} {'bulk':>5} {'workers':>7} {'notif/s':>9} {'py cpu/notif':>13} "
            f"{'pg cpu/notif':>13} {'cpu ceiling':>12}  note"
        )
        for t in throughput:
            note = "" if t.log_level == opts.log_level else f"log level {t.log_level}"
            # asyncio runs a process's Python on one core at most
            ceiling = min(
                cores * t.count / (t.python_cpu + t.pg_cpu), t.procs * t.count / t.python_cpu
            )
            print(
                f"  {t.procs:>5} {t.bulk:>5} {t.workers:>7} {t.rate:>9,.0f} "
                f"{t.python_cpu / t.count * 1e6:>10,.0f} us {t.pg_cpu / t.count * 1e6:>10,.0f} us"
                f" {ceiling:>10,.0f}/s  {note}"
            )
        print(
            f"  cpu ceiling: the smaller of {cores} cores / (python + postgresql cpu per "
            "notification) and processes / python cpu per notification (one core per process)"
        )
        single = [
            t
            for t in throughput
            if t.procs == 1 and t.bulk == 100 and t.log_level == opts.log_level
        ]
        if single:
            best = max(single, key=lambda t: t.rate)
            verdict = "met" if best.rate >= 2000 else "MISSED"
            print(
                f"  target >= 2,000/s, 1 process, bulk 100: {best.rate:,.0f}/s with "
                f"{best.workers} workers: {verdict}"
            )
    if latency is not None:
        p99 = pct(latency.total, 99) * 1000
        print(
            f"\n  pickup latency at {opts.rate:g}/s, ms: p50 {pct(latency.total, 50) * 1000:.1f}, "
            f"p95 {pct(latency.total, 95) * 1000:.1f}, p99 {p99:.1f}, "
            f"max {pct(latency.total, 100) * 1000:.1f}; target p99 < 50 ms: "
            f"{'met' if p99 < 50 else 'MISSED'}"
        )
    if len(claims) >= 1:
        print(f"\n  claim rows/s (bulk 100) from {opts.pending:,} open notifications")
        phases = list(claims[0].phases)
        header = "".join(f"{c.history:>14,}" for c in claims)
        print(f"  {'phase / settled history':<40}{header}   ratio (last/first)")
        for phase in phases:
            rates = [c.phases[phase].rate for c in claims]
            print(
                f"  {phase:<40}"
                + "".join(f"{r:>14,.0f}" for r in rates)
                + f"   {rates[-1] / rates[0]:.2f}"
            )
        if len(claims) > 1:
            ratio = claims[-1].phases["as written"].rate / claims[0].phases["as written"].rate
            after = claims[-1].phases[AFTER_VACUUM].rate
            after_ratio = after / claims[0].phases[AFTER_VACUUM].rate
            print(
                f"  target: largest history within 20 % of the smallest: as written "
                f"{ratio:.2f} ({'met' if ratio >= 0.8 else 'MISSED'}), after vacuum "
                f"{after_ratio:.2f} ({'met' if after_ratio >= 0.8 else 'MISSED'})"
            )


def parse_options(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (~2 minutes)")
    parser.add_argument("--notifications", type=int, help="N per throughput run (20000)")
    parser.add_argument("--profile-notifications", type=int, help="N of the profiled run (N/4)")
    parser.add_argument("--bulks", default="10,100", help="bulk_limit values (10,100)")
    parser.add_argument("--workers", default="1,4", help="request workers per process (1,4)")
    parser.add_argument("--procs", default="1,2", help="processes sharing the queue (1,2)")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=10,
        help="database.pool_max_size per process (10, the default setting)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--rate", type=float, default=50.0, help="latency: events/s (50)")
    parser.add_argument("--seconds", type=float, help="latency: trickle seconds (20)")
    parser.add_argument("--history", help="claim: settled history sizes (10000,1000000)")
    parser.add_argument("--pending", type=int, help="claim: open notifications (10000)")
    parser.add_argument("--claims", type=int, help="claim: claims measured per phase (300)")
    parser.add_argument(
        "--only",
        default="throughput,ingredients,latency,claim",
        help="sections to run (throughput,ingredients,latency,claim)",
    )
    parser.add_argument("--ingredients", type=int, help="1b: notifications (4000)")
    parser.add_argument("--child", choices=["pool", "trickle"], help=argparse.SUPPRESS)
    parser.add_argument("--child-opts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    n = args.notifications or (2_000 if quick else 20_000)
    history = args.history or ("1000,100000" if quick else "10000,1000000")
    opts = Options(
        notifications=n,
        profile_notifications=args.profile_notifications or max(n // 4, 1),
        bulks=_ints(args.bulks),
        workers=_ints(args.workers),
        procs=_ints(args.procs),
        pool=args.pool_size,
        log_level=args.log_level,
        rate=args.rate,
        seconds=args.seconds or (5.0 if quick else 20.0),
        history=_ints(history),
        pending=args.pending or (2_000 if quick else 10_000),
        claims=args.claims or (100 if quick else 300),
        only={s.strip() for s in args.only.split(",") if s.strip()},
        ingredients=args.ingredients or (1_000 if quick else 4_000),
    )
    if unknown := opts.only - {"throughput", "ingredients", "latency", "claim"}:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if opts.pending % 100 or min(opts.history) < 1 or opts.notifications < 1:
        parser.error("--pending must be a multiple of 100; sizes must be positive")
    return args, opts


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    for name in [n for n in os.environ if n.startswith("TIDINGS_")]:
        del os.environ[name]  # settings from the environment would override the bench's own
    args, opts = parse_options()
    if args.child == "pool":
        asyncio.run(child_pool(json.loads(args.child_opts)))
        return
    if args.child == "trickle":
        asyncio.run(child_trickle(json.loads(args.child_opts)))
        return
    configure_logging(opts.log_level)
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
        asyncio.run(bench(server, opts))
        print(f"\n  benchmark wall time {time.perf_counter() - started:,.0f} s")
    finally:
        pg.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
