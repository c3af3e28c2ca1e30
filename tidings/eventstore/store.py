"""The event store: append, query, ordered reads and streaming reads."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import ConfigDict, TypeAdapter

from tidings.eventstore.errors import translated_errors
from tidings.eventstore.filters import Trail, compose_select
from tidings.eventstore.models import (
    EVENTS_CHANNEL,
    AppendedEvent,
    EventQuery,
    NewEvent,
    ReadBatch,
    StoredEvent,
)
from tidings.eventstore.sql import query

Connection = AsyncConnection[Any]

# A batch to append, encoded to JSON in one call (not one encoding per payload).
# NaN and infinities go as they are, for the database to refuse (never as null).
_EVENTS: TypeAdapter[list[NewEvent]] = TypeAdapter(
    list[NewEvent], config=ConfigDict(ser_json_inf_nan="constants")
)


@asynccontextmanager
async def single_statement(pool: AsyncConnectionPool[Any]) -> AsyncIterator[Connection]:
    """A pooled connection in autocommit, for ONE statement that is atomic on its own.

    A statement outside a transaction block is its own transaction: the same
    all-or-nothing as BEGIN; statement; COMMIT, without those two extra round
    trips (on the workers' hot path, claim, user lookup and append, they cost
    more than the statements themselves). Never use it for two statements that
    must commit together. The connection goes back to the pool as it came.
    """
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            if not conn.closed:
                await conn.set_autocommit(False)


class EventStore:
    """The append-only log in PostgreSQL.

    Methods that take `conn` run inside the caller's transaction when one is
    given (the caller commits); otherwise they take a pooled connection and
    commit on their own.
    """

    def __init__(self, *, pool: AsyncConnectionPool[Any], channel: str = EVENTS_CHANNEL) -> None:
        self._pool = pool
        self._channel = channel

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

    async def append(
        self, events: Sequence[NewEvent], *, conn: Connection | None = None
    ) -> list[AppendedEvent]:
        """Append all events in one transaction, or none of them.

        Raises ConcurrencyError, naming the aggregate and both sequences, when an
        expected sequence is not the aggregate's last one.
        """
        if not events:
            return []
        with translated_errors():
            rows = await self._rows(query("append_events"), self._append_params(events), conn)
        return [AppendedEvent(position=p, sequence=s, created_at=c) for p, s, c in rows]

    async def append_unread(self, events: Sequence[NewEvent]) -> None:
        """As `append` on a pooled connection, without reading back where the events
        landed: for a writer that does not need it (the workers' outcomes, a bulk's
        20 rows read back cost about a fifth of the append's client CPU)."""
        if not events:
            return
        with translated_errors():
            async with single_statement(self._pool) as conn, conn.cursor() as cur:
                await cur.execute(query("append_events"), self._append_params(events))

    def _append_params(self, events: Sequence[NewEvent]) -> dict[str, Any]:
        return {"events": Jsonb(list(events), dumps=_EVENTS.dump_json), "channel": self._channel}

    async def query(
        self,
        q: EventQuery,
        *,
        conn: Connection | None = None,
    ) -> list[StoredEvent]:
        """Events matching `q` in position order (in the caller's transaction with `conn`)."""
        statement, params = compose_select(q)
        with translated_errors():
            rows = await self._rows(statement, params, conn)
        return [StoredEvent.from_row(row) for row in rows]

    async def read_ordered(
        self,
        *,
        after: int,
        limit: int = 500,
        event_types: Sequence[str] | None = None,
        conn: Connection | None = None,
    ) -> ReadBatch:
        """The next events after position `after`, never skipping a late commit.

        Only events of finished transactions are returned (see the read_ordered
        query); `resume_after` is where the next call continues. A batch with
        no events means the reader has caught up. Any write transaction still
        open on the server, in any database, holds the horizon back until it
        ends: keep write transactions short.
        """
        params = {
            "after": after,
            "limit": limit,
            "event_types": list(event_types) if event_types is not None else None,
        }
        with translated_errors():
            rows = await self._rows(query("read_ordered"), params, conn)
        events = tuple(StoredEvent.from_row(row) for row in rows if row[9] is not None)
        horizon: int = rows[0][10]
        if len(events) == limit:
            resume_after = events[-1].position
        else:
            # Fewer than asked: everything below the horizon has been seen.
            resume_after = max(after, horizon - 1)
        return ReadBatch(events=events, resume_after=resume_after)

    async def stream(
        self,
        q: EventQuery,
        *,
        batch_size: int = 2000,
        trail: Trail | None = None,
        below: int | None = None,
    ) -> AsyncGenerator[StoredEvent]:
        """Every event matching `q`, in position order, through a server-side cursor.

        Memory stays constant whatever the size of the log: rows arrive
        `batch_size` at a time from one snapshot. With `trail`, only the events
        of that user's or notification's trail (see UserTrail); with `below`,
        only positions below it, e.g. below `horizon()` to follow the log.
        """
        statement, params = compose_select(q, trail=trail, below=below)
        with translated_errors():
            async with self._pool.connection() as conn, conn.transaction():
                cursor = conn.cursor(name="tidings_stream")
                cursor.itersize = batch_size
                async with cursor:
                    await cursor.execute(statement, params)
                    async for row in cursor:
                        yield StoredEvent.from_row(row)

    async def _rows(
        self, statement: Any, params: Any, conn: Connection | None
    ) -> list[tuple[Any, ...]]:
        """Run in the caller's transaction when given one, else on a pooled connection."""
        if conn is not None:
            return await _fetch(conn, statement, params)
        async with single_statement(self._pool) as own:  # every statement here is one
            return await _fetch(own, statement, params)

    async def horizon(self) -> int:
        """The ordered reader's horizon: every position below it is final.

        All events below it were written by finished transactions, so no event
        can appear there any more (see read_ordered). A reader that reads only
        below it, and resumes from it, never skips an event that commits late.
        """
        with translated_errors():
            async with self._pool.connection() as conn:
                rows = await _fetch(conn, query("horizon"), {})
        return int(rows[0][0])

    async def last_position(self) -> int:
        """The highest position in the log (0 when empty)."""
        with translated_errors():
            async with self._pool.connection() as conn:
                rows = await _fetch(conn, query("last_position"), {})
        return int(rows[0][0])

    async def aggregate_sequence(
        self,
        *,
        instance_id: str,
        aggregate_type: str,
        aggregate_id: str,
        conn: Connection | None = None,
    ) -> int:
        """The aggregate's last sequence (0 when it has no events)."""
        params = {
            "instance_id": instance_id,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
        }
        with translated_errors():
            rows = await self._rows(query("aggregate_sequence"), params, conn)
        return int(rows[0][0])


async def _fetch(conn: Connection, statement: Any, params: Any) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(statement, params)
        return await cur.fetchall()
