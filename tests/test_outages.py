"""`tidings run` through a database outage: a real process, a throw-away PostgreSQL taken away.

- SIGTERM during an outage: the process exits within shutdown_grace and says
  which attempts it could not record.
- An outage shorter than the lease with attempts in flight: every outcome is
  recorded once the database is back, nothing is sent twice.
- While the database is away, each part says so once, then reminds at a
  falling rate, and says when it is back.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import clean_env
from tests.outage_helpers import ThrowawayPostgres, throwaway_pg  # noqa: F401 (fixture)
from tests.test_worker_processes import Sink, sink, wait_for  # noqa: F401 (fixture)
from tests.worker_helpers import requested, user_added, users_projected, worker_env, worker_settings
from tidings.config import DatabaseSettings
from tidings.eventstore import EventQuery, open_database
from tidings.eventstore.outage import Outage


class Run:
    """One `tidings run` process on the throw-away database; output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("w")
        # One process (not one per core): what is checked is that process's own
        # shutdown, its log lines and its unrecorded attempts.
        argv = ["run", "--processes", "1", "--workers", "1", "--retry-workers", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", *argv],
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def says(self, text: str) -> bool:
        return text in self.output()

    def close(self) -> None:
        self._file.close()

    def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, then the exit code and how long the exit took."""
        signaled = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._file.close()
        return code, time.monotonic() - signaled


@pytest.fixture
def run_on(tmp_path: Path) -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
        process.close()


def env_for(pg: ThrowawayPostgres, peer: Sink, **notifications: str) -> dict[str, str]:
    return clean_env(
        TIDINGS_DATABASE_URL=pg.conninfo,
        TIDINGS_DATABASE_CONNECT_TIMEOUT="1s",
        TIDINGS_NOTIFICATIONS_REQUEUE_EVERY="200ms",
        TIDINGS_NOTIFICATIONS_MAX_TTL="1h",
        TIDINGS_PROJECTIONS_POLL_EVERY="200ms",
        **worker_env(peer.url),
        **{f"TIDINGS_NOTIFICATIONS_{name.upper()}": v for name, v in notifications.items()},
    )


async def prepare(pg: ThrowawayPostgres, peer: Sink, ids: list[str]) -> None:
    """A user and one PasswordReset request per id, in the throw-away database."""
    async with open_database(DatabaseSettings(url=pg.conninfo)) as db:
        await db.store.append([user_added()])
        await users_projected(db, worker_settings(peer.url))
        await db.store.append([requested(i) for i in ids])


async def sent_counts(pg: ThrowawayPostgres) -> Counter[str]:
    async with open_database(DatabaseSettings(url=pg.conninfo)) as db:
        sent = await db.store.query(EventQuery(event_types=("notification.sent",)))
    return Counter(e.aggregate_id for e in sent)


OUTAGE = 10.0
OUTAGE_START = re.compile(r"WARNING \S+: (.+?): the database is unreachable since")


def outage_lines(output: str) -> Counter[str]:
    """How many times each part said that the database is unreachable (first lines only)."""
    return Counter(m[1] for m in OUTAGE_START.finditer(output))


async def test_sigterm_during_an_outage_exits_within_the_grace_and_names_what_is_unrecorded(
    throwaway_pg: ThrowawayPostgres,  # noqa: F811
    sink: Sink,  # noqa: F811
    run_on: list[Run],
    tmp_path: Path,
) -> None:
    ids = ["n-1", "n-2"]
    await prepare(throwaway_pg, sink, ids)
    sink.delay = 3.0  # the sends are in flight when the database goes
    run = Run(env_for(throwaway_pg, sink, shutdown_grace="3s"), tmp_path / "run.log")
    run_on.append(run)
    await wait_for(sink.got(len(ids)), "both sends in flight")
    throwaway_pg.stop()
    down = time.monotonic()
    # The scenario: ten seconds of outage (what is waited for is its length).
    await wait_for(lambda: time.monotonic() - down > OUTAGE, "the outage", seconds=OUTAGE + 5)
    during = run.output()

    code, took = run.stop(timeout=20)
    output = run.output()
    print(f"exited {took:.2f}s after SIGTERM")
    assert took < 3 + 2.5, f"exited {took:.1f}s after SIGTERM, shutdown_grace is 3s"
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "stopped after shutdown_grace (3s)" in output
    unrecorded = re.search(
        r"stopped before the outcomes of (\d+) notifications were recorded", output
    )
    assert unrecorded and unrecorded[1] == "2", output[-3000:]
    assert all(f"notification {i} (instance acme, attempt 1)" in output for i in ids)
    assert "in-flight attempts finished and recorded" not in output

    # While the database was away, each part said so once (reminders: test_outage_lines_*).
    lines = outage_lines(during)
    assert lines["projector"] + lines["projector lock"] >= 1, during[-3000:]
    assert all(n == 1 for n in lines.values()), lines
    assert "another process holds the projector lock" not in during, "not standing by: it is down"
    warnings = during.count(" WARNING ")
    assert warnings <= 10, f"{warnings} warnings in 10 s of outage:\n{during[-3000:]}"


async def test_an_outage_shorter_than_the_lease_resends_nothing(
    throwaway_pg: ThrowawayPostgres,  # noqa: F811
    sink: Sink,  # noqa: F811
    run_on: list[Run],
    tmp_path: Path,
) -> None:
    ids = [f"n-{n}" for n in range(5)]
    await prepare(throwaway_pg, sink, ids)
    sink.delay = 1.0
    env = env_for(throwaway_pg, sink, transaction_duration="30s", bulk_limit="10")
    run = Run(env, tmp_path / "run.log")
    run_on.append(run)
    await wait_for(sink.got(len(ids)), "the bulk in flight")
    throwaway_pg.stop()
    down = time.monotonic()
    # The scenario: an outage longer than the ~7 s that recording used to be tried
    # (with a 1 s connect timeout), shorter than the lease (what is waited for is its length).
    await wait_for(lambda: time.monotonic() - down > OUTAGE, "the outage", seconds=OUTAGE + 5)
    throwaway_pg.start()
    print(f"database away for {time.monotonic() - down:.1f}s")

    async def all_sent() -> bool:
        try:
            return sum((await sent_counts(throwaway_pg)).values()) >= len(ids)
        except Exception:  # the database is only coming back
            return False

    await wait_for(all_sent, "every outcome recorded", seconds=40)
    await wait_for(lambda: run.says("reachable again"), "the end of the outage logged")
    code, _ = run.stop(timeout=20)
    output = run.output()
    assert code == 0, output[-3000:]
    assert await sent_counts(throwaway_pg) == Counter(dict.fromkeys(ids, 1))
    deliveries = Counter(d.notification_id for d in sink.deliveries())
    assert deliveries == Counter(dict.fromkeys(ids, 1)), f"sent again: {deliveries}"
    assert "gave up recording" not in output
    assert "stopped: in-flight attempts finished and recorded" in output


def test_outage_lines_say_it_once_remind_at_a_falling_rate_and_tell_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = logging.getLogger("tidings.test.outage")
    caplog.set_level(logging.INFO, logger="tidings.test.outage")
    outage = Outage("projector", retried="retried", logger=log, clock=lambda: now[0])
    for second in range(0, 700):  # a failed try every second for 700 s
        now[0] = float(second)
        outage.failed(ConnectionError("server closed the connection\nmore detail"))
    now[0] = 700.0
    outage.recovered()
    outage.recovered()  # only once
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("projector: the database is unreachable since ")
    assert "(server closed the connection)" in messages[0]
    reminders = [m for m in messages if "still unreachable" in m]
    assert [m.split("after ")[1].split("s ")[0] for m in reminders] == [
        "10", "30", "60", "120", "300", "600",
    ]  # fmt: skip
    assert messages[-1].startswith("projector: the database is reachable again after an outage")
    assert "700.0s" in messages[-1] and "700 failed tries" in messages[-1]
    assert len(messages) == 1 + 6 + 1
    assert caplog.records[-1].levelno == logging.INFO
