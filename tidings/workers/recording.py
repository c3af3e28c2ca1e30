"""Database work of a claimed bulk, kept trying while the lease still covers it.

A worker that sent a message and cannot record the outcome must not give up
early: once it gives up, the notification is claimed again when its lease
runs out and the message goes out twice. So reading the bulk's users and
recording its outcomes are retried with backoff through an outage for as long
as the lease covers the attempt, less a margin (the time one more try may
take); only then does the worker give up, and the notification comes back
to another worker when the lease runs out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from tidings.clock import Clock
from tidings.eventstore import DatabaseUnavailable
from tidings.eventstore.outage import backoff_delays
from tidings.workers.queue import Claimed

T = TypeVar("T")


def record_margin(lease: timedelta) -> timedelta:
    """How long before the lease ends a worker stops trying: a tenth, at least 1 s."""
    return max(lease / 10, timedelta(seconds=1))


def lease_deadline(bulk: Sequence[Claimed], *, lease: timedelta, clock: Clock) -> datetime:
    """Until when the bulk's database work may be retried: its first lease end, less the margin.

    A bulk claimed outside the queue (no lease end known) counts from now.
    """
    ends = [c.leased_until for c in bulk if c.leased_until is not None]
    end = min(ends) if ends else clock() + lease
    return end - record_margin(lease)


async def while_leased(
    operation: Callable[[], Awaitable[T]],
    *,
    deadline: datetime,
    clock: Clock,
    on_failure: Callable[[DatabaseUnavailable, float], None] | None = None,
) -> T:
    """`operation()`, retried with backoff while the database is away, until `deadline`.

    The first try is always made (past the deadline it is not cut off: the
    expected sequence of an outcome still guards against a second writer);
    later tries only before the deadline, and each is cut off at it. Raises the
    last DatabaseUnavailable when the deadline passes; any other error at once.
    The deadline is read against `clock` once, then measured on the monotonic
    clock, so an injected clock that stands still cannot make this retry for ever.
    """
    ends = time.monotonic() + (deadline - clock()).total_seconds()
    delays = backoff_delays(first=0.1, factor=2.0, cap=5.0)
    tries = 0
    while True:
        left = ends - time.monotonic()
        tries += 1
        try:
            async with asyncio.timeout(left if left > 0 else None):
                return await operation()
        except TimeoutError as exc:
            raise DatabaseUnavailable(
                f"the database did not answer before the lease ran out ({tries} tries)"
            ) from exc
        except DatabaseUnavailable as exc:
            left = ends - time.monotonic()
            delay = next(delays)
            if delay >= left:
                raise
            if on_failure is not None:
                on_failure(exc, delay)
            await asyncio.sleep(delay)
