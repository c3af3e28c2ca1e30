"""`tidings replay` for people and machines: trails, redaction, files, following the log."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli import clean_env, tidings
from tidings.eventstore import Database, EventQuery, EventStore, NewEvent
from tidings.eventstore.filters import NotificationTrail, UserTrail, compose_select
from tidings.notification.codes import CodeCipher
from tidings.notification.redaction import ENCRYPTED, redact_codes
from tidings.notification.requests import (
    NotificationRequested,
    Request,
    SourceRef,
    notification_id,
)

PLAINTEXT = "PLAIN-CODE-8n4Kq"
CIPHER = CodeCipher(keys={"k1": bytes(range(32))}, active_key="k1")


@pytest.fixture
def env(conninfo: str) -> dict[str, str]:
    return clean_env(TIDINGS_DATABASE_URL=conninfo)


def replayed(env: dict[str, str], *args: str | Path) -> list[dict[str, Any]]:
    result = tidings("replay", "--format", "jsonl", *args, env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(row) for row in result.stdout.splitlines()]


def new_code() -> dict[str, Any]:
    return CIPHER.encrypt(PLAINTEXT).model_dump()


@dataclass
class Log:
    """A small log, each event appended on its own and known by a label."""

    store: EventStore
    positions: dict[str, int] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)  # every ciphertext stored

    async def add(
        self,
        label: str,
        aggregate: str,
        event_type: str,
        payload: dict[str, Any] | None = None,
        *,
        instance: str = "acme",
    ) -> int:
        aggregate_type, aggregate_id = aggregate.split("/")
        (stored,) = await self.store.append(
            [
                NewEvent(
                    instance_id=instance,
                    aggregate_type=aggregate_type,
                    aggregate_id=aggregate_id,
                    event_type=event_type,
                    payload=payload or {},
                )
            ]
        )
        self.positions[label] = stored.position
        return stored.sequence

    async def coded(
        self, label: str, aggregate: str, event_type: str, *, instance: str = "acme", **fields: Any
    ) -> int:
        """A source event with an encrypted code."""
        code = new_code()
        self.codes.append(code["value"])
        payload = {"code": code, **fields}
        return await self.add(label, aggregate, event_type, payload, instance=instance)

    async def notification(
        self,
        label: str,
        *,
        user: str,
        source: str,
        source_label: str,
        source_sequence: int,
        sent_event_type: str,
        instance: str = "acme",
        retry: bool = False,
    ) -> str:
        """A notification for `user` from a source event: requested, maybe a retry, sent."""
        source_type, source_id = source.split("/")
        nid = notification_id(
            instance_id=instance,
            aggregate_type=source_type,
            aggregate_id=source_id,
            sequence=source_sequence,
        )
        code = new_code()
        self.codes.append(code["value"])
        request = Request(
            user_id=user,
            resource_owner="org",
            source=SourceRef(
                aggregate_type=source_type,
                aggregate_id=source_id,
                sequence=source_sequence,
                event_type="x.code.added",
                position=self.positions[source_label],
                created_at=datetime.now(UTC),
            ),
            message_type="PasswordReset",
            channel="email",
            sent_event_type=sent_event_type,
            code=code,
        )
        payload = NotificationRequested(request=request).model_dump(mode="json")
        aggregate = f"notification/{nid}"
        await self.add(f"{label}.requested", aggregate, "notification.requested", payload,
                       instance=instance)  # fmt: skip
        if retry:
            retried = {"request": payload["request"], "attempt": 1, "error": "timeout"}
            await self.add(f"{label}.retry", aggregate, "notification.retry.requested", retried,
                           instance=instance)  # fmt: skip
        await self.add(f"{label}.sent", aggregate, "notification.sent",
                       {"channel": "email", "provider_message_id": "m", "attempt": 1},
                       instance=instance)  # fmt: skip
        await self.add(f"{label}.source-sent", source, sent_event_type,
                       {"notification_id": nid, "message_type": "PasswordReset",
                        "channel": "email"}, instance=instance)  # fmt: skip
        return nid

    def labels(self, rows: list[dict[str, Any]]) -> list[str]:
        by_position = {position: label for label, position in self.positions.items()}
        return [by_position[row["position"]] for row in rows]

    def ordered(self, *labels: str) -> list[str]:
        return sorted(labels, key=self.positions.__getitem__)


@dataclass
class Scenario:
    log: Log
    n_reset: str  # ada's password reset, sourced on her user aggregate
    n_otp: str  # ada's session OTP, sourced on session s1
    n_bob: str
    n_globex: str  # the same user id in another instance


@pytest.fixture
async def scenario(store: EventStore) -> Scenario:
    log = Log(store)
    await log.add("ada.added", "user/ada", "user.human.added", {"username": "ada"})
    await log.add("bob.added", "user/bob", "user.human.added", {"username": "bob"})
    seq = await log.coded("ada.reset", "user/ada", "user.human.password.code.added", expiry="10m")
    n_reset = await log.notification(
        "n_reset", user="ada", source="user/ada", source_label="ada.reset", source_sequence=seq,
        sent_event_type="user.human.password.code.sent", retry=True,
    )  # fmt: skip
    await log.add("s1.checked", "session/s1", "session.user.checked", {"user_id": "ada"})
    seq = await log.coded("s1.otp", "session/s1", "session.otp.sms.challenged", user_id="ada")
    bob_seq = await log.coded("bob.reset", "user/bob", "user.human.password.code.added")
    n_otp = await log.notification(
        "n_otp", user="ada", source="session/s1", source_label="s1.otp", source_sequence=seq,
        sent_event_type="session.otp.sms.sent",
    )  # fmt: skip
    n_bob = await log.notification(
        "n_bob", user="bob", source="user/bob", source_label="bob.reset", source_sequence=bob_seq,
        sent_event_type="user.human.password.code.sent",
    )  # fmt: skip
    await log.add("s1.terminated", "session/s1", "session.terminated")
    seq = await log.coded("s2.otp", "session/s2", "session.otp.sms.challenged", user_id="bob")
    await log.notification(
        "n_s2", user="bob", source="session/s2", source_label="s2.otp", source_sequence=seq,
        sent_event_type="session.otp.sms.sent",
    )  # fmt: skip
    await log.add("g.added", "user/ada", "user.human.added", instance="globex")
    seq = await log.coded("g.reset", "user/ada", "user.human.password.code.added",
                          instance="globex")  # fmt: skip
    n_globex = await log.notification(
        "n_g", user="ada", source="user/ada", source_label="g.reset", source_sequence=seq,
        sent_event_type="user.human.password.code.sent", instance="globex",
    )  # fmt: skip
    await log.add("ada.changed", "user/ada", "user.human.profile.changed", {"first_name": "A"})
    return Scenario(log, n_reset, n_otp, n_bob, n_globex)


ADA_ACME = (
    "ada.added", "ada.reset", "n_reset.requested", "n_reset.retry", "n_reset.sent",
    "n_reset.source-sent", "s1.otp", "n_otp.requested", "n_otp.sent", "n_otp.source-sent",
    "ada.changed",
)  # fmt: skip
ADA_GLOBEX = ("g.added", "g.reset", "n_g.requested", "n_g.sent", "n_g.source-sent")


def test_user_trail_is_the_users_events_notifications_and_sources(
    env: dict[str, str], scenario: Scenario
) -> None:
    log = scenario.log
    rows = replayed(env, "--user", "ada")
    assert log.labels(rows) == log.ordered(*ADA_ACME, *ADA_GLOBEX)
    assert [r["position"] for r in rows] == sorted(r["position"] for r in rows)
    # Not the session's other events, nothing of bob's.
    assert {"s1.checked", "s1.terminated"}.isdisjoint(log.labels(rows))
    assert all("bob" not in json.dumps(r) for r in rows)

    bob = log.labels(replayed(env, "--user", "bob"))
    assert bob == log.ordered(
        "bob.added", "bob.reset", "n_bob.requested", "n_bob.sent", "n_bob.source-sent",
        "s2.otp", "n_s2.requested", "n_s2.sent", "n_s2.source-sent",
    )  # fmt: skip
    assert replayed(env, "--user", "nobody") == []


def test_user_trail_with_instance_and_other_filters(
    env: dict[str, str], scenario: Scenario
) -> None:
    log = scenario.log
    assert log.labels(replayed(env, "--user", "ada", "--instance", "acme")) == log.ordered(
        *ADA_ACME
    )
    assert log.labels(replayed(env, "--user", "ada", "--instance", "globex")) == log.ordered(
        *ADA_GLOBEX
    )
    notifications = replayed(env, "--user", "ada", "--event-type", "notification.*")
    assert {r["aggregate_id"] for r in notifications} == {
        scenario.n_reset, scenario.n_otp, scenario.n_globex,
    }  # fmt: skip
    sessions = replayed(env, "--user", "ada", "--aggregate-type", "session")
    assert log.labels(sessions) == ["s1.otp", "n_otp.source-sent"]
    after = log.positions["n_otp.requested"]
    limited = replayed(env, "--user", "ada", "--after-position", str(after), "--limit", "2")
    assert log.labels(limited) == ["n_otp.sent", "n_otp.source-sent"]
    both = tidings("replay", "--user", "ada", "--notification", scenario.n_otp, env=env)
    assert both.returncode == 2
    assert "--user or --notification" in both.stderr


def test_notification_trail(env: dict[str, str], scenario: Scenario) -> None:
    log = scenario.log
    otp = log.labels(replayed(env, "--notification", scenario.n_otp))
    assert otp == ["s1.otp", "n_otp.requested", "n_otp.sent", "n_otp.source-sent"]
    reset = log.labels(replayed(env, "--notification", scenario.n_reset))
    assert reset == [
        "ada.reset", "n_reset.requested", "n_reset.retry", "n_reset.sent", "n_reset.source-sent",
    ]  # fmt: skip
    only_sent = replayed(env, "--notification", scenario.n_reset, "--event-type", "*.sent")
    assert log.labels(only_sent) == ["n_reset.sent", "n_reset.source-sent"]
    assert replayed(env, "--notification", "no-such-notification") == []


def test_codes_are_redacted_in_both_formats(env: dict[str, str], scenario: Scenario) -> None:
    log = scenario.log
    jsonl = tidings("replay", "--format", "jsonl", env=env)
    table = tidings("replay", "--format", "table", env=env)
    assert jsonl.returncode == 0 and table.returncode == 0, jsonl.stderr + table.stderr
    for text in (jsonl.stdout, table.stdout):
        assert PLAINTEXT not in text
        for ciphertext in log.codes:
            assert ciphertext[:16] not in text
        assert "<encrypted>" in text

    parsed = [json.loads(text) for text in jsonl.stdout.splitlines()]
    rows = dict(zip(log.labels(parsed), parsed, strict=True))
    assert rows["ada.reset"]["payload"] == {"code": "<encrypted>", "expiry": "10m"}
    assert rows["s1.otp"]["payload"] == {"code": "<encrypted>", "user_id": "ada"}
    assert rows["n_reset.requested"]["payload"]["request"]["code"] == "<encrypted>"
    assert rows["n_reset.retry"]["payload"]["request"]["code"] == "<encrypted>"
    # Everything else is as stored.
    assert rows["n_reset.requested"]["payload"]["request"]["user_id"] == "ada"
    assert rows["ada.added"]["payload"] == {"username": "ada"}
    # One per code stored, and the retry repeats its request's code.
    assert jsonl.stdout.count("<encrypted>") == len(log.codes) + 1

    table_rows = {r.split()[0]: r for r in table.stdout.splitlines()[1:]}
    assert '{"code":"<encrypted>","expiry":"10m"}' in table_rows[str(log.positions["ada.reset"])]


async def test_keep_encrypted_prints_the_stored_ciphertext(
    env: dict[str, str], scenario: Scenario, store: EventStore
) -> None:
    stored = {e.position: e.payload for e in await store.query(EventQuery())}
    rows = replayed(env, "--keep-encrypted")
    assert {r["position"]: r["payload"] for r in rows} == stored
    text = json.dumps(rows)
    assert all(ciphertext in text for ciphertext in scenario.log.codes)
    assert PLAINTEXT not in text and "<encrypted>" not in text
    table = tidings("replay", "--format", "table", "--keep-encrypted", env=env).stdout
    reset_row = next(r for r in table.splitlines() if "user.human.password.code.added" in r)
    assert scenario.log.codes[0][:16] in reset_row  # ada's reset code, the first one stored


def test_a_redacted_replay_cannot_be_appended_as_a_copy(
    env: dict[str, str], scenario: Scenario, empty_conninfo: str
) -> None:
    """A copy made without --keep-encrypted would hold codes no one can send: refused."""
    copy_env = clean_env(TIDINGS_DATABASE_URL=empty_conninfo)
    assert tidings("migrate", env=copy_env).returncode == 0
    redacted = tidings("replay", "--format", "jsonl", env=env).stdout
    refused = tidings("events", "append", "-", env=copy_env, stdin=redacted)
    assert refused.returncode == 1
    first_coded = 1 + [json.loads(r)["position"] for r in redacted.splitlines()].index(
        scenario.log.positions["ada.reset"]
    )
    assert f"stdin line {first_coded}: payload.code is '<encrypted>'" in refused.stderr
    assert "--keep-encrypted" in refused.stderr and "nothing was appended" in refused.stderr

    kept = tidings("replay", "--format", "jsonl", "--keep-encrypted", env=env).stdout
    copied = tidings("events", "append", "--allow-internal", "-", env=copy_env, stdin=kept)
    assert copied.returncode == 0, copied.stderr
    assert len(replayed(copy_env)) == len(kept.splitlines())


def test_output_writes_what_stdout_would(
    env: dict[str, str], scenario: Scenario, tmp_path: Path
) -> None:
    for fmt, args in (("jsonl", ()), ("table", ()), ("jsonl", ("--user", "ada"))):
        target = tmp_path / f"replay-{fmt}-{len(args)}.out"
        target.write_text("stale content\n")
        stdout = tidings("replay", "--format", fmt, *args, env=env)
        to_file = tidings("replay", "--format", fmt, *args, "--output", target, env=env)
        assert to_file.returncode == 0, to_file.stderr
        assert to_file.stdout == ""
        assert target.read_text() == stdout.stdout
        events = len(stdout.stdout.splitlines()) - (fmt == "table")
        assert f"wrote {events} event(s) to {target}" in to_file.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "replay-jsonl-0.out", "replay-jsonl-2.out", "replay-table-0.out",
    ], "no partial files left behind"  # fmt: skip
    # jsonl is the default for a file.
    default = tmp_path / "default.jsonl"
    assert tidings("replay", "--output", default, env=env).returncode == 0
    assert json.loads(default.read_text().splitlines()[0])["event_type"] == "user.human.added"

    missing = tidings("replay", "--output", tmp_path / "no-such-dir" / "x.jsonl", env=env)
    assert missing.returncode == 1
    assert "cannot write" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "no-such-dir").exists()


async def test_trail_queries_use_the_audit_indexes(db: Database, scenario: Scenario) -> None:
    """EXPLAIN: the primary key (0013) and the lookup of 0006, never a scan of the whole log."""
    plans = {}
    async with db.pool.connection() as conn:
        await conn.execute("SET enable_seqscan = off")
        for trail in (UserTrail(user_id="ada"), NotificationTrail(notification_id=scenario.n_otp)):
            statement, params = compose_select(EventQuery(instance_ids=("acme",)), trail=trail)
            cur = psycopg.AsyncClientCursor(conn)
            await cur.execute(b"EXPLAIN " + statement.as_bytes(conn), params)
            plans[type(trail)] = "\n".join(row[0] for row in await cur.fetchall())
    user_plan = plans[UserTrail]
    assert "events_notification_user" in user_plan, user_plan
    assert "events_aggregate_sequence" in user_plan, user_plan
    assert "Seq Scan" not in user_plan, user_plan
    notification_plan = plans[NotificationTrail]
    assert "events_aggregate_sequence" in notification_plan, notification_plan
    assert "Seq Scan" not in notification_plan, notification_plan


# --- following the log ---------------------------------------------------------------


class Follower:
    """`tidings replay --follow` as a subprocess, its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def lines(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        rows = []
        for _ in range(count):
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            assert raw, f"the follower ended early: {await self.stderr()}"
            rows.append(json.loads(raw))
        return rows

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        return code, await self.stderr()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.returncode is None:
            return "(still running)"
        return (await self.proc.stderr.read()).decode()


@pytest.fixture
async def follow(env: dict[str, str]) -> AsyncIterator[Callable[..., Awaitable[Follower]]]:
    started: list[Follower] = []

    async def start(*args: str | Path) -> Follower:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidings", "replay", "--follow", "--format", "jsonl",
            *map(str, args), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        started.append(Follower(proc))
        return started[-1]

    yield start
    for follower in started:
        if follower.proc.returncode is None:
            follower.proc.kill()
            await follower.proc.wait()


def event(aggregate_id: str, instance: str = "acme", event_type: str = "user.human.added") -> Any:
    return NewEvent(
        instance_id=instance,
        aggregate_type="user",
        aggregate_id=aggregate_id,
        event_type=event_type,
        payload={"code": new_code()} if event_type.endswith("code.added") else {},
    )


async def follower_read_since(conninfo: str, since: datetime) -> bool:
    """Whether some other session (the follower) finished a query after `since`.

    The test's own sessions are idle since before `since` or in a transaction,
    and the follower's listener only ever ran LISTEN.
    """
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state = 'idle' AND query_start > %s AND query NOT LIKE 'LISTEN%%'",
            [since],
        )
        row = await cur.fetchone()
    return bool(row and row[0])


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def server_now(conninfo: str) -> datetime:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("SELECT clock_timestamp()")
        row = await cur.fetchone()
    assert row is not None
    moment: datetime = row[0]
    return moment


async def test_follow_streams_new_events_in_order_and_never_skips_a_late_commit(
    store: EventStore, conninfo: str, follow: Callable[..., Awaitable[Follower]]
) -> None:
    await store.append([event("a"), event("b", instance="globex"), event("c")])
    async with (
        await psycopg.AsyncConnection.connect(conninfo) as slow,
        await psycopg.AsyncConnection.connect(conninfo) as fast,
    ):
        # Open before the follower starts: its catch-up must stop below it.
        await slow.execute("BEGIN")
        await store.append([event("slow-1")], conn=slow)
        await fast.execute("BEGIN")
        await store.append([event("fast-1", event_type="user.human.password.code.added")],
                           conn=fast)  # fmt: skip
        await fast.commit()

        follower = await follow("--instance", "acme")
        assert [r["aggregate_id"] for r in await follower.lines(2)] == ["a", "c"]
        await slow.commit()
        first = await follower.lines(2)
        assert [r["aggregate_id"] for r in first] == ["slow-1", "fast-1"], "none skipped"
        assert first[1]["payload"] == {"code": "<encrypted>"}, "followed events are redacted"

        await store.append([event("live"), event("other", instance="globex")])
        await store.append([event("live-2")])
        assert [r["aggregate_id"] for r in await follower.lines(2)] == ["live", "live-2"]

        # Again while following: the lower position commits after the higher one.
        await slow.execute("BEGIN")
        await store.append([event("slow-2")], conn=slow)
        await fast.execute("BEGIN")
        await store.append([event("fast-2")], conn=fast)
        await fast.commit()
        committed = await server_now(conninfo)
        # The follower wakes and looks while slow-2 is open; it must not pass it.
        await wait_for(lambda: follower_read_since(conninfo, committed), "a read after fast-2")
        await slow.commit()
        rows = await follower.lines(2)
        assert [r["aggregate_id"] for r in rows] == ["slow-2", "fast-2"]
        assert rows[0]["position"] < rows[1]["position"]

    await store.append([event("last")])
    assert [r["aggregate_id"] for r in await follower.lines(1)] == ["last"]
    code, stderr = await follower.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_follow_a_users_trail_into_a_file(
    store: EventStore,
    conninfo: str,
    scenario: Scenario,
    follow: Callable[..., Awaitable[Follower]],
    tmp_path: Path,
) -> None:
    log = scenario.log
    target = tmp_path / "ada.jsonl"
    follower = await follow("--user", "ada", "--instance", "acme")
    caught_up = await follower.lines(len(ADA_ACME))
    assert log.labels(caught_up) == log.ordered(*ADA_ACME)

    seq = await log.coded("s3.otp", "session/s3", "session.otp.email.challenged", user_id="ada")
    await log.add("bob.changed", "user/bob", "user.human.profile.changed")
    await log.notification(
        "n_s3", user="ada", source="session/s3", source_label="s3.otp", source_sequence=seq,
        sent_event_type="session.otp.email.sent",
    )  # fmt: skip
    await log.add("ada.removed", "user/ada", "user.removed")
    await log.add("g.removed", "user/ada", "user.removed", instance="globex")
    live = log.labels(await follower.lines(4))
    if live[0] == "s3.otp":
        # The follower read past the session's OTP event only once its
        # notification was requested: then it is in the trail. (Passed before,
        # it is not shown: a follower never goes back.)
        live = live[1:] + log.labels(await follower.lines(1))
    assert live == ["n_s3.requested", "n_s3.sent", "n_s3.source-sent", "ada.removed"]
    code, stderr = await follower.stop(signal.SIGINT)
    assert code == 0, stderr

    # --output with --follow: the file holds everything followed, and says how much.
    writer = await follow("--user", "ada", "--instance", "acme", "--output", target)
    await log.add("ada.verified", "user/ada", "user.human.email.verified")

    async def in_file() -> bool:
        return target.exists() and "user.human.email.verified" in target.read_text()

    await wait_for(in_file, "the followed event in the file")
    code, stderr = await writer.stop()
    assert code == 0, stderr
    rows = [json.loads(r) for r in target.read_text().splitlines()]
    assert rows == replayed(clean_env(TIDINGS_DATABASE_URL=conninfo), "--user", "ada",
                            "--instance", "acme")  # fmt: skip
    assert f"wrote {len(rows)} event(s) to {target}" in stderr


def test_code_shaped_values_are_recognised_at_any_depth() -> None:
    code = {"crypto_type": "aes-256-gcm", "key_id": "k1", "value": "c2VjcmV0"}
    plain = {"a": 1, "b": [1, {"c": "d"}], "crypto_type": 3}
    assert redact_codes(plain) is plain, "nothing to hide: no copy"
    nested: dict[str, Any] = {
        "request": {"code": code, "args": {"codes": [code, {"x": code}]}},
        "n": 1,
    }
    assert redact_codes(nested) == {
        "request": {"code": ENCRYPTED, "args": {"codes": [ENCRYPTED, {"x": ENCRYPTED}]}},
        "n": 1,
    }
    assert nested["request"]["code"] is code, "the input is not modified"
    assert redact_codes(dict(code)) == {**code, "value": ENCRYPTED}
    assert base64.b64decode(code["value"]) == b"secret"


async def test_a_malformed_request_does_not_break_the_trail(
    env: dict[str, str], store: EventStore
) -> None:
    """`events append` takes any payload: a request without a usable source still counts."""
    log = Log(store)
    await log.add("ada.added", "user/ada", "user.human.added")
    request = {"user_id": "ada", "source": {"aggregate_type": "user", "sequence": "one"}}
    await log.add("odd.requested", "notification/odd", "notification.requested",
                  {"request": request})  # fmt: skip
    await log.add("odd.sent", "notification/odd", "notification.sent")
    rows = replayed(env, "--user", "ada")
    assert log.labels(rows) == ["ada.added", "odd.requested", "odd.sent"]
    assert log.labels(replayed(env, "--notification", "odd")) == ["odd.requested", "odd.sent"]


async def test_follow_with_a_limit_stops_by_itself(env: dict[str, str], store: EventStore) -> None:
    await store.append([event("a"), event("b"), event("c")])
    result = tidings("replay", "--follow", "--limit", "2", "--format", "jsonl", env=env)
    assert result.returncode == 0, result.stderr
    assert [json.loads(r)["aggregate_id"] for r in result.stdout.splitlines()] == ["a", "b"]
