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

import difflib
import errno
import functools
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.runtime import new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

from tidings.notification.errors import RenderError
from tidings.notification.messages import MESSAGE_TYPES, is_message_type_name

MESSAGE_FIELDS = (
    "title", "pre_header", "subject", "greeting", "body", "button_text", "footer", "sms",
)  # fmt: skip
INAPP_FIELDS = ("inapp_title", "inapp_body")  # what an in-app feed item shows
TEXT_FIELDS = (*MESSAGE_FIELDS, *INAPP_FIELDS)
DEFAULT_SCOPE = "_default"
# What an instance id may be to have an override folder: letters, digits, and
# . _ - (not first); at most 200 characters (docs/operations.md, templates).
INSTANCE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
_BUILT_IN = "built-in"
_GO_STYLE = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


@dataclass(frozen=True)
class Source:
    """A template's text and where it came from, for error messages."""

    text: str
    file: str
    line: int


@dataclass(frozen=True)
class Scope:
    """An override folder (`<dir>/_default`, `<dir>/<instance id>`) and what is in it."""

    path: Path
    names: frozenset[str]  # its files, as listed
    languages: frozenset[str]  # of its texts files

    def file(self, name: str) -> str:
        """The path of a file in it, as text (`str(path / name)`, without pathlib's cost)."""
        return f"{self.path}{os.sep}{name}"


class TextCatalog:
    """Finds each text and layout: instance override, _default override, built-in."""

    def __init__(self, *, override_dir: Path | None) -> None:
        self._dir = override_dir
        # What was read of the override folder, by path, with the mtime it had:
        # read again when that changes (see _unchanged).
        self._cache: dict[str, tuple[int, dict[str, dict[str, Source]]]] = {}
        self._layouts: dict[str, tuple[int, Source]] = {}
        self._listed: dict[Path, tuple[int, Scope]] = {}
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

    def languages(self, instance_id: str, *, scopes: Sequence[Scope] | None = None) -> set[str]:
        """Languages that have texts for this instance (`scopes`: its override folders,
        when the caller found them already)."""
        found = set(self._built_in_texts)
        for scope in self.scopes(instance_id) if scopes is None else scopes:
            found |= scope.languages
        return found

    def texts(
        self,
        instance_id: str,
        lang: str,
        message_type: str,
        *,
        scopes: Sequence[Scope] | None = None,
    ) -> dict[str, Source]:
        """Every text field of a message type, the most specific override winning."""
        merged = dict(self._built_in_texts.get(lang, {}).get(message_type, {}))
        name = f"texts.{lang}.yaml"
        for scope in reversed(self.scopes(instance_id) if scopes is None else scopes):
            if name in scope.names:
                merged.update(self._override(scope.file(name)).get(message_type, {}))
        return merged

    def layout(
        self, instance_id: str, kind: str, *, scopes: Sequence[Scope] | None = None
    ) -> Source:
        """The html or txt layout of an instance."""
        name = f"layout.{kind}"
        for scope in self.scopes(instance_id) if scopes is None else scopes:
            if name not in scope.names:
                continue
            path = scope.file(name)
            try:
                found = os.stat(path)
            except OSError as exc:
                if exc.errno in _NOT_THERE:  # removed since the folder was listed
                    continue
                raise
            if not stat.S_ISREG(found.st_mode):
                continue
            cached = self._layouts.get(path)
            if cached is not None and cached[0] == found.st_mtime_ns:
                return cached[1]
            source = Source(_read(path), path, 1)
            if _unchanged(found.st_mtime_ns):
                self._layouts[path] = (found.st_mtime_ns, source)
            return source
        return self._built_in_layouts[kind]

    def scopes(self, instance_id: str) -> list[Scope]:
        """Override folders, most specific first, each with what is in it (what one
        message looks up once, and passes to languages, texts and layout).

        An instance id is a folder name, never a path: one outside INSTANCE_ID
        (`../outside`, `a/b`) has no folder of its own (only _default and the
        built-in texts apply), and every folder must resolve to inside
        templates.dir, so a symbolic link cannot lead out of it either.
        """
        if self._dir is None:
            return []
        names = [DEFAULT_SCOPE]
        if INSTANCE_ID.fullmatch(instance_id) and instance_id != DEFAULT_SCOPE:
            names.insert(0, instance_id)
        scopes = []
        for name in names:
            folder = self._dir / name
            try:
                found = folder.lstat()
                # A folder itself (not a link) named like this is inside templates.dir
                # whatever the path to it; only a link needs resolving to tell.
                if stat.S_ISLNK(found.st_mode):
                    found = folder.stat()
                    if stat.S_ISDIR(found.st_mode):
                        root = self._dir.resolve()
                        if not folder.resolve().is_relative_to(root):
                            raise RenderError(
                                f"{folder}: the override folder leads outside templates.dir "
                                f"({root})",
                                template=str(folder),
                            )
            except OSError as exc:
                if exc.errno in _NOT_THERE:
                    continue
                raise
            if stat.S_ISDIR(found.st_mode):
                scopes.append(self._listing(folder, found.st_mtime_ns))
        return scopes

    def _listing(self, folder: Path, mtime: int) -> Scope:
        """The folder as listed at this mtime (adding, removing or renaming a file in a
        folder changes its mtime, so a listing is kept until then)."""
        cached = self._listed.get(folder)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            names = frozenset(os.listdir(folder))
        except OSError as exc:
            if exc.errno not in _NOT_THERE:
                raise
            names = frozenset()  # removed since its mtime was read
        languages = (_text_file_language(name) for name in names)
        scope = Scope(folder, names, frozenset(lang for lang in languages if lang is not None))
        if _unchanged(mtime):
            if len(self._listed) > 4096:  # a folder per instance: do not grow without bound
                self._listed.clear()
            self._listed[folder] = (mtime, scope)
        return scope

    def _override(self, path: str) -> dict[str, dict[str, Source]]:
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return {}
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        texts = _parse_texts(_read(path), path)
        if _unchanged(mtime):
            self._cache[path] = (mtime, texts)
        return texts


# Errors for which Path.is_dir() and is_file() say False rather than raise.
_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})
# A file or folder changed this recently may change again within the same tick of
# the file system's clock, keeping its mtime: what is read of it is not kept yet.
_SETTLED_NS = 2_000_000_000


def _unchanged(mtime_ns: int) -> bool:
    """Whether what was read at this mtime can be kept: it is old enough that a later
    change gets another mtime."""
    return time.time_ns() - mtime_ns > _SETTLED_NS


def _text_file_language(name: str) -> str | None:
    match = re.fullmatch(r"texts\.([A-Za-z]{2,3}(?:-[A-Za-z0-9]+)?)\.yaml", name)
    return match.group(1).lower() if match else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"{path}: cannot read the override: {exc}", template=path) from exc


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
        # A custom type (ExportReady) is a new name; one a letter or two off a
        # built-in one is taken for a typo, which would silently never be used.
        near = difflib.get_close_matches(str(message_type), MESSAGE_TYPES, n=1, cutoff=0.85)
        if message_type not in MESSAGE_TYPES and (
            near or not is_message_type_name(str(message_type))
        ):
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise RenderError(
                f"{where}:{line}: unknown message type {message_type!r}{hint}; "
                f"built-in: {', '.join(MESSAGE_TYPES)}; a custom one is a new name, a capital "
                "letter then letters and digits, like ExportReady",
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
                str(value_node.value), where, _first_line(value_node)
            )
    return texts


def _first_line(node: yaml.ScalarNode) -> int:
    """The file's line (1-based) of the text's first line: a literal block (`|`)
    starts on the line after its indicator."""
    return node.start_mark.line + (2 if node.style == "|" else 1)


@dataclass(frozen=True)
class RenderLimits:
    """What one rendering may produce and take (settings templates.*)."""

    max_field_bytes: int = 65536
    max_message_bytes: int = 1048576
    seconds: float = 2.0
    url_schemes: tuple[str, ...] = ("https", "http")


class _TooMuch(Exception):
    """A template went past a render limit (turned into a RenderError naming file and line)."""


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, refusing operations that would build huge values or loop for ever.

    `'A' * 5000000` or `9 ** 9 ** 9` is refused before it is computed, and every
    range() a template makes counts against a budget per rendering, so nested
    loops cannot run for hours without writing anything.
    """

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *, limits: RenderLimits, **options: Any) -> None:
        super().__init__(**options)
        self.limits = limits
        self.range_budget = 0
        self.globals["range"] = self._range

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise _TooMuch(f"the exponent {right} is over 64")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > self.limits.max_field_bytes:
                    raise _TooMuch(
                        f"a value of {len(seq) * times} items is over "
                        f"{self.limits.max_field_bytes} (templates.max_field_bytes)"
                    )
        return super().call_binop(context, operator, left, right)

    def _range(self, *args: int) -> range:
        numbers = range(*args)
        self.range_budget -= len(numbers)
        if self.range_budget < 0:
            raise _TooMuch("the loops go over 100000 steps in one rendering")
        return numbers


class Renderer:
    """Renders texts, layouts and URL templates in a sandbox, within RenderLimits."""

    def __init__(self, *, catalog: TextCatalog, limits: RenderLimits | None = None) -> None:
        self.catalog = catalog
        self.limits = limits or RenderLimits()
        options: dict[str, Any] = {"undefined": StrictUndefined, "limits": self.limits}
        self._plain = _LimitedSandbox(autoescape=False, **options)
        self._html = _LimitedSandbox(autoescape=True, **options)
        self._url = _LimitedSandbox(autoescape=False, finalize=_url_quote, **options)
        # Compiled templates by environment and text: compiling costs far more
        # than rendering, and the same texts render for every message.
        self._compiled: dict[tuple[int, str], _Compiled] = {}
        # URL templates as Jinja reads them (Go style rewritten), by template.
        self._url_sources: dict[str, Source] = {}

    def texts(
        self,
        *,
        instance_id: str,
        lang: str,
        message_type: str,
        variables: Mapping[str, Any],
        fields: tuple[str, ...] = MESSAGE_FIELDS,
        only: Collection[str] | None = None,
        scopes: Sequence[Scope] | None = None,
        found: Mapping[str, Source] | None = None,
    ) -> dict[str, str]:
        """The message's text `fields` (by default those of email and SMS), rendered.

        All `fields` must exist, though only those in `only` are rendered: a
        text missing for one channel of email and SMS is an error for both.
        """
        if found is None:  # else: what the caller had the catalog find for these
            found = self.catalog.texts(instance_id, lang, message_type, scopes=scopes)
        sources = {name: found[name] for name in fields if name in found}
        missing = [f for f in fields if f not in sources]
        if found and missing and message_type not in MESSAGE_TYPES:
            # A custom type (ExportReady) needs only the texts its channel shows.
            empty = Source("", f"texts.{lang}.yaml", 1)
            sources = {**{f: empty for f in missing}, **sources}
            missing = []
        if missing:
            raise RenderError(
                f"no {lang} text for {message_type}: {', '.join(missing)} missing",
                template=f"texts.{lang}.yaml",
            )
        return {
            name: self._render(self._plain, source, variables, f"{message_type}.{name}")
            for name, source in sources.items()
            if only is None or name in only
        }

    def layout(
        self,
        *,
        instance_id: str,
        kind: str,
        variables: Mapping[str, Any],
        scopes: Sequence[Scope] | None = None,
    ) -> str:
        """The email layout (html or txt) around already rendered texts."""
        env = self._html if kind == "html" else self._plain
        source = self.catalog.layout(instance_id, kind, scopes=scopes)
        return self._render(env, source, variables, f"layout.{kind}")

    def url(self, template: str, variables: Mapping[str, Any]) -> str:
        """A request's URL template; `{{.Code}}` (Go style) and `{{ Code }}` both work.

        Every value put into the URL is percent-encoded.
        """
        source = self._url_sources.get(template)
        if source is None:
            if len(self._url_sources) > 4096:  # one per request's template: keep it bounded
                self._url_sources.clear()
            source = Source(_GO_STYLE.sub(r"{{ \1 }}", template), "url_template", 1)
            self._url_sources[template] = source
        url = self._render(self._url, source, variables, "url_template")
        scheme = _scheme(url)
        if url and scheme not in self.limits.url_schemes:
            allowed = " or ".join(f"{name}:" for name in self.limits.url_schemes)
            found = f"{scheme}:" if scheme else "a link without a scheme"
            raise RenderError(
                f"url_template: a link must be {allowed} (templates.allowed_url_schemes), "
                f"not {found}",
                template="url_template",
                line=1,
            )
        return url

    def _render(
        self,
        env: ImmutableSandboxedEnvironment,
        source: Source,
        variables: Mapping[str, Any],
        label: str,
    ) -> str:
        """Render one template, or raise RenderError naming its file and line."""
        if _is_literal(source.text):
            # No tag, no comment: Jinja would give the text back (less one final
            # newline), so it is not compiled or rendered at all.
            text = source.text.removesuffix("\n")
            most = self.limits.max_field_bytes
            if len(text) * 4 > most and len(text.encode()) > most:
                too_much = _TooMuch(f"the output is over {most} bytes (templates.max_field_bytes)")
                raise _render_error(source, label, too_much) from None
            return text
        compiled = self._compiled_for(env, source, label)
        if compiled.plan is not None:
            # Only substitutions and ifs: filled in directly, as Jinja would. Anything
            # it cannot tell for sure (an unknown name, a value that is not text, an
            # output over the limit) goes through Jinja, which renders or raises.
            filled = _fill(compiled.plan, variables, compiled.convert)
            if filled is not None and (
                len(filled) * 4 <= self.limits.max_field_bytes
                or len(filled.encode()) <= self.limits.max_field_bytes
            ):
                return filled
        try:
            return self._within_limits(env, compiled, variables)
        except Exception as exc:  # undefined variable, sandbox refusal, an operator's bug...
            raise _render_error(source, label, exc) from None

    def _compiled_for(
        self, env: ImmutableSandboxedEnvironment, source: Source, label: str
    ) -> _Compiled:
        """The template compiled (and planned) once per environment and text."""
        key = (id(env), source.text)
        compiled = self._compiled.get(key)
        if compiled is None:
            if len(self._compiled) > 4096:  # overrides change; do not grow without bound
                self._compiled.clear()
            compiled = self._compiled[key] = _compile(env, source, label)
        return compiled

    def _within_limits(
        self, env: ImmutableSandboxedEnvironment, compiled: _Compiled, variables: Mapping[str, Any]
    ) -> str:
        """Render chunk by chunk, stopping at the size or time limit.

        What Template.generate does, less its per-render cost: the context is
        made from the globals copied once per template, not from their ChainMap.
        """
        limits = self.limits
        most = limits.max_field_bytes
        if isinstance(env, _LimitedSandbox):
            env.range_budget = _RANGE_BUDGET
        deadline = time.monotonic() + limits.seconds
        template = compiled.template
        context = new_context(
            env, template.name, template.blocks, {**compiled.globals, **variables},
            True, compiled.globals,
        )  # fmt: skip
        chunks = template.root_render_func(context)
        parts: list[str] = []
        # Characters while they cannot be over `most` bytes (UTF-8 takes at most 4
        # bytes a character), bytes from then on. The limits are checked every few
        # chunks, not after each: a render goes past them by a few chunks at most.
        size, in_bytes = 0, False
        over = None
        try:
            while batch := list(islice(chunks, _CHUNKS_PER_CHECK)):
                parts += batch
                if in_bytes:
                    size += sum(len(chunk.encode()) for chunk in batch)
                else:
                    size += sum(map(len, batch))
                    if size * 4 > most:
                        size, in_bytes = len("".join(parts).encode()), True
                if size > most:
                    over = f"the output is over {most} bytes (templates.max_field_bytes)"
                    break
                if time.monotonic() > deadline:
                    over = f"rendering took over {limits.seconds:g}s (templates.render_timeout)"
                    break
        except Exception:
            env.handle_exception()  # raises it again, with the template's lines in its traceback
        if over is not None:
            raise _TooMuch(over)
        return "".join(parts)


def _is_literal(text: str) -> bool:
    """Text Jinja renders as itself: no `{` to open a tag, no `\\r` to normalize."""
    return "{" not in text and "\r" not in text


@dataclass(frozen=True)
class _Compiled:
    """A compiled template and its globals, copied once (they never change).

    `plan`: the template as substitutions and ifs, when it is no more than that
    (most texts: `Hello {{ user.display_name }},`), with `convert`, what Jinja
    does to a value it writes (escape, finalize, str).
    """

    template: Template
    globals: dict[str, Any]
    plan: _Plan | None = None
    convert: Callable[[str | int], str] = str


def _compile(env: ImmutableSandboxedEnvironment, source: Source, label: str) -> _Compiled:
    try:
        template = env.from_string(source.text)
        convert = _converter(env)
        if convert is None:
            return _Compiled(template, dict(template.globals))
        return _Compiled(template, dict(template.globals), _plan(env.parse(source.text)), convert)
    except TemplateSyntaxError as exc:
        line = source.line + (exc.lineno or 1) - 1
        raise RenderError(
            f"{source.file}:{line}: {label} failed to render: syntax error: {exc.message}",
            template=source.file,
            line=line,
        ) from None
    except Exception as exc:
        raise _render_error(source, label, exc) from None


# --- templates that only substitute ---------------------------------------------------
#
# Most texts are words and `{{ name }}` or `{{ name.key }}`, some with an
# `{% if name %}`. Such a template is kept as a plan (literal text, values,
# branches) and filled in without Jinja's per-render machinery. The plan says
# exactly what the compiled template does with values that are text or whole
# numbers in plain dicts; for anything else (`{{ user.items }}`, a number with
# a fraction, a name the variables lack) _fill gives up and Jinja renders it,
# error messages and limits included.


@dataclass(frozen=True, slots=True)
class _Value:
    """`name`, or `name.key.key`: a variable, then keys into plain dicts."""

    name: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Branch:
    """`{% if a %}..{% elif b %}..{% else %}..{% endif %}`."""

    tests: tuple[tuple[_Value, _Plan], ...]
    otherwise: _Plan


_Plan = tuple["str | _Value | _Branch", ...]
_GIVE_UP = object()


def _plan(template: nodes.Template) -> _Plan | None:
    """The template as a plan, or None when it does more than substitute and branch."""
    return _plan_body(template.body)


def _plan_body(body: list[nodes.Node]) -> _Plan | None:
    steps: list[str | _Value | _Branch] = []
    for node in body:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    steps.append(child.data)
                elif (value := _plan_value(child)) is not None:
                    steps.append(value)
                else:
                    return None
        elif type(node) is nodes.If:
            branch = _plan_if(node)
            if branch is None:
                return None
            steps.append(branch)
        else:
            return None
    return tuple(steps)


def _plan_if(node: nodes.If) -> _Branch | None:
    tests = []
    for part in (node, *node.elif_):
        test, body = _plan_value(part.test), _plan_body(part.body)
        if test is None or body is None:
            return None
        tests.append((test, body))
    otherwise = _plan_body(node.else_)
    return None if otherwise is None else _Branch(tuple(tests), otherwise)


def _plan_value(node: nodes.Node) -> _Value | None:
    """A variable and its keys, if `node` is no more than that."""
    keys: list[str] = []
    while not isinstance(node, nodes.Name):
        if isinstance(node, nodes.Getattr) and not hasattr(dict, node.attr):
            keys.append(node.attr)  # `user.items` would be dict.items: not planned
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and type(node.arg.value) is str
        ):
            keys.append(node.arg.value)
        else:
            return None
        node = node.node
    if node.ctx != "load" or node.name == "self":  # `self`: Jinja's TemplateReference
        return None
    return _Value(node.name, tuple(reversed(keys)))


def _fill(
    plan: _Plan, variables: Mapping[str, Any], convert: Callable[[str | int], str]
) -> str | None:
    """The plan rendered with `variables`, or None when only Jinja can tell."""
    parts: list[str] = []
    if _fill_into(parts, plan, variables, convert):
        return "".join(parts)
    return None


def _fill_into(
    parts: list[str],
    plan: _Plan,
    variables: Mapping[str, Any],
    convert: Callable[[str | int], str],
) -> bool:
    append = parts.append
    for step in plan:
        if type(step) is str:
            append(step)
        elif type(step) is _Value:
            value = _look_up(step, variables)
            if value is _GIVE_UP:
                return False
            append(convert(value))
        else:
            assert type(step) is _Branch
            chosen = step.otherwise
            for test, body in step.tests:
                value = _look_up(test, variables)
                if value is _GIVE_UP:
                    return False
                if value:
                    chosen = body
                    break
            if not _fill_into(parts, chosen, variables, convert):
                return False
    return True


def _look_up(step: _Value, variables: Mapping[str, Any]) -> Any:
    """The value, if it is text or a whole number reached through plain dicts; else _GIVE_UP."""
    value = variables.get(step.name, _GIVE_UP)
    if not step.keys:
        return value if type(value) is str or type(value) is int else _GIVE_UP
    for key in step.keys:
        if type(value) is not dict:
            return _GIVE_UP
        value = value.get(key, _GIVE_UP)
    return value if type(value) is str or type(value) is int else _GIVE_UP


def _converter(env: ImmutableSandboxedEnvironment) -> Callable[[str | int], str] | None:
    """What the compiled template does to a value it writes: `escape(finalize(v))` with
    autoescape, `str(finalize(v))` without (jinja2.compiler, _output_child_pre); None
    when that depends on more than the value (Jinja's path only)."""
    finalize = env.finalize
    autoescape = env.autoescape
    if callable(autoescape) or (
        finalize is not None and getattr(finalize, "jinja_pass_arg", None) is not None
    ):
        return None
    if finalize is None:
        return _escape if autoescape else str
    if autoescape:
        return lambda value: _escape(finalize(value))
    return lambda value: str(finalize(value))


def _escape(value: Any) -> str:
    """markupsafe's escape, without building a Markup for text that has nothing to escape."""
    if type(value) is str and not (
        "&" in value or "<" in value or ">" in value or "'" in value or '"' in value
    ):  # the five characters markupsafe.escape replaces
        return value
    return escape(value)


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


_RANGE_BUDGET = 100_000
# Chunks rendered between two checks of the size and time limits.
_CHUNKS_PER_CHECK = 16


def _scheme(url: str) -> str:
    """A link's scheme as a browser reads it: control characters and blanks do not hide it."""
    # Only what comes before the first ':' counts, and dropping blanks and control
    # characters never removes a ':', so only that part is cleaned.
    head, sep, _ = url.partition(":")
    if sep and head.isascii() and head.isalpha():  # `https`: nothing to clean
        return head.lower()
    head = _BLANKS.sub("", head)
    if not sep or not _SCHEME.fullmatch(head):
        return ""
    return head.lower()


_BLANKS = re.compile(r"[\x00-\x20\x7f]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


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


@functools.lru_cache(maxsize=256)
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
