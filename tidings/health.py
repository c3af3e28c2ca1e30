"""Metrics and probes over HTTP: /metrics, /healthz and /readyz on one address.

A deliberately small asyncio HTTP/1.1 server (one request per connection),
running in the same event loop as the workers and the projector:

* /healthz answers 200 as long as that loop runs; a blocked or dead process
  does not answer at all, which is what a liveness probe wants to see.
* /readyz answers 200 only when the database answers a query within
  `check_timeout` and the projector lag is at most `ready_max_projector_lag`
  (0: not checked); otherwise 503, with one line per check saying which failed.
* /metrics reads the queue and projector gauges from the database first (they
  describe the system, not this process, and cost two small queries per
  scrape), then renders the registry. A database that does not answer sets
  tidings_database_up to 0 and drops those gauges; the page is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from types import TracebackType
from typing import ClassVar
from urllib.parse import urlsplit

import psycopg
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from tidings.clock import Clock, utc_now
from tidings.config.durations import format_duration
from tidings.errors import TidingsError
from tidings.eventstore import Database
from tidings.metrics import Metrics
from tidings.projections import Projector
from tidings.workers import PendingQueue

log = logging.getLogger("tidings.health")

SETTING = "--metrics-addr or operations.metrics_addr (TIDINGS_OPERATIONS_METRICS_ADDR)"
LAG_SETTING = "operations.ready_max_projector_lag (TIDINGS_OPERATIONS_READY_MAX_PROJECTOR_LAG)"
_READ_TIMEOUT = 5.0  # a client gets this long to send its request line and headers
_DB_ERRORS = (TidingsError, psycopg.Error, TimeoutError, OSError)


class OperationsAddressError(TidingsError):
    """The metrics and probes address cannot be served."""

    fields: ClassVar[tuple[str, ...]] = ("address", "setting")
    address: str | None
    setting: str | None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: list[str]  # one line per check: "database: ok", "projector lag: ..."

    def text(self) -> str:
        return "\n".join(self.checks) + "\n"


class OperationsServer:
    """Serves /metrics, /healthz and /readyz on host:port until closed.

    `projector` is only read (its status), never run: a worker-only process
    reports the projector's lag too, since the lag is the system's. The
    readiness checks share `check_timeout` (keep a probe's own timeout above
    it); a scrape's queries get `scrape_timeout`, since counting a large
    backlog is slow exactly when its figures matter. Once `stop` is set,
    /readyz answers 503: the process is finishing its work and exiting.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        db: Database,
        metrics: Metrics,
        projector: Projector,
        ready_max_projector_lag: timedelta,
        clock: Clock = utc_now,
        check_timeout: float = 1.0,
        scrape_timeout: float = 5.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._db = db
        self._metrics = metrics
        self._projector = projector
        self._queue = PendingQueue(pool=db.pool)
        self._max_lag = ready_max_projector_lag
        self._clock = clock
        self._timeout = check_timeout
        self._scrape_timeout = scrape_timeout
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._refreshing = asyncio.Lock()
        self._stop = stop if stop is not None else asyncio.Event()
        self._was_ready: bool | None = None
        self._database_was_up: bool | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self._host, self._port
        bound = self._server.sockets[0].getsockname()
        return self._host, int(bound[1])

    async def start(self) -> None:
        """Bind and serve; an address in use fails here, naming it and the setting."""
        where = _format_address(self._host, self._port)
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OperationsAddressError(
                f"cannot serve metrics and probes on {where}: {reason}; choose another "
                f"address with {SETTING}",
                address=where,
                setting="operations.metrics_addr",
            ) from exc
        log.info(
            "serving /metrics, /healthz and /readyz on http://%s",
            _format_address(*self.address),
            extra={"metrics_addr": _format_address(*self.address)},
        )

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for handler in list(self._handlers):  # requests in flight: the process is stopping
            handler.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> OperationsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def readiness(self) -> Readiness:
        """Check the database, then the projector lag, within one check_timeout."""
        if self._stop.is_set():  # shutting down: take no new traffic
            return self._tell(Readiness(False, ["shutting down"]))
        check_lag = self._max_lag > timedelta(0)
        checks: list[str] = []
        try:
            async with asyncio.timeout(self._timeout):
                await self._db.store.last_position()
                checks.append("database: ok")
                statuses = await self._projector.status() if check_lag else []
        except _DB_ERRORS as exc:
            why = _describe(exc, self._timeout)
            failed = "projector lag: unknown" if checks else "database: not answering"
            return self._tell(Readiness(False, [*checks, f"{failed} ({why})"]))
        if not check_lag:
            return self._tell(Readiness(True, [*checks, "projector lag: not checked"]))
        now = self._clock()
        worst = max(statuses, key=lambda status: status.lag_seconds(now))
        lag = timedelta(seconds=round(worst.lag_seconds(now), 3))
        events = f"{worst.lag_events} event{'' if worst.lag_events == 1 else 's'}"
        said = f"{format_duration(lag)} in projection {worst.name} ({events})"
        limit = format_duration(self._max_lag)
        if lag > self._max_lag:
            line = f"projector lag: {said} exceeds {limit}, the {LAG_SETTING}"
            stuck = [status for status in statuses if status.unreachable]
            if stuck:
                count = sum(status.unreachable for status in stuck)
                line += (
                    f"; it cannot clear: {count} "
                    f"{'event lies' if count == 1 else 'events lie'} beyond "
                    "any position the store hands out (written by hand?) and the projector "
                    "cannot reach them: run `tidings audit verify` (rule position-reachable)"
                )
            return self._tell(Readiness(False, [*checks, line]))
        return self._tell(Readiness(True, [*checks, f"projector lag: {said}, within {limit}"]))

    async def refresh(self) -> None:
        """Read the queue counts and projector status into the gauges, or mark the DB down."""
        async with self._refreshing:
            try:
                async with asyncio.timeout(self._scrape_timeout):
                    counts = await self._queue.counts(self._clock())
                    statuses = await self._projector.status()
            except _DB_ERRORS as exc:
                self._metrics.database_down()
                if self._database_was_up is not False:
                    log.warning(
                        "metrics: the database did not answer (%s); tidings_database_up is 0",
                        _describe(exc, self._scrape_timeout),
                    )
                self._database_was_up = False
                return
            self._metrics.database_up.set(1)
            self._metrics.queue_counts(counts)
            now = self._clock()
            for status in statuses:
                self._metrics.projector_lag(
                    status.name, events=status.lag_events, seconds=status.lag_seconds(now)
                )
            if self._database_was_up is False:
                log.info("metrics: the database answers again")
            self._database_was_up = True

    def _tell(self, readiness: Readiness) -> Readiness:
        """Log when readiness changes, not on every probe."""
        if readiness.ready != self._was_ready:
            if readiness.ready:
                log.info("ready: %s", "; ".join(readiness.checks))
            else:
                log.warning(
                    "not ready: %s",
                    "; ".join(readiness.checks),
                    extra={"checks": readiness.checks},
                )
        self._was_ready = readiness.ready
        return readiness

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            try:
                async with asyncio.timeout(_READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            method, path = _request_line(head)
            status, content_type, body = await self._route(method, path)
            await _respond(writer, status, content_type, body, head_only=method == "HEAD")
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            # The process stops while a request is in flight (close() cancels
            # it): the connection just closes. Not re-raised: the task ends
            # here, and asyncio would log a cancelled handler as a traceback.
            pass
        except Exception:  # a bug answers 500 and is logged; the server keeps serving
            log.exception("operations server failed on a request")
            with contextlib.suppress(ConnectionError):
                await _respond(writer, 500, "text/plain", b"internal error\n", head_only=False)
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if not method:
            return 400, "text/plain", b"bad request\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed: use GET\n"
        if path == "/metrics":
            await self.refresh()
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            readiness = await self.readiness()
            return (200 if readiness.ready else 503), "text/plain", readiness.text().encode()
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"


def _request_line(head: bytes) -> tuple[str, str]:
    """(method, path) of `GET /path?query HTTP/1.1`, or ("", "") when unreadable."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", ""
    return parts[0].upper(), urlsplit(parts[1]).path


async def _respond(
    writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, *, head_only: bool
) -> None:
    reason = HTTPStatus(status).phrase
    headers = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    writer.write(headers.encode("latin-1") + (b"" if head_only else body))
    await writer.drain()


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
