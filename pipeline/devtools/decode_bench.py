"""Recorded-data decode, measured before and after in one run (issue 16): the matrix parser, the
folder source alone, and `thermoscreen run` over a DMR-IR folder and over its PNG16 conversion.

    python -m pipeline.devtools.decode_bench --data ../shared/data/dmr-ir-frontal \\
        [--baseline DIR] [--model DIR] [--rounds 3] [--frames 300] [--out FILE]

- parse: every file read by `read_matrix_reference` (the line-by-line parser) and `read_matrix`,
  alternately, file by file; per-file medians and the median of the paired ratios.
- source: `FolderSource.read()` alone over the DMR folder and its PNG16 conversion (written by
  `thermoscreen convert` into a temporary folder), decoding inline (`decode_workers=0`) and ahead
  (auto); with --baseline, also the same loop run by that checkout's code (e.g. `git archive`
  of the commit before). Each loop runs in its own process, the variants in turn, every round.
- replay (with --model): `thermoscreen run` over each folder, looped to --frames, by this tree and
  by the baseline in turn, against a private mosquitto; and the bare model (ONNX Runtime alone on
  the same frames as ready tensors). Reports replay / bare per source.

The machine may be shared: the variants alternate within every round, so a load change hits all
of them alike, and the report keeps every round's figure beside the median.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.capture.base import EndOfStream, SourceOptions
from pipeline.capture.factory import open_source
from pipeline.convert import convert
from pipeline.data.dmr import is_matrix, list_thermograms, read_matrix, read_matrix_reference
from pipeline.devtools.bench.bare import measure_bare
from pipeline.devtools.broker import LocalBroker
from pipeline.manifest import load_model_dir
from pipeline.preprocess import model_input, render

REPO = Path(__file__).resolve().parents[2]
# run in a child: read a folder to its end, print frames and seconds (works on older trees too)
SOURCE_LOOP = """
import json, sys, time
from pipeline.capture.base import EndOfStream, SourceOptions
from pipeline.capture.factory import open_source
workers = json.loads(sys.argv[2])
opts = SourceOptions(**({} if workers == "baseline" else {"decode_workers": workers}))
source = open_source(sys.argv[1], opts)
source.open()
n, start, cpu = 0, time.perf_counter(), time.process_time()
try:
    while True:
        n += source.read(5.0) is not None
except EndOfStream:
    pass
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"frames": n, "s": wall, "cpu_s": cpu}))
source.close()
"""
_FPS = re.compile(r"results from (\d+) frames in [\d.]+ s \(([\d.]+) fps\)")


def median_of(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def measure_parse(files: list[Path], rounds: int) -> dict[str, Any]:
    """Reference vs fast parser, alternating per file (which goes first alternates too): wall
    and CPU milliseconds per file, and the paired ratios."""
    wall: dict[str, list[float]] = {"reference": [], "fast": []}
    cpu: dict[str, list[float]] = {"reference": [], "fast": []}
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    readers = [("reference", read_matrix_reference), ("fast", read_matrix)]
    for r in range(rounds):
        for i, path in enumerate(files):
            for name, read in readers if (i + r) % 2 == 0 else readers[::-1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                read(path)
                wall[name].append(1000 * (time.perf_counter() - start))
                cpu[name].append(1000 * (time.process_time() - start_cpu))
            ratios["wall"].append(wall["reference"][-1] / wall["fast"][-1])
            ratios["cpu"].append(cpu["reference"][-1] / max(cpu["fast"][-1], 1e-3))
    return {
        "files": len(files),
        "rounds": rounds,
        "reference_ms_median": median_of(wall["reference"]),
        "fast_ms_median": median_of(wall["fast"]),
        "fast_ms_p95": sorted(wall["fast"])[int(0.95 * (len(wall["fast"]) - 1))],
        "reference_cpu_ms_median": median_of(cpu["reference"]),
        "fast_cpu_ms_median": median_of(cpu["fast"]),
        "speedup_paired_median": median_of(ratios["wall"]),
        "cpu_speedup_paired_median": median_of(ratios["cpu"]),
    }


def _child_env(tree: Path) -> dict[str, str]:
    """The child imports `pipeline` from `tree` (run it with cwd=tree too: `-c` and `-m` put the
    working directory first on sys.path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSCREEN_")}
    env["PYTHONPATH"] = str(tree)
    return env


def _source_once(tree: Path, folder: Path, workers: object) -> dict[str, float]:
    cmd = [sys.executable, "-c", SOURCE_LOOP, str(folder), json.dumps(workers)]
    done = subprocess.run(
        cmd, cwd=tree, env=_child_env(tree), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"source loop in {tree} failed: {done.stderr.strip()[-300:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    frames = float(got["frames"])
    return {
        "fps": frames / float(got["s"]),
        "cpu_ms_per_frame": 1000 * float(got["cpu_s"]) / frames,
    }


def alternate(variants: dict[str, Callable[[], dict[str, float]]], rounds: int) -> dict[str, Any]:
    """Each variant once per round, in a rotating order; every figure per round and its median."""
    names = list(variants)
    per: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for key, value in variants[name]().items():
                per[name].setdefault(key, []).append(value)
    return {
        n: {
            **{f"{k}_median": median_of(v) for k, v in figures.items()},
            **{f"{k}_rounds": v for k, v in figures.items()},
        }
        for n, figures in per.items()
    }


def measure_sources(folders: dict[str, Path], baseline: Path | None, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, folder in folders.items():
        variants: dict[str, Callable[[], dict[str, float]]] = {
            "inline": functools.partial(_source_once, REPO, folder, 0),
            "ahead": functools.partial(_source_once, REPO, folder, None),
        }
        if baseline is not None:
            variants["baseline"] = functools.partial(_source_once, baseline, folder, "baseline")
        got = out[kind] = alternate(variants, rounds)
        for name in ("inline", "baseline"):
            if name in got:
                got[f"ahead_vs_{name}"] = got["ahead"]["fps_median"] / got[name]["fps_median"]
    return out


def _run_once(
    tree: Path, source: Path, model: Path, broker: LocalBroker, frames: int
) -> dict[str, float]:
    """One `thermoscreen run` child: its fps, and its CPU per frame (start-up included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        cfg = Path(tmp) / "run.yaml"
        tree_cfg = {
            "device_id": "decode-bench",
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "outbox": {"enabled": True, "path": str(Path(tmp) / "outbox.sqlite")},
            "capture": {"loop": True},
            "log_level": "WARNING",
        }
        cfg.write_text(yaml.safe_dump(tree_cfg), encoding="utf-8")
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(source), "--model", str(model)]
        cmd += ["--config", str(cfg), "--max-frames", str(frames)]
        done = subprocess.run(
            cmd, cwd=tree, env=_child_env(tree), capture_output=True, text=True, check=False
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = _FPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"thermoscreen run in {tree} failed: {done.stderr.strip()[-300:]}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"fps": float(found.group(2)), "cpu_ms_per_frame": 1000 * cpu_s / int(found.group(1))}


def bare_fps(model: Path, folder: Path, frames: int) -> dict[str, float]:
    """ONNX Runtime alone on the folder's first frames, made ready as model input."""
    manifest = load_model_dir(model).manifest
    size = (int(manifest.input.shape[2]), int(manifest.input.shape[3]))
    source = open_source(str(folder), SourceOptions(decode_workers=0))
    source.open()
    tensors: list[Any] = []
    try:
        while len(tensors) < 16:
            frame = source.read(5.0)
            if frame is not None:
                image = render(frame, manifest.preprocessing)
                tensors.append(model_input(image, size, manifest.mean, manifest.std))
    except EndOfStream:
        pass
    finally:
        source.close()
    return {"fps": float(measure_bare(model, tensors, frames, None)["fps"])}


def measure_replay(
    folders: dict[str, Path], baseline: Path | None, model: Path, rounds: int, frames: int
) -> dict[str, Any]:
    broker = LocalBroker(workdir=Path(tempfile.mkdtemp(prefix="decode-bench-broker-")))
    broker.start()
    out: dict[str, Any] = {}
    try:
        for kind, folder in folders.items():
            variants: dict[str, Callable[[], dict[str, float]]] = {
                "bare": functools.partial(bare_fps, model, folder, frames),
                "replay": functools.partial(_run_once, REPO, folder, model, broker, frames),
            }
            if baseline is not None:
                variants["baseline_replay"] = functools.partial(
                    _run_once, baseline, folder, model, broker, frames
                )
            got = out[kind] = alternate(variants, rounds)
            for name in ("replay", "baseline_replay"):
                if name in got:
                    got[f"{name}_vs_bare"] = got[name]["fps_median"] / got["bare"]["fps_median"]
    finally:
        broker.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.devtools.decode_bench")
    parser.add_argument("--data", type=Path, required=True, help="a DMR-IR matrix folder")
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--model", type=Path, help="model folder: also measure replay / bare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=300, help="frames per replay run")
    parser.add_argument("--limit", type=int, help="only the first N files (smoke runs)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    files = [p for p in list_thermograms(args.data) if is_matrix(p)][: args.limit]
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as tmp:
        dmr = Path(tmp) / "dmr"
        dmr.mkdir()
        for path in files:
            os.symlink(path.resolve(), dmr / path.name)
        convert(str(dmr), Path(tmp) / "png16")
        folders = {"dmr": dmr, "png16": Path(tmp) / "png16"}
        report: dict[str, Any] = {
            "data": str(args.data),
            "baseline": str(args.baseline) if args.baseline else None,
            "load_before": os.getloadavg(),
            "parse": measure_parse(files, args.rounds),
            "source": measure_sources(folders, args.baseline, args.rounds),
        }
        if args.model is not None:
            report["replay"] = measure_replay(
                folders, args.baseline, args.model, args.rounds, args.frames
            )
        report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
