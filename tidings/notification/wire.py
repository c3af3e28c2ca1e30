"""How the event payloads write what is not JSON already: durations as text.

Inside tidings a duration is a `timedelta`; in a payload it is the text an
operator reads (`2s`, `1m30s`, `500ms`), written by `format_duration` and read
back by `parse_duration` (which also takes the source events' Go-style
`1h0m0s`). This is the only place that form is part of the event models, so
the settings' own duration type can change without touching the log.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from tidings.config.durations import format_duration, parse_duration

__all__ = ["Duration", "format_duration", "parse_duration"]

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration in an event payload: a timedelta, written as text."""
