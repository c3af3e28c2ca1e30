"""The `tidings` command line: one module per group of commands."""

from __future__ import annotations

from tidings.cli import events, projections, replay, running, tools
from tidings.cli.base import main

__all__ = ["events", "main", "projections", "replay", "running", "tools"]
