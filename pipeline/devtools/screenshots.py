"""`make screenshots`: the README's picture of the operator console, made by the console itself.

    python -m pipeline.devtools.screenshots --model models/demo --out docs/img

Starts a private mosquitto, runs the pipeline on a live SYNTHETIC `test://` patient with the
console on a free loopback port, drives a headless chromium through an exam (start, rest,
frontal view) and saves `console.png`: the page while capturing, shrunk to a small palette PNG.
The demo model is trained on synthetic data; the page says SYNTHETIC MODEL, as it must.
Thermography is an adjunct to mammography only.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline import DISCLAIMER
from pipeline.config import AppConfig, load_config
from pipeline.console.config import ConsoleError
from pipeline.console.server import Console, open_console
from pipeline.devtools.broker import LocalBroker
from pipeline.devtools.browser import BrowserMissing, chromium
from pipeline.run.live import LiveView
from pipeline.run.wiring import RunError, run

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 1280, 1120
COLOURS = 256  # a palette PNG: the page is flat colours and one thermal picture


class ShotError(RuntimeError):
    """The screenshot could not be made; one line."""


def _config(model: Path, port: int, work: Path) -> AppConfig:
    return load_config(
        None,
        {
            "device_id": "clinic-01",
            "camera_id": "room-2",
            "source": "test://?settle_s=20&fps=9",
            "model.dir": str(model),
            "mqtt.port": port,
            "outbox.path": str(work / "outbox.sqlite"),
            "exam.exams_dir": str(work / "exams"),
            "exam.acclimatization.min_s": 8.0,
            "exam.acclimatization.drift_window_s": 10,
            "exam.acclimatization.drift_limit_c_per_min": 0.3,
            "console.listen": "127.0.0.1:0",
            "log_level": "WARNING",
        },
        env={},
    )


def _wait(test: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not test():
        if time.monotonic() > deadline:
            raise ShotError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


def _text(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By  # optional: the dev extra

    return str(driver.find_element(By.ID, element_id).get_attribute("textContent")).strip()


def drive_exam(driver: Any, url: str) -> None:
    """Start an exam, let the synthetic patient rest until ready, show the frontal view."""
    from selenium.webdriver.common.by import By  # optional: the dev extra

    driver.get(url)
    _wait(lambda: _text(driver, "exam-state") == "idle", 30, "the page")
    driver.find_element(By.ID, "exam-id-input").send_keys("ACC-2024-0117")
    driver.find_element(By.ID, "ambient-input").send_keys("22.5")
    driver.find_element(By.ID, "humidity-input").send_keys("45")
    driver.find_element(By.ID, "start").click()
    _wait(lambda: _text(driver, "exam-state") == "ready", 120, "the rest to end")
    driver.find_element(By.CSS_SELECTOR, "button.view[data-view='frontal']").click()
    _wait(lambda: "accepted" in _text(driver, "frames"), 30, "frontal frames")
    time.sleep(3.0)  # a few accepted frames, so the verdicts show numbers


def shrink(png: Path) -> Path:
    """A palette PNG of the screenshot: the README's picture stays small."""
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(COLOURS, method=Image.Quantize.FASTOCTREE)
        small.save(png, optimize=True)
    return png


def make_screenshot(model: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    target = out / "console.png"
    with tempfile.TemporaryDirectory(prefix="thermoscreen-shot-") as tmp_name:
        work = Path(tmp_name)
        with LocalBroker(work / "broker") as broker:
            cfg = _config(model, broker.port, work)
            live = LiveView()
            console = open_console(cfg, live)
            assert console is not None
            stop = threading.Event()
            failure: list[BaseException] = []
            runner = threading.Thread(target=_run, args=(cfg, console, live, stop, failure))
            runner.start()
            try:
                _wait(lambda: live.latest() is not None or bool(failure), 60, "the first frame")
                if failure:
                    raise ShotError(f"the run did not start: {failure[0]}")
                driver = chromium(work / "profile", WIDTH, HEIGHT)
                try:
                    drive_exam(driver, console.url)
                    driver.save_screenshot(str(target))
                finally:
                    driver.quit()
            finally:
                stop.set()
                runner.join(60)
                console.stop()
    return shrink(target)


def _run(
    cfg: AppConfig,
    console: Console,
    live: LiveView,
    stop: threading.Event,
    failure: list[BaseException],
) -> None:
    try:
        run(cfg, stop, consumers=console.consumers, live=live)
    except RunError as exc:
        failure.append(exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.devtools.screenshots",
        description=f"The README's screenshot of the operator console.\n\n{DISCLAIMER}",
    )
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = make_screenshot(args.model, args.out)
    except (ShotError, BrowserMissing, ConsoleError, OSError) as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
