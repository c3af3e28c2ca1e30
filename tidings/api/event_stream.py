"""GET /v1/me/stream in front of FastAPI: an open event stream costs as little as it can.

Through FastAPI, an idle stream kept its request (exit stacks, resolved
dependencies) alive for as long as it was open: about 12 KiB of its 36
(bench/streams.py). This pure ASGI layer answers that one route with the same
checks and answers as the route in tidings/api/me.py (its helpers: 401, 503
and 400 as problem+json) and the same body (tidings.api.sse), and hands every
other request to the app. The route stays declared in me.py for the OpenAPI
document, and answers where this layer is not in front.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.api.me import cursor_after, hub_unavailable, signed_in
from tidings.api.problems import Problem, problem_response
from tidings.api.sse import serve_sse
from tidings.feeds.hub import HubUnavailable, Subscription
from tidings.feeds.runtime import FeedRuntime

PATH = "/v1/me/stream"


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
            sub = await self._open(scope)
        except Problem as problem:
            await problem_response(problem)(scope, receive, send)
            return
        heartbeat = self._feeds.settings.inapp.heartbeat.total_seconds()
        await serve_sse(sub, heartbeat=heartbeat, receive=receive, send=send)

    async def _open(self, scope: Scope) -> Subscription:
        """Who asks, from where, and their subscription: as the route in me.py answers."""
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        user = await signed_in(self._feeds, headers.get("authorization"), query.get("token"))
        after = cursor_after(headers.get("last-event-id"), query.get("after"))
        try:
            return await self._feeds.hub.subscribe(
                user.instance_id, user.user_id, after=after, transport="sse", until=user.expires_at
            )
        except HubUnavailable as exc:
            raise hub_unavailable(exc) from None
