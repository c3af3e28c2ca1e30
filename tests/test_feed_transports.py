"""The three live transports through a real uvicorn on 127.0.0.1: WebSocket, SSE, long-poll.

Each one is killed mid-stream and resumed by its cursor, and resumed across a
server restart on the same port with items appended while it was down: every
item and mark after the cursor arrives exactly once, in order. The WebSocket
client is the `websockets` library; SSE and long-poll go through httpx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.api_helpers import RunningAPI, running_api
from tests.feed_helpers import sent_inapp
from tests.ops_helpers import free_port, parse, wait_for
from tests.test_api_feeds import JWT_SECRET, feed_positions, feed_settings, sse_events, token
from tests.test_event_stream import blocks
from tidings.config import InAppSettings, Settings
from tidings.eventstore import Database
from tidings.feeds.operations import list_feed, mark

TIMEOUT = 20.0
Seen = list[tuple[str, int]]


def settings_with(tmp_path: Path, **inapp: Any) -> Settings:
    settings = feed_settings(tmp_path)
    return settings.model_copy(update={"inapp": InAppSettings(**inapp)})


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[RunningAPI]:
    async with running_api(db, feed_settings(tmp_path)) as running:
        yield running


def ws_url(api: RunningAPI, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return api.base.replace("http://", "ws://") + "/v1/me/ws" + (f"?{query}" if query else "")


def items(seen: Seen) -> list[int]:
    """The positions of the items and marks (counts share their position)."""
    return [position for kind, position in seen if kind != "counts"]


async def ws_read(conn: ClientConnection, wanted: int, into: Seen) -> None:
    while len(items(into)) < wanted:
        message = json.loads(await conn.recv())
        assert set(message) == {"event", "id", "data"}, message
        into.append((message["event"], message["id"]))


async def poll_read(client: httpx.AsyncClient, after: int, wanted: int, into: Seen) -> int:
    """Long-poll from `after` until `wanted` items or marks came; the last position."""
    while len(items(into)) < wanted:
        answer = await client.get("/v1/me/poll", params={"after": after, "wait": "5s"})
        if answer.status_code == 204:
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        into.extend((e["event"], e["id"]) for e in body["events"])
        after = body["after"]
    return after


async def released(api: RunningAPI) -> None:
    async def none_left() -> bool:
        return api.feeds.hub.connections("acme", "user-ada") == 0

    await wait_for(none_left, "the server to let go of the killed connection", TIMEOUT)


async def writer(db: Database, prefix: str, count: int) -> None:
    """Items for ada (and bob, who must not show up), ada marking every third read."""
    for i in range(count):
        await sent_inapp(db.store, [f"{prefix}-{i}"])
        await sent_inapp(db.store, [f"{prefix}-bob-{i}"], user_id="user-bob")
        if i % 3 == 0:
            await mark(db.store, instance_id="acme", user_id="user-ada",
                       notification_id=f"{prefix}-{i}", action="read")  # fmt: skip


# --- WebSocket --------------------------------------------------------------------


async def test_the_websocket_carries_items_marks_and_counts_with_their_position(
    api: RunningAPI, db: Database
) -> None:
    async with connect(ws_url(api, token=token())) as conn:
        await wait_for(
            lambda: _true(api.feeds.hub.connections("acme", "user-ada") == 1),
            "the WebSocket to subscribe", TIMEOUT,
        )  # fmt: skip
        [sent] = await sent_inapp(db.store, ["n-1"])
        message = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
        counts = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
        assert (message["event"], message["id"]) == ("message", sent.position)
        assert message["data"]["id"] == "n-1" and message["data"]["read"] is False
        assert counts == {
            "event": "counts", "id": sent.position,
            "data": {"total": 1, "unread": 1, "unseen": 1},
        }  # fmt: skip
        marked = await mark(db.store, instance_id="acme", user_id="user-ada",
                            notification_id="n-1", action="read")  # fmt: skip
        state = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
        assert (state["event"], state["id"]) == ("state", marked.position)
        assert state["data"]["change"] == "read"
    await released(api)


async def test_the_websocket_takes_the_token_as_a_header_and_refuses_a_bad_one_with_1008(
    api: RunningAPI, db: Database
) -> None:
    [sent] = await sent_inapp(db.store, ["n-1"])
    headers = {"Authorization": f"Bearer {token()}"}
    async with connect(ws_url(api, after=sent.position - 1), additional_headers=headers) as conn:
        first = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
        assert (first["event"], first["id"]) == ("message", sent.position)

    for params, reason in (
        ({}, "unauthorized"),
        ({"token": "junk"}, "unauthorized"),
        ({"token": token().rsplit(".", 1)[0] + ".00"}, "unauthorized"),
        ({"token": token(), "after": "not-a-position"}, "bad_cursor"),
    ):
        async with connect(ws_url(api, **params)) as conn:
            closed = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
            assert closed["event"] == "closed" and closed["data"]["reason"] == reason
            assert closed["data"]["detail"]
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), TIMEOUT)
        assert conn.close_code == 1008, params
        assert (conn.close_reason or "").startswith(f"{reason}: ")
    assert api.feeds.hub.connected() == 0


async def test_a_websocket_killed_mid_stream_resumes_by_after_without_gap_or_duplicate(
    api: RunningAPI, db: Database
) -> None:
    await sent_inapp(db.store, ["n-start"])
    start = (await list_feed(db.store, instance_id="acme", user_id="user-ada")).stream_after
    seen: Seen = []
    writing = asyncio.create_task(writer(db, "m", 12))
    async with connect(ws_url(api, token=token(), after=start)) as conn:
        await asyncio.wait_for(ws_read(conn, 4, seen), TIMEOUT)
        conn.transport.abort()  # the network drops it: no close handshake
    await released(api)
    await asyncio.wait_for(writing, TIMEOUT * 2)
    expected = await feed_positions(db, "user-ada", after=start)
    async with connect(ws_url(api, token=token(), after=items(seen)[-1])) as conn:
        await asyncio.wait_for(ws_read(conn, len(expected), seen), TIMEOUT)
    assert items(seen) == expected  # every one, in order, once
    assert len(expected) == 12 + 4


async def test_the_server_pings_an_idle_websocket(db: Database, tmp_path: Path) -> None:
    frames: list[str] = []

    class Frames(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            frames.append(record.getMessage())

    logger = logging.getLogger("tests.websocket-frames")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Frames()
    logger.addHandler(handler)
    try:
        settings = settings_with(tmp_path, heartbeat=timedelta(seconds=1))
        async with (
            running_api(db, settings) as api,
            connect(ws_url(api, token=token()), logger=logger, ping_interval=None) as conn,
        ):
            await wait_for(
                lambda: _true(sum(f.startswith("< PING") for f in frames) >= 2),
                "two pings from the server", TIMEOUT,
            )  # fmt: skip
            assert any(f.startswith("> PONG") for f in frames)
            assert conn.close_code is None  # still open
    finally:
        logger.removeHandler(handler)


async def test_a_slow_websocket_is_closed_with_a_reason_and_resumes_losing_nothing(
    db: Database, tmp_path: Path
) -> None:
    """queue_size 1: every live send (an item and its counts) overflows the queue."""
    async with running_api(db, settings_with(tmp_path, queue_size=1)) as api:
        async with connect(ws_url(api, token=token())) as conn:
            await wait_for(
                lambda: _true(api.feeds.hub.connections("acme", "user-ada") == 1),
                "the WebSocket to subscribe", TIMEOUT,
            )  # fmt: skip
            start = api.feeds.hub.user_connections("acme", "user-ada")[0].last
            [sent] = await sent_inapp(db.store, ["n-1"])
            closed = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), TIMEOUT)
        assert closed["event"] == "closed" and closed["data"]["reason"] == "slow_consumer"
        assert closed["data"]["resume_after"] == start and "too slow" in closed["data"]["detail"]
        assert conn.close_code == 1013 and (conn.close_reason or "").startswith("slow_consumer: ")
        async with connect(ws_url(api, token=token(), after=start)) as again:
            resumed = json.loads(await asyncio.wait_for(again.recv(), TIMEOUT))
        assert (resumed["event"], resumed["id"]) == ("message", sent.position)
        samples = await metrics_of(api)
        assert samples[("tidings_feed_slow_consumers_total", frozenset())] == 1


# --- long-poll --------------------------------------------------------------------


async def test_a_long_poll_killed_while_waiting_is_let_go_and_the_next_resumes_exactly(
    api: RunningAPI, db: Database
) -> None:
    await sent_inapp(db.store, ["n-start"])
    start = (await list_feed(db.store, instance_id="acme", user_id="user-ada")).stream_after
    seen: Seen = []
    async with httpx.AsyncClient(
        base_url=api.base, headers={"Authorization": f"Bearer {token()}"}, timeout=30
    ) as ada:
        waiting = asyncio.create_task(
            ada.get("/v1/me/poll", params={"after": start, "wait": "25s"})
        )
        await wait_for(
            lambda: _true(api.feeds.hub.connections("acme", "user-ada") == 1),
            "the poll to wait", TIMEOUT,
        )  # fmt: skip
        waiting.cancel()  # the client goes away while it waits
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await released(api)  # at once, not at the end of its 25 s
        writing = asyncio.create_task(writer(db, "m", 9))
        after = await asyncio.wait_for(poll_read(ada, start, 3, seen), TIMEOUT)
        await asyncio.wait_for(writing, TIMEOUT * 2)
        expected = await feed_positions(db, "user-ada", after=start)
        await asyncio.wait_for(poll_read(ada, after, len(expected), seen), TIMEOUT)
    assert items(seen) == expected
    assert len(expected) == 9 + 3


async def test_a_long_poll_is_held_at_most_max_poll_wait(db: Database, tmp_path: Path) -> None:
    settings = settings_with(tmp_path, max_poll_wait=timedelta(seconds=1))
    async with running_api(db, settings) as api:
        async with httpx.AsyncClient(base_url=api.base, timeout=30) as client:
            loop = asyncio.get_running_loop()
            began = loop.time()
            answer = await client.get(
                "/v1/me/poll", params={"token": token(), "after": 0, "wait": "600s"}
            )
            took = loop.time() - began
    assert answer.status_code == 204
    assert 1.0 <= took < 10.0


# --- all three across a server restart --------------------------------------------


Reader = Callable[[RunningAPI, int, int, Seen], Awaitable[None]]


async def read_ws(api: RunningAPI, after: int, wanted: int, seen: Seen) -> None:
    async with connect(ws_url(api, token=token(), after=after)) as conn:
        await ws_read(conn, wanted, seen)


async def read_sse(api: RunningAPI, after: int, wanted: int, seen: Seen) -> None:
    async with (
        httpx.AsyncClient(base_url=api.base, timeout=30) as client,
        client.stream(
            "GET", "/v1/me/stream", params={"token": token()},
            headers={"Last-Event-ID": str(after)},
        ) as response,
    ):  # fmt: skip
        assert response.status_code == 200
        await sse_events(response, wanted, seen)


async def read_poll(api: RunningAPI, after: int, wanted: int, seen: Seen) -> None:
    async with httpx.AsyncClient(
        base_url=api.base, headers={"Authorization": f"Bearer {token()}"}, timeout=30
    ) as client:
        await poll_read(client, after, wanted, seen)


@pytest.mark.parametrize("read", [read_sse, read_ws, read_poll], ids=["sse", "ws", "poll"])
async def test_each_transport_resumes_across_a_server_restart_without_gap_or_duplicate(
    db: Database, tmp_path: Path, read: Reader
) -> None:
    """Read part of the stream while items keep coming, stop the server, append while it
    is down, start it again on the same port, resume by the last position seen."""
    settings = feed_settings(tmp_path)
    port = free_port()
    await sent_inapp(db.store, ["n-start"])
    start = (await list_feed(db.store, instance_id="acme", user_id="user-ada")).stream_after
    seen: Seen = []
    writing = asyncio.create_task(writer(db, "live", 9))
    async with running_api(db, settings, port=port) as api:
        await asyncio.wait_for(read(api, start, 4, seen), TIMEOUT)
        await released(api)
    await asyncio.wait_for(writing, TIMEOUT * 2)
    await writer(db, "down", 6)  # while no server runs
    expected = await feed_positions(db, "user-ada", after=start)
    async with running_api(db, settings, port=port) as api:
        assert api.base.endswith(f":{port}")
        await asyncio.wait_for(read(api, items(seen)[-1], len(expected), seen), TIMEOUT)
    assert items(seen) == expected  # every one after the cursor, once, in order
    assert len(expected) == 9 + 3 + 6 + 2


# --- helpers ----------------------------------------------------------------------


async def _true(value: bool) -> bool:
    return value


async def metrics_of(api: RunningAPI) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(base_url=api.base, timeout=10) as client:
        page = await client.get("/metrics")
    assert page.status_code == 200
    return parse(page.text)


# --- a stream lives no longer than its token ------------------------------------------


async def test_a_stream_ends_when_its_token_expires_and_that_token_opens_no_other(
    db: Database, tmp_path: Path
) -> None:
    settings = feed_settings(tmp_path)
    end_users = settings.end_users.model_copy(update={"leeway": timedelta(0)})
    short = jwt.encode(
        {"sub": "user-ada", "instance": "acme", "exp": int(time.time()) + 2},
        JWT_SECRET, algorithm="HS256",
    )  # fmt: skip
    async with (
        running_api(db, settings.model_copy(update={"end_users": end_users})) as api,
        httpx.AsyncClient(base_url=api.base, timeout=TIMEOUT) as browser,
        connect(ws_url(api, token=short)) as conn,
        browser.stream("GET", "/v1/me/stream", params={"token": short}) as stream,
    ):
        assert stream.status_code == 200
        closed = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(conn.recv(), TIMEOUT)
        events: list[dict[str, Any]] = []
        await asyncio.wait_for(blocks(stream, events), TIMEOUT)  # until the server ends it
        refused = await browser.get("/v1/me/feed", params={"token": short})
    assert closed["event"] == "closed" and closed["data"]["reason"] == "token_expired"
    assert conn.close_code == 1008 and "token expired" in closed["data"]["detail"]
    assert events[-1]["event"] == "closed"
    assert json.loads(events[-1]["data"])["reason"] == "token_expired"
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    assert api.feeds.hub.connected() == 0
