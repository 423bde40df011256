"""`projector serve` in a real browser: Debian's chromium, headless, driven by selenium.

What a person would see: the executions list with statuses, an execution page with its step
table and timeline, and a live update arriving after an event is emitted. A screenshot of each
page is stored under the test's tmp directory (and in PROJECTOR_TEST_ARTEFACTS when set).
Chromium missing is a failure, not a skip: CI installs it (.ci/run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from projector.envelope import ExecutorEvent
from projector.pgsink import PostgresEventSink
from tests.eventlog import insert_events
from tests.test_timeline import sample_events
from tests.webserver import serving

CHROMIUM = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def _found(candidates: tuple[str, ...], name: str) -> str:
    for path in (*candidates, shutil.which(name) or ""):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail(
        f"{name} is not installed: apt-get install -y chromium chromium-driver "
        "(the browser tests need Debian's chromium; .ci/run installs it)"
    )


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = _found(CHROMIUM, "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    driver = webdriver.Chrome(
        options=options, service=Service(_found(CHROMEDRIVER, "chromedriver"))
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    artefacts = os.environ.get("PROJECTOR_TEST_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artefacts) / path.name)
    return path


def event(n: int, event_type: str, step: str, status: str) -> ExecutorEvent:
    return ExecutorEvent(
        execution_id="live-run",
        event_id=f"l{n}",
        event_type=event_type,
        step=step,
        status=status,
        created_at=START + timedelta(seconds=n),
    )


def wait_for(driver: webdriver.Chrome, check: Any, what: str) -> None:
    WebDriverWait(driver, 30, poll_frequency=0.2).until(lambda d: check(d), message=what)


async def test_a_person_sees_statuses_the_timeline_and_a_live_update(
    aconn: Any, database_url: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    for name in ("success", "retried", "failed"):
        await insert_events(aconn, sample_events(name))
    async with PostgresEventSink(database_url) as sink:
        await sink.emit(event(0, "playbook.initialized", "demo/live", "initialized"))
        await sink.emit(event(1, "step.enter", "extract", "RUNNING"))
        with serving(database_url) as base:
            await asyncio.to_thread(browser.get, base + "/")
            rows = {
                r.get_attribute("data-execution"): r.find_element(By.CSS_SELECTOR, "td.status").text
                for r in browser.find_elements(By.CSS_SELECTOR, "table.executions tbody tr")
            }
            assert rows["demo-failed"] == "FAILED"
            assert rows["7288213371283718001"] == "COMPLETED"
            assert rows["live-run"] == "RUNNING"
            assert screenshot(browser, tmp_path, "executions").stat().st_size > 0

            await asyncio.to_thread(browser.get, base + "/executions/7288213371283718001")
            svg = browser.find_element(By.CSS_SELECTOR, "svg.projector-timeline")
            assert svg.size["width"] > 500 and svg.size["height"] > 100
            bars = browser.find_elements(
                By.CSS_SELECTOR, 'g.step[data-step="fetch_rates"] rect.bar'
            )
            assert sorted(b.get_attribute("class") for b in bars) == [
                "bar completed",
                "bar failed",
            ]
            cells = browser.find_elements(By.CSS_SELECTOR, "table.steps td.status")
            assert [c.text for c in cells] == ["COMPLETED", "COMPLETED", "COMPLETED"]
            screenshot(browser, tmp_path, "retried")

            await asyncio.to_thread(browser.get, base + "/executions/live-run")
            status = browser.find_element(By.ID, "execution-status")
            assert status.text == "RUNNING"
            assert browser.find_element(By.CSS_SELECTOR, 'g.step[data-step="extract"] rect.bar')
            await sink.emit(event(2, "step.exit", "extract", "COMPLETED"))
            await sink.emit(event(3, "playbook.completed", "demo/live", "COMPLETED"))

            def updated(d: webdriver.Chrome) -> bool:
                return d.find_element(By.ID, "execution-status").text == "COMPLETED"

            await asyncio.to_thread(wait_for, browser, updated, "the live update never arrived")
            cell = browser.find_element(By.CSS_SELECTOR, "table.steps td.status")
            assert cell.text == "COMPLETED"
            assert browser.find_element(By.ID, "event-count").text == "4"
            screenshot(browser, tmp_path, "live-run")
