"""What a request body must be before any route sees it.

A pure ASGI middleware in front of the routes that take a body (POST under
/v1/): JSON content type when there is a body (else 415), at most api.max_body bytes (413, refused
from Content-Length before reading, or as soon as a chunked body passes it),
all of it within api.body_timeout (408: a stalled client cannot hold a
request open), and valid UTF-8 (400, naming the byte). The body is then
handed to the app as one message.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.api.problems import Problem, problem_response


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_body: int, body_timeout: float) -> None:
        self.app = app
        self._max = max_body
        self._timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT", "PATCH")
            or not str(scope["path"]).startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
        except Problem as problem:
            await problem_response(problem)(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, once the client goes

        await self.app(scope, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        is_json = content_type == "application/json" or content_type.endswith("+json")
        declared = headers.get("content-length")
        if not is_json and declared not in (None, "0"):
            raise self._not_json(content_type)
        if declared is not None and declared.isdigit() and int(declared) > self._max:
            raise self._too_large(f"{declared} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Problem(400, "the client went away before sending the whole body")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self._max:
                        raise self._too_large(f"more than {self._max} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise Problem(
                408,
                f"the body did not arrive within {self._timeout:g}s (api.body_timeout)",
                headers={"Connection": "close"},
            ) from None
        body = b"".join(chunks)
        if body and not is_json:
            raise self._not_json(content_type)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Problem(
                400,
                f"the body is not valid UTF-8: byte {exc.start} ({body[exc.start]:#04x}) "
                "cannot start or continue a character",
                title="Invalid UTF-8",
            ) from None
        return body

    def _not_json(self, content_type: str) -> Problem:
        shown = content_type or "none"
        return Problem(
            415,
            f"send the body as JSON with Content-Type: application/json (got {shown})",
            headers={"Accept-Post": "application/json"},
        )

    def _too_large(self, size: str) -> Problem:
        return Problem(
            413,
            f"the body has {size}; at most {self._max} are taken (api.max_body): "
            "send fewer events per request",
            headers={"Connection": "close"},
        )
