"""Small builders shared by the tests."""

from __future__ import annotations

from typing import Any

from tidings.eventstore import NewEvent


def event(
    aggregate_id: str = "u1",
    event_type: str = "user.human.added",
    *,
    instance_id: str = "inst-1",
    aggregate_type: str = "user",
    expected: int | None = None,
    payload: dict[str, Any] | None = None,
) -> NewEvent:
    return NewEvent(
        instance_id=instance_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload=payload if payload is not None else {},
        expected_sequence=expected,
    )
