"""End to end: generated recordings -> real GStreamer / PNG16 replay -> tiny real ONNX model ->
real mosquitto -> a paho subscriber. One schema-valid result per frame, in order, plus status,
retained state and one session summary; and a live `thermoscreen run` stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.classify.factory import load_classifier
from pipeline.config import AppConfig, load_config
from pipeline.devtools.demo import ResultWatcher
from pipeline.mqtt.payload import schema_errors
from pipeline.preprocess import PreprocessConfig, render
from pipeline.run.stats import RunSummary
from pipeline.run.wiring import run
from pipeline.types import Frame, FrameKind
from tests.conftest import REPO, Broker, free_port
from tests.helpers.wait import wait_until
from training.synth import SynthPlan
from training.synth import run as synth

pytestmark = pytest.mark.timeout(180)
N_FRAMES = 12
DEVICE = "edge-e2e"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 12-frame MP4 (8-bit) and a 12-frame 16-bit PNG sequence, made by `thermoscreen synth`."""
    root = tmp_path_factory.mktemp("recordings")
    plan = SynthPlan(
        out=root,
        kinds=("mp4", "png16"),
        patients=2,
        frames=N_FRAMES,
        fps=10.0,
        seed=3,
        sick_fraction=0.5,
        size=(120, 160),
        frames_per_patient=6,
    )
    synth(plan)
    return {"mp4": root / "mp4" / "recording.mp4", "png16": root / "png16"}


def replay_config(broker: Broker, model: Path, source: str, tmp_path: Path) -> AppConfig:
    return load_config(
        None,
        {
            "device_id": DEVICE,
            "source": source,
            "model.dir": str(model),
            "mqtt.port": broker.port,
            "mqtt.stats_interval_s": 0.2,
            "outbox.path": str(tmp_path / "outbox.sqlite"),
            "session.window_frames": 4,
            "flush_timeout_s": 10,
        },
        env={},
    )


def replay(broker: Broker, cfg: AppConfig) -> tuple[RunSummary, ResultWatcher]:
    with ResultWatcher(broker.host, broker.port, DEVICE) as watcher:
        summary = run(cfg)
        watcher.wait(
            lambda: watcher.count("session") >= 1 and "stopped" in watcher.bodies("status"), 15
        )
    return summary, watcher


def check_results(results: list[dict[str, Any]], summary: RunSummary) -> None:
    assert [r["seq"] for r in results] == list(range(N_FRAMES))
    assert [r["frame_index"] for r in results] == list(range(N_FRAMES))
    for r in results:
        assert schema_errors(r, "result") == [], r
        assert r["session_id"] == summary.session_id
        assert r["mode"] == "replay"
        assert r["device_id"] == DEVICE
        assert r["model"]["name"] == "tiny-test"
    assert len({r["message_id"] for r in results}) == N_FRAMES


def check_session_messages(watcher: ResultWatcher, summary: RunSummary) -> dict[str, Any]:
    status = watcher.bodies("status")
    assert "online" in status and status[-1] == "stopped"
    assert status.index("online") < len(status) - 1
    states = watcher.bodies("state")
    assert states, "no state message"
    for s in states:
        assert schema_errors(s, "state") == []
    assert states[-1]["state"] == "ended" and states[-1]["frames"] == N_FRAMES
    sessions = watcher.bodies("session")
    assert len(sessions) == 1
    session = sessions[0]
    assert schema_errors(session, "session") == []
    assert session["session_id"] == summary.session_id
    assert (session["frames"], session["end_reason"]) == (N_FRAMES, "eos")
    assert sum(session["counts"].values()) == N_FRAMES
    assert session["drops"] == {"handoff": 0, "outbox": 0, "output": 0, "source": 0}
    assert session["dropped_seq"] == []
    stats = watcher.bodies("stats")
    assert stats and stats[-1]["frames"]["results"] == N_FRAMES
    return session


def test_png16_replay_publishes_one_result_per_frame_with_thermal(
    broker: Broker, tiny_model: Path, recordings: dict[str, Path], tmp_path: Path
) -> None:
    cfg = replay_config(broker, tiny_model, str(recordings["png16"]), tmp_path)
    summary, watcher = replay(broker, cfg)
    assert (summary.results, summary.outbox_pending, summary.exit_code) == (N_FRAMES, 0, 0)
    results = watcher.bodies("result")
    check_results(results, summary)
    check_session_messages(watcher, summary)

    # Each result is this very frame's classification: decode, render and classify it here.
    classifier = load_classifier(tiny_model, backend="onnxruntime")
    for r, path in zip(results, sorted(recordings["png16"].glob("frame_*.png")), strict=True):
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        frame = Frame(raw, FrameKind.RAW16, 0, "x", 0.0, 0, scale=0.01)
        expected = classifier.classify(render(frame, PreprocessConfig()))
        assert r["result"]["label"] == expected.label
        assert r["result"]["score"] == pytest.approx(expected.score, abs=1e-5)
        celsius = frame.celsius()
        assert celsius is not None
        assert r["thermal"]["t_max_c"] == pytest.approx(float(celsius.max()), abs=0.01)
        assert r["thermal"]["t_min_c"] < r["thermal"]["t_mean_c"] < r["thermal"]["t_max_c"]
    classifier.close()

    # The state is retained: a subscriber that arrives afterwards still gets the final verdict.
    late = ResultWatcher(broker.host, broker.port, DEVICE).start()
    assert late.wait(lambda: late.count("state") >= 1, 10)
    retained = late.messages["state"][0]
    late.stop()
    assert retained.retain and retained.body["session_id"] == summary.session_id
    assert retained.body["state"] == "ended"


def test_mp4_replay_through_gstreamer_has_no_thermal_and_writes_annotated_output(
    broker: Broker, tiny_model: Path, recordings: dict[str, Path], tmp_path: Path
) -> None:
    annotated = tmp_path / "annotated.avi"
    cfg = replay_config(broker, tiny_model, f"file://{recordings['mp4']}", tmp_path)
    cfg = cfg.model_copy(update={"output": f"file://{annotated}"})
    cv2.setNumThreads(-1)  # OpenCV's default: a pool thread per core
    summary, watcher = replay(broker, cfg)
    # each classify worker renders on its own thread: OpenCV's pool spun beside the model
    assert cv2.getNumThreads() == 1
    assert (summary.results, summary.frames_captured, summary.exit_code) == (N_FRAMES,) * 2 + (0,)
    results = watcher.bodies("result")
    check_results(results, summary)
    assert all("thermal" not in r for r in results)  # 8-bit video carries no temperature
    assert all(r["source"].endswith("recording.mp4") for r in results)
    session = check_session_messages(watcher, summary)
    assert session["mode"] == "replay"
    video = cv2.VideoCapture(str(annotated))  # the annotated output has every frame, none dropped
    decoded = 0
    while video.read()[0]:
        decoded += 1
    video.release()
    assert decoded == N_FRAMES


def test_replay_on_several_workers_publishes_the_same_results_in_capture_order(
    broker: Broker, tiny_model: Path, recordings: dict[str, Path], tmp_path: Path
) -> None:
    # 3 workers on any machine: frames finish out of order, results must not leave that way
    seen: dict[int, list[tuple[int, str, float]]] = {}
    for workers in (1, 3):
        cfg = replay_config(broker, tiny_model, str(recordings["png16"]), tmp_path)
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"replay_workers": workers})}
        )
        summary, watcher = replay(broker, cfg)
        assert (summary.results, summary.exit_code) == (N_FRAMES, 0)
        results = watcher.bodies("result")
        check_results(results, summary)  # seq and frame_index 0..N-1 in arrival order
        seen[workers] = [
            (r["frame_index"], r["result"]["label"], r["result"]["score"]) for r in results
        ]
    assert seen[3] == seen[1]


def test_max_frames_ends_a_replay_early_as_stopped(
    broker: Broker, tiny_model: Path, recordings: dict[str, Path], tmp_path: Path
) -> None:
    cfg = replay_config(broker, tiny_model, str(recordings["png16"]), tmp_path)
    with ResultWatcher(broker.host, broker.port, DEVICE) as watcher:
        summary = run(cfg, max_frames=4)
        assert watcher.wait(lambda: watcher.count("session") >= 1, 15)
    assert (summary.frames_captured, summary.results, summary.end_reason) == (4, 4, "stopped")
    assert [r["seq"] for r in watcher.bodies("result")] == [0, 1, 2, 3]
    assert watcher.bodies("session")[0]["end_reason"] == "stopped"


def test_sigterm_stops_a_live_run_cleanly(broker: Broker, tiny_model: Path, tmp_path: Path) -> None:
    config = tmp_path / "live.yaml"
    config.write_text(
        f"device_id: {DEVICE}\n"
        "source: test://?fps=20&width=160&height=120\n"
        f"model:\n  dir: {tiny_model}\n"
        f"mqtt:\n  port: {broker.port}\n"
        f"outbox:\n  path: {tmp_path / 'outbox.sqlite'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSCREEN_")}
    with ResultWatcher(broker.host, broker.port, DEVICE) as watcher:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert watcher.wait(lambda: watcher.count("result") >= 3, 60), "no live results"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert watcher.wait(lambda: watcher.count("session") >= 1, 10)
        assert watcher.wait(lambda: watcher.bodies("status")[-1:] == ["stopped"], 10)
    assert proc.returncode == 0, err.decode()
    session = watcher.bodies("session")[0]
    assert schema_errors(session, "session") == []
    assert (session["mode"], session["end_reason"]) == ("live", "stopped")
    results = watcher.bodies("result")
    assert session["frames"] == len(results) >= 3
    assert [r["seq"] for r in results] == list(range(len(results)))
    indices = [r["frame_index"] for r in results]
    assert indices == sorted(set(indices))  # live may skip frames (counted) but never reorders
    assert all("thermal" in r for r in results)  # test:// frames are Celsius
    # every skipped frame index is accounted for as a counted drop (source or handoff)
    assert max(indices) + 1 <= len(results) + sum(session["drops"].values())
    assert "ended by stopped" in out.decode()
    assert np.isfinite(session["score"]["mean"])


def test_demo_reports_every_result_and_stops_its_broker(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.devtools.demo import main as demo

    code = demo(["--model", str(tiny_model), "--workdir", str(tmp_path), "--frames", "10"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line.split() for line in out.splitlines() if line.strip().startswith("seq ")]
    assert [int(words[1]) for words in lines] == list(range(10))
    assert "results received    10 (seq 0..9, none missing: True)" in out
    assert "/10 frames agree (synthetic truth)" in out
    assert "not a medical model" in out and "adjunct to mammography" in out
    assert out.index("operator console: http://127.0.0.1:") < out.index("seq ")  # before frames
    assert "live SYNTHETIC camera" not in out  # not a terminal: no live phase
    port = int(out.split("mosquitto on 127.0.0.1:")[1].split(";")[0])
    with pytest.raises(OSError):  # the demo's broker is gone
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert (tmp_path / "recording" / "recording.mp4").is_file()


def test_demo_keeps_the_console_on_a_live_camera_when_asked(
    tiny_model: Path, tmp_path: Path
) -> None:
    from pipeline.devtools.demo import main as demo

    port = free_port()
    args = ["--model", str(tiny_model), "--workdir", str(tmp_path), "--frames", "10"]
    args += ["--console", f"127.0.0.1:{port}", "--live-seconds", "30"]
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(demo(args)))
    thread.start()
    url = f"http://127.0.0.1:{port}/api/state"

    def live_camera_shown() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                state = json.loads(answer.read())
        except OSError:
            return False
        return state["camera_id"] == "live" and state["exams_enabled"] is True

    try:
        wait_until(lambda: live_camera_shown() or not thread.is_alive(), 120, "the live phase")
        assert live_camera_shown(), f"the demo ended first (exit {codes})"
    finally:
        thread.join(120)
    assert codes == [0]
