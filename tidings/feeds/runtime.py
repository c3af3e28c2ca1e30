"""What a serve process runs for the feeds: the hub, retention, and end-user sign-in."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tidings.clock import Clock, utc_now
from tidings.config import Settings
from tidings.eventstore import Database, DatabaseUnavailable
from tidings.feeds.end_users import EndUserAuth
from tidings.feeds.hub import FeedHub
from tidings.feeds.operations import prune_feed

log = logging.getLogger("tidings.feeds")


class FeedRuntime:
    """One per serve process: `run(stop)` beside the web server, `close()` after it."""

    def __init__(self, *, db: Database, settings: Settings, clock: Clock = utc_now) -> None:
        inapp = settings.inapp
        self.settings = settings
        self.hub = FeedHub(
            store=db.store,
            conninfo=db.conninfo,
            queue_size=inapp.queue_size,
            poll_every=inapp.poll_every.total_seconds(),
        )
        self.auth = EndUserAuth(settings=settings.end_users)
        self._db = db
        self.store = db.store
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log for the connections, and drop old items, until `stop` is set."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.hub.run(stop))
            group.create_task(self._retention(stop))

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
