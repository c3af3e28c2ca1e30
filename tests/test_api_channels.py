"""POST /v1/notifications on inapp and on several channels at once, through a real uvicorn.

In-app items land in the user's feed after the real worker pool ran (read back
through /v1/me/feed with the user's own token); email goes to a real SMTP
server (aiosmtpd on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from tests.api_helpers import RunningAPI, api_settings, running_api, send_all
from tests.projection_helpers import user_added
from tests.test_channel_smtp import FreePortController, Recorder, settings_for
from tidings.api import openapi_document
from tidings.client import APIError
from tidings.config import ChannelSettings, EndUserSettings, Settings
from tidings.eventstore import Database, NewEvent
from tidings.feeds.end_users import hmac_token
from tidings.notification.direct import direct_notification_id, request_notification_ids

HMAC_SECRET = "an-hmac-secret-of-thirty-two-bytes!!"
PROBLEM = "application/problem+json"
# A custom type written for the feed in two languages (for every instance), and
# acme's own in-app title for a built-in type.
DEFAULT_EN = """\
ReportShared:
  subject: "{{ args.sharer }} shared {{ args.report }}"
  body: "Open it: {{ args.report_url }}"
  inapp_title: "{{ args.sharer }} shared a report"
  inapp_body: "{{ args.report }} is waiting for you"
"""
DEFAULT_DE = """\
ReportShared:
  subject: "{{ args.sharer }} hat {{ args.report }} geteilt"
  body: "Öffnen: {{ args.report_url }}"
  inapp_title: "{{ args.sharer }} hat einen Bericht geteilt"
  inapp_body: "{{ args.report }} wartet auf Sie"
"""
ACME_PASSWORD_CHANGE = """
PasswordChange:
  inapp_title: "Acme: your password changed"
"""


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, int]]:
    recorder = Recorder()
    controller = FreePortController(
        recorder,
        hostname="127.0.0.1",
        port=0,
        server_hostname="smtp.tidings.test",
        ready_timeout=10,
    )
    controller.start()
    try:
        yield recorder, controller.port
    finally:
        controller.stop()


def channel_settings(tmp_path: Path, smtp_port: int) -> Settings:
    settings = api_settings(tmp_path)
    templates = tmp_path / "templates"
    (templates / "_default").mkdir(exist_ok=True)
    (templates / "_default" / "texts.en.yaml").write_text(DEFAULT_EN)
    (templates / "_default" / "texts.de.yaml").write_text(DEFAULT_DE)
    with (templates / "acme" / "texts.en.yaml").open("a") as texts:
        texts.write(ACME_PASSWORD_CHANGE)
    channels = ChannelSettings(
        email="smtp",
        smtp=settings_for(smtp_port),
        filesystem=settings.channels.filesystem,
    )
    return settings.model_copy(
        update={
            "channels": channels,
            "end_users": EndUserSettings(hmac_secret=SecretStr(HMAC_SECRET)),
        }
    )


@pytest.fixture
async def api(
    db: Database, tmp_path: Path, smtp: tuple[Recorder, int]
) -> AsyncIterator[RunningAPI]:
    async with running_api(db, channel_settings(tmp_path, smtp[1])) as running:
        yield running


def as_user(api: RunningAPI, user_id: str = "user-ada") -> httpx.AsyncClient:
    token = hmac_token(HMAC_SECRET, "acme", user_id)
    return httpx.AsyncClient(
        base_url=api.base, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def post(http: httpx.AsyncClient, body: dict[str, Any], key: str = "k-1") -> httpx.Response:
    return await http.post("/v1/notifications", json=body, headers={"Idempotency-Key": key})


def problem(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


async def feed(api: RunningAPI, user_id: str = "user-ada") -> list[dict[str, Any]]:
    async with as_user(api, user_id) as user:
        answer = await user.get("/v1/me/feed")
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


async def test_an_inapp_request_lands_in_the_users_feed_in_their_language(
    api: RunningAPI,
) -> None:
    await api.db.store.append([
        user_added("user-ada"), user_added("user-bert", preferred_language="de"),
    ])  # fmt: skip
    key = await api.key()
    data = {"sharer": "Grace", "report": "Q3 revenue", "report_url": "https://x.example/r/3"}
    async with api.http(key) as http:
        ada = await post(http, {
            "user_id": "user-ada", "message_type": "ReportShared", "channel": "inapp",
            "data": data, "url_template": "https://app.example.com/reports/{{ args.report }}",
        }, "share-ada")  # fmt: skip
        bert = await post(http, {
            "user_id": "user-bert", "message_type": "ReportShared", "channels": ["inapp"],
            "data": data,
        }, "share-bert")  # fmt: skip
        builtin = await post(http, {
            "user_id": "user-ada", "message_type": "PasswordChange", "channel": "inapp",
        }, "pw-ada")  # fmt: skip
        for answer in (ada, bert, builtin):
            assert answer.status_code == 202, answer.text
        ada_id, bert_id = ada.json()["id"], bert.json()["id"]
        assert ada.json()["notifications"] == [
            {"channel": "inapp", "id": ada_id, "state": "pending"}
        ]
        assert ada_id == direct_notification_id(instance_id="acme", idempotency_key="share-ada")
        assert await feed(api) == [], "nothing in the feed before the workers ran"
        await send_all(api)
        view = (await http.get(f"/v1/notifications/{ada_id}")).json()
    assert (view["state"], view["channel"], view["sent_via"]) == ("sent", "inapp", "inapp")
    assert view["group"] == []
    items = {item["id"]: item for item in await feed(api)}
    assert set(items) == {ada_id, builtin.json()["id"]}
    item = items[ada_id]
    assert item["title"] == "Grace shared a report"
    assert item["body"] == "Q3 revenue is waiting for you"
    assert item["action_url"] == "https://app.example.com/reports/Q3%20revenue"
    assert item["data"] == data and item["message_type"] == "ReportShared"
    assert items[builtin.json()["id"]]["title"] == "Acme: your password changed"
    (bert_item,) = await feed(api, "user-bert")
    assert bert_item["id"] == bert_id and bert_item["title"] == "Grace hat einen Bericht geteilt"


async def test_several_channels_are_several_notifications_each_sent(
    api: RunningAPI, smtp: tuple[Recorder, int], conninfo: str
) -> None:
    recorder, _ = smtp
    await api.db.store.append([user_added("user-ada")])
    key = await api.key()
    body = {"user_id": "user-ada", "message_type": "PasswordChange", "channels": ["inapp", "email"]}
    async with api.client(key) as client, api.http(key) as http:
        first = await post(http, body, "pw-1")
        assert first.status_code == 202, first.text
        listed = first.json()["notifications"]
        assert [n["channel"] for n in listed] == ["inapp", "email"], "in the order named"
        ids = {n["channel"]: n["id"] for n in listed}
        assert ids == request_notification_ids(
            instance_id="acme", idempotency_key="pw-1", channels=["email", "inapp"]
        )
        assert len(set(ids.values())) == 2
        # The first channel in the fixed order (email) is the request's anchor.
        assert first.json()["id"] == ids["email"]
        assert first.headers["location"] == f"/v1/notifications/{ids['email']}"
        await send_all(api)
        views = {c: await client.notification(nid) for c, nid in ids.items()}
    assert views["email"]["state"] == views["inapp"]["state"] == "sent"
    assert (views["email"]["sent_via"], views["inapp"]["sent_via"]) == ("smtp", "inapp")
    assert views["email"]["group"] == views["inapp"]["group"] == [ids["email"], ids["inapp"]]
    summary = views["inapp"]["timeline"][0]["summary"]
    assert summary.startswith("requested PasswordChange via inapp for user user-ada")
    assert (
        f"idempotency key pw-1, by key apikey:acme-test, requested together with {ids['email']}"
        in (summary)
    )
    (mail,) = recorder.received
    assert mail.rcpt_tos == ["user-ada@example.com"]
    assert "password" in mail.parsed()["Subject"].lower()
    (item,) = await feed(api)
    assert item["id"] == ids["inapp"] and item["title"] == "Acme: your password changed"
    # Each its own notification on the log, both appended in one transaction.
    requested = await api.events(event_types=("notification.requested",))
    assert sorted(e.aggregate_id for e in requested) == sorted(ids.values())
    assert {e.payload["request"]["channel"] for e in requested} == {"email", "inapp"}
    assert {e.payload["idempotency"]["key"] for e in requested} == {"pw-1"}
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cursor = await conn.execute(
            "SELECT DISTINCT xmin::text FROM tidings.events "
            "WHERE event_type = 'notification.requested'"
        )
        assert len(await cursor.fetchall()) == 1, "one transaction for both"


async def test_a_replayed_request_answers_the_same_ids_and_appends_nothing(
    api: RunningAPI,
) -> None:
    await api.db.store.append([user_added("user-ada")])
    key = await api.key()
    body: dict[str, Any] = {
        "user_id": "user-ada", "message_type": "PasswordChange", "channels": ["email", "inapp"],
    }  # fmt: skip
    async with api.http(key) as http:
        first = await post(http, body, "replay")
        assert first.status_code == 202
        again = await post(http, body, "replay")
        assert again.status_code == 200 and again.json() == first.json()
        reordered = await post(http, {**body, "channels": ["inapp", "email"]}, "replay")
        assert reordered.status_code == 200
        assert {n["id"] for n in reordered.json()["notifications"]} == {
            n["id"] for n in first.json()["notifications"]
        }
        before = await api.count(aggregate_types=("notification",))
        assert before == 2
        # The same key for other channels, or other data, is another request: refused.
        for other in (
            {**body, "channels": ["email"]},
            {**body, "channels": ["inapp"]},
            {**body, "channels": ["email", "sms", "inapp"]},
            {**body, "data": {"reason": "other"}},
        ):
            reused = problem(await post(http, other, "replay"))
            assert reused["title"] == "Idempotency-Key reused"
        assert await api.count(aggregate_types=("notification",)) == before
        await send_all(api)
        sent = await post(http, body, "replay")
        assert sent.status_code == 200
        assert {n["state"] for n in sent.json()["notifications"]} == {"sent"}
        assert sent.json()["state"] == "sent"
        # One channel named in either form is the same request, with the same id.
        single = await post(http, {**body, "channels": None, "channel": "sms"}, "one")
        as_list = await post(http, {**body, "channels": ["sms"]}, "one")
        assert (single.status_code, as_list.status_code) == (202, 200)
        assert single.json()["id"] == as_list.json()["id"]
        assert single.json()["id"] == direct_notification_id(
            instance_id="acme", idempotency_key="one"
        )


async def test_concurrent_replays_append_each_channel_once(api: RunningAPI) -> None:
    key = await api.key()
    body = {"user_id": "user-ada", "message_type": "PasswordChange", "channels": ["email", "sms"]}
    async with api.http(key) as http:
        answers = await asyncio.gather(*(post(http, body, "same") for _ in range(10)))
    assert sorted(a.status_code for a in answers) == [200] * 9 + [202]
    assert len({str(a.json()["notifications"]) for a in answers}) == 1
    assert await api.count(aggregate_types=("notification",)) == 2


async def test_a_code_never_goes_inapp_and_nothing_is_appended(api: RunningAPI) -> None:
    key = await api.key()
    async with api.http(key) as http:
        otp = problem(await post(http, {
            "user_id": "user-ada", "message_type": "VerifyEmailOTP", "channels": ["email", "inapp"],
            "code": {"plain": "824193"},
        }))  # fmt: skip
        assert otp["title"] == "One-time codes never go in-app"
        assert "channel inapp" in otp["detail"] and "VerifyEmailOTP" in otp["detail"]
        assert "824193" not in str(otp)
        assert otp["errors"][0]["field"] == "channels.1"
        init = problem(await post(http, {
            "user_id": "user-ada", "message_type": "InitCode", "channel": "inapp",
        }))  # fmt: skip
        assert "InitCode is a one-time code message" in init["detail"]
        assert init["errors"][0]["field"] == "channel"
        # Any request with a code, whatever its type.
        coded = problem(await post(http, {
            "user_id": "user-ada", "message_type": "PasswordChange", "channels": ["inapp"],
            "code": {"plain": "111111"},
        }))  # fmt: skip
        assert "PasswordChange carries a one-time code" in coded["detail"]
        # The same code type by email alone is fine.
        fine = await post(http, {
            "user_id": "user-ada", "message_type": "VerifyEmailOTP", "channel": "email",
            "code": {"plain": "824193"},
        }, "otp-email")  # fmt: skip
        assert fine.status_code == 202
    assert await api.count(aggregate_types=("notification",)) == 1


async def test_each_channel_needs_its_recipient_and_the_texts_it_shows(api: RunningAPI) -> None:
    key = await api.key()
    email_only = {"email": "ada@example.com"}
    async with api.http(key) as http:
        no_user = problem(await post(http, {
            "recipient": email_only, "message_type": "PasswordChange",
            "channels": ["email", "inapp"],
        }))  # fmt: skip
        assert no_user["errors"][0]["field"] == "user_id"
        assert "inapp channel needs user_id" in no_user["detail"]
        no_phone = problem(await post(http, {
            "recipient": email_only, "message_type": "PasswordChange", "channels": ["email", "sms"],
        }))  # fmt: skip
        assert no_phone["errors"][0]["field"] == "recipient.phone"
        assert "sms channel needs recipient.phone" in no_phone["detail"]
        # ExportReady (acme's texts) has email texts only.
        untexted = problem(await post(http, {
            "user_id": "user-ada", "message_type": "ExportReady", "channels": ["email", "inapp"],
        }))  # fmt: skip
        assert "no inapp_title and inapp_body text" in untexted["detail"]
        both = problem(await post(http, {
            "user_id": "user-ada", "message_type": "PasswordChange", "channel": "email",
            "channels": ["inapp"],
        }))  # fmt: skip
        assert "either channel or channels" in both["detail"]
        neither = problem(await post(http, {"user_id": "u", "message_type": "PasswordChange"}))
        assert "either channel or channels" in neither["detail"]
        twice = problem(await post(http, {
            "user_id": "u", "message_type": "PasswordChange", "channels": ["email", "email"],
        }))  # fmt: skip
        assert "more than once" in twice["detail"]
        empty = problem(await post(http, {
            "user_id": "u", "message_type": "PasswordChange", "channels": [],
        }))  # fmt: skip
        assert empty["errors"][0]["field"] == "channels"
        webhook = problem(await post(http, {
            "user_id": "u", "message_type": "PasswordChange", "channels": ["webhook"],
        }))  # fmt: skip
        assert webhook["errors"][0]["field"] == "channels.0"
    assert await api.count(aggregate_types=("notification",)) == 0


async def test_one_channel_taken_already_appends_none_of_the_request(api: RunningAPI) -> None:
    """All or nothing: the inapp notification's id is on the log already (as if half a
    request had been stored), so the email one is not appended either."""
    key = await api.key()
    ids = request_notification_ids(
        instance_id="acme", idempotency_key="half", channels=["email", "inapp"]
    )
    await api.db.store.append([
        NewEvent(
            instance_id="acme", aggregate_type="notification", aggregate_id=ids["inapp"],
            event_type="notification.requested", payload={"request": {}}, expected_sequence=0,
        )
    ])  # fmt: skip
    body = {"user_id": "user-ada", "message_type": "PasswordChange", "channels": ["email", "inapp"]}
    async with api.http(key) as http:
        problem(await post(http, body, "half"), 409)
    assert await api.count(aggregate_ids=(ids["email"],)) == 0


async def test_the_python_client_sends_several_channels(api: RunningAPI) -> None:
    key = await api.key()
    async with api.client(key) as client:
        accepted = await client.notify(
            idempotency_key="client-1", message_type="PasswordChange", user_id="user-ada",
            channels=["email", "inapp"],
        )  # fmt: skip
        again = await client.notify(
            idempotency_key="client-1", message_type="PasswordChange", user_id="user-ada",
            channels=["email", "inapp"],
        )  # fmt: skip
        with pytest.raises(APIError) as refused:
            await client.notify(
                idempotency_key="client-2", message_type="InitCode", user_id="user-ada",
                channels=["inapp"],
            )  # fmt: skip
    assert accepted.created and not again.created
    assert [n.channel for n in accepted.notifications] == ["email", "inapp"]
    assert accepted.id_for("inapp") == again.id_for("inapp") != accepted.id_for("email")
    assert accepted.id == accepted.id_for("email")
    assert refused.value.status == 422 and refused.value.errors
    assert refused.value.errors[0]["field"] == "channels.0"
    with pytest.raises(KeyError):
        accepted.id_for("sms")


def test_the_openapi_schema_offers_inapp_and_several_channels() -> None:
    schemas = openapi_document()["components"]["schemas"]
    request = schemas["NotificationIn"]["properties"]
    one = next(o for o in request["channel"]["anyOf"] if o.get("type") == "string")
    assert one["enum"] == ["email", "sms", "inapp"]
    several = next(o for o in request["channels"]["anyOf"] if o.get("type") == "array")
    assert several["items"]["enum"] == ["email", "sms", "inapp"]
    accepted = schemas["RequestAccepted"]["properties"]
    assert set(accepted) == {"id", "state", "notifications"}
    assert set(schemas["ChannelAccepted"]["properties"]) == {"channel", "id", "state"}
    assert "group" in schemas["NotificationView"]["properties"]
