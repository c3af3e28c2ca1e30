"""tidings: an event-sourced notification worker pool on PostgreSQL."""

from __future__ import annotations

__version__ = "0.1.0"
