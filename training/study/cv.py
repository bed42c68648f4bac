"""Outer cross-validation by patient and its summaries: pooled out-of-fold metrics with
patient-bootstrap intervals, the per-fold spread, calibration, and the spread over split seeds.

Each outer fold's choices (`probe.nested_fit`) see only its training patients; its test patients
are only scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from training import calibration, metrics, splits
from training.study.cohort import Cohort
from training.study.probe import (
    PROBE_LAMBDAS,
    TARGET_SENSITIVITY,
    FeatureBank,
    as_bank,
    clean,
    label_safe_folds,
    nested_fit,
)

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IDX = npt.NDArray[np.intp]
PARTS = ("all", "id_below_300")


@dataclass
class FoldResult:
    """Test scores of one outer fold and what was chosen inside its training part; `extra`
    holds the same test patients scored from other renderings (8-bit JPEGs), and `inner_prob`
    the inner out-of-fold p(sick) of the training patients (what an ensemble's threshold needs)."""

    test_idx: IDX
    prob: F64
    threshold: float
    chosen: dict[str, Any] = field(default_factory=dict)
    train_idx: IDX = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    extra: dict[str, F64] = field(default_factory=dict)
    inner_prob: F64 = field(default_factory=lambda: np.zeros(0))


def patient_folds(cohort: Cohort, k: int, seed: int) -> list[IDX]:
    """Outer folds: whole patients, label x era balanced (`probe.stratified_folds`)."""
    return label_safe_folds(cohort.y, cohort.strata, k, seed, cohort.patient_ids)


def outer_folds(dev: Cohort, k: int, seed: int) -> list[IDX]:
    """Grouped, label-stratified k folds over development indices (`splits.grouped_kfold`)."""
    items = [dev.item(i) for i in range(len(dev.y))]
    pos_of = {p: i for i, p in enumerate(dev.patient_ids)}
    return [
        np.asarray(sorted(pos_of[str(it.patient_id)] for it in test), dtype=np.intp)
        for _, test in splits.grouped_kfold(items, k=k, seed=seed)
    ]


def cv_probe(
    feats: dict[str, F32] | FeatureBank,
    cohort: Cohort,
    folds: list[IDX],
    seed: int,
    sets: Sequence[str] = ("last",),
    lambdas: Sequence[float] = PROBE_LAMBDAS,
    renderings: dict[str, dict[str, F32]] | None = None,
) -> list[FoldResult]:
    """Outer CV: each fold's probe (and every choice in it) sees only its training patients;
    its test patients are scored from the matrix features and from each of `renderings`."""
    bank = as_bank(feats)
    out = []
    old = cohort.old
    for i, test in enumerate(folds):
        train_idx = np.setdiff1d(np.arange(len(cohort.y)), test)
        fit = nested_fit(
            bank.take(train_idx), cohort.y[train_idx], old[train_idx], seed + i, sets, lambdas,
            f"outer fold {i + 1}",
        )  # fmt: skip
        name = fit.feature_set
        extra = {r: fit.probe.predict(f[name][test]) for r, f in (renderings or {}).items()}
        prob = fit.probe.predict(bank[name][test])
        out.append(
            FoldResult(test, prob, fit.threshold, fit.chosen, train_idx, extra, fit.inner_prob)
        )
    return out


def ensemble(members: Sequence[list[FoldResult]], cohort: Cohort) -> list[FoldResult]:
    """The members' probabilities averaged, fold by fold (members fitted on the same folds with
    the same seeds, so their inner out-of-fold scores cover the same patients); the threshold
    is chosen on the averaged inner out-of-fold scores, as for a single probe."""
    out = []
    for folds in zip(*members, strict=True):
        first = folds[0]
        inner = np.mean([f.inner_prob for f in folds], axis=0)
        thr = calibration.choose_threshold(cohort.y[first.train_idx], inner, TARGET_SENSITIVITY)
        extra = {r: np.mean([f.extra[r] for f in folds], axis=0) for r in first.extra}
        chosen = {"members": [f.chosen.get("feature_set") for f in folds], **thr.as_dict()}
        prob = np.mean([f.prob for f in folds], axis=0)
        out.append(
            FoldResult(first.test_idx, prob, thr.value, chosen, first.train_idx, extra, inner)
        )
    return out


def scores(cohort: Cohort, results: list[FoldResult]) -> F64:
    """Each patient's out-of-fold probability (NaN where a patient was never tested)."""
    prob = np.full(len(cohort.y), np.nan)
    for r in results:
        prob[r.test_idx] = r.prob
    return prob


def _part(
    y: npt.NDArray[np.int64], p: F64, called: npt.NDArray[np.int64], fold_of: npt.NDArray[np.int64],
    n_folds: int, n_boot: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """One part's (all, or ID < 300) metrics, intervals, fold spread and calibration."""

    def stat(ii: IDX) -> dict[str, float]:
        return {
            "auc": metrics.roc_auc(y[ii], p[ii]),
            "sensitivity": metrics.sensitivity(y[ii], called[ii]),
            "specificity": metrics.specificity(y[ii], called[ii]),
        }

    groups = [np.asarray([i], dtype=np.intp) for i in range(y.size)]
    ci = metrics.bootstrap(groups, stat, n_boot, seed)
    fold_auc = [metrics.roc_auc(y[fold_of == f], p[fold_of == f]) for f in range(n_folds)]
    defined = [a for a in fold_auc if not math.isnan(a)]
    spread = [clean(float(np.mean(defined))), clean(float(np.std(defined)))] if defined else None
    return {
        "patients": int(y.size),
        "sick": int(y.sum()),
        **{k: v.as_dict() for k, v in ci.items()},
        "fold_auc": [clean(a) for a in fold_auc],
        "fold_auc_mean_sd": spread,
        "brier": clean(calibration.brier_score(y, p)),
        "reliability": calibration.reliability(y, p).as_dict(),
    }


def summarize(cohort: Cohort, results: list[FoldResult], n_boot: int, seed: int) -> dict[str, Any]:
    """Pooled out-of-fold metrics (all, ID < 300) with patient-bootstrap intervals, fold spread,
    calibration, and sensitivity/specificity at each fold's own nested threshold."""
    n = len(cohort.y)
    prob = scores(cohort, results)
    called = np.zeros(n, dtype=np.int64)
    fold_of = np.zeros(n, dtype=np.int64)
    for f, r in enumerate(results):
        called[r.test_idx] = (r.prob >= r.threshold).astype(np.int64)
        fold_of[r.test_idx] = f
    done = ~np.isnan(prob)
    out: dict[str, Any] = {}
    for part, mask in (("all", done), ("id_below_300", done & cohort.old)):
        idx = np.flatnonzero(mask)
        if idx.size:
            out[part] = _part(
                cohort.y[idx], prob[idx], called[idx], fold_of[idx], len(results), n_boot, seed
            )
    out["thresholds"] = [r.chosen for r in results]
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """mean, sd, min and max of per-seed values (None where undefined)."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return {"per_seed": list(values), "mean": None, "sd": None, "min": None, "max": None}
    return {
        "per_seed": list(values),
        "mean": round(float(np.mean(v)), 4),
        "sd": round(float(np.std(v)), 4),
        "min": round(min(v), 4),
        "max": round(max(v), 4),
    }


def seed_row(summary: dict[str, Any]) -> dict[str, Any]:
    """What the repeated-CV table keeps of one split seed's summary."""
    keep = ("auc", "sensitivity", "specificity", "brier", "fold_auc_mean_sd")
    return {part: {m: summary[part][m] for m in keep} for part in PARTS if part in summary}


def across_seeds(per_seed: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """The spread of AUC, sensitivity and specificity over split seeds, on all and ID < 300."""
    out: dict[str, Any] = {"seeds": list(seeds), "per_seed": per_seed}
    for part in PARTS:
        out[part] = {
            m: spread([per_seed[str(s)].get(part, {}).get(m, {}).get("value") for s in seeds])
            for m in ("auc", "sensitivity", "specificity")
        }
    return out


def choices(res: list[FoldResult]) -> dict[str, Any]:
    """The feature sets and penalties the outer folds chose."""
    return {
        "feature_sets": [r.chosen.get("feature_set") for r in res],
        "lambdas": [r.chosen.get("lambda") for r in res],
        "lambda_at_grid_edge": [r.chosen.get("lambda_grid_edge") for r in res],
    }


def seed_mean_auc(
    cohort: Cohort, oof: Sequence[F64], n_boot: int, seed: int
) -> dict[str, dict[str, Any]]:
    """The AUC averaged over split seeds (each seed's pooled out-of-fold scores), on all and on
    ID < 300, with a patient-bootstrap interval: a resample of patients is scored under every
    seed and the AUCs averaged, so the interval reflects the patients, not the fold luck."""
    out: dict[str, dict[str, Any]] = {}
    for part, mask in (("all", np.ones(len(cohort.y), bool)), ("id_below_300", cohort.old)):
        idx = np.flatnonzero(mask & ~np.isnan(np.asarray(oof)).any(axis=0))
        if idx.size == 0:
            continue
        y, ps = cohort.y[idx], [np.asarray(p)[idx] for p in oof]

        def stat(ii: IDX, y: npt.NDArray[np.int64] = y, ps: list[F64] = ps) -> dict[str, float]:
            return {"auc": float(np.mean([metrics.roc_auc(y[ii], p[ii]) for p in ps]))}

        groups = [np.asarray([i], dtype=np.intp) for i in range(idx.size)]
        out[part] = metrics.bootstrap(groups, stat, n_boot, seed)["auc"].as_dict()
    return out


def with_scores(results: list[FoldResult], rendering: str) -> list[FoldResult]:
    """The same folds scored from another rendering (thresholds unchanged)."""
    return [
        FoldResult(r.test_idx, r.extra[rendering], r.threshold, r.chosen, r.train_idx)
        for r in results
    ]
