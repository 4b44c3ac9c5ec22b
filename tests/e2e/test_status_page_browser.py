"""The /ops status page in a real headless Chromium: sign in, see the partner's health."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.devrun import http_json
from tests.e2e.conftest import RunningStack
from tests.factories import article_payload
from tests.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Without the background-networking flags Chromium tries to reach Google's hosts.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
)  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "needs Debian's chromium and chromium-driver: `apt-get install chromium "
            "chromium-driver` (`make test` installs them when run as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_ops_signs_in_and_shows_subscription_health(
    stack: RunningStack, receiver: WebhookReceiver, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    status, created = http_json(
        "POST",
        f"{stack.delivery}/v1/subscriptions",
        {"url": f"{receiver.url}/hooks", "description": "Browser test partner"},
        token=stack.admin_token,
    )
    assert status == 201, created
    try:
        uri = f"urn:newsflow:e2e:{uuid.uuid4().hex[:8]}"
        story = article_payload(
            uri=uri, headline="Lighthouse keepers open the island museum", section="Culture"
        )
        status, body = http_json("POST", f"{stack.ingest}/v1/articles", story, token=stack.api_key)
        assert status == 202, body
        receiver.wait_for(lambda r: uri.encode() in r.body)

        browser.get(f"{stack.delivery}/ops")
        assert browser.current_url.endswith("/ops/login")
        browser.find_element(By.ID, "token").send_keys("not-the-token")
        browser.find_element(By.ID, "sign-in").click()
        WebDriverWait(browser, 10).until(lambda driver: "not valid" in driver.page_source)

        browser.find_element(By.ID, "token").send_keys(stack.admin_token)
        browser.find_element(By.ID, "sign-in").click()
        WebDriverWait(browser, 10).until(
            expected_conditions.presence_of_element_located((By.ID, "subscriptions"))
        )
        row = browser.find_element(By.CSS_SELECTOR, f"tr[data-subscription='{created['id']}']")
        assert "Browser test partner" in row.text
        assert "active" in row.text
        assert "100.0%" in row.text
        latest = browser.find_element(By.ID, "latest").text
        assert story["headline"] in latest
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.spark")) == 2

        screenshot = tmp_path / "ops.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
        print(f"status page screenshot: {screenshot}")
    finally:
        http_json(
            "DELETE", f"{stack.delivery}/v1/subscriptions/{created['id']}", token=stack.admin_token
        )
