"""A real HTTP server on 127.0.0.1 for channel tests.

`serve_http()` (or the `http_peer` fixture) starts a ThreadingHTTPServer on a
free port in a daemon thread. It records every request and answers from a
queue of scripted answers, then with the default answer once the queue is
empty:

    with serve_http() as peer:
        peer.script(Reply(503, {"Retry-After": "7"}), Reply.json({"sid": "SM1"}))
        ...  # point a client at peer.url
        assert peer.requests[0].form()["To"] == ["+15550100"]

`Hang()` holds the request without answering (until the server stops, or for
`seconds`), longer than any client timeout in the tests; `Drop()` closes the
connection without answering. The server stops, and hanging handlers return,
when the context manager exits.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest


@dataclass(frozen=True)
class Reply:
    """Answer with this status, headers and body."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(
        cls, document: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """A JSON answer."""
        return cls(
            status=status,
            headers={"Content-Type": "application/json", **(headers or {})},
            body=json.dumps(document).encode(),
        )


@dataclass(frozen=True)
class Hang:
    """Read the request, then answer nothing for `seconds` (or until the server stops)."""

    seconds: float = 30.0


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without answering."""


Answer = Reply | Hang | Drop


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it; header names are lower-cased.

    `client_port` tells connections apart: equal ports mean a reused connection.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        """The body parsed as an application/x-www-form-urlencoded form."""
        return parse_qs(self.body.decode(), keep_blank_values=True, strict_parsing=True)


class HttpPeer:
    """The running server: its URL, the requests it got, the answers it will give."""

    def __init__(self, default: Reply) -> None:
        self.default = default
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self.stopping = threading.Event()
        self._answers: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order."""
        for answer in answers:
            self._answers.put(answer)

    def record(self, request: RecordedRequest) -> Answer:
        """Keep the request; return the answer it gets."""
        with self._lock:
            self.requests.append(request)
        try:
            return self._answers.get_nowait()
        except queue.Empty:
            return self.default


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: no request lines on stderr."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length),
            client_port=self.client_address[1],
        )
        answer = self.server.peer.record(request)
        if isinstance(answer, Reply):
            self._reply(answer)
            return
        if isinstance(answer, Hang):
            self.server.peer.stopping.wait(answer.seconds)
        self.close_connection = True

    def _reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A provider does not refuse connections when a bulk of sends arrives at
    # once; the default listen backlog (5) would, and turn sends into retries.
    request_queue_size = 256

    def __init__(self, peer: HttpPeer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.peer = peer


@contextmanager
def serve_http(default: Reply | None = None) -> Iterator[HttpPeer]:
    """Run a server until the block ends; `default` answers unscripted requests (200)."""
    peer = HttpPeer(default if default is not None else Reply())
    server = _Server(peer)
    host, port = server.server_address[:2]
    peer.url = f"http://{host!s}:{port}"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="http-peer", daemon=True
    )
    thread.start()
    try:
        yield peer
    finally:
        peer.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_peer() -> Iterator[HttpPeer]:
    """A running HttpPeer, stopped at teardown."""
    with serve_http() as peer:
        yield peer
