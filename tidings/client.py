"""A typed Python client for `tidings serve` (httpx): `Client` and `AsyncClient`.

    from tidings.client import Client

    with Client("http://127.0.0.1:8080", key="tdk_...") as tidings:
        accepted = tidings.notify(
            idempotency_key="export-42-ready",
            message_type="ExportReady",
            channel="email",
            recipient={"email": "ada@example.com", "name": "Ada"},
            data={"export_url": "https://example.com/exports/42"},
        )
        print(tidings.notification(accepted.id)["state"])
        both = tidings.notify(
            idempotency_key="password-changed-ada-7",
            message_type="PasswordChange",
            channels=["email", "inapp"],  # one notification each
            user_id="user-ada",
        )
        print(both.id_for("inapp"))

Every call builds its request and reads its answer through the same two
functions, so the two clients differ only in how they send. An answer other
than success raises `APIError` with the problem's status, title, detail and
the fields at fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx

from tidings.errors import TidingsError


class APIError(TidingsError):
    """The API refused the request."""

    fields: ClassVar[tuple[str, ...]] = ("status", "title", "detail", "errors")
    status: int | None
    title: str | None
    detail: str | None
    errors: list[dict[str, str]] | None


@dataclass(frozen=True)
class ChannelNotification:
    """One channel's notification of a request."""

    channel: str
    id: str
    state: str


@dataclass(frozen=True)
class Accepted:
    """A requested notification: `created` is False when the key was used before.

    `id` is the first channel's notification (the only one's, for one channel);
    `notifications` holds one per channel the request named (none for a cancel).
    """

    id: str
    state: str
    created: bool
    location: str | None = None
    notifications: tuple[ChannelNotification, ...] = ()

    def id_for(self, channel: str) -> str:
        """The notification id of one channel of the request (KeyError if not named)."""
        for notification in self.notifications:
            if notification.channel == channel:
                return notification.id
        raise KeyError(channel)


@dataclass(frozen=True)
class Appended:
    position: int
    sequence: int
    aggregate_type: str
    aggregate_id: str
    event_type: str


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        problem = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    detail = str(problem.get("detail") or response.text[:200] or response.reason_phrase)
    title = str(problem.get("title") or response.reason_phrase)
    raise APIError(
        f"{response.status_code} {title}: {detail}",
        status=response.status_code,
        title=title,
        detail=detail,
        errors=list(problem.get("errors") or []),
    )


def _notify_call(
    *,
    idempotency_key: str,
    message_type: str,
    channel: str | None,
    channels: Sequence[str] | None,
    user_id: str | None,
    recipient: Mapping[str, str] | None,
    data: Mapping[str, Any] | None,
    code: str | Mapping[str, str] | None,
    code_expiry: str | None,
    url_template: str | None,
    not_after: datetime | None,
) -> _Call:
    body: dict[str, Any] = {"message_type": message_type}
    if channel is not None:
        body["channel"] = channel
    if channels is not None:
        body["channels"] = list(channels)
    if user_id is not None:
        body["user_id"] = user_id
    if recipient is not None:
        body["recipient"] = dict(recipient)
    if data:
        body["data"] = dict(data)
    if code is not None:
        body["code"] = {"plain": code} if isinstance(code, str) else dict(code)
    if code_expiry is not None:
        body["code_expiry"] = code_expiry
    if url_template is not None:
        body["url_template"] = url_template
    if not_after is not None:
        body["not_after"] = not_after.isoformat()
    return _Call("POST", "/v1/notifications", body, headers={"Idempotency-Key": idempotency_key})


def _accepted(response: httpx.Response) -> Accepted:
    body = _check(response).json()
    return Accepted(
        id=body["id"],
        state=body["state"],
        created=response.status_code == 202,
        location=response.headers.get("location"),
        notifications=tuple(
            ChannelNotification(channel=n["channel"], id=n["id"], state=n["state"])
            for n in body.get("notifications") or ()
        ),
    )


def _appended(response: httpx.Response) -> list[Appended]:
    return [Appended(**event) for event in _check(response).json()["events"]]


def _page(response: httpx.Response) -> Page:
    body = _check(response).json()
    return Page(items=body["items"], next_cursor=body.get("next_cursor"))


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _check(response).text.splitlines() if line]


def _list_params(
    state: Sequence[str] | None,
    user_id: str | None,
    message_type: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("state", state), ("message_type", message_type)):
        if value:
            params[name] = list(value)
    if user_id is not None:
        params["user_id"] = user_id
    if since is not None:
        params["since"] = since.isoformat()
    if until is not None:
        params["until"] = until.isoformat()
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _events_params(
    after: int, event_type: Sequence[str] | None, aggregate_id: Sequence[str] | None, limit: int
) -> dict[str, Any]:
    params: dict[str, Any] = {"after": after, "limit": limit}
    if event_type:
        params["event_type"] = list(event_type)
    if aggregate_id:
        params["aggregate_id"] = list(aggregate_id)
    return params


class Client:
    """The API over one httpx.Client (keep-alive connections); use it as a context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        key: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            transport=transport,
        )

    def _send(self, call: _Call) -> httpx.Response:
        return self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=call.headers
        )

    def append_events(self, events: Sequence[Mapping[str, Any]]) -> list[Appended]:
        """Append events (the `events append` envelope) in one transaction."""
        return _appended(self._send(_Call("POST", "/v1/events", {"events": list(events)})))

    def notify(
        self,
        *,
        idempotency_key: str,
        message_type: str,
        channel: str | None = None,
        channels: Sequence[str] | None = None,
        user_id: str | None = None,
        recipient: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
        code: str | Mapping[str, str] | None = None,
        code_expiry: str | None = None,
        url_template: str | None = None,
        not_after: datetime | None = None,
    ) -> Accepted:
        """Request a notification on `channel` (email, sms, inapp), or one per channel of
        `channels` (give one of the two); the same idempotency key is the same
        notification(s) for ever."""
        return _accepted(self._send(_notify_call(**_args(locals()))))

    def notification(self, notification_id: str) -> dict[str, Any]:
        """State, attempts, last error and timeline."""
        response = self._send(_Call("GET", f"/v1/notifications/{notification_id}"))
        body: dict[str, Any] = _check(response).json()
        return body

    def notifications(
        self,
        *,
        state: Sequence[str] | None = None,
        user_id: str | None = None,
        message_type: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """One page of the listing, newest first; pass `next_cursor` on for the next."""
        params = _list_params(state, user_id, message_type, since, until, cursor, limit)
        return _page(self._send(_Call("GET", "/v1/notifications", params=params)))

    def cancel(self, notification_id: str) -> Accepted:
        response = self._send(_Call("POST", f"/v1/notifications/{notification_id}/cancel"))
        return _accepted(response)

    def events(
        self,
        *,
        after: int = 0,
        event_type: Sequence[str] | None = None,
        aggregate_id: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """The instance's log after a position, codes redacted."""
        params = _events_params(after, event_type, aggregate_id, limit)
        return _lines(self._send(_Call("GET", "/v1/events", params=params)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient:
    """The same calls as `Client`, awaited, over one httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str,
        *,
        key: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100),
        )

    async def _send(self, call: _Call) -> httpx.Response:
        return await self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=call.headers
        )

    async def append_events(self, events: Sequence[Mapping[str, Any]]) -> list[Appended]:
        return _appended(await self._send(_Call("POST", "/v1/events", {"events": list(events)})))

    async def notify(
        self,
        *,
        idempotency_key: str,
        message_type: str,
        channel: str | None = None,
        channels: Sequence[str] | None = None,
        user_id: str | None = None,
        recipient: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
        code: str | Mapping[str, str] | None = None,
        code_expiry: str | None = None,
        url_template: str | None = None,
        not_after: datetime | None = None,
    ) -> Accepted:
        return _accepted(await self._send(_notify_call(**_args(locals()))))

    async def notification(self, notification_id: str) -> dict[str, Any]:
        response = await self._send(_Call("GET", f"/v1/notifications/{notification_id}"))
        body: dict[str, Any] = _check(response).json()
        return body

    async def notifications(
        self,
        *,
        state: Sequence[str] | None = None,
        user_id: str | None = None,
        message_type: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        params = _list_params(state, user_id, message_type, since, until, cursor, limit)
        return _page(await self._send(_Call("GET", "/v1/notifications", params=params)))

    async def cancel(self, notification_id: str) -> Accepted:
        response = await self._send(_Call("POST", f"/v1/notifications/{notification_id}/cancel"))
        return _accepted(response)

    async def events(
        self,
        *,
        after: int = 0,
        event_type: Sequence[str] | None = None,
        aggregate_id: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        params = _events_params(after, event_type, aggregate_id, limit)
        return _lines(await self._send(_Call("GET", "/v1/events", params=params)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _args(values: dict[str, Any]) -> dict[str, Any]:
    """A notify call's own arguments (locals() less self)."""
    return {name: value for name, value in values.items() if name != "self"}
