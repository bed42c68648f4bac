"""Live runs: `thermoscreen run gst://videotestsrc is-live=true ...` at a camera's rate for a
set time: latency from capture to delivery, frames dropped, and whether latency grows."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.devtools.bench.bare import percentile
from pipeline.devtools.bench.child import checked, probed_cmd, run_child
from pipeline.devtools.bench.collector import (
    BenchError,
    Received,
    parse_rfc3339,
    results_of,
    stats_of,
    steady_fps,
)
from pipeline.devtools.bench.cpu import SteadyWindow, breakdown
from pipeline.devtools.bench.replay import SETTLE_S, Rig, probe_record, runner_config

WARMUP_S = 3.0  # live results in the first seconds are reported but left out of the flatness test
STOP_GRACE_S = 1.0  # the child gets SIGINT this long after the measured time
STARTUP_LIMIT_S = 120.0  # a live child that has not ended this long after its time is killed


def live_source(fps: int, width: int = 640, height: int = 480) -> str:
    """A live camera stand-in that hands over 8-bit gray frames as a thermal camera does, so the
    test source's own drawing and colour conversion weigh as little as they can in the
    pipeline's CPU (its threads are the `gstreamer` group)."""
    return (
        f"gst://videotestsrc is-live=true pattern=ball ! "
        f"video/x-raw,format=GRAY8,width={width},height={height},framerate={fps}/1"
    )


def latency_trend(
    times_s: Sequence[float],
    lat_ms: Sequence[float],
    windows: int = 6,
    inference_ms: Sequence[float] | None = None,
) -> dict[str, Any]:
    """p50/p95 per equal time window after warm-up and the fitted slope (ms per minute).

    With `inference_ms`, each window also shows the inference p50, so a latency that grows
    because the shared machine slowed the model can be told from one that grows in a queue.
    """
    t = np.asarray(times_s, dtype=np.float64)
    y = np.asarray(lat_ms, dtype=np.float64)
    inf = np.asarray(inference_ms if inference_ms is not None else [], dtype=np.float64)
    keep = t >= WARMUP_S
    t, y = t[keep], y[keep]
    inf = inf[keep] if inf.size == keep.size else inf
    if t.size < windows * 3:
        return {"windows": [], "slope_ms_per_min": float("nan"), "flat": None}
    edges = np.linspace(t[0], t[-1] + 1e-9, windows + 1)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        mask = (t >= lo) & (t < hi)
        row = {
            "from_s": round(float(lo), 1),
            "p50_ms": round(percentile(list(y[mask]), 50), 2),
            "p95_ms": round(percentile(list(y[mask]), 95), 2),
        }
        if inf.size == t.size:
            row["inference_p50_ms"] = round(percentile(list(inf[mask]), 50), 2)
        rows.append(row)
    slope = float(np.polyfit(t / 60.0, y, 1)[0])
    first, last = rows[0]["p95_ms"], rows[-1]["p95_ms"]
    flat = bool(last <= 1.2 * first + 2.0)
    return {"windows": rows, "slope_ms_per_min": round(slope, 3), "flat": flat}


class LiveClock:
    """Times a live run from its first result, not from its start: start-up (imports, model
    load, pipeline build) varies with the machine's load and is reported apart."""

    def __init__(self, seconds: float, results: Callable[[], int]) -> None:
        self.seconds = seconds
        self.results = results
        self.first_s: float | None = None

    def _since_first(self, elapsed_s: float, results: int) -> float:
        """Seconds since the first result (negative before it)."""
        if results and self.first_s is None:
            self.first_s = elapsed_s
        return -1.0 if self.first_s is None else elapsed_s - self.first_s

    def warm(self, elapsed_s: float, results: int) -> bool:
        """The steady window starts after the warm-up."""
        return self._since_first(elapsed_s, results) >= WARMUP_S

    def measured(self, elapsed_s: float, results: int) -> bool:
        """The steady window ends when the measured time has passed."""
        return self._since_first(elapsed_s, results) >= self.seconds

    def stop_due(self, elapsed_s: float) -> bool:
        """The child gets SIGINT a little after the measured time."""
        return self.measured(elapsed_s - STOP_GRACE_S, self.results())


def measure_live(
    rig: Rig,
    model_dir: Path,
    fps: int,
    seconds: float,
    device: str,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """A live source at `fps` for `seconds`: latency to delivery, drops, trend, CPU per frame.
    `env` and `cwd` run another checkout of the code, `overrides` other settings, for A/B
    comparisons."""
    cfg = runner_config(rig, device, model_dir, "live", overrides=overrides)
    record = rig.workdir / f"{device}.probe.json"
    rig.collector.take()
    clock = LiveClock(seconds, lambda: rig.collector.results)
    window = SteadyWindow(clock.warm, clock.measured, clock.results, rig.others())
    cmd = [*probed_cmd(record), "run", live_source(fps), "--config", str(cfg)]
    run = checked(
        run_child(cmd, seconds + STARTUP_LIMIT_S, env=env, until=clock.stop_due, on_poll=window),
        f"thermoscreen run (live {fps} fps)",
    )
    time.sleep(SETTLE_S)
    items = rig.collector.take()
    results = results_of(items, device)
    if len(results) < 2:
        raise BenchError(f"live run at {fps} fps published {len(results)} results; see its log")
    stats = stats_of(items, device)
    return {
        **live_figures(fps, results),
        "first_result_s": results[0].recv_mono_s - run.start_mono_s,
        "max_rss_mb": run.max_rss_mb,
        "last_stats": stats[-1] if stats else None,
        "cpu": breakdown(window, probe_record(record)),
    }


def live_figures(fps: int, results: Sequence[Received]) -> dict[str, Any]:
    """Latency, drops and trend from the results of one live run."""
    payloads = [json.loads(r.payload) for r in results]
    lat = [
        (r.recv_wall_s - parse_rfc3339(p["capture_ts"])) * 1000
        for r, p in zip(results, payloads, strict=True)
    ]
    t0 = results[0].recv_mono_s
    times = [r.recv_mono_s - t0 for r in results]
    indices = [int(p["frame_index"]) for p in payloads]
    seen = max(indices) - min(indices) + 1
    dropped = seen - len(set(indices))
    inference = [float(p["latency_ms"]["inference"]) for p in payloads]
    return {
        "source_fps": fps,
        "seconds": round(times[-1], 1),
        "results": len(results),
        "result_fps": steady_fps(results),
        "frames_seen": seen,
        "dropped": dropped,
        "drop_ratio": dropped / seen,
        "latency_ms": {
            "p50": percentile(lat, 50),
            "p95": percentile(lat, 95),
            "p99": percentile(lat, 99),
            "max": max(lat),
        },
        "inference_ms_p50": percentile(inference, 50),
        "trend": latency_trend(times, lat, inference_ms=inference),
    }
