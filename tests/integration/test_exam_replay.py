"""Exams that a run makes by itself (`run --exam ID --view V`), the synthetic-model guard, and a
crash in the middle of an exam: a real mosquitto, real DMR-IR matrices, a real (tiny) model."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.capture.base import SourceOptions
from pipeline.capture.factory import open_source
from pipeline.classify.factory import load_classifier
from pipeline.config import load_config
from pipeline.data.dmr import load_frame, parse_dmr_name
from pipeline.devtools.demo import ResultWatcher
from pipeline.exam.store import CRASH_REASON
from pipeline.mqtt.payload import schema_errors
from pipeline.preprocess import PreprocessConfig, render
from pipeline.run.exam import ExamPlan
from pipeline.run.examctl import Exchange
from pipeline.run.wiring import RunError, run
from tests.conftest import REPO, Broker

pytestmark = pytest.mark.timeout(240)
DEVICE = "edge-replay"
PATIENTS = 10


def patient(path: Path) -> str:
    name = parse_dmr_name(path)
    assert name is not None
    return name.patient_id


def some_patients(shared_dmr: Path, folder: Path) -> list[Path]:
    """Links to the first PATIENTS / 2 matrices of each diagnosis (read in place, not copied)."""
    with (shared_dmr / "labels.csv").open() as fh:
        labels = {int(row["patient_id"]): row["diagnosis"] for row in csv.DictReader(fh)}
    chosen: list[Path] = []
    files = sorted(shared_dmr.glob("T*.txt.gz"))
    for diagnosis in ("Healthy", "Sick"):
        chosen += [f for f in files if labels[int(patient(f))] == diagnosis][: PATIENTS // 2]
    chosen.sort()
    folder.mkdir()
    for path in chosen:
        (folder / path.name).symlink_to(path)
    return chosen


def test_a_dmr_replay_makes_one_exam_per_patient_scored_like_the_model(
    broker: Broker, tiny_model: Path, shared_dmr: Path, tmp_path: Path
) -> None:
    files = some_patients(shared_dmr, tmp_path / "dmr")
    cfg = load_config(
        None,
        {
            "device_id": DEVICE,
            "source": f"dmr://{tmp_path / 'dmr'}",
            "model.dir": str(tiny_model),
            "model.threshold": 0.0,
            "mqtt.port": broker.port,
            "outbox.path": str(tmp_path / "outbox.sqlite"),
            "exam.exams_dir": str(tmp_path / "exams"),
        },
        env={},
    )
    with ResultWatcher(broker.host, broker.port, DEVICE) as watcher:
        summary = run(cfg, exam_plan=ExamPlan("DMR", "frontal"))
        watcher.wait(lambda: watcher.count("summary") >= len(files), 20)
    assert summary.exams is not None and summary.exams["closed"] == len(files)
    records = {r["exam_id"]: r for r in watcher.bodies("summary")}
    ids = [f"DMR-T{patient(f)}" for f in files]
    assert sorted(records) == sorted(ids)

    # the pipeline's exam verdicts match the model's own per-patient scores
    classifier = load_classifier(tiny_model, backend="onnxruntime", threshold=0.0)
    preprocess = PreprocessConfig()
    sick = classifier.labels.index("sick")
    try:
        for path, exam_id in zip(files, ids, strict=True):
            record = records[exam_id]
            assert schema_errors(record, "exam-summary") == []
            assert record["state"] == "closed" and record["acclimatization"]["basis"] == (
                "not-observed"
            )
            score = classifier.classify(render(load_frame(path), preprocess)).scores[sick]
            verdict = record["verdict"]
            assert verdict["frames"] == 1 and verdict["score"] == pytest.approx(score, abs=1e-6)
            assert verdict["positive"] == (verdict["score"] >= verdict["threshold"])
    finally:
        classifier.close()
    results = watcher.bodies("result")
    assert [r["file"] for r in results] == [f.name for f in files]
    assert [r["exam_id"] for r in results] == ids
    assert all(r["view"] == "frontal" and r["quality"]["accepted"] for r in results)


def test_an_exam_id_is_never_reused_by_a_replay(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "exams" / "DMR-T0002").mkdir(parents=True)
    cfg = load_config(
        None,
        {
            "source": str(tmp_path),
            "model.dir": str(tiny_model),
            "exam.exams_dir": str(tmp_path / "exams"),
        },
        env={},
    )
    with pytest.raises(RunError, match="--exam DMR: already used in"):
        run(cfg, exam_plan=ExamPlan("DMR", "frontal"))
    with pytest.raises(RunError, match="--exam: 'a b' is not an exam id"):
        run(cfg, exam_plan=ExamPlan("a b", "frontal"))


# --- the synthetic-model guard ------------------------------------------------------------------


def thermoscreen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


def test_a_synthetic_model_never_silently_serves_a_live_camera(
    broker: Broker, tiny_model: Path, tmp_path: Path
) -> None:
    manifest = json.loads((tiny_model / "model.json").read_text())
    assert manifest["synthetic"] is True
    camera = "gst://videotestsrc is-live=true pattern=ball ! video/x-raw,width=64,height=48"
    common = ["--model", str(tiny_model), "--broker", f"127.0.0.1:{broker.port}"]
    common += ["--outbox", str(tmp_path / "outbox.sqlite"), "--exams-dir", str(tmp_path / "e")]
    common += ["--log-level", "ERROR"]
    refused = thermoscreen("run", camera, *common, "--max-frames", "3")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "is SYNTHETIC" in refused.stderr and "--allow-synthetic-model" in refused.stderr
    with ResultWatcher(broker.host, broker.port) as watcher:
        allowed = thermoscreen(
            "run", camera, *common, "--max-frames", "3", "--allow-synthetic-model"
        )
        assert allowed.returncode == 0, allowed.stderr
        watcher.wait(lambda: watcher.count("result") >= 3, 10)
    assert "SYNTHETIC MODEL" in allowed.stdout
    assert all(r["synthetic_model"] is True for r in watcher.bodies("result"))
    session = watcher.bodies("session")[0]
    assert session["synthetic_model"] is True and session["schema"] == 3


# --- a crash mid-exam --------------------------------------------------------------------------


def test_a_crash_mid_exam_leaves_an_aborted_record_and_loses_no_result(
    broker: Broker, tiny_model: Path, tmp_path: Path
) -> None:
    args = ["run", "test://?fps=10&width=96&height=72", "--model", str(tiny_model)]
    args += ["--broker", f"127.0.0.1:{broker.port}", "--device-id", DEVICE]
    args += ["--outbox", str(tmp_path / "outbox.sqlite"), "--exams-dir", str(tmp_path / "exams")]
    cfg = load_config(None, {"device_id": DEVICE, "mqtt.port": broker.port}, env={})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with ResultWatcher(broker.host, broker.port, DEVICE) as watcher:
        first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=REPO)
        try:
            idle = lambda: any(s["state"] == "idle" for s in watcher.bodies("exam"))  # noqa: E731
            assert watcher.wait(idle, 60)
            exchange = Exchange(cfg, {"action": "start", "exam_id": "ACC-CRASH"})
            exchange.run(30)
            assert exchange.answer is not None and exchange.answer["state"] == "acclimatizing"
            assert watcher.wait(lambda: watcher.count("result") >= 20, 30)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        record = json.loads((tmp_path / "exams" / "ACC-CRASH" / "exam.json").read_text())
        assert record["state"] == "acclimatizing"  # the crash left it open
        session = watcher.bodies("result")[0]["session_id"]
        second = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args, "--max-frames", "5"], env=env, cwd=REPO
        )
        assert second.wait(60) == 0
        assert watcher.wait(lambda: watcher.count("summary") >= 1, 15)
    record = json.loads((tmp_path / "exams" / "ACC-CRASH" / "exam.json").read_text())
    assert (record["state"], record["abort_reason"], record["verdict"]) == (
        "aborted",
        CRASH_REASON,
        None,
    )
    summary: dict[str, Any] = watcher.bodies("summary")[0]
    assert (summary["exam_id"], summary["state"]) == ("ACC-CRASH", "aborted")
    # every result the killed run committed to its outbox arrived, the rest on the second start
    seqs = sorted({r["seq"] for r in watcher.bodies("result") if r["session_id"] == session})
    assert seqs == list(range(len(seqs))) and len(seqs) >= 20


def test_the_test_source_patient_settles(tmp_path: Path) -> None:
    """`test://?settle_s=` starts warm and cools to its steady skin temperature."""
    source = open_source("test://?settle_s=2&fps=20&width=80&height=60", SourceOptions())
    source.open()
    try:
        first = source.read(2.0)
        time.sleep(2.5)
        later = [source.read(2.0) for _ in range(3)][-1]
    finally:
        source.close()
    assert first is not None and later is not None
    body = first.pixels > 27.0
    drop = float(first.pixels[body].mean() - later.pixels[body].mean())
    assert 1.0 < drop < 1.6  # nearly all of the 1.5 C excess is gone after 5 time constants
