"""What goes into the log, what comes out, and how to ask for it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, field_validator

from tidings.models import FrozenModel

EVENTS_CHANNEL = "tidings_events"


class NewEvent(FrozenModel):
    """An event to append.

    `expected_sequence` is the aggregate's last sequence as the writer saw it
    (0 for a new aggregate); None appends after whatever is last.
    """

    instance_id: str = Field(min_length=1)
    aggregate_type: str = Field(min_length=1)
    aggregate_id: str = Field(min_length=1)
    event_type: str = Field(min_length=1)
    payload: dict[str, Any] = Field(default_factory=dict)
    expected_sequence: int | None = Field(default=None, ge=0)
    owner: str = ""
    creator: str = ""


class StoredEvent(FrozenModel):
    """An event as the log holds it."""

    instance_id: str
    aggregate_type: str
    aggregate_id: str
    sequence: int
    event_type: str
    payload: dict[str, Any]
    owner: str
    creator: str
    created_at: datetime
    position: int

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StoredEvent:
        """Build from a `select_events` row without re-validating what the database checked."""
        (instance_id, aggregate_type, aggregate_id, sequence, event_type,
         payload, owner, creator, created_at, position) = row[:10]  # fmt: skip
        return cls.model_construct(
            instance_id=instance_id,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            sequence=sequence,
            event_type=event_type,
            payload=payload,
            owner=owner,
            creator=creator,
            created_at=created_at,
            position=position,
        )


class AppendedEvent(FrozenModel):
    """Where an appended event landed."""

    position: int
    sequence: int
    created_at: datetime


class EventQuery(FrozenModel):
    """Filters for a read of the log; every filter given must hold.

    Event types may end in `*` as a wildcard (`notification.*`).
    """

    instance_ids: tuple[str, ...] | None = None
    aggregate_types: tuple[str, ...] | None = None
    aggregate_ids: tuple[str, ...] | None = None
    event_types: tuple[str, ...] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    position_after: int | None = None
    limit: int | None = Field(default=None, ge=1)

    @field_validator("created_after", "created_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-11-21T10:00:00Z")
        return value


class ReadBatch(FrozenModel):
    """A batch of the ordered reader and where the next read resumes.

    `resume_after` may lie past the last event returned: every position up to
    it is final (written by finished transactions), even when filtered out.
    """

    events: tuple[StoredEvent, ...]
    resume_after: int


class WakeUp(FrozenModel):
    """An append committed: the last position and what it touched."""

    position: int | None = None
    instance_ids: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
