"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

Skipped, saying how to install it, where Chromium or Playwright is missing.
Playwright never downloads a browser here: it drives /usr/bin/chromium.
Set PODFN_UI_SCREENSHOTS=DIR to also save the main pages as PNGs (how
docs/images/ was made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_ui import deploy

from conftest import TEST_TOKEN, Platform
from podfn import remote
from podfn_platform.api.auth import create_token

CHROMIUM = os.environ.get("PODFN_CHROMIUM", "/usr/bin/chromium")
INSTALL = ("headless Chromium is needed for the dashboard's browser tests: "
           "apt-get install chromium chromium-driver (and pip install -e '.[dev]' for Playwright)")

sync_api = pytest.importorskip("playwright.sync_api", reason=INSTALL)
if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
    pytest.skip(INSTALL, allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        launched = p.chromium.launch(executable_path=executable, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    yield opened
    context.close()


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/ui/")
    assert "/ui/signin" in page.url
    page.fill("#token", token)
    page.click("#signin")
    page.wait_for_url(f"{url}/ui/")


def screenshot(page: Any, name: str) -> None:
    where = os.environ.get("PODFN_UI_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


@remote
def chatty(lines: int) -> int:
    import time

    for i in range(lines):
        print(f"line {i} from inside the call", flush=True)
        time.sleep(0.2)
    return lines


@remote
def quick(x: int) -> int:
    return x * 2


@remote(retries=1, retry_backoff=0)
def broken(x: int) -> int:
    raise ValueError(f"no good value for {x}")


def test_sign_in_watch_output_live_and_cancel(platform: Platform, page: Any) -> None:
    sign_in(page, platform.url, TEST_TOKEN)
    assert page.inner_text("#now-running") in ("0", "1")
    call = chatty.spawn(1000)
    page.goto(f"{platform.url}/ui/calls/{call.id}")
    # Output the page did not have when it loaded appears by polling.
    page.wait_for_function("document.getElementById('stdout').textContent.includes('line 3 ')")
    assert page.inner_text("#state") == "running"
    screenshot(page, "call")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('state').textContent === 'cancelled'")
    assert page.locator("#cancel").count() == 0
    assert "cancelled by root" in page.inner_text("#reason")


def test_filter_the_calls_table(platform: Platform, page: Any) -> None:
    for x in range(3):
        quick.remote(x)
    other = chatty.spawn(1)
    other.result(timeout=60)
    failed = broken.spawn(7)
    with pytest.raises(ValueError):
        failed.result(timeout=60)
    sign_in(page, platform.url, TEST_TOKEN)
    assert "the function raised ValueError" in page.inner_text("table:has(th:text('reason'))")
    screenshot(page, "overview")
    page.goto(f"{platform.url}/ui/calls")
    page.wait_for_selector(f"tr[data-id='{other.id}']")
    assert page.locator("#calls tbody tr").count() == 5
    page.fill("#filter-function", "quick")
    page.select_option("#filter-state", "succeeded")
    page.click("#apply")
    page.wait_for_url("**function=quick**")
    rows = page.locator("#calls tbody tr")
    assert rows.count() == 3
    assert all(t == "quick" for t in rows.locator("td:nth-child(2)").all_inner_texts())
    screenshot(page, "calls")


def test_roll_back_a_function(platform: Platform, page: Any) -> None:
    deploy(platform.db, "scorer", 3)
    sign_in(page, platform.url, TEST_TOKEN)
    page.goto(f"{platform.url}/ui/functions/scorer")
    assert page.inner_text("#live-version") == "3"
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#rollback-2")  # dismissed: nothing changes
    assert page.inner_text("#live-version") == "3"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#rollback-2")
    page.wait_for_function("document.getElementById('live-version').textContent === '2'")
    live = platform.db.one("get_function", {"name": "scorer"})
    assert live is not None and live["live_version"] == 2
    # The invoke form runs the live version with JSON arguments (scorer is `pow`).
    for exponent in (10, 11, 12):
        page.fill("textarea[name=args]", f"[2, {exponent}]")
        page.click("#invoke")
        page.wait_for_url("**/ui/calls/**")
        page.wait_for_selector("#result")
        assert page.inner_text("#result") == str(2**exponent)
        page.goto(f"{platform.url}/ui/functions/scorer")
    assert page.inner_text("#suggest-memory").endswith("Mi")
    screenshot(page, "function")


def test_a_read_token_has_no_buttons_and_gets_403(platform: Platform, page: Any) -> None:
    deploy(platform.db, "scorer", 2)
    call = chatty.spawn(1000)
    made = create_token(platform.db, "watcher", ["read"])
    assert made is not None
    sign_in(page, platform.url, made[1])
    page.goto(f"{platform.url}/ui/calls/{call.id}")
    page.wait_for_function("document.getElementById('stdout').textContent.includes('line 1 ')")
    assert page.locator("#cancel").count() == 0
    csrf = page.get_attribute('meta[name="csrf-token"]', "content")
    status = page.evaluate(
        """([url, csrf]) => fetch(url, {method: 'POST', headers: {'X-CSRF-Token': csrf}})
                            .then(r => r.status)""",
        [f"/ui/calls/{call.id}/cancel", csrf])
    assert status == 403
    assert platform.db.one("get_call", {"id": call.id})["state"] == "running"  # type: ignore[index]
    page.goto(f"{platform.url}/ui/functions/scorer")
    assert page.locator("button.rollback").count() == 0
    status = page.evaluate(
        """([url, csrf]) => fetch(url, {method: 'POST', headers: {'X-CSRF-Token': csrf,
                            'Content-Type': 'application/x-www-form-urlencoded'},
                            body: 'version=1'}).then(r => r.status)""",
        ["/ui/functions/scorer/rollback", csrf])
    assert status == 403
    live = platform.db.one("get_function", {"name": "scorer"})
    assert live is not None and live["live_version"] == 2
    call.cancel()
