"""What a producer may append through POST /v1/events: one small check.

Kept to one function on purpose: issue 10 brings the one reusable check of
producer events (documented types, bounded ids and payloads), which replaces
this one at merge.
"""

from __future__ import annotations

from typing import Any


def producer_problem(
    *, aggregate_type: str, aggregate_id: str, event_type: str, payload: dict[str, Any]
) -> str | None:
    """Why a producer may not append this event, or None when it may."""
    prefix = event_type.split(".", 1)[0]
    if prefix not in ("user", "session") or "." not in event_type:
        return (
            f"{event_type!r} is not a producer event: only user.* and session.* events "
            "may be appended (see docs/events.md)"
        )
    if aggregate_type != prefix:
        return f"{event_type} belongs on a {prefix!r} aggregate, not {aggregate_type!r}"
    return None  # payload sizes are bounded by api.max_body until issue 10's check


NUL_MESSAGE = "contains a NUL character (\\u0000), which cannot be stored: remove it"


def nul_path(value: Any, path: str) -> str | None:
    """Where `value` holds a NUL character (\\u0000), which PostgreSQL cannot store
    in text or jsonb, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return f"{path}.{key!r}"
            found = nul_path(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}.{index}")
            if found is not None:
                return found
    return None
