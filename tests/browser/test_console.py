"""The operator console in a real headless chromium, against a real `run` (live `test://`
patient, tiny ONNX model, real mosquitto): the page loads, the live picture moves, and an exam
runs from the page alone (start, rest, view, close) with its state on the MQTT `exam` topic,
its summary on `exam/summary`, and its report one click away.

Screenshots are kept as test artefacts in var/test-artifacts/console/ (gitignored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.devtools.browser import browser_paths, chromium
from tests.conftest import REPO, Broker
from tests.helpers.console import ConsoleRun, console_run
from tests.helpers.wait import wait_until

pytest.importorskip("selenium.webdriver")
By = pytest.importorskip("selenium.webdriver.common.by").By
pytestmark = [
    pytest.mark.skipif(
        browser_paths() is None, reason="Debian's chromium and chromium-driver are needed"
    ),
    pytest.mark.timeout(300),
]
ARTEFACTS = REPO / "var" / "test-artifacts" / "console"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = chromium(tmp_path / "chromium-profile", 1280, 1000)  # a fresh profile
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def running(broker: Broker, tiny_model: Path, tmp_path: Path) -> Iterator[ConsoleRun]:
    with console_run(broker.port, tiny_model, tmp_path) as live_run:
        yield live_run


def text_of(driver: Any, element_id: str) -> str:
    """The element's text as written (not as CSS capitalizes it)."""
    return str(driver.find_element(By.ID, element_id).get_attribute("textContent")).strip()


def shot(driver: Any, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_text(driver: Any, element_id: str, wanted: str, timeout_s: float = 30) -> None:
    wait_until(
        lambda: text_of(driver, element_id) == wanted,
        timeout_s,
        lambda: f"#{element_id} to read {wanted!r} (it reads {text_of(driver, element_id)!r})",
    )


def test_the_page_loads_and_the_live_picture_moves(browser: Any, running: ConsoleRun) -> None:
    browser.get(running.url)
    assert browser.title == "thermoscreen console: edge-console/cam0"
    live = browser.find_element(By.ID, "live")
    wait_until(lambda: live.get_property("naturalWidth") == 160, 30, "the first live frame")
    first = live.screenshot_as_png
    shot(browser, "live-1")
    wait_until(lambda: live.screenshot_as_png != first, 30, "the live picture to change")
    shot(browser, "live-2")
    assert browser.find_element(By.ID, "synthetic-banner").is_displayed()
    assert "adjunct to mammography" in browser.find_element(By.TAG_NAME, "footer").text
    assert "Step 1 of 4" in text_of(browser, "next-step")
    wait_until(lambda: "Radiometric" in text_of(browser, "frame-info"), 15, "temperatures")
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(name.startswith(running.url) or name.startswith("data:") for name in fetched)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_an_exam_runs_from_the_page_alone(browser: Any, running: ConsoleRun) -> None:
    browser.get(running.url)
    wait_text(browser, "exam-state", "idle")
    browser.find_element(By.ID, "exam-id-input").send_keys("ACC-WEB-1")
    browser.find_element(By.ID, "ambient-input").send_keys("22.5")
    browser.find_element(By.ID, "start").click()
    wait_text(browser, "exam-state", "acclimatizing")
    assert running.wait_exam(
        lambda s: s["exam_id"] == "ACC-WEB-1" and s["state"] == "acclimatizing", 15
    ), "the MQTT exam topic never said acclimatizing"
    assert "Step 2 of 4" in text_of(browser, "next-step")
    shot(browser, "exam-acclimatizing")

    # the skin of the test:// patient settles within seconds: ready by measured drift
    wait_text(browser, "exam-state", "ready", 90)
    browser.find_element(By.CSS_SELECTOR, "button.view[data-view='frontal']").click()
    wait_text(browser, "exam-state", "capturing")
    wait_until(
        lambda: running.get("/api/state").json()["exam"]["frames"]["accepted"] >= 5,
        30,
        "five accepted frontal frames",
    )
    shot(browser, "exam-capturing")
    browser.find_element(By.ID, "close").click()
    wait_text(browser, "exam-state", "closed")
    assert running.watcher.wait(lambda: running.watcher.count("summary") >= 1, 20)
    summary = running.watcher.bodies("summary")[-1]
    assert summary["exam_id"] == "ACC-WEB-1" and summary["state"] == "closed"
    verdict = summary["verdict"]
    wait_until(lambda: text_of(browser, "exam-verdict").startswith(verdict["label"]), 15)
    assert f"threshold {verdict['threshold']:.3f}" in text_of(browser, "exam-verdict")
    shot(browser, "exam-closed")

    browser.find_element(By.CSS_SELECTOR, "#report-link a").click()
    wait_until(lambda: browser.title == "thermoscreen exam ACC-WEB-1", 15, "the report page")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert verdict["label"] in page and f"{verdict['threshold']:.2f}" in page
    shot(browser, "exam-report")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_refused_commands_are_explained_on_the_page(browser: Any, running: ConsoleRun) -> None:
    browser.get(running.url)
    wait_text(browser, "exam-state", "idle")
    field = browser.find_element(By.ID, "exam-id-input")
    field.send_keys("Jane Doe")  # a name: the page refuses it before sending anything
    browser.find_element(By.ID, "start").click()
    wait_until(lambda: "never a name" in text_of(browser, "command-error"), 10, "the hint")
    field.clear()
    field.send_keys("..")  # the page's pattern lets it through; the run's validator does not
    browser.find_element(By.ID, "start").click()
    wait_until(lambda: "Not done: exam_id" in text_of(browser, "command-error"), 10)
    assert text_of(browser, "exam-state") == "idle"
    assert running.get("/api/state").json()["exam"]["state"] == "idle"
