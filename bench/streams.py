"""Benchmark of the feed's fan-out hub: idle connections, fan-out latency, a reconnect storm.

This measures the part of live delivery that exists today, the hub one serve
process runs (tidings.feeds.hub.FeedHub: one LISTEN connection, one query per
wake-up, a bounded queue per connection). Each "connection" here is a
subscription with a task waiting on it, as an SSE or WebSocket handler would
hold one; the HTTP side (sockets, uvicorn, the SSE framing) is not in these
figures and comes with `tidings serve`. On a throwaway embedded PostgreSQL:

1. idle: N subscriptions on one hub; the process's RSS per subscription and its
   CPU while nothing happens (the hub's poll every inapp.poll_every);
2. fan-out: another process appends in-app notifications at R/s to random
   users among the N (requested + sent, as the worker pool does) and reports
   each one's commit time; latency = a subscriber's receipt minus that commit;
3. reconnect storm: while the load goes on, every subscription drops and
   resumes from the last position it received; gaps and duplicates are counted
   per user against the log afterwards (both must be 0), and the time until
   every subscription has caught up is printed;
4. the fan-out again with two hub processes, each holding half the users.

    .venv/bin/python bench/streams.py                 # 10,000 users, 1,000/s, ~2 minutes
    .venv/bin/python bench/streams.py --quick         # 1,000 users, 200/s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
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


# --- the hub side -------------------------------------------------------------------


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


# --- the phases ---------------------------------------------------------------------


async def bench(conninfo: str, users_n: int, rate: float, seconds: float, idle: float) -> None:
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


def _users_file(users: list[str]) -> str:
    path = Path(tempfile.mkstemp(prefix="tidings-bench-users-")[1])
    path.write_text("\n".join(users))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="notifications per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration")
    parser.add_argument("--idle", type=float, default=10.0, help="idle CPU sample")
    parser.add_argument("--quick", action="store_true", help="1,000 users, 200/s, 8 s")
    parser.add_argument("--child", choices=["load", "hub"], help=argparse.SUPPRESS)
    parser.add_argument("--conninfo", help=argparse.SUPPRESS)
    parser.add_argument("--users-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        users = Path(args.users_file).read_text().split("\n")
        child = child_load if args.child == "load" else child_hub
        asyncio.run(child(args.conninfo, users, args.rate, args.seconds))
        return
    if args.quick:
        args.users, args.rate, args.seconds, args.idle = 1000, 200.0, 8.0, 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server
    root = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    server = get_server(root / "data", cleanup_mode="delete")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tidings_streams")
        conninfo = server.get_uri("tidings_streams")
        asyncio.run(bench(conninfo, args.users, args.rate, args.seconds, args.idle))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
