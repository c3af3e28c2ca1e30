#!/usr/bin/env python3
"""Set up and run tidings from a fresh checkout with nothing but Python 3.11+.

    python3 dev.py run    # set up, then run the main job on the embedded database
    python3 dev.py test   # set up, then lint, type-check and run the whole test suite
    python3 dev.py schema # regenerate tidings/eventstore/schema.sql from the migrations

Setting up creates .venv/ inside the checkout and installs tidings into it
(again only when pyproject.toml changed).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".tidings-installed"


def sh(*args: str | Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], check=check, text=True, **kwargs)


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may meet an older Python
        sys.exit(f"tidings needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(BIN / "python", "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test,dev,bench]")
    STAMP.write_text(wanted)


def run_main_job() -> None:
    """Take the sample events through the projector and the worker pool."""
    tidings = [BIN / "tidings", "--config", ROOT / "examples" / "demo.yaml"]
    sh(*tidings, "migrate")
    appended = sh(
        *tidings, "events", "append", ROOT / "examples" / "events.jsonl", "--format", "jsonl",
        capture_output=True,
    )  # fmt: skip
    positions = [json.loads(line)["position"] for line in appended.stdout.splitlines()]
    print(f"appended {len(positions)} sample events from examples/events.jsonl", flush=True)
    since = str(min(positions) - 1)
    sh(*tidings, "replay", "--format", "table", "--after-position", since)
    print("projecting them into notifications and sending those:", flush=True)
    sh(*tidings, "run", "--until-idle")
    print("the log they left (notification events and the source aggregates' sent events):")
    sh(
        *tidings, "replay", "--format", "table", "--after-position", since,
        "--event-type", "notification.*", "--event-type", "*.sent",
    )  # fmt: skip
    print("checking the whole log against the rules it must hold:", flush=True)
    sh(*tidings, "audit", "verify")


def run_tests() -> int:
    sh(BIN / "ruff", "check", ROOT)
    sh(BIN / "ruff", "format", "--check", ROOT)
    sh(BIN / "mypy")
    sh(BIN / "lint-imports")
    return sh(BIN / "pytest", *sys.argv[2:], check=False).returncode


def main() -> None:
    os.chdir(ROOT)
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in ("run", "test", "setup", "schema"):
        sys.exit(__doc__)
    setup()
    try:
        if command == "run":
            run_main_job()
        elif command == "test":
            sys.exit(run_tests())
        elif command == "schema":
            sh(BIN / "python", "-m", "tidings.eventstore.schema", *sys.argv[2:])
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode or 1)


if __name__ == "__main__":
    main()
