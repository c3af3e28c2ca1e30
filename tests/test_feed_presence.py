"""Presence across serve processes, the hub's metrics, and the hub while it cannot run.

Two serve processes (two uvicorns with their own hubs on one database) each
write their own connections to the shared presence; GET /v1/presence/{user_id}
on either answers for both. A process that stops beating expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.api_helpers import RunningAPI, running_api
from tests.cli import tidings
from tests.feed_helpers import sent_inapp
from tests.ops_helpers import free_port, running, serving, wait_for
from tests.outage_helpers import ThrowawayPostgres, throwaway_pg  # noqa: F401 (fixture)
from tests.test_api_feeds import HMAC_SECRET, PROBLEM, token
from tests.test_api_process import env_for
from tests.test_feed_transports import metrics_of, settings_with, ws_url
from tidings.config import DatabaseSettings
from tidings.eventstore import Database, open_database
from tidings.feeds.hub import FeedHub, StreamClosed
from tidings.feeds.runtime import FeedRuntime

TIMEOUT = 20.0


async def presence(api: RunningAPI, key: str, user_id: str = "user-ada") -> dict[str, Any]:
    async with api.http(key) as client:
        answer = await client.get(f"/v1/presence/{user_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def until_presence(
    api: RunningAPI, key: str, holds: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def check() -> bool:
        found.update(await presence(api, key))
        return holds(found)

    await wait_for(check, what, TIMEOUT)
    return found


async def test_a_user_connected_to_two_processes_shows_on_both_until_each_goes(
    db: Database, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, presence_heartbeat=timedelta(seconds=1))
    async with running_api(db, settings) as one, running_api(db, settings) as two:
        key = await one.key("acme", "notifications:read")
        assert (await presence(two, key)) == {
            "instance_id": "acme", "user_id": "user-ada", "connected": False,
            "connections": 0, "processes": [],
        }  # fmt: skip
        async with (
            connect(ws_url(one, token=token())) as phone,
            httpx.AsyncClient(base_url=two.base, timeout=30) as laptop,
            laptop.stream("GET", "/v1/me/stream", params={"token": token()}) as stream,
        ):
            assert stream.status_code == 200
            both = await until_presence(
                two, key, lambda p: p["connections"] == 2, "both connections in the presence"
            )
            assert both["connected"] is True
            by_process = {p["process_id"]: p for p in both["processes"]}
            assert set(by_process) == {one.feeds.presence.process_id, two.feeds.presence.process_id}
            assert by_process[one.feeds.presence.process_id]["transports"] == {"ws": 1}
            assert by_process[two.feeds.presence.process_id]["transports"] == {"sse": 1}
            assert all(p["connections"] == 1 and p["pid"] > 0 for p in both["processes"])

            # A message reaches both devices.
            [sent] = await sent_inapp(db.store, ["n-1"])
            first = json.loads(await asyncio.wait_for(phone.recv(), TIMEOUT))
            assert first["id"] == sent.position
            lines = stream.aiter_lines()  # kept: leaving it would close the stream
            while await asyncio.wait_for(anext(lines), TIMEOUT) != "event: message":
                pass
            assert await asyncio.wait_for(anext(lines), TIMEOUT) == f"id: {sent.position}"

            gauge = await metrics_of(one)
            assert gauge[("tidings_feed_connections", frozenset({("transport", "ws")}))] == 1
            assert gauge[("tidings_feed_connections", frozenset({("transport", "sse")}))] == 0

            # Another instance's key does not see acme's user; a key without the scope is 403.
            globex = await one.key("globex", "notifications:read")
            assert (await presence(one, globex))["connected"] is False
            writer = await one.key("acme", "events:write")
            async with one.http(writer) as client:
                refused = await client.get("/v1/presence/user-ada")
            assert refused.status_code == 403
            assert refused.headers["content-type"] == PROBLEM
            assert "notifications:read" in refused.json()["detail"]

            await phone.close()
            left = await until_presence(
                one, key, lambda p: p["connections"] == 1, "the phone to leave the presence"
            )
            assert [p["process_id"] for p in left["processes"]] == [two.feeds.presence.process_id]
        await until_presence(one, key, lambda p: not p["connected"], "the laptop to leave too")
        two_id = two.feeds.presence.process_id
    async with db.pool.connection() as conn:  # a clean stop takes the process's rows
        rows = await (
            await conn.execute(
                "SELECT count(*) FROM tidings.feed_processes WHERE process_id = %s", (two_id,)
            )
        ).fetchone()
    assert rows is not None and rows[0] == 0


async def test_a_process_that_stops_beating_expires_and_one_cleaned_away_writes_again(
    db: Database, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, presence_heartbeat=timedelta(seconds=1))
    async with db.pool.connection() as conn:  # a process killed a minute ago, ada on it
        await conn.execute(
            "INSERT INTO tidings.feed_processes VALUES ('dead:1:x', 'dead', 1, now() - '1h'::"
            "interval, now() - '1m'::interval, now() - '30s'::interval)"
        )
        await conn.execute(
            "INSERT INTO tidings.feed_presence VALUES ('acme', 'user-ada', 'dead:1:x', 3,"
            " '{\"ws\": 3}', now() - '1h'::interval)"
        )
    async with running_api(db, settings) as api:
        key = await api.key("acme", "notifications:read")
        assert (await presence(api, key))["connected"] is False  # expired: not shown

        async def dead_row_gone() -> bool:
            async with db.pool.connection() as conn:
                row = await (
                    await conn.execute("SELECT count(*) FROM tidings.feed_presence")
                ).fetchone()
            return row is not None and row[0] == 0

        await wait_for(dead_row_gone, "the live process's heartbeat to clean the dead", TIMEOUT)

        async with connect(ws_url(api, token=token())):
            await until_presence(api, key, lambda p: p["connected"], "ada to show")
            # Its own row is cleaned away (as after an outage longer than the expiry):
            # the next heartbeat writes its presence again, in full.
            async with db.pool.connection() as conn:
                await conn.execute(
                    "DELETE FROM tidings.feed_processes WHERE process_id = %s",
                    (api.feeds.presence.process_id,),
                )
            assert (await presence(api, key))["connected"] is False
            again = await until_presence(
                api, key, lambda p: p["connected"], "the process to write its presence again"
            )
            assert again["processes"][0]["transports"] == {"ws": 1}


async def test_the_hub_counts_what_it_fans_out_resets_and_its_lag(
    db: Database, tmp_path: Path
) -> None:
    async with running_api(db, settings_with(tmp_path)) as api:
        assert (await metrics_of(api))[("tidings_feed_hub_up", frozenset())] == 1
        async with connect(ws_url(api, token=token())) as conn:
            await wait_for(lambda: _true(api.feeds.hub.connected() == 1), "the WebSocket", TIMEOUT)
            await sent_inapp(db.store, ["n-1", "n-2"])
            await asyncio.wait_for(conn.recv(), TIMEOUT)
            async with connect(ws_url(api, token=token(), after=2**60)) as stale:
                reset = json.loads(await asyncio.wait_for(stale.recv(), TIMEOUT))
            assert reset["event"] == "reset"

            async def counted() -> bool:
                samples = await metrics_of(api)
                return samples[("tidings_feed_events_fanned_out_total", frozenset())] >= 3

            await wait_for(counted, "the fan-out counter", TIMEOUT)
        samples = await metrics_of(api)
    assert samples[("tidings_feed_events_fanned_out_total", frozenset())] == 3  # 2 items, 1 counts
    assert samples[("tidings_feed_resets_total", frozenset())] == 1
    assert samples[("tidings_feed_fanout_lag_seconds_count", frozenset())] >= 2
    assert samples[("tidings_feed_slow_consumers_total", frozenset())] == 0


async def test_streams_answer_503_while_the_hub_cannot_start_and_work_once_it_does(
    throwaway_pg: ThrowawayPostgres,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database is down when the server starts: the hub retries; meanwhile the
    stream, the poll and the WebSocket say so at once instead of waiting for ever."""
    caplog.set_level(logging.INFO, logger="tidings.feeds")
    settings = settings_with(tmp_path)
    async with open_database(DatabaseSettings(url=throwaway_pg.conninfo)) as db:
        throwaway_pg.stop()
        async with running_api(db, settings) as api:
            async with httpx.AsyncClient(base_url=api.base, timeout=30) as client:
                for path in ("/v1/me/stream", "/v1/me/poll"):
                    answer = await client.get(path, params={"token": token()})
                    assert answer.status_code == 503, answer.text
                    assert answer.headers["content-type"] == PROBLEM
                    assert answer.headers["retry-after"]
                    assert "try again" in answer.json()["detail"]
                async with connect(ws_url(api, token=token())) as conn:
                    closed = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
                    await conn.wait_closed()
                assert closed["event"] == "closed"
                assert closed["data"]["reason"] in ("hub_not_running", "database_unavailable")
                assert conn.close_code == 1013
                assert (await metrics_of(api))[("tidings_feed_hub_up", frozenset())] == 0

                throwaway_pg.start()

                async def streams() -> bool:
                    answer = await client.get(
                        "/v1/me/poll", params={"token": token(), "after": 0, "wait": "0.1"}
                    )
                    return answer.status_code == 204

                await wait_for(streams, "the hub to start once the database is back", 60)
                await sent_inapp(db.store, ["n-1"])
                answer = await client.get(
                    "/v1/me/poll", params={"token": token(), "after": 0, "wait": "5"}
                )
                assert [e["event"] for e in answer.json()["events"]] == ["message", "counts"]
    said = [r.getMessage() for r in caplog.records if r.name == "tidings.feeds"]
    assert any(m.startswith("feed hub: the database is unreachable since") for m in said)
    assert any(m.startswith("feed hub: the database is reachable again") for m in said)


async def _true(value: bool) -> bool:
    return value


async def test_two_serve_processes_a_user_on_both_and_one_killed(
    conninfo: str, db: Database, tmp_path: Path
) -> None:
    """Real `tidings serve` processes: presence shows the user on both; after a SIGKILL
    the dead one expires within three heartbeats, and the device that was on it
    resumes on the live one by its cursor, losing nothing."""
    env = env_for(conninfo, tmp_path, TIDINGS_END_USERS_HMAC_SECRET=HMAC_SECRET,
                  TIDINGS_INAPP_PRESENCE_HEARTBEAT="1s")  # fmt: skip
    made = tidings("apikeys", "create", "--instance", "acme", "--scope", "notifications:read",
                   env=env)  # fmt: skip
    key = made.stdout.splitlines()[-1]
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    with (
        running(["serve", "--addr", f"127.0.0.1:{ports[0]}"], env, tmp_path / "one") as one,
        running(["serve", "--addr", f"127.0.0.1:{ports[1]}"], env, tmp_path / "two") as two,
    ):
        await serving(bases[0], one)
        await serving(bases[1], two)
        urls = [b.replace("http://", "ws://") + f"/v1/me/ws?token={token()}" for b in bases]
        async with httpx.AsyncClient(
            base_url=bases[1], headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as operator:

            async def where() -> dict[str, Any]:
                answer = await operator.get("/v1/presence/user-ada")
                assert answer.status_code == 200, answer.text
                body: dict[str, Any] = answer.json()
                return body

            async def pids_are(pids: set[int]) -> bool:
                return {p["pid"] for p in (await where())["processes"]} == pids

            async with connect(urls[0]) as phone, connect(urls[1]) as laptop:
                await wait_for(
                    lambda: pids_are({one.proc.pid, two.proc.pid}), "ada on both", TIMEOUT
                )
                [first] = await sent_inapp(db.store, ["n-1"])
                for device in (phone, laptop):
                    got = json.loads(await asyncio.wait_for(device.recv(), TIMEOUT))
                    assert (got["event"], got["id"]) == ("message", first.position)
                one.proc.kill()  # no goodbye: its rows stay until they expire
                one.proc.wait(timeout=10)
                await sent_inapp(db.store, ["n-2"])
                await wait_for(lambda: pids_are({two.proc.pid}), "the dead process to expire", 30)
                # The phone lost its server; it resumes on the live one from its cursor.
                async with connect(urls[1] + f"&after={first.position}") as again:
                    got = json.loads(await asyncio.wait_for(again.recv(), TIMEOUT))
                assert got["data"]["id"] == "n-2"
        assert two.stop() == 0, two.stderr()
    assert "Traceback" not in two.stderr()


async def test_a_hub_that_fails_closes_its_streams_with_a_reason_and_starts_again(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the hub (injected: its read fails once while a stream is open) ends
    the streams with `hub_failed`; the runtime starts the hub again and the client
    resumes from its cursor without losing the item."""

    class FailsOnce(FeedHub):
        failed = False

        async def catch_up(self) -> bool:
            if self.connected() and not self.failed:
                self.failed = True
                raise RuntimeError("an injected bug in the hub")
            return await super().catch_up()

    runtime = FeedRuntime(db=db, settings=settings_with(tmp_path))
    runtime.hub = FailsOnce(store=db.store, conninfo=db.conninfo, metrics=runtime.metrics)
    stop = asyncio.Event()
    running = asyncio.create_task(runtime.run(stop))
    try:
        sub = await runtime.hub.subscribe("acme", "user-ada", after=None)
        start = sub.last
        [sent] = await sent_inapp(db.store, ["n-1"])
        with pytest.raises(StreamClosed) as caught:
            await asyncio.wait_for(anext(sub), TIMEOUT)
        assert caught.value.reason == "hub_failed" and caught.value.resume_after == start
        again = await runtime.hub.subscribe("acme", "user-ada", after=start)  # waits for it
        event = await asyncio.wait_for(anext(again), TIMEOUT)
        assert (event.kind, event.position) == ("message", sent.position)
        await again.close()
    finally:
        stop.set()
        await asyncio.wait_for(running, TIMEOUT)
        await runtime.close()
    failed = [r for r in caplog.records if "the feed hub failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
