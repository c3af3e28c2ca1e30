"""docs/settings.md is generated from defaults.yaml's comments and must not drift."""

from __future__ import annotations

from pathlib import Path

from tidings.config.reference import REGENERATE, settings_reference
from tidings.config.settings import Settings, _leaves

from .cli import clean_env, tidings

ROOT = Path(__file__).parents[1]


def test_settings_doc_is_generated_from_defaults() -> None:
    written = (ROOT / "docs/settings.md").read_text(encoding="utf-8")
    assert written == settings_reference(), (
        f"docs/settings.md differs from tidings/config/defaults.yaml: run `{REGENERATE}`"
    )


def test_every_setting_is_in_the_reference() -> None:
    reference = settings_reference()
    for _, (parts, _) in _leaves(Settings):
        path = ".".join(parts)
        assert f"| `{path}` |" in reference, f"{path} is missing from the settings reference"


def test_reference_takes_the_comment_and_variable_of_each_group() -> None:
    text = (
        "# header\n#\n# intro line\n\n"
        "alpha:\n"
        "  # Shared by two keys.\n"
        "  one: 1 # TIDINGS_ALPHA_ONE\n"
        "  two: 'a # b' # TIDINGS_ALPHA_TWO\n"
        "  # Alone.\n"
        "  three: null # TIDINGS_ALPHA_THREE\n"
        "  nested:\n"
        "    # Deeper: <dir>/x.\n"
        "    four: [1, 2] # TIDINGS_ALPHA_NESTED_FOUR\n"
    )
    reference = settings_reference(text)
    assert "### `alpha.one`, `alpha.two`\n\nShared by two keys." in reference
    assert "| `alpha.two` | `'a # b'` | `TIDINGS_ALPHA_TWO` |" in reference
    assert "### `alpha.three`\n\nAlone." in reference
    assert "| `alpha.nested.four` | `[1, 2]` | `TIDINGS_ALPHA_NESTED_FOUR` |" in reference
    assert "Deeper: \\<dir>/x." in reference
    assert "intro line" in reference and "header" not in reference


def test_config_reference_command_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "settings.md"
    result = tidings("config", "reference", "--output", str(target), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert target.read_text(encoding="utf-8") == settings_reference()
