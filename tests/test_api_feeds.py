"""The end user's feed on `tidings serve` (/v1/me/...), through a real uvicorn on 127.0.0.1.

Items exist because in-app notifications went through the real worker pool
(tests.feed_helpers.send_inapp); users sign in with their own tokens.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from selenium.webdriver.common.by import By

from tests.api_helpers import RunningAPI, api_settings, running_api
from tests.browser import browser as browser
from tests.feed_helpers import send_inapp
from tests.ops_helpers import wait_for
from tidings.api import openapi_document
from tidings.config import EndUserInstanceSettings, EndUserSettings, Settings
from tidings.eventstore import Database
from tidings.feeds.end_users import hmac_token
from tidings.feeds.page import INBOX_CSP, INBOX_MEDIA_TYPE, inbox_html

HMAC_SECRET = "an-hmac-secret-of-thirty-two-bytes!!"
JWT_SECRET = "a-shared-secret-of-thirty-two-bytes!"
PROBLEM = "application/problem+json"
TIMEOUT = 20.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def feed_settings(tmp_path: Path) -> Settings:
    settings = api_settings(tmp_path)
    end_users = EndUserSettings(
        hmac_secret=SecretStr(HMAC_SECRET),
        jwt_secret=SecretStr(JWT_SECRET),
        instances={
            # Its keys are published at an address where nothing answers.
            "initech": EndUserInstanceSettings(
                jwks_url=f"http://127.0.0.1:{closed_port()}/.well-known/jwks.json"
            ),
        },
    )
    return settings.model_copy(update={"end_users": end_users})


def token(user_id: str = "user-ada", instance_id: str = "acme") -> str:
    return hmac_token(HMAC_SECRET, instance_id, user_id)


def as_user(api: RunningAPI, user_id: str = "user-ada", instance_id: str = "acme") -> Any:
    return httpx.AsyncClient(
        base_url=api.base,
        headers={"Authorization": f"Bearer {token(user_id, instance_id)}"},
        timeout=10,
    )


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[RunningAPI]:
    async with running_api(db, feed_settings(tmp_path)) as running:
        yield running


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


async def test_the_feed_pages_newest_first_and_the_counts_match(
    api: RunningAPI, db: Database
) -> None:
    await send_inapp(db, ["n-1", "n-2", "n-3"])
    async with as_user(api) as ada:
        first = (await ada.get("/v1/me/feed", params={"limit": 2})).json()
        assert [i["id"] for i in first["items"]] == ["n-3", "n-2"]
        assert first["items"][0]["title"] == "Your username changed"
        assert first["items"][0]["read"] is False and first["items"][0]["seen"] is False
        assert first["next_cursor"] is not None and first["stream_after"] > 0
        second = (
            await ada.get("/v1/me/feed", params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        assert [i["id"] for i in second["items"]] == ["n-1"] and second["next_cursor"] is None
        assert (await ada.get("/v1/me/feed/counts")).json() == {
            "total": 3, "unread": 3, "unseen": 3,
        }  # fmt: skip
        assert "cursor" in problem(await ada.get("/v1/me/feed?cursor=abc"), 400)["detail"]
        bad = problem(await ada.get("/v1/me/feed?filter=starred"), 422)
        assert bad["errors"][0]["field"] == "filter"
        problem(await ada.get("/v1/me/feed?limit=101"), 422)


async def test_each_mark_moves_the_item_and_the_counts_and_twice_changes_nothing(
    api: RunningAPI, db: Database
) -> None:
    await send_inapp(db, ["n-1", "n-2"])
    async with as_user(api) as ada:

        async def post(path: str) -> dict[str, Any]:
            response = await ada.post(path)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        seen = await post("/v1/me/feed/n-1/seen")
        assert seen["changed"] and seen["item"]["seen"] and not seen["item"]["read"]
        assert seen["counts"] == {"total": 2, "unread": 2, "unseen": 1}
        read = await post("/v1/me/feed/n-1/read")
        assert read["changed"] and read["item"]["read"] and read["position"] > seen["position"]
        assert read["counts"] == {"total": 2, "unread": 1, "unseen": 1}
        again = await post("/v1/me/feed/n-1/read")
        assert not again["changed"] and again["position"] is None
        assert again["counts"] == read["counts"]
        unread = await post("/v1/me/feed/n-1/unread")
        assert unread["changed"] and not unread["item"]["read"]
        assert unread["counts"]["unread"] == 2

        archived = await post("/v1/me/feed/n-2/archive")
        assert archived["item"]["archived"] and archived["counts"]["total"] == 1
        listed = (await ada.get("/v1/me/feed", params={"filter": "archived"})).json()
        assert [i["id"] for i in listed["items"]] == ["n-2"]
        back = await post("/v1/me/feed/n-2/unarchive")
        assert not back["item"]["archived"] and back["counts"]["total"] == 2
        listed = (await ada.get("/v1/me/feed", params={"filter": "archived"})).json()
        assert listed["items"] == []
        problem(await ada.post("/v1/me/feed/n-1/star"), 404)  # no such mark
    events = await api.events(aggregate_ids=("n-1",))
    assert [e.event_type for e in events][2:] == [
        "notification.seen", "notification.read", "notification.unread",
    ]  # fmt: skip
    assert {e.creator for e in events[2:]} == {"end-user:user-ada"}


async def test_read_all_reads_every_unread_item_once(api: RunningAPI, db: Database) -> None:
    await send_inapp(db, ["n-1", "n-2", "n-3"])
    async with as_user(api) as ada:
        assert (await ada.post("/v1/me/feed/n-2/read")).status_code == 200
        first = await ada.post("/v1/me/feed/read-all")
        assert first.status_code == 200
        assert first.json() == {"read": 2, "counts": {"total": 3, "unread": 0, "unseen": 0}}
        assert (await ada.post("/v1/me/feed/read-all")).json()["read"] == 0
        page = (await ada.get("/v1/me/feed")).json()
        assert all(item["read"] for item in page["items"])
    assert await api.count(event_types=("notification.read",)) == 3


async def test_no_token_or_a_bad_one_is_401_and_keys_out_of_reach_503(
    api: RunningAPI, db: Database
) -> None:
    await send_inapp(db, ["n-1"])
    async with api.http() as anonymous:
        missing = await anonymous.get("/v1/me/feed")
        assert "no token" in problem(missing, 401)["detail"]
        assert missing.headers["www-authenticate"].startswith("Bearer")
        forged = token().rsplit(".", 1)[0] + "." + "0" * 64
        problem(await anonymous.get("/v1/me/feed/counts", params={"token": forged}), 401)
        problem(await anonymous.post("/v1/me/feed/read-all", params={"token": "junk"}), 401)
        api_key = await api.key("acme")  # an API key is not an end user's token
        problem(
            await anonymous.get("/v1/me/feed", headers={"Authorization": f"Bearer {api_key}"}),
            401,
        )
        expired = jwt.encode(
            {"sub": "user-ada", "instance": "acme", "exp": int(time.time()) - 3600},
            JWT_SECRET, algorithm="HS256",
        )  # fmt: skip
        assert (
            "expired"
            in problem(await anonymous.get("/v1/me/feed", params={"token": expired}), 401)["detail"]
        )

        # ?token= where a header cannot be set, and an HS256 JWT: both sign ada in.
        by_query = await anonymous.get("/v1/me/feed/counts", params={"token": token()})
        assert by_query.json()["total"] == 1
        fresh = jwt.encode(
            {"sub": "user-ada", "instance": "acme", "exp": int(time.time()) + 300},
            JWT_SECRET, algorithm="HS256",
        )  # fmt: skip
        by_jwt = await anonymous.get("/v1/me/feed", headers={"Authorization": f"Bearer {fresh}"})
        assert [i["id"] for i in by_jwt.json()["items"]] == ["n-1"]

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signed = jwt.encode(
            {"sub": "user-ada", "instance": "initech", "exp": int(time.time()) + 300},
            key, algorithm="RS256", headers={"kid": "k1"},
        )  # fmt: skip
        down = await anonymous.get("/v1/me/feed", headers={"Authorization": f"Bearer {signed}"})
        problem(down, 503)
        assert down.headers["retry-after"]
    assert await api.count(event_types=("notification.read",)) == 0


async def test_a_user_never_sees_or_marks_another_users_or_instances_items(
    api: RunningAPI, db: Database
) -> None:
    await send_inapp(db, ["n-ada"], user_id="user-ada")
    await send_inapp(db, ["n-bob"], user_id="user-bob")
    await send_inapp(db, ["n-ada-globex"], user_id="user-ada", instance_id="globex")
    async with (
        as_user(api) as ada,
        as_user(api, "user-bob") as bob,
        as_user(api, "user-ada", "globex") as ada_globex,
    ):
        for client, mine in ((ada, "n-ada"), (bob, "n-bob"), (ada_globex, "n-ada-globex")):
            page = (await client.get("/v1/me/feed")).json()
            assert [i["id"] for i in page["items"]] == [mine]
            assert (await client.get("/v1/me/feed/counts")).json()["total"] == 1
        for client, theirs in ((bob, "n-ada"), (ada_globex, "n-ada"), (ada, "n-ada-globex")):
            for action in ("seen", "read", "unread", "archive", "unarchive"):
                body = problem(await client.post(f"/v1/me/feed/{theirs}/{action}"), 404)
                assert theirs in body["detail"]
        problem(await ada.post("/v1/me/feed/no-such-item/read"), 404)
        assert (await bob.post("/v1/me/feed/read-all")).json()["read"] == 1
        assert (await ada.get("/v1/me/feed/counts")).json()["unread"] == 1
    assert [e.aggregate_id for e in await api.events(event_types=("notification.read",))] == [
        "n-bob"
    ]


# --- live: the stream and the long-poll over the socket ---------------------------


async def sse_events(response: httpx.Response, wanted: int, into: list[tuple[str, int]]) -> None:
    """Read `event:`/`id:` pairs off a live SSE body until `wanted` items or marks came."""
    kind: str | None = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("id: ") and kind is not None:
            into.append((kind, int(line.removeprefix("id: "))))
        elif line == "":
            kind = None
            if len([k for k, _ in into if k != "counts"]) >= wanted:
                return


async def test_a_stream_killed_mid_way_resumes_by_last_event_id_without_gap_or_duplicate(
    api: RunningAPI, db: Database
) -> None:
    await send_inapp(db, ["n-0"])
    await send_inapp(db, ["b-0"], user_id="user-bob")
    got: list[tuple[str, int]] = []
    async with as_user(api) as ada:
        start = (await ada.get("/v1/me/feed")).json()["stream_after"]

        async def writer() -> None:
            for i in range(1, 7):
                await send_inapp(db, [f"n-{i}"], add_user=False)
                await send_inapp(db, [f"b-{i}"], user_id="user-bob", add_user=False)
                if i % 2 == 0:
                    assert (await ada.post(f"/v1/me/feed/n-{i}/read")).status_code == 200

        writing = asyncio.create_task(writer())
        async with ada.stream("GET", "/v1/me/stream", params={"after": start}) as first:
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            await asyncio.wait_for(sse_events(first, 3, got), TIMEOUT)
        # The connection is gone mid-stream: the server lets go of it.
        await wait_for(
            lambda: _true(api.feeds.hub.connections("acme", "user-ada") == 0),
            "the server to release the killed stream", TIMEOUT,
        )  # fmt: skip
        await asyncio.wait_for(writing, TIMEOUT * 4)
        expected = await feed_positions(db, "user-ada", after=start)
        last_id = got[-1][1]
        async with ada.stream(
            "GET", "/v1/me/stream", headers={"Last-Event-ID": str(last_id)}
        ) as second:
            await asyncio.wait_for(sse_events(second, len(expected), got), TIMEOUT)
    items_and_marks = [position for kind, position in got if kind != "counts"]
    assert items_and_marks == expected  # every one, in order, once
    assert {kind for kind, _ in got} == {"message", "state", "counts"}
    assert len(expected) == 6 + 3


async def _true(value: bool) -> bool:
    return value


async def feed_positions(db: Database, user_id: str, *, after: int) -> list[int]:
    """The positions of the user's in-app sends and marks on the log, after `after`."""
    async with db.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT position FROM tidings.events WHERE position > %s"
                " AND aggregate_type = 'notification' AND instance_id = 'acme'"
                " AND (event_type = 'notification.sent' AND payload->'inapp'->>'user_id' = %s"
                "      OR event_type LIKE 'notification.%%' AND payload->>'user_id' = %s"
                "         AND event_type NOT IN ('notification.requested', 'notification.sent'))"
                " ORDER BY position",
                (after, user_id, user_id),
            )
        ).fetchall()
    return [int(r[0]) for r in rows]


async def test_a_long_poll_answers_at_once_on_arrival_or_204_at_the_deadline(
    api: RunningAPI, db: Database
) -> None:
    await send_inapp(db, ["n-1"])
    async with as_user(api) as ada:
        start = (await ada.get("/v1/me/feed")).json()["stream_after"]
        before = (await ada.get("/v1/me/poll", params={"after": 0, "wait": "5s"})).json()
        assert [e["event"] for e in before["events"]] == ["message", "counts"]
        assert before["events"][0]["data"]["id"] == "n-1"
        empty = await ada.get("/v1/me/poll", params={"after": start, "wait": "0.3"})
        assert empty.status_code == 204 and empty.content == b""

        polling = asyncio.create_task(
            ada.get("/v1/me/poll", params={"after": start, "wait": "20s"})
        )
        await send_inapp(db, ["n-2"], add_user=False)
        arrived = await asyncio.wait_for(polling, TIMEOUT)
        assert arrived.status_code == 200
        body = arrived.json()
        assert [e["data"]["id"] for e in body["events"] if e["event"] == "message"] == ["n-2"]
        assert body["after"] == body["events"][-1]["id"] > start
        problem(await ada.get("/v1/me/poll", params={"wait": "forever"}), 400)
        problem(await ada.get("/v1/me/poll", params={"after": "x"}), 400)
        problem(await ada.get("/v1/me/stream", headers={"Last-Event-ID": "x"}), 400)
    async with api.http() as anonymous:
        problem(await anonymous.get("/v1/me/stream"), 401)
        problem(await anonymous.get("/v1/me/poll"), 401)
    assert api.feeds.hub.connected() == 0


async def test_serve_answers_the_inbox_page_with_its_csp(api: RunningAPI) -> None:
    async with api.http() as anonymous:
        page = await anonymous.get("/inbox")
    assert page.status_code == 200
    assert page.headers["content-type"] == INBOX_MEDIA_TYPE
    assert page.headers["content-security-policy"] == INBOX_CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.content == inbox_html() and b"<title>Inbox" in page.content
    assert "/inbox" not in json.dumps(openapi_document()["paths"])


async def test_the_served_inbox_shows_the_feed_live_and_marks_read_in_chromium(
    api: RunningAPI, db: Database, browser: Any
) -> None:
    """The page from `tidings serve` in a real headless Chromium (selenium in a thread:
    the server runs in this event loop)."""
    await send_inapp(db, ["n-1"])
    await asyncio.to_thread(browser.get, f"{api.base}/inbox#token={token()}")

    def text_of(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    def item_ids() -> list[str]:
        found = browser.find_elements(By.CSS_SELECTOR, "#feed [data-id]")
        return [str(node.get_attribute("data-id")) for node in found]

    async def badge_is(count: str) -> bool:
        return await asyncio.to_thread(text_of, "badge") == count

    await wait_for(lambda: badge_is("1"), "the page to show the unread badge", TIMEOUT)
    assert await asyncio.to_thread(item_ids) == ["n-1"]

    await send_inapp(db, ["n-2"], add_user=False)
    await wait_for(lambda: badge_is("2"), "the new item to arrive live", 2)
    assert await asyncio.to_thread(item_ids) == ["n-2", "n-1"]

    def click_mark_read() -> None:
        node = browser.find_element(By.CSS_SELECTOR, '#feed [data-id="n-2"]')
        node.find_element(By.CSS_SELECTOR, "button.mark-read").click()

    await asyncio.to_thread(click_mark_read)
    await wait_for(lambda: badge_is("1"), "the badge to drop after marking read", TIMEOUT)
    read = await api.events(aggregate_ids=("n-2",), event_types=("notification.read",))
    assert [e.creator for e in read] == ["end-user:user-ada"]
    assert await asyncio.to_thread(text_of, "error") == ""
