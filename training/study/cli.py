"""`python -m training.study`: the command line of the study (see `training.study`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline import DISCLAIMER
from pipeline.cli import setup_logging
from pipeline.data.dmr import DataError
from pipeline.manifest import ModelError
from training import train
from training.study.cohort import StudyError
from training.study.run import ALL_SETS, RANDOM_CONTROL, StudyConfig, development, run_study
from training.study.ship import SHIPPED_DIR, score_model
from training.study.shortcuts import random_control
from training.study.tables import headline

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.study",
        description="Grouped-CV study of DMR-IR models with shortcut checks, or (--model) scoring "
        f"of any labelled folder with a shipped model. {DISCLAIMER}",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="labelled folder (../shared layout)")
    p.add_argument("--out", type=Path, required=True, help="folder for study.json and plots")
    p.add_argument("--model", type=Path, help="score --data with this exported model and stop")
    p.add_argument(
        "--model-out",
        type=Path,
        help=f"where the shipped model is exported (default {SHIPPED_DIR}; --quick exports only "
        "when this is given, so a smoke run never replaces the shipped model)",
    )
    p.add_argument("--no-export", action="store_true", help="skip exporting the shipped model")
    p.add_argument("--folds", type=int, default=5, help="outer CV folds")
    p.add_argument("--seed", type=int, default=0, help="hold-out and headline split seed")
    p.add_argument("--holdout-fraction", type=float, default=0.2)
    p.add_argument(
        "--cnn-archs",
        default=",".join(StudyConfig.cnn_archs),
        help="comma-separated ARCH[:WEIGHTS] trained end to end, e.g. mobilenet_v3_small,resnet18,"
        "efficientnet_b0,efficientnet_lite0:imagenet (default none: `make evaluate-cnn` runs them)",
    )
    p.add_argument(
        "--split-seeds",
        default=",".join(str(s) for s in StudyConfig.split_seeds),
        help="outer-CV fold seeds for the repeated nested procedure (the hold-out stays --seed's)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: up to 4)")
    p.add_argument("--cnn-epochs", type=int, default=StudyConfig.cnn_epochs)
    p.add_argument(
        "--cnn-epoch-samples",
        type=int,
        default=StudyConfig.cnn_epoch_samples,
        help="an epoch repeats the (augmented) training images up to this many samples",
    )
    p.add_argument("--no-ablations", action="store_true", help="skip preprocessing checks")
    p.add_argument(
        "--cnn-only",
        action="store_true",
        help="only the --cnn-archs models (no probe study, no export, hold-out untouched)",
    )
    p.add_argument(
        "--control-only",
        action="store_true",
        help="only the random-init Lite0 probe (the pre-training control); writes control.json",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10 patients, 2 folds, 1 epoch, mobilenet_v3_small, 3 variants",
    )
    return p


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The flags as a StudyConfig (--quick: 10 patients, 2 folds, 1 epoch, 2 split seeds)."""
    archs = tuple(a for a in args.cnn_archs.split(",") if a)
    seeds = tuple(int(x) for x in args.split_seeds.split(",") if x.strip())
    if not seeds:
        raise StudyError("--split-seeds: give at least one seed, e.g. 0,1,2,3,4")
    if args.quick:
        return StudyConfig(
            folds=2,
            seed=args.seed,
            holdout_fraction=0.2,
            cnn_archs=("mobilenet_v3_small",) if archs else (),
            cnn_epochs=1,
            cnn_epoch_samples=0,
            ablations=not args.no_ablations,
            bootstrap=50,
            max_patients=10,
            quick=True,
            split_seeds=seeds[:2],
            cnn_only=args.cnn_only,
        )
    return StudyConfig(
        folds=args.folds,
        seed=args.seed,
        holdout_fraction=args.holdout_fraction,
        cnn_archs=archs,
        cnn_epochs=args.cnn_epochs,
        cnn_epoch_samples=args.cnn_epoch_samples,
        ablations=not args.no_ablations,
        bootstrap=args.bootstrap,
        split_seeds=seeds,
        cnn_only=args.cnn_only,
    )


def _score(args: argparse.Namespace) -> int:
    report = score_model(args.model, args.data, args.bootstrap, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "score.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(headline(str(args.model), report))
    print(DISCLAIMER)
    return 0


def _control(args: argparse.Namespace, cfg: StudyConfig) -> int:
    d = development(args.data, args.out, cfg)
    summary, _ = random_control(d.images, d.dev, d.folds, cfg.seed, ALL_SETS, cfg.bootstrap)
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({RANDOM_CONTROL: summary}, indent=2) + "\n"
    (args.out / "control.json").write_text(text, encoding="utf-8")
    print(headline(RANDOM_CONTROL, summary))
    return 0


def _print_report(report: dict[str, Any], out: Path) -> None:
    for n, s in report["candidates"].items():
        print(headline(n, s))
    for n, s in report["ablations"].items():
        print(headline(n, s))
    if "chosen_preprocessing" in report:
        print(f"chosen preprocessing: {report['chosen_preprocessing']['variant']}")
    if "holdout" in report.get("shipped", {}):
        print(headline("hold-out (shipped model)", report["shipped"]["holdout"]))
    print(f"report: {out / 'study.json'}")
    print(DISCLAIMER)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("INFO")
    try:
        if args.model is not None:
            return _score(args)
        cfg = config_from_args(args)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        else:
            train.set_threads()
        if args.control_only:
            return _control(args, cfg)
        model_out = args.model_out or (None if args.quick else SHIPPED_DIR)
        report = run_study(args.data, args.out, cfg, None if args.no_export else model_out)
    except (DataError, ModelError, StudyError, ValueError) as exc:
        print(f"training.study: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    _print_report(report, args.out)
    return 0
