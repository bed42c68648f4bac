"""`thermoscreen bench` end to end on a tiny real model, a real mosquitto and a real GStreamer
recording; the naive loop against a real broker; the latency-trend and ratio arithmetic.

No timing assertions: the report's numbers are checked for shape and consistency, never speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.devtools.bench import (
    Received,
    capture_to_delivery_fps,
    latency_trend,
    steady_fps,
    summarize,
)
from tests.conftest import REPO, Broker


def _synth_mp4(out: Path, frames: int) -> Path:
    cmd = [sys.executable, "-m", "pipeline.cli", "synth", "--kind", "mp4", "--frames", str(frames)]
    cmd += ["--fps", "30", "--patients", "2", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    return out / "recording.mp4"


@pytest.mark.slow
def test_quick_bench_writes_a_well_formed_report(tmp_path: Path, tiny_model: Path) -> None:
    video = _synth_mp4(tmp_path / "rec", 24)
    out = tmp_path / "results"
    code = (
        "import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'bench imported torch'; sys.exit(rc)"
    )
    args = ["bench", "--model", str(tiny_model), "--video", str(video), "--out", str(out)]
    args += ["--quick", "--no-naive"]
    run = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "bench.json").read_text())
    rep = report["repeats"][0]
    # replay drops nothing: every frame of the recording came back as a result, in sequence
    assert rep["pipeline"]["frames"] == 20
    assert rep["pipeline"]["results"] == 20
    assert rep["pipeline"]["missing"] == 0 and rep["pipeline"]["seq_gaps"] == 0
    assert rep["bare"]["fps"] > 0 and rep["pipeline"]["fps"] > 0
    # the model's limit is the faster of its two ways: one frame on every core, one per core
    ways = [rep["bare"]["one_at_a_time"], rep["bare"].get("side_by_side", {"fps": 0.0})]
    assert rep["bare"]["fps"] == max(w["fps"] for w in ways)
    if report["machine"]["cores_usable"] > 1:
        side = rep["bare"]["side_by_side"]
        assert (side["callers"], side["intra_op_threads"]) == (report["machine"]["cores_usable"], 1)
    assert 0 < rep["pipeline"]["first_result_s"] < rep["pipeline"]["wall_s"]
    assert rep["pipeline"]["max_rss_mb"] > 50  # python + onnxruntime + GStreamer, really measured
    ratio = report["summary"]["replay_vs_bare"]["median"]
    assert math.isclose(ratio, rep["pipeline"]["fps"] / rep["bare"]["fps"])
    live = report["live"][0]
    assert live["source_fps"] == 30 and live["results"] > 10
    assert live["dropped"] == live["frames_seen"] - live["results"]
    lat = live["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["onnxruntime"]
    assert (
        report["model"]["sha256"] == json.loads((tiny_model / "model.json").read_text())["sha256"]
    )
    names = [t["target"] for t in report["summary"]["targets"]]
    assert "replay throughput / bare" in names and "pipeline peak RSS (MB)" in names
    assert all(isinstance(t["met"], bool) for t in report["summary"]["targets"])
    # how close the bare model runs to this machine's dense FP32 rate, from two real measurements
    sgemm, gflop = report["machine"]["sgemm_gflops_per_core"], report["model"]["gflop"]
    assert sgemm > 1 and gflop > 0
    per_core = gflop * rep["bare"]["fps"] / report["machine"]["cores_usable"]
    assert math.isclose(report["summary"]["bare_vs_sgemm"]["median"], per_core / sgemm)
    md = (out / "bench.md").read_text()
    assert "| pipeline / bare |" in md and "adjunct to mammography" in md
    assert "| bare / sgemm" in md
    assert report["command"] in md


@pytest.mark.slow
def test_naive_loop_publishes_one_acknowledged_result_per_frame(
    tmp_path: Path, broker: Broker
) -> None:
    video = _synth_mp4(tmp_path / "rec", 6)
    got: list[dict[str, object]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.connect(broker.host, broker.port)
    sub.subscribe("thermoscreen/naive/#", qos=1)
    sub.loop_start()
    try:
        cmd = [sys.executable, "-m", "pipeline.devtools.naive", "--video", str(video)]
        cmd += ["--broker", f"{broker.host}:{broker.port}", "--max-frames", "5", "--threads", "1"]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        stats = json.loads(run.stdout.strip().splitlines()[-1])
        for _ in range(50):
            if len(got) >= 5:
                break
            time.sleep(0.1)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert stats["frames"] == 5 and stats["torch_threads"] == 1
    assert [m["frame_index"] for m in got] == [0, 1, 2, 3, 4]
    assert all(math.isclose(sum(m["scores"]), 1.0, rel_tol=1e-5) for m in got)  # type: ignore[arg-type]


def test_naive_loop_rejects_a_bad_broker_address(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.devtools.naive",
        "--video",
        "x.mp4",
        "--broker",
        "nohost",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 2
    assert "HOST:PORT" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def _rx(t: float) -> Received:
    return Received("thermoscreen/d/cam0/result", t, t, b"{}")


WARM = 5.0


@pytest.mark.parametrize("slow_down", [False, True])
def test_latency_trend_tells_growing_latency_from_flat(slow_down: bool) -> None:
    times = [WARM + i * 0.1 for i in range(600)]
    lat = [20.0 + (i * 0.2 if slow_down else (i % 7) * 0.5) for i in range(600)]
    trend = latency_trend(times, lat, inference_ms=[10.0] * 600)
    assert trend["flat"] is (not slow_down)
    assert len(trend["windows"]) == 6
    assert all(w["inference_p50_ms"] == 10.0 for w in trend["windows"])
    assert (trend["slope_ms_per_min"] > 60) is slow_down


def test_steady_fps_counts_intervals_between_first_and_last_result() -> None:
    assert steady_fps([_rx(10.0 + i * 0.05) for i in range(21)]) == pytest.approx(20.0)
    assert math.isnan(steady_fps([_rx(1.0)]))


def test_replay_rate_runs_from_first_capture_so_an_outbox_burst_cannot_inflate_it() -> None:
    # 20 frames captured over 1 s, all delivered in one burst at t = 1.5 s (connect was late)
    burst = [_rx(1.5 + i * 1e-4) for i in range(20)]
    captured = [0.5 + i * 0.05 for i in range(20)]
    assert capture_to_delivery_fps(burst, captured) == pytest.approx(20.0, rel=0.01)
    assert steady_fps(burst) > 1000  # first-to-last arrival would report nonsense


def test_summary_ratios_are_per_repeat_and_targets_follow_them() -> None:
    def rep(bare: float, pipe: float, naive: float) -> dict[str, dict[str, float]]:
        return {
            "bare": {
                "fps": bare,
                "inference_ms_p50": 1000 / bare,
                "one_at_a_time": {"fps": bare},
                "side_by_side": {"fps": 0.9 * bare},
            },
            "pipeline": {"fps": pipe, "max_rss_mb": 200.0, "first_result_s": 1.0},
            "naive": {"fps": naive},
        }

    live = {
        "source_fps": 30,
        "latency_ms": {"p99": 30.0},
        "trend": {"flat": True, "slope_ms_per_min": 0.1},
        "max_rss_mb": 260.0,
    }
    report = {
        "repeats": [rep(50, 48, 20), rep(40, 30, 10)],
        "live": [live],
        "model": {"gflop": 4.0},
        "machine": {"sgemm_gflops_per_core": 100.0, "cores_usable": 2},
    }
    s = summarize(report)
    # 4 GFLOP x 50 frames/s over 2 cores = 100 GFLOP/s a core: all of a core's sgemm rate
    assert s["bare_vs_sgemm"]["max"] == pytest.approx(1.0)
    assert s["bare_vs_sgemm"]["min"] == pytest.approx(0.8)
    assert s["replay_vs_bare"]["min"] == pytest.approx(0.75)
    assert s["replay_vs_bare"]["max"] == pytest.approx(0.96)
    assert s["replay_vs_naive"]["median"] == pytest.approx((2.4 + 3.0) / 2)
    assert s["bare_vs_naive"]["median"] == pytest.approx((2.5 + 4.0) / 2)  # the ceiling
    assert s["replay_int8_vs_naive"]["n"] == 0  # no INT8 run in these repeats
    met = {t["target"]: t["met"] for t in s["targets"]}
    assert met["replay throughput / naive"] is True
    assert met["replay throughput / bare"] is False  # median 0.855
    assert met["pipeline peak RSS (MB)"] is False  # the live process peaked at 260 MB
    # single inference: median of 20 and 25 ms; bound 1.5 x 22.5 + 5 = 38.75 ms
    assert met["live 30 fps p99 latency (ms)"] is True
    live["latency_ms"] = {"p99": 40.0}
    assert {t["target"]: t["met"] for t in summarize(report)["targets"]}[
        "live 30 fps p99 latency (ms)"
    ] is False
