"""`python -m training.study`: the command line of the study (see `training.study`).

Modes: the comparison (default), `--fine-tune` (the end-to-end candidates, resumable),
`--ship` (`make model-dmr`: the chosen candidate fitted on every patient and exported), and
`--model DIR` (score any labelled folder with an exported model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline import DISCLAIMER
from pipeline.cli import setup_logging
from pipeline.data.dmr import DataError
from pipeline.manifest import ModelError
from training import train
from training.quantize import quantize_model_dir
from training.study.cohort import StudyError
from training.study.compare import CANDIDATES, summarize_candidate
from training.study.finetune import FineTune, run_fine_tune
from training.study.probe import PROBE_LAMBDAS
from training.study.run import StudyConfig, chosen_candidate, run_study, setup
from training.study.ship import SHIPPED_DIR, score_model, ship
from training.study.tables import headline, tables

log = logging.getLogger(__name__)
# the candidate `--ship` exports when no study.json names one: the study's choice under its
# pre-declared rule (models/README.md, "Candidates"), so a fresh clone ships it without the study
DEFAULT_SHIPPED = CANDIDATES[4].name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.study",
        description="Nested, patient-grouped comparison of DMR-IR models over several split "
        f"seeds, shortcut and rendering checks; or ship / score a model. {DISCLAIMER}",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="labelled folder (../shared layout)")
    p.add_argument("--out", type=Path, required=True, help="folder for study.json and caches")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--model", type=Path, help="score --data with this exported model and stop")
    mode.add_argument("--fine-tune", action="store_true", help="run the end-to-end candidates")
    mode.add_argument("--ship", action="store_true", help="fit the chosen candidate on every "
                      "patient and export it to --model-out")  # fmt: skip
    p.add_argument("--model-out", type=Path, default=SHIPPED_DIR, help="where --ship exports")
    p.add_argument("--candidate", help="--ship this candidate instead of study.json's choice")
    p.add_argument("--split-seeds", default="0,1,2", help="outer-CV split seeds")
    p.add_argument("--candidates", default=",".join(str(i) for i in range(len(CANDIDATES))),
                   help="indices of the frozen candidates to compare: " + "; ".join(
                       f"{i} {c.name}" for i, c in enumerate(CANDIDATES)))  # fmt: skip
    p.add_argument("--epochs", type=int, default=FineTune.epochs, help="--fine-tune: longest run")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: up to 4)")
    p.add_argument("--no-ablations", action="store_true", help="skip the rendering/region checks")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed of --model scoring")
    p.add_argument("--quick", action="store_true", help="smoke run: 16 patients, 1 split seed, "
                   "3 penalties, Lite0 only, 1-epoch fine-tuning")  # fmt: skip
    return p


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    seeds = tuple(int(x) for x in args.split_seeds.split(",") if x.strip())
    chosen = tuple(CANDIDATES[int(i)].name for i in args.candidates.split(",") if i.strip())
    if not seeds or not chosen:
        raise StudyError("--split-seeds and --candidates need at least one value each")
    if args.quick:
        return StudyConfig(
            split_seeds=seeds[:1], candidates=chosen[:2], bootstrap=50, max_patients=16,
            ablations=not args.no_ablations, quick=True, lambdas=(10.0, 0.1, 1e-3),
        )  # fmt: skip
    return StudyConfig(
        split_seeds=seeds, candidates=chosen, bootstrap=args.bootstrap,
        ablations=not args.no_ablations, lambdas=PROBE_LAMBDAS,
    )  # fmt: skip


def _score(args: argparse.Namespace) -> int:
    report = score_model(args.model, args.data, args.bootstrap, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "score.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(headline(str(args.model), report))
    print(DISCLAIMER)
    return 0


def _fine_tune(args: argparse.Namespace, cfg: StudyConfig) -> int:
    s = setup(args.data, args.out, cfg)
    ft = FineTune(epochs=1 if cfg.quick else args.epochs, epoch_samples=16 if cfg.quick else 96)
    rows = run_fine_tune(ft, s.cohort, s.cache.celsius, args.out / "fine_tune", cfg.split_seeds)
    summaries = {n: summarize_candidate(s.cohort, r, cfg.bootstrap) for n, r in rows.items()}
    (args.out / "fine_tuned.json").write_text(json.dumps(summaries, indent=2) + "\n", "utf-8")
    for name, summary in summaries.items():
        all_, old = (summary["matrix"][p]["auc"]["mean"] for p in ("all", "id_below_300"))
        print(f"{name}: AUC all {all_}, ID < 300 {old} (mean over split seeds)")
    return 0


def _ship(args: argparse.Namespace, cfg: StudyConfig) -> int:
    t0 = time.monotonic()
    study = args.out / "study.json"
    report: dict[str, Any] = json.loads(study.read_text("utf-8")) if study.is_file() else {}
    name = args.candidate or (chosen_candidate(report) or {}).get("candidate") or DEFAULT_SHIPPED
    by_name = {c.name: c for c in CANDIDATES}
    if name not in by_name:
        raise StudyError(
            f"--candidate {name!r}: not a shippable candidate; use one of {list(by_name)}"
        )
    development = report.get("candidates", {}).get(name, {}).get("matrix", {})
    keep = {p: development[p]["auc"] for p in ("all", "id_below_300") if p in development}
    s = setup(args.data, args.out, cfg)
    summary = ship(s.comparison, by_name[name], args.data, args.model_out, {"auc_over_seeds": keep})
    if report.get("int8", {}).get("quantize"):
        int8_dir = args.model_out.with_name(args.model_out.name + "-int8")
        quantize_model_dir(args.model_out, args.data, int8_dir, calib_split="all")
        print(f"INT8 copy: {int8_dir} (development AUC change {report['int8']['change']})")
    print(f"model: {summary['out']} ({name}; threshold {summary['threshold']['value']}; "
          f"{time.monotonic() - t0:.0f} s)")  # fmt: skip
    print(DISCLAIMER)
    return 0


def _study(args: argparse.Namespace, cfg: StudyConfig) -> int:
    report = run_study(args.data, args.out, cfg)
    print(tables(report))
    print(f"report: {args.out / 'study.json'}")
    print(DISCLAIMER)
    return 0


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
        if args.fine_tune:
            return _fine_tune(args, cfg)
        return _ship(args, cfg) if args.ship else _study(args, cfg)
    except (DataError, ModelError, StudyError, ValueError) as exc:
        print(f"training.study: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
