"""The web UI in headless Chromium (Debian's chromium + chromedriver, installed by
deploy/local/install-browser.sh) against a real stack: filter the run list, open a run,
see a signal sent from elsewhere appear live, cancel the run. Saves docs/ui.png."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.servers import REPO
from tests.support.stack import Stack

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium/chromedriver: run deploy/local/install-browser.sh (make test does)",
)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, timeout: float = 30) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, timeout)


def test_filter_open_watch_a_signal_live_and_cancel(stack: Stack, browser: WebDriver) -> None:
    api = httpx.Client(
        base_url=stack.api_url, headers={"Authorization": "Bearer test-key"}, timeout=30
    )
    tag = uuid.uuid4().hex[:6]
    flow = f"checkout-{tag}"
    ids = [f"order-{tag}-{i}" for i in range(3)]
    for i, execution_id in enumerate(ids):
        reply = api.post(
            f"/v1/workflows/{flow}/execute",
            json={"execution_id": execution_id, "input": {"order": i, "items": ["book"]}},
        )
        assert reply.status_code == 200, reply.text
    assert api.post("/v1/workflows/other/execute", json={"input": {}}).status_code == 200

    browser.get(f"{stack.api_url}/ui/")
    browser.find_element(By.ID, "api-key").send_keys("test-key")
    browser.find_element(By.ID, "save-key").click()

    # Filter: only the checkout runs, once the projector has them all.
    browser.find_element(By.ID, "f-workflow").send_keys(flow)

    # Read in one script: the table is re-rendered by each Apply.
    names_js = (
        "return [...document.querySelectorAll('#runs tbody tr')]"
        ".map(r => r.children[1].textContent)"
    )

    def filtered(driver: WebDriver) -> list[str] | bool:
        names: list[str] = driver.execute_script(names_js)
        if len(names) == 3 and set(names) == {flow}:
            return names
        driver.find_element(By.ID, "apply").click()
        return False

    _wait(browser).until(filtered)
    browser.execute_script(
        "[...document.querySelectorAll('#runs tbody a')]"
        ".find(a => a.textContent === arguments[0]).click()",
        ids[1],
    )

    _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "run-status"), "RUNNING"))
    _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "run-input"), '"order": 1'))
    _wait(browser).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#live.on"))
    )  # the live stream is open

    # A signal sent by someone else shows up without a reload.
    reply = api.post(
        f"/v1/workflows/executions/{ids[1]}/signals",
        json={"name": "payment_received", "input": {"amount": 42}},
    )
    assert reply.status_code == 202, reply.text
    _wait(browser).until(
        ec.text_to_be_present_in_element((By.ID, "history"), "WORKFLOW_EXECUTION_SIGNALED")
    )
    assert "payment_received" in browser.find_element(By.ID, "history").text
    browser.save_screenshot(str(REPO / "docs" / "ui.png"))

    browser.find_element(By.ID, "cancel-btn").click()
    _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "run-status"), "CANCELED"))
    assert "WORKFLOW_EXECUTION_CANCELED" in browser.find_element(By.ID, "history").text
    got = api.get(f"/v1/workflows/executions/{ids[1]}").json()
    assert got["status"] == "CANCELED"
    # The other runs are untouched.
    assert api.get(f"/v1/workflows/executions/{ids[0]}").json()["status"] == "RUNNING"
