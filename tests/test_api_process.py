"""`tidings apikeys` and `tidings serve` as operators run them (subprocesses), and
the in-database door from a plain libpq session (psql)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.api_helpers import EXPORT_READY_TEXTS
from tests.cli import clean_env, tidings
from tests.ops_helpers import free_port, running, serving, wait_for
from tests.worker_helpers import CRYPTO, KEY
from tidings.config import Settings
from tidings.eventstore import Database, EventQuery, NewEvent
from tidings.notification.codes import CodeCipher
from tidings.projections import Projector, default_projections


def env_for(conninfo: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    templates = tmp_path / "templates" / "acme"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "texts.en.yaml").write_text(EXPORT_READY_TEXTS)
    return clean_env(
        TIDINGS_DATABASE_URL=conninfo,
        TIDINGS_CHANNELS_FILESYSTEM_OUTBOX_DIR=str(tmp_path / "outbox"),
        TIDINGS_TEMPLATES_DIR=str(tmp_path / "templates"),
        TIDINGS_CRYPTO_KEYS=f"k1={KEY}",
        TIDINGS_CRYPTO_ACTIVE_KEY="k1",
        **extra,
    )


def test_apikeys_create_list_revoke_and_the_log_has_no_key(conninfo: str, tmp_path: Path) -> None:
    env = env_for(conninfo, tmp_path)
    made = tidings("apikeys", "create", "--instance", "acme", "--name", "shop", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    assert key.startswith("tdk_") and len(key) > 40 and " " not in key
    assert key not in made.stderr
    as_json = tidings(
        "apikeys", "create", "--instance", "acme", "--scope", "notifications:read",
        "--format", "json", env=env,
    )  # fmt: skip
    second = json.loads(as_json.stdout)
    assert set(second) == {"key", "id"} and second["key"].startswith("tdk_")
    bad = tidings("apikeys", "create", "--instance", "acme", "--scope", "everything", env=env)
    assert bad.returncode == 1 and "unknown scopes everything" in bad.stderr

    listed = tidings("apikeys", "list", "--format", "jsonl", env=env)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["scopes"]) for r in rows] == [
        ("shop", ["events:write", "events:read", "notifications:write", "notifications:read"]),
        ("", ["notifications:read"]),
    ]
    assert all(r["created_by"].startswith("tidings-cli:") for r in rows)

    revoked = tidings("apikeys", "revoke", "--instance", "acme", second["id"], env=env)
    assert revoked.returncode == 0, revoked.stderr
    twice = tidings("apikeys", "revoke", "--instance", "acme", second["id"], env=env)
    assert twice.returncode == 1 and "already revoked" in twice.stderr
    elsewhere = tidings("apikeys", "revoke", "--instance", "globex", second["id"], env=env)
    assert elsewhere.returncode == 1 and "no API key" in elsewhere.stderr

    log = tidings("replay", "--format", "jsonl", env=env)
    events = [json.loads(line) for line in log.stdout.splitlines()]
    assert [e["event_type"] for e in events] == ["apikey.created"] * 2 + ["apikey.revoked"]
    assert key not in log.stdout and second["key"] not in log.stdout
    assert events[0]["payload"]["key_hash"].startswith("sha256:")
    assert events[0]["payload"]["scopes"] == rows[0]["scopes"]


async def test_a_newcomer_sends_a_notification_over_http_and_sees_it_sent(
    conninfo: str, tmp_path: Path
) -> None:
    env = env_for(conninfo, tmp_path)
    key = tidings("apikeys", "create", "--instance", "acme", env=env).stdout.splitlines()[-1]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["serve", "--addr", f"127.0.0.1:{port}"], env, tmp_path / "serve") as served:
        await serving(base, served)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            auth = {"Authorization": f"Bearer {key}"}
            answer = await http.post(
                "/v1/notifications",
                headers={**auth, "Idempotency-Key": "export-42"},
                json={
                    "recipient": {"email": "ada@example.com", "name": "Ada"},
                    "message_type": "ExportReady",
                    "channel": "email",
                    "data": {"export_name": "Q3", "export_url": "https://example.com/e/42"},
                },
            )
            assert answer.status_code == 202, answer.text
            nid = answer.json()["id"]
            sent = tidings("run", "--until-idle", env=env)
            assert sent.returncode == 0, sent.stderr
            assert f"acme notification {nid}: sent on attempt 1 via filesystem" in sent.stdout
            view = (await http.get(f"/v1/notifications/{nid}", headers=auth)).json()
            assert view["state"] == "sent"
            assert (await http.get("/openapi.json")).json()["info"]["title"] == "tidings"
            assert (await http.get("/docs")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            assert "tidings_database_up 1.0" in (await http.get("/metrics")).text
        assert served.stop() == 0, served.stderr()
    (message,) = (tmp_path / "outbox").rglob("*.eml")
    assert "https://example.com/e/42" in message.read_text()
    assert key not in served.stderr()


async def test_sigterm_answers_the_request_in_flight_then_exits_0(
    conninfo: str, tmp_path: Path
) -> None:
    env = env_for(conninfo, tmp_path)
    key = tidings("apikeys", "create", "--instance", "acme", env=env).stdout.splitlines()[-1]
    port = free_port()
    with running(["serve", "--addr", f"127.0.0.1:{port}"], env, tmp_path / "serve") as served:
        await serving(f"http://127.0.0.1:{port}", served)
        body = json.dumps({
            "events": [{"aggregate_type": "user", "aggregate_id": "user-ada",
                        "event_type": "user.human.added", "payload": {"username": "ada"}}]
        }).encode()  # fmt: skip
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        await writer.drain()
        served.proc.send_signal(15)  # SIGTERM while the request is in flight

        async def stopped_accepting() -> bool:
            try:
                _, probe = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            probe.close()
            return False

        deadline = asyncio.get_running_loop().time() + 10
        while not await stopped_accepting():
            assert asyncio.get_running_loop().time() < deadline, "still accepting after SIGTERM"
            await asyncio.sleep(0.05)
        writer.write(body[10:])
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201 "), head
        writer.close()
        assert served.proc.wait(timeout=20) == 0, served.stderr()
    assert "stopped: the requests in flight were answered" in served.stderr()


def test_an_address_in_use_names_the_setting(conninfo: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tidings("serve", "--addr", f"127.0.0.1:{port}", env=env_for(conninfo, tmp_path))
    assert result.returncode == 1
    assert f"cannot serve the API on 127.0.0.1:{port}" in result.stderr
    assert "--addr or api.addr (TIDINGS_API_ADDR)" in result.stderr


# --- the in-database door -----------------------------------------------------------


def psql(conninfo: str, script: str) -> subprocess.CompletedProcess[str]:
    from pgserver._commands import POSTGRES_BIN_PATH

    return subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-q", "-d", conninfo],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def outbox_event(aggregate_id: str, code: dict[str, str]) -> str:
    event = {
        "instance_id": "acme",
        "aggregate_type": "user",
        "aggregate_id": aggregate_id,
        "event_type": "user.human.email.code.added",
        "payload": {"code": code, "expiry": "10m"},
    }
    return json.dumps([event]).replace("'", "''")


async def test_the_sql_door_commits_with_the_platform_and_rolls_back_with_it(
    conninfo: str, db: Database
) -> None:
    code = CodeCipher.from_settings(CRYPTO).encrypt("424242").model_dump(mode="json")
    created = psql(conninfo, "CREATE TABLE accounts (id text PRIMARY KEY, email text);")
    assert created.returncode == 0, created.stderr
    committed = psql(
        conninfo,
        "BEGIN;\n"
        "INSERT INTO accounts VALUES ('user-ada', 'ada@example.com');\n"
        f"SELECT out_sequence FROM tidings.append_events('{outbox_event('user-ada', code)}');\n"
        "COMMIT;\n",
    )
    assert committed.returncode == 0, committed.stderr
    rolled_back = psql(
        conninfo,
        "BEGIN;\n"
        "INSERT INTO accounts VALUES ('user-bob', 'bob@example.com');\n"
        f"SELECT out_sequence FROM tidings.append_events('{outbox_event('user-bob', code)}');\n"
        "ROLLBACK;\n",
    )
    assert rolled_back.returncode == 0, rolled_back.stderr
    refused = psql(
        conninfo,
        "SELECT * FROM tidings.append_events("
        '\'[{"instance_id": "acme", "aggregate_type": "notification", '
        '"aggregate_id": "n", "event_type": "notification.sent"}]\');',
    )
    assert refused.returncode != 0
    assert "event 0: notification.sent on a notification aggregate" in refused.stderr
    plain = psql(
        conninfo,
        f"SELECT * FROM tidings.append_events('{outbox_event('user-eve', {'plain': '1'})}');",
    )
    assert plain.returncode != 0 and "payload.code must be encrypted" in plain.stderr

    events = await db.store.query(EventQuery(aggregate_types=("user",)))
    assert [(e.aggregate_id, e.sequence) for e in events] == [("user-ada", 1)]
    settings = Settings(crypto=CRYPTO)
    await Projector(
        db=db, projections=default_projections(db, settings), settings=settings.projections
    ).catch_up()
    requested = await db.store.query(EventQuery(event_types=("notification.requested",)))
    assert [r.payload["request"]["user_id"] for r in requested] == ["user-ada"]


GOOD = (  # one element the door takes
    '{"instance_id": "a", "aggregate_type": "user", "aggregate_id": "u", '
    '"event_type": "user.removed"}'
)


@pytest.mark.parametrize(
    ("events", "error"),
    [
        ("{}", "expects a non-empty JSON array"),
        ("[]", "expects a non-empty JSON array"),
        ('[{"instance_id": "acme"}]', "event 0: aggregate_type must be a non-empty string"),
        (
            '[{"instance_id": "a", "aggregate_type": "user", "aggregate_id": "u", '
            '"event_type": "user.removed", "colour": 1}]',
            "event 0: unknown field colour",
        ),
        ("[1]", "event 0: expected a JSON object"),
        (  # the first wrong element, and in it the first check that fails
            f'[{GOOD}, {{"instance_id": "", "aggregate_type": "user", "colour": 1}}]',
            "event 1: instance_id must be a non-empty string",
        ),
        (f'[{GOOD}, {GOOD[:-1]}, "zz": 1, "yy": 2}}]', "event 1: unknown field yy"),
        (f'[{GOOD[:-1]}, "payload": [1]}}]', "event 0: payload must be a JSON object"),
        (f'[{GOOD[:-1]}, "payload": null}}]', "event 0: payload must be a JSON object"),
        (f'[{GOOD[:-1]}, "expected_sequence": -1}}]', "event 0: expected_sequence must be"),
        (f'[{GOOD[:-1]}, "expected_sequence": "2"}}]', "event 0: expected_sequence must be"),
        (
            f"[{GOOD}, {GOOD.replace('user.removed', 'session.added')}]",
            "event 1: session.added on a user aggregate",
        ),
        # Each also fails the door's one-pass check, which sends the batch to
        # these named checks (a value in an array is not a string, a type
        # without its dot is no user.* type, true is no number).
        (
            GOOD.replace('"a"', '["a"]').join("[]"),
            "event 0: instance_id must be a non-empty string",
        ),
        (GOOD.replace("user.removed", "user").join("[]"), "event 0: user on a user aggregate"),
        (
            GOOD.replace('"user",', '"session",').join("[]"),
            "event 0: user.removed on a session aggregate",
        ),
        (f'[{GOOD[:-1]}, "expected_sequence": true}}]', "event 0: expected_sequence must be"),
        (
            f'[{GOOD[:-1]}, "payload": {{"code": {{"plain": null}}}}}}]',
            "event 0: payload.code must be encrypted",
        ),
    ],
)
def test_the_sql_door_names_what_is_wrong(conninfo: str, events: str, error: str) -> None:
    result = psql(conninfo, f"SELECT * FROM tidings.append_events('{events}');")
    assert result.returncode != 0 and error in result.stderr


async def test_the_sql_door_appends_a_batch_in_its_order(conninfo: str, db: Database) -> None:
    """Sequences per aggregate and positions follow the batch; defaults fill what is left out."""
    await db.store.append([NewEvent(instance_id="a", aggregate_type="user", aggregate_id="u1",
                                    event_type="user.human.added", payload={})])  # fmt: skip
    batch = [
        {"instance_id": "a", "aggregate_type": "user", "aggregate_id": "u1",
         "event_type": "user.human.phone.changed", "payload": {"n": 0}, "owner": "org"},
        {"instance_id": "a", "aggregate_type": "user", "aggregate_id": "u2",
         "event_type": "user.human.added", "expected_sequence": 0},
        {"instance_id": "a", "aggregate_type": "user", "aggregate_id": "u1",
         "event_type": "user.human.phone.changed", "payload": {"n": 1}, "creator": "platform",
         "expected_sequence": 2},
        {"instance_id": "b", "aggregate_type": "session", "aggregate_id": "u1",
         "event_type": "session.added", "expected_sequence": None},
    ]  # fmt: skip
    result = psql(
        conninfo,
        "SELECT out_sequence FROM tidings.append_events('" + json.dumps(batch) + "');",
    )
    assert result.returncode == 0, result.stderr
    stored = await db.store.query(EventQuery(position_after=0))
    assert [(e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence) for e in stored] == [
        ("a", "user", "u1", 1), ("a", "user", "u1", 2), ("a", "user", "u2", 1),
        ("a", "user", "u1", 3), ("b", "session", "u1", 1),
    ]  # fmt: skip
    door = stored[1:]
    assert [e.payload for e in door] == [{"n": 0}, {}, {"n": 1}, {}]
    assert [e.owner for e in door] == ["org", "", "", ""]
    assert door[2].creator == "platform" and door[0].creator != ""  # the database user
    assert len({e.created_at for e in door}) == 1  # one transaction


async def test_run_serve_runs_the_api_next_to_the_workers(conninfo: str, tmp_path: Path) -> None:
    port = free_port()
    env = env_for(conninfo, tmp_path, TIDINGS_API_ADDR=f"127.0.0.1:{port}")
    key = tidings("apikeys", "create", "--instance", "acme", env=env).stdout.splitlines()[-1]
    base = f"http://127.0.0.1:{port}"
    with running(["run", "--serve"], env, tmp_path / "run") as run:
        await serving(base, run)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            auth = {"Authorization": f"Bearer {key}"}
            answer = await http.post(
                "/v1/notifications",
                headers={**auth, "Idempotency-Key": "one-process"},
                json={"recipient": {"email": "ada@example.com"}, "message_type": "PasswordChange",
                      "channel": "email"},
            )  # fmt: skip
            assert answer.status_code == 202, answer.text
            nid = answer.json()["id"]

            async def sent() -> bool:
                view = await http.get(f"/v1/notifications/{nid}", headers=auth)
                return bool(view.json()["state"] == "sent")

            await wait_for(sent, "the workers of the same process to send it")
        assert run.stop() == 0, run.stderr()
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 1


@pytest.mark.parametrize("low", [False, True])
def test_serve_raises_its_open_files_limit_and_says_when_the_hard_one_is_too_low(
    low: bool,
) -> None:
    """Each open stream holds a socket: serve lifts the soft limit to the hard one."""
    import resource
    import sys

    hard = 512 if low else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    warned = hard < 1200  # api.max_concurrency 1000 plus the margin

    script = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard}))\n"
        "from tidings.cli.serve import _open_files_for\n"
        "_open_files_for(1000)\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert int(done.stdout) == hard
    assert ("open-files limit 512 is below api.max_concurrency 1000" in done.stderr) is warned
