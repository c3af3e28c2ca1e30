"""One Server-Sent Events body, written straight to ASGI: what an open stream costs.

A serve process holds an event stream per open browser tab, idle for hours, so
what each one holds is what a process can hold (bench/streams.py). Through
Starlette's StreamingResponse an idle stream kept an anyio task group with two
tasks and a task per heartbeat wait. `serve_sse` writes the same body on the
request's own task, with one more waiting for the client to go (which ends the
wait at once) and the heartbeat as a timeout. `SseResponse` is it as a
response a route can return; tidings.api.event_stream serves the route without
FastAPI in front.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.feeds.hub import StreamClosed, Subscription
from tidings.feeds.streams import RETRY_MS, closed_sse

MEDIA_TYPE = "text/event-stream"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def serve_sse(sub: Subscription, *, heartbeat: float, receive: Receive, send: Send) -> None:
    """The stream's events, a comment every `heartbeat` seconds of quiet, until either side ends.

    A stream the hub closes (too slow, shutting down) ends with `event: closed`
    saying why and where to resume; the browser reconnects with Last-Event-ID.
    The subscription is released when the body ends or the client goes away.
    """
    try:
        await _stream(sub, heartbeat, receive, send)
    finally:
        await sub.close()


async def _stream(sub: Subscription, heartbeat: float, receive: Receive, send: Send) -> None:
    loop = asyncio.get_running_loop()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await _chunk(send, f"retry: {RETRY_MS}\n: connected\n\n")
    if (await receive())["type"] == "http.disconnect":  # the GET's empty body, or gone
        return
    deadline: asyncio.Timeout | None = None

    def wake(_: Any) -> None:  # the client went: end the wait for the next event now
        if deadline is not None and not deadline.expired():
            deadline.reschedule(loop.time())

    gone = asyncio.ensure_future(receive())  # http.disconnect, once the client goes
    gone.add_done_callback(wake)
    try:
        while not gone.done():
            try:
                async with asyncio.timeout(heartbeat) as deadline:
                    event = await anext(sub)
            except TimeoutError:
                text = ": heartbeat\n\n"
            except StreamClosed as closed:
                await _chunk(send, closed_sse(closed))
                break
            else:
                text = event.sse()
            finally:
                deadline = None
            if not gone.done():
                await _chunk(send, text)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        gone.cancel()


async def _chunk(send: Send, text: str) -> None:
    await send({"type": "http.response.body", "body": text.encode(), "more_body": True})


class SseResponse(Response):
    """A route's answer that streams a subscription as `serve_sse` writes it."""

    media_type = MEDIA_TYPE

    def __init__(self, sub: Subscription, *, heartbeat: float) -> None:
        super().__init__(status_code=200)
        self.sub = sub
        self.heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_sse(self.sub, heartbeat=self.heartbeat, receive=receive, send=send)
