"""Masking secrets for display: what `config show` and logs may print."""

from __future__ import annotations

import re
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
