"""The end user's own feed under /v1/me/: list, counts, marks, read-all, stream, poll.

These routes take the end user's token (`Authorization: Bearer <token>`, or
`?token=` where a browser cannot set headers), never an API key: the token
says whose feed it is (see tidings.feeds.end_users). No token or a bad one is
401, keys that cannot be fetched 503, another user's item 404. `/inbox` is
the page that uses them.

The live transports (SSE /v1/me/stream, WebSocket /v1/me/ws, long-poll
/v1/me/poll) answer 503 (the WebSocket closes with 1013) while this server's
feed hub does not follow the log, and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, WebSocket
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from tidings.api.problems import Problem, problem_responses
from tidings.api.sse import SseResponse
from tidings.eventstore import DatabaseUnavailable
from tidings.feeds.end_users import EndUser, KeysUnavailable, token_from
from tidings.feeds.engagement import Action
from tidings.feeds.errors import AuthError, FeedBusy, FeedItemNotFound, InvalidCursor
from tidings.feeds.hub import HubUnavailable, StreamClosed, Subscription
from tidings.feeds.operations import MAX_LIMIT, Filter, feed_counts, list_feed, mark, read_all
from tidings.feeds.page import INBOX_CSP, INBOX_MEDIA_TYPE, inbox_html
from tidings.feeds.runtime import FeedRuntime
from tidings.feeds.streams import Closing, long_poll, parse_after, ws_text

log = logging.getLogger("tidings.api")
router = APIRouter(tags=["end user"])
_WAIT = re.compile(r"^(\d{1,3}(?:\.\d+)?)s?$")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tidings-end-users"'}
_RESPONSES = problem_responses(
    (401, "No end-user token, or one that is not valid"),
    (404, "No such item in this user's feed"),
    (503, "The keys that verify tokens cannot be fetched, or the database is down"),
)
_LIVE_RESPONSES = problem_responses(
    (401, "No end-user token, or one that is not valid"),
    (
        503,
        "The keys that verify tokens cannot be fetched, or this server's feed hub does "
        "not follow the log right now (starting, database down, shutting down)",
    ),
)


def runtime_of(request: Request) -> FeedRuntime:
    runtime: FeedRuntime = request.app.state.feeds
    return runtime


async def end_user(
    request: Request,
    token: str | None = Query(
        None, description="The end-user token, where a browser cannot send a header"
    ),
) -> EndUser:
    """A dependency: the signed-in end user, or 401/503."""
    return await signed_in(runtime_of(request), request.headers.get("authorization"), token)


async def signed_in(
    runtime: FeedRuntime, authorization: str | None, query_token: str | None
) -> EndUser:
    """The end user of a request's `Authorization` header or `?token=`, or 401/503."""
    try:
        return await runtime.auth.authenticate(token_from(authorization, query_token))
    except AuthError as exc:
        raise Problem(401, str(exc), headers=_CHALLENGE) from None
    except KeysUnavailable:
        raise Problem(
            503,
            "the keys that verify end-user tokens cannot be fetched right now; try again",
            headers={"Retry-After": "5"},
        ) from None


def _unavailable(exc: DatabaseUnavailable) -> Problem:
    return Problem(
        503, f"the database is unavailable ({exc}); try again", headers={"Retry-After": "2"}
    )


def hub_unavailable(exc: HubUnavailable) -> Problem:
    """503 while this server's feed hub does not follow the log."""
    return Problem(503, str(exc), headers={"Retry-After": "2"})


@router.get(
    "/v1/me/feed",
    responses=_RESPONSES,
    summary="The end user's feed, newest first, a page at a time",
)
async def get_feed(
    request: Request,
    user: EndUser = Depends(end_user),  # noqa: B008
    cursor: str | None = Query(None, description="next_cursor of the page before"),
    limit: int = Query(20, ge=1, le=MAX_LIMIT),
    filter: Filter = Query("all"),  # noqa: B008
) -> dict[str, Any]:
    """The user's feed, newest first, a page at a time (`next_cursor` continues it).

    `stream_after` is where a stream opened after this read resumes from
    (`/v1/me/stream?after=` or `Last-Event-ID`), so nothing falls between.
    """
    try:
        page = await list_feed(
            runtime_of(request).store, instance_id=user.instance_id, user_id=user.user_id,
            cursor=cursor, limit=limit, filter=filter,
        )  # fmt: skip
    except InvalidCursor as exc:
        raise Problem(400, str(exc), title="Bad cursor") from None
    except DatabaseUnavailable as exc:
        raise _unavailable(exc) from None
    return page.to_json()


@router.get(
    "/v1/me/feed/counts",
    responses=_RESPONSES,
    summary="The end user's badge: total, unread, unseen",
)
async def get_counts(
    request: Request,
    user: EndUser = Depends(end_user),  # noqa: B008
) -> dict[str, int]:
    """The badge: items not archived (`total`), of them `unread`, and `unseen`."""
    try:
        counts = await feed_counts(
            runtime_of(request).store, instance_id=user.instance_id, user_id=user.user_id
        )
    except DatabaseUnavailable as exc:
        raise _unavailable(exc) from None
    return counts.to_json()


@router.post("/v1/me/feed/read-all", responses=_RESPONSES, summary="Mark every unread item read")
async def post_read_all(
    request: Request,
    user: EndUser = Depends(end_user),  # noqa: B008
) -> dict[str, Any]:
    """Mark every unread item read, in one transaction; answers how many and the counts."""
    store = runtime_of(request).store
    try:
        marked = await read_all(store, instance_id=user.instance_id, user_id=user.user_id)
        counts = await feed_counts(store, instance_id=user.instance_id, user_id=user.user_id)
    except FeedBusy as exc:
        raise Problem(409, str(exc)) from None
    except DatabaseUnavailable as exc:
        raise _unavailable(exc) from None
    return {"read": marked, "counts": counts.to_json()}


async def _mark(request: Request, user: EndUser, notification_id: str, action: Action) -> Any:
    store = runtime_of(request).store
    try:
        marked = await mark(
            store, instance_id=user.instance_id, user_id=user.user_id,
            notification_id=notification_id, action=action,
        )  # fmt: skip
        counts = await feed_counts(store, instance_id=user.instance_id, user_id=user.user_id)
    except FeedItemNotFound:
        raise Problem(404, f"no item {notification_id} in your feed") from None
    except FeedBusy as exc:
        raise Problem(409, str(exc)) from None
    except DatabaseUnavailable as exc:
        raise _unavailable(exc) from None
    return {
        "item": marked.item.to_json(),
        "changed": marked.position is not None,
        "position": marked.position,
        "counts": counts.to_json(),
    }


_MARK_DOC = """Mark the item {what}; doing it twice changes nothing.

`changed` is false when the item already was so; `position` is where the
mark landed on the log (the `id` of the `state` event the streams carry);
`counts` are the badge after it.
"""


def _mark_route(action: Action, what: str) -> None:
    async def post_mark(
        request: Request,
        notification_id: str,
        user: EndUser = Depends(end_user),  # noqa: B008
    ) -> Any:
        return await _mark(request, user, notification_id, action)

    post_mark.__name__ = f"mark_{action}"
    post_mark.__doc__ = _MARK_DOC.format(what=what)
    router.add_api_route(
        f"/v1/me/feed/{{notification_id}}/{action}",
        post_mark,
        methods=["POST"],
        responses=_RESPONSES,
        summary=f"Mark an item {what}",
    )


for _action, _what in (
    ("seen", "seen"),
    ("read", "read"),
    ("unread", "unread"),
    ("archive", "archived"),
    ("unarchive", "unarchived"),
):
    _mark_route(_action, _what)  # type: ignore[arg-type]


def cursor_after(last_event_id: str | None, after: str | None) -> int | None:
    """The position a stream resumes after (`Last-Event-ID`, else `?after=`), or 400."""
    try:
        return parse_after(last_event_id, after)
    except ValueError as exc:
        raise Problem(
            400, f"{exc}: send a position this API handed out", title="Bad cursor"
        ) from None


@router.get(
    "/v1/me/stream",
    responses={
        **_LIVE_RESPONSES,
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
    },
    response_class=StreamingResponse,  # for the document: the route answers an SseResponse
    summary="The end user's feed, live, as Server-Sent Events",
)
async def get_stream(
    request: Request,
    user: EndUser = Depends(end_user),  # noqa: B008
    after: str | None = Query(None, description="Resume after this position"),
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
) -> SseResponse:
    """The user's feed, live, as Server-Sent Events.

    `event: message` (a new item), `event: state` (an item marked, here or on
    another device), `event: counts`, each with `id: <position>`. Reconnect
    with `Last-Event-ID` (or `?after=`) to get everything after it, then live:
    no gap, no duplicate. `event: reset` means the position is older than the
    retention: fetch the feed again. `event: closed` says why the server ended
    the stream (too slow, shutting down) and where to resume. 503 while this
    server cannot stream (its feed hub does not follow the log).
    """
    runtime = runtime_of(request)
    position = cursor_after(last_event_id, after)
    try:
        sub = await runtime.hub.subscribe(
            user.instance_id, user.user_id, after=position, until=user.expires_at
        )
    except HubUnavailable as exc:
        raise hub_unavailable(exc) from None
    return SseResponse(sub, heartbeat=runtime.settings.inapp.heartbeat.total_seconds())


def _wait(text: str, longest: float) -> float:
    found = _WAIT.match(text.strip())
    if found is None:
        raise Problem(400, f"wait must be seconds like 25 or 25s, got {text[:20]!r}")
    return min(float(found.group(1)), longest)


@router.get(
    "/v1/me/poll",
    responses={**_LIVE_RESPONSES, 204: {"description": "Nothing arrived"}},
    summary="Long-poll: the events after a position, or 204",
)
async def get_poll(
    request: Request,
    user: EndUser = Depends(end_user),  # noqa: B008
    after: str | None = Query(None, description="The last position received"),
    wait: str = Query(
        "25s", description="How long to hold; at most inapp.max_poll_wait (60s by default)"
    ),
) -> Any:
    """The user's events after `after` at once, or as they arrive within `wait`, or 204.

    The same events as the stream (`{"event", "id", "data"}`); poll again with
    `after` = the answer's `after`. A longer `wait` than the server's
    inapp.max_poll_wait is cut to it. 503 while this server cannot stream.
    """
    runtime = runtime_of(request)
    position = cursor_after(None, after)
    longest = runtime.settings.inapp.max_poll_wait.total_seconds()
    seconds = _wait(wait, longest)
    polling = asyncio.create_task(
        long_poll(runtime.hub, user.instance_id, user.user_id, after=position, wait=seconds)
    )
    gone = asyncio.create_task(_until_disconnected(request))
    try:
        await asyncio.wait({polling, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not polling.done():  # the client went away: let go of its subscription now
            polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    if polling.cancelled():
        return Response(status_code=204)  # nobody reads it
    try:
        got = polling.result()
    except HubUnavailable as exc:
        raise hub_unavailable(exc) from None
    if not got:
        return Response(status_code=204)
    return {"events": [e.to_json() for e in got], "after": got[-1].position}


async def _until_disconnected(request: Request) -> None:
    """Returns when the client of a held request goes away (a GET has no body to read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.websocket("/v1/me/ws")
async def ws_stream(websocket: WebSocket) -> None:
    """The user's feed, live, over a WebSocket: the same messages as the SSE stream.

    Each message is one JSON object `{"event", "id", "data"}` (event: message,
    state, counts, reset; id: the position). `?after=` resumes; the token comes
    as `?token=` (a browser cannot set headers on a WebSocket) or
    `Authorization: Bearer`. The server pings every inapp.heartbeat. It ends
    the stream with a `closed` message saying why and where to resume, then a
    close frame: 1008 for a missing or bad token or cursor (fix it first),
    1012 when the server shuts down, 1013 when the client was too slow or the
    server cannot stream right now (resume in a moment). Messages from the
    client are ignored.
    """
    runtime: FeedRuntime = websocket.app.state.feeds
    params = websocket.query_params
    await websocket.accept()
    try:
        user = await runtime.auth.authenticate(
            token_from(websocket.headers.get("authorization"), params.get("token"))
        )
    except AuthError as exc:
        await _ws_close(websocket, Closing("unauthorized", str(exc)))
        return
    except KeysUnavailable:
        detail = "the keys that verify end-user tokens cannot be fetched right now; try again"
        await _ws_close(websocket, Closing("keys_unavailable", detail))
        return
    try:
        position = parse_after(None, params.get("after"))
    except ValueError as exc:
        detail = f"{exc}: send a position this API handed out"
        await _ws_close(websocket, Closing("bad_cursor", detail))
        return
    try:
        sub = await runtime.hub.subscribe(
            user.instance_id, user.user_id, after=position, transport="ws", until=user.expires_at
        )
    except HubUnavailable as exc:
        await _ws_close(websocket, Closing(exc.reason or "unavailable", str(exc), position))
        return
    await _ws_pump(websocket, sub)


async def _ws_pump(websocket: WebSocket, sub: Subscription) -> None:
    """Send the subscription's events until it closes or the client goes; then let go."""
    sending = asyncio.create_task(_ws_send(websocket, sub))
    receiving = asyncio.create_task(_ws_until_gone(websocket))
    try:
        await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, receiving):
            task.cancel()
        for task in (sending, receiving):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError):
                await task
        await sub.close()


async def _ws_send(websocket: WebSocket, sub: Subscription) -> None:
    while True:
        try:
            event = await anext(sub)
        except StreamClosed as closed:
            await _ws_close(websocket, Closing.of(closed))
            return
        await websocket.send_text(ws_text(event.to_json()))


async def _ws_until_gone(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it goes."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _ws_close(websocket: WebSocket, closing: Closing) -> None:
    """The last `closed` message, then the close frame with its code and reason."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
        await websocket.send_text(ws_text(closing.message()))
        await websocket.close(closing.code, closing.frame_reason)


@router.get("/inbox", include_in_schema=False)
async def get_inbox() -> Response:
    """The inbox page (tidings/feeds/static/inbox.html): no token needed to load it."""
    return Response(
        inbox_html(),
        media_type=INBOX_MEDIA_TYPE,
        headers={
            "Content-Security-Policy": INBOX_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
