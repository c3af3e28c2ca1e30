"""How the event payloads write what is not JSON already: durations as text.

Inside tidings a duration is a `timedelta`; in a payload it is the text an
operator reads (`2s`, `1m30s`, `500ms`), written by `format_duration` and read
back by `parse_duration` (which also takes the source events' Go-style
`1h0m0s`). This is the only place that form is part of the event models, so
the settings' own duration type can change without touching the log.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from tidings.config.durations import format_duration, parse_duration

__all__ = ["Duration", "format_duration", "parse_duration"]


def _read_duration(value: Any) -> timedelta:
    """parse_duration, remembering texts: a payload's duration is one of a handful (`10m`)."""
    return _read_text(value) if type(value) is str else parse_duration(value)


@functools.lru_cache(maxsize=256)
def _read_text(text: str) -> timedelta:
    return parse_duration(text)  # one that does not read raises, and is not remembered


Duration = Annotated[
    timedelta,
    BeforeValidator(_read_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration in an event payload: a timedelta, written as text."""
