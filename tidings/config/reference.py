"""The settings reference (docs/settings.md), generated from defaults.yaml's comments.

defaults.yaml is the one place a setting is described: each key, or a group of
keys, has a comment above it, and each key names its environment variable in a
trailing comment. This module turns that into Markdown, so the manual cannot
drift from the defaults (a test compares the two).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources

from tidings.config.settings import DEFAULTS_RESOURCE

REGENERATE = "tidings config reference --output docs/settings.md"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[a-z_]+):(?P<rest>.*)$")


@dataclass
class _Group:
    """Keys that share one describing comment."""

    section: str
    description: list[str]
    keys: list[tuple[str, str, str]] = field(default_factory=list)  # path, default, env


def _split_value(rest: str) -> tuple[str, str]:
    """`value # ENV ...` -> (value, env part); a # inside quotes is part of the value."""
    quote: str | None = None
    for index, char in enumerate(rest):
        if char in "\"'":
            quote = None if quote == char else (quote or char)
        elif char == "#" and quote is None and (index == 0 or rest[index - 1] == " "):
            return rest[:index].strip(), rest[index + 1 :].strip()
    return rest.strip(), ""


def _groups(text: str) -> tuple[list[str], list[_Group]]:
    intro: list[str] = []
    groups: list[_Group] = []
    parents: list[tuple[int, str]] = []  # (indent, name) of the sections we are in
    comment: list[str] = []
    current: _Group | None = None
    seen_key = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            words = stripped.lstrip("#").strip()
            if not seen_key:
                intro.append(words)
            else:
                comment.append(words)
                current = None
            continue
        if not stripped:
            comment, current = [], None
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        seen_key = True
        indent = len(match["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        value, env = _split_value(match["rest"])
        name = match["key"]
        if not value:  # a section header
            parents.append((indent, name))
            comment, current = [], None
            continue
        path = ".".join([*(p for _, p in parents), name])
        if current is None or comment:
            current = _Group(section=parents[0][1] if parents else "", description=comment)
            groups.append(current)
            comment = []
        current.keys.append((path, value, env))
    return intro, groups


def settings_reference(text: str | None = None) -> str:
    """docs/settings.md as Markdown, from defaults.yaml (or the given text)."""
    if text is None:
        text = resources.files("tidings.config").joinpath(DEFAULTS_RESOURCE).read_text("utf-8")
    intro, groups = _groups(text)
    out = [
        "# Settings reference",
        "",
        f"<!-- Generated from tidings/config/defaults.yaml by `{REGENERATE}`;",
        "     edit the comments there, not this file. A test fails when the two differ. -->",
        "",
        "Every setting with its default, as shipped in `tidings/config/defaults.yaml`",
        '("this file" below).',
        "",
        *(_prose(line) for line in intro[1:] if line),
        "",
        "`tidings config show` prints the effective values (secrets masked).",
    ]
    section = None
    for group in groups:
        if group.section != section:
            section = group.section
            out += ["", f"## {section}"]
        names = ", ".join(f"`{path}`" for path, _, _ in group.keys)
        out += ["", f"### {names}", ""]
        if group.description:
            out += [_prose(" ".join(group.description)), ""]
        out += ["| setting | default | environment |", "| --- | --- | --- |"]
        for path, value, env in group.keys:
            shown = value.replace("|", "\\|")
            out.append(f"| `{path}` | `{shown}` | {_env_cell(env)} |")
    return "\n".join(out).rstrip() + "\n"


def _prose(text: str) -> str:
    """Comment text as Markdown: <placeholders> stay visible instead of becoming HTML."""
    return text.replace("<", "\\<")


def _env_cell(env: str) -> str:
    """`TIDINGS_X or TIDINGS_Y` -> each variable in code; an example after = stays whole."""
    parts = [part.strip() for part in env.split(" or ")]
    return " or ".join(f"`{part}`" for part in parts if part)
