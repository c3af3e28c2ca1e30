"""Message texts and layouts, rendered in a sandbox, overridable per instance.

Texts live in YAML files (`texts.<lang>.yaml`, one entry per message type with
title, pre_header, subject, greeting, body, button_text, footer and sms, and
inapp_title and inapp_body for the types that may go in-app), the
email layout in `layout.html` and `layout.txt`. The built-in ones ship with
tidings; an operator's `templates.dir` may override any of them, for every
instance in `<dir>/_default/` and for one in `<dir>/<instance id>/`.

Every text is a Jinja2 template rendered in an immutable sandbox with strict
undefined variables. Whatever goes wrong while rendering (a syntax error, an
unknown variable, an attribute the sandbox refuses) is a RenderError naming the
file and line, so the notification is canceled with a reason instead of the
pool crashing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from jinja2 import StrictUndefined, Template, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tidings.notification.errors import RenderError
from tidings.notification.messages import MESSAGE_TYPES

MESSAGE_FIELDS = (
    "title", "pre_header", "subject", "greeting", "body", "button_text", "footer", "sms",
)  # fmt: skip
INAPP_FIELDS = ("inapp_title", "inapp_body")  # what an in-app feed item shows
TEXT_FIELDS = (*MESSAGE_FIELDS, *INAPP_FIELDS)
DEFAULT_SCOPE = "_default"
_BUILT_IN = "built-in"
_GO_STYLE = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


@dataclass(frozen=True)
class Source:
    """A template's text and where it came from, for error messages."""

    text: str
    file: str
    line: int


class TextCatalog:
    """Finds each text and layout: instance override, _default override, built-in."""

    def __init__(self, *, override_dir: Path | None) -> None:
        self._dir = override_dir
        self._cache: dict[Path, tuple[int, dict[str, dict[str, Source]]]] = {}
        self._built_in_texts: dict[str, dict[str, dict[str, Source]]] = {}
        package = resources.files("tidings.notification").joinpath("templates")
        for entry in package.iterdir():
            lang = _text_file_language(entry.name)
            if lang is not None:
                where = f"{_BUILT_IN} {entry.name}"
                self._built_in_texts[lang] = _parse_texts(entry.read_text("utf-8"), where)
        self._built_in_layouts = {
            kind: Source(package.joinpath(f"layout.{kind}").read_text("utf-8"),
                         f"{_BUILT_IN} layout.{kind}", 1)
            for kind in ("html", "txt")
        }  # fmt: skip

    def languages(self, instance_id: str) -> set[str]:
        """Languages that have texts for this instance."""
        found = set(self._built_in_texts)
        for scope in self._scopes(instance_id):
            for path in scope.glob("texts.*.yaml"):
                lang = _text_file_language(path.name)
                if lang is not None:
                    found.add(lang)
        return found

    def texts(self, instance_id: str, lang: str, message_type: str) -> dict[str, Source]:
        """Every text field of a message type, the most specific override winning."""
        merged = dict(self._built_in_texts.get(lang, {}).get(message_type, {}))
        for scope in reversed(self._scopes(instance_id)):
            path = scope / f"texts.{lang}.yaml"
            merged.update(self._override(path).get(message_type, {}))
        return merged

    def layout(self, instance_id: str, kind: str) -> Source:
        """The html or txt layout of an instance."""
        for scope in self._scopes(instance_id):
            path = scope / f"layout.{kind}"
            if path.is_file():
                return Source(_read(path), str(path), 1)
        return self._built_in_layouts[kind]

    def _scopes(self, instance_id: str) -> list[Path]:
        """Override folders, most specific first."""
        if self._dir is None:
            return []
        return [p for p in (self._dir / instance_id, self._dir / DEFAULT_SCOPE) if p.is_dir()]

    def _override(self, path: Path) -> dict[str, dict[str, Source]]:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        texts = _parse_texts(_read(path), str(path))
        self._cache[path] = (mtime, texts)
        return texts


def _text_file_language(name: str) -> str | None:
    match = re.fullmatch(r"texts\.([A-Za-z]{2,3}(?:-[A-Za-z0-9]+)?)\.yaml", name)
    return match.group(1).lower() if match else None


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"{path}: cannot read the override: {exc}", template=str(path)) from exc


def _parse_texts(text: str, where: str) -> dict[str, dict[str, Source]]:
    """A texts file as {message type: {field: Source}}, with each value's line."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise RenderError(
            f"{where}:{line}: not valid YAML: {exc}", template=where, line=line
        ) from exc
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise RenderError(f"{where}:1: expected message types at the top", template=where, line=1)
    texts: dict[str, dict[str, Source]] = {}
    for type_node, fields_node in root.value:
        message_type = type_node.value
        line = type_node.start_mark.line + 1
        if message_type not in MESSAGE_TYPES:
            raise RenderError(
                f"{where}:{line}: unknown message type {message_type!r}; "
                f"known: {', '.join(MESSAGE_TYPES)}",
                template=where,
                line=line,
            )
        if not isinstance(fields_node, yaml.MappingNode):
            raise RenderError(
                f"{where}:{line}: {message_type} needs fields", template=where, line=line
            )
        for field_node, value_node in fields_node.value:
            field_line = field_node.start_mark.line + 1
            if field_node.value not in TEXT_FIELDS:
                raise RenderError(
                    f"{where}:{field_line}: unknown field {message_type}.{field_node.value}; "
                    f"known: {', '.join(TEXT_FIELDS)}",
                    template=where,
                    line=field_line,
                )
            if not isinstance(value_node, yaml.ScalarNode):
                raise RenderError(
                    f"{where}:{field_line}: {message_type}.{field_node.value} must be text",
                    template=where,
                    line=field_line,
                )
            texts.setdefault(message_type, {})[field_node.value] = Source(
                str(value_node.value), where, value_node.start_mark.line + 1
            )
    return texts


class Renderer:
    """Renders texts, layouts and URL templates in a sandbox."""

    def __init__(self, *, catalog: TextCatalog) -> None:
        self.catalog = catalog
        self._plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self._html = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
        self._url = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, finalize=_url_quote
        )
        # Compiled templates by environment and text: compiling costs far more
        # than rendering, and the same texts render for every message.
        self._compiled: dict[tuple[int, str], Template] = {}

    def texts(
        self,
        *,
        instance_id: str,
        lang: str,
        message_type: str,
        variables: Mapping[str, Any],
        fields: tuple[str, ...] = MESSAGE_FIELDS,
    ) -> dict[str, str]:
        """The message's text `fields` (by default those of email and SMS), rendered."""
        found = self.catalog.texts(instance_id, lang, message_type)
        sources = {name: found[name] for name in fields if name in found}
        missing = [f for f in fields if f not in sources]
        if missing:
            raise RenderError(
                f"no {lang} text for {message_type}: {', '.join(missing)} missing",
                template=f"texts.{lang}.yaml",
            )
        return {
            name: self._render(self._plain, source, variables, f"{message_type}.{name}")
            for name, source in sources.items()
        }

    def layout(self, *, instance_id: str, kind: str, variables: Mapping[str, Any]) -> str:
        """The email layout (html or txt) around already rendered texts."""
        env = self._html if kind == "html" else self._plain
        source = self.catalog.layout(instance_id, kind)
        return self._render(env, source, variables, f"layout.{kind}")

    def url(self, template: str, variables: Mapping[str, Any]) -> str:
        """A request's URL template; `{{.Code}}` (Go style) and `{{ Code }}` both work.

        Every value put into the URL is percent-encoded.
        """
        source = Source(_GO_STYLE.sub(r"{{ \1 }}", template), "url_template", 1)
        return self._render(self._url, source, variables, "url_template")

    def _render(
        self,
        env: ImmutableSandboxedEnvironment,
        source: Source,
        variables: Mapping[str, Any],
        label: str,
    ) -> str:
        """Render one template, or raise RenderError naming its file and line."""
        key = (id(env), source.text)
        template = self._compiled.get(key)
        if template is None:
            if len(self._compiled) > 4096:  # overrides change; do not grow without bound
                self._compiled.clear()
            template = self._compiled[key] = _compile(env, source, label)
        try:
            return template.render(**variables)
        except Exception as exc:  # undefined variable, sandbox refusal, an operator's bug...
            raise _render_error(source, label, exc) from None


def _compile(env: ImmutableSandboxedEnvironment, source: Source, label: str) -> Template:
    try:
        return env.from_string(source.text)
    except TemplateSyntaxError as exc:
        line = source.line + (exc.lineno or 1) - 1
        raise RenderError(
            f"{source.file}:{line}: {label} failed to render: syntax error: {exc.message}",
            template=source.file,
            line=line,
        ) from None
    except Exception as exc:
        raise _render_error(source, label, exc) from None


def _render_error(source: Source, label: str, exc: Exception) -> RenderError:
    line = source.line + _template_line(exc) - 1
    return RenderError(
        f"{source.file}:{line}: {label} failed to render: {type(exc).__name__}: {exc}",
        template=source.file,
        line=line,
    )


def _template_line(exc: BaseException) -> int:
    """The line inside the template where rendering failed (Jinja rewrites tracebacks)."""
    line = 1
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _url_quote(value: Any) -> str:
    return quote(str(value), safe="")


def choose_language(preferred: str, available: set[str], fallback: str) -> str:
    """The user's language if there are texts for it (`de-CH` finds `de`), else the fallback."""
    wanted = preferred.strip().lower().replace("_", "-")
    for candidate in (wanted, wanted.split("-")[0]):
        if candidate and candidate in available:
            return candidate
    return fallback.lower()


_UNITS = {
    "en": (("day", "days"), ("hour", "hours"), ("minute", "minutes"), ("second", "seconds")),
    "de": (("Tag", "Tage"), ("Stunde", "Stunden"), ("Minute", "Minuten"), ("Sekunde", "Sekunden")),
}


def humanize(duration: timedelta | None, lang: str) -> str:
    """`10 minutes` / `10 Minuten`: the largest whole unit (English for unknown languages)."""
    if duration is None:
        return ""
    units = _UNITS.get(lang, _UNITS["en"])
    seconds = int(duration.total_seconds())
    for (one, many), size in zip(units, (86400, 3600, 60, 1), strict=True):
        if size == 1 or (seconds >= size and seconds % size == 0):
            count = seconds // size
            return f"{count} {one if count == 1 else many}"
    raise AssertionError("unreachable: the last unit always matches")
