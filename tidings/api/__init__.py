"""`tidings serve`: the HTTP API (producer endpoints, reads, operations endpoints), auth."""

from __future__ import annotations

from tidings.api.app import create_app, create_operations_app, openapi_document, running_feeds
from tidings.api.health import Operations, Readiness
from tidings.api.keys import SCOPES, ApiKeyError, ApiKeys, Principal
from tidings.api.server import AddressError, serving
from tidings.api.state import ApiState

__all__ = [
    "SCOPES",
    "AddressError",
    "ApiKeyError",
    "ApiKeys",
    "ApiState",
    "Operations",
    "Principal",
    "Readiness",
    "create_app",
    "create_operations_app",
    "openapi_document",
    "running_feeds",
    "serving",
]
