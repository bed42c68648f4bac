"""`make exam-screenshot`: docs/img/exam-report.png, an exam's report as a browser shows it.

    python -m pipeline.devtools.exam_screenshot --model models/demo --out docs/img/exam-report.png

It runs one short exam on the synthetic `test://` patient (a private mosquitto on a free port,
the exam started with a view so it captures at once), renders the record's report.html in
headless chromium (`--screenshot`) and writes a small PNG. The demo model is synthetic, so the
page (and the picture) says SYNTHETIC MODEL: a pipeline demo, not a medical result.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.config import load_config
from pipeline.devtools.broker import LocalBroker, free_port
from pipeline.exam.record import REPORT_NAME
from pipeline.run.exam import ExamPlan
from pipeline.run.wiring import run

EXAM_ID = "DEMO-0001"
WINDOW = (960, 1800)  # the browser window: the whole report, one column
WIDTH_PX = 720  # the PNG's width in the README
LEVELS = 8  # colour levels merged per channel: a smaller PNG, no visible banding at this size


def make_exam(model: Path, workdir: Path, frames: int) -> Path:
    """Run the demo exam; return its folder (exam.json, key frame, report.html)."""
    exams = workdir / "exams"
    shutil.rmtree(exams, ignore_errors=True)
    broker = LocalBroker(port=free_port(), workdir=workdir / "broker", stay_root=True)
    (workdir / "broker").mkdir(parents=True, exist_ok=True)
    broker.start()
    try:
        cfg = load_config(
            None,
            {
                "source": "test://?fps=10&seed=2",
                "model.dir": str(model),
                "mqtt.port": broker.port,
                "outbox.path": str(workdir / "outbox.sqlite"),
                "exam.exams_dir": str(exams),
                "log_level": "WARNING",
            },
            env={},
        )
        summary = run(cfg, max_frames=frames, exam_plan=ExamPlan(EXAM_ID, "frontal"))
    finally:
        broker.stop()
    if summary.exams is None or summary.exams["closed"] != 1:
        raise SystemExit(f"exam-screenshot: the demo exam did not close ({summary.exams})")
    return exams / EXAM_ID


def screenshot(page: Path, out: Path) -> None:
    """Headless chromium renders `page`; the PNG is scaled to WIDTH_PX and written to `out`."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("exam-screenshot: chromium not found; apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp}/profile",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        raw = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    if raw is None:
        raise SystemExit("exam-screenshot: chromium wrote no screenshot")
    image = np.asarray(raw, dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), shrink(image), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def shrink(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Scaled to WIDTH_PX, the blank page below the report cut off, colours posterized (white
    stays white) so the PNG stays small."""
    height = round(image.shape[0] * WIDTH_PX / image.shape[1])
    small = cv2.resize(image, (WIDTH_PX, height), interpolation=cv2.INTER_AREA)
    used = np.flatnonzero((small < 250).any(axis=(1, 2)))
    small = small[: int(used[-1]) + 12] if used.size else small
    posterized = (small // LEVELS) * LEVELS + LEVELS // 2
    return np.where(small >= 250, 255, posterized).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/demo"))
    parser.add_argument("--out", type=Path, default=Path("docs/img/exam-report.png"))
    parser.add_argument("--workdir", type=Path, default=Path("var/exam-screenshot"))
    parser.add_argument("--frames", type=int, default=80, help="frames of the demo exam")
    args = parser.parse_args(argv)
    folder = make_exam(args.model, args.workdir, args.frames)
    screenshot(folder / REPORT_NAME, args.out)
    print(f"{args.out}: the report of exam {EXAM_ID} ({folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
