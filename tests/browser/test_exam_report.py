"""The exam report in a real headless chromium: it renders offline, every image decodes, the
Celsius scale and the score plot are drawn, and nothing is fetched from anywhere."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.data.synthetic import SyntheticStream
from pipeline.exam.config import ExamConfig
from pipeline.exam.machine import ExamContext, ExamController
from pipeline.exam.store import save_exam
from pipeline.preprocess import render_celsius
from tests.helpers.exam import MODEL, Clock, celsius_frame, gray_frame, scores

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None, reason="Debian's chromium and chromium-driver are needed"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,2000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=str(DRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def saved_exam(tmp_path: Path) -> Path:
    stream = SyntheticStream(seed=4, size=(240, 320), label_pattern=("sick",), distinct_patients=1)
    clock = Clock()
    model = dataclasses.replace(MODEL, synthetic=True)
    ctl = ExamController(ExamConfig(), model, ExamContext("edge-01", "cam0", "test://"), clock)
    ctl.handle({"action": "start", "exam_id": "BR-1", "view": "frontal", "ambient_c": 21.5})
    for i in range(12):
        ctl.observe(celsius_frame(stream.frame(i), i), scores(0.5 + 0.03 * i))
        clock.advance(1.0)
    ctl.handle({"action": "view", "view": "left-oblique"})
    gray = render_celsius(stream.frame(30), (20.0, 38.0))
    ctl.observe(gray_frame(gray, 30), scores(0.1))
    finished = ctl.handle({"action": "close"}).finished
    assert finished is not None
    return save_exam(tmp_path, finished) / "report.html"


def test_report_renders_offline_in_chromium(browser: object, tmp_path: Path) -> None:
    driver = browser
    driver.get(saved_exam(tmp_path).as_uri())  # type: ignore[attr-defined]
    run = driver.execute_script  # type: ignore[attr-defined]
    assert run("return document.title") == "thermoscreen exam BR-1"
    widths = run("return [...document.images].map(i => i.complete ? i.naturalWidth : -1)")
    assert widths == [320, 320]  # both key frames decode from their data URIs
    ticks = run("return [...document.querySelectorAll('svg.scale text')].map(t => t.textContent)")
    assert ticks and all(t.endswith("°C") for t in ticks)
    assert run("return document.querySelectorAll('figure.gray8 svg.scale').length") == 0
    assert run("return document.querySelectorAll('svg.scores circle').length") == 12
    banner = run("return document.querySelector('.banner').getBoundingClientRect().height")
    assert banner > 10  # the SYNTHETIC MODEL banner is visible
    fetched = run(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith('data:'))"
    )
    assert fetched == []
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[attr-defined]
    assert errors == []
