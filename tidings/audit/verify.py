"""`tidings audit verify`: check everything the log must always satisfy, on a live system.

How it stays out of the workers' and the projector's way:

1. The users model is replayed into a private temporary table first (see
   users_copy), in short transactions, up to the users checkpoint.
2. Everything else happens in one REPEATABLE READ, READ ONLY transaction:
   the log, the pending queue and the users model are read at one moment.
   It writes nothing, so it never gets a transaction id and never holds back
   the ordered readers' horizon; it takes only ACCESS SHARE locks, which
   conflict with no claim, append or projection (only with DDL: a migration
   waits for the audit to end). What it does hold back while it runs is
   VACUUM's cleanup of rows that die meanwhile, the pending queue's above all.
3. The walk reads the log in key order through a server-side cursor and
   keeps one aggregate in memory; the checks across aggregates and the
   comparisons run in SQL and stream only the rows that fail. Violations
   are all counted but only the first `max_violations` kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg

from tidings.audit.report import AuditReport, Violation, ViolationLog
from tidings.audit.sql import query
from tidings.audit.users_copy import (
    COPY,
    USERS_EVENT_TYPES,
    UsersCopy,
    users_checkpoint,
    users_events_upto,
)
from tidings.audit.walk import AggregateWalk, LogEvent
from tidings.config import NotificationSettings
from tidings.eventstore import Database
from tidings.eventstore.errors import translated_errors
from tidings.notification.requests import NOTIFICATION_AGGREGATE

Connection = psycopg.AsyncConnection[Any]
Progress = Callable[[int], None]

_PROGRESS_EVERY = 1000


class LogAuditor:
    """Verifies the log of one database (see the module's docstring for how)."""

    def __init__(
        self,
        *,
        db: Database,
        settings: NotificationSettings,
        max_violations: int = 1000,
        batch_size: int = 2000,
    ) -> None:
        self._db = db
        self._settings = settings
        self._max_violations = max_violations
        self._batch_size = batch_size

    async def events_to_check(self) -> int:
        """About how many events `verify` reads: the whole log, and the users events again."""
        with translated_errors():
            async with self._db.pool.connection() as conn:
                cur = await conn.execute(query("events_to_check"))
                row = await cur.fetchone()
                users = await users_events_upto(conn, await users_checkpoint(conn))
        return (int(row[0]) if row else 0) + users

    async def verify(self, *, progress: Progress | None = None) -> AuditReport:
        """Check every rule; `progress` is told how many more events were read."""
        violations = ViolationLog(keep=self._max_violations)
        with translated_errors():
            # Its own session: the users copy is a temporary table of this session.
            async with await psycopg.AsyncConnection.connect(
                self._db.conninfo, autocommit=True
            ) as conn:
                await conn.execute(query("audit_session"))
                copy = UsersCopy(conn)
                await copy.create()
                await copy.replay_to(await users_checkpoint(conn), progress=progress)
                # A long replay lets the projector move on: catch up once more, so
                # that few users (if any) moved between the copy and the snapshot.
                await copy.replay_to(await users_checkpoint(conn), progress=progress)

                await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                await conn.set_read_only(True)
                async with conn.transaction():
                    checked = await self._check_snapshot(conn, copy, violations, progress)
        return AuditReport(
            checked=checked,
            violations=tuple(violations.kept),
            violation_count=violations.count,
            by_rule=dict(sorted(violations.by_rule.items())),
        )

    async def _check_snapshot(
        self,
        conn: Connection,
        copy: UsersCopy,
        violations: ViolationLog,
        progress: Progress | None,
    ) -> dict[str, int]:
        checkpoint = await users_checkpoint(conn)
        walk = AggregateWalk(max_attempts=self._settings.max_attempts, violations=violations)
        unreported = 0
        async for row in self._stream(conn, query("walk_events")):
            walk.feed(LogEvent.from_row(row))
            unreported += 1
            if progress is not None and unreported >= _PROGRESS_EVERY:
                progress(unreported)
                unreported = 0
        if progress is not None and unreported:
            progress(unreported)

        async for row in self._stream(conn, query("unreachable_events")):
            violations.add(_unreachable(*row))
        async for row in self._stream(conn, query("requests_without_source")):
            violations.add(_missing_source(*row))
        async for row in self._stream(conn, query("sent_without_source_sent")):
            violations.add(_missing_source_sent(*row))
        async for row in self._stream(conn, query("pending_mismatches")):
            violations.add(_pending_mismatch(*row))
        users = {
            "copied_upto": copy.upto,
            "checkpoint": checkpoint,
            "event_types": USERS_EVENT_TYPES,
        }
        async for row in self._stream(conn, query("users_mismatches").format(copy=COPY), users):
            violations.add(_users_mismatch(*row))
        cur = await conn.execute(query("users_moved_count"), users)
        moved = await cur.fetchone()
        cur = await conn.execute(query("snapshot_counts"))
        counts = await cur.fetchone()
        assert counts is not None

        c = walk.counts
        return {
            "events": c.events,
            "aggregates": c.aggregates,
            "notifications": c.notifications,
            "requests": c.requests,
            "sent": c.sent,
            "last_position": int(counts[0]),
            "pending_rows": int(counts[1]),
            "users": int(counts[2]),
            "users_checkpoint": checkpoint,
            "users_events_replayed": copy.replayed,
            "users_not_compared": int(moved[0]) if moved else 0,
        }

    async def _stream(
        self, conn: Connection, statement: Any, params: Any = None
    ) -> AsyncIterator[tuple[Any, ...]]:
        """The rows of `statement` through a server-side cursor, `batch_size` at a time."""
        cursor = conn.cursor(name="tidings_audit")
        cursor.itersize = self._batch_size
        async with cursor:
            await cursor.execute(statement, params)
            async for row in cursor:
                yield row


def _notification_violation(
    rule: str, instance_id: str, notification_id: str, sequence: int | None, position: int | None,
    detail: str,
) -> Violation:  # fmt: skip
    return Violation(
        rule=rule,
        instance_id=instance_id,
        aggregate_type=NOTIFICATION_AGGREGATE,
        aggregate_id=notification_id,
        sequence=sequence,
        position=position,
        detail=detail,
    )


def _unreachable(
    instance_id: str, aggregate_type: str, aggregate_id: str, sequence: int, position: int,
    event_type: str, next_tx: int,
) -> Violation:  # fmt: skip
    return Violation(
        rule="position-reachable",
        instance_id=instance_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        sequence=sequence,
        position=position,
        detail=(
            f"{event_type} at position {position} (transaction {position >> 16}) lies beyond "
            f"any position the store has handed out (next transaction {next_tx}): the "
            "projector cannot reach it, and its lag cannot clear"
        ),
    )


def _missing_source(
    instance_id: str, notification_id: str, sequence: int, position: int,
    source_type: str, source_id: str, source_sequence: str, source_event_type: str,
    found_event_type: str | None,
) -> Violation:  # fmt: skip
    source = f"{source_type}/{source_id} sequence {source_sequence}"
    if found_event_type is None:
        detail = f"its source event {source} ({source_event_type}) is not in the log"
    else:
        detail = (
            f"its source event {source} is {found_event_type}, the request names "
            f"{source_event_type}"
        )
    return _notification_violation(
        "source-exists", instance_id, notification_id, sequence, position, detail
    )


def _missing_source_sent(
    instance_id: str, notification_id: str, sequence: int, position: int,
    source_type: str, source_id: str, sent_event_type: str,
) -> Violation:  # fmt: skip
    detail = (
        f"sent, but its source {source_type}/{source_id} has no {sent_event_type} "
        "for this notification"
    )
    return _notification_violation(
        "source-sent", instance_id, notification_id, sequence, position, detail
    )


def _pending_mismatch(
    instance_id: str, notification_id: str, live_sequence: int | None,
    log_sequence: int | None, differing: list[str],
) -> Violation:  # fmt: skip
    if live_sequence is None:
        detail = (
            f"open in the log (at sequence {log_sequence}) but not in the pending queue: "
            "no worker will send it"
        )
    elif log_sequence is None:
        detail = (
            f"in the pending queue (at sequence {live_sequence}) but not open in the log "
            "(settled, or never requested): a worker may send it"
        )
    else:
        detail = f"the queue row differs from the log in {', '.join(differing)}"
        if live_sequence != log_sequence:
            detail += f" (queue at sequence {live_sequence}, log at {log_sequence})"
    sequence = log_sequence if log_sequence is not None else live_sequence
    return _notification_violation(
        "pending-queue", instance_id, notification_id, sequence, None, detail
    )


def _users_mismatch(
    instance_id: str, user_id: str, live_sequence: int | None, log_sequence: int | None,
    differing: list[str],
) -> Violation:  # fmt: skip
    if live_sequence is None:
        detail = f"in a replay of the log (at sequence {log_sequence}) but not in tidings.users"
    elif log_sequence is None:
        detail = f"in tidings.users (at sequence {live_sequence}) but not in a replay of the log"
    else:
        detail = f"tidings.users differs from a replay of the log in {', '.join(differing)}"
    return Violation(
        rule="users-read-model",
        instance_id=instance_id,
        aggregate_type="user",
        aggregate_id=user_id,
        sequence=log_sequence if log_sequence is not None else live_sequence,
        position=None,
        detail=detail,
    )
