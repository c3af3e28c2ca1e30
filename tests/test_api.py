"""The HTTP API through a real uvicorn on 127.0.0.1: keys, scoping, every endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.api_helpers import RunningAPI, api_settings, running_api, send_all
from tests.cli import clean_env
from tests.ops_helpers import free_port, running, serving, wait_for
from tests.projection_helpers import user_added, user_event
from tests.worker_helpers import CRYPTO
from tidings.api import ApiKeys
from tidings.client import APIError
from tidings.eventstore import Database
from tidings.notification.codes import CodeCipher, is_encrypted_code
from tidings.notification.direct import direct_notification_id

EMAIL = {"email": "ada@example.com", "name": "Ada", "language": "en"}


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[RunningAPI]:
    settings = api_settings(
        tmp_path, max_batch=5, max_body=4096, body_timeout=timedelta(milliseconds=500)
    )
    async with running_api(db, settings) as running:
        yield running


# --- keys and scoping ---------------------------------------------------------------


async def test_missing_bad_and_revoked_keys_are_401(api: RunningAPI) -> None:
    key = await api.key()
    async with api.http() as anonymous:
        missing = await anonymous.get("/v1/notifications")
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in missing.json()["detail"]
    async with api.http("tdk_made-up") as made_up:
        assert (await made_up.get("/v1/notifications")).status_code == 401
    async with api.http(key) as good:
        assert (await good.get("/v1/notifications")).status_code == 200
        (row,) = await ApiKeys(db=api.db).list(instance_id="acme")
        await ApiKeys(db=api.db).revoke(
            instance_id="acme", key_id=row.key_id, creator="tests", reason="leaked"
        )
        revoked = await good.get("/v1/notifications")
        assert revoked.status_code == 401
        assert revoked.json()["detail"] == "the API key is unknown or revoked"


async def test_a_key_sees_only_its_instance_and_never_learns_of_another(api: RunningAPI) -> None:
    acme, globex = await api.key("acme"), await api.key("globex")
    async with api.client(acme) as producer:
        accepted = await producer.notify(
            idempotency_key="k-1", message_type="PasswordChange", channel="email", recipient=EMAIL
        )
    async with api.client(globex) as other, api.http(globex) as raw:
        with pytest.raises(APIError) as read:
            await other.notification(accepted.id)
        with pytest.raises(APIError) as unknown:
            await other.notification("00000000-0000-0000-0000-000000000000")
        assert (read.value.status, unknown.value.status) == (404, 404)
        assert read.value.detail == f"no notification {accepted.id}"
        with pytest.raises(APIError) as cancel:
            await other.cancel(accepted.id)
        assert cancel.value.status == 404
        assert (await other.notifications()).items == []
        theirs = await other.events()
        assert [e["event_type"] for e in theirs] == ["apikey.created"]  # their key, nothing else
        assert {e["instance_id"] for e in theirs} == {"globex"}
        # Naming another instance is refused the same way whether it exists or not.
        answers = []
        for instance in ("acme", "no-such-instance"):
            body = {"events": [dict(user_added().model_dump(), instance_id=instance)]}
            body["events"][0].pop("expected_sequence")
            answer = await raw.post("/v1/events", json=body)
            answers.append((answer.status_code, answer.json()["detail"]))
        assert answers[0] == answers[1]
        assert answers[0][0] == 403
    assert await api.count(instance_ids=("globex",), aggregate_types=("user",)) == 0
    async with api.client(acme) as owner:
        assert (await owner.notification(accepted.id))["state"] == "pending"


async def test_scopes_limit_what_a_key_may_do(api: RunningAPI) -> None:
    reader = await api.key("acme", "notifications:read")
    writer = await api.key("acme", "events:write")
    async with api.client(reader) as client:
        assert (await client.notifications()).items == []
        with pytest.raises(APIError) as refused:
            await client.notify(
                idempotency_key="k", message_type="PasswordChange", channel="email",
                recipient=EMAIL,
            )  # fmt: skip
        assert refused.value.status == 403
        assert "notifications:write" in str(refused.value.detail)
        with pytest.raises(APIError) as no_events:
            await client.append_events([user_added().model_dump(exclude={"instance_id"})])
        assert no_events.value.status == 403
    async with api.client(writer) as client:
        appended = await client.append_events([user_added().model_dump(exclude={"instance_id"})])
        assert appended[0].sequence == 1
        with pytest.raises(APIError) as no_read:
            await client.events()
        assert no_read.value.status == 403
    assert await api.count(aggregate_types=("notification",)) == 0


# --- POST /v1/events ----------------------------------------------------------------


async def test_append_events_all_or_nothing_with_expected_sequences(api: RunningAPI) -> None:
    key = await api.key()
    first = user_added().model_dump(exclude={"instance_id"})
    second = user_event("user.human.email.changed", email="ada@new.example").model_dump(
        exclude={"instance_id"}
    )
    async with api.client(key) as client:
        appended = await client.append_events([{**first, "expected_sequence": 0}, second])
        assert [(a.aggregate_id, a.sequence) for a in appended] == [
            ("user-ada", 1),
            ("user-ada", 2),
        ]
        assert appended[0].position < appended[1].position
        before = await api.count()
        with pytest.raises(APIError) as conflict:
            await client.append_events([
                user_added("user-bob").model_dump(exclude={"instance_id"}),
                {**second, "expected_sequence": 1},
            ])  # fmt: skip
        assert conflict.value.status == 409
        detail = str(conflict.value.detail)
        assert "events.1" in detail and "acme/user/user-ada" in detail
        assert "expected sequence 1" in detail and "at 2" in detail
        assert await api.count() == before, "nothing of the batch was stored"
    stored = await api.events(aggregate_ids=("user-ada",))
    assert [e.creator for e in stored] == ["apikey:acme-test", "apikey:acme-test"]


async def test_a_plain_code_is_encrypted_before_it_is_stored_and_never_echoed(
    api: RunningAPI,
) -> None:
    key = await api.key()
    event = {
        "aggregate_type": "user",
        "aggregate_id": "user-ada",
        "event_type": "user.human.otp.email.code.added",
        "payload": {"code": {"plain": "824193"}, "expiry": "10m"},
    }
    async with api.http(key) as http:
        answer = await http.post("/v1/events", json={"events": [event]})
        assert answer.status_code == 201, answer.text
        assert "824193" not in answer.text
        log = await http.get("/v1/events")
        assert "824193" not in log.text and "<encrypted>" in log.text
    (stored,) = await api.events(aggregate_ids=("user-ada",))
    code = stored.payload["code"]
    assert is_encrypted_code(code) and "824193" not in json.dumps(stored.payload)
    assert CodeCipher.from_settings(CRYPTO).decrypt(code) == "824193"


async def test_producers_append_only_user_and_session_events(api: RunningAPI) -> None:
    key = await api.key()
    forged = {
        "aggregate_type": "notification",
        "aggregate_id": "n-1",
        "event_type": "notification.sent",
        "payload": {"channel": "smtp", "provider_message_id": "x", "attempt": 1},
    }
    async with api.http(key) as http:
        answer = await http.post(
            "/v1/events",
            json={"events": [user_added().model_dump(exclude={"instance_id"}), forged]},
        )
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["errors"][0]["field"] == "events.1.event_type"
    assert "only user.* and session.* events" in problem["errors"][0]["message"]
    assert await api.count() == 0


# --- POST /v1/notifications ---------------------------------------------------------


async def test_the_idempotency_key_fixes_the_notification(api: RunningAPI) -> None:
    key = await api.key()
    body = {"recipient": EMAIL, "message_type": "PasswordChange", "channel": "email"}
    async with api.http(key) as http:
        first = await http.post("/v1/notifications", json=body, headers={"Idempotency-Key": "a1"})
        assert first.status_code == 202
        nid = first.json()["id"]
        assert first.json() == {
            "id": nid, "state": "pending",
            "notifications": [{"channel": "email", "id": nid, "state": "pending"}],
        }  # fmt: skip
        assert first.headers["location"] == f"/v1/notifications/{nid}"
        assert nid == direct_notification_id(instance_id="acme", idempotency_key="a1")
        again = await http.post("/v1/notifications", json=body, headers={"Idempotency-Key": "a1"})
        assert (again.status_code, again.json()["id"]) == (200, nid)
        other = {**body, "message_type": "InviteUser"}
        reused = await http.post("/v1/notifications", json=other, headers={"Idempotency-Key": "a1"})
        assert reused.status_code == 422
        assert "Idempotency-Key" in reused.json()["detail"]
        missing = await http.post("/v1/notifications", json=body)
        assert missing.status_code == 400
        assert "Idempotency-Key" in missing.json()["detail"]
        # The same key in another instance is another notification.
    async with api.http(await api.key("globex")) as globex:
        theirs = await globex.post(
            "/v1/notifications", json=body, headers={"Idempotency-Key": "a1"}
        )
        assert theirs.status_code == 202 and theirs.json()["id"] != nid
    assert await api.count(aggregate_types=("notification",)) == 2


async def test_same_key_with_another_code_is_another_request(api: RunningAPI) -> None:
    key = await api.key()
    body = {
        "recipient": EMAIL, "message_type": "VerifyEmailOTP", "channel": "email",
        "code": {"plain": "111111"},
    }  # fmt: skip
    async with api.http(key) as http:
        first = await http.post("/v1/notifications", json=body, headers={"Idempotency-Key": "c"})
        assert first.status_code == 202 and "111111" not in first.text
        same = await http.post("/v1/notifications", json=body, headers={"Idempotency-Key": "c"})
        assert same.status_code == 200
        changed = {**body, "code": {"plain": "222222"}}
        other = await http.post("/v1/notifications", json=changed, headers={"Idempotency-Key": "c"})
        assert other.status_code == 422
    (requested,) = await api.events(aggregate_types=("notification",))
    assert "111111" not in json.dumps(requested.payload)


async def test_a_custom_message_type_is_sent_with_its_texts_and_seen_through_the_api(
    api: RunningAPI, tmp_path: Path
) -> None:
    key = await api.key()
    async with api.client(key) as client:
        accepted = await client.notify(
            idempotency_key="export-42",
            message_type="ExportReady",
            channel="email",
            recipient=EMAIL,
            data={"export_name": "Q3", "export_url": "https://example.com/exports/42"},
        )
        assert (accepted.state, accepted.created) == ("pending", True)
        pending = await client.notification(accepted.id)
        assert (pending["state"], pending["attempts"], pending["user_id"]) == ("pending", 0, None)
        await send_all(api)
        sent = await client.notification(accepted.id)
    assert sent["state"] == "sent" and sent["attempts"] == 1
    assert sent["sent_via"] == "filesystem" and sent["settled_at"] is not None
    assert [s["event_type"] for s in sent["timeline"]] == [
        "notification.requested",
        "notification.sent",
    ]
    assert "idempotency key export-42" in sent["timeline"][0]["summary"]
    (message,) = (tmp_path / "outbox").rglob("*.eml")
    text = message.read_text()
    assert "Export Q3 is ready" in text and "https://example.com/exports/42" in text
    assert "ada@example.com" in text
    assert await api.count(event_types=("*.sent",)) == 1, "no source aggregate to tell"


async def test_users_unknown_removed_and_message_types_without_texts(api: RunningAPI) -> None:
    key = await api.key()
    await api.db.store.append([user_added("user-gone"), user_event("user.removed", "user-gone")])
    await send_all(api)  # the users projection learns of both
    async with api.http(key) as http:

        async def post(body: dict[str, object], idem: str) -> httpx.Response:
            return await http.post(
                "/v1/notifications", json=body, headers={"Idempotency-Key": idem}
            )

        unknown = await post(
            {"user_id": "user-later", "message_type": "PasswordChange", "channel": "email"}, "u1"
        )
        assert unknown.status_code == 202, "the worker waits for the users projection"
        removed = await post(
            {"user_id": "user-gone", "message_type": "PasswordChange", "channel": "email"}, "u2"
        )
        assert removed.status_code == 422 and "user-gone was removed" in removed.json()["detail"]
        untexted = await post(
            {"recipient": EMAIL, "message_type": "WeeklyDigest", "channel": "email"}, "u3"
        )
        assert untexted.status_code == 422
        assert "WeeklyDigest has no texts" in untexted.json()["detail"]
        assert "templates.dir" in untexted.json()["detail"]
        no_sms = await post(
            {"recipient": {"phone": "+41790000001"}, "message_type": "ExportReady",
             "channel": "sms"}, "u4",
        )  # fmt: skip
        assert no_sms.status_code == 422 and "sms text" in no_sms.json()["detail"]
        bad_name = await post(
            {"recipient": EMAIL, "message_type": "drop table", "channel": "email"}, "u5"
        )
        assert bad_name.status_code == 422
        both = await post(
            {"user_id": "u", "recipient": EMAIL, "message_type": "PasswordChange",
             "channel": "email"}, "u6",
        )  # fmt: skip
        assert both.status_code == 422
        assert "either user_id or recipient" in both.json()["detail"]
        no_address = await post(
            {"recipient": {"name": "Ada"}, "message_type": "PasswordChange", "channel": "email"},
            "u7",
        )
        assert no_address.status_code == 422 and "recipient.email" in no_address.json()["detail"]
    assert await api.count(aggregate_types=("notification",)) == 1


async def test_not_after_cancels_instead_of_sending_late(api: RunningAPI, tmp_path: Path) -> None:
    key = await api.key()
    async with api.client(key) as client:
        accepted = await client.notify(
            idempotency_key="late", message_type="PasswordChange", channel="email",
            recipient=EMAIL, not_after=datetime.now(UTC) - timedelta(seconds=1),
        )  # fmt: skip
        await send_all(api)
        view = await client.notification(accepted.id)
    assert (view["state"], view["cancel_reason"]) == ("canceled", "expired")
    assert "not_after" in view["last_error"]
    assert not list((tmp_path / "outbox").rglob("*.eml"))


# --- cancel, listing, the log -------------------------------------------------------


async def test_cancel_while_pending_then_409(api: RunningAPI) -> None:
    key = await api.key(name="support-desk")
    async with api.client(key) as client:
        accepted = await client.notify(
            idempotency_key="x", message_type="PasswordChange", channel="email", recipient=EMAIL
        )
        canceled = await client.cancel(accepted.id)
        assert canceled.state == "canceled"
        with pytest.raises(APIError) as again:
            await client.cancel(accepted.id)
        assert again.value.status == 409 and "already canceled" in str(again.value.detail)
        view = await client.notification(accepted.id)
    assert (view["state"], view["cancel_reason"]) == ("canceled", "canceled")
    (event,) = await api.events(event_types=("notification.canceled",))
    assert event.payload["reason"] == "canceled"
    assert event.creator == "apikey:support-desk" and "support-desk" in event.payload["error"]
    await send_all(api)  # nothing left to send
    assert await api.count(event_types=("notification.sent",)) == 0


async def test_listing_pages_with_a_cursor_and_filters(api: RunningAPI) -> None:
    key = await api.key()
    async with api.client(key) as client:
        ids = []
        for n in range(7):
            accepted = await client.notify(
                idempotency_key=f"list-{n}",
                message_type="PasswordChange" if n % 2 else "InviteUser",
                channel="email",
                recipient=EMAIL,
            )
            ids.append(accepted.id)
        await client.cancel(ids[0])
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await client.notifications(limit=3, cursor=cursor)
            seen += [item["id"] for item in page.items]
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == list(reversed(ids)) and pages == 3
        canceled = await client.notifications(state=["canceled"])
        assert [i["id"] for i in canceled.items] == [ids[0]]
        invites = await client.notifications(message_type=["InviteUser"], state=["pending"])
        assert [i["id"] for i in invites.items] == [ids[6], ids[4], ids[2]]
    async with api.http(key) as http:
        bad = await http.get("/v1/notifications", params={"cursor": "not-ours"})
        assert bad.status_code == 400 and "next_cursor" in bad.json()["detail"]
        bad_state = await http.get("/v1/notifications", params={"state": "lost"})
        assert bad_state.status_code == 422 and bad_state.json()["errors"][0]["field"] == "state.0"


async def test_the_log_as_ndjson_after_a_position(api: RunningAPI) -> None:
    key = await api.key()
    await api.db.store.append([user_added(), user_added("user-bob"), user_added(instance_id="x")])
    async with api.http(key) as http:
        answer = await http.get("/v1/events", params={"event_type": "user.*", "limit": 1})
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        (first,) = [json.loads(line) for line in answer.text.splitlines()]
        assert (first["instance_id"], first["aggregate_id"]) == ("acme", "user-ada")
        rest = await http.get(
            "/v1/events", params={"event_type": "user.*", "after": first["position"]}
        )
        lines = [json.loads(line) for line in rest.text.splitlines()]
        assert [(e["instance_id"], e["aggregate_id"]) for e in lines] == [("acme", "user-bob")]


# --- bad input ----------------------------------------------------------------------


async def test_bad_bodies_get_a_4xx_that_says_what_to_fix(api: RunningAPI) -> None:
    key = await api.key()
    envelope = user_added().model_dump(exclude={"instance_id"})
    async with api.http(key) as http:

        async def post(content: bytes, content_type: str = "application/json") -> httpx.Response:
            return await http.post(
                "/v1/events", content=content, headers={"Content-Type": content_type}
            )

        malformed = await post(b'{"events": [')
        assert malformed.status_code == 400
        assert "not valid JSON" in malformed.json()["detail"]
        form = await post(b"events=1", "application/x-www-form-urlencoded")
        assert form.status_code == 415 and "application/json" in form.json()["detail"]
        big = await post(b'{"events": [' + b" " * 5000 + b"]}")
        assert big.status_code == 413 and "api.max_body" in big.json()["detail"]
        latin1 = await post('{"events": [{"aggregate_id": "Zoë"}]}'.encode("latin-1"))
        assert latin1.status_code == 400 and "UTF-8" in latin1.json()["detail"]
        unknown = await post(json.dumps({"events": [{**envelope, "colour": "red"}]}).encode())
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["field"] == "events.0.colour"
        too_many = await post(json.dumps({"events": [envelope] * 6}).encode())
        assert too_many.status_code == 413 and "api.max_batch" in too_many.json()["detail"]
        huge = await post(
            json.dumps({"events": [{**envelope, "expected_sequence": 2**64}]}).encode()
        )
        assert huge.status_code == 422
        assert huge.json()["errors"][0]["field"] == "events.0.expected_sequence"
        far = await http.get("/v1/events", params={"after": 2**64})
        assert far.status_code == 422 and far.json()["errors"][0]["field"] == "after"
        empty = await post(b'{"events": []}')
        assert empty.status_code == 422
        nul = {**envelope, "payload": {"username": "a\u0000b"}}
        stored_nul = await post(json.dumps({"events": [envelope, nul]}).encode())
        assert stored_nul.status_code == 422
        assert stored_nul.json()["errors"][0]["field"] == "events.1.payload.username"
        assert "NUL character" in stored_nul.json()["detail"]
        nul_data = await http.post(
            "/v1/notifications",
            json={"recipient": EMAIL, "message_type": "PasswordChange", "channel": "email",
                  "data": {"note": "x\u0000"}},
            headers={"Idempotency-Key": "nul"},
        )  # fmt: skip
        assert nul_data.status_code == 422 and "data.note contains a NUL" in nul_data.text
        nowhere = await http.get("/v1/nothing")
        assert nowhere.status_code == 404 and "/docs" in nowhere.json()["detail"]
        assert nowhere.headers["content-type"] == "application/problem+json"
        wrong_method = await http.delete("/v1/events")
        assert wrong_method.status_code == 405 and "DELETE" in wrong_method.json()["detail"]
        assert (await http.get("/healthz")).status_code == 200
    assert await api.count() == 0, "nothing stored"
    assert await api.count(aggregate_types=("notification",)) == 0


async def test_a_stalled_body_is_cut_off_and_others_are_served(api: RunningAPI) -> None:
    host, port = api.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"events"'
    )
    await writer.drain()
    async with api.http() as other:  # the stalled one holds nothing up
        assert (await other.get("/healthz")).status_code == 200
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    writer.close()
    await writer.wait_closed()


# --- concurrent requests: one transaction for many, each still all or nothing -------


async def test_concurrent_requests_with_one_key_make_one_notification(api: RunningAPI) -> None:
    key = await api.key()
    body = {"recipient": EMAIL, "message_type": "PasswordChange", "channel": "email"}
    async with api.http(key) as http:
        answers = await asyncio.gather(*(
            http.post("/v1/notifications", json=body, headers={"Idempotency-Key": "same"})
            for _ in range(20)
        ))  # fmt: skip
        others = await asyncio.gather(*(
            http.post("/v1/notifications", json=body, headers={"Idempotency-Key": f"own-{n}"})
            for n in range(20)
        ))  # fmt: skip
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 19 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    assert [a.status_code for a in others] == [202] * 20
    assert await api.count(aggregate_types=("notification",)) == 21


async def test_concurrent_appends_conflict_one_request_at_a_time(api: RunningAPI) -> None:
    key = await api.key()

    def batch(n: int) -> dict[str, object]:
        return {"events": [
            {**user_added(f"user-{n}").model_dump(exclude={"instance_id"}), "expected_sequence": 0},
            {**user_added("user-contested").model_dump(exclude={"instance_id"}),
             "expected_sequence": 0},
        ]}  # fmt: skip

    async with api.http(key) as http:
        answers = await asyncio.gather(*(http.post("/v1/events", json=batch(n)) for n in range(12)))
    statuses = [a.status_code for a in answers]
    assert sorted(statuses) == [201] + [409] * 11
    winner = statuses.index(201)
    for answer in answers:
        if answer.status_code == 409:
            assert "events.1: " in answer.json()["detail"], "the index is the request's own"
    stored = await api.events(aggregate_types=("user",))
    assert sorted(e.aggregate_id for e in stored) == sorted([f"user-{winner}", "user-contested"])


async def test_the_apis_readiness_ignores_projector_lag(
    db: Database, tmp_path: Path, conninfo: str
) -> None:
    await db.store.append([user_added()])  # no projector runs: the lag only grows
    port = free_port()
    env = clean_env(TIDINGS_DATABASE_URL=conninfo, TIDINGS_OPERATIONS_READY_MAX_PROJECTOR_LAG="1ms")
    with running(["serve", "--addr", f"127.0.0.1:{port}"], env, tmp_path / "serve") as served:
        await serving(f"http://127.0.0.1:{port}", served)
        async with httpx.AsyncClient(timeout=10) as http:
            ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert (ready.status_code, ready.text) == (
            200,
            "database: ok\nprojector lag: not checked\n",
        )
        assert served.stop() == 0


async def test_beyond_max_concurrency_clients_get_503_at_once(db: Database, tmp_path: Path) -> None:
    settings = api_settings(tmp_path, max_concurrency=3, body_timeout=timedelta(seconds=30))
    async with running_api(db, settings) as api:
        host, port = api.base.removeprefix("http://").split(":")
        stalled = []
        for _ in range(3):  # each holds a connection and a request in flight
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            stalled.append((reader, writer))
        async with api.http() as other:
            refused = await other.get("/healthz")
        assert refused.status_code == 503
        for _, writer in stalled:
            writer.close()
            await writer.wait_closed()

        async def served_again() -> bool:
            async with api.http() as again:
                return (await again.get("/healthz")).status_code == 200

        await wait_for(served_again, "the server to serve once the slow clients left")
