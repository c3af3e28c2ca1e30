"""GET /v1/me/stream in front of FastAPI: an open event stream costs as little as it can.

A serve process holds an SSE connection per open browser tab, idle for hours,
so what each one holds is what a process can hold (bench/streams.py). Served
through FastAPI and Starlette's StreamingResponse, an idle stream kept about
36 KiB of Python objects alive: FastAPI's request (its exit stacks, the
resolved dependencies), Starlette's anyio task group with two tasks, and a
task per heartbeat wait. This pure ASGI layer answers the same route with the
same token check and the same answers (401, 503 and 400 as problem+json; the
stream as tidings.feeds.streams.sse_stream writes it), on one task, with one
more waiting for the client to go and the heartbeat as a timeout, and hands
every other request to the app. The route stays declared in tidings/api/me.py
for the OpenAPI document (and answers it where this layer is not in front).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.api.problems import Problem, problem_response
from tidings.feeds.end_users import EndUser, KeysUnavailable, token_from
from tidings.feeds.errors import AuthError
from tidings.feeds.hub import StreamClosed, Subscription
from tidings.feeds.runtime import FeedRuntime
from tidings.feeds.streams import RETRY_MS, parse_after

PATH = "/v1/me/stream"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidings-end-users"'}
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class EventStreams:
    """Serves GET /v1/me/stream; everything else goes to `app`."""

    def __init__(self, app: ASGIApp, *, feeds: FeedRuntime) -> None:
        self.app = app
        self._feeds = feeds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        try:
            user, after = await self._open(scope)
        except Problem as problem:
            await problem_response(problem)(scope, receive, send)
            return
        sub = await self._feeds.hub.subscribe(user.instance_id, user.user_id, after=after)
        try:
            await self._stream(sub, receive, send)
        finally:
            await sub.close()

    async def _open(self, scope: Scope) -> tuple[EndUser, int | None]:
        """Who asks and from where, as the route in me.py checks them (same order, same answers)."""
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        try:
            user = await self._feeds.auth.authenticate(
                token_from(headers.get("authorization"), query.get("token"))
            )
        except AuthError as exc:
            raise Problem(401, str(exc), headers=_CHALLENGE) from None
        except KeysUnavailable:
            raise Problem(
                503,
                "the keys that verify end-user tokens cannot be fetched right now; try again",
                headers={"Retry-After": "5"},
            ) from None
        try:
            after = parse_after(headers.get("last-event-id"), query.get("after"))
        except ValueError as exc:
            raise Problem(
                400, f"{exc}: send a position this API handed out", title="Bad cursor"
            ) from None
        return user, after

    async def _stream(self, sub: Subscription, receive: Receive, send: Send) -> None:
        """The body, as sse_stream writes it, until the client goes or the hub closes it."""
        heartbeat = self._feeds.settings.inapp.heartbeat.total_seconds()
        loop = asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
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
                    data = json.dumps({"reason": closed.reason, "resume_after": closed.resume_after,
                                       "detail": str(closed)})  # fmt: skip
                    await _chunk(send, f"event: closed\ndata: {data}\n\n")
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
