"""Exams in the logger: state changes and summaries on SQLite and PostgreSQL, and `thermoscreen
report` listing exams and writing one exam's HTML report, from a real replay through a real
mosquitto into a real `thermoscreen log`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.data.synthetic import SyntheticStream
from pipeline.exam.config import ExamConfig
from pipeline.exam.machine import ExamContext, ExamController
from pipeline.exam.record import summary_payload
from pipeline.logger.store import open_store
from pipeline.mqtt.payload import schema_errors
from pipeline.run.exam import ExamPlan
from pipeline.run.wiring import run
from tests.conftest import REPO, Broker
from tests.helpers.exam import MODEL, Clock, celsius_frame, scores
from tests.helpers.mqtt_logger import LoggerProcess, wait_until
from tests.integration.conftest import Opener

pytestmark = pytest.mark.timeout(240)


def exam_messages() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The `exam` states one exam publishes (repeats included) and its summary, made by the
    real state machine."""
    clock = Clock()
    stream = SyntheticStream(seed=3, size=(96, 128), label_pattern=("healthy",))
    ctx = ExamContext("edge-01", "cam0", "test://")
    ctl = ExamController(ExamConfig(), MODEL, ctx, clock)
    states = [ctl.state_payload()]  # idle: no exam, never kept
    ctl.handle({"action": "start", "exam_id": "ACC-1"})
    states.append(ctl.state_payload())
    clock.advance(5)
    states.append(ctl.state_payload())  # the same state again: a repeat
    ctl.handle({"action": "ready", "reason": "test"})
    states.append(ctl.state_payload())
    for view in ("frontal", "left-oblique"):
        ctl.handle({"action": "view", "view": view})
        for i in range(3):
            clock.advance(0.1)
            ctl.observe(celsius_frame(stream.frame(i), i), scores(0.7))
        states.append(ctl.state_payload())
    outcome = ctl.handle({"action": "close"})
    states.append(ctl.state_payload())
    assert outcome.finished is not None
    return states, summary_payload(outcome.finished.record)


def test_exam_state_changes_and_summaries_on_both_engines(opener: Opener) -> None:
    states, summary = exam_messages()
    for s in states:
        assert schema_errors(s, "exam") == []
    store = opener()
    try:
        kept = [store.add_exam_state("edge-01", "cam0", s, 100.0 + i) for i, s in enumerate(states)]
        store.add_exam_summary("edge-01", "cam0", summary, 200.0)
        store.commit()
    finally:
        store.close()
    assert kept == [False, True, False, True, True, True, True]
    store = opener()
    try:
        changes = store.exam_states("edge-01", "ACC-1")
        exams = store.exams()
        assert store.exams(since="2999-01-01T00:00:00.000Z") == []
        assert store.exams(device="edge-02") == [] and store.exams(camera="cam1") == []
        assert len(store.exams(exam_id="ACC-1", device="edge-01", camera="cam0")) == 1
    finally:
        store.close()
    assert [(c.state, c.view) for c in changes] == [
        ("acclimatizing", ""),
        ("ready", ""),
        ("capturing", "frontal"),
        ("capturing", "left-oblique"),
        ("closed", "left-oblique"),
    ]
    (row,) = exams
    assert (row.exam_id, row.state, row.verdict) == ("ACC-1", "closed", "sick")
    assert row.synthetic_model is False
    assert row.score == pytest.approx(0.7) and row.threshold == MODEL.threshold
    assert row.payload["verdict"] == summary["verdict"]


def thermoscreen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        check=False,
    )


def test_report_lists_exams_and_writes_an_exam_report(
    broker: Broker, tiny_model: Path, shared_dmr: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "dmr"
    folder.mkdir()
    files = sorted(shared_dmr.glob("T*.txt.gz"))[:3]
    for f in files:
        (folder / f.name).symlink_to(f)
    db = tmp_path / "results.sqlite"
    logger = LoggerProcess(tmp_path, ["--broker", f"127.0.0.1:{broker.port}", "--db", str(db)])
    logger.start().wait_subscribed()
    cfg = {
        "device_id": "edge-r",
        "source": f"dmr://{folder}",
        "model.dir": str(tiny_model),
        "mqtt.port": broker.port,
        "outbox.path": str(tmp_path / "outbox.sqlite"),
        "exam.exams_dir": str(tmp_path / "exams"),
    }
    summary = run(load_config(None, cfg, env={}), exam_plan=ExamPlan("B1", "frontal"))
    assert summary.exams is not None and summary.exams["closed"] == 3

    def stored() -> int:
        store = open_store(db, writer=False)
        try:
            return len(store.exams())
        finally:
            store.close()

    wait_until(lambda: stored() == 3, 20, "three exam summaries in the logger")
    assert logger.stop() == 0

    listed = thermoscreen("report", "--db", str(db), "--exams", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    exams = json.loads(listed.stdout)["exams"]
    ids = [f"B1-T{f.name.split('.')[0][1:]}" for f in files]
    assert sorted(e["exam_id"] for e in exams) == sorted(ids)
    assert all(e["frames"] == 1 and e["synthetic_model"] is True for e in exams)
    assert exams[0]["exam_score_is"].startswith("mean positive-class probability")
    table = thermoscreen("report", "--db", str(db))
    assert table.returncode == 0 and "rolling verdict" in table.stdout
    assert "exam score: mean P(positive) / threshold" in table.stdout
    assert "[SYNTHETIC MODEL]" in table.stdout and "3 exam(s)" in table.stdout
    for flags in (["--since", "2999-01-01"], ["--device", "other"], ["--camera", "cam9"]):
        empty = thermoscreen("report", "--db", str(db), "--exams", "--format", "json", *flags)
        assert json.loads(empty.stdout)["exams"] == [], flags
    bad = thermoscreen("report", "--db", str(db), "--since", "yesterday")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since" in bad.stderr

    # the same renderer as the record's report.html: from the device's folder, or the summary
    out = tmp_path / "report.html"
    args = ["report", "--db", str(db), "--exam", ids[0], "--out", str(out)]
    assert thermoscreen(*args, "--exams-dir", str(tmp_path / "exams")).returncode == 0
    on_device = (tmp_path / "exams" / ids[0] / "report.html").read_text()
    assert out.read_text() == on_device and "data:image/png;base64," in on_device
    assert thermoscreen(*args).returncode == 0
    from_db = out.read_text()
    assert ids[0] in from_db and "SYNTHETIC MODEL" in from_db and "adjunct" in from_db.lower()
    assert "frontal.png" in from_db and "data:image/png" not in from_db  # named, not shown
    missing = thermoscreen("report", "--db", str(db), "--exam", "NOPE")
    assert missing.returncode == 2 and "exam NOPE: not in this database" in missing.stderr
