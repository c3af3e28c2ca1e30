"""Operating a real `tidings` process: a webhook sink, the process, scrapes and probes.

The sink answers each notification's attempts from a plan (status and body per
attempt, 200 once the plan is used up), so retries and cancels are decided by
notification id, not by the order concurrent sends arrive in.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tidings.api import Operations, create_operations_app
from tidings.api import serving as api_serving
from tidings.api.health import operations_serving_settings
from tidings.config import APISettings
from tidings.eventstore import Database
from tidings.metrics import Metrics
from tidings.projections import Projector

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PlannedSink:
    """A webhook receiver on 127.0.0.1: records (notification id, attempt) of each POST."""

    def __init__(self) -> None:
        self.url = ""
        self.plan: dict[str, list[tuple[int, bytes]]] = {}
        self._deliveries: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def deliveries(self) -> list[tuple[str, int, int]]:
        """(notification id, attempt, status answered) of each delivery so far."""
        with self._lock:
            return list(self._deliveries)

    def answer(self, body: bytes) -> tuple[int, bytes]:
        document = json.loads(body)
        notification_id, attempt = document["notification_id"], int(document["attempt"])
        planned = self.plan.get(notification_id, [])
        status, reply = planned[attempt - 1] if attempt <= len(planned) else (200, b"")
        with self._lock:
            self._deliveries.append((notification_id, attempt, status))
        return status, reply


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, reply = self.server.sink.answer(body)
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        """No request lines on stderr."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, sink: PlannedSink) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sink = sink


@contextmanager
def planned_sink(path: str = "/hooks", userinfo: str = "") -> Iterator[PlannedSink]:
    """A running sink; `userinfo` ("user:pass@") goes into its URL as credentials."""
    sink = PlannedSink()
    server = _Server(sink)
    host, port = server.server_address[:2]
    sink.url = f"http://{userinfo}{host!s}:{port}{path}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Process:
    """A `python -m tidings ...` subprocess; stdout and stderr go to files."""

    def __init__(self, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.stdout_path = logs.with_suffix(".out")
        self.stderr_path = logs.with_suffix(".err")
        self._out = self.stdout_path.open("w")
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", *args], env=env, stdout=self._out, stderr=self._err
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, then wait; SIGKILL if it does not end in time."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=10)
        finally:
            self._out.close()
            self._err.close()


@contextmanager
def running(args: list[str], env: dict[str, str], logs: Path) -> Iterator[Process]:
    """The process for the block; stopped (and killed if need be) when it ends."""
    process = Process(args, env, logs)
    try:
        yield process
    finally:
        process.stop()


async def wait_for(
    condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 30
) -> None:
    """Poll `condition` until it holds, or fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        await asyncio.sleep(0.1)


async def get(url: str) -> httpx.Response | None:
    """GET url, or None when nothing answers (yet)."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(url)
    except httpx.TransportError:
        return None


async def serving(base: str, process: Process) -> None:
    """Wait until the process answers /healthz; fail at once if it exited."""

    async def up() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"tidings exited {process.proc.returncode}: {process.stderr()}")
        response = await get(base + "/healthz")
        return response is not None and response.status_code == 200

    await wait_for(up, f"{base}/healthz")


async def scrape(base: str) -> Samples:
    """/metrics as {(sample name, labels): value}."""
    response = await get(base + "/metrics")
    assert response is not None and response.status_code == 200, response
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when it is absent (a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of `name`, by labels."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


@dataclass(frozen=True)
class ServedOperations:
    address: tuple[str, int]
    operations: Operations


@asynccontextmanager
async def operations_server(
    *,
    db: Database,
    metrics: Metrics,
    projector: Projector,
    ready_max_projector_lag: timedelta,
    port: int = 0,
    **options: Any,
) -> AsyncIterator[ServedOperations]:
    """/metrics, /healthz and /readyz on a real uvicorn, as `tidings run --metrics-addr` serves."""
    operations = Operations(
        db=db,
        metrics=metrics,
        projector=projector,
        ready_max_projector_lag=ready_max_projector_lag,
        **options,
    )
    async with api_serving(
        create_operations_app(operations),
        host="127.0.0.1",
        port=port,
        settings=operations_serving_settings(APISettings()),
        setting="operations.metrics_addr",
        what="metrics and probes",
    ) as bound:
        yield ServedOperations(bound, operations)
