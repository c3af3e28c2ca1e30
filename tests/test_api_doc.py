"""docs/openapi.json and docs/api.md agree with the API: the schema is the code's,
every endpoint has a curl example, and every curl example works."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

from pydantic import SecretStr

from tests.api_helpers import api_settings, running_api
from tests.feed_helpers import send_inapp
from tidings.api import openapi_document
from tidings.config import EndUserSettings
from tidings.eventstore import Database
from tidings.feeds.end_users import hmac_token
from tidings.notification.direct import direct_notification_id, request_notification_ids

DOCS = Path(__file__).resolve().parent.parent / "docs"


def curl_lines() -> list[str]:
    text = (DOCS / "api.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


def test_openapi_json_is_what_the_code_serves() -> None:
    written = json.loads((DOCS / "openapi.json").read_text())
    assert written == openapi_document(), (
        "docs/openapi.json drifted: run `tidings serve --openapi > docs/openapi.json`"
    )


def test_every_endpoint_has_a_curl_example() -> None:
    lines = curl_lines()
    for path, operations in openapi_document()["paths"].items():
        shown = re.sub(r"\{\w+\}", "$ID", path)
        for method in operations:
            examples = [
                line for line in lines
                if re.search(re.escape(f"127.0.0.1:8080{shown}") + r"(?:[?\"' ]|$)", line)
                and (("-X POST" in line or " -d " in line) == (method == "post"))
            ]  # fmt: skip
            assert examples, f"docs/api.md has no curl example for {method.upper()} {path}"


async def test_the_curl_examples_work(db: Database, tmp_path: Path) -> None:
    lines = curl_lines()
    assert len(lines) >= 7
    secret = "an-hmac-secret-of-thirty-two-bytes!!"
    settings = api_settings(tmp_path).model_copy(
        update={"end_users": EndUserSettings(hmac_secret=SecretStr(secret))}
    )
    # The end user's examples read the feed of a user with one in-app item.
    await send_inapp(db, ["inapp-grace-1"], user_id="user-grace")
    async with running_api(db, settings) as api:
        key = await api.key("acme")
        nid = direct_notification_id(instance_id="acme", idempotency_key="welcome-ada-1")
        token = hmac_token(secret, "acme", "user-grace")
        for line in lines:
            end_user = "/v1/me/" in line
            streams = "/v1/me/stream" in line
            command = line.replace("http://127.0.0.1:8080", api.base).replace(
                "curl -s", "curl -s --fail-with-body" + (" --max-time 3" if streams else ""), 1
            )
            process = await asyncio.create_subprocess_exec(
                "bash", "-c", command,
                env={**os.environ, "KEY": key, "ID": "inapp-grace-1" if end_user else nid,
                     "TOKEN": token},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await process.communicate()
            if streams:  # it streams until curl gives up (28): what came is the test
                assert process.returncode == 28, f"{line}\n{out.decode()}{err.decode()}"
                assert b"event: message\nid: " in out and b"inapp-grace-1" in out
            else:
                assert process.returncode == 0, f"{line}\n{out.decode()}{err.decode()}"
            assert b"824193" not in out, "a plain code is never echoed"
        both = request_notification_ids(
            instance_id="acme",
            idempotency_key="password-changed-ada-7",
            channels=["email", "inapp"],
        )
        sent_to = await api.events(aggregate_ids=tuple(both.values()))
        assert sorted(e.payload["request"]["channel"] for e in sent_to) == ["email", "inapp"]
        view = await api.events(aggregate_ids=(nid,))
        assert [e.event_type for e in view] == ["notification.requested", "notification.canceled"]
        marks = await api.events(aggregate_ids=("inapp-grace-1",))
        assert [e.event_type for e in marks][2:] == [
            "notification.seen", "notification.read", "notification.unread",
            "notification.archived", "notification.unarchived", "notification.read",
        ]  # fmt: skip
