"""Masking secrets for display: what `config show` and logs may print."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# Query parameters that carry credentials in webhook and provider URLs
# (?token=..., ?api_key=..., ?sig=...): their values are masked too.
_SECRET_PARAM = re.compile(
    r"(?:^|[_-])(?:password|passwd|pwd|token|secret|key|apikey|sig|signature|auth|code)(?:$|[_-])",
    re.IGNORECASE,
)


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


class SecretsInFlight:
    """Strings no log line may show while they are in use: the one-time codes being sent.

    A worker holds a message's code (in every spelling a provider may quote)
    from rendering until its outcome is decided; the log formatters mask
    whatever is held, in every line of every logger, at every level. So a
    channel, or a library under it (aiosmtplib at DEBUG), that logs a
    provider's reply quoting the code cannot leak it, and a new channel cannot
    forget to mask.
    """

    def __init__(self) -> None:
        self._held: dict[str, int] = {}  # how many attempts hold each string
        self._lock = threading.Lock()  # log lines may be formatted on other threads
        self._longest_first: tuple[str, ...] | None = ()  # None: to be sorted again

    def holding(self, values: Iterable[str]) -> _Holding:
        """A context in which `values` are masked out of every log line."""
        held: list[str] = []
        for value in values:
            if value and value not in held:
                held.append(value)
                # JSON lines escape some characters: hold that spelling as well.
                if _JSON_ESCAPED.search(value):
                    held.append(json.dumps(value, ensure_ascii=False)[1:-1])
        return _Holding(self, held)

    def _take(self, held: list[str]) -> None:
        with self._lock:
            for value in held:
                self._held[value] = self._held.get(value, 0) + 1
            self._longest_first = None

    def _give_back(self, held: list[str]) -> None:
        with self._lock:
            for value in held:
                left = self._held[value] - 1
                if left:
                    self._held[value] = left
                else:
                    del self._held[value]
            self._longest_first = None

    def mask(self, text: str) -> str:
        """`text` with everything held now replaced by ***, longest first."""
        secrets = self._longest_first
        if secrets is None:  # sorted once per change, and only when a line is written
            with self._lock:
                secrets = self._longest_first = tuple(sorted(self._held, key=len, reverse=True))
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class _Holding:
    """What SecretsInFlight.holding returns: holds its strings while the block runs."""

    __slots__ = ("_held", "_registry")

    def __init__(self, registry: SecretsInFlight, held: list[str]) -> None:
        self._registry = registry
        self._held = held

    def __enter__(self) -> None:
        if self._held:
            self._registry._take(self._held)

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self._registry._give_back(self._held)


_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f]')
IN_FLIGHT = SecretsInFlight()
"""The process's codes in flight; tidings.cli.logs masks them out of every line."""


def mask_url(url: str) -> str:
    """A database URL, conninfo or endpoint URL with its password and tokens replaced by ***."""
    if "://" not in url:
        return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if password:
            userinfo = f"{user}:{MASK}"
        netloc = f"{userinfo}@{host}"
    query = _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, parts.query.replace("&", " "))
    query = "&".join(_mask_param(pair) for pair in query.split(" ")) if query else query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secrets written into a URL: its password and secret-looking query values."""
    if "://" not in url:
        return [m.group(2).strip("'") for m in _KV_PASSWORD.finditer(url)]
    parts = urlsplit(url)
    found = []
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    for pair in parts.query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and (name.lower() == "password" or _SECRET_PARAM.search(name)):
            found += [value, unquote(value)]
    return list(dict.fromkeys(found))


def _mask_param(pair: str) -> str:
    name, sep, value = pair.partition("=")
    if sep and value and value != MASK and _SECRET_PARAM.search(name):
        return f"{name}={MASK}"
    return pair
