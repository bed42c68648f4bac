"""Interleaved A/B of the pipeline: the same replays (and live runs) by two checkouts of the code,
alternating within every round, so that a shared machine's changing load hits both alike.

    python -m pipeline.devtools.bench.ab --baseline DIR [--candidate DIR] --model DIR \\
        [--sources mp4 png16 dmr] [--data DIR] [--frames 200] [--rounds 4] \\
        [--live-fps 30] [--live-seconds 20] [--out FILE]

DIR is a checkout of the repository (`git worktree add --detach /tmp/base COMMIT`); the
candidate defaults to this tree. `--baseline-set` / `--candidate-set KEY.PATH=VALUE` compare
settings instead (or as well), e.g. `--candidate-set session.state_interval_s=0`. Each run
is `thermoscreen run` through the bench's probe, so both report frames per second and CPU per
frame (all threads, and without the model's own).
Only the ratios mean something on a loaded machine: the report gives, per source, the median of
the per-round ratios candidate / baseline beside every round's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.devtools.bench.collector import Collector
from pipeline.devtools.bench.command import DEFAULT_DATA
from pipeline.devtools.bench.live import measure_live
from pipeline.devtools.bench.replay import Rig, measure_replay
from pipeline.devtools.bench.sources import SOURCE_KINDS, prepare
from pipeline.devtools.broker import LocalBroker

REPO = Path(__file__).resolve().parents[3]
# (device, variant) -> one run's figures
Measure = Callable[[str, "Variant"], dict[str, Any]]


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: a checkout (run from its folder, with it on PYTHONPATH:
    `python -m` imports from the working directory first) and settings for its runs."""

    tree: Path
    overrides: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        return tree_env(self.tree)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs (values read as YAML) -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--*-set {item!r}: write KEY.PATH=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes a child import the code of `tree`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSCREEN_")}
    env["PYTHONPATH"] = str(tree.resolve())
    return env


# thread groups whose CPU per frame is compared one by one (pipeline.devtools.bench.cpu)
GROUP_FIGURES = {
    "classify": "classify_ms",
    "folder decode": "decode_ms",
    "gstreamer": "gstreamer_ms",
    "publish": "publish_ms",
    "mqtt client": "mqtt_client_ms",
    "paho network": "paho_ms",
}


def figures(run: dict[str, Any]) -> dict[str, float | None]:
    """The figures compared: rate, latency (live), start-up, CPU per frame (in all and for the
    thread groups where the pipeline's own work runs)."""
    cpu = run.get("cpu") or {}
    lat = run.get("latency_ms") or {}
    groups = cpu.get("cpu_ms_per_frame") or {}
    return {
        "fps": run.get("fps", run.get("result_fps")),
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "non_model_ms": cpu.get("non_model_ms_per_frame"),
        "total_ms": cpu.get("total_ms_per_frame"),
        **{key: groups.get(group) for group, key in GROUP_FIGURES.items()},
        "faults": cpu.get("page_faults_per_frame"),
        "system_share": cpu.get("system_cpu_share"),
        "rss_mb": run.get("max_rss_mb"),
        "first_result_s": run.get("first_result_s"),
    }


def paired(base: list[dict[str, Any]], cand: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median over rounds of candidate / baseline, figure by figure."""
    out: dict[str, float | None] = {}
    for key in base[0]:
        ratios = [c[key] / b[key] for b, c in zip(base, cand, strict=True) if b[key] and c[key]]
        out[key] = round(statistics.median(ratios), 4) if ratios else None
    return out


def alternate(measures: dict[str, Measure], variants: dict[str, Variant], rounds: int) -> Any:
    """Every measure by both variants in every round, the order swapped each round."""
    names = list(variants)
    out: dict[str, dict[str, list[dict[str, Any]]]] = {m: {n: [] for n in names} for m in measures}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for what, measure in measures.items():
            for name in order:
                run = measure(f"ab-{name}-{what}-{r}", variants[name])
                out[what][name].append(figures(run))
                print(f"round {r + 1} {what} {name}: {json.dumps(out[what][name][-1])}", flush=True)
    return {
        what: {**runs, "candidate_vs_baseline": paired(runs["baseline"], runs["candidate"])}
        for what, runs in out.items()
    }


def measures_for(args: argparse.Namespace, rig: Rig, tmp: Path) -> dict[str, Measure]:
    recordings = prepare(tuple(args.sources), tmp, args.frames, args.video, args.data, None)
    out: dict[str, Measure] = {}
    for kind, rec in recordings.items():
        out[kind] = lambda device, v, rec=rec: measure_replay(  # type: ignore[misc]
            rig, args.model, rec, args.frames, device, v.env, v.overrides, v.tree
        )
    for fps in args.live_fps:
        out[f"live{fps}"] = lambda device, v, fps=fps: measure_live(  # type: ignore[misc]
            rig, args.model, fps, args.live_seconds, device, v.env, v.overrides, v.tree
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.devtools.bench.ab")
    parser.add_argument("--baseline", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--candidate", type=Path, default=REPO, help="default: this tree")
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--sources", nargs="*", choices=SOURCE_KINDS, default=["mp4"])
    parser.add_argument("--video", type=Path, default=None, help="MP4 (default: synthesized)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DMR-IR matrix folder")
    parser.add_argument("--frames", type=int, default=200, help="frames per replay")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--live-fps", type=int, nargs="*", default=[], help="live rates")
    parser.add_argument("--live-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--baseline-set", nargs="*", default=[], help="KEY.PATH=VALUE settings")
    parser.add_argument("--candidate-set", nargs="*", default=[], help="KEY.PATH=VALUE settings")
    args = parser.parse_args(argv)
    variants = {
        "baseline": Variant(args.baseline.resolve(), parse_sets(args.baseline_set)),
        "candidate": Variant(args.candidate.resolve(), parse_sets(args.candidate_set)),
    }
    with tempfile.TemporaryDirectory(prefix="thermoscreen-ab-") as name:
        tmp = Path(name)
        with LocalBroker(tmp / "broker") as broker:
            collector = Collector(broker.host, broker.port)
            try:
                rig = Rig(broker, collector, tmp / "run")
                report = {
                    "baseline": str(args.baseline),
                    "candidate": str(args.candidate),
                    "load_before": os.getloadavg(),
                    "settings": {n: v.overrides for n, v in variants.items()},
                    "runs": alternate(measures_for(args, rig, tmp), variants, args.rounds),
                    "load_after": os.getloadavg(),
                }
            finally:
                collector.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
