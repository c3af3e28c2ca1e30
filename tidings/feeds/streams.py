"""The three transports over one subscription, with no web framework in them.

`tidings serve` wraps these in its routes: GET /v1/me/stream writes each
StreamEvent.sse() (tidings.api.sse), then `closed_sse`; `long_poll` answers GET /v1/me/poll,
and the WebSocket /v1/me/ws sends each StreamEvent.to_json() as it comes,
then `closing` when the stream ends. The cursor is the log position
everywhere: SSE's `id:`, the WebSocket message's `id`, the long-poll's `after`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from tidings.feeds.hub import FeedHub, StreamClosed, StreamEvent

RETRY_MS = 2000  # how long a browser waits before it reconnects an event stream

# WebSocket close codes (RFC 6455 section 7.4.1) by why the server ends a stream.
POLICY_VIOLATION = 1008  # the client must change something: its token, its cursor
SERVICE_RESTART = 1012  # this server stops: reconnect (to another one) and resume
TRY_AGAIN_LATER = 1013  # too slow, or the server cannot stream right now: resume soon
_CLOSE_CODES = {
    "unauthorized": POLICY_VIOLATION,
    "bad_cursor": POLICY_VIOLATION,
    "token_expired": POLICY_VIOLATION,
    "shutting_down": SERVICE_RESTART,
}


@dataclass(frozen=True)
class Closing:
    """How a WebSocket stream ends: a last `closed` message, then a close frame."""

    reason: str  # a short code: unauthorized, bad_cursor, slow_consumer, shutting_down, ...
    detail: str
    resume_after: int | None = None

    @classmethod
    def of(cls, closed: StreamClosed) -> Closing:
        return cls(closed.reason or "closed", str(closed), closed.resume_after)

    @property
    def code(self) -> int:
        return _CLOSE_CODES.get(self.reason, TRY_AGAIN_LATER)

    @property
    def frame_reason(self) -> str:
        """The close frame's reason: at most 123 bytes (the protocol's limit)."""
        text = f"{self.reason}: {self.detail}"
        return text.encode("utf-8")[:123].decode("utf-8", "ignore")

    def message(self) -> dict[str, Any]:
        data = {"reason": self.reason, "detail": self.detail, "resume_after": self.resume_after}
        return {"event": "closed", "id": self.resume_after, "data": data}


def parse_after(last_event_id: str | None, after: str | None) -> int | None:
    """Where a stream resumes: Last-Event-ID wins over ?after=; None: from now on.

    Raises ValueError for something that is not a position.
    """
    for value in (last_event_id, after):
        if value is not None and value.strip() != "":
            text = value.strip()
            if not text.isdigit() or len(text) > 19:
                raise ValueError(f"not a stream position: {text[:40]!r}")
            return int(text)
    return None


def closed_sse(closed: StreamClosed) -> str:
    """The last message of an event stream: why it ended and where to resume."""
    data = Closing.of(closed).message()["data"]
    return f"event: closed\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def long_poll(
    hub: FeedHub,
    instance_id: str,
    user_id: str,
    *,
    after: int | None,
    wait: float,
    limit: int = 100,
    linger: float = 0.05,
) -> list[StreamEvent]:
    """The user's events after `after`: at once when there are some, else the first
    ones to arrive within `wait` seconds, else none (the route answers 204).

    After the first event, whatever follows within `linger` seconds comes along
    (a send's message and counts together). A slow or closed stream ends the
    poll with what it has; the next poll resumes after the last one returned.
    """
    sub = await hub.subscribe(instance_id, user_id, after=after, transport="poll")
    got: list[StreamEvent] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        while len(got) < limit:
            timeout = linger if got else deadline - loop.time()
            if timeout <= 0:
                break
            try:
                got.append(await asyncio.wait_for(anext(sub), timeout))
            except (TimeoutError, StreamClosed):
                break
    finally:
        await sub.close()
    return got


def ws_text(message: dict[str, Any]) -> str:
    """A WebSocket text message: one JSON object."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))
