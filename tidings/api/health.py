"""The operations endpoints: /metrics, /healthz and /readyz.

They are routes of the same ASGI stack as the API (`tidings serve`), and the
whole app of `tidings run --metrics-addr`:

* /healthz answers 200 as long as the event loop runs; a blocked or dead
  process does not answer at all, which is what a liveness probe wants to see.
* /readyz answers 200 only when the database answers a query within
  `check_timeout` and the projector lag is at most `ready_max_projector_lag`
  (0: not checked); otherwise 503, with one line per check saying which failed.
  Once `stop` is set it answers 503: the process is finishing and exiting.
* /metrics reads the queue and projector gauges from the database first (they
  describe the system, not this process, and cost two small queries per
  scrape), then serves the registry through prometheus_client's ASGI app. A
  database that does not answer sets tidings_database_up to 0 and drops those
  gauges; the page is still served.

No key is needed for any of them: operators restrict them at the network level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import make_asgi_app
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidings.clock import Clock, utc_now
from tidings.config import APISettings
from tidings.config.durations import format_duration
from tidings.errors import TidingsError
from tidings.eventstore import Database
from tidings.metrics import Metrics
from tidings.projections import Projector
from tidings.workers import PendingQueue

log = logging.getLogger("tidings.health")

LAG_SETTING = "operations.ready_max_projector_lag (TIDINGS_OPERATIONS_READY_MAX_PROJECTOR_LAG)"
_DB_ERRORS = (TidingsError, psycopg.Error, TimeoutError, OSError)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: list[str]  # one line per check: "database: ok", "projector lag: ..."

    def text(self) -> str:
        return "\n".join(self.checks) + "\n"


class Operations:
    """Readiness checks and the scrape-time gauges of one process.

    `projector` is only read (its status), never run: a worker-only process
    reports the projector's lag too, since the lag is the system's. The
    readiness checks share `check_timeout` (keep a probe's own timeout above
    it); a scrape's queries get `scrape_timeout`, since counting a large
    backlog is slow exactly when its figures matter.
    """

    def __init__(
        self,
        *,
        db: Database,
        metrics: Metrics,
        projector: Projector,
        ready_max_projector_lag: timedelta,
        clock: Clock = utc_now,
        check_timeout: float = 1.0,
        scrape_timeout: float = 5.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._db = db
        self.metrics = metrics
        self._projector = projector
        self._queue = PendingQueue(pool=db.pool)
        self._max_lag = ready_max_projector_lag
        self._clock = clock
        self._timeout = check_timeout
        self._scrape_timeout = scrape_timeout
        self._refreshing = asyncio.Lock()
        self.stop = stop if stop is not None else asyncio.Event()
        self._was_ready: bool | None = None
        self._database_was_up: bool | None = None

    async def readiness(self) -> Readiness:
        """Check the database, then the projector lag, within one check_timeout."""
        if self.stop.is_set():  # shutting down: take no new traffic
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
                self.metrics.database_down()
                if self._database_was_up is not False:
                    log.warning(
                        "metrics: the database did not answer (%s); tidings_database_up is 0",
                        _describe(exc, self._scrape_timeout),
                    )
                self._database_was_up = False
                return
            self.metrics.database_up.set(1)
            self.metrics.queue_counts(counts)
            now = self._clock()
            for status in statuses:
                self.metrics.projector_lag(
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


_NO_STORE = {"Cache-Control": "no-store"}


def operations_router(operations: Operations) -> APIRouter:
    """/healthz, /readyz and /metrics (GET and HEAD), outside the OpenAPI schema."""
    router = APIRouter(include_in_schema=False)

    @router.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> Response:
        return PlainTextResponse("ok\n", headers=_NO_STORE)

    @router.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz() -> Response:
        readiness = await _readiness_unless_stopped(operations)
        status = 200 if readiness.ready else 503
        return PlainTextResponse(readiness.text(), status_code=status, headers=_NO_STORE)

    router.routes.append(Route("/metrics", _MetricsPage(operations), methods=["GET", "HEAD"]))
    return router


async def _readiness_unless_stopped(operations: Operations) -> Readiness:
    """The readiness, or "shutting down" as soon as the process stops.

    A probe that waits on a hung database when the process stops answers at
    once, instead of holding the server's drain until it is cut with an error.
    """
    checking = asyncio.create_task(operations.readiness())
    stopping = asyncio.create_task(operations.stop.wait())
    try:
        await asyncio.wait({checking, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if checking.done():
        return checking.result()
    checking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await checking
    return Readiness(False, ["shutting down"])


class _MetricsPage:
    """prometheus_client's ASGI app, with the database gauges read just before."""

    def __init__(self, operations: Operations) -> None:
        self._operations = operations
        self._exposition = make_asgi_app(registry=operations.metrics.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._operations.refresh()
        await self._exposition(scope, receive, send)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def operations_serving_settings(api: APISettings) -> APISettings:
    """The server settings for metrics and probes: the API's, with a short drain.

    A probe or scrape in flight when the process stops (say one waiting on a
    database that hangs) is cut after a second instead of holding the exit.
    """
    return api.model_copy(update={"shutdown_timeout": timedelta(seconds=1)})
