"""The `tidings` command line: one module per group of commands."""

from __future__ import annotations

from tidings.cli import (
    audit,
    events,
    notifications,
    projections,
    replay,
    running,
    serve,
    tools,
)
from tidings.cli.base import main

__all__ = [
    "audit",
    "events",
    "main",
    "notifications",
    "projections",
    "replay",
    "running",
    "serve",
    "tools",
]
