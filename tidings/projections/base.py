"""What a projection is, for the projector that runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from psycopg import AsyncConnection

from tidings.errors import TidingsError
from tidings.eventstore import StoredEvent

Connection = AsyncConnection[Any]


class InvalidEvent(TidingsError):
    """The event cannot be projected; it is recorded as a projection failure and skipped."""

    fields: ClassVar[tuple[str, ...]] = ("position", "event_type")


class Projection(Protocol):
    """A read model or process manager fed by the log, one event at a time.

    `handle` runs inside the projector's transaction (a savepoint per event);
    whatever it writes commits together with the projection's checkpoint.
    It raises InvalidEvent for an event it cannot use.
    """

    name: str
    event_types: frozenset[str]

    async def handle(self, event: StoredEvent, conn: Connection) -> None: ...

    async def reset(self, conn: Connection) -> None:
        """Forget the read model, so a rebuild can replay it from the log."""
        ...


@runtime_checkable
class BatchProjection(Projection, Protocol):
    """A projection that can handle a run of events at once.

    The projector hands it consecutive events (in log order) that no projection
    without this method handles in between, in one savepoint. `handle_many`
    must leave the same effects as `handle` for each in turn; when it raises,
    the savepoint is rolled back and the projector calls `handle` for each
    event on its own (so one bad event is recorded and skipped as always).
    """

    async def handle_many(self, events: Sequence[StoredEvent], conn: Connection) -> None: ...
