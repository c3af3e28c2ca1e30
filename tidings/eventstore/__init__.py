"""The append-only event store in PostgreSQL."""

from __future__ import annotations

from tidings.eventstore.database import Database, describe_target, open_database
from tidings.eventstore.errors import (
    AppendTooLarge,
    ConcurrencyError,
    DatabaseUnavailable,
    EventStoreError,
    MigrationError,
    SchemaNotReady,
)
from tidings.eventstore.listener import wakeups
from tidings.eventstore.migrate import current_version, latest_version, migrate
from tidings.eventstore.models import (
    EVENTS_CHANNEL,
    AppendedEvent,
    EventQuery,
    NewEvent,
    ReadBatch,
    StoredEvent,
    WakeUp,
)
from tidings.eventstore.store import EventStore, single_statement

__all__ = [
    "EVENTS_CHANNEL",
    "AppendTooLarge",
    "AppendedEvent",
    "ConcurrencyError",
    "Database",
    "DatabaseUnavailable",
    "EventQuery",
    "EventStore",
    "EventStoreError",
    "MigrationError",
    "NewEvent",
    "ReadBatch",
    "SchemaNotReady",
    "StoredEvent",
    "WakeUp",
    "current_version",
    "describe_target",
    "latest_version",
    "migrate",
    "open_database",
    "single_statement",
    "wakeups",
]
