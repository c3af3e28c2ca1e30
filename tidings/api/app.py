"""The ASGI application of `tidings serve` (FastAPI: its OpenAPI comes from the
same pydantic models as the events), and the operations-only app of `tidings
run --metrics-addr`."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp

from tidings import __version__
from tidings.api import events, notifications
from tidings.api.health import Operations, operations_router
from tidings.api.limits import BodyLimits
from tidings.api.problems import install_problem_handlers
from tidings.api.state import ApiState

DESCRIPTION = """\
Producers append user and session events and request notifications; operators
read them. Everything under `/v1/` needs `Authorization: Bearer <key>`, a key of
one instance (`tidings apikeys create --instance ID`). `/metrics`, `/healthz`,
`/readyz`, `/openapi.json` and `/docs` need none: restrict them at the network
level. Errors are `application/problem+json`. See docs/api.md.
"""


def create_app(*, api: ApiState, operations: Operations) -> ASGIApp:
    """The whole API: /v1/ routes, operations endpoints, OpenAPI and docs."""
    app = FastAPI(
        title="tidings",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.api = api
    install_problem_handlers(app, endpoints="see /docs for the API, or /metrics, /healthz, /readyz")
    app.include_router(operations_router(operations))
    app.include_router(events.router)
    app.include_router(notifications.router)
    limits = api.settings.api
    return BodyLimits(
        app, max_body=limits.max_body, body_timeout=limits.body_timeout.total_seconds()
    )


def create_operations_app(operations: Operations) -> ASGIApp:
    """Only /metrics, /healthz and /readyz (`tidings run --metrics-addr`)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_problem_handlers(app, endpoints="try /metrics, /healthz or /readyz")
    app.include_router(operations_router(operations))
    return app


def openapi_document(app: ASGIApp) -> dict[str, object]:
    """The OpenAPI document of an app made by create_app."""
    inner = app.app if isinstance(app, BodyLimits) else app
    assert isinstance(inner, FastAPI)
    return inner.openapi()
