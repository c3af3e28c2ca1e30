"""The command line, run for real against a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env, tidings


@pytest.fixture
def env(conninfo: str) -> dict[str, str]:
    return clean_env(TIDINGS_DATABASE_URL=conninfo)


def line(**fields: Any) -> str:
    base: dict[str, Any] = {
        "instance_id": "acme",
        "aggregate_type": "user",
        "aggregate_id": "u1",
        "event_type": "user.human.added",
        "payload": {},
    }
    base.update(fields)
    return json.dumps(base)


def replayed(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = tidings("replay", "--format", "jsonl", *args, env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(row) for row in result.stdout.splitlines()]


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ([], ["migrate", "events", "replay", "config"]),
        (["migrate"], ["--to"]),
        (["events"], ["append"]),
        (["events", "append"], ["expected_sequence", "--format"]),
        (["replay"], ["--instance", "--event-type", "--since", "--after-position", "--format"]),
        (["config"], ["show"]),
        (["config", "show"], ["secrets masked"]),
    ],
)
def test_every_command_has_help(command: list[str], mentions: list[str]) -> None:
    result = tidings(*command, "--help", env=clean_env())
    assert result.returncode == 0, result.stderr
    for word in mentions:
        assert word in result.stdout


def test_migrate_twice(empty_conninfo: str) -> None:
    env = clean_env(TIDINGS_DATABASE_URL=empty_conninfo)
    first = tidings("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_events" in first.stdout
    second = tidings("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout


def test_commands_on_an_unmigrated_database_say_what_to_do(empty_conninfo: str) -> None:
    result = tidings("replay", env=clean_env(TIDINGS_DATABASE_URL=empty_conninfo))
    assert result.returncode == 1
    assert "run `tidings migrate`" in result.stderr
    assert "Traceback" not in result.stderr


def test_append_prints_positions_and_sequences(env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(
        "\n".join(
            [
                line(expected_sequence=0),
                "",
                line(event_type="user.human.email.changed", payload={"email": "a@b.c"}),
                line(aggregate_id="u2"),
            ]
        )
    )
    result = tidings("events", "append", source, "--format", "jsonl", env=env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(r) for r in result.stdout.splitlines()]
    assert [(r["line"], r["sequence"], r["aggregate_id"]) for r in rows] == [
        (1, 1, "u1"),
        (3, 2, "u1"),
        (4, 1, "u2"),
    ]
    assert rows[0]["position"] < rows[1]["position"] < rows[2]["position"]

    text = tidings("events", "append", "-", env=env, stdin=line(aggregate_id="u3"))
    assert text.returncode == 0, text.stderr
    assert "sequence 1" in text.stdout and "position " in text.stdout


def test_malformed_line_is_named_and_nothing_is_stored(env: dict[str, str]) -> None:
    stdin = "\n".join([line(), "{not json", line(aggregate_id=""), line(payload=[1])])
    result = tidings("events", "append", "-", env=env, stdin=stdin)
    assert result.returncode == 1
    assert "stdin line 2: not valid JSON" in result.stderr
    assert "stdin line 3: aggregate_id" in result.stderr
    assert "stdin line 4: payload" in result.stderr
    assert "nothing was appended" in result.stderr
    assert replayed(env) == []


def test_conflict_names_the_line_and_stores_nothing(env: dict[str, str]) -> None:
    assert tidings("events", "append", "-", env=env, stdin=line()).returncode == 0
    stdin = "\n".join(
        [line(aggregate_id="u2"), line(event_type="user.removed", expected_sequence=0)]
    )
    result = tidings("events", "append", "-", env=env, stdin=stdin)
    assert result.returncode == 1
    assert "stdin line 2:" in result.stderr
    assert "expected sequence 0, the aggregate is at 1" in result.stderr
    assert [r["aggregate_id"] for r in replayed(env)] == ["u1"]


def test_replay_filters_and_formats(env: dict[str, str]) -> None:
    stdin = "\n".join(
        [
            line(),
            line(event_type="user.human.password.code.added", payload={"expiry": "10m"}),
            line(instance_id="globex", aggregate_id="g1"),
            line(
                aggregate_type="notification",
                aggregate_id="n1",
                event_type="notification.requested",
            ),
            line(aggregate_type="notification", aggregate_id="n1", event_type="notification.sent"),
        ]
    )
    appended = tidings("events", "append", "--allow-internal", "-", env=env, stdin=stdin)
    assert appended.returncode == 0, appended.stderr

    everything = replayed(env)
    assert len(everything) == 5
    first = everything[0]
    assert set(first) == {
        "instance_id", "aggregate_type", "aggregate_id", "event_type", "payload",
        "owner", "creator", "sequence", "position", "created_at",
    }  # fmt: skip
    assert [r["position"] for r in everything] == sorted(r["position"] for r in everything)

    def ids(*args: str) -> list[tuple[str, str]]:
        return [(r["aggregate_id"], r["event_type"]) for r in replayed(env, *args)]

    assert ids("--instance", "globex") == [("g1", "user.human.added")]
    assert ids("--aggregate-type", "notification", "--event-type", "notification.sent") == [
        ("n1", "notification.sent")
    ]
    assert [e for _, e in ids("--event-type", "notification.*")] == [
        "notification.requested",
        "notification.sent",
    ]
    assert len(ids("--event-type", "user.*", "--event-type", "notification.sent")) == 4
    assert ids("--aggregate-id", "u1", "--after-position", str(first["position"])) == [
        ("u1", "user.human.password.code.added")
    ]
    assert len(ids("--since", "1h")) == 5
    assert ids("--until", "1h") == []
    assert ids("--since", "2999-01-01T00:00:00") == []
    assert len(ids("--limit", "2")) == 2

    table = tidings("replay", "--format", "table", "--instance", "acme", env=env)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0].split() == [
        "POSITION", "CREATED_AT", "INSTANCE", "AGGREGATE", "SEQ", "EVENT_TYPE", "PAYLOAD",
    ]  # fmt: skip
    assert len(rows) == 5
    assert "user/u1" in rows[1] and "user.human.added" in rows[1]

    bad = tidings("replay", "--since", "yesterday", env=env)
    assert bad.returncode == 2
    assert "neither an ISO 8601 time nor a duration" in bad.stderr


def test_replay_output_appends_into_another_database(
    env: dict[str, str], empty_conninfo: str
) -> None:
    """`replay | events append -` copies a log: sequences carry over as expectations."""
    stdin = "\n".join([line(), line(event_type="user.removed"), line(aggregate_id="u2")])
    assert tidings("events", "append", "-", env=env, stdin=stdin).returncode == 0
    dump = tidings("replay", "--format", "jsonl", env=env).stdout

    copy_env = clean_env(TIDINGS_DATABASE_URL=empty_conninfo)
    assert tidings("migrate", env=copy_env).returncode == 0
    copied = tidings("events", "append", "-", env=copy_env, stdin=dump)
    assert copied.returncode == 0, copied.stderr
    strip = ("position", "created_at")
    original = [{k: v for k, v in r.items() if k not in strip} for r in replayed(env)]
    assert [{k: v for k, v in r.items() if k not in strip} for r in replayed(copy_env)] == original
    again = tidings("events", "append", "-", env=copy_env, stdin=dump)
    assert again.returncode == 1, "appending the same sequences twice is a conflict"


def test_config_show_masks_the_database_password(tmp_path: Path) -> None:
    env = clean_env(
        TIDINGS_DATABASE_URL="postgresql://tidings:s3cret-pw@db.internal:5432/tidings",
        TIDINGS_NOTIFICATIONS_WORKERS="4",
    )
    result = tidings("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "postgresql://tidings:***@db.internal:5432/tidings" in result.stdout
    assert "workers: 4" in result.stdout
    as_json = json.loads(tidings("config", "show", "--format", "json", env=env).stdout)
    assert as_json["notifications"]["max_ttl"] == "5m"


def test_config_file_option(tmp_path: Path) -> None:
    user = tmp_path / "tidings.yaml"
    user.write_text("notifications:\n  bulk_limit: 250\n")
    result = tidings("--config", user, "config", "show", "--format", "json", env=clean_env())
    assert json.loads(result.stdout)["notifications"]["bulk_limit"] == 250


def test_bad_setting_stops_every_command_with_one_line() -> None:
    env = clean_env(TIDINGS_NOTIFICATIONS_BULK_LIMIT="lots")
    result = tidings("migrate", env=env)
    assert result.returncode == 2
    (message,) = result.stderr.strip().splitlines()
    assert message.startswith("error: invalid setting notifications.bulk_limit")
    assert "TIDINGS_NOTIFICATIONS_BULK_LIMIT" in message and "'lots'" in message


def test_unreachable_database_is_reported_clearly(tmp_path: Path) -> None:
    env = clean_env(
        TIDINGS_DATABASE_URL=f"postgresql://nobody:pw@/tidings?host={tmp_path}",
        TIDINGS_DATABASE_CONNECT_TIMEOUT="1s",
    )
    result = tidings("replay", env=env)
    assert result.returncode == 1
    assert "cannot connect to the database" in result.stderr
    assert "pw" not in result.stderr.replace("password", "")
    assert "Traceback" not in result.stderr
