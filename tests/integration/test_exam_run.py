"""The screening exam end to end: a real mosquitto, a live `test://` patient whose skin settles,
a real (tiny) ONNX model, commands over MQTT exactly as `thermoscreen exam` sends them, and the
record and report on disk."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.config import AppConfig, load_config
from pipeline.devtools.demo import ResultWatcher
from pipeline.exam.commands import ExamState
from pipeline.mqtt.payload import schema_errors
from pipeline.run.examctl import Exchange
from pipeline.run.live import LiveView
from pipeline.run.stats import RunSummary
from pipeline.run.wiring import run
from tests.conftest import Broker

pytestmark = pytest.mark.timeout(240)
DEVICE = "edge-exam"
SETTLE_S = 12.0
MIN_S = 3.0
DRIFT_LIMIT = 0.3


def exam_config(broker: Broker, model: Path, tmp_path: Path, **more: Any) -> AppConfig:
    """A live synthetic patient whose skin settles in ~SETTLE_S s, and an acclimatization
    compressed to match: 3 s minimum, drift over the last 10 s under 0.3 C/min."""
    return load_config(
        None,
        {
            "device_id": DEVICE,
            "source": f"test://?settle_s={SETTLE_S:g}&fps=10&width=160&height=120",
            "model.dir": str(model),
            "model.threshold": 0.0,  # every class in top_k: the tests read the sick probability
            "mqtt.port": broker.port,
            "outbox.path": str(tmp_path / "outbox.sqlite"),
            "exam.exams_dir": str(tmp_path / "exams"),
            "exam.acclimatization.min_s": MIN_S,
            "exam.acclimatization.drift_window_s": 10,
            "exam.acclimatization.drift_limit_c_per_min": DRIFT_LIMIT,
            "flush_timeout_s": 10,
            **more,
        },
        env={},
    )


@dataclass
class LiveRun:
    """`run` in a thread, with a watcher on every topic of the device."""

    cfg: AppConfig
    watcher: ResultWatcher
    stop: threading.Event = field(default_factory=threading.Event)
    summary: list[RunSummary] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> LiveRun:
        self.thread = threading.Thread(target=lambda: self.summary.append(run(self.cfg, self.stop)))
        self.thread.start()
        assert self.wait_state(lambda s: s["state"] == "idle", 30), "no retained exam state"
        return self

    def finish(self) -> RunSummary:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)
        assert self.summary, "the run did not end"
        return self.summary[0]

    def command(self, **command: Any) -> dict[str, Any]:
        """Send one exam/set command the way the CLI does; return the run's answer."""
        exchange = Exchange(self.cfg, command)
        exchange.run(30.0)  # returns as soon as the answer is in
        assert exchange.failure is None and exchange.answer is not None, "no answer"
        assert schema_errors(exchange.answer, "exam") == []
        return exchange.answer

    def states(self) -> list[dict[str, Any]]:
        return self.watcher.bodies("exam")

    def wait_state(self, test: Callable[[dict[str, Any]], bool], timeout_s: float) -> bool:
        return self.watcher.wait(lambda: any(test(s) for s in self.states()), timeout_s)


@pytest.fixture
def live_run(broker: Broker, tiny_model: Path, tmp_path: Path) -> Iterator[LiveRun]:
    with ResultWatcher(broker.host, broker.port, DEVICE) as watcher:
        live = LiveRun(exam_config(broker, tiny_model, tmp_path), watcher).start()
        try:
            yield live
        finally:
            if live.thread is not None and live.thread.is_alive():
                live.finish()


def positive(result: dict[str, Any]) -> float:
    return next(t["score"] for t in result["result"]["top_k"] if t["label"] == "sick")


def test_a_whole_exam_through_mqtt_commands(live_run: LiveRun) -> None:
    answer = live_run.command(action="start", exam_id="ACC-0001", ambient_c=22.5, humidity_pct=41)
    assert (answer["exam_id"], answer["state"], answer["last_error"]) == (
        "ACC-0001",
        "acclimatizing",
        None,
    )
    # the minimum time passes while the skin still cools: not ready, by measured drift
    assert live_run.wait_state(
        lambda s: (
            s["state"] == "acclimatizing"
            and s["acclimatization"]["elapsed_s"] >= MIN_S + 1
            and s["acclimatization"]["drift_c_per_min"] is not None
            and abs(s["acclimatization"]["drift_c_per_min"]) > DRIFT_LIMIT
        ),
        30,
    ), "drift never measured above the limit after the minimum time"
    assert live_run.wait_state(lambda s: s["state"] == "ready", 60), "never became ready"
    ready = next(s for s in live_run.states() if s["state"] == "ready")
    accl = ready["acclimatization"]
    assert accl["basis"] == "drift" and accl["override"] is False
    assert abs(accl["drift_c_per_min"]) <= DRIFT_LIMIT and accl["elapsed_s"] > MIN_S + 1

    assert live_run.command(action="view", view="frontal")["state"] == "capturing"
    assert live_run.wait_state(lambda s: s["frames"]["accepted"] >= 15, 30)
    assert live_run.command(action="view", view="left-oblique")["view"] == "left-oblique"
    oblique = lambda s: s["frames"]["by_view"].get("left-oblique", {"accepted": 0})  # noqa: E731
    assert live_run.wait_state(lambda s: oblique(s)["accepted"] >= 5, 30)
    closed = live_run.command(action="close")
    assert closed["state"] == "closed" and closed["exam_verdict"]["final"] is True
    assert live_run.watcher.wait(lambda: live_run.watcher.count("summary") >= 1, 15)
    time.sleep(1.0)  # a few results after the close: they belong to no exam
    summary = live_run.finish()
    assert summary.exams is not None and summary.exams["closed"] == 1

    record = live_run.watcher.bodies("summary")[0]
    assert schema_errors(record, "exam-summary") == []
    check_summary(record)
    check_results(live_run.watcher.bodies("result"), record)
    check_record_on_disk(live_run.cfg.exam.exams_dir / "ACC-0001", record)


def check_summary(record: dict[str, Any]) -> None:
    assert (record["exam_id"], record["state"], record["synthetic_model"]) == (
        "ACC-0001",
        "closed",
        True,
    )
    assert record["acclimatization"]["basis"] == "drift"
    assert record["acclimatization"]["criteria_met"] is True
    assert len(record["acclimatization"]["skin_samples"]) >= 10
    assert (record["ambient"]["ambient_c"], record["ambient"]["humidity_pct"]) == (22.5, 41)
    assert set(record["views"]) == {"frontal", "left-oblique"}
    verdict = record["verdict"]
    # the verdict is over the model's view (frontal) only, and agrees with its counts
    assert verdict["frames_by_view"] == {"frontal": record["views"]["frontal"]["accepted_frames"]}
    assert verdict["positive"] == (verdict["score"] >= verdict["threshold"])
    assert {k["view"] for k in record["key_frames"]} == {"frontal", "left-oblique"}


def check_results(results: list[dict[str, Any]], record: dict[str, Any]) -> None:
    for r in results:
        assert schema_errors(r, "result") == [] and r["schema"] == 2
        assert r["synthetic_model"] is True and r["file"] is None
    frontal = [r for r in results if r["exam_id"] == "ACC-0001" and r["view"] == "frontal"]
    accepted = [r for r in frontal if r["quality"]["accepted"]]
    assert len(accepted) == record["verdict"]["frames"]
    mean = sum(positive(r) for r in accepted) / len(accepted)
    assert record["verdict"]["score"] == pytest.approx(mean, abs=2e-6)
    resting = [r for r in results if r["exam_id"] == "ACC-0001" and r["view"] is None]
    assert resting and all(r["quality"] is None for r in resting)  # no gates before a view
    outside = [r for r in results if r["exam_id"] is None]
    assert outside and outside[-1]["seq"] == results[-1]["seq"]  # after the close: no exam


def check_record_on_disk(folder: Path, record: dict[str, Any]) -> None:
    on_disk = json.loads((folder / "exam.json").read_text())
    assert on_disk["state"] == "closed" and on_disk["verdict"] == record["verdict"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("exam.json", "report.html", "frontal.png", "left-oblique.png"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    key = cv2.imread(str(folder / "frontal.png"), cv2.IMREAD_UNCHANGED)
    assert key.dtype == np.uint16 and key.shape == (120, 160)  # lossless radiometric PNG16
    report = (folder / "report.html").read_text()
    verdict = record["verdict"]
    for text in ("ACC-0001", verdict["label"], f"{verdict['threshold']:.2f}", "SYNTHETIC"):
        assert text in report, text
    assert "adjunct" in report and "mammography" in report


# --- refusals -----------------------------------------------------------------------------------


def _kept(state: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(state[k] for k in ("exam_id", "state", "view", "started", "ambient_c"))


REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"action": "jump"}, "action: 'jump' is not an action"),
    ({"action": "start", "exam_id": "bad id!"}, "is not an exam id"),
    ({"action": "start", "exam_id": "ACC-9"}, "close or abort it before starting another"),
    ({"action": "view", "view": "top"}, "view: 'top' is not a view"),
    ({"action": "view", "view": "frontal"}, "view: refused while acclimatizing"),
    ({"action": "ready", "ambient_c": 80}, "ambient_c: 80 is out of range"),
    ({"action": "close"}, "close: refused while acclimatizing"),
]


def test_every_refusal_is_answered_with_last_error_and_changes_nothing(live_run: LiveRun) -> None:
    idle = live_run.command(action="ready")
    assert idle["state"] == "idle" and "ready: refused while idle" in idle["last_error"]
    started = live_run.command(action="start", exam_id="ACC-1", ambient_c=21)
    assert started["last_error"] is None
    for command, error in REFUSALS:
        answer = live_run.command(**command)
        assert error in (answer["last_error"] or ""), (command, answer["last_error"])
        assert _kept(answer) == _kept(started), command
    aborted = live_run.command(action="abort", reason="patient left")
    assert (aborted["state"], aborted["abort_reason"]) == ("aborted", "patient left")
    reused = live_run.command(action="start", exam_id="ACC-1")
    assert "ACC-1 was already used" in reused["last_error"] and reused["state"] == "aborted"
    assert live_run.command(action="start", exam_id="ACC-2")["state"] == "acclimatizing"
    live_run.finish()
    record = json.loads((live_run.cfg.exam.exams_dir / "ACC-1" / "exam.json").read_text())
    assert (record["state"], record["abort_reason"], record["verdict"]) == (
        "aborted",
        "patient left",
        None,
    )
    # the run ended with ACC-2 still resting: aborted, with the reason, never a verdict
    left = json.loads((live_run.cfg.exam.exams_dir / "ACC-2" / "exam.json").read_text())
    assert left["state"] == ExamState.ABORTED.value
    assert left["abort_reason"] == "the run ended (stopped) during the exam"


def test_the_cli_prints_one_line_and_exits_non_zero_on_refusal(
    live_run: LiveRun, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main as cli

    port, base = live_run.cfg.mqtt.port, ["--device-id", DEVICE, "--broker"]
    where = [*base, f"127.0.0.1:{port}", "--timeout", "30"]
    assert cli(["exam", "start", "--id", "ACC-7", "--ambient-c", "22", *where]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("exam ACC-7: acclimatizing (rest ") and out.count("\n") == 1
    assert "SYNTHETIC MODEL" in out and "thermoscreen exam:" not in err
    assert cli(["exam", "view", "frontal", *where]) == 1
    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if line.startswith("thermoscreen exam:")]
    assert out == "" and len(said) == 1  # (the run in this process may log to stderr too)
    assert said[0].startswith("thermoscreen exam: refused: view: refused while acclimatizing")
    assert cli(["exam", "ready", "--reason", "patient could not wait", *where]) == 0
    assert (
        capsys.readouterr().out
        == "exam ACC-7: ready; SYNTHETIC MODEL (demo, not a medical model)\n"
    )
    assert cli(["exam", "view", "lateral", *where]) == 1
    assert "view: 'lateral' is not a view" in capsys.readouterr().err
    assert cli(["exam", "view", "frontal", *where]) == 0
    assert "capturing, view frontal" in capsys.readouterr().out
    assert cli(["exam", "close", *where]) == 0
    assert "closed; exam verdict" in capsys.readouterr().out
    assert cli(["exam", "start", "--id", "ACC-7", *where]) == 1
    assert "ACC-7 was already used" in capsys.readouterr().err
    live_run.finish()
    record = json.loads((live_run.cfg.exam.exams_dir / "ACC-7" / "exam.json").read_text())
    override = record["acclimatization"]["override"]
    assert override is not None and override["reason"] == "patient could not wait"


def test_no_answer_without_a_run(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main as cli

    code = cli(["exam", "close", "--broker", f"127.0.0.1:{broker.port}", "--timeout", "1"])
    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if line.startswith("thermoscreen exam:")]
    assert code == 3 and out == "" and len(said) == 1
    assert "no answer on thermoscreen/edge-01/cam0/exam within 1 s" in said[0]


# --- the console's window onto a run -------------------------------------------------------------


def test_the_live_view_shows_frames_exam_state_health_and_takes_commands(
    broker: Broker, tiny_model: Path, tmp_path: Path
) -> None:
    """What the operator console uses: the same validated command path as MQTT, and reads that
    never touch the stages."""
    cfg = exam_config(broker, tiny_model, tmp_path)
    live, stop, done = LiveView(), threading.Event(), []
    thread = threading.Thread(target=lambda: done.append(run(cfg, stop, live=live)))
    thread.start()
    try:
        assert wait_for(lambda: live.latest() is not None, 30), "no frame reached the view"
        state = live.exam_state()
        assert state is not None and state["state"] == "idle" and live.exams_enabled
        drawn = live.annotated()
        assert drawn is not None and drawn[1].shape == (120, 160, 3)
        assert live.annotated() is drawn or live.annotated()[0] > drawn[0]  # type: ignore[index]
        assert live.latest().overlay.exam_state is None  # type: ignore[union-attr]
        answer = live.submit_exam_command({"action": "start", "exam_id": "CON-1"})
        assert answer.ok and answer.error is None and answer.state is not None
        assert answer.state["exam_id"] == "CON-1" and answer.state["state"] == "acclimatizing"
        refused = live.submit_exam_command({"action": "view", "view": "sideways"})
        assert not refused.ok and "view: 'sideways' is not a view" in (refused.error or "")
        assert refused.state is not None and refused.state["last_error"] == refused.error
        assert wait_for(lambda: live.latest().exam.exam_id == "CON-1", 10)  # type: ignore[union-attr]
        shown = live.latest()
        assert shown is not None and shown.overlay.exam_state == "acclimatizing"
        assert shown.overlay.synthetic_model is True
        health = live.health()
        assert health["capture"]["frames"] > 0 and health["mqtt"]["connected"] is True
        assert health["exam"]["commands"] == 2 and health["exam"]["refused"] == 1
        assert health["last_result_age_s"] is not None and health["ended"] is None
    finally:
        stop.set()
        thread.join(60)
    assert done and live.ended == "stopped"
    late = live.submit_exam_command({"action": "abort"})
    assert not late.ok and late.error == "the run has ended"


def wait_for(test: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if test():
            return True
        time.sleep(0.05)
    return False
