"""The embedded PostgreSQL: started when no url is set, reused, and never started otherwise."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil

from tests.cli import clean_env, tidings

EVENT = json.dumps(
    {
        "instance_id": "acme",
        "aggregate_type": "user",
        "aggregate_id": "u1",
        "event_type": "user.human.added",
        "payload": {"username": "ada"},
    }
)


def postgres_running_in(data_dir: Path) -> bool:
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(data_dir) in " ".join(cmdline):
            return True
    return False


def wait_until_stopped(data_dir: Path, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not postgres_running_in(data_dir):
            return True
        time.sleep(0.1)
    return False


def test_embedded_database_is_created_then_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "tidings" / "pgdata"  # inside the data folder
    env = clean_env(TIDINGS_DATA_DIR=str(tmp_path / "tidings"))

    first = tidings("migrate", env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "initialising the embedded PostgreSQL" in first.stderr
    assert (data_dir / "PG_VERSION").exists()
    assert "applied 0001_events" in first.stdout
    assert wait_until_stopped(data_dir), "the server stops when its last user exits"

    appended = tidings("events", "append", "-", env=env, stdin=EVENT, timeout=120)
    assert appended.returncode == 0, appended.stderr
    assert "starting the embedded PostgreSQL" in appended.stderr
    assert "initialising" not in appended.stderr

    again = tidings("migrate", env=env, timeout=120)
    assert "nothing to apply" in again.stdout
    replay = tidings("replay", "--format", "jsonl", env=env, timeout=120)
    assert replay.returncode == 0, replay.stderr
    (row,) = [json.loads(r) for r in replay.stdout.splitlines()]
    assert row["payload"] == {"username": "ada"}
    assert wait_until_stopped(data_dir)


def test_the_longer_variable_names_the_same_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "other"
    env = clean_env(TIDINGS_DATABASE_DATA_DIR=str(data_dir))
    shown = json.loads(tidings("config", "show", "--format", "json", env=env).stdout)
    assert shown["database"]["data_dir"] == str(data_dir)


def test_with_a_url_nothing_is_started(conninfo: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "never"
    env = clean_env(TIDINGS_DATABASE_URL=conninfo, TIDINGS_DATA_DIR=str(data_dir))
    result = tidings("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "embedded" not in result.stderr
    assert not data_dir.exists()
