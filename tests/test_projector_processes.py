"""The projector as operators run it: real processes, one leader, clean stops."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli import clean_env, tidings
from tests.projection_helpers import code_event, requests_of, user_added
from tidings.eventstore import Database


@pytest.fixture
def env(conninfo: str) -> dict[str, str]:
    return clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_PROJECTIONS_LEADER_RETRY_EVERY="200ms",
        TIDINGS_PROJECTIONS_POLL_EVERY="200ms",
    )


class Process:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "projections", "run"],
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self._file.close()
        return code


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], Process]]:
    started: list[Process] = []

    def launch(name: str) -> Process:
        process = Process(env, tmp_path / f"{name}.log")
        started.append(process)
        return process

    yield launch
    for process in started:
        if process.proc.poll() is None:
            process.stop(signal.SIGKILL)


async def wait_for(condition: Callable[[], object], what: str, seconds: float = 20) -> None:
    import asyncio

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_standby_takes_over_when_the_leader_dies(
    db: Database, start: Callable[[str], Process]
) -> None:
    await db.store.append([user_added()])
    first = start("first")
    await wait_for(lambda: "now the active projector" in first.output(), "the first leader")
    second = start("second")
    await wait_for(lambda: "standing by" in second.output(), "the standby")

    await db.store.append([code_event("user.human.password.code.added")])

    async def requests(n: int) -> bool:
        return len(await requests_of(db)) == n

    await wait_for(lambda: requests(1), "the leader's request")
    assert "now the active projector" not in second.output()

    first.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    await db.store.append([code_event("user.human.email.code.added")])
    await wait_for(lambda: "now the active projector" in second.output(), "the takeover")
    takeover = time.monotonic() - killed_at
    await wait_for(lambda: requests(2), "the new leader's request")
    assert takeover < 10, f"took {takeover:.1f}s to take over"

    assert second.stop(signal.SIGTERM) == 0, second.output()
    types = sorted(r.request.message_type for _, r in await requests_of(db))
    assert types == ["PasswordReset", "VerifyEmail"], "each source requested exactly once"


async def test_sigterm_stops_the_projector_cleanly(
    db: Database, start: Callable[[str], Process]
) -> None:
    process = start("only")
    await wait_for(lambda: "now the active projector" in process.output(), "leadership")
    assert process.stop(signal.SIGTERM) == 0
    assert "Traceback" not in process.output()


async def test_run_until_idle_status_and_rebuild(db: Database, env: dict[str, str]) -> None:
    await db.store.append([user_added(), user_added("user-bob")])
    bad = await db.store.append(
        [
            code_event("user.human.password.code.added"),
            code_event("user.human.email.code.added", "user-bob", expiry="whenever"),
        ]
    )
    result = tidings("projections", "run", "--until-idle", env=env)
    assert result.returncode == 0, result.stderr
    assert len(await requests_of(db)) == 1

    status = tidings("projections", "status", env=env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split()[:3] == ["PROJECTION", "CHECKPOINT", "LAG"]
    assert any(line.startswith("users") and line.split()[2] == "0" for line in lines)
    assert f"requests skipped position {bad[1].position}" in status.stdout
    assert "expiry" in status.stdout

    as_json = json.loads(tidings("projections", "status", "--format", "json", env=env).stdout)
    requests_row = next(row for row in as_json if row["name"] == "requests")
    assert (requests_row["failures"], requests_row["lag_events"]) == (1, 0)

    rebuilt = tidings("projections", "rebuild", "users", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt users: replayed 2 events" in rebuilt.stdout
    unknown = tidings("projections", "rebuild", "nonsense", env=env)
    assert unknown.returncode == 2
