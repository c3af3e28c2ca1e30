"""A private copy of the users read model, replayed from the log by the users projection itself.

The audit compares tidings.users with a fresh replay, but must neither touch
the live table nor hold a transaction id while it reads its snapshot: any
write, even to a temporary table, gives a transaction an id, and an open one
holds back the horizon of every ordered reader (the projector would stop
projecting until the audit ends). So the copy is replayed first, in short
transactions of its own, into a temporary table of the audit's session; the
read-only snapshot that follows only reads it.

The replay runs the same UsersProjection as the projector (one definition of
the read model), pointed at the copy's table.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql

from tidings.audit.sql import query
from tidings.eventstore import DatabaseUnavailable, StoredEvent
from tidings.eventstore.errors import translate
from tidings.projections import UsersProjection
from tidings.projections.base import Connection
from tidings.projections.users import users_checkpoint as users_checkpoint

COPY_SCHEMA = "pg_temp"
COPY_TABLE = "tidings_audit_users"
COPY = sql.Identifier(COPY_SCHEMA, COPY_TABLE)

USERS_EVENT_TYPES = sorted(UsersProjection.event_types)


async def users_events_upto(conn: Connection, upto: int) -> int:
    """How many events a replay of the users model up to `upto` reads."""
    cur = await conn.execute(
        query("users_copy_events_count"), {"upto": upto, "event_types": USERS_EVENT_TYPES}
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class UsersCopy:
    """The users model replayed into the session's temporary table, up to a position.

    `conn` is the audit's own connection in autocommit mode: the copy lives
    as long as that session.
    """

    def __init__(self, conn: Connection, *, batch_size: int = 1000) -> None:
        self._conn = conn
        self._batch_size = batch_size
        self._projection = UsersProjection(table=COPY)
        self.upto = 0  # every users event at or below this position is in the copy
        self.replayed = 0
        self.skipped = 0  # events the projection refuses (the projector skips them too)

    async def create(self) -> None:
        await self._conn.execute(query("users_copy_create").format(copy=COPY))

    async def replay_to(self, upto: int, *, progress: Callable[[int], None] | None = None) -> int:
        """Replay the users events after `self.upto` up to `upto`; returns how many.

        `upto` must be a users checkpoint: no event at or below it can still
        commit. Each batch is one short transaction, as in the projector.
        """
        done = 0
        while self.upto < upto:
            async with self._conn.transaction():
                cur = await self._conn.execute(
                    query("users_copy_events"),
                    {
                        "after": self.upto,
                        "upto": upto,
                        "event_types": USERS_EVENT_TYPES,
                        "limit": self._batch_size,
                    },
                )
                events = [StoredEvent.from_row(row) for row in await cur.fetchall()]
                for event in events:
                    await self._handle(event)
            self.upto = events[-1].position if len(events) == self._batch_size else upto
            done += len(events)
            if progress is not None and events:
                progress(len(events))
        self.replayed += done
        return done

    async def _handle(self, event: StoredEvent) -> None:
        """As the projector handles it: a savepoint per event; a refused event undoes itself."""
        try:
            async with self._conn.transaction():
                await self._projection.handle(event, self._conn)
        except psycopg.Error as exc:
            if isinstance(translate(exc), DatabaseUnavailable):
                raise
            self.skipped += 1
        except Exception:  # InvalidEvent, or a bug: the projector records and skips it too
            self.skipped += 1
