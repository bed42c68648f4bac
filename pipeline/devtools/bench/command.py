"""`thermoscreen bench`: the arguments, the order of the measurements, and the files written.

Every measurement of one repeat runs back to back (per model: bare, then a replay of each source
kind), so machine noise hits them alike; live runs follow the repeats. Writes `bench.json` and
`bench.md` under `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import DISCLAIMER
from pipeline.devtools.bench.bare import F32, measure_bare
from pipeline.devtools.bench.collector import BenchError, Collector
from pipeline.devtools.bench.console import (
    console_source,
    measure_console_live,
    measure_console_replay,
)
from pipeline.devtools.bench.live import measure_live
from pipeline.devtools.bench.machine import describe_machine, describe_model, or_none
from pipeline.devtools.bench.replay import Rig, measure_naive, measure_replay
from pipeline.devtools.bench.report import markdown
from pipeline.devtools.bench.sources import (
    SOURCE_KINDS,
    Recording,
    measure_parse,
    model_tensors,
    prepare,
)
from pipeline.devtools.bench.summary import summarize
from pipeline.devtools.bench.variants import measure_variants
from pipeline.devtools.broker import BrokerError, LocalBroker
from pipeline.devtools.compute import sgemm_gflops_per_core
from pipeline.manifest import ModelDir, ModelError, load_model_dir

log = logging.getLogger(__name__)

DEFAULT_DATA = Path("../shared/data/dmr-ir-frontal")
# torchvision architectures the naive loop can build (`thermoscreen train --arch`)
NAIVE_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")
TENSORS = 16  # distinct ready inputs the bare runs cycle through


@dataclass(frozen=True)
class Settings:
    frames: int
    repeats: int
    live_seconds: float
    live_fps: tuple[int, ...]
    live_models: int  # the first N models run live
    threads: int | None
    naive: bool
    sources: tuple[str, ...]
    data: Path
    data_files: int | None
    variants: bool = False  # other ways to run the first model (`variants`)
    openvino_python: str | None = None
    console: bool = True  # the operator console's rows: replay and live, watched


@dataclass(frozen=True)
class BenchModel:
    key: str  # the manifest name, made unique
    role: str  # shipped (the first), demo, int8
    model: ModelDir
    tensors: list[F32]


@dataclass(frozen=True)
class Plan:
    models: list[BenchModel]
    recordings: dict[str, Recording]
    settings: Settings
    weights: str  # the naive loop's PyTorch weights


def load_models(dirs: list[Path], int8: Path | None) -> list[tuple[str, str, ModelDir]]:
    """(key, role, model) per model: the first is the shipped one; keys are unique names."""
    out: list[tuple[str, str, ModelDir]] = []
    pairs = [(d, "shipped" if i == 0 else "demo") for i, d in enumerate(dirs)]
    for path, role in [*pairs, *([(int8, "int8")] if int8 is not None else [])]:
        model = load_model_dir(path)
        key, n = model.manifest.name, 2
        while key in {k for k, _, _ in out}:
            key, n = f"{model.manifest.name}#{n}", n + 1
        out.append((key, role, model))
    return out


def measure_repeat(rig: Rig, plan: Plan, r: int) -> dict[str, Any]:
    """One repeat: per model, bare and a replay of every source; the naive loop last."""
    s = plan.settings
    rep: dict[str, Any] = {"models": {}}
    for i, m in enumerate(plan.models):
        row: dict[str, Any] = {"bare": measure_bare(m.model.root, m.tensors, s.frames, s.threads)}
        watched = s.console and i == 0  # the console's rows: the shipped model only
        if watched and r % 2 == 1:  # the order of plain and watched alternates per repeat
            row["replay_console"] = console_replay(rig, plan, m, r)
        row["replay"] = {
            kind: measure_replay(rig, m.model.root, rec, s.frames, f"bench-m{i}-{kind}-r{r}")
            for kind, rec in plan.recordings.items()
        }
        if watched and r % 2 == 0:
            row["replay_console"] = console_replay(rig, plan, m, r)
        rep["models"][m.key] = row
        log.info(
            "repeat %d, %s: bare %.1f, %s",
            r + 1,
            m.key,
            row["bare"]["fps"],
            ", ".join(f"{k} {v['fps']:.1f}" for k, v in row["replay"].items()),
        )
    naive = naive_model(plan)
    if naive is not None and "mp4" in plan.recordings:
        manifest = naive.model.manifest
        rep["naive"] = measure_naive(
            rig,
            plan.recordings["mp4"].path,
            s.frames,
            manifest.architecture,
            len(naive.model.labels),
            plan.weights,
        )
        rep["naive"]["model"] = naive.key
    return rep


def console_replay(rig: Rig, plan: Plan, m: BenchModel, r: int) -> dict[str, Any]:
    kind = console_source(plan.recordings)
    rec, frames = plan.recordings[kind], plan.settings.frames
    return measure_console_replay(rig, m.model.root, rec, frames, f"bench-console-{kind}-r{r}")


def measure_console_live_run(rig: Rig, plan: Plan) -> list[dict[str, Any]]:
    """The shipped model live at the first rate with the console open and watched."""
    s, m = plan.settings, plan.models[0]
    if not s.console:
        return []
    fps = s.live_fps[0]
    log.info("live %s at %d fps for %.0f s, console watched", m.key, fps, s.live_seconds)
    run = measure_console_live(rig, m.model.root, fps, s.live_seconds, f"bench-console-{fps}")
    return [{"model": m.key, **run}]


def naive_model(plan: Plan) -> BenchModel | None:
    if not plan.settings.naive:
        return None
    return next((m for m in plan.models if m.model.manifest.architecture in NAIVE_ARCHS), None)


def measure_live_runs(rig: Rig, plan: Plan) -> list[dict[str, Any]]:
    """The live runs: each rate, for the first `live_models` models."""
    s = plan.settings
    runs = []
    for i, m in enumerate(plan.models[: s.live_models]):
        for fps in s.live_fps:
            log.info("live %s at %d fps for %.0f s", m.key, fps, s.live_seconds)
            run = measure_live(rig, m.model.root, fps, s.live_seconds, f"bench-live-m{i}-{fps}")
            runs.append({"model": m.key, **run})
    return runs


def measure_other_ways(plan: Plan, tmp: Path, int8_dir: Path | None) -> dict[str, Any] | None:
    """The first model run other ways (`--variants`), after the repeats, before live."""
    s = plan.settings
    if not s.variants:
        return None
    first = plan.models[0]
    log.info("other ways to run %s", first.key)
    return measure_variants(
        first.model.root, first.tensors, s.frames, s.repeats, tmp, int8_dir, s.openvino_python
    )


def plan_models(
    loaded: list[tuple[str, str, ModelDir]], recordings: dict[str, Recording]
) -> list[BenchModel]:
    first = next(iter(recordings.values()))
    return [BenchModel(k, role, m, model_tensors(m, first, TENSORS)) for k, role, m in loaded]


def run_bench(
    model_dirs: list[Path],
    out_dir: Path,
    settings: Settings,
    video: Path | None = None,
    int8_dir: Path | None = None,
    weights: str = "none",
    command: str = "",
) -> dict[str, Any]:
    """Every measurement, interleaved per repeat so that machine noise hits all of them alike."""
    t_start = time.monotonic()
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    loaded = load_models(model_dirs, int8_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    machine["sgemm_gflops_per_core"] = or_none(sgemm_gflops_per_core)
    with tempfile.TemporaryDirectory(prefix="thermoscreen-bench-") as tmp_name:
        tmp = Path(tmp_name)
        recordings = prepare(
            settings.sources, tmp, settings.frames, video, settings.data, settings.data_files
        )
        plan = Plan(plan_models(loaded, recordings), recordings, settings, weights)
        parse = measure_parse(recordings["dmr"].path) if "dmr" in recordings else None
        with LocalBroker(tmp / "broker") as broker:
            collector = Collector(broker.host, broker.port)
            rig = Rig(broker, collector, tmp / "run")
            try:
                repeats = []
                for r in range(settings.repeats):
                    log.info("repeat %d/%d", r + 1, settings.repeats)
                    repeats.append(measure_repeat(rig, plan, r))
                variants = measure_other_ways(plan, tmp, int8_dir)
                live = measure_live_runs(rig, plan)
                live_console = measure_console_live_run(rig, plan)
            finally:
                collector.close()
            machine["mosquitto"] = broker.version()
    machine["load_avg_at_end"] = list(os.getloadavg())
    report = {
        "disclaimer": DISCLAIMER,
        "command": command,
        "started": started,
        "duration_s": time.monotonic() - t_start,
        "machine": machine,
        "models": [{"key": m.key, **describe_model(m.model, m.role)} for m in plan.models],
        "naive_weights": weights if naive_model(plan) is not None else None,
        "settings": settings_dict(settings, recordings),
        "parse": parse,
        "repeats": repeats,
        "variants": variants,
        "live": live,
        "live_console": live_console,
    }
    report["summary"] = summarize(report)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "bench.md").write_text(markdown(report), encoding="utf-8")
    return report


def settings_dict(settings: Settings, recordings: dict[str, Recording]) -> dict[str, Any]:
    return {
        "frames": settings.frames,
        "repeats": settings.repeats,
        "live_seconds": settings.live_seconds,
        "live_fps": list(settings.live_fps),
        "live_models": settings.live_models,
        "intra_op_threads": settings.threads,
        "sources": list(recordings),
        "recordings": {k: {"uri": r.uri, "files": r.frames} for k, r in recordings.items()},
        "data": str(settings.data),
        "console": settings.console,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_run_arguments(parser)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """What is measured: models, recordings, data."""
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        required=True,
        help="model directory; repeat for more models. The first is the shipped model (its "
        "rows come first and the targets are about it), e.g. --model models/dmr "
        "--model models/demo",
    )
    parser.add_argument(
        "--int8", type=Path, default=None, help="an INT8 copy of the first model (`quantize`)"
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=SOURCE_KINDS,
        default=list(SOURCE_KINDS),
        help="source kinds to replay (default: all three)",
    )
    parser.add_argument(
        "--video", type=Path, default=None, help="MP4 to replay (default: `thermoscreen synth`)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"DMR-IR matrix folder for the png16 and dmr sources (default {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--data-files", type=int, default=None, help="only the first N matrices of --data"
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="bench.json/.md here")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How long and how often: frames, repeats, live runs, the optional measurements."""
    parser.add_argument("--frames", type=int, default=300, help="frames per replay and bare run")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of bare and replays")
    parser.add_argument(
        "--live-seconds", type=float, default=600.0, help="length of each live run (default 600)"
    )
    parser.add_argument(
        "--live-fps", type=int, nargs="+", default=[30, 120], help="live source rates"
    )
    parser.add_argument(
        "--live-models", type=int, default=1, help="how many of the models run live (first N)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads, bare run"
    )
    parser.add_argument(
        "--torch-checkpoint",
        default="none",
        help="weights for the naive loop's PyTorch model (default: random, same architecture; "
        "its cost does not depend on the weights)",
    )
    _add_skips(parser)
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also run the first model other ways (threads, spinning, INT8, OpenVINO) and "
        "check their results against the model card's tolerance",
    )
    parser.add_argument(
        "--openvino-python",
        default=None,
        help="a Python with onnxruntime-openvino installed, for the OpenVINO variant",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20 frames, 1 repeat, 12 matrices, 4 s live at 30 fps",
    )


def _add_skips(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop (no torch)")
    parser.add_argument(
        "--no-console",
        action="store_true",
        help="skip the operator console's rows (a replay and a live run with the console open "
        "and a viewer on its live view)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings(
        frames=args.frames,
        repeats=args.repeats,
        live_seconds=args.live_seconds,
        live_fps=tuple(args.live_fps),
        live_models=args.live_models,
        threads=args.threads,
        naive=not args.no_naive,
        sources=tuple(dict.fromkeys(args.sources)),
        data=args.data,
        data_files=args.data_files,
        variants=args.variants,
        openvino_python=args.openvino_python,
        console=not args.no_console,
    )
    if args.quick:
        return dataclasses.replace(
            s, frames=20, repeats=1, live_seconds=4.0, live_fps=(30,), live_models=1, data_files=12
        )
    return s


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if settings.frames < 2 or settings.repeats < 1 or settings.live_seconds <= 0:
        print(
            "thermoscreen bench: --frames >= 2, --repeats >= 1, --live-seconds > 0", file=sys.stderr
        )
        return 2
    command = "thermoscreen bench " + " ".join(
        sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    )
    try:
        run_bench(
            args.model, args.out, settings, args.video, args.int8, args.torch_checkpoint, command
        )
    except (BenchError, BrokerError, ModelError) as exc:
        print(f"thermoscreen bench: {exc}", file=sys.stderr)
        return 1
    print((args.out / "bench.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0
