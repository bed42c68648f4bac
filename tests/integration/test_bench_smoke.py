"""`thermoscreen bench` end to end on a tiny real model, a real mosquitto, a real GStreamer
recording and real DMR-IR matrices; the naive loop against a real broker. The arithmetic of the
report is unit-tested in tests/unit/test_bench_summary.py.

No timing assertions: the report's numbers are checked for shape and consistency, never speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.devtools.bench.cpu import MODEL
from pipeline.devtools.bench.variants import REFERENCE, REPLAY_WAY, measure_variants
from tests.conftest import REPO, Broker


def _synth_mp4(out: Path, frames: int) -> Path:
    cmd = [sys.executable, "-m", "pipeline.cli", "synth", "--kind", "mp4", "--frames", str(frames)]
    cmd += ["--fps", "30", "--patients", "2", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    return out / "recording.mp4"


def _quick_bench(tmp_path: Path, model: Path, data: Path) -> dict:  # type: ignore[type-arg]
    video = _synth_mp4(tmp_path / "rec", 24)
    out = tmp_path / "results"
    code = (
        "import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'bench imported torch'; sys.exit(rc)"
    )
    args = ["bench", "--model", str(model), "--model", str(model), "--video", str(video)]
    args += ["--data", str(data), "--out", str(out), "--quick", "--no-naive"]
    run = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report: dict = json.loads((out / "bench.json").read_text())  # type: ignore[type-arg]
    report["_md"] = (out / "bench.md").read_text()
    return report


@pytest.mark.slow
def test_quick_bench_writes_a_well_formed_report(
    tmp_path: Path, tiny_model: Path, shared_dmr: Path
) -> None:
    report = _quick_bench(tmp_path, tiny_model, shared_dmr)
    keys = [m["key"] for m in report["models"]]
    assert [m["role"] for m in report["models"]] == ["shipped", "demo"]
    assert len(set(keys)) == 2  # the same model twice gets two keys
    assert report["settings"]["sources"] == ["mp4", "png16", "dmr"]
    assert report["settings"]["recordings"]["dmr"]["files"] == 12
    rep = report["repeats"][0]["models"][keys[0]]
    for src, replay in rep["replay"].items():
        # replay drops nothing: every frame came back as a result, in sequence (folders loop)
        assert replay["frames"] == 20 and replay["results"] == 20, src
        assert replay["missing"] == 0 and replay["seq_gaps"] == 0, src
        assert replay["fps"] > 0 and 0 < replay["first_result_s"] < replay["wall_s"], src
        assert replay["max_rss_mb"] > 50  # python + onnxruntime, really measured
        ratio = report["summary"]["replay_vs_bare"][src][keys[0]]["median"]
        assert math.isclose(ratio, replay["fps"] / rep["bare"]["fps"])
    # the model's limit is the faster of its two ways: one frame on every core, one per core
    ways = [rep["bare"]["one_at_a_time"], rep["bare"].get("side_by_side", {"fps": 0.0})]
    assert rep["bare"]["fps"] == max(w["fps"] for w in ways)
    assert rep["bare"]["cpu_ms_per_frame"] > 0
    # per-thread CPU of the DMR replay: the probe named the threads and timed the inferences
    cpu = rep["replay"]["dmr"]["cpu"]
    assert cpu is not None and cpu["frames"] >= 1, cpu
    groups = cpu["cpu_ms_per_frame"]
    # a 20-frame replay has a short window: every named group is there, not each one busy in it
    assert {"folder decode", "publish", "mqtt client", "classify"} <= groups.keys(), groups
    assert groups[MODEL] > 0 and cpu["non_model_ms_per_frame"] > 0
    assert math.isclose(cpu["total_ms_per_frame"], sum(groups.values()), rel_tol=1e-3)
    assert report["parse"]["files"] == 12 and report["parse"]["read_matrix_ms_median"] > 0
    live = report["live"][0]
    assert live["model"] == keys[0] and live["source_fps"] == 30 and live["results"] > 10
    assert live["dropped"] == live["frames_seen"] - live["results"]
    lat = live["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["onnxruntime"]
    # how close the bare model runs to this machine's dense FP32 rate, from two real measurements
    sgemm, gflop = report["machine"]["sgemm_gflops_per_core"], report["models"][0]["gflop"]
    assert sgemm > 1 and gflop > 0
    per_core = gflop * rep["bare"]["fps"] / report["machine"]["cores_usable"]
    assert math.isclose(report["summary"]["bare_vs_sgemm"][keys[0]]["median"], per_core / sgemm)
    sha = json.loads((tiny_model / "model.json").read_text())["sha256"]
    assert report["models"][0]["sha256"] == sha
    names = [t["target"] for t in report["summary"]["targets"]]
    assert f"{keys[0]} dmr replay / bare" in names and "pipeline peak RSS (MB)" in names
    assert all(isinstance(t["met"], bool) for t in report["summary"]["targets"])
    # the operator console watched: the same replay, and a live run, with a viewer on its stream
    watched = rep["replay_console"]
    assert watched["source"] == "mp4" and watched["results"] == 20 and watched["missing"] == 0
    assert watched["console"]["frames_streamed"] >= 1
    ratio = report["summary"]["console_replay_vs_plain"]["median"]
    assert math.isclose(ratio, watched["fps"] / rep["replay"]["mp4"]["fps"])
    live_watched = report["live_console"][0]
    assert live_watched["results"] > 10 and live_watched["console"]["frames_streamed"] >= 1
    assert f"{keys[0]} mp4 replay, console watched / not" in names
    md = report["_md"]
    assert "| **DMR-IR matrix folder replay / bare** |" in md and "adjunct to mammography" in md
    assert "console watched / not**" in md and "fps, console watched" in md
    assert "| **non-model** |" in md and report["command"] in md


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


@pytest.mark.slow
def test_other_ways_to_run_a_model_are_checked_against_the_reference(
    tmp_path: Path, tiny_model: Path
) -> None:
    rng = np.random.default_rng(0)
    tensors = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(4)]
    found = measure_variants(tiny_model, tensors, frames=8, rounds=1, tmp=tmp_path)
    rows = {v["variant"]: v for v in found["variants"]}
    ref = rows[REFERENCE]
    assert ref["max_abs_diff"] == 0.0 and ref["fps_vs_reference"] == 1.0
    assert not ref["worth_an_option"] and not rows[REPLAY_WAY]["worth_an_option"]
    # the same FP32 graph on other threads gives the same probabilities
    assert rows[REPLAY_WAY]["within_tolerance"] and rows[REPLAY_WAY]["top1_agreement"] == 1.0
    assert all(v["fps_median"] > 0 and v["cpu_ms_per_frame_median"] > 0 for v in rows.values())
    dynamic = next(v for name, v in rows.items() if "dynamic INT8" in name)
    assert dynamic["max_abs_diff"] > 0  # quantized weights do change the numbers
