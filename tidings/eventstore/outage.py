"""Waiting out a database outage: backoff that stops on request, and log lines that say it once.

Every loop that retries database work while the database is away (the
projector, the leader lock, the wake-up listeners, the workers' claims) waits
with `wait_or_stop`, so a stop request is honoured at once whatever the
database does, and reports through one `Outage`: one line when the outage
starts (what, since when, what is retried), a reminder at a falling rate, and
one line when it ends with how long it lasted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

# Reminders while an outage lasts, in seconds since it started; then every
# last step.
REMINDERS = (10.0, 30.0, 60.0, 120.0, 300.0)


def backoff_delays(first: float = 0.2, factor: float = 2.0, cap: float = 10.0) -> Iterator[float]:
    """first, first x factor, ... capped at `cap`, for ever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


async def wait_or_stop(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep `seconds`, or less when `stop` is set; True when stopping."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Outage:
    """The log lines of one piece of work that cannot reach the database.

    `failed` on every failed try, `recovered` on the first success after; only
    the first failure, the reminders and the recovery are logged.
    """

    def __init__(
        self,
        what: str,
        *,
        retried: str,
        logger: logging.Logger,
        fields: dict[str, object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reminders: tuple[float, ...] = REMINDERS,
    ) -> None:
        self._what = what
        self._retried = retried
        self._log = logger
        self._fields = fields or {}
        self._clock = clock
        self._reminders = reminders
        self._since: float | None = None
        self._started_at: str = ""
        self._tries = 0
        self._next_reminder = 0

    @property
    def active(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException | str, *, retry_in: float | None = None) -> None:
        now = self._clock()
        reason = _first_line(error)
        self._tries += 1
        if self._since is None:
            self._since = now
            self._started_at = time.strftime("%H:%M:%S", time.gmtime())
            self._next_reminder = 0
            self._log.warning(
                "%s: the database is unreachable since %s UTC (%s); %s, with backoff; "
                "check that PostgreSQL runs and that database.url is right",
                self._what, self._started_at, reason, self._retried,
                extra={**self._fields, "outage": "started", "error": reason,
                       "retry_in_seconds": retry_in},
            )  # fmt: skip
            return
        lasted = now - self._since
        step = min(self._next_reminder, len(self._reminders) - 1)
        due = self._reminders[step]
        if self._next_reminder >= len(self._reminders):
            due = self._reminders[-1] * (self._next_reminder - len(self._reminders) + 2)
        if lasted >= due:
            self._next_reminder += 1
            self._log.warning(
                "%s: the database is still unreachable after %.0fs (since %s UTC, %d tries; "
                "last: %s); %s",
                self._what, lasted, self._started_at, self._tries, reason, self._retried,
                extra={**self._fields, "outage": "ongoing", "outage_seconds": round(lasted, 1),
                       "tries": self._tries, "error": reason},
            )  # fmt: skip

    def recovered(self) -> None:
        if self._since is None:
            return
        lasted = self._clock() - self._since
        self._log.info(
            "%s: the database is reachable again after an outage of %.1fs (since %s UTC, "
            "%d failed tries); work goes on",
            self._what, lasted, self._started_at, self._tries,
            extra={**self._fields, "outage": "ended", "outage_seconds": round(lasted, 1),
                   "tries": self._tries},
        )  # fmt: skip
        self._since = None
        self._tries = 0


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
