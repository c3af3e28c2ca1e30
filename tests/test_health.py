"""/healthz and /readyz: a dead database, a lagging projector, and the address itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from tests.cli import clean_env, tidings
from tests.ops_helpers import (
    ServedOperations,
    free_port,
    get,
    operations_server,
    running,
    scrape,
    serving,
    value,
    wait_for,
)
from tests.worker_helpers import user_added, worker_settings
from tidings.api import AddressError
from tidings.eventstore import Database, migrate
from tidings.metrics import Metrics
from tidings.projections import Projector, default_projections


def status_is(url: str, status: int, *texts: str) -> Any:
    """A condition: GET url answers `status` with each of `texts` in its body."""

    async def condition() -> bool:
        response = await get(url)
        return (
            response is not None
            and response.status_code == status
            and all(text in response.text for text in texts)
        )

    return condition


class ThrowawayPostgres:
    """A PostgreSQL server of this test's own, which it may stop and start again."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.uri: str = server.get_uri()

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster): clients are cut off, nothing answers."""
        pid = self._server.get_pid()
        os.kill(pid, signal.SIGINT)
        psutil.Process(pid).wait(timeout=30)

    def start(self) -> None:
        self._server.ensure_postgres_running()


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns at import when XDG_RUNTIME_DIR is unset
        from pgserver.postgres_server import get_server

    root = Path(tempfile.mkdtemp(prefix="tidings-readyz-"))
    server = get_server(root / "data", cleanup_mode="delete")
    try:
        yield ThrowawayPostgres(server)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def test_readiness_follows_a_database_that_stops_and_comes_back(
    throwaway_postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    pg = throwaway_postgres
    async with await psycopg.AsyncConnection.connect(pg.uri) as conn:
        await migrate(conn)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        TIDINGS_DATABASE_URL=pg.uri,
        TIDINGS_NOTIFICATIONS_REQUEUE_EVERY="200ms",
        TIDINGS_NOTIFICATIONS_RETRY_REQUEUE_EVERY="200ms",
    )
    # One process: its probes are the ones read (several would serve port, port + 1...).
    args = ["run", "--processes", "1", "--metrics-addr", f"127.0.0.1:{port}"]
    with running(args, env, tmp_path / "run") as run:
        await serving(base, run)
        await wait_for(status_is(base + "/readyz", 200, "database: ok"), "ready")

        pg.stop()
        await wait_for(
            status_is(base + "/readyz", 503, "database: not answering"), "not ready without a DB"
        )
        assert (await get(base + "/healthz")).status_code == 200  # type: ignore[union-attr]
        down = await scrape(base)
        assert value(down, "tidings_database_up") == 0
        assert run.proc.poll() is None, "the process rides the outage out"

        pg.start()
        await wait_for(status_is(base + "/readyz", 200, "database: ok"), "ready again", 90)
        assert value(await scrape(base), "tidings_database_up") == 1
        assert run.stop() == 0, run.stderr()
    assert "Traceback" not in run.stderr()
    assert "not ready: database: not answering" in run.stderr()


async def test_readiness_fails_while_the_projector_lags_even_in_a_worker_only_pod(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    worker_port, projector_port = free_port(), free_port()
    worker, projector = (f"http://127.0.0.1:{p}" for p in (worker_port, projector_port))
    env = clean_env(
        TIDINGS_DATABASE_URL=conninfo, TIDINGS_OPERATIONS_READY_MAX_PROJECTOR_LAG="300ms"
    )
    worker_env = {**env, "TIDINGS_OPERATIONS_METRICS_ADDR": f"127.0.0.1:{worker_port}"}
    # One process: its probes are the ones read (several would serve port, port + 1...).
    args = ["run", "--processes", "1", "--no-projector", "--workers", "1", "--retry-workers", "0"]
    with running(args, worker_env, tmp_path / "worker") as worker_process:
        await serving(worker, worker_process)
        ready = status_is(worker + "/readyz", 200, "projector lag: 0s in projection")
        await wait_for(ready, "ready")

        await db.store.append([user_added()])  # no projector handles it
        await wait_for(
            status_is(worker + "/readyz", 503, "projector lag", "exceeds 300ms",
                      "TIDINGS_OPERATIONS_READY_MAX_PROJECTOR_LAG"),
            "not ready while the event waits",
        )  # fmt: skip
        lagging = await scrape(worker)
        assert value(lagging, "tidings_projector_lag_events", projection="users") == 1
        assert value(lagging, "tidings_projector_lag_seconds", projection="users") > 0.3

        # A projector-only pod, probed on its own address, catches up.
        projector_args = ["projections", "run", "--metrics-addr", f"127.0.0.1:{projector_port}"]
        with running(projector_args, env, tmp_path / "projector") as projector_process:
            await serving(projector, projector_process)
            await wait_for(status_is(projector + "/readyz", 200), "the projector pod ready")
            await wait_for(status_is(worker + "/readyz", 200), "the worker pod ready again")
            caught_up = await scrape(projector)
            assert value(caught_up, "tidings_projector_lag_events", projection="users") == 0
            assert value(caught_up, "tidings_database_up") == 1
            assert projector_process.stop() == 0, projector_process.stderr()
        assert worker_process.stop() == 0, worker_process.stderr()


def test_a_port_in_use_stops_run_with_the_address_and_the_setting(conninfo: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(TIDINGS_DATABASE_URL=conninfo)
        result = tidings("run", "--until-idle", "--metrics-addr", f"127.0.0.1:{port}", env=env)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot serve metrics and probes on 127.0.0.1:{port}: ")
    assert "in use" in line
    assert "--metrics-addr or operations.metrics_addr (TIDINGS_OPERATIONS_METRICS_ADDR)" in line


def test_a_bad_address_is_refused_before_anything_starts() -> None:
    env = clean_env(TIDINGS_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    option = tidings("run", "--metrics-addr", "localhost", env=env)
    assert option.returncode == 2
    assert "--metrics-addr" in option.stderr and "expected host:port" in option.stderr
    setting = tidings("run", env={**env, "TIDINGS_OPERATIONS_METRICS_ADDR": "127.0.0.1:99999"})
    assert setting.returncode == 2
    assert "operations.metrics_addr (env TIDINGS_OPERATIONS_METRICS_ADDR)" in setting.stderr
    assert "between 1 and 65535" in setting.stderr


def make_server(db: Database, **options: Any) -> AbstractAsyncContextManager[ServedOperations]:
    settings = worker_settings("http://127.0.0.1:9/unused")
    projector = Projector(
        db=db, projections=default_projections(db, settings), settings=settings.projections
    )
    return operations_server(
        db=db, metrics=Metrics(), projector=projector,
        ready_max_projector_lag=options.pop("ready_max_projector_lag", timedelta(seconds=30)),
        **options,
    )  # fmt: skip


async def test_paths_methods_and_shutdown(db: Database) -> None:
    stop = asyncio.Event()
    async with make_server(db, stop=stop) as server:
        base = f"http://127.0.0.1:{server.address[1]}"
        async with httpx.AsyncClient(timeout=10) as client:
            healthz = await client.get(base + "/healthz")
            assert (healthz.status_code, healthz.text) == (200, "ok\n")
            ready = await client.get(base + "/readyz?verbose=1")
            assert ready.status_code == 200
            assert ready.text.splitlines()[0] == "database: ok"
            assert ready.headers["content-type"].startswith("text/plain")
            missing = await client.get(base + "/status")
            assert missing.status_code == 404 and "/metrics" in missing.text
            posted = await client.post(base + "/metrics")
            assert posted.status_code == 405
            head = await client.head(base + "/metrics")
            assert head.status_code == 200 and head.content == b""

            stop.set()  # SIGTERM: take no new traffic while in-flight work finishes
            stopping = await client.get(base + "/readyz")
            assert (stopping.status_code, stopping.text) == (503, "shutting down\n")
            assert (await client.get(base + "/healthz")).status_code == 200

        reader, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
        writer.write(b"nonsense\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        await writer.wait_closed()


async def test_lag_check_off_with_0s(db: Database) -> None:
    await db.store.append([user_added()])
    async with make_server(db, ready_max_projector_lag=timedelta(0)) as server:
        response = await get(f"http://127.0.0.1:{server.address[1]}/readyz")
        assert response is not None and response.status_code == 200
        assert response.text == "database: ok\nprojector lag: not checked\n"


async def test_a_port_in_use_fails_at_start(db: Database) -> None:
    async with make_server(db) as first:
        port = first.address[1]
        with pytest.raises(AddressError) as caught:
            async with make_server(db, port=port):
                pass
    assert caught.value.address == f"127.0.0.1:{port}"
    assert caught.value.setting == "operations.metrics_addr"
    assert f"cannot serve metrics and probes on 127.0.0.1:{port}" in str(caught.value)


async def test_a_shutdown_during_a_probe_ends_it_quietly(
    db: Database, conninfo: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A /readyz waiting on the database when the process stops: closed, no traceback."""
    caplog.set_level(logging.DEBUG)
    stack = contextlib.AsyncExitStack()
    server = await stack.enter_async_context(make_server(db, check_timeout=30.0))
    base = f"http://127.0.0.1:{server.address[1]}"
    async with await psycopg.AsyncConnection.connect(conninfo) as locker:
        await locker.execute("LOCK TABLE tidings.events IN ACCESS EXCLUSIVE MODE")
        async with httpx.AsyncClient(timeout=20) as client:
            probe = asyncio.create_task(client.get(base + "/readyz"))

            async def waiting() -> bool:
                async with await psycopg.AsyncConnection.connect(conninfo) as watcher:
                    cur = await watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                    row = await cur.fetchone()
                return bool(row and row[0])

            for _ in range(200):
                if await waiting():
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the probe never reached the database")
            started = asyncio.get_running_loop().time()
            server.operations.stop.set()  # SIGTERM: the process stops, then its server
            await stack.aclose()
            try:
                answer = await asyncio.wait_for(probe, 5)
            except httpx.HTTPError:
                pass  # the connection closed: quiet too
            else:
                assert (answer.status_code, answer.text) == (503, "shutting down\n")
            took = asyncio.get_running_loop().time() - started
        await locker.rollback()
    assert took < 3, f"the probe held the shutdown for {took:.1f}s"
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
