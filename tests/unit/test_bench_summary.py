"""The bench's arithmetic: rates, latency trend, per-thread CPU breakdown, ratios and targets.

Built from hand-made inputs with known answers; the end-to-end run of the bench is in
tests/integration/test_bench_smoke.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pipeline.devtools.bench.collector import Received, capture_to_delivery_fps, steady_fps
from pipeline.devtools.bench.cpu import (
    GSTREAMER,
    MAIN,
    MODEL,
    NATIVE,
    PROBE,
    Mark,
    SteadyWindow,
    breakdown,
)
from pipeline.devtools.bench.live import latency_trend
from pipeline.devtools.bench.summary import model_share, summarize
from pipeline.devtools.bench.variants import REFERENCE, REPLAY_WAY, Variant, summarize_variants

MS = 1_000_000  # ns


def _rx(t: float) -> Received:
    return Received("thermoscreen/d/cam0/result", t, t, b"{}")


@pytest.mark.parametrize("slow_down", [False, True])
def test_latency_trend_tells_growing_latency_from_flat(slow_down: bool) -> None:
    times = [5.0 + i * 0.1 for i in range(600)]
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


def _window(broker_ms: tuple[int, int] = (50, 60)) -> SteadyWindow:
    w = SteadyWindow(start=lambda t, n: True, end=lambda t, n: True, results=lambda: 0)
    w.first = Mark(900 * MS, 0, {"broker": broker_ms[0] * MS})
    w.last = Mark(2100 * MS, 10, {"broker": broker_ms[1] * MS})
    return w


def _sample(at_ms: int, frames: int, threads: dict[int, tuple[str, int, int]]) -> dict[str, Any]:
    rows = {str(tid): [name, cpu * MS, model * MS] for tid, (name, cpu, model) in threads.items()}
    return {"mono_ns": at_ms * MS, "frames": frames, "threads": rows}


def test_cpu_breakdown_takes_the_model_out_of_the_classify_threads() -> None:
    before = {100: ("python", 500, 0), 101: ("python", 0, 0), 102: ("classify-0", 1000, 800)}
    before |= {103: ("publish", 10, 0), 104: ("multiqueue0:src", 40, 0)}
    before |= {106: ("bench-probe", 5, 0)}
    after = {100: ("python", 510, 0), 101: ("python", 0, 0), 102: ("classify-0", 1120, 905)}
    after |= {103: ("publish", 15, 0), 104: ("multiqueue0:src", 50, 0), 105: ("decode_0", 20, 0)}
    after |= {106: ("bench-probe", 9, 0)}
    samples = [
        _sample(800, 0, before),  # before the window: not used
        _sample(1000, 5, before),
        _sample(1500, 9, after),
        _sample(2000, 15, after),
        _sample(2200, 20, {}),  # after the window: not used
    ]
    cpu = breakdown(_window(), {"pid": 100, "samples": samples})
    assert cpu is not None
    assert cpu["frames"] == 10 and cpu["window_s"] == 1.0
    per = cpu["cpu_ms_per_frame"]
    assert per[MODEL] == pytest.approx(10.5)  # 105 ms of model CPU over 10 frames
    assert per["classify"] == pytest.approx(1.5)  # 120 ms in the thread, 105 of them the model's
    assert per[MAIN] == pytest.approx(1.0)
    assert per[GSTREAMER] == pytest.approx(1.0)
    assert per["folder decode"] == pytest.approx(2.0)  # a thread that started in the window
    assert per[NATIVE] == 0.0  # unnamed threads: the executable's name, like the main thread
    assert PROBE not in per and cpu["probe_ms_per_frame"] == pytest.approx(0.4)
    assert cpu["total_ms_per_frame"] == pytest.approx((10 + 120 + 5 + 10 + 20) / 10)
    assert cpu["non_model_ms_per_frame"] == pytest.approx((10 + 15 + 5 + 10 + 20) / 10)
    assert cpu["others_ms_per_frame"]["broker"] == pytest.approx(1.0)  # per result delivered
    assert cpu["cores_busy"] == pytest.approx(0.165)


def test_cpu_breakdown_counts_native_pools_as_the_model() -> None:
    # live: one frame on every core, ONNX Runtime's pool thread does half the model's work
    before = {100: ("python", 0, 0), 101: ("python", 0, 0), 102: ("classify-0", 0, 0)}
    after = {100: ("python", 0, 0), 101: ("python", 100, 0), 102: ("classify-0", 110, 100)}
    samples = [_sample(1000, 0, before), _sample(2000, 10, after)]
    cpu = breakdown(_window(), {"pid": 100, "samples": samples})
    assert cpu is not None
    assert cpu["cpu_ms_per_frame"][NATIVE] == pytest.approx(10.0)
    assert cpu["non_model_ms_per_frame"] == pytest.approx(1.0)
    # a window too short for two samples starts at the sample before it, never ends after it
    # (the stage threads may be gone by then)
    around = [_sample(500, 0, before), _sample(1500, 5, after), _sample(2500, 10, {})]
    wide = breakdown(_window(), {"pid": 100, "samples": around})
    assert wide is not None and wide["frames"] == 5 and wide["window_s"] == 1.0
    # no frame between the samples: nothing to divide
    same = [_sample(1000, 3, before), _sample(2000, 3, after)]
    assert breakdown(_window(), {"pid": 100, "samples": same}) is None
    assert breakdown(_window(), {"pid": 100, "samples": []}) is None


def _model_rep(bare: float, replays: dict[str, float], rss: float = 200.0) -> dict[str, Any]:
    return {
        "bare": {
            "fps": bare,
            "cpu_ms_per_frame": 2000 / bare,
            "inference_ms_p50": 1000 / bare,
            "one_at_a_time": {"fps": bare},
            "side_by_side": {"fps": 0.9 * bare},
        },
        "replay": {
            src: {
                "fps": fps,
                "max_rss_mb": rss,
                "first_result_s": 1.0,
                "cpu": {"non_model_ms_per_frame": 0.5 if src == "mp4" else 2.0},
            }
            for src, fps in replays.items()
        },
    }


def _report() -> dict[str, Any]:
    models = [
        {"key": "lite0", "role": "shipped", "architecture": "efficientnet_lite0/last"},
        {"key": "r18", "role": "demo", "architecture": "resnet18"},
    ]
    for m, gflop in zip(models, (1.0, 4.0), strict=True):
        m.update(gflop=gflop, sha256=m["key"], quantization=None)
    repeats = [
        {
            "models": {
                "lite0": _model_rep(100, {"mp4": 95, "dmr": 80}),
                "r18": _model_rep(50, {"mp4": 48, "dmr": 45}),
            },
            "naive": {"fps": 20, "model": "r18"},
        },
        {
            "models": {
                "lite0": _model_rep(80, {"mp4": 60, "dmr": 72}),
                "r18": _model_rep(40, {"mp4": 30, "dmr": 36}),
            },
            "naive": {"fps": 10, "model": "r18"},
        },
    ]
    live = {
        "model": "lite0",
        "source_fps": 30,
        "dropped": 0,
        "latency_ms": {"p99": 20.0},
        "trend": {"flat": True, "slope_ms_per_min": 0.1},
        "max_rss_mb": 260.0,
        "cpu": {"non_model_ms_per_frame": 0.8},
    }
    return {
        "repeats": repeats,
        "live": [live],
        "models": models,
        "settings": {"sources": ["mp4", "dmr"]},
        "parse": {"read_matrix_ms_median": 12.0},
        "machine": {"sgemm_gflops_per_core": 100.0, "cores_usable": 2},
    }


def test_summary_keeps_each_ratio_per_source_and_model_with_its_spread() -> None:
    s = summarize(_report())
    assert s["models"] == ["lite0", "r18"]
    assert s["replay_vs_bare"]["mp4"]["lite0"]["min"] == pytest.approx(0.75)
    assert s["replay_vs_bare"]["mp4"]["lite0"]["max"] == pytest.approx(0.95)
    assert s["replay_vs_bare"]["dmr"]["lite0"]["median"] == pytest.approx(0.85)
    assert s["replay_vs_bare"]["mp4"]["r18"]["median"] == pytest.approx((0.96 + 0.75) / 2)
    assert s["non_model_cpu_ms"]["dmr"]["lite0"]["median"] == 2.0
    assert s["replay_vs_naive"]["median"] == pytest.approx((2.4 + 3.0) / 2)
    assert s["bare_vs_naive"]["median"] == pytest.approx((2.5 + 4.0) / 2)  # the ceiling
    # 4 GFLOP x 50 frames/s over 2 cores = 100 GFLOP/s a core: all of a core's sgemm rate
    assert s["bare_vs_sgemm"]["r18"]["max"] == pytest.approx(1.0)
    assert s["bare_vs_sgemm"]["r18"]["min"] == pytest.approx(0.8)
    assert s["int8_speedup_bare"] == {}


def test_targets_are_about_the_shipped_model_and_resnet18_on_mp4() -> None:
    report = _report()
    met = {t["target"]: t["met"] for t in summarize(report)["targets"]}
    assert met["lite0 mp4 replay / bare"] is False  # median 0.85 < 0.90
    assert met["lite0 dmr replay / bare"] is False  # median 0.85
    assert met["r18 mp4 replay / bare"] is False  # median 0.855 < 0.95
    assert "r18 dmr replay / bare" not in met  # no goal for the demo model on folders
    assert met["lite0 mp4 non-model CPU (ms/frame)"] is True
    assert met["lite0 dmr non-model CPU (ms/frame)"] is False
    assert met["pipeline peak RSS (MB)"] is False  # the live process peaked at 260 MB
    assert met["DMR-IR matrix parse (ms)"] is True
    # single inference: median of 10 and 12.5 ms; bound 1.5 x 11.25 + 5 = 21.9 ms
    assert met["lite0 live 30 fps p99 latency (ms)"] is True
    assert met["lite0 live 30 fps frames dropped"] is True
    report["live"][0]["latency_ms"] = {"p99": 22.0}
    report["live"][0]["dropped"] = 1
    met = {t["target"]: t["met"] for t in summarize(report)["targets"]}
    assert met["lite0 live 30 fps p99 latency (ms)"] is False
    assert met["lite0 live 30 fps frames dropped"] is False


def test_an_int8_model_is_compared_with_the_model_it_was_made_from() -> None:
    report = _report()
    report["models"].append(
        {
            "key": "lite0-int8",
            "role": "int8",
            "architecture": "efficientnet_lite0/last",
            "gflop": None,
            "sha256": "q",
            "quantization": {"from_sha256": "lite0"},
        }
    )
    for rep, bare in zip(report["repeats"], (150, 160), strict=True):
        rep["models"]["lite0-int8"] = _model_rep(bare, {"mp4": bare - 10, "dmr": bare - 20})
    s = summarize(report)
    assert s["int8_speedup_bare"]["lite0-int8"]["min"] == pytest.approx(1.5)
    assert s["int8_speedup_bare"]["lite0-int8"]["max"] == pytest.approx(2.0)
    assert s["int8_speedup_replay"]["lite0-int8"]["mp4"]["median"] == pytest.approx(
        (140 / 95 + 150 / 60) / 2
    )
    assert not any("lite0-int8" in t["target"] for t in s["targets"])


def test_the_console_rows_compare_the_watched_replay_with_the_plain_one_in_each_repeat() -> None:
    report = _report()
    for rep, fps in zip(report["repeats"], (93.1, 54.0), strict=True):  # plain mp4: 95 and 60
        rep["models"]["lite0"]["replay_console"] = {
            "source": "mp4",
            "fps": fps,
            "console": {"frames_streamed": 40, "stream_fps": 14.5},
        }
    live = {**report["live"][0], "latency_ms": {"p99": 21.0}}
    report["live_console"] = [live]
    s = summarize(report)
    assert s["console_source"] == "mp4"
    assert s["console_replay_vs_plain"]["min"] == pytest.approx(0.90)
    assert s["console_replay_vs_plain"]["max"] == pytest.approx(0.98)
    met = {t["target"]: t["met"] for t in s["targets"]}
    assert met["lite0 mp4 replay, console watched / not"] is False  # median 0.94 < 0.95
    # the same bound as the plain live run: 1.5 x 11.25 + 5 = 21.9 ms
    assert met["lite0 live 30 fps p99 latency, console watched (ms)"] is True
    report["repeats"][1]["models"]["lite0"]["replay_console"]["fps"] = 58.8  # 0.98
    report["live_console"][0]["latency_ms"] = {"p99": 25.0}
    met = {t["target"]: t["met"] for t in summarize(report)["targets"]}
    assert met["lite0 mp4 replay, console watched / not"] is True  # median 0.98
    assert met["lite0 live 30 fps p99 latency, console watched (ms)"] is False


def test_a_bench_without_the_console_has_no_console_rows() -> None:
    s = summarize(_report())
    assert "console_replay_vs_plain" not in s
    assert not any("console" in t["target"] for t in s["targets"])


def test_variants_are_kept_only_when_faster_every_round_and_within_tolerance() -> None:
    model = Path("m.onnx")
    names = [REFERENCE, REPLAY_WAY, "fast but different", "fast and equal", "equal, once slower"]
    ref_probs = [[0.2, 0.8], [0.6, 0.4]]

    def run(fps: float, probs: list[list[float]] | None = None) -> dict[str, Any]:
        return {"fps": fps, "cpu_ms_per_frame": 10.0, "load_s": 0.1, "providers": ["cpu"],
                "onnxruntime": "x", "probs": probs or ref_probs}  # fmt: skip

    shifted = [[0.2 + 2e-4, 0.8 - 2e-4], [0.4, 0.6]]
    runs = {
        REFERENCE: [run(10), run(20)],
        REPLAY_WAY: [run(12), run(25)],
        "fast but different": [run(20, shifted), run(40, shifted)],
        "fast and equal": [run(11, [[0.2 + 5e-5, 0.8], [0.6, 0.4]]), run(21)],
        "equal, once slower": [run(12), run(19)],
    }
    got = {
        v["variant"]: v
        for v in summarize_variants([Variant(n, model) for n in names], runs)["variants"]
    }
    assert got["fast but different"]["max_abs_diff"] == pytest.approx(0.2)
    assert got["fast but different"]["top1_agreement"] == 0.5
    assert not got["fast but different"]["worth_an_option"]
    assert got["fast and equal"]["within_tolerance"] and got["fast and equal"]["worth_an_option"]
    assert got["fast and equal"]["fps_vs_reference"] == pytest.approx((1.1 + 1.05) / 2)
    assert not got["equal, once slower"]["worth_an_option"]  # 0.95 in the second round
    assert not got[REPLAY_WAY]["worth_an_option"]  # what the pipeline does already


def test_the_no_drop_goal_holds_only_where_the_model_needs_under_half_the_machine() -> None:
    report = _report()  # bare CPU a frame: median of 20 and 25 ms, on 2 cores
    fast = {**report["live"][0], "source_fps": 120, "dropped": 500}
    slow = {**report["live"][0], "source_fps": 40, "dropped": 3}
    report["live"] += [fast, slow]
    s = summarize(report)
    assert model_share(report, s, "lite0", 30) == pytest.approx(22.5 * 30 / 1000 / 2)
    met = {t["target"]: t["met"] for t in s["targets"]}
    # 120 fps: the model would need 135% of the machine, so drops are by design (counted)
    assert "lite0 live 120 fps frames dropped" not in met
    assert "lite0 live 120 fps p99 latency (ms)" not in met
    # 40 fps: 45% of the machine, so a drop breaks the goal and the p99 bound applies
    assert met["lite0 live 40 fps frames dropped"] is False
    assert met["lite0 live 40 fps p99 latency (ms)"] is True
    goals = {t["target"]: t["goal"] for t in s["targets"]}
    assert goals["lite0 live 40 fps frames dropped"] == "0 (the model needs 45% of the machine)"
    report["live"][0]["source_fps"] = 60  # the camera's rate, 68%: its p99 bound stays
    met = {t["target"]: t["met"] for t in summarize(report)["targets"]}
    assert "lite0 live 60 fps frames dropped" not in met
    assert "lite0 live 60 fps p99 latency (ms)" in met
