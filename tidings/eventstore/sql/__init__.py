"""SQL of the event store, as named blocks loaded once from the .sql files here."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file into its `-- name: NAME` blocks."""
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = body.strip()
    return blocks


@cache
def queries() -> dict[str, str]:
    """Every named block of every .sql file in this package."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, body in parse_blocks(entry.read_text("utf-8")).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined in two files")
                found[name] = body
    return found


def query(name: str) -> sql.SQL:
    """One named query, as SQL text psycopg accepts.

    The blocks are this package's own static files, never input.
    """
    return sql.SQL(queries()[name])
