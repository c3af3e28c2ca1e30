"""Errors of the event store, and the one place psycopg errors are translated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

from tidings.errors import TidingsError


class EventStoreError(TidingsError):
    """The event store failed."""

    fields: ClassVar[tuple[str, ...]] = ("sqlstate",)


class ConcurrencyError(EventStoreError):
    """Another writer appended to the aggregate first; nothing was written."""

    fields: ClassVar[tuple[str, ...]] = (
        "instance_id",
        "aggregate_type",
        "aggregate_id",
        "expected_sequence",
        "actual_sequence",
        "index",
    )
    instance_id: str | None
    aggregate_type: str | None
    aggregate_id: str | None
    expected_sequence: int | None
    actual_sequence: int | None
    index: int | None


class AppendTooLarge(EventStoreError):
    """One transaction may append at most 65,536 events; split the batch."""


class DatabaseUnavailable(EventStoreError):
    """The database does not answer; check that it runs and that database.url is right."""

    fields: ClassVar[tuple[str, ...]] = ("target",)


class InvalidEventData(EventStoreError):
    """The database refused this data (too long for an index, invalid text, a broken constraint).

    About the event or row being written, not about the database: retrying the
    same data fails the same way, so it is recorded as a failure and skipped.
    """


class SchemaNotReady(EventStoreError):
    """The database schema is missing or older than this tidings: run `tidings migrate`."""

    fields: ClassVar[tuple[str, ...]] = ("current_version", "expected_version")


class MigrationError(EventStoreError):
    """A migration could not be applied."""

    fields: ClassVar[tuple[str, ...]] = ("version", "name")


class EmbeddedDatabaseError(EventStoreError):
    """The embedded PostgreSQL could not start."""

    fields: ClassVar[tuple[str, ...]] = ("data_dir",)


class EmbeddedDatabaseRefused(EventStoreError):
    """No database.url is set and the embedded PostgreSQL is not allowed here (a container)."""


# Our own SQLSTATEs, raised by tidings.append_events().
_CONFLICT = "TD001"
_TOO_LARGE = "TD002"
_OUT_OF_ORDER = "TD003"


# What a PostgreSQL error is about, by its SQLSTATE class
# (https://www.postgresql.org/docs/current/errcodes-appendix.html). psycopg
# files 54 program_limit_exceeded (an index row too large) under
# OperationalError beside connection loss; retrying such data can only fail
# again, so it must never be taken for an outage.
# - about the data written: 22 data exception, 23 integrity constraint
#   violation, 54 program limit exceeded;
_DATA_CLASSES = frozenset({"22", "23", "54"})
# - about the database, worth retrying: 08 connection exception, 53
#   insufficient resources, 57 operator intervention (admin shutdown, query
#   canceled), 58 system error; and serialization failures and deadlocks,
#   which a retry of the same transaction resolves.
_OUTAGE_CLASSES = frozenset({"08", "53", "57", "58"})
_TRANSIENT_STATES = frozenset({"40001", "40P01", "55P03"})


def translate(exc: Exception) -> TidingsError:
    """Turn a psycopg or pool error into the tidings error that says what to do."""
    if isinstance(exc, TidingsError):
        return exc
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailable(f"no database connection available: {exc}")
    if not isinstance(exc, psycopg.Error):
        return EventStoreError(f"event store failed: {exc}")
    state = exc.sqlstate
    primary = exc.diag.message_primary or str(exc)
    if state in (_CONFLICT, _OUT_OF_ORDER):
        detail = _detail(exc)
        return ConcurrencyError(primary, sqlstate=state, **detail)
    if state == _TOO_LARGE:
        return AppendTooLarge(sqlstate=state)
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return ConcurrencyError(
            f"concurrent append: {exc.diag.message_detail or primary}", sqlstate=state
        )
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
        return SchemaNotReady(
            f"the database has no tidings schema ({primary}): run `tidings migrate`",
            sqlstate=state,
        )
    if state is not None and state[:2] in _DATA_CLASSES:
        return InvalidEventData(
            f"the database refused the data ({state}): {primary}", sqlstate=state
        )
    lost = state is None and isinstance(exc, psycopg.OperationalError)  # no server answer
    if lost or (state is not None and (state[:2] in _OUTAGE_CLASSES or state in _TRANSIENT_STATES)):
        return DatabaseUnavailable(f"database unavailable: {primary}", sqlstate=state)
    return EventStoreError(f"database error {state}: {primary}", sqlstate=state)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise psycopg errors raised inside as tidings errors."""
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        raise translate(exc) from exc


def _detail(exc: psycopg.Error) -> dict[str, Any]:
    fields = ConcurrencyError.fields
    try:
        raw = json.loads(exc.diag.message_detail or "{}")
    except json.JSONDecodeError:
        return {}
    return {key: raw.get(key) for key in fields}
