"""Benchmark of live in-app delivery: `tidings serve` holding SSE streams for many users.

By default everything is real and in separate processes, on a throwaway
embedded PostgreSQL (pgserver): one `tidings serve` (uvicorn, GET
/v1/me/stream, users signed in with HS256 JWTs), client processes each
holding thousands of SSE connections (a minimal HTTP/1.1 SSE reader on
asyncio, one connection per user), and a producer process appending in-app
notifications as the worker pool does (notification.requested, then
notification.sent with the rendered content; the feed trigger keeps the read
model, the hub sees the sent event). Figures are medians over `--reps`
repetitions, printed, never asserted:

a. idle: the serve process's RSS per idle connection ((RSS with N open - RSS
   with none) / N; a fresh serve per repetition) and its CPU while nothing
   happens (heartbeats every inapp.heartbeat, the hub's poll);
b. fan-out: the producer appends `--rate` notifications/s to random users among
   the N; latency = the client's receipt minus the commit (the producer's clock
   right after its append returned; one machine, one clock);
c. reconnect storm: halfway through each load, every client drops its
   connection (RST) and reconnects with Last-Event-ID while the load goes on;
   gaps and duplicates are counted per connection against the log (positions
   of the user's notification.sent), and the time until every client has
   reconnected and holds everything committed before it reconnected;
d. b and c with two serve processes, the users split between them, and
   `--both` users connected to both (each connection must get every item).

    .venv/bin/python bench/streams.py                 # 10,000 clients, 1,000/s, a few minutes
    .venv/bin/python bench/streams.py --quick         # 1,000 clients, 200/s, short
    .venv/bin/python bench/streams.py --hub-only      # the hub alone in-process (no HTTP)

Each serve process and client process needs a file descriptor per connection:
the script raises its RLIMIT_NOFILE to the hard limit (the children inherit it)
and says so when the hard limit is too low.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from eventstore import machine_details  # bench/eventstore.py (this script's folder)

from tidings.config import DatabaseSettings
from tidings.eventstore import NewEvent, migrate, open_database
from tidings.feeds.hub import FeedHub, SlowConsumer, StreamClosed, Subscription
from tidings.notification.events import SENT, InAppContent, Sent
from tidings.notification.requests import (
    NOTIFICATION_AGGREGATE,
    REQUESTED,
    NotificationRequested,
    Request,
    SourceRef,
)

INSTANCE = "bench"
JWT_SECRET = "bench-streams-shared-secret-32-bytes!"
CRYPTO_KEY = "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI="  # 32 bytes, base64
OPEN_AT_ONCE = 200  # connections a client process opens concurrently
STORM_MARGIN = 1.0  # seconds before a storm whose commits count with it, not with the calm
SERVE = [sys.executable, "-m", "tidings"]  # how a serve process is started


def inapp_events(nid: str, user_id: str) -> list[NewEvent]:
    """What the pool appends for one in-app notification: requested, then sent."""
    request = Request(
        user_id=user_id,
        resource_owner="org-bench",
        source=SourceRef(aggregate_type="user", aggregate_id=user_id, sequence=1,
                         event_type="bench", position=0, created_at=datetime.now(UTC)),
        message_type="DomainClaimed",
        channel="inapp",
        sent_event_type="bench.sent",
    )  # fmt: skip
    content = InAppContent(
        user_id=user_id, message_type="DomainClaimed", lang="en", title="Export ready",
        body="Your export of 1,234 rows is ready to download.",
        action_url=f"https://app.example.com/exports/{nid}", data={"rows": 1234},
    )  # fmt: skip
    sent = Sent(channel="inapp", provider_message_id=f"inapp-{nid}", attempt=1, inapp=content)
    common = {"instance_id": INSTANCE, "aggregate_type": NOTIFICATION_AGGREGATE,
              "aggregate_id": nid, "creator": "bench"}  # fmt: skip
    return [
        NewEvent(**common, event_type=REQUESTED, expected_sequence=0,
                 payload=NotificationRequested(request=request).model_dump(mode="json")),
        NewEvent(**common, event_type=SENT, expected_sequence=1, payload=sent.payload()),
    ]  # fmt: skip


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(samples: list[float]) -> str:
    """Latency figures; NaN samples are notifications that never arrived."""
    values = [v for v in samples if v == v]
    if not values:
        return "no samples"
    lost = len(samples) - len(values)
    return (
        f"p50 {statistics.median(values) * 1000:7.1f} ms  p99 {pct(values, 99) * 1000:7.1f} ms  "
        f"max {max(values) * 1000:7.1f} ms  ({len(values):,} received, {lost} not)"
    )


def load_average() -> str:
    """The machine's load: on a shared machine, what the figures were measured under."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def reps_of(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


# --- the load process ---------------------------------------------------------------


async def child_load(conninfo: str, users: list[str], rate: float, seconds: float) -> None:
    """Append in-app notifications at `rate`/s; print {nid: commit time} when done.

    As the worker pool records a bulk's outcomes in one transaction, the load
    appends what is due every 10 ms in one transaction (at most 4 at once);
    each notification's commit time is when its append returned.
    """
    settings = DatabaseSettings(url=conninfo, pool_min_size=2, pool_max_size=4)
    rng = random.Random(os.getpid())
    commits: dict[str, float] = {}
    async with open_database(settings) as db:
        loop = asyncio.get_running_loop()
        start = loop.time()
        in_flight = asyncio.Semaphore(4)
        tasks: list[asyncio.Task[None]] = []

        async def bulk(nids: list[str]) -> None:
            async with in_flight:
                events = [e for nid in nids for e in inapp_events(nid, rng.choice(users))]
                await db.store.append(events)
                done = time.time()
                commits.update(dict.fromkeys(nids, done))

        made = 0
        while (now := loop.time()) - start < seconds:
            due = int((now - start) * rate) - made
            if due > 0:
                tasks.append(asyncio.create_task(bulk([uuid.uuid4().hex for _ in range(due)])))
                made += due
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
    print(json.dumps(commits))


async def spawn_load(conninfo: str, users: list[str], rate: float, seconds: float) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", "load", "--conninfo", conninfo,
        "--users-file", _users_file(users), "--rate", str(rate), "--seconds", str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def load_commits(process: Any) -> dict[str, float]:
    out, _ = await process.communicate()
    commits: dict[str, float] = json.loads(out)
    return commits


# --- the client processes: SSE connections ------------------------------------------


@dataclass(eq=False)
class Conn:
    """One SSE connection of one user to one serve process (kept across reconnects)."""

    index: int
    user: str
    serve: int  # which serve process (0 or 1)
    token: str
    last: int | None = None  # the last SSE id received
    gen: int = 0  # how many times it was (re)opened
    sent_at: float = 0.0  # when the request of this generation was sent
    headers_at: float = 0.0  # when its 200 came
    transport: Any = None
    dropping: bool = False


class SSEReader(asyncio.Protocol):
    """A minimal HTTP/1.1 client for one text/event-stream: chunked body, SSE fields."""

    def __init__(self, owner: ClientProcess, conn: Conn, port: int) -> None:
        self.owner = owner
        self.conn = conn
        self.port = port
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.headers_done = False
        self.buf = b""
        self.chunk_left = 0
        self.body = b""

    def connection_made(self, transport: Any) -> None:
        conn = self.conn
        conn.transport = transport
        resume = f"Last-Event-ID: {conn.last}\r\n" if conn.last is not None else ""
        conn.sent_at = time.time()
        transport.write(
            f"GET /v1/me/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {conn.token}\r\nAccept: text/event-stream\r\n"
            f"{resume}\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.headers_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.headers_done = True
            status = int(self.head[9:12])
            data, self.head = self.head[end + 4 :], b""
            if status != 200:
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(f"HTTP {status}: {data[:200]!r}"))
                self.conn.transport.close()
                return
            self.conn.headers_at = now
            if not self.ready.done():
                self.ready.set_result(None)
        self.buf += data
        while self.buf:
            if self.chunk_left == 0:
                line_end = self.buf.find(b"\r\n")
                if line_end < 0:
                    break
                line = self.buf[:line_end]
                self.buf = self.buf[line_end + 2 :]
                if not line:
                    continue  # the CRLF that ends a chunk's data
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    break  # the end of the body: the server ended the stream
                self.chunk_left = size
            take = self.buf[: self.chunk_left]
            self.buf = self.buf[len(take) :]
            self.chunk_left -= len(take)
            self.body += take
        while (end := self.body.find(b"\n\n")) >= 0:
            block, self.body = self.body[:end], self.body[end + 2 :]
            self._event(block.decode(), now)

    def _event(self, block: str, now: float) -> None:
        kind = "message"
        position = None
        data = ""
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name == "event":
                kind = value
            elif name == "id":
                position = int(value)
            elif name == "data":
                data = value
        if position is not None:
            self.conn.last = position
        if kind == "message" and position is not None:
            nid = json.loads(data)["id"]
            self.owner.received.append((self.conn.index, self.conn.gen, position, nid, now))
        elif kind in ("closed", "reset"):
            self.owner.closed_by_server[kind] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("closed before the response"))
        elif not self.conn.dropping:
            self.owner.closed_by_server["connection lost"] += 1


class ClientProcess:
    """A client process's connections; commands come on stdin, one JSON line each."""

    def __init__(self, plans: dict[str, list[tuple[str, int]]]) -> None:
        import jwt

        self.plans = plans
        tokens: dict[str, str] = {}
        exp = int(time.time()) + 6 * 3600
        for plan in plans.values():
            for user, _ in plan:
                if user not in tokens:
                    claims = {"sub": user, "instance": INSTANCE, "exp": exp}
                    tokens[user] = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        self.tokens = tokens
        self.conns: list[Conn] = []
        self.ports: list[int] = []
        self.received: list[tuple[int, int, int, str, float]] = []
        self.closed_by_server: dict[str, int] = defaultdict(int)
        self.failed: list[str] = []

    async def _open(self, conn: Conn, gate: asyncio.Semaphore) -> None:
        async with gate:
            loop = asyncio.get_running_loop()
            conn.gen += 1
            conn.dropping = False
            port = self.ports[conn.serve]
            reader = SSEReader(self, conn, port)
            try:
                await loop.create_connection(lambda: reader, "127.0.0.1", port)
                await asyncio.wait_for(reader.ready, 120)
            except (OSError, RuntimeError, TimeoutError) as exc:
                self.failed.append(f"{conn.user}: {type(exc).__name__}: {exc}"[:300])

    async def _open_all(self) -> float:
        gate = asyncio.Semaphore(OPEN_AT_ONCE)
        await asyncio.gather(*(self._open(c, gate) for c in self.conns))
        return time.time()

    def _drop(self, conn: Conn) -> None:
        """Gone without a goodbye: an RST, so no TIME_WAIT piles up on the client's ports."""
        conn.dropping = True
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()

    async def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "connect":  # open every connection of a plan, resuming after `after`
            self.ports = args["ports"]
            self.conns = [
                Conn(index=i, user=user, serve=serve, token=self.tokens[user], last=args["after"])
                for i, (user, serve) in enumerate(self.plans[args["plan"]])
            ]
            self.failed.clear()
            done = await self._open_all()
            return {"done": done, "failed": self.failed[:5], "failures": len(self.failed)}
        if name == "storm":  # every connection drops, then reconnects with Last-Event-ID
            for conn in self.conns:
                self._drop(conn)
            await asyncio.sleep(0)
            self.failed.clear()
            done = await self._open_all()
            return {"done": done, "failed": self.failed[:5], "failures": len(self.failed)}
        if name == "count":
            return {"messages": len(self.received)}
        if name == "report":  # what arrived since the last report
            conns = [(c.user, c.serve, c.sent_at, c.headers_at, c.gen) for c in self.conns]
            closed = dict(self.closed_by_server)
            report = {"conns": conns, "received": self.received, "closed": closed}
            path = _temp_json("tidings-bench-sse-", report)
            self.received = []
            self.closed_by_server.clear()
            return {"path": str(path)}
        if name == "close":
            for conn in self.conns:
                self._drop(conn)
            self.conns = []
            return {}
        raise ValueError(f"unknown command {name!r}")


async def child_clients(plans_file: str) -> None:
    plans = _read_json(plans_file)
    clients = ClientProcess({k: [(u, s) for u, s in v] for k, v in plans.items()})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        request = json.loads(line)
        if request["cmd"] == "exit":
            break
        reply = await clients.command(request["cmd"], request.get("args", {}))
        print(json.dumps(reply), flush=True)


class Clients:
    """The client processes, driven over their stdin/stdout."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs
        self.ps = [psutil.Process(p.pid) for p in procs]

    def cpu(self) -> float:
        """CPU seconds of all client processes together."""
        return sum(float(t.user + t.system) for t in (p.cpu_times() for p in self.ps))

    @classmethod
    async def start(cls, plans: list[dict[str, list[tuple[str, int]]]]) -> Clients:
        procs = []
        for plan in plans:
            path = _temp_json("tidings-bench-plan-", plan)
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--child",
                    "clients",
                    "--plans-file",
                    str(path),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=2**20,
                )
            )
        clients = cls(procs)
        for proc in procs:
            await clients._reply(proc)
        return clients

    async def _reply(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        if not line:
            raise SystemExit("a client process ended; see its stderr above")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def all(self, cmd: str, **args: Any) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            await proc.stdin.drain()
        return list(await asyncio.gather(*(self._reply(p) for p in self.procs)))

    async def reports(self) -> list[dict[str, Any]]:
        out = []
        for reply in await self.all("report"):
            out.append(_read_json(reply["path"], remove=True))
        return out

    async def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b'{"cmd": "exit"}\n')
            proc.stdin.close()
        for proc in self.procs:
            await proc.wait()


# --- the serve processes ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Serve:
    """One `tidings serve` process on 127.0.0.1 and a free port."""

    def __init__(
        self, conninfo: str, root: Path, name: str, max_connections: int, heartbeat: float
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = root / f"serve-{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_DATABASE_URL=conninfo,
            TIDINGS_DATA_DIR=str(root / f"data-{name}"),
            TIDINGS_CRYPTO_KEYS=f"b1={CRYPTO_KEY}",
            TIDINGS_CRYPTO_ACTIVE_KEY="b1",
            TIDINGS_END_USERS_JWT_SECRET=JWT_SECRET,
            TIDINGS_INAPP_HEARTBEAT=f"{heartbeat:g}s",
            # uvicorn answers 503 past limit_concurrency, and every open stream counts.
            TIDINGS_API_MAX_CONCURRENCY=str(max(1000, 2 * max_connections)),
        )
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*SERVE, "--log-level", "warning", "serve",
                 "--addr", f"127.0.0.1:{self.port}"],
                env=env, stdout=out, stderr=out,
            )  # fmt: skip
        self.ps = psutil.Process(self.proc.pid)

    async def wait_up(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"tidings serve exited at start; see {self.log}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.base + "/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit(f"tidings serve did not answer /healthz within 60 s; {self.log}")
            # Once through every path a connection takes, so imports and caches are
            # in the baseline, not in the figure per connection.
            import jwt

            claims = {"sub": "warm-up", "instance": INSTANCE, "exp": int(time.time()) + 60}
            token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
            headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": "1"}
            for _ in range(2):
                async with client.stream("GET", self.base + "/v1/me/stream", headers=headers,
                                         timeout=10) as response:  # fmt: skip
                    assert response.status_code == 200, response.status_code
                    async for _line in response.aiter_lines():
                        break

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def system_cpu(self) -> float:
        """The kernel's share (on loopback, a write also delivers to the reader's socket)."""
        return float(self.ps.cpu_times().system)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def last_position(conninfo: str) -> int:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SELECT coalesce(max(position), 0) FROM tidings.events")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def sent_between(conninfo: str, lo: int, hi: int) -> list[tuple[str, str, int]]:
    """(notification, user, position) of every in-app notification.sent in (lo, hi]."""
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute(
            "SELECT aggregate_id, payload #>> '{inapp,user_id}', position FROM tidings.events"
            " WHERE position > %s AND position <= %s AND event_type = 'notification.sent'"
            " AND aggregate_type = 'notification' ORDER BY position",
            (lo, hi),
        )
        return [(nid, user, int(pos)) for nid, user, pos in await cur.fetchall()]


# --- the phases over HTTP -----------------------------------------------------------


@dataclass
class LoadFigures:
    """One load with a storm in its middle, as the clients saw it."""

    before: list[float] = field(default_factory=list)  # committed > STORM_MARGIN before the storm
    after: list[float] = field(default_factory=list)  # ... during and after it
    sent: int = 0
    connections: int = 0
    gaps: int = 0
    dups: int = 0
    unexpected: int = 0
    reconnected: float = 0.0  # storm start -> every client has its 200 again
    caught_up: float = 0.0  # storm start -> every client holds what committed before it asked
    failures: int = 0
    closed: dict[str, int] = field(default_factory=dict)
    serve_cpu: list[float] = field(default_factory=list)  # % of a core per serve, during the load
    storm_cpu: list[float] = field(default_factory=list)  # ... while the clients reconnected
    clients_cpu: float = 0.0  # the client processes together, meanwhile
    both_ok: int = 0  # users on two serves that got every item on both
    both: int = 0


def analyse(
    reports: list[dict[str, Any]],
    sent: list[tuple[str, str, int]],
    commits: dict[str, float],
    storm_start: float,
) -> LoadFigures:
    figures = LoadFigures(sent=len(sent))
    expected: dict[str, set[int]] = defaultdict(set)
    for _, user, position in sent:
        expected[user].add(position)
    commit_of_position = {position: commits.get(nid) for nid, _, position in sent}
    per_user_complete: dict[str, list[bool]] = defaultdict(list)
    for report in reports:
        got: dict[int, list[tuple[int, float]]] = defaultdict(list)  # conn -> (position, t)
        for index, _gen, position, nid, t in report["received"]:
            got[index].append((position, t))
            commit = commits.get(nid)
            if commit is not None:
                # In flight when the clients dropped: delivered by the backfill, after the storm.
                calm = commit < storm_start - STORM_MARGIN
                (figures.before if calm else figures.after).append(t - commit)
        for key, count in report["closed"].items():
            figures.closed[key] = figures.closed.get(key, 0) + count
        for index, (user, _serve, sent_at, headers_at, _gen) in enumerate(report["conns"]):
            figures.connections += 1
            positions = [p for p, _ in got[index]]
            unique = set(positions)
            want = expected[user]
            figures.dups += len(positions) - len(unique)
            missing = want - unique
            figures.gaps += len(missing)
            figures.unexpected += len(unique - want)
            figures.after.extend([float("nan")] * len(missing))
            per_user_complete[user].append(not missing)
            # Caught up: holds every item committed before its reconnect was sent.
            caught = headers_at
            for position, t in got[index]:
                commit = commit_of_position.get(position)
                if commit is not None and commit < sent_at:
                    caught = max(caught, t)
            figures.caught_up = max(figures.caught_up, caught - storm_start)
    for complete in per_user_complete.values():
        if len(complete) > 1:
            figures.both += 1
            figures.both_ok += all(complete)
    return figures


async def load_with_storm(
    conninfo: str, clients: Clients, serves: list[Serve], users: list[str], args: Any
) -> LoadFigures:
    """The load for args.seconds; halfway, every client drops and reconnects."""
    lo = await last_position(conninfo)
    cpu_before = [s.cpu() for s in serves]
    started = time.monotonic()
    load = await spawn_load(conninfo, users, args.rate, args.seconds)
    await asyncio.sleep(args.seconds / 2)
    storm_start = time.time()
    storm_cpu = [s.cpu() for s in serves]
    clients_cpu = clients.cpu()
    replies = await clients.all("storm")
    reconnected = max(r["done"] for r in replies) - storm_start
    storm_cpu = [(s.cpu() - b) / reconnected * 100 for s, b in zip(serves, storm_cpu, strict=True)]
    clients_cpu = (clients.cpu() - clients_cpu) / reconnected * 100
    failures = sum(r["failures"] for r in replies)
    for reply in replies:
        for failure in reply["failed"]:
            print(f"    reconnect failed: {failure}")
    commits = await load_commits(load)
    took = time.monotonic() - started
    cpu = [(s.cpu() - b) / took * 100 for s, b in zip(serves, cpu_before, strict=True)]
    hi = await last_position(conninfo)
    sent = await sent_between(conninfo, lo, hi)
    # Every connection should end up with each of its user's items: wait for that many.
    per_user: dict[str, int] = defaultdict(int)
    for _, user, _ in sent:
        per_user[user] += 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = await clients.all("count")
        if sum(c["messages"] for c in counts) >= len(sent) * args.conns_per_item:
            break
        await asyncio.sleep(0.2)
    figures = analyse(await clients.reports(), sent, commits, storm_start)
    figures.reconnected = reconnected
    figures.failures = failures
    figures.serve_cpu = cpu
    figures.storm_cpu = storm_cpu
    figures.clients_cpu = clients_cpu
    return figures


def print_loads(runs: list[LoadFigures], seconds: float, storm: bool = True) -> None:
    def med_pct(attr: str, p: float) -> list[float]:
        out = []
        for run in runs:
            values = [v for v in getattr(run, attr) if v == v]
            out.append((statistics.median(values) if p == 50 else pct(values, p)) * 1000
                       if values else float("nan"))  # fmt: skip
        return out

    for attr, label in (("before", "calm (> 1 s before)"), ("after", "storm and after")):
        p50, p99 = med_pct(attr, 50), med_pct(attr, 99)
        received = sum(len([v for v in getattr(r, attr) if v == v]) for r in runs)
        print(f"  latency {label:<19} p50 {median(p50):7.1f} ms  p99 {median(p99):7.1f} ms"
              f"   (reps p99: {reps_of(p99, '.1f')}; {received:,} receipts)")  # fmt: skip
    cpus = [statistics.fmean(r.serve_cpu) for r in runs]
    print(f"  serve CPU during load   {median(cpus):6.1f} % of a core per serve process"
          f"   (reps: {reps_of(cpus, '.1f')})")  # fmt: skip
    sent = [r.sent for r in runs]
    print(
        f"  sent per rep            {reps_of([float(s) for s in sent], ',.0f')} "
        f"in {seconds:g} s, to {runs[0].connections:,} connections"
    )
    if not storm:
        return
    print("  reconnect storm (every client drops and resumes with Last-Event-ID mid-load):")
    rec = [r.reconnected for r in runs]
    caught = [r.caught_up for r in runs]
    print(f"    all reconnected after {median(rec):6.2f} s   (reps: {reps_of(rec, '.2f')})")
    print(f"    all caught up after   {median(caught):6.2f} s   (reps: {reps_of(caught, '.2f')})")
    busy = [statistics.fmean(r.storm_cpu) for r in runs]
    print(f"    serve CPU meanwhile   {median(busy):6.1f} % of a core per serve process"
          f"   (reps: {reps_of(busy, '.1f')})")  # fmt: skip
    theirs = [r.clients_cpu for r in runs]
    print(f"    client processes      {median(theirs):6.1f} % of a core, all together"
          f"   (reps: {reps_of(theirs, '.1f')})")  # fmt: skip
    gaps = sum(r.gaps for r in runs)
    dups = sum(r.dups for r in runs)
    other = sum(r.unexpected for r in runs)
    failures = sum(r.failures for r in runs)
    closed: dict[str, int] = defaultdict(int)
    for r in runs:
        for key, count in r.closed.items():
            closed[key] += count
    print(f"    gaps {gaps}, duplicates {dups} (all reps, by position per connection); "
          f"items not for the user {other}, failed reconnects {failures}, "
          f"closed by the server {dict(closed) or 0}")  # fmt: skip
    if runs[0].both:
        ok = [f"{r.both_ok}/{r.both}" for r in runs]
        print(f"    users on both serves with every item on both: {', '.join(ok)}")


async def bench_http(conninfo: str, root: Path, args: Any) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        await migrate(conn)
    n = args.clients
    users = [f"user-{i}" for i in range(n)]
    procs = args.client_procs
    plans: list[dict[str, list[tuple[str, int]]]] = [{"one": [], "two": []} for _ in range(procs)]
    for i, user in enumerate(users):
        plan = plans[i % procs]
        plan["one"].append((user, 0))
        plan["two"].append((user, (i // procs) % 2))
    both = min(args.both, n)
    for i, user in enumerate(users[:both]):  # these users also hold a stream on the other serve
        plans[i % procs]["two"].append((user, 1 - (i // procs) % 2))

    print("machine")
    for key, value in machine_details():
        print(f"  {key:<11} {value}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"  open files  {soft:,} (soft = hard limit; each serve and client process needs"
          f" one per connection)")  # fmt: skip
    print(f"\ncommand   {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"clients   {n:,} users, one SSE connection each (HS256 JWT), from {procs} client "
        f"processes; {args.reps} reps; load {args.rate:,.0f}/s for {args.seconds:g} s per rep\n"
    )

    clients = await Clients.start(plans)
    serve: Serve | None = None
    rss_per, idle_cpu, idle_sys, connect_s, baseline = [], [], [], [], []
    try:
        print(f"a. {n:,} idle SSE connections on one serve process (a fresh serve per rep)")
        for _ in range(args.reps):
            if serve is not None:
                await clients.all("close")
                serve.stop()
            serve = Serve(conninfo, root, "a", n, args.heartbeat)
            await serve.wait_up()
            await asyncio.sleep(1)
            rss0 = serve.rss()
            baseline.append(rss0 / 2**20)
            after = await last_position(conninfo)
            started = time.time()
            replies = await clients.all("connect", plan="one", ports=[serve.port], after=after)
            connect_s.append(max(r["done"] for r in replies) - started)
            failures = sum(r["failures"] for r in replies)
            if failures:
                print(f"  {failures} connections failed, e.g. {replies[0]['failed'][:2]}")
            await asyncio.sleep(2)
            rss_per.append((serve.rss() - rss0) / (n - failures) / 1024)
            cpu0, sys0 = serve.cpu(), serve.system_cpu()
            await asyncio.sleep(args.idle)
            idle_cpu.append((serve.cpu() - cpu0) / args.idle * 100)
            idle_sys.append((serve.system_cpu() - sys0) / args.idle * 100)
        print(f"  RSS per connection     {median(rss_per):7.1f} KiB   "
              f"(reps: {reps_of(rss_per, '.1f')}; serve RSS with none "
              f"{median(baseline):.0f} MiB)")  # fmt: skip
        print(f"  CPU while idle         {median(idle_cpu):7.2f} % of a core over "
              f"{args.idle:g} s   (reps: {reps_of(idle_cpu, '.2f')}; heartbeat every "
              f"{args.heartbeat:g} s, hub poll every 1 s)")  # fmt: skip
        print(
            f"    of which the kernel  {median(idle_sys):7.2f} % (system time: the socket writes)"
        )
        shown = reps_of(connect_s, ".2f")
        print(f"  all {n:,} connected in {median(connect_s):6.2f} s   (reps: {shown})")
        print(f"  ({load_average()})")
        await clients.reports()  # nothing arrived while idle; start clean

        assert serve is not None
        print(f"\nb+c. fan-out {args.rate:,.0f}/s to random users among {n:,} connected, one "
              f"serve process; latency = client receipt - commit")  # fmt: skip
        args.conns_per_item = 1
        runs = [await load_with_storm(conninfo, clients, [serve], users, args)
                for _ in range(args.reps)]  # fmt: skip
        print_loads(runs, args.seconds)
        print(f"  ({load_average()})")

        if args.serves >= 2:
            print(f"\nd. the same with two serve processes: {n:,} users split between them, "
                  f"{both} of them connected to both")  # fmt: skip
            await clients.all("close")
            other = Serve(conninfo, root, "b", n, args.heartbeat)
            try:
                await other.wait_up()
                after = await last_position(conninfo)
                ports = [serve.port, other.port]
                replies = await clients.all("connect", plan="two", ports=ports, after=after)
                failures = sum(r["failures"] for r in replies)
                if failures:
                    print(f"  {failures} connections failed, e.g. {replies[0]['failed'][:2]}")
                args.conns_per_item = (n + both) / n
                runs = [await load_with_storm(conninfo, clients, [serve, other], users, args)
                        for _ in range(args.reps)]  # fmt: skip
                print_loads(runs, args.seconds)
                print(f"  ({load_average()})")
            finally:
                other.stop()
    finally:
        with contextlib.suppress(Exception):
            await clients.all("close")
        await clients.close()
        if serve is not None:
            serve.stop()


# --- the hub alone (--hub-only) -------------------------------------------------------------------


class Connections:
    """N subscriptions on one hub, each with a task reading it as a connection would."""

    def __init__(self, hub: FeedHub) -> None:
        self.hub = hub
        self.subs: dict[str, Subscription] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.received: dict[str, float] = {}  # nid -> receipt time
        self.positions: dict[str, list[int]] = defaultdict(list)
        self.last: dict[str, int] = {}
        self.dropped = 0
        self.arrived = asyncio.Event()  # set on every message received

    async def open(self, user: str, after: int | None) -> None:
        sub = await self.hub.subscribe(INSTANCE, user, after=after)
        self.subs[user] = sub
        self.tasks[user] = asyncio.create_task(self._read(user, sub))

    async def _read(self, user: str, sub: Subscription) -> None:
        try:
            async for event in sub:
                if event.kind == "counts":
                    continue
                if event.kind == "message":
                    self.received.setdefault(event.data["id"], time.time())
                    self.arrived.set()
                self.positions[user].append(event.position)
                self.last[user] = event.position
        except SlowConsumer:
            self.dropped += 1
        except StreamClosed:
            pass  # the hub is shutting down

    async def settle(self, commits: dict[str, float], seconds: float = 10.0) -> None:
        """Wait until every committed notification arrived, or `seconds` at most."""
        deadline = time.monotonic() + seconds
        while any(n not in self.received for n in commits):
            self.arrived.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    async def close_all(self) -> None:
        for user, task in self.tasks.items():
            task.cancel()
            await self.subs[user].close()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()


async def run_hub(conninfo: str, users: list[str], rate: float, seconds: float) -> list[float]:
    """A hub for `users` in this process while a load runs: the latencies it saw."""
    settings = DatabaseSettings(url=conninfo, pool_min_size=2, pool_max_size=8)
    async with open_database(settings) as db:
        hub = FeedHub(store=db.store, conninfo=conninfo, queue_size=1024)
        stop = asyncio.Event()
        running = asyncio.create_task(hub.run(stop))
        conns = Connections(hub)
        for user in users:
            await conns.open(user, None)
        load = await spawn_load(conninfo, users, rate, seconds)
        commits = await load_commits(load)
        await conns.settle(commits)
        stop.set()
        await running
        await conns.close_all()
    latencies = [conns.received[n] - c for n, c in commits.items() if n in conns.received]
    return [*latencies, *([float("nan")] * (len(commits) - len(latencies)))]


async def child_hub(conninfo: str, users: list[str], rate: float, seconds: float) -> None:
    print(json.dumps(await run_hub(conninfo, users, rate, seconds)))


# --- the hub-only phases ---------------------------------------------------------------------


async def bench_hub(conninfo: str, users_n: int, rate: float, seconds: float, idle: float) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        await migrate(conn)
    users = [f"user-{i}" for i in range(users_n)]
    me = psutil.Process()
    print("machine")
    for key, value in machine_details():
        print(f"  {key:<11} {value}")
    print(f"\nusers {users_n:,} (one subscription each), load {rate:,.0f}/s for {seconds:g} s\n")

    settings = DatabaseSettings(url=conninfo, pool_min_size=2, pool_max_size=8)
    async with open_database(settings) as db:
        hub = FeedHub(store=db.store, conninfo=conninfo, queue_size=1024)
        stop = asyncio.Event()
        running = asyncio.create_task(hub.run(stop))
        await asyncio.sleep(0.5)
        rss_before = me.memory_info().rss
        conns = Connections(hub)
        for user in users:
            await conns.open(user, None)
        await asyncio.sleep(0.5)
        rss_after = me.memory_info().rss
        cpu_before = me.cpu_times()
        await asyncio.sleep(idle)
        cpu_after = me.cpu_times()
        busy = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        print("1. idle subscriptions (hub side only; sockets and HTTP not included)")
        print(f"  RSS per subscription  {(rss_after - rss_before) / users_n / 1024:8.2f} KiB")
        print(f"  CPU while idle        {busy / idle * 100:8.2f} % of a core ({idle:g} s)")

        print("\n2. fan-out: commit of the append -> receipt by the subscriber")
        load = await spawn_load(conninfo, users, rate, seconds)
        # 3. halfway through, every subscription drops and resumes from its last position.
        await asyncio.sleep(seconds / 2)
        storm_wall = time.time()
        storm_start = time.monotonic()
        for user in users:
            conns.tasks[user].cancel()
            await conns.subs[user].close()
        await asyncio.gather(*conns.tasks.values(), return_exceptions=True)
        for user in users:  # each from the last position its reader took
            await conns.open(user, conns.subs[user].last)
        reopened = time.monotonic() - storm_start
        await asyncio.wait_for(
            asyncio.gather(*(sub.live.wait() for sub in conns.subs.values())), 120
        )
        caught_up = time.monotonic() - storm_start
        commits = await load_commits(load)
        await conns.settle(commits)
        stop.set()
        await running
        await conns.close_all()
        before = [conns.received[n] - c for n, c in commits.items()
                  if n in conns.received and c < storm_wall]  # fmt: skip
        after = [conns.received[n] - c for n, c in commits.items()
                 if n in conns.received and c >= storm_wall]  # fmt: skip
        print(f"  one hub               {ms(before)} (the first half)")
        print(f"  during/after storm    {ms(after)}")
        print(f"  delivered             {len(before) + len(after):,} of {len(commits):,} sent")

        async with db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(payload #>> '{inapp,user_id}', payload ->> 'user_id'), position"
                " FROM tidings.events WHERE aggregate_type = 'notification'"
                " AND event_type = 'notification.sent' ORDER BY position"
            )
            expected: dict[str, list[int]] = defaultdict(list)
            for user, position in await cur.fetchall():
                expected[user].append(position)
        gaps = dups = 0
        for user in users:
            got = conns.positions[user]
            dups += len(got) - len(set(got))
            gaps += len(set(expected[user]) - set(got))
        print("\n3. reconnect storm: all drop and resume from their last position mid-load")
        print(f"  resubscribed in       {reopened:8.2f} s")
        print(f"  all caught up after   {caught_up:8.2f} s")
        print(f"  gaps {gaps}, duplicates {dups}, dropped as too slow {conns.dropped}")

    print("\n4. fan-out with two hub processes, each holding half the users")
    half = users_n // 2
    other = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--child", "hub", "--conninfo", conninfo,
        "--users-file", _users_file(users[half:]), "--rate", str(rate),
        "--seconds", str(seconds), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    mine = await run_hub(conninfo, users[:half], rate, seconds)
    out, _ = await other.communicate()
    theirs: list[float] = json.loads(out)
    print(f"  hub A                 {ms(mine)}")
    print(f"  hub B                 {ms(theirs)}")
    print("  (each hub's load process sends to its own half, so 2 x the rate reaches the log)")


def _temp_json(prefix: str, value: Any) -> str:
    path = Path(tempfile.mkstemp(prefix=prefix)[1])
    path.write_text(json.dumps(value))
    return str(path)


def _read_json(path: str, *, remove: bool = False) -> Any:
    value = json.loads(Path(path).read_text())
    if remove:
        Path(path).unlink()
    return value


def _users_file(users: list[str]) -> str:
    path = Path(tempfile.mkstemp(prefix="tidings-bench-users-")[1])
    path.write_text("\n".join(users))
    return str(path)


def raise_open_files(needed: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); warn when too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        print(f"WARNING: the hard limit of open files is {hard:,}, too low for {needed:,} "
              f"connections on one serve process (raise it: ulimit -Hn, LimitNOFILE=); "
              f"expect failed connections")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=10_000, help="users, one connection each")
    parser.add_argument("--rate", type=float, default=1000.0, help="notifications per second")
    parser.add_argument("--seconds", type=float, default=12.0, help="load duration per rep")
    parser.add_argument("--idle", type=float, default=20.0, help="idle CPU sample per rep")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (figures are medians)")
    parser.add_argument("--serves", type=int, choices=[1, 2], default=2,
                        help="2: also part d, two serve processes")  # fmt: skip
    parser.add_argument("--client-procs", type=int, default=2, help="client processes")
    parser.add_argument("--heartbeat", type=float, default=15.0, help="inapp.heartbeat, seconds")
    parser.add_argument("--both", type=int, default=50, help="users on both serves (part d)")
    parser.add_argument("--quick", action="store_true", help="1,000 clients, 200/s, short")
    parser.add_argument("--hub-only", action="store_true",
                        help="the hub alone in-process, no HTTP (as before)")  # fmt: skip
    parser.add_argument("--child", choices=["load", "hub", "clients"], help=argparse.SUPPRESS)
    parser.add_argument("--conninfo", help=argparse.SUPPRESS)
    parser.add_argument("--users-file", help=argparse.SUPPRESS)
    parser.add_argument("--plans-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "clients":
        _run_fast(child_clients(args.plans_file))
        return
    if args.child:
        users = Path(args.users_file).read_text().split("\n")
        child = child_load if args.child == "load" else child_hub
        asyncio.run(child(args.conninfo, users, args.rate, args.seconds))
        return
    if args.quick:
        args.clients, args.rate, args.seconds, args.idle, args.reps = 1000, 200.0, 6.0, 5.0, 2
        args.both = min(args.both, 20)
    raise_open_files(args.clients + 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server
    root = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    server = get_server(root / "data", cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tidings_streams")
        conninfo = server.get_uri("tidings_streams")
        if args.hub_only:
            asyncio.run(bench_hub(conninfo, args.clients, args.rate, args.seconds, args.idle))
        else:
            asyncio.run(bench_http(conninfo, root, args))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _run_fast(coro: Any) -> None:
    """On uvloop where installed, as `tidings serve` runs: the clients cost less CPU."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


if __name__ == "__main__":
    main()
