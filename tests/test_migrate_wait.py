"""`tidings migrate --wait`: the init container that holds a pod until the migration Job ran."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.cli import clean_env, tidings


def test_wait_returns_once_another_process_migrated(empty_conninfo: str) -> None:
    env = clean_env(TIDINGS_DATABASE_URL=empty_conninfo)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tidings", "migrate", "--wait", "60s"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # blocks until the first look at the schema
        assert "waiting for the migration: the schema is at version 0" in first, first
        assert waiting.poll() is None, "it migrates nothing itself"

        job = tidings("migrate", env=env)
        assert job.returncode == 0, job.stderr

        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert "schema at version" in out and "as this tidings needs" in out


def test_wait_gives_up_and_says_where_to_look(empty_conninfo: str) -> None:
    env = clean_env(TIDINGS_DATABASE_URL=empty_conninfo)
    started = time.monotonic()
    result = tidings("migrate", "--wait", "1500ms", env=env)
    assert result.returncode == 1
    assert time.monotonic() - started >= 1.5
    assert "gave up waiting after" in result.stderr
    assert "kubectl logs job/tidings-migrate" in result.stderr
    # and it applied nothing:
    assert "waiting for the migration: the schema is at version 0" in result.stderr
    again = tidings("migrate", "--wait", "100ms", env=env)
    assert again.returncode == 1


def test_wait_takes_a_duration_and_no_target(conninfo: str) -> None:
    env = clean_env(TIDINGS_DATABASE_URL=conninfo)
    assert tidings("migrate", "--wait", "soon", env=env).returncode == 2
    assert tidings("migrate", "--wait", "5s", "--to", "1", env=env).returncode == 2
    current = tidings("migrate", "--wait", "5s", env=env)
    assert current.returncode == 0, current.stderr
    assert "as this tidings needs" in current.stdout
