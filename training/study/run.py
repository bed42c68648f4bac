"""The study, step by step: lock away the hold-out, nested CV of the frozen-Lite0 procedure
over several split seeds, the feature-set rows, the controls and shortcut checks, the export of
the shipped probe and its single hold-out scoring; optionally CNNs trained end to end."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pipeline import DISCLAIMER
from training import calibration, splits
from training.bilateral import FEATURE_SETS
from training.lite0 import load_imagenet
from training.study import shortcuts
from training.study.cnn import CnnBudget, cv_cnn
from training.study.cohort import Cohort, load_celsius, load_cohort
from training.study.cv import (
    across_seeds,
    choices,
    cv_probe,
    outer_folds,
    scores,
    seed_row,
    spread,
    summarize,
)
from training.study.features import probe_features
from training.study.probe import PROBE_LAMBDAS, nested_fit
from training.study.ship import export_probe, link_subset, score_model
from training.study.tables import PROCEDURE, headline, tables
from training.study.variants import DEFAULT_VARIANT, ablation_variants, render_variant

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
IDX = npt.NDArray[np.intp]
RANDOM_CONTROL = "efficientnet_lite0 random init (no pre-training), frozen + nested probe"
ALL_SETS = tuple(fs.name for fs in FEATURE_SETS)  # every set, in their fixed order


@dataclass(frozen=True)
class StudyConfig:
    """What one study run does (the CLI's flags)."""

    folds: int = 5
    seed: int = 0
    holdout_fraction: float = 0.2
    # trained end to end (slow); `make evaluate-cnn` runs them, `make evaluate` does not
    cnn_archs: tuple[str, ...] = ()
    cnn_epochs: int = 4
    cnn_epoch_samples: int = 128
    ablations: bool = True
    bootstrap: int = 1000
    max_patients: int | None = None
    quick: bool = False
    split_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # outer CV repeated over these fold seeds
    cnn_only: bool = False  # skip the probe study and the export: only the end-to-end CNNs


@dataclass(frozen=True)
class Development:
    """The development patients (their matrices and renders), the locked hold-out, the folds."""

    dev: Cohort
    holdout: Cohort
    folds: list[IDX]
    celsius: F32
    images: list[U8]


def development(data: Path, out: Path, cfg: StudyConfig) -> Development:
    """Scan, lock away the stratified hold-out, fold the rest, parse and render its matrices."""
    everyone = load_cohort(data, cfg.max_patients, cfg.seed)
    items = [everyone.item(i) for i in range(len(everyone.y))]
    hold = splits.patient_split(items, test_fraction=cfg.holdout_fraction, seed=cfg.seed)
    hold_ids = {str(it.patient_id) for it in hold.test}
    dev = everyone.take([i for i, p in enumerate(everyone.patient_ids) if p not in hold_ids])
    holdout = everyone.take([i for i, p in enumerate(everyone.patient_ids) if p in hold_ids])
    log.info("development %d patients, hold-out %d (locked)", len(dev.y), len(holdout.y))
    celsius = load_celsius(dev, out / "cache")
    images = render_variant(celsius, DEFAULT_VARIANT)
    return Development(dev, holdout, outer_folds(dev, cfg.folds, cfg.seed), celsius, images)


class Report:
    """study.json, tables.md, oof_scores.csv and reliability.png, rewritten as results arrive."""

    def __init__(self, out: Path, dev: Cohort, data: dict[str, Any]) -> None:
        self.out, self.dev, self.data = out, dev, data
        self.oof: dict[str, F64] = {}

    def write(self) -> None:
        out, dev, oof = self.out, self.dev, self.oof
        out.mkdir(parents=True, exist_ok=True)
        (out / "study.json").write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        (out / "tables.md").write_text(tables(self.data), encoding="utf-8")
        names = list(oof)
        lines = ["patient_id,sick,id_below_300," + ",".join(f'"{n}"' for n in names)]
        for i, p in enumerate(dev.patient_ids):
            vals = ",".join("" if np.isnan(oof[n][i]) else f"{oof[n][i]:.6f}" for n in names)
            lines.append(f"{p},{dev.y[i]},{int(dev.old[i])},{vals}")
        (out / "oof_scores.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        curves = {
            n: calibration.reliability(dev.y[~np.isnan(s)], s[~np.isnan(s)]) for n, s in oof.items()
        }
        if curves:
            calibration.plot_reliability(
                curves, out / "reliability.png", "Out-of-fold reliability (dev)"
            )


def _header(data: Path, cfg: StudyConfig, d: Development) -> dict[str, Any]:
    dev, holdout = d.dev, d.holdout
    return {
        "disclaimer": DISCLAIMER,
        "data": data.name,
        "config": {
            **asdict(cfg),
            "probe_lambdas": list(PROBE_LAMBDAS),
            "feature_sets": list(ALL_SETS),
            "inner_criterion": "mean of inner out-of-fold AUC on all and on ID < 300 patients",
            "torch_threads": torch.get_num_threads(),
        },
        "development": {
            "patients": len(dev.y),
            "sick": int(dev.y.sum()),
            "id_below_300": int(dev.old.sum()),
            "sick_id_below_300": int((dev.y * dev.old).sum()),
        },
        "holdout": {
            "patients": holdout.patient_ids,
            "sick": int(holdout.y.sum()),
            "id_below_300": int(holdout.old.sum()),
        },
        "folds": [[dev.patient_ids[i] for i in f] for f in d.folds],
        "candidates": {},
        "feature_sets": {},
        "ablations": {},
    }


def repeated_cv(
    feats: dict[str, F32], dev: Cohort, cfg: StudyConfig, sets: tuple[str, ...]
) -> dict[str, Any]:
    """The whole nested procedure under outer CV with several fold seeds: how much the estimate
    itself moves with the split (the pooled bootstrap interval does not show that)."""
    per_seed: dict[str, Any] = {}
    for s in cfg.split_seeds:
        res = cv_probe(feats, dev, outer_folds(dev, cfg.folds, s), s, sets)
        summary = summarize(dev, res, cfg.bootstrap, s)
        per_seed[str(s)] = seed_row(summary)
        per_seed[str(s)]["feature_sets_chosen"] = [r.chosen["feature_set"] for r in res]
        per_seed[str(s)]["lambdas_chosen"] = [r.chosen["lambda"] for r in res]
        log.info("split seed %d, sets %s: %s", s, ",".join(sets), headline(PROCEDURE, summary))
    return across_seeds(per_seed, cfg.split_seeds)


def run_study(data: Path, out: Path, cfg: StudyConfig, model_out: Path | None) -> dict[str, Any]:
    """Every step above; returns study.json's content."""
    started = time.monotonic()
    d = development(data, out, cfg)
    report = Report(out, d.dev, _header(data, cfg, d))
    if not cfg.cnn_only:
        _probe_study(report, d, data, cfg, model_out)
    for spec in cfg.cnn_archs:
        _cnn_rows(report, d, cfg, spec)
    report.data["elapsed_s"] = round(time.monotonic() - started, 1)
    report.write()
    return report.data


def _probe_study(
    report: Report, d: Development, data: Path, cfg: StudyConfig, model_out: Path | None
) -> None:
    """The nested frozen-Lite0 procedure, its repeats, the checks, the shipped model and its
    single hold-out scoring (fills `report`)."""
    lite0 = load_imagenet()
    feats = probe_features(lite0, d.images)
    _procedure_rows(report, feats, d, cfg)
    r = report.data
    r["candidates"][RANDOM_CONTROL], report.oof[RANDOM_CONTROL] = shortcuts.random_control(
        d.images, d.dev, d.folds, cfg.seed, ALL_SETS, cfg.bootstrap
    )
    log.info("%s", headline(RANDOM_CONTROL, r["candidates"][RANDOM_CONTROL]))
    report.write()
    _shortcut_rows(report, feats, lite0, d, cfg)
    _ship(report, feats, d, data, cfg, model_out)


def _procedure_rows(
    report: Report, feats: dict[str, F32], d: Development, cfg: StudyConfig
) -> None:
    """The procedure on split seed `cfg.seed`, over every split seed, and each set forced."""
    r = report.data
    res = cv_probe(feats, d.dev, d.folds, cfg.seed, ALL_SETS)
    r["candidates"][PROCEDURE] = summarize(d.dev, res, cfg.bootstrap, cfg.seed)
    r["candidates"][PROCEDURE]["choices"] = choices(res)
    report.oof[PROCEDURE] = scores(d.dev, res)
    log.info("%s", headline(PROCEDURE, r["candidates"][PROCEDURE]))
    report.write()
    r["repeated_cv"] = repeated_cv(feats, d.dev, cfg, ALL_SETS)
    report.write()
    for name in ALL_SETS:  # information only: nothing is chosen from these rows
        res = cv_probe(feats, d.dev, d.folds, cfg.seed, (name,))
        r["feature_sets"][name] = summarize(d.dev, res, cfg.bootstrap, cfg.seed)
        r["feature_sets"][name]["choices"] = choices(res)
        log.info("%s", headline(f"feature set {name}", r["feature_sets"][name]))
        rep = repeated_cv(feats, d.dev, cfg, (name,))
        r["feature_sets"][name]["repeated_cv"] = {
            k: rep[k] for k in ("seeds", "all", "id_below_300") if k in rep
        }
        report.write()


def _shortcut_rows(
    report: Report, feats: dict[str, F32], lite0: Any, d: Development, cfg: StudyConfig
) -> None:
    r = report.data
    era = shortcuts.era_probe(feats, d.dev, cfg.folds, cfg.seed, ALL_SETS, cfg.bootstrap)
    if era is not None:
        r["shortcut_era_probe"] = era
    old = shortcuts.old_only_probe(feats, d.dev, cfg.folds, cfg.seed, ALL_SETS, cfg.bootstrap)
    if old is not None:
        r["probe_trained_on_id_below_300"] = old

    def done(name: str, summary: dict[str, Any]) -> None:
        r["ablations"][name] = summary
        report.write()

    variants = ablation_variants(cfg.quick) if cfg.ablations else [DEFAULT_VARIANT]
    shortcuts.ablations(
        variants, d.celsius, feats, lite0, d.dev, d.folds, cfg.seed, cfg.bootstrap, done
    )


def _ship(
    report: Report,
    feats: dict[str, F32],
    d: Development,
    data: Path,
    cfg: StudyConfig,
    model_out: Path | None,
) -> None:
    """Preprocessing fixed in advance; every other choice by inner CV on all development
    patients; export, then the hold-out scored once through ONNX Runtime."""
    r = report.data
    r["chosen_preprocessing"] = {
        "variant": DEFAULT_VARIANT.name,
        "rule": "fixed in advance (the pipeline's default); the variants above are diagnostics",
        "preprocessing": DEFAULT_VARIANT.preprocessing.model_dump(mode="json"),
    }
    fit = nested_fit(feats, d.dev.y, d.dev.old, cfg.seed, ALL_SETS, where="shipped probe")
    r["shipped"] = {"threshold": fit.chosen}
    if model_out is not None:
        cv = r["candidates"][PROCEDURE]
        dev_cv = {p: cv[p]["auc"] for p in ("all", "id_below_300") if p in cv}
        r["shipped"]["export"] = export_probe(
            fit, DEFAULT_VARIANT, data, d.dev, d.holdout, d.images[:8], model_out, dev_cv
        )
        holdout_dir = report.out / "holdout-data"
        link_subset(d.holdout, holdout_dir)
        r["shipped"]["holdout"] = score_model(model_out, holdout_dir, cfg.bootstrap, cfg.seed)
    report.write()


def _cnn_rows(report: Report, d: Development, cfg: StudyConfig, spec: str) -> None:
    """One CNN trained end to end: over every split seed with --cnn-only, else on `cfg.seed`."""
    arch, _, weights = spec.partition(":")
    weights = weights or "none"
    how = "from scratch" if weights == "none" else f"fine-tuned from {weights}"
    key = f"{arch} {how}, {cfg.cnn_epochs} epochs x {cfg.cnn_epoch_samples} samples"
    budget = CnnBudget(cfg.cnn_epochs, cfg.cnn_epoch_samples)
    per_seed: dict[str, Any] = {}
    for s in cfg.split_seeds if cfg.cnn_only else (cfg.seed,):
        t0 = time.monotonic()
        folds = outer_folds(d.dev, cfg.folds, s)
        res = cv_cnn(arch, d.images, d.dev, folds, budget, cfg.seed, weights)
        summary = summarize(d.dev, res, cfg.bootstrap, s)
        summary["seconds"] = round(time.monotonic() - t0, 1)
        per_seed[str(s)] = summary
        if s == cfg.seed:
            report.data["candidates"][key] = summary
            report.oof[key] = scores(d.dev, res)
        log.info("split seed %d: %s", s, headline(key, summary))
        report.write()
    if len(per_seed) > 1:
        report.data.setdefault("cnn_repeated_cv", {})[key] = {
            "seeds": [int(k) for k in per_seed],
            **{
                part: {
                    "auc": spread(
                        [per_seed[k].get(part, {}).get("auc", {}).get("value") for k in per_seed]
                    )
                }
                for part in ("all", "id_below_300")
            },
        }
        report.write()
