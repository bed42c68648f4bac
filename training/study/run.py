"""The study, step by step: every development patient (no hold-out: the maintainers score
shipped models on patients that never reach this repository), the candidates compared under the
nested protocol over several split seeds (`compare`), each also scored from 8-bit JPEG
renderings, the shortcut checks, and the pre-declared choice of the shipped candidate."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline import DISCLAIMER
from pipeline.preprocess import PreprocessConfig
from training import calibration
from training.study import shortcuts
from training.study.cohort import Cohort, load_celsius, load_cohort
from training.study.compare import (
    CANDIDATES,
    Candidate,
    Comparison,
    criterion_mean,
    summarize_candidate,
)
from training.study.cv import FoldResult, patient_folds, scores
from training.study.features import FeatureCache
from training.study.int8 import int8_check
from training.study.probe import PROBE_LAMBDAS
from training.study.renderings import MATRIX
from training.study.tables import tables
from training.study.variants import ablation_variants

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class StudyConfig:
    """What one study run does (the CLI's flags)."""

    split_seeds: tuple[int, ...] = (0, 1, 2)
    candidates: tuple[str, ...] = tuple(c.name for c in CANDIDATES)
    bootstrap: int = 1000
    max_patients: int | None = None
    ablations: bool = True
    quick: bool = False
    lambdas: tuple[float, ...] = field(default=PROBE_LAMBDAS)


@dataclass(frozen=True)
class Setup:
    """The cohort, its feature cache and the comparison over it."""

    cohort: Cohort
    cache: FeatureCache
    comparison: Comparison


def setup(data: Path, out: Path, cfg: StudyConfig) -> Setup:
    """Scan every patient, parse the matrices once, and open the caches under `out`."""
    cohort = load_cohort(data, cfg.max_patients, 0)
    celsius = load_celsius(cohort, out / "cache")
    cache = FeatureCache(out / "cache", celsius, PreprocessConfig())
    y, old = cohort.y, cohort.old
    log.info(
        "development: %d patients (%d sick), %d with ID < 300 (%d sick)",
        len(y), int(y.sum()), int(old.sum()), int((y * old).sum()),
    )  # fmt: skip
    comparison = Comparison(cohort, cache, out / "folds", cfg.bootstrap, cfg.lambdas)
    return Setup(cohort, cache, comparison)


def _header(data: Path, cfg: StudyConfig, cohort: Cohort) -> dict[str, Any]:
    return {
        "disclaimer": DISCLAIMER,
        "data": data.resolve().name,
        "config": {**asdict(cfg), "lambdas": list(cfg.lambdas)},
        "protocol": {
            "outer": "5-fold StratifiedGroupKFold by patient, label x era strata, per split seed",
            "inner": "4-fold StratifiedGroupKFold inside each outer training fold: feature set, "
            "penalty, Platt scaling and threshold (sensitivity >= 0.90)",
            "selection": "highest mean over split seeds of (AUC all + AUC ID < 300) / 2",
        },
        "development": {
            "patients": len(cohort.y),
            "sick": int(cohort.y.sum()),
            "id_below_300": int(cohort.old.sum()),
            "sick_id_below_300": int((cohort.y * cohort.old).sum()),
        },
        "candidates": {},
    }


def write(out: Path, report: dict[str, Any], oof: dict[str, F64], cohort: Cohort) -> None:
    """study.json, tables.md, oof_scores.csv (split seed 0) and reliability.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "tables.md").write_text(tables(report), encoding="utf-8")
    names = list(oof)
    lines = ["patient_id,sick,id_below_300," + ",".join(f'"{n}"' for n in names)]
    for i, p in enumerate(cohort.patient_ids):
        vals = ",".join("" if np.isnan(oof[n][i]) else f"{oof[n][i]:.6f}" for n in names)
        lines.append(f"{p},{cohort.y[i]},{int(cohort.old[i])},{vals}")
    (out / "oof_scores.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    curves = {
        n: calibration.reliability(cohort.y[~np.isnan(s)], s[~np.isnan(s)]) for n, s in oof.items()
    }
    if curves:
        calibration.plot_reliability(
            curves, out / "reliability.png", "Out-of-fold reliability, seed 0"
        )


def chosen_candidate(report: dict[str, Any]) -> dict[str, Any] | None:
    """The pre-declared rule over the candidates that ran on every split seed."""
    done = {
        n: criterion_mean(r["matrix"])
        for n, r in report.get("candidates", {}).items()  # none: no study has run here
        if r["matrix"]["all"]["auc"]["mean"] is not None and r.get("complete", True)
    }
    if not done:
        return None
    best = max(done, key=lambda n: done[n])
    return {"candidate": best, "criterion": round(done[best], 4), "all": done}


def run_study(data: Path, out: Path, cfg: StudyConfig) -> dict[str, Any]:
    """Every step above; returns study.json's content (written as results arrive)."""
    started = time.monotonic()
    s = setup(data, out, cfg)
    report = _header(data, cfg, s.cohort)
    oof: dict[str, F64] = {}
    for c in (c for c in CANDIDATES if c.name in cfg.candidates):
        _candidate_rows(report, oof, s, c, cfg)
        write(out, report, oof, s.cohort)
    report["fine_tuned"] = _fine_tuned(out)
    report["shortcut_checks"] = _shortcut_rows(s, cfg)
    report["chosen"] = chosen_candidate(report)
    by_name = {c.name: c for c in CANDIDATES}
    if report["chosen"] and report["chosen"]["candidate"] in by_name:
        chosen = by_name[report["chosen"]["candidate"]]
        report["int8"] = int8_check(s.comparison, chosen, cfg.split_seeds[0])
        log.info("INT8 check: %s", report["int8"])
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    write(out, report, oof, s.cohort)
    return report


def _candidate_rows(
    report: dict[str, Any], oof: dict[str, F64], s: Setup, c: Candidate, cfg: StudyConfig
) -> None:
    per_seed: dict[int, list[FoldResult]] = {}
    for seed in cfg.split_seeds:
        t0 = time.monotonic()
        per_seed[seed] = s.comparison.results(c, seed)
        log.info("%s, split seed %d: %.0f s", c.name, seed, time.monotonic() - t0)
    summary = summarize_candidate(s.cohort, per_seed, cfg.bootstrap)
    report["candidates"][c.name] = summary
    oof[c.name] = scores(s.cohort, per_seed[cfg.split_seeds[0]])
    m = summary["matrix"]
    log.info(
        "%s: AUC all %.3f ± %.3f, ID < 300 %.3f ± %.3f over seeds %s",
        c.name, m["all"]["auc"]["mean"], m["all"]["auc"]["sd"],
        m["id_below_300"]["auc"]["mean"], m["id_below_300"]["auc"]["sd"], list(cfg.split_seeds),
    )  # fmt: skip


def _fine_tuned(out: Path) -> dict[str, Any]:
    """The end-to-end candidates' summaries, when `--fine-tune` has written them."""
    path = out / "fine_tuned.json"
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}


def _shortcut_rows(s: Setup, cfg: StudyConfig) -> dict[str, Any]:
    """Era probe, ID < 300-only probe, the random-init control and the rendering/region checks,
    with Lite0 features on split seed 0 (information only)."""
    cohort, seed = s.cohort, cfg.split_seeds[0]
    feats = s.cache.get("lite0", MATRIX)
    folds = patient_folds(cohort, 5, seed)
    sets = CANDIDATES[0].sets
    out: dict[str, Any] = {}
    era = shortcuts.era_probe(feats, cohort, 5, seed, sets, cfg.bootstrap)
    if era is not None:
        out["era_probe"] = era
    old = shortcuts.old_only_probe(feats, cohort, 5, seed, sets, cfg.bootstrap)
    if old is not None:
        out["probe_trained_on_id_below_300"] = old
    if cfg.ablations:
        out["random_init_control"] = shortcuts.random_control(
            [MATRIX(c, PreprocessConfig()) for c in s.cache.celsius],
            cohort,
            folds,
            seed,
            sets,
            cfg.bootstrap,
        )[0]
        out["variants"] = {}
        variants: dict[str, Any] = out["variants"]
        shortcuts.ablations(
            ablation_variants(cfg.quick), s.cache.celsius, feats, s.cache.model("lite0"), cohort,
            folds, seed, cfg.bootstrap, variants.__setitem__,
        )  # fmt: skip
    return out
