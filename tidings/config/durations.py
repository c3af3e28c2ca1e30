"""Durations as operators write them: `500ms`, `2s`, `5m`, `1h`, `1h30m`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_HELP = "a duration such as 500ms, 2s, 5m, 1h or 1h30m"


def parse_duration(value: Any) -> timedelta:
    """Read a duration written as `<number><unit>` parts (ms, s, m, h, d)."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {DURATION_HELP}")
    text = value.strip().replace(" ", "")
    if text == "0":
        return timedelta(0)
    pos, seconds = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"expected {DURATION_HELP}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Write a duration back in the shortest form `parse_duration` reads."""
    millis = round(value.total_seconds() * 1000)
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


class Within:
    """A duration setting's bounds, as written in defaults.yaml: `Within("1s", "1h")`."""

    def __init__(self, low: str, high: str) -> None:
        self.low, self.high = low, high
        self._lowest, self._highest = parse_duration(low), parse_duration(high)

    def __call__(self, value: timedelta) -> timedelta:
        if not self._lowest <= value <= self._highest:
            raise ValueError(f"must be between {self.low} and {self.high}")
        return value


def within(low: str, high: str) -> AfterValidator:
    """Annotate a Duration with its bounds (see Within)."""
    return AfterValidator(Within(low, high))
