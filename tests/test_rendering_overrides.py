"""Overrides are looked up once per message, and what was read of them is kept
until a file or folder changes: the next message of the same running composer
sees an override added, changed or removed, whichever it is."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from tests.render_helpers import sample_request, sample_user
from tidings.config import CryptoSettings, Settings, TemplateSettings
from tidings.notification.channels.base import EmailContent
from tidings.notification.codes import generate_key
from tidings.notification.compose import MessageComposer
from tidings.notification.errors import RenderError
from tidings.notification.setup import build_composer

HOUR = 3600
BUILT_IN = Path(__file__).parents[1] / "tidings/notification/templates/texts.en.yaml"
# A language tidings does not ship has every field of the type.
FRENCH = {**yaml.safe_load(BUILT_IN.read_text())["PasswordReset"], "subject": "nouveau"}


def composer(override_dir: Path) -> MessageComposer:
    settings = Settings(
        crypto=CryptoSettings(keys={"k1": generate_key()}, active_key="k1"),
        templates=TemplateSettings(dir=override_dir, product_name="Acme Login"),
    )
    return build_composer(settings)


def email(c: MessageComposer, language: str = "en") -> EmailContent:
    message = c.compose(
        notification_id="n-1",
        instance_id="acme",
        attempt=1,
        request=sample_request(),
        user=sample_user(preferred_language=language),
    )
    assert isinstance(message.content, EmailContent)
    return message.content


def settle(*paths: Path, hours_ago: int) -> None:
    """Date files and folders back, as if written long ago (what the catalog keeps)."""
    stamp = time.time() - hours_ago * HOUR
    for path in paths:
        os.utime(path, (stamp, stamp))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_changed_text_or_layout_is_read_again(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    texts = write(folder / "texts.en.yaml", "PasswordReset:\n  subject: first\n")
    layout = write(folder / "layout.txt", "one {{ subject }}\n")
    settle(texts, layout, folder, hours_ago=3)
    c = composer(tmp_path)
    assert (email(c).subject, email(c).text) == ("first", "one first")
    write(texts, "PasswordReset:\n  subject: second\n")
    write(layout, "two {{ subject }}\n")
    settle(texts, layout, folder, hours_ago=2)  # changed, and settled again
    assert (email(c).subject, email(c).text) == ("second", "two second")


def test_an_added_or_removed_override_is_seen(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    folder.mkdir()
    settle(folder, hours_ago=3)
    c = composer(tmp_path)
    assert email(c, "fr").subject == "Acme Login: reset your password"  # no French: English
    french = write(folder / "texts.fr.yaml", yaml.safe_dump({"PasswordReset": FRENCH}))
    layout = write(folder / "layout.txt", "added {{ subject }}\n")
    settle(french, layout, folder, hours_ago=2)
    assert email(c, "fr").subject == "nouveau"
    assert email(c).text == "added Acme Login: reset your password"
    layout.unlink()
    settle(folder, hours_ago=1)
    assert email(c).text.startswith("Hello Ada Lovelace,")  # the built-in layout again


def test_a_change_within_the_same_tick_is_not_missed(tmp_path: Path) -> None:
    """A file written twice within one tick of the file system's clock keeps its mtime:
    what was read of a recent file is not kept, so the second write is seen too."""
    texts = write(tmp_path / "acme" / "texts.en.yaml", "PasswordReset:\n  subject: first\n")
    c = composer(tmp_path)
    assert email(c).subject == "first"
    before = os.stat(texts).st_mtime_ns
    write(texts, "PasswordReset:\n  subject: again\n")
    os.utime(texts, ns=(before, before))  # the same mtime, as within one tick
    assert email(c).subject == "again"


@pytest.mark.parametrize("inside", [True, False])
def test_a_linked_folder_counts_only_inside_the_templates_dir(tmp_path: Path, inside: bool) -> None:
    templates = tmp_path / "templates"
    target = (templates if inside else tmp_path) / "elsewhere"
    write(target / "texts.en.yaml", "PasswordReset:\n  subject: through the link\n")
    templates.mkdir(exist_ok=True)
    (templates / "acme").symlink_to(target)
    c = composer(templates)
    if inside:
        assert email(c).subject == "through the link"
        return
    with pytest.raises(RenderError, match=r"leads outside templates\.dir"):
        email(c)
