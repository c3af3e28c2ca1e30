"""Serving an ASGI app on uvicorn inside tidings' own event loop.

tidings owns the signals (SIGTERM/SIGINT set the process's stop event, see the
cli) and the socket (bound here, so an address in use is an error that names
the setting, not a uvicorn exit). When stop is set, uvicorn stops accepting,
lets the requests in flight finish within `shutdown_timeout`, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import ClassVar

import uvicorn
from starlette.types import ASGIApp

from tidings.config import APISettings
from tidings.errors import TidingsError

log = logging.getLogger("tidings.api")


class AddressError(TidingsError):
    """The address cannot be served."""

    fields: ClassVar[tuple[str, ...]] = ("address", "setting")
    address: str | None
    setting: str | None


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller's stop event ends it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int, *, setting: str, what: str) -> socket.socket:
    """A listening socket on host:port; an address in use fails naming it and the setting."""
    where = format_address(host, port)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise AddressError(
            f"cannot serve {what} on {where}: {reason}; choose another address with {setting}",
            address=where,
            setting=setting,
        ) from exc
    sock.set_inheritable(True)
    return sock


@asynccontextmanager
async def serving(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    settings: APISettings,
    setting: str,
    what: str,
    stop: asyncio.Event | None = None,
    ws_heartbeat: float | None = None,
) -> AsyncIterator[tuple[str, int]]:
    """Serve `app` on host:port for the block; yields the bound (host, port).

    Leaving the block (or `stop` being set, when given) drains the requests in
    flight within api.shutdown_timeout, then closes. `what` and `setting` name
    the server and its address setting in errors and logs. WebSockets are
    pinged every `ws_heartbeat` seconds (None: never) and closed when a pong
    does not come within as long again.
    """
    sock = bind(host, port, setting=setting, what=what)
    bound = (host, int(sock.getsockname()[1]))
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=max(int(settings.keep_alive.total_seconds()), 1),
        limit_concurrency=settings.max_concurrency,
        timeout_graceful_shutdown=max(int(settings.shutdown_timeout.total_seconds()), 1),
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers
        # WebSockets (the end user's /v1/me/ws) through the `websockets` library:
        # pinged so idle proxies keep them, no compression (its per-connection
        # buffers cost more than the small messages save), small client messages.
        ws="websockets-sansio",
        ws_ping_interval=ws_heartbeat,
        ws_ping_timeout=ws_heartbeat,
        ws_per_message_deflate=False,
        ws_max_size=64 * 1024,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn {what}")
    watcher = asyncio.create_task(_exit_on(stop or asyncio.Event(), server), name=f"stop {what}")
    try:
        while not server.started:  # startup binds nothing (the socket is ours): quick
            if task.done():
                task.result()  # raises what failed the startup
                raise AddressError(f"{what} did not start", address=format_address(*bound))
            await asyncio.sleep(0.01)
        log.info(
            "serving %s on http://%s",
            what,
            format_address(*bound),
            extra={"addr": format_address(*bound), "what": what},
        )
        yield bound
    finally:
        server.should_exit = True
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


async def _exit_on(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True
