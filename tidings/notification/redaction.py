"""Encrypted codes shown as `<encrypted>`: what replay prints for people and pipes.

tidings never decrypts a code to show it; this only hides the ciphertext, which
is useless to a reader and should not spread into terminals, files and tickets.
"""

from __future__ import annotations

from typing import Any

from tidings.notification.codes import is_encrypted_code

ENCRYPTED = "<encrypted>"


def redact_codes(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` (as decoded from JSON) with every encrypted code, at any depth, as `<encrypted>`.

    A code is whatever `is_encrypted_code` recognises: in a source event's
    `code`, in notification.requested's and retry.requested's `request.code`,
    or anywhere else. The payload is not copied unless it holds a code (the
    common case costs one walk and no allocation), and it is never modified.
    """
    redacted = _redacted(payload)
    if isinstance(redacted, dict):
        return redacted
    # The whole payload is shaped like a code: it stays an object, its value hidden.
    return {**payload, "value": ENCRYPTED}


_CONTAINERS = (dict, list)


def _redacted(value: Any) -> Any:
    """`value` itself when it holds no code, else a copy with the codes replaced.

    Walks what JSON decoding makes (plain dicts and lists); exact type checks
    keep the walk at about a microsecond for a typical payload.
    """
    kind = type(value)
    if kind is dict:
        # The cheap membership test first: most objects are not codes.
        if "crypto_type" in value and is_encrypted_code(value):
            return ENCRYPTED
        copy: dict[str, Any] | None = None
        for key, item in value.items():
            if type(item) in _CONTAINERS:
                new = _redacted(item)
                if new is not item:
                    if copy is None:
                        copy = dict(value)
                    copy[key] = new
        return value if copy is None else copy
    if kind is list:
        items: list[Any] | None = None
        for index, item in enumerate(value):
            if type(item) in _CONTAINERS:
                new = _redacted(item)
                if new is not item:
                    if items is None:
                        items = list(value)
                    items[index] = new
        return value if items is None else items
    return value


def redacted_path(value: Any, path: str = "payload") -> str | None:
    """Where `value` holds an `<encrypted>` placeholder (a code replay hid), or None."""
    if value == ENCRYPTED:
        return path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = redacted_path(item, f"{path}.{key}")
        if found is not None:
            return found
    return None
