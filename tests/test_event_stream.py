"""GET /v1/me/stream as tidings serve answers it (tidings.api.event_stream), through uvicorn.

The stream is served in front of FastAPI; these pin what that layer does on
its own: it lets go of a client that left at once (not at the next
heartbeat), sends heartbeats on a quiet stream, takes `?token=` and
`?after=` as EventSource sends them, and ends every stream with `event:
closed` and the position to resume from when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_helpers import RunningAPI, running_api
from tests.feed_helpers import send_inapp
from tests.ops_helpers import wait_for
from tests.test_api_feeds import as_user, feed_settings, token
from tidings.config import InAppSettings, Settings
from tidings.eventstore import Database

TIMEOUT = 20.0


def with_heartbeat(tmp_path: Path, seconds: float) -> Settings:
    settings = feed_settings(tmp_path)
    inapp = InAppSettings(heartbeat=timedelta(seconds=seconds))
    return settings.model_copy(update={"inapp": inapp})


async def blocks(response: httpx.Response, into: list[dict[str, Any]]) -> None:
    """Every SSE block of the body as {field: value}; comments under "comment"."""
    block: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if block:
                into.append(block)
            block = {}
        elif line.startswith(":"):
            block.setdefault("comment", []).append(line[1:].strip())
        else:
            name, _, value = line.partition(": ")
            block[name] = value


async def test_a_client_that_leaves_is_let_go_at_once_not_at_the_next_heartbeat(
    db: Database, tmp_path: Path
) -> None:
    async with running_api(db, with_heartbeat(tmp_path, 3600)) as api, as_user(api) as ada:
        async with ada.stream("GET", "/v1/me/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            async for line in response.aiter_lines():
                if line == ": connected":
                    break
            assert api.feeds.hub.connections("acme", "user-ada") == 1
        # The client closed its socket; with an hour to the heartbeat, only the
        # disconnect itself can release the subscription.
        await wait_for(_no_connections(api), "the stream to be released", 5)


def _no_connections(api: RunningAPI) -> Any:
    async def check() -> bool:
        return api.feeds.hub.connected() == 0

    return check


async def test_a_quiet_stream_gets_heartbeats_and_a_new_item_between_them(
    db: Database, tmp_path: Path
) -> None:
    async with running_api(db, with_heartbeat(tmp_path, 0.2)) as api:
        await send_inapp(db, ["n-0"])
        async with as_user(api) as ada:
            start = (await ada.get("/v1/me/feed")).json()["stream_after"]
        got: list[dict[str, Any]] = []
        async with (
            httpx.AsyncClient(base_url=api.base, timeout=TIMEOUT) as browser,
            browser.stream(  # as EventSource asks: the token and the cursor in the query
                "GET", "/v1/me/stream", params={"token": token(), "after": str(start)}
            ) as response,
        ):
            assert response.status_code == 200
            reading = asyncio.create_task(blocks(response, got))
            await wait_for(_heartbeats(got, 2), "two heartbeats", TIMEOUT)
            await send_inapp(db, ["n-1"], add_user=False)
            await wait_for(_has(got, "message"), "the new item", TIMEOUT)
            await wait_for(_heartbeats(got, 4), "heartbeats after it", TIMEOUT)
            reading.cancel()
    messages = [json.loads(b["data"]) for b in got if b.get("event") == "message"]
    assert [m["id"] for m in messages] == ["n-1"]
    assert got[0]["retry"] == "2000" and got[0]["comment"] == ["connected"]


def _heartbeats(got: list[dict[str, Any]], n: int) -> Any:
    async def check() -> bool:
        return sum(1 for b in got if b.get("comment") == ["heartbeat"]) >= n

    return check


def _has(got: list[dict[str, Any]], kind: str) -> Any:
    async def check() -> bool:
        return any(b.get("event") == kind for b in got)

    return check


async def test_stopping_the_server_ends_each_stream_with_closed_and_where_to_resume(
    db: Database, tmp_path: Path
) -> None:
    got: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as outliving:  # the client outlives the server
        async with running_api(db, with_heartbeat(tmp_path, 3600)) as api:
            await send_inapp(db, ["n-0"])
            ada = await outliving.enter_async_context(as_user(api))
            start = (await ada.get("/v1/me/feed")).json()["stream_after"]
            await send_inapp(db, ["n-1"], add_user=False)

            async def read() -> None:
                async with ada.stream(
                    "GET", "/v1/me/stream", headers={"Last-Event-ID": str(start)}
                ) as response:
                    await blocks(response, got)

            reading = asyncio.create_task(read())
            await wait_for(_has(got, "counts"), "the backfilled item and its counts", TIMEOUT)
        # Leaving the block stopped the server: the stream must have ended by itself.
        await asyncio.wait_for(reading, TIMEOUT)
    kinds = [b.get("event") for b in got if "event" in b]
    assert kinds == ["message", "counts", "closed"]
    closed = json.loads(got[-1]["data"])
    assert closed["resume_after"] == int(got[-2]["id"]) and closed["reason"]


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({}, {"token": "junk"}, 401),
        ({"Authorization": "Basic abc"}, {}, 401),
        ({}, {"token": token(), "after": "-1"}, 400),
    ],
)
async def test_a_bad_token_or_cursor_is_a_problem_and_holds_nothing(
    db: Database, tmp_path: Path, headers: dict[str, str], params: dict[str, str], status: int
) -> None:
    async with (
        running_api(db, feed_settings(tmp_path)) as api,
        httpx.AsyncClient(base_url=api.base, timeout=TIMEOUT) as client,
    ):
        response = await client.get("/v1/me/stream", headers=headers, params=params)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status and response.json()["detail"]
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert api.feeds.hub.connected() == 0
