"""Wake-ups: every append notifies; listeners wake within milliseconds.

A wake-up is only a hint. Consumers still poll every `timeout` seconds (they
get None then), and after a reconnect they get None at once, because
notifications sent while the connection was down are lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import psycopg
from psycopg import sql
from pydantic import ValidationError

from tidings.eventstore.models import EVENTS_CHANNEL, WakeUp
from tidings.eventstore.outage import Outage

log = logging.getLogger(__name__)


async def wakeups(
    conninfo: str,
    *,
    timeout: float,
    channel: str = EVENTS_CHANNEL,
    reconnect_delays: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0),
    who: str = "",
    on_listening: Callable[[], None] | None = None,
) -> AsyncGenerator[WakeUp | None]:
    """Yield a WakeUp per committed append, or None after `timeout` seconds of quiet.

    Reconnects after a lost connection, waiting `reconnect_delays` in turn (the
    last one repeats), and yields None after each reconnect. `who` names the
    listener's owner in the log (the projector, the workers). `on_listening` is
    called each time LISTEN is in place: a consumer that reads the log only
    after that never misses an append between its read and its LISTEN.
    """
    failures = 0
    outage = Outage(
        f"{who} wake-up listener".strip(),
        retried="reconnecting; meanwhile it polls as without wake-ups",
        logger=log,
        fields={"listener": who},
    )
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
            )
        except psycopg.OperationalError as exc:
            delay = reconnect_delays[min(failures, len(reconnect_delays) - 1)]
            failures += 1
            outage.failed(exc, retry_in=delay)
            await asyncio.sleep(delay)
            continue
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            if on_listening is not None:
                on_listening()
            if failures:
                outage.recovered()
                failures = 0
                yield None
            while True:
                got_one = False
                async for notify in conn.notifies(timeout=timeout):
                    got_one = True
                    yield _parse(notify.payload)
                if not got_one:
                    yield None
        except psycopg.OperationalError as exc:
            failures += 1
            outage.failed(exc)
        finally:
            await conn.close()


def _parse(payload: str) -> WakeUp:
    try:
        raw: Any = json.loads(payload)
        return WakeUp.model_validate(raw)
    except (json.JSONDecodeError, ValidationError):
        log.warning("ignoring malformed wake-up payload %.200r", payload)
        return WakeUp()


# A server that does not answer at all (a network partition) must not hold a
# reconnect for the kernel's TCP timeout.
_CONNECT_TIMEOUT = 5
