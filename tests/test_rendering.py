"""Texts, layouts and URLs: every message type in both languages, safely."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.render_helpers import sample_request, sample_user
from tidings.config import CryptoSettings, Settings, TemplateSettings
from tidings.notification.channels.base import EmailContent, SMSContent
from tidings.notification.codes import CodeCipher, generate_key
from tidings.notification.compose import MessageComposer
from tidings.notification.errors import CodeError, RecipientError, RenderError
from tidings.notification.messages import MESSAGE_TYPES
from tidings.notification.setup import build_composer

KEY = generate_key()


def composer(override_dir: Path | None = None) -> MessageComposer:
    settings = Settings(
        crypto=CryptoSettings(keys={"k1": KEY}, active_key="k1"),
        templates=TemplateSettings(dir=override_dir, product_name="Acme Login"),
    )
    return build_composer(settings)


def cipher() -> CodeCipher:
    return CodeCipher.from_settings(CryptoSettings(keys={"k1": KEY}, active_key="k1"))


def compose(c: MessageComposer, request: Any, user: Any = None) -> Any:
    return c.compose(
        notification_id="n-1",
        instance_id="acme",
        attempt=1,
        request=request,
        user=user or sample_user(),
    )


CODE_SHOWN = {"InitCode", "VerifyEmail", "PasswordReset", "VerifyPhone", "InviteUser",
              "VerifySMSOTP", "VerifyEmailOTP"}  # fmt: skip


@pytest.mark.parametrize("lang", ["en", "de"])
@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_every_message_type_renders_in_both_languages(message_type: str, lang: str) -> None:
    c = composer()
    code = cipher().encrypt("K7Q2XZ").model_dump()
    user = sample_user(preferred_language=lang)
    email = compose(c, sample_request(message_type, code=code), user).content
    assert isinstance(email, EmailContent)
    assert "Acme Login" in email.subject
    assert "Ada Lovelace" in email.text and "Ada Lovelace" in email.html
    assert email.html.lstrip().startswith("<!DOCTYPE html>")
    assert email.to_address == "ada@example.com"
    assert "https://login.example.com/reset?user=user-ada&amp;code=K7Q2XZ" in email.html
    if message_type in CODE_SHOWN:
        assert "K7Q2XZ" in email.text
    if lang == "de":
        assert "Hallo" in email.text
    sms = compose(c, sample_request(message_type, code=code, channel="sms"), user).content
    assert isinstance(sms, SMSContent)
    assert sms.to_number == "+41790000001"
    assert sms.text and "{{" not in sms.text


def test_language_choice_and_fallback() -> None:
    c = composer()

    def subject(lang: str) -> str:
        return compose(c, sample_request(), sample_user(preferred_language=lang)).content.subject  # type: ignore[no-any-return]

    assert subject("de-CH").endswith("Passwort zurücksetzen")
    assert subject("DE").endswith("Passwort zurücksetzen")
    assert subject("fr").endswith("reset your password")
    assert subject("").endswith("reset your password")


def test_url_values_are_percent_encoded_and_go_style_works() -> None:
    c = composer()
    code = cipher().encrypt("a b&c=d/é").model_dump()
    email = compose(c, sample_request(code=code)).content
    assert "code=a%20b%26c%3Dd%2F%C3%A9" in email.text


def test_unknown_url_variable_is_a_render_error() -> None:
    with pytest.raises(RenderError, match=r"url_template.*Nonsense"):
        compose(composer(), sample_request(url_template="https://x/{{.Nonsense}}"))


def test_recipients() -> None:
    c = composer()
    unverified = sample_user(last_email="new@example.com", verified_email=None)
    with pytest.raises(RecipientError, match=r"user-ada of instance acme has no verified email"):
        compose(c, sample_request("PasswordReset"), unverified)
    to = compose(c, sample_request("VerifyEmail", unverified_channel=True), unverified).content
    assert to.to_address == "new@example.com"
    nobody = sample_user(last_email=None, verified_email=None)
    with pytest.raises(RecipientError, match=r"has no email address for VerifyEmail"):
        compose(c, sample_request("VerifyEmail", unverified_channel=True), nobody)
    bad_phone = sample_user(verified_phone="0790000001", last_phone="0790000001")
    with pytest.raises(RecipientError, match=r"E\.164"):
        compose(c, sample_request(channel="sms"), bad_phone)
    spaced = sample_user(verified_phone="+41 79 000 00 01")
    assert compose(c, sample_request(channel="sms"), spaced).content.to_number == "+41790000001"


def test_codes_must_decrypt() -> None:
    code = cipher().encrypt("123456").model_dump()
    tampered = {**code, "value": code["value"][:-4] + "AAAA"}
    with pytest.raises(CodeError):
        compose(composer(), sample_request(code=tampered))
    no_keys = build_composer(Settings())
    with pytest.raises(CodeError, match=r"no crypto\.keys"):
        compose(no_keys, sample_request(code=code))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_instance_and_default_overrides(tmp_path: Path) -> None:
    write(tmp_path / "_default" / "texts.en.yaml", "PasswordReset:\n  footer: Default footer\n")
    write(
        tmp_path / "acme" / "texts.en.yaml",
        "PasswordReset:\n  subject: 'Acme: new password, {{ user.first_name }}'\n",
    )
    write(tmp_path / "acme" / "layout.txt", "ACME {{ greeting }} | {{ footer }}\n")
    c = composer(tmp_path)
    email = compose(c, sample_request()).content
    assert email.subject == "Acme: new password, Ada"
    assert email.text.strip() == "ACME Hello Ada Lovelace, | Default footer"
    other = c.compose(
        notification_id="n", instance_id="globex", attempt=1,
        request=sample_request(), user=sample_user(instance_id="globex"),
    )  # fmt: skip
    assert isinstance(other.content, EmailContent)
    assert other.content.subject == "Acme Login: reset your password"
    assert "Default footer" in other.content.text


def test_override_language_the_product_does_not_ship(tmp_path: Path) -> None:
    import yaml

    en = yaml.safe_load(
        (Path(__file__).parents[1] / "tidings/notification/templates/texts.en.yaml").read_text()
    )
    fr = {t: {**fields, "greeting": "Bonjour {{ user.first_name }},"} for t, fields in en.items()}
    write(tmp_path / "acme" / "texts.fr.yaml", yaml.safe_dump(fr, allow_unicode=True))
    email = compose(composer(tmp_path), sample_request(), sample_user(preferred_language="fr"))
    assert email.content.text.startswith("Bonjour Ada,")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ user.__class__.__mro__ }}", "texts.en.yaml:3"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "texts.en.yaml:3"),
        ("{{ code.__class__.__init__.__globals__ }}", "texts.en.yaml:3"),
        ("{{ nothing_here }}", "texts.en.yaml:3"),
        ("{{ user.first_name | nosuchfilter }}", "texts.en.yaml:3"),
        ("{% for %}", "texts.en.yaml:3"),
    ],
)
def test_unsafe_or_broken_text_is_a_render_error_naming_file_and_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    write(
        tmp_path / "acme" / "texts.en.yaml",
        f'PasswordReset:\n  title: fine\n  body: "{text}"\n',
    )
    with pytest.raises(RenderError) as caught:
        compose(composer(tmp_path), sample_request())
    assert expected in str(caught.value)
    assert caught.value.line == 3
    assert "PasswordReset.body" in str(caught.value)


def test_broken_layout_names_its_line(tmp_path: Path) -> None:
    layout = write(
        tmp_path / "acme" / "layout.html",
        "<html>\n<body>\n{{ title }}\n{{ body }}\n\n\n<p>{{ unknown_variable }}</p>\n</body>\n",
    )
    with pytest.raises(RenderError) as caught:
        compose(composer(tmp_path), sample_request())
    assert f"{layout}:7" in str(caught.value)
    assert "unknown_variable" in str(caught.value)
    write(tmp_path / "acme" / "layout.html", "<html>\n{% if %}\n")
    with pytest.raises(RenderError, match=r"layout.html:2: .*syntax error"):
        compose(composer(tmp_path), sample_request())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("PasswordReset: [unclosed\n", "not valid YAML"),
        ("PasswordRest:\n  title: typo\n", "unknown message type 'PasswordRest'"),
        ("PasswordReset:\n  titel: typo\n", "texts.en.yaml:2: unknown field PasswordReset.titel"),
        ("PasswordReset:\n  title: [a, b]\n", "must be text"),
    ],
)
def test_malformed_override_files(tmp_path: Path, content: str, expected: str) -> None:
    write(tmp_path / "acme" / "texts.en.yaml", content)
    with pytest.raises(RenderError, match=expected.replace("[", r"\[")):
        compose(composer(tmp_path), sample_request())


def test_html_escapes_user_data() -> None:
    user = sample_user(display_name="<script>alert(1)</script>")
    email = compose(composer(), sample_request(), user).content
    assert "<script>" not in email.html
    assert "&lt;script&gt;" in email.html


def test_the_code_appears_only_in_the_rendered_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    code = cipher().encrypt("SECRET42").model_dump()
    message = compose(composer(), sample_request("VerifyEmailOTP", code=code))
    assert "SECRET42" in message.content.text
    assert "SECRET42" not in message.describe()
    assert "SECRET42" not in repr(message.notification_id)
    assert "SECRET42" not in caplog.text


@pytest.mark.parametrize(
    "text",
    [
        "Reset password",
        "two lines\nand a final newline\n",
        "two final newlines\n\n",
        "windows\r\nline ends\r\n",
        "a {{ product }} tag",
        "{% if true %}block{% endif %}\n",
        "a {# comment #} here",
        "<b>html & co</b>",
    ],
)
def test_a_text_renders_as_jinja_renders_it_with_or_without_tags(text: str) -> None:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from tidings.notification.rendering import Renderer, Source, TextCatalog

    renderer = Renderer(catalog=TextCatalog(override_dir=None))
    for autoescape in (False, True):
        env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
        expected = env.from_string(text).render(product="Tidings")
        mine = renderer._html if autoescape else renderer._plain
        assert renderer._render(mine, Source(text, "t", 1), {"product": "Tidings"}, "x") == expected
