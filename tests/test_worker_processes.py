"""The worker pool as operators run it: real `tidings run` processes on one database.

Messages go out through the real webhook channel to a sink in this test
process, which records every delivery with its arrival time and can answer
late, with an error status, or not at all. (tests/http_peer.py cannot answer
successfully after a delay, and keeps no arrival times, hence a sink of our own.)
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env, tidings
from tests.worker_helpers import (
    notification_events,
    requested,
    user_added,
    users_projected,
    worker_env,
    worker_settings,
)
from tidings.eventstore import Database, EventQuery

SENT_LINE = re.compile(r"notification (\S+) instance \S+ attempt (\d+) .* via webhook: sent \(")


@dataclass(frozen=True)
class Delivery:
    """One webhook POST as the sink received it."""

    at: float  # time.monotonic() on arrival
    wall: datetime  # the same moment by the clock the workers' leases use
    webhook_id: str
    notification_id: str
    attempt: int


class Sink:
    """A webhook receiver: records deliveries, answers `status_for(delivery)` after `delay`.

    While `holding` is set, a request that arrives is held without an answer
    until the server stops, as a provider that hangs.
    """

    def __init__(self) -> None:
        self.url = ""
        self.delay = 0.0
        self.status_for: Callable[[Delivery], int] = lambda _: 200
        self.holding = threading.Event()
        self.stopping = threading.Event()
        self._deliveries: list[Delivery] = []
        self._lock = threading.Lock()

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def got(self, n: int) -> Callable[[], bool]:
        """A condition: at least `n` deliveries arrived."""
        return lambda: len(self.deliveries()) >= n

    def handle(self, request: _SinkHandler, body: bytes) -> None:
        document = json.loads(body)
        delivery = Delivery(
            at=time.monotonic(),
            wall=datetime.now(UTC),
            webhook_id=request.headers["webhook-id"],
            notification_id=document["notification_id"],
            attempt=document["attempt"],
        )
        with self._lock:
            self._deliveries.append(delivery)
        if self.holding.is_set():
            self.stopping.wait()
            request.close_connection = True
            return
        if self.delay:
            self.stopping.wait(self.delay)
        request.send_response(self.status_for(delivery))
        request.send_header("Content-Length", "0")
        request.end_headers()


class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the webhook channel's client expects
    server: _SinkServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.sink.handle(self, body)

    def log_message(self, format: str, *args: Any) -> None:
        """No request lines on stderr."""


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True
    # A provider does not refuse connections when a bulk of sends arrives at
    # once; the default listen backlog (5) would, and turn sends into retries.
    request_queue_size = 256

    def __init__(self, sink: Sink) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.sink = sink


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink()
    server = _SinkServer(sink)
    host, port = server.server_address[:2]
    sink.url = f"http://{host!s}:{port}/hooks"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def process_env(
    conninfo: str, sink: Sink, webhook_timeout: str = "", **notifications: str
) -> dict[str, str]:
    """Worker settings as environment variables; `notifications` as bulk_limit="10"."""
    timeout = webhook_timeout
    return clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        **worker_env(sink.url),
        TIDINGS_NOTIFICATIONS_REQUEUE_EVERY="200ms",
        TIDINGS_NOTIFICATIONS_RETRY_REQUEUE_EVERY="200ms",
        TIDINGS_NOTIFICATIONS_MAX_TTL="1h",
        **{f"TIDINGS_NOTIFICATIONS_{name.upper()}": v for name, v in notifications.items()},
    ) | ({"TIDINGS_CHANNELS_WEBHOOK_TIMEOUT": timeout} if timeout else {})


class Worker:
    """One `tidings run --no-projector` process; stdout and stderr go to a log file."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("w")
        # One process (not one per core): the tests kill it, and count its sends
        # and log lines, as one process's.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "run", "--processes", "1", "--no-projector", *args],
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def sent(self) -> list[tuple[str, int]]:
        """(notification id, attempt) of each send this process logged."""
        return [(m[1], int(m[2])) for m in SENT_LINE.finditer(self.output())]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._file.close()


Start = Callable[..., Worker]


@pytest.fixture
def start(conninfo: str, sink: Sink, tmp_path: Path) -> Iterator[Start]:
    """`start(name, *run_args, **notification_settings)`; kills what still runs at teardown."""
    started: list[Worker] = []

    def launch(name: str, *args: str, **notifications: str) -> Worker:
        env = process_env(conninfo, sink, **notifications)
        worker = Worker(args, env, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    yield launch
    for worker in started:
        if worker.proc.poll() is None:
            worker.stop(signal.SIGKILL)


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], what: str, seconds: float = 20
) -> float:
    """Poll `condition` until it holds; return how long that took."""
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def count(db: Database, event_type: str) -> int:
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM tidings.events WHERE event_type = %s", (event_type,)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def at_least(db: Database, event_type: str, n: int) -> Callable[[], Awaitable[bool]]:
    """A condition: the log holds `n` or more events of this type."""

    async def condition() -> bool:
        return await count(db, event_type) >= n

    return condition


async def sent_counts(db: Database) -> Counter[str]:
    """How many notification.sent events each notification has."""
    sent = await db.store.query(EventQuery(event_types=("notification.sent",)))
    return Counter(event.aggregate_id for event in sent)


async def event_types(db: Database, notification_id: str) -> list[str]:
    return [e.event_type for e in await notification_events(db, notification_id)]


async def pending_rows(db: Database) -> dict[str, dict[str, Any]]:
    """The pending queue with its leases, by notification id."""
    async with db.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT notification_id, kind, attempts, leased_until, lease_owner, claims "
            "FROM tidings.pending_notifications"
        )
        rows = await cur.fetchall()
    columns = ("kind", "attempts", "leased_until", "lease_owner", "claims")
    return {row[0]: dict(zip(columns, row[1:], strict=True)) for row in rows}


async def create(db: Database, sink: Sink, ids: list[str], users: int = 1) -> None:
    """`users` users spread over three instances, and a PasswordReset request per id."""
    instances = ("acme", "globex", "initech")
    people = [(f"user-{n}", instances[n % len(instances)]) for n in range(users)]
    await db.store.append([user_added(user, instance_id=instance) for user, instance in people])
    await users_projected(db, worker_settings(sink.url))
    for first in range(0, len(ids), 500):
        events = []
        for number, notification_id in enumerate(ids[first : first + 500], start=first):
            user, instance = people[number % len(people)]
            events.append(requested(notification_id, user_id=user, instance_id=instance))
        await db.store.append(events)


def assert_once(counts: Counter[str], ids: list[str], what: str) -> None:
    """Each of `ids`, and nothing else, is counted exactly once."""
    wanted = set(ids)
    wrong = {i: counts[i] for i in ids if counts[i] != 1}
    wrong |= {i: n for i, n in counts.items() if i not in wanted}
    if wrong:
        sample = dict(sorted(wrong.items())[:10])
        raise AssertionError(f"{len(wrong)} notifications not {what} exactly once, e.g. {sample}")


RACE_SIZE = 5000


async def test_four_processes_race_and_send_each_notification_exactly_once(
    db: Database, sink: Sink, start: Start
) -> None:
    ids = [f"n-{n:05d}" for n in range(RACE_SIZE)]
    await create(db, sink, ids, users=50)

    began = time.monotonic()
    workers = [start(f"worker-{n}", "--workers", "2", "--retry-workers", "0") for n in range(4)]
    await wait_for(at_least(db, "notification.sent", RACE_SIZE), f"{RACE_SIZE} sends", seconds=90)
    took = time.monotonic() - began
    codes = [worker.stop() for worker in workers]
    assert codes == [0, 0, 0, 0], [w.output()[-2000:] for w in workers]
    print(f"{RACE_SIZE} notifications sent by 4 processes in {took:.1f}s")

    assert_once(await sent_counts(db), ids, "recorded as sent")
    assert await count(db, "notification.canceled") == 0
    assert await count(db, "notification.retry.requested") == 0
    assert await pending_rows(db) == {}

    deliveries = sink.deliveries()
    assert {d.attempt for d in deliveries} == {1}
    assert_once(Counter(d.notification_id for d in deliveries), ids, "delivered")
    assert_once(Counter(d.webhook_id for d in deliveries), ids, "delivered")

    logged = [worker.sent() for worker in workers]
    assert_once(Counter(i for sends in logged for i, _ in sends), ids, "logged as sent")
    shares = [len(sends) for sends in logged]
    print(f"sends per process: {shares}")
    assert sum(1 for share in shares if share) >= 2, f"the work was not shared: {shares}"


LEASE = 3.0
BULK = 10


async def test_a_killed_workers_claims_come_back_after_the_lease_and_nothing_is_lost(
    db: Database, sink: Sink, start: Start
) -> None:
    ids = [f"n-{n:02d}" for n in range(30)]
    await create(db, sink, ids)
    args = ("--workers", "1", "--retry-workers", "0")
    # The lease must be at least twice the channel's timeout.
    settings = {
        "bulk_limit": str(BULK),
        "transaction_duration": f"{LEASE:g}s",
        "webhook_timeout": f"{LEASE / 2:g}s",
    }

    sink.holding.set()  # the sends hang, so they are in flight when the worker dies
    crashed = start("crashed", *args, **settings)
    await wait_for(sink.got(1), "the crashed worker's first send")
    assert crashed.stop(signal.SIGKILL) == -signal.SIGKILL
    assert await count(db, "notification.sent") == 0
    held = await pending_rows(db)
    leased = {i for i, row in held.items() if row["lease_owner"] is not None}
    assert len(leased) == BULK, "the crashed worker had claimed one bulk"
    sink.holding.clear()

    second_started = time.monotonic()
    second = start("second", *args, **settings)
    await wait_for(at_least(db, "notification.sent", len(ids)), "every notification sent")
    assert second.stop() == 0, second.output()

    assert_once(await sent_counts(db), ids, "recorded as sent")
    assert await count(db, "notification.canceled") == 0
    assert await count(db, "notification.retry.requested") == 0, "no attempt was recorded"
    assert "late outcome refused" not in second.output()

    deliveries = sink.deliveries()
    crashed_sends = [d for d in deliveries if d.at < second_started]
    assert crashed_sends, "the crashed worker had sends in flight"
    assert {d.notification_id for d in crashed_sends} <= leased
    by_id: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_id.setdefault(delivery.notification_id, []).append(delivery)
    assert sorted(by_id) == ids, "nothing lost"
    duplicates = len(deliveries) - len(by_id)
    assert duplicates == len(crashed_sends) <= BULK, "only the sends in flight went out twice"

    gaps = []
    lease = timedelta(seconds=LEASE)
    for first in crashed_sends:
        again = by_id[first.notification_id]
        assert len(again) == 2, f"{first.notification_id} was delivered {len(again)} times"
        assert again[1].webhook_id == first.webhook_id, "a re-send keeps its idempotency key"
        lease_end = held[first.notification_id]["leased_until"]
        assert timedelta(0) < lease_end - first.wall <= lease, "leased for transaction_duration"
        assert lease_end <= again[1].wall < lease_end + timedelta(seconds=5), (
            f"{first.notification_id}: re-sent at {again[1].wall}, its lease ran out at {lease_end}"
        )
        gaps.append(again[1].at - first.at)
    print(
        f"{len(crashed_sends)} sends in flight at the kill; "
        f"re-sent {min(gaps):.2f}-{max(gaps):.2f}s after their first delivery"
    )


async def test_sigterm_finishes_the_sends_in_flight_and_leaves_the_rest_pending(
    db: Database, sink: Sink, start: Start
) -> None:
    ids = [f"n-{n}" for n in range(5)]
    await create(db, sink, ids)
    sink.delay = 1.0  # each send is answered, successfully, after a second

    worker = start("worker", "--workers", "1", "--retry-workers", "0", bulk_limit="2")
    await wait_for(sink.got(1), "a send in flight")
    signaled = time.monotonic()
    code = worker.stop(signal.SIGTERM, timeout=10)
    stopped_in = time.monotonic() - signaled
    print(f"stopped {stopped_in:.2f}s after SIGTERM")
    assert code == 0, worker.output()
    assert 0.5 <= stopped_in < 4, "waited for the slow answers in flight, and no longer"
    assert "stopped: in-flight attempts finished and recorded" in worker.output()
    assert "Traceback" not in worker.output()

    delivered = {d.notification_id for d in sink.deliveries()}
    assert len(delivered) == 2, "one bulk was in flight"
    pending = await pending_rows(db)
    for notification_id in ids:
        types = await event_types(db, notification_id)
        if notification_id in delivered:
            assert types == ["notification.requested", "notification.sent"]
            assert notification_id not in pending
        else:
            assert types == ["notification.requested"]
            row = pending[notification_id]
            assert (row["kind"], row["claims"], row["leased_until"]) == ("request", 0, None)


async def test_request_and_retry_workers_split_across_processes(
    db: Database, conninfo: str, sink: Sink, start: Start
) -> None:
    sink.status_for = lambda d: 503 if (d.webhook_id, d.attempt) == ("n-flaky", 1) else 200
    settings = {"min_retry_delay": "200ms", "max_retry_delay": "500ms"}
    env = process_env(conninfo, sink, **settings)
    await create(db, sink, ["n-flaky", "n-fine"])

    # A request-only batch run: sends what was requested, stops at the retry.
    batch = await asyncio.to_thread(
        tidings, "run", "--no-projector", "--workers", "1", "--retry-workers", "0",
        "--until-idle", env=env,
    )  # fmt: skip
    assert batch.returncode == 0, batch.stderr
    assert "notification n-fine: sent" in batch.stdout
    assert "1 notifications settled" in batch.stdout
    assert await event_types(db, "n-flaky") == [
        "notification.requested",
        "notification.retry.requested",
    ]
    (retry,) = (await notification_events(db, "n-flaky"))[1:]
    due = datetime.fromisoformat(retry.payload["due_at"])

    # A request-only process keeps claiming requests after the retry is due,
    # and leaves the retry alone.
    requests_only = start("requests-only", "--workers", "1", "--retry-workers", "0", **settings)
    await wait_for(lambda: datetime.now(UTC) > due, "the retry to come due")
    await db.store.append([requested("n-late", user_id="user-0")])
    await wait_for(at_least(db, "notification.sent", 2), "the late request to be sent")
    assert requests_only.stop() == 0, requests_only.output()
    assert requests_only.sent() == [("n-late", 1)]
    assert sorted(d.webhook_id for d in sink.deliveries()) == ["n-fine", "n-flaky", "n-late"]
    assert (await pending_rows(db))["n-flaky"]["kind"] == "retry"

    # A retry-only batch run sends the retry and leaves a new request alone.
    await db.store.append([requested("n-waiting", user_id="user-0")])
    retries = await asyncio.to_thread(
        tidings, "run", "--no-projector", "--workers", "0", "--retry-workers", "1",
        "--until-idle", env=env, timeout=60,
    )  # fmt: skip
    assert retries.returncode == 0, retries.stderr
    assert "notification n-flaky: sent" in retries.stdout
    assert "1 notifications settled" in retries.stdout
    assert "n-flaky instance acme attempt 2" in retries.stderr

    last = sink.deliveries()[-1]
    assert (last.webhook_id, last.attempt) == ("n-flaky", 2), "one key for every attempt"
    assert len(sink.deliveries()) == 4, "n-waiting was not sent"
    assert await event_types(db, "n-flaky") == [
        "notification.requested",
        "notification.retry.requested",
        "notification.sent",
    ]
    sent = (await notification_events(db, "n-flaky"))[-1]
    assert sent.payload["attempt"] == 2
    pending = await pending_rows(db)
    assert list(pending) == ["n-waiting"] and pending["n-waiting"]["kind"] == "request"
