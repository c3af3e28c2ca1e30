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

log = logging.getLogger(__name__)


async def wakeups(
    conninfo: str,
    *,
    timeout: float,
    channel: str = EVENTS_CHANNEL,
    reconnect_delays: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0),
    on_listening: Callable[[], None] | None = None,
) -> AsyncGenerator[WakeUp | None]:
    """Yield a WakeUp per committed append, or None after `timeout` seconds of quiet.

    Reconnects after a lost connection, waiting `reconnect_delays` in turn (the
    last one repeats), and yields None after each reconnect. `on_listening` is
    called each time LISTEN is in place: a consumer that reads the log only
    after that never misses an append between its read and its LISTEN.
    """
    failures = 0
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            delay = reconnect_delays[min(failures, len(reconnect_delays) - 1)]
            failures += 1
            log.warning(
                "wake-up listener cannot connect (try %d, next in %.1fs): %s",
                failures, delay, _first_line(exc),
            )  # fmt: skip
            await asyncio.sleep(delay)
            continue
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            if on_listening is not None:
                on_listening()
            if failures:
                log.info("wake-up listener reconnected after %d failed tries", failures)
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
            log.warning("wake-up listener lost its connection: %s", _first_line(exc))
        finally:
            await conn.close()


def _parse(payload: str) -> WakeUp:
    try:
        raw: Any = json.loads(payload)
        return WakeUp.model_validate(raw)
    except (json.JSONDecodeError, ValidationError):
        log.warning("ignoring malformed wake-up payload %.200r", payload)
        return WakeUp()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
