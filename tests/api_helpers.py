"""The API on a real uvicorn on 127.0.0.1 (port 0), in the test's event loop.

Tests talk to it over the socket, through tidings.client or plain httpx;
keys are created the way `tidings apikeys create` creates them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.worker_helpers import CRYPTO
from tidings.api import ApiKeys, ApiState, Operations, create_app, running_feeds, serving
from tidings.client import AsyncClient
from tidings.config import (
    APISettings,
    ChannelSettings,
    FilesystemChannelSettings,
    Settings,
    TemplateSettings,
)
from tidings.eventstore import Database, EventQuery, StoredEvent
from tidings.feeds.runtime import FeedRuntime
from tidings.metrics import Metrics
from tidings.projections import Projector, default_projections
from tidings.service import Service

EXPORT_READY_TEXTS = """\
ExportReady:
  title: Your export is ready
  subject: "Export {{ args.export_name }} is ready"
  greeting: "Hello {{ user.display_name }},"
  body: "Download it here: {{ args.export_url }}"
  button_text: Download
  footer: ""
"""


def api_settings(tmp_path: Path, **api: Any) -> Settings:
    """Filesystem channel into tmp_path/outbox, a crypto key, ExportReady texts for acme."""
    templates = tmp_path / "templates"
    (templates / "acme").mkdir(parents=True, exist_ok=True)
    (templates / "acme" / "texts.en.yaml").write_text(EXPORT_READY_TEXTS)
    return Settings(
        channels=ChannelSettings(
            filesystem=FilesystemChannelSettings(outbox_dir=tmp_path / "outbox")
        ),
        crypto=CRYPTO,
        templates=TemplateSettings(dir=templates),
        api=APISettings(**{"key_cache": timedelta(0), **api}),
    )


@dataclass
class RunningAPI:
    base: str
    db: Database
    settings: Settings
    state: ApiState
    feeds: FeedRuntime

    async def key(self, instance_id: str = "acme", *scopes: str, name: str = "") -> str:
        key, _ = await ApiKeys(db=self.db).create(
            instance_id=instance_id, name=name or f"{instance_id}-test", scopes=scopes,
            creator="tests",
        )  # fmt: skip
        return key

    def client(self, key: str) -> AsyncClient:
        return AsyncClient(self.base, key=key)

    def http(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=10)

    async def count(self, **filters: Any) -> int:
        """Events in the log matching `filters`, the keys' own events left out."""
        return len(await self.events(**filters))

    async def events(self, **filters: Any) -> list[StoredEvent]:
        found = await self.db.store.query(EventQuery(**filters))
        return [e for e in found if e.aggregate_type != "apikey"]


@asynccontextmanager
async def running_api(
    db: Database, settings: Settings, *, port: int = 0, metrics: Metrics | None = None
) -> AsyncIterator[RunningAPI]:
    projector = Projector(
        db=db, projections=default_projections(db, settings), settings=settings.projections
    )
    metrics = metrics or Metrics()
    operations = Operations(
        db=db, metrics=metrics, projector=projector, ready_max_projector_lag=timedelta(0)
    )
    state = ApiState.from_settings(db=db, settings=settings)
    feeds = FeedRuntime(db=db, settings=settings, metrics=metrics)
    app = create_app(api=state, operations=operations, feeds=feeds)
    stop = asyncio.Event()  # as `tidings serve`: the streams end before the drain
    async with (
        running_feeds(feeds, stop),
        serving(
            app, host="127.0.0.1", port=port, settings=settings.api, setting="api.addr",
            what="the API", stop=stop, ws_heartbeat=settings.inapp.heartbeat.total_seconds(),
        ) as (host, port),
    ):  # fmt: skip
        try:
            yield RunningAPI(f"http://{host}:{port}", db, settings, state, feeds)
        finally:
            stop.set()


async def send_all(api: RunningAPI) -> None:
    """The projector and the worker pool until nothing is due, as `tidings run --until-idle`."""
    service = Service(db=api.db, settings=api.settings)
    try:
        await service.run(
            stop=asyncio.Event(), workers=1, retry_workers=0, projector=True, until_idle=True
        )
    finally:
        await service.close()
