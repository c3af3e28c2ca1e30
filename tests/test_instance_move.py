"""Moving an instance between cells as docs/scaling.md says: notifications first."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli import clean_env, tidings
from tests.projection_helpers import code_event, user_added
from tests.worker_helpers import CRYPTO, KEY
from tidings.eventstore import Database, EventQuery
from tidings.notification.codes import CodeCipher


def cell_env(conninfo: str, outbox: Path) -> dict[str, str]:
    return clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_CRYPTO_KEYS=f"k1={KEY}",
        TIDINGS_CRYPTO_ACTIVE_KEY="k1",
        TIDINGS_CHANNELS_FILESYSTEM_OUTBOX_DIR=str(outbox),
    )


async def sent_in_the_old_cell(db: Database, conninfo: str, tmp_path: Path) -> dict[str, str]:
    """Two password codes for acme, sent by the old cell; its environment."""
    code = CodeCipher.from_settings(CRYPTO).encrypt("RESET-4821").model_dump()
    await db.store.append([user_added(), user_added("user-bob")])
    await db.store.append(
        [
            code_event("user.human.password.code.added", code=code),
            code_event("user.human.password.code.added", "user-bob", code=code),
        ]
    )
    old = cell_env(conninfo, tmp_path / "old-outbox")
    sent = tidings("run", "--until-idle", env=old)
    assert sent.returncode == 0, sent.stderr
    assert "2 notifications settled" in sent.stdout
    return old


def copy(old: dict[str, str], new: dict[str, str], aggregate_type: str, out: Path) -> None:
    replay = tidings(
        "replay", "--instance", "acme", "--aggregate-type", aggregate_type, "--keep-encrypted",
        "--format", "jsonl", "--output", out, env=old,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    appended = tidings("events", "append", out, "--format", "jsonl", "--allow-internal", env=new)
    assert appended.returncode == 0, appended.stderr


async def test_moved_instance_is_not_notified_again(
    db: Database, conninfo: str, empty_conninfo: str, tmp_path: Path
) -> None:
    old = await sent_in_the_old_cell(db, conninfo, tmp_path)
    new = cell_env(empty_conninfo, tmp_path / "new-outbox")
    assert tidings("migrate", env=new).returncode == 0
    notifications = tmp_path / "notifications.jsonl"
    sources = tmp_path / "sources.jsonl"
    copy(old, new, "notification", notifications)
    copy(old, new, "user", sources)
    again = tidings(
        "events", "append", notifications, "--format", "jsonl", "--allow-internal", env=new
    )
    assert again.returncode != 0, "a chunk that lands twice is refused"

    run = tidings("run", "--until-idle", env=new)
    assert run.returncode == 0, run.stderr
    assert "0 notifications settled" in run.stdout, run.stdout
    assert not (tmp_path / "new-outbox").exists(), "nothing was sent again"
    verify = tidings("audit", "verify", env=new)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    moved = [json.loads(line) for line in sources.read_text().splitlines()]
    original = await db.store.query(EventQuery(instance_ids=("acme",)))
    assert len(moved) + len(notifications.read_text().splitlines()) == len(original)


async def test_sources_copied_first_would_be_notified_again(
    db: Database, conninfo: str, empty_conninfo: str, tmp_path: Path
) -> None:
    """Why the order matters: copied code events look fresh (a new created_at)."""
    old = await sent_in_the_old_cell(db, conninfo, tmp_path)
    new = cell_env(empty_conninfo, tmp_path / "new-outbox")
    assert tidings("migrate", env=new).returncode == 0
    copy(old, new, "user", tmp_path / "sources.jsonl")
    run = tidings("run", "--until-idle", env=new)
    assert run.returncode == 0, run.stderr
    assert "2 notifications settled" in run.stdout, "the same codes went out a second time"
