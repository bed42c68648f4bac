"""Replays as the user runs them: `thermoscreen run SOURCE` as a child process against the
bench's mosquitto, counted where the results arrive; and the seed's naive loop beside them."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.devtools.bench.child import checked, probed_cmd, run_child
from pipeline.devtools.bench.collector import (
    BenchError,
    Collector,
    capture_to_delivery_fps,
    parse_rfc3339,
    results_of,
    steady_fps,
)
from pipeline.devtools.bench.cpu import SteadyWindow, breakdown
from pipeline.devtools.bench.sources import Recording
from pipeline.devtools.broker import LocalBroker

SETTLE_S = 0.2  # the last results are on their way to the subscriber when the child exits


@dataclass(frozen=True)
class Rig:
    """What every measured child shares: the broker, the subscriber, a private work folder."""

    broker: LocalBroker
    collector: Collector
    workdir: Path

    def others(self) -> dict[str, int]:
        """Processes sampled beside the child: the broker, which serves only the bench."""
        proc = self.broker.proc
        return {"broker": proc.pid} if proc is not None else {}


def runner_config(
    rig: Rig,
    device: str,
    model_dir: Path,
    mode: str,
    loop: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """The YAML the child `thermoscreen run` reads: our broker, a private outbox, this model,
    and `overrides` (dotted keys, e.g. {"session.state_interval_s": 0}). Written as
    `<workdir>/<device>.yaml`, with the outbox beside it."""
    rig.workdir.mkdir(parents=True, exist_ok=True)
    path, outbox = rig.workdir / f"{device}.yaml", rig.workdir / f"{device}.sqlite"
    tree: dict[str, Any] = {
        "device_id": device,
        "camera_id": "cam0",
        "mode": mode,
        # a benchmark, not a clinic: a synthetic demo model may run on a live test source
        "model": {
            "dir": str(model_dir.resolve()),
            "backend": "onnxruntime",
            "allow_synthetic": True,
        },
        "mqtt": {"host": "127.0.0.1", "port": rig.broker.port},
        "outbox": {"enabled": True, "path": str(outbox)},
        "log_level": "WARNING",
    }
    if loop:
        tree["capture"] = {"loop": True}
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def probe_record(path: Path) -> dict[str, Any]:
    """What the probe wrote: its pid (first line) and its CPU samples (a line each)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        pid = int(json.loads(lines[0])["pid"])
        if lines[-1:] and not lines[-1].endswith("}"):
            lines.pop()  # a line cut short by the end of the process
        samples = [json.loads(line) for line in lines[1:] if line.strip()]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"{path}: the probed run left no CPU samples ({exc})") from None
    return {"pid": pid, "samples": samples}


def measure_replay(
    rig: Rig,
    model_dir: Path,
    recording: Recording,
    frames: int,
    device: str,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """`thermoscreen run SOURCE --max-frames N` to completion; throughput where the results
    arrive; CPU per result over the steady part (10% to 90% of the results). `env` and `cwd`
    run another checkout of the code (its PYTHONPATH and folder), `overrides` other settings,
    for A/B comparisons."""
    cfg = runner_config(rig, device, model_dir, "replay", recording.loop, overrides)
    record = rig.workdir / f"{device}.probe.json"
    rig.collector.take()
    margin = max(2, frames // 10)
    window = SteadyWindow(
        start=lambda _t, n: n >= margin,
        end=lambda _t, n: n >= frames - margin,
        results=lambda: rig.collector.results,
        others=rig.others(),
    )
    cmd = [*probed_cmd(record), "run", recording.uri, "--config", str(cfg)]
    cmd += ["--max-frames", str(frames)]
    what = f"thermoscreen run ({recording.kind} replay)"
    run = checked(run_child(cmd, 60 + frames, env=env, on_poll=window, cwd=cwd), what)
    time.sleep(SETTLE_S)
    results = results_of(rig.collector.take(), device)
    if not results:
        raise BenchError(f"thermoscreen run published no results for {recording.uri}; see its log")
    payloads = [json.loads(r.payload) for r in results]
    seqs = sorted(p["seq"] for p in payloads)
    captured = [parse_rfc3339(p["capture_ts"]) for p in payloads]
    return {
        "source": recording.kind,
        "frames": frames,
        "results": len(results),
        "missing": frames - len({p["frame_index"] for p in payloads}),
        "seq_gaps": int(seqs[-1] - seqs[0] + 1 - len(seqs)),
        "fps": capture_to_delivery_fps(results, captured),
        "fps_first_to_last_arrival": steady_fps(results),
        "fps_with_startup": len(results) / run.wall_s,
        "first_result_s": results[0].recv_mono_s - run.start_mono_s,
        "wall_s": run.wall_s,
        "max_rss_mb": run.max_rss_mb,
        "cpu": breakdown(window, probe_record(record)),
    }


def naive_cmd(
    rig: Rig, video: Path, frames: int, arch: str, classes: int, weights: str
) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline.devtools.naive", "--video", str(video)]
    cmd += ["--broker", f"{rig.broker.host}:{rig.broker.port}"]
    cmd += ["--topic", "thermoscreen/naive/cam0/result", "--arch", arch]
    cmd += ["--num-classes", str(classes), "--weights", weights, "--max-frames", str(frames)]
    return cmd


def measure_naive(
    rig: Rig, video: Path, frames: int, arch: str, classes: int, weights: str
) -> dict[str, Any]:
    """The seed's loop (pipeline.devtools.naive) in a child; throughput where results arrive."""
    rig.collector.take()
    cmd = naive_cmd(rig, video, frames, arch, classes, weights)
    run = checked(
        run_child(cmd, timeout_s=120 + 2 * frames), "naive loop (pipeline.devtools.naive)"
    )
    time.sleep(SETTLE_S)
    results = results_of(rig.collector.take(), "naive")
    own = json.loads(run.stdout.strip().splitlines()[-1])
    captured = [float(json.loads(r.payload)["capture_ts"]) for r in results]
    return {
        "frames": frames,
        "results": len(results),
        "fps": capture_to_delivery_fps(results, captured),
        "fps_first_to_last_arrival": steady_fps(results),
        "fps_with_startup": len(results) / run.wall_s,
        "first_result_s": results[0].recv_mono_s - run.start_mono_s if results else None,
        "inference_ms_p50": own.get("inference_ms_p50"),
        "torch_threads": own.get("torch_threads"),
        "max_rss_mb": run.max_rss_mb,
    }
