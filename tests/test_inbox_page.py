"""The /inbox page in a real headless Chromium (the harness the feed's browser tests use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import browser as browser
from tests.browser import chromium_or_stop, serve_pages
from tidings.feeds.page import INBOX_MEDIA_TYPE, inbox_html


def test_headless_chromium_reads_the_inbox_page_from_a_local_server(browser: Any) -> None:
    with serve_pages({"/inbox": (INBOX_MEDIA_TYPE, inbox_html())}) as base:
        browser.get(f"{base}/inbox")
        assert browser.title == "Inbox · tidings"
        assert browser.find_element(By.TAG_NAME, "h1").text == "Inbox"
        assert browser.find_element(By.ID, "badge").text == "0"
        assert browser.find_element(By.ID, "status").text == "signed out"

        # The script runs: a token opens the feed from the same server, which
        # has no API here, and the page says what went wrong instead of failing.
        browser.find_element(By.ID, "token").send_keys("a-token")
        browser.find_element(By.CSS_SELECTOR, "#signin button").click()
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, 10).until(lambda _: error.text != "")
        assert error.text == "GET /v1/me/feed?limit=20: 404"
        assert browser.find_element(By.ID, "status").text == "signed out"
    script_errors = [
        entry for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "404" not in entry["message"]
    ]  # fmt: skip
    assert script_errors == []


def test_without_chromium_a_page_test_fails_under_ci_and_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium, no chromedriver
    monkeypatch.setenv("CI", "true")
    # BaseException: a skip here must fail this test, not skip it.
    with pytest.raises(BaseException, match="apt-get install chromium chromium-driver") as stopped:
        chromium_or_stop()
    assert isinstance(stopped.value, pytest.fail.Exception), type(stopped.value)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        chromium_or_stop()
