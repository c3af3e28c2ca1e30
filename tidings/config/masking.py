"""Masking secrets for display: what `config show` and logs may print."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """A database URL or conninfo with its password replaced by ***."""
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
    return urlunsplit((parts.scheme, netloc, parts.path, query.replace(" ", "&"), parts.fragment))
