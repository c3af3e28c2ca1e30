"""Texts that only substitute are filled in without Jinja's machinery, exactly as Jinja would.

The reference is a plain Jinja sandbox (strict undefined, the same autoescape
and finalize): for any template and variables, the renderer gives the same
text, or a RenderError where Jinja raises. Size limits hold on both paths.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from tidings.notification.errors import RenderError
from tidings.notification.messages import MESSAGE_TYPES
from tidings.notification.rendering import (
    MESSAGE_FIELDS,
    Renderer,
    RenderLimits,
    Source,
    TextCatalog,
    _url_quote,
)

RENDERER = Renderer(catalog=TextCatalog(override_dir=None))
ENVS = {
    "plain": (RENDERER._plain, ImmutableSandboxedEnvironment(undefined=StrictUndefined)),
    "html": (
        RENDERER._html,
        ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=True),
    ),
    "url": (
        RENDERER._url,
        ImmutableSandboxedEnvironment(undefined=StrictUndefined, finalize=_url_quote),
    ),
}


def render_both(kind: str, text: str, variables: dict[str, Any]) -> tuple[str, str]:
    """(the renderer's text, Jinja's text); where Jinja raises, ("refused", its error)
    and the renderer's RenderError as ("refused", the error as the RenderError quotes it)."""
    mine, reference = ENVS[kind]
    try:
        expected = reference.from_string(text).render(variables)
    except Exception as exc:  # whatever Jinja raises, the renderer must refuse with it
        expected = f"refused: {type(exc).__name__}: {exc}"
    try:
        got = RENDERER._render(mine, Source(text, "t.yaml", 1), variables, "x")
    except RenderError as exc:
        quoted = str(exc).partition("failed to render: ")[2]
        got = f"refused: {quoted}"
    return got, expected


@pytest.mark.parametrize("kind", ["plain", "html", "url"])
@pytest.mark.parametrize(
    ("text", "variables"),
    [
        ("Hello {{ user.display_name }},", {"user": {"display_name": "<Ada & 'Bob'>"}}),
        ("{{ user['display_name'] }}!", {"user": {"display_name": 'say "hi"'}}),
        ("{{ n }} and {{ d.k.j }}", {"n": 42, "d": {"k": {"j": -7}}}),
        ("{{ d.items }}", {"d": {"items": "shadowed by dict.items"}}),  # Jinja: the method
        ("{{ d['items'] }}", {"d": {"items": "the key"}}),
        ("{{ s.upper }}", {"s": "a str has methods"}),
        ("{{ f }} {{ b }} {{ z }}", {"f": 1.5, "b": True, "z": None}),
        ("{{ m }}", {"m": Markup("<b>safe</b>")}),
        ("{{ l }}", {"l": ["a", "<b>"]}),
        ("{{ nothing }}", {}),
        ("{{ d.missing }}", {"d": {}}),
        ("{{ d.k }}", {"d": "not a dict"}),
        ("{{ dict }}", {}),  # a global, not a variable: Jinja renders it
        ("{{ self }}", {"self": "not this: Jinja's TemplateReference"}),
        ("{% if url %}go {{ url }}{% elif b %}b{% else %}none{% endif %}.", {"url": "", "b": 0}),
        ("{% if url %}go {{ url }}{% endif %}", {"url": "https://x/?a=1&b=<2>"}),
        ("{% if b %}yes{% else %}no{% endif %}", {"b": None}),
        ("{% if missing %}yes{% endif %}", {}),
        ("a {{- x -}}  b\n{# note #}\r\nc\n", {"x": "X"}),
        ("{{ x | upper }} {{ 'lit' }}", {"x": "filtered"}),
        ("{% for i in range(2) %}{{ i }}{% endfor %}", {}),
        ("{% set y = 1 %}{{ y }}", {}),
    ],
)
def test_a_planned_text_renders_as_jinja_renders_it(
    kind: str, text: str, variables: dict[str, Any]
) -> None:
    got, expected = render_both(kind, text, variables)
    assert got == expected


NAMES = ("a", "b", "user")
values = st.one_of(
    st.text(alphabet="ab<>&'\"é €\n", max_size=8),
    st.integers(-5, 5),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, width=16),
)
variables = st.dictionaries(
    st.sampled_from(NAMES),
    st.one_of(values, st.dictionaries(st.sampled_from(("k", "items", "x")), values, max_size=3)),
    max_size=3,
)
expressions = st.sampled_from(
    ("a", "b", "user", "user.k", "user.items", "user['x']", "a.k", "nope")
)
literals = st.text(alphabet="xy <&>\n", max_size=5).filter(lambda t: "{" not in t)


def if_block(parts: tuple[str, str, str | None]) -> str:
    test, then, otherwise = parts
    rest = "" if otherwise is None else "{% else %}" + otherwise
    return "{% if " + test + " %}" + then + rest + "{% endif %}"


templates = st.recursive(
    st.one_of(literals, expressions.map(lambda e: "{{ " + e + " }}")),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=4).map("".join),
        st.tuples(expressions, inner, st.none() | inner).map(if_block),
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(("plain", "html", "url")), text=templates, variables=variables)
def test_any_substituting_text_renders_as_jinja_renders_it(
    kind: str, text: str, variables: dict[str, Any]
) -> None:
    got, expected = render_both(kind, text, variables)
    assert got == expected, (text, variables)


@pytest.mark.parametrize(("value", "refused"), [("€" * 5461, False), ("€" * 5462, True)])
def test_a_substituted_value_counts_against_the_field_limit(value: str, refused: bool) -> None:
    """16,383 bytes pass a 16,384-byte limit, 16,386 do not, on the planned path too."""
    renderer = Renderer(
        catalog=TextCatalog(override_dir=None), limits=RenderLimits(max_field_bytes=16_384)
    )
    source = Source("{{ v }}", "texts.en.yaml", 7)
    if not refused:
        assert renderer._render(renderer._plain, source, {"v": value}, "x.sms") == value
        return
    with pytest.raises(RenderError) as caught:
        renderer._render(renderer._plain, source, {"v": value}, "x.sms")
    assert "texts.en.yaml:7: x.sms failed to render" in str(caught.value)
    assert "the output is over 16384 bytes (templates.max_field_bytes)" in str(caught.value)


@pytest.mark.parametrize("lang", ["en", "de"])
def test_every_built_in_text_and_layout_is_planned(lang: str) -> None:
    """The built-in texts take the short path (a new one that does not is slower, not wrong)."""
    renderer = Renderer(catalog=TextCatalog(override_dir=None))
    catalog = renderer.catalog
    sources = [(renderer._html, catalog.layout("acme", "html"))]
    sources.append((renderer._plain, catalog.layout("acme", "txt")))
    for message_type in MESSAGE_TYPES:
        for name, source in catalog.texts("acme", lang, message_type).items():
            if name in MESSAGE_FIELDS and "{" in source.text:
                sources.append((renderer._plain, source))
    for env, source in sources:
        compiled = renderer._compiled_for(env, source, "t")
        assert compiled.plan is not None, source.text
