"""What a serve process runs for the feeds: the hub, presence, retention, end-user sign-in."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tidings.clock import Clock, utc_now
from tidings.config import Settings
from tidings.eventstore import Database, DatabaseUnavailable
from tidings.eventstore.outage import backoff_delays, wait_or_stop
from tidings.feeds.end_users import EndUserAuth
from tidings.feeds.hub import FeedHub
from tidings.feeds.operations import prune_feed
from tidings.feeds.presence import Presence
from tidings.metrics import Metrics

log = logging.getLogger("tidings.feeds")


class FeedRuntime:
    """One per serve process: `run(stop)` beside the web server, `close()` after it."""

    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
    ) -> None:
        inapp = settings.inapp
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.presence = Presence(store=db.store, heartbeat=inapp.presence_heartbeat.total_seconds())
        self.hub = FeedHub(
            store=db.store,
            conninfo=db.conninfo,
            queue_size=inapp.queue_size,
            poll_every=inapp.poll_every.total_seconds(),
            metrics=self.metrics,
            presence=self.presence,
        )
        self.auth = EndUserAuth(settings=settings.end_users)
        self._db = db
        self.store = db.store
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log for the connections, and drop old items, until `stop` is set."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._hub(stop))
            group.create_task(self._retention(stop))

    async def _hub(self, stop: asyncio.Event) -> None:
        """The hub, started again whenever it fails, until `stop`.

        A database that is away is waited out inside the hub; anything else
        that ends it (a bug, a broken connection pool) is logged and the hub is
        started afresh after a backoff. Meanwhile its streams are closed (the
        clients resume from their cursor) and new ones are answered 503.
        """
        delays = backoff_delays(first=0.5, cap=10.0)
        while not stop.is_set():
            try:
                await self.hub.run(stop)
            except DatabaseUnavailable as exc:
                delay = next(delays)
                log.warning(
                    "the feed hub lost the database (%s); its streams were closed (clients "
                    "resume from their cursor), new ones are answered 503, and it starts "
                    "again in %.1fs",
                    exc, delay,
                )  # fmt: skip
                await wait_or_stop(stop, delay)
                continue
            except Exception:
                delay = next(delays)
                log.exception(
                    "the feed hub failed; its streams were closed (clients resume from their "
                    "cursor), new ones are answered 503, and it starts again in %.1fs",
                    delay,
                )
                await wait_or_stop(stop, delay)
                continue
            if not stop.is_set():  # it returned without being asked to: start it again
                await wait_or_stop(stop, next(delays))

    async def _retention(self, stop: asyncio.Event) -> None:
        every = self.settings.inapp.retention_every.total_seconds()
        while not stop.is_set():
            try:
                await prune_feed(
                    self._db.store, retention=self.settings.inapp.retention, now=self._clock()
                )
            except DatabaseUnavailable as exc:
                log.warning(
                    "feed retention could not run (%s); it tries again in %.0fs", exc, every
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    async def close(self) -> None:
        await self.auth.close()
