"""The ASGI application of `tidings serve` (FastAPI: its OpenAPI comes from the
same pydantic models as the events), and the operations-only app of `tidings
run --metrics-addr`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from tidings import __version__
from tidings.api import events, me, notifications, presence
from tidings.api.event_stream import EventStreams
from tidings.api.health import Operations, operations_router
from tidings.api.limits import BodyLimits
from tidings.api.problems import install_problem_handlers, problems_only_as_problem_json
from tidings.api.state import ApiState
from tidings.feeds.runtime import FeedRuntime

log = logging.getLogger("tidings.api")

DESCRIPTION = """\
Producers append user and session events and request notifications; operators
read them. Everything under `/v1/` needs `Authorization: Bearer <key>`, a key of
one instance (`tidings apikeys create --instance ID`), except `/v1/me/`: the
end user's own feed, which takes the end user's token (a JWT or a tidings-hmac
token, as `Authorization: Bearer` or `?token=`; see docs/feeds.md). `/metrics`,
`/healthz`, `/readyz`, `/openapi.json`, `/docs` and `/inbox` need none: restrict
the operations endpoints at the network level. Errors are
`application/problem+json`. See docs/api.md.
"""


def _api_app() -> FastAPI:
    """The FastAPI app with the /v1/ routes, OpenAPI and docs; no state yet."""
    app = FastAPI(
        title="tidings",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install_problem_handlers(app, endpoints="see /docs for the API, or /metrics, /healthz, /readyz")
    app.include_router(events.router)
    app.include_router(notifications.router)
    app.include_router(me.router)
    app.include_router(presence.router)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems_only_as_problem_json(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app(*, api: ApiState, operations: Operations, feeds: FeedRuntime) -> ASGIApp:
    """The whole API: /v1/ routes, operations endpoints, OpenAPI and docs.

    `feeds` serves /v1/me/ and /inbox; it must run (`running_feeds`) while the
    app serves.
    """
    app = _api_app()
    app.state.api = api
    app.state.feeds = feeds
    app.include_router(operations_router(operations))
    limits = api.settings.api
    bodies = BodyLimits(
        app, max_body=limits.max_body, body_timeout=limits.body_timeout.total_seconds()
    )
    return EventStreams(bodies, feeds=feeds)  # GET /v1/me/stream without FastAPI's weight


@asynccontextmanager
async def running_feeds(feeds: FeedRuntime, stop: asyncio.Event) -> AsyncIterator[None]:
    """The feeds' hub and retention for the block (or until `stop`), then closed.

    Setting `stop` also ends the open streams (`event: closed`, "shutting
    down"), so the web server's drain does not wait on them.
    """
    running = asyncio.create_task(feeds.run(stop), name="feeds")
    try:
        yield
    finally:
        stop.set()
        try:
            await running
        except Exception:
            log.exception(
                "the feeds' hub failed; streams ended, clients resume from their cursor "
                "when the server is back: check the database connection"
            )
        finally:
            with contextlib.suppress(Exception):
                await feeds.close()


def create_operations_app(operations: Operations) -> ASGIApp:
    """Only /metrics, /healthz and /readyz (`tidings run --metrics-addr`)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_problem_handlers(app, endpoints="try /metrics, /healthz or /readyz")
    app.include_router(operations_router(operations))
    return app


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document (what /openapi.json serves; docs/openapi.json)."""
    return _api_app().openapi()
