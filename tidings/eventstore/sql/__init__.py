"""SQL as named blocks in .sql files, loaded once per package.

Each block starts with `-- name: NAME` and runs to the next one; values are
always bound parameters. Other rooms keep their own .sql files and load them
with `QueryFiles`.

A block's whole-line comments stay in the file, for its readers, and are left
out of the statement sent: psycopg parses a statement's placeholders again at
every call once its text is over 4 KiB (psycopg._queries'
MAX_CACHED_STATEMENT_LENGTH), and the workers' claim, well commented, was.
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
# A line that is only a comment. Never inside a string literal here: no block
# has a literal spanning lines that a line of its own starts with `--`.
_COMMENT_LINE = re.compile(r"^[ \t]*--[^\n]*(?:\n|\Z)", re.MULTILINE)


def parse_blocks(text: str) -> dict[str, str]:
    """Split a file into its `-- name: NAME` blocks."""
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name!r} is defined twice")
        blocks[name] = _COMMENT_LINE.sub("", body).strip()
    return blocks


class QueryFiles:
    """The named blocks of every .sql file in one package."""

    def __init__(self, package: str) -> None:
        self._package = package

    @cached_property
    def blocks(self) -> dict[str, str]:
        found: dict[str, str] = {}
        files = sorted(resources.files(self._package).iterdir(), key=lambda e: e.name)
        for entry in files:
            if entry.name.endswith(".sql"):
                for name, body in parse_blocks(entry.read_text("utf-8")).items():
                    if name in found:
                        raise ValueError(f"query {name!r} is defined in two files")
                    found[name] = body
        return found

    def __call__(self, name: str) -> sql.SQL:
        """One named query. The blocks are the package's own static files, never input."""
        return sql.SQL(self.blocks[name])


query = QueryFiles(__name__)
