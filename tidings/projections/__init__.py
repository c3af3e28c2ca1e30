"""Read models and process managers fed by the event log."""

from __future__ import annotations
