"""The ASGI application of `tidings serve` (FastAPI: its OpenAPI comes from the
same pydantic models as the events), and the operations-only app of `tidings
run --metrics-addr`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from tidings import __version__
from tidings.api import events, notifications
from tidings.api.health import Operations, operations_router
from tidings.api.limits import BodyLimits
from tidings.api.problems import install_problem_handlers, problems_only_as_problem_json
from tidings.api.state import ApiState

DESCRIPTION = """\
Producers append user and session events and request notifications; operators
read them. Everything under `/v1/` needs `Authorization: Bearer <key>`, a key of
one instance (`tidings apikeys create --instance ID`). `/metrics`, `/healthz`,
`/readyz`, `/openapi.json` and `/docs` need none: restrict them at the network
level. Errors are `application/problem+json`. See docs/api.md.
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
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems_only_as_problem_json(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app(*, api: ApiState, operations: Operations) -> ASGIApp:
    """The whole API: /v1/ routes, operations endpoints, OpenAPI and docs."""
    app = _api_app()
    app.state.api = api
    app.include_router(operations_router(operations))
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


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document (what /openapi.json serves; docs/openapi.json)."""
    return _api_app().openapi()
