"""The /inbox page as `tidings serve` serves it, in a real headless Chromium.

A new item shows within 2 s of its commit; two tabs of one user stay in step;
after the server restarts the page resumes from its cursor and shows what
arrived meanwhile, once; a refused token says so instead of spinning; a reset
reads the feed again. Selenium runs in a thread: the server and the worker
pool run in the test's event loop (or a `tidings serve` subprocess).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from pydantic import SecretStr
from selenium.webdriver.common.by import By

from tests.api_helpers import RunningAPI, running_api
from tests.browser import browser as browser
from tests.feed_helpers import send_inapp, sent_inapp
from tests.ops_helpers import Process, free_port, serving, wait_for
from tests.test_api_feeds import HMAC_SECRET, JWT_SECRET, feed_settings, token
from tests.test_api_process import env_for
from tidings.config import Settings
from tidings.eventstore import Database
from tidings.feeds.operations import mark, prune_feed

TIMEOUT = 20.0
LIVE_WITHIN = 2.0  # seconds from the append's commit to the row on the page (issue 14)

# One round trip for everything a test looks at.
STATE = """
const rows = [...document.querySelectorAll('#feed [data-id]')];
return {
  badge: document.getElementById('badge').textContent,
  items: rows.map((n) => n.dataset.id),
  unread: rows.filter((n) => n.classList.contains('unread')).map((n) => n.dataset.id),
  status: document.getElementById('status').textContent,
  error: document.getElementById('error').textContent,
  older: getComputedStyle(document.getElementById('more')).display !== 'none',
};
"""
# How often the page has read the feed (GET /v1/me/feed): a resume reads none.
FEED_READS = """
return performance.getEntriesByType('resource')
  .filter((e) => new URL(e.name).pathname === '/v1/me/feed').length;
"""
# Notes the wall-clock time each row first appears (the DOM's own clock, no polling delay).
WATCH_ARRIVALS = """
window.arrivals = window.arrivals || {};
const note = () => {
  for (const n of document.querySelectorAll('#feed [data-id]')) {
    if (!(n.dataset.id in window.arrivals)) { window.arrivals[n.dataset.id] = Date.now(); }
  }
};
note();
new MutationObserver(note).observe(document.getElementById('feed'), {childList: true});
"""


class Tab:
    """One tab of the browser; every call switches to it first (one driver, one lock)."""

    def __init__(self, driver: Any, handle: str, lock: threading.Lock) -> None:
        self.driver = driver
        self.handle = handle
        self._lock = lock

    def _run(self, action: Callable[[Any], Any]) -> Any:
        with self._lock:
            if self.driver.current_window_handle != self.handle:
                self.driver.switch_to.window(self.handle)
            return action(self.driver)

    async def do(self, action: Callable[[Any], Any]) -> Any:
        return await asyncio.to_thread(self._run, action)

    async def open(self, url: str) -> None:
        await self.do(lambda d: d.get(url))

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.do(lambda d: d.execute_script(STATE))
        return state

    async def until(
        self, what: str, check: Callable[[dict[str, Any]], bool], seconds: float = TIMEOUT
    ) -> dict[str, Any]:
        """Wait until the page's state passes `check`; the state it passed with."""
        last: dict[str, Any] = {}

        async def holds() -> bool:
            nonlocal last
            last = await self.state()
            return check(last)

        try:
            await wait_for(holds, what, seconds)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the page shows {last}") from None
        return last

    async def mark_read(self, notification_id: str) -> None:
        def click(d: Any) -> None:
            row = d.find_element(By.CSS_SELECTOR, f'#feed [data-id="{notification_id}"]')
            row.find_element(By.CSS_SELECTOR, "button.mark-read").click()

        await self.do(click)


def script_errors(driver: Any) -> list[dict[str, Any]]:
    """What the page's JavaScript threw (refused requests are the network's, not errors)."""
    return [e for e in driver.get_log("browser") if e.get("source") == "javascript"]


def first_tab(driver: Any) -> Tab:
    return Tab(driver, driver.current_window_handle, threading.Lock())


def new_tab(tab: Tab) -> Tab:
    def opened(d: Any) -> str:
        d.switch_to.new_window("tab")
        return str(d.current_window_handle)

    with tab._lock:
        handle = opened(tab.driver)
    return Tab(tab.driver, handle, tab._lock)


def shows(
    items: list[str], badge: int, unread: list[str] | None = None
) -> Callable[[dict[str, Any]], bool]:
    """A check: exactly these rows (no duplicate), this badge, these unread (default: all)."""

    def check(state: dict[str, Any]) -> bool:
        return bool(
            state["items"] == items
            and state["badge"] == str(badge)
            and state["unread"] == (items if unread is None else unread)
        )

    return check


def live(state: dict[str, Any]) -> bool:
    return bool(state["status"] == "live")


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[RunningAPI]:
    async with running_api(db, feed_settings(tmp_path)) as running:
        yield running


async def sent_at(api: RunningAPI, notification_id: str) -> datetime:
    """When the worker's notification.sent was written (its transaction, so before its commit)."""
    [sent] = await api.events(aggregate_ids=(notification_id,), event_types=("notification.sent",))
    return sent.created_at


def arrival(notification_id: str, driver: Any) -> float:
    """When the row first showed (ms since the epoch), as WATCH_ARRIVALS noted it."""
    return float(driver.execute_script("return arrivals[arguments[0]]", notification_id))


async def test_a_new_item_shows_within_2_s_of_its_commit(
    api: RunningAPI, db: Database, browser: Any
) -> None:
    await send_inapp(db, ["n-0"])
    tab = first_tab(browser)
    await tab.open(f"{api.base}/inbox#token={token()}")
    await tab.until("the feed and a live stream", lambda s: shows(["n-0"], 1)(s) and live(s))
    await tab.do(lambda d: d.execute_script(WATCH_ARRIVALS))

    delays: list[float] = []
    expected = ["n-0"]
    for i in range(1, 4):  # three in a row: each one, not just the first, is quick
        nid = f"n-{i}"
        await send_inapp(db, [nid], add_user=False)  # the real worker pool sends it in-app
        expected.insert(0, nid)
        await tab.until(f"{nid} to arrive live", shows(expected, len(expected)))
        arrived = await tab.do(partial(arrival, nid))
        committed = await sent_at(api, nid)
        delays.append(arrived / 1000 - committed.timestamp())
    print(f"inbox live delays (commit -> row on the page): {[f'{d:.3f}s' for d in delays]}")
    assert max(delays) <= LIVE_WITHIN, delays
    assert (await tab.state())["error"] == ""
    assert script_errors(browser) == []


async def test_marking_read_in_one_tab_updates_the_other_live(
    api: RunningAPI, db: Database, browser: Any
) -> None:
    await send_inapp(db, ["n-1", "n-2", "n-3"])
    one = first_tab(browser)
    await one.open(f"{api.base}/inbox#token={token()}")
    two = await asyncio.to_thread(new_tab, one)
    await two.open(f"{api.base}/inbox#token={token()}")
    everything = ["n-3", "n-2", "n-1"]
    for tab in (one, two):
        await tab.until("the feed and a live stream", lambda s: shows(everything, 3)(s) and live(s))

    await one.mark_read("n-2")
    await two.until("the other tab to follow", shows(everything, 2, unread=["n-3", "n-1"]))
    await one.until("this tab to agree", shows(everything, 2, unread=["n-3", "n-1"]))

    await two.mark_read("n-3")
    await one.until("the first tab to follow", shows(everything, 1, unread=["n-1"]))

    # Another device marks it through the API: both tabs follow.
    async with api.http() as device:
        auth = {"Authorization": f"Bearer {token()}"}
        assert (await device.post("/v1/me/feed/n-1/read", headers=auth)).status_code == 200
    for tab in (one, two):
        await tab.until("every tab to show all read", shows(everything, 0, unread=[]))
        assert (await tab.state())["error"] == ""
    assert script_errors(browser) == []
    reads = await api.events(event_types=("notification.read",))
    assert sorted(e.aggregate_id for e in reads) == ["n-1", "n-2", "n-3"]  # once each


async def test_after_a_server_restart_the_page_resumes_and_shows_what_came_meanwhile_once(
    db: Database, conninfo: str, tmp_path: Path, browser: Any
) -> None:
    """`tidings serve` as a subprocess, stopped and started again on the same port."""
    await send_inapp(db, ["n-1", "n-2"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(conninfo, tmp_path, TIDINGS_END_USERS_HMAC_SECRET=HMAC_SECRET)

    def serve(name: str) -> Process:
        return Process(["serve", "--addr", f"127.0.0.1:{port}"], env, tmp_path / name)

    first = serve("serve-1")
    try:
        await serving(base, first)
        tab = first_tab(browser)
        await tab.open(f"{base}/inbox#token={token()}")
        await tab.until(
            "the feed and a live stream", lambda s: shows(["n-2", "n-1"], 2)(s) and live(s)
        )
    finally:
        stopped = await asyncio.to_thread(first.stop)
    assert stopped == 0, first.stderr()
    await tab.until("the page to notice", lambda s: s["status"] != "live")

    # While no server answers: the worker pool sends two more, another device reads one.
    await send_inapp(db, ["n-3", "n-4"], add_user=False)
    await mark(
        db.store, instance_id="acme", user_id="user-ada", notification_id="n-1", action="read"
    )

    second = serve("serve-2")
    try:
        await serving(base, second)
        everything = ["n-4", "n-3", "n-2", "n-1"]
        state = await tab.until(
            "the page to resume with what came meanwhile",
            lambda s: shows(everything, 3, unread=everything[:3])(s) and live(s),
        )
        assert state["error"] == ""
        # It resumed from its cursor: the feed was read once, when the page opened.
        assert await tab.do(lambda d: d.execute_script(FEED_READS)) == 1

        await send_inapp(db, ["n-5"], add_user=False)
        await tab.until(
            "the stream to be live again", shows(["n-5", *everything], 4, ["n-5", *everything[:3]])
        )
    finally:
        stopped = await asyncio.to_thread(second.stop)
    assert stopped == 0, second.stderr()
    assert script_errors(browser) == []


def signed_out(words: str) -> Callable[[dict[str, Any]], bool]:
    """A check: the page says it is signed out, with `words` in its message, and shows nothing."""

    def check(state: dict[str, Any]) -> bool:
        return (
            state["status"] == "signed out"
            and words in state["error"]
            and state["items"] == []
            and state["badge"] == "0"
        )

    return check


async def sign_in(tab: Tab, value: str) -> None:
    def typed(d: Any) -> None:
        field = d.find_element(By.ID, "token")
        field.clear()
        field.send_keys(value)
        d.find_element(By.CSS_SELECTOR, "#signin button").click()

    await tab.do(typed)


def hs256(seconds: int) -> str:
    """An end-user JWT for ada that expires `seconds` from now (negative: expired)."""
    expires = datetime.now(UTC) + timedelta(seconds=seconds)
    claims = {"sub": "user-ada", "instance": "acme", "exp": int(expires.timestamp())}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def page_left_by_its_server(
    db: Database, tmp_path: Path, browser: Any
) -> tuple[Settings, int, Tab]:
    """The page open and live on n-1, then its server gone: its settings, port and tab."""
    await send_inapp(db, ["n-1"])
    settings = feed_settings(tmp_path)
    port = free_port()
    tab = first_tab(browser)
    async with running_api(db, settings, port=port) as api:
        await tab.open(f"{api.base}/inbox#token={token()}")
        await tab.until("the feed and a live stream", lambda s: shows(["n-1"], 1)(s) and live(s))
    await tab.until("the page to notice", lambda s: s["status"] != "live")
    return settings, port, tab


async def test_a_token_refused_says_so_and_stops_instead_of_reconnecting(
    db: Database, tmp_path: Path, browser: Any
) -> None:
    """The operator rotates the HMAC secret while the page is open (revoking every such
    token) and restarts the server: the page's reconnect is refused (401)."""
    settings, port, tab = await page_left_by_its_server(db, tmp_path, browser)

    rotated = settings.end_users.model_copy(update={"hmac_secret": SecretStr("another-" * 5)})
    async with running_api(db, settings.model_copy(update={"end_users": rotated}), port=port):
        await tab.until(
            "a clear message instead of reconnecting",
            signed_out("refused your token (the token's signature does not match)"),
        )
        # Signed out for good: a reload does not try the token again.
        await tab.do(lambda d: d.refresh())
        state = await tab.until("the page to load again", lambda s: s["status"] == "signed out")
        assert state["error"] == "" and state["items"] == []

        # An expired JWT typed in: told so, at once.
        await sign_in(tab, hs256(-3600))
        await tab.until("the expiry to be named", signed_out("the token has expired"))
        await sign_in(tab, hs256(600))
        await tab.until("a good token to open the feed", lambda s: shows(["n-1"], 1)(s) and live(s))
    assert script_errors(browser) == []


async def test_a_reset_reads_the_feed_again(db: Database, tmp_path: Path, browser: Any) -> None:
    """Retention drops items after the page's cursor while the server is away: the resumed
    stream says `event: reset`, and the page reads the feed again instead of keeping a
    row the feed no longer has."""
    settings, port, tab = await page_left_by_its_server(db, tmp_path, browser)

    await send_inapp(db, ["n-2"], add_user=False)
    dropped = await prune_feed(db.store, retention=timedelta(0), now=datetime.now(UTC))
    assert dropped == 2
    await send_inapp(db, ["n-3"], add_user=False)

    async with running_api(db, settings, port=port):
        await tab.until("the feed read again", lambda s: shows(["n-3"], 1)(s) and live(s))
        assert await tab.do(lambda d: d.execute_script(FEED_READS)) == 2
        assert (await tab.state())["error"] == ""
        assert script_errors(browser) == []


@contextmanager
def unavailable(port: int) -> Iterator[list[str]]:
    """What a load balancer answers while the service restarts: 503 to everything, on
    127.0.0.1:`port`. Yields the paths asked for."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path.split("?")[0])
            body = b'{"status": 503, "detail": "restarting"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_after_503s_the_page_reopens_its_stream_from_its_cursor(
    db: Database, tmp_path: Path, browser: Any
) -> None:
    """A 503 makes the browser give up on an EventSource for good: the page itself opens
    a new stream after the last position it saw once the server answers again."""
    await send_inapp(db, ["n-1"])
    settings = feed_settings(tmp_path)
    port = free_port()
    tab = first_tab(browser)
    async with running_api(db, settings, port=port) as api:
        await tab.open(f"{api.base}/inbox#token={token()}")
        await tab.until("the feed and a live stream", lambda s: shows(["n-1"], 1)(s) and live(s))
        await send_inapp(db, ["n-2"], add_user=False)  # the page's cursor moves past it
        await tab.until("n-2 live", shows(["n-2", "n-1"], 2))

    with unavailable(port) as asked:
        await send_inapp(db, ["n-3"], add_user=False)
        await mark(
            db.store, instance_id="acme", user_id="user-ada", notification_id="n-2", action="read"
        )

        async def tried_twice() -> bool:  # the stream, then the page's own check
            return asked.count("/v1/me/stream") >= 1 and "/v1/me/feed/counts" in asked

        await wait_for(tried_twice, "the page to try the server while it answers 503", TIMEOUT)
        assert (await tab.state())["status"] == "reconnecting…"

    async with running_api(db, settings, port=port):
        state = await tab.until(
            "the page to reopen its stream after its cursor",
            lambda s: shows(["n-3", "n-2", "n-1"], 2, unread=["n-3", "n-1"])(s) and live(s),
        )
        assert state["error"] == ""
        assert await tab.do(lambda d: d.execute_script(FEED_READS)) == 1
        await send_inapp(db, ["n-4"], add_user=False)
        await tab.until("live again", shows(["n-4", "n-3", "n-2", "n-1"], 3, ["n-4", "n-3", "n-1"]))
    assert script_errors(browser) == []


async def test_older_items_come_a_page_at_a_time(
    api: RunningAPI, db: Database, browser: Any
) -> None:
    await sent_inapp(db.store, [f"n-{i:02}" for i in range(1, 23)])  # 22: a page of 20, then 2
    tab = first_tab(browser)
    await tab.open(f"{api.base}/inbox#token={token()}")
    newest = [f"n-{i:02}" for i in range(22, 2, -1)]
    state = await tab.until("the first page", lambda s: shows(newest, 22)(s) and live(s))
    assert state["older"]
    await tab.do(lambda d: d.find_element(By.ID, "more").click())
    everything = [*newest, "n-02", "n-01"]
    state = await tab.until("the older items below", shows(everything, 22))
    assert not state["older"]
    await sent_inapp(db.store, ["n-23"])
    await tab.until("a new one on top", shows(["n-23", *everything], 23))
    assert script_errors(browser) == []
