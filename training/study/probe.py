"""The frozen-feature probe: an L2 logistic regression (scikit-learn) on standardised features,
its penalty and feature set chosen by inner cross-validation, Platt scaling and the threshold.

Everything here sees only the patients it is given: `nested_fit` is what runs inside one outer
training fold (and, for the shipped model, on all development patients).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from training import calibration, metrics

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
IDX = npt.NDArray[np.intp]
TARGET_SENSITIVITY = 0.90
# L2 penalties of the probe, strongest first (ties keep the stronger one): 1e3 .. 1e-4 in half
# decades. At 1e3 the weights are tiny and the ranking is that of the class-mean difference, the
# limit of ever stronger penalties; at 1e-4 the probe nearly separates any training set.
PROBE_LAMBDAS = tuple(float(v) for v in np.logspace(3, -4, 15))
INNER_FOLDS = 4
PLATT_PENALTY = 1e-3  # on the Platt slope: keeps it finite when the logits separate the classes
LBFGS_MAX_ITER = 2000
LBFGS_TOL = 1e-8


@dataclass(frozen=True)
class Probe:
    """Logistic regression on standardised features: p = sigmoid(w . (x - mu) / sd + b)."""

    w: F64
    b: float
    mu: F64
    sd: F64

    def logit(self, x: F32 | F64) -> F64:
        return np.asarray(((x - self.mu) / self.sd) @ self.w + self.b, dtype=np.float64)

    def predict(self, x: F32 | F64) -> F64:
        return np.asarray(1.0 / (1.0 + np.exp(-self.logit(x))), dtype=np.float64)

    def rescaled(self, a: float, c: float) -> Probe:
        """The probe whose logit is a * logit + c (Platt scaling folded in; the ranking is kept
        for a > 0)."""
        return Probe(self.w * a, self.b * a + c, self.mu, self.sd)


def fit_probe(x: F32 | F64, y: I64, lam: float) -> Probe:
    """Class-weighted logistic regression minimising mean weighted log-loss + lam * |w|^2 on
    standardised features. scikit-learn minimises C * sum(loss) + |w|^2 / 2, so C = 1/(2 lam n);
    `class_weight="balanced"` gives each class half of the loss however rare it is."""
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    model = LogisticRegression(
        C=1.0 / (2.0 * lam * len(y)),
        class_weight="balanced",
        max_iter=LBFGS_MAX_ITER,
        tol=LBFGS_TOL,
    ).fit(xs, y)
    mu = np.asarray(scaler.mean_, dtype=np.float64)
    sd = np.asarray(scaler.scale_, dtype=np.float64)
    return Probe(np.asarray(model.coef_[0], dtype=np.float64), float(model.intercept_[0]), mu, sd)


def fit_platt(z: F64, y: I64) -> tuple[float, float]:
    """Platt scaling: (a, c) of p = sigmoid(a * z + c) on out-of-fold logits z, i.e. a
    one-feature logistic regression (scikit-learn). Unweighted, so p follows the real prevalence
    (the class-weighted probe does not), with a small penalty on a for separable z."""
    model = LogisticRegression(
        C=1.0 / (2.0 * PLATT_PENALTY * len(y)), max_iter=LBFGS_MAX_ITER, tol=LBFGS_TOL
    ).fit(np.asarray(z, dtype=np.float64).reshape(-1, 1), y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def grid_edge(value: float, grid: Sequence[float]) -> str | None:
    """'strongest' or 'weakest' when `value` is the grid's largest or smallest penalty."""
    if len(grid) and value == max(grid):
        return "strongest"
    if len(grid) and value == min(grid):
        return "weakest"
    return None


def stratified_folds(
    strata: I64, k: int, seed: int, groups: Sequence[str] | None = None
) -> list[IDX]:
    """k test folds over indices, each stratum spread evenly, whole groups (patients) kept
    together: scikit-learn's StratifiedGroupKFold, shuffled with `seed`."""
    n = len(strata)
    g = np.arange(n) if groups is None else np.asarray(list(groups))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a stratum smaller than k (few ID < 300 sick) is expected
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(splitter.split(np.zeros((n, 1)), strata, g))
    return [np.sort(test).astype(np.intp) for _, test in splits]


def label_safe_folds(
    y: I64, strata: I64, k: int, seed: int, groups: Sequence[str] | None = None
) -> list[IDX]:
    """`stratified_folds` over `strata`, unless a training part would then lack a label (tiny
    cohorts): then over the labels alone, which keeps both labels in every training part."""
    folds = stratified_folds(strata, k, seed, groups)
    everyone = np.arange(len(y))
    if all(len(np.unique(y[np.setdiff1d(everyone, f)])) == 2 for f in folds):
        return folds
    return stratified_folds(y, k, seed, groups)


@dataclass(frozen=True)
class FeatureBank:
    """Every feature set of every patient (`base`: the matrix rendering, which is scored) and
    the same features of other renderings of the same patients (`augment`: extra training rows,
    the frozen-feature form of rendering augmentation)."""

    base: dict[str, F32]
    augment: tuple[dict[str, F32], ...] = ()

    def take(self, idx: IDX) -> FeatureBank:
        return FeatureBank(
            {k: v[idx] for k, v in self.base.items()},
            tuple({k: v[idx] for k, v in a.items()} for a in self.augment),
        )

    def __getitem__(self, name: str) -> F32:
        return self.base[name]


def as_bank(feats: dict[str, F32] | FeatureBank) -> FeatureBank:
    return feats if isinstance(feats, FeatureBank) else FeatureBank(feats)


def design(bank: FeatureBank, name: str, idx: IDX, y: I64) -> tuple[F32, I64]:
    """Training matrix of a feature set: every rendering's rows, and for `last` also the mirrored
    pictures as extra samples (the mirror-symmetric sets need no copies: a copy is identical)."""
    xs, ys = [], []
    for feats in (bank.base, *bank.augment):
        xs.append(feats[name][idx])
        ys.append(y[idx])
        if name == "last":
            xs.append(feats["last@flip"][idx])
            ys.append(y[idx])
    return np.concatenate(xs), np.concatenate(ys)


def criterion(y: I64, old: npt.NDArray[np.bool_], s: F64) -> float:
    """Inner selection score: mean of the AUC on all and on ID < 300 patients (fixed in advance;
    the all-patient AUC alone rewards the era shortcut)."""
    auc_all = metrics.roc_auc(y, s)
    o = np.flatnonzero(old)
    auc_old = metrics.roc_auc(y[o], s[o]) if o.size and len(set(y[o].tolist())) == 2 else auc_all
    return float(0.5 * (auc_all + auc_old))


def clean(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 4)


@dataclass(frozen=True)
class NestedFit:
    """A probe fitted on some patients, with every choice made by inner CV on those patients."""

    probe: Probe  # Platt scaling folded in
    feature_set: str
    threshold: float
    chosen: dict[str, Any]
    inner_prob: F64  # the chosen pair's Platt-scaled inner out-of-fold p(sick) of each patient


def _too_few(bank: FeatureBank, y: I64, sets: Sequence[str], lambdas: Sequence[float]) -> NestedFit:
    """Quick runs with fewer than 2 patients of a class per inner fold: a middle penalty, the
    threshold on training scores, and the record says so."""
    name, lam = sets[0], float(np.median(lambdas))
    x, yy = design(bank, name, np.arange(len(y)), y)
    probe = fit_probe(x, yy, lam)
    p = probe.predict(bank[name])
    thr = calibration.choose_threshold(y, p, TARGET_SENSITIVITY)
    chosen = {
        "feature_set": name,
        "lambda": lam,
        "threshold_basis": "training scores (too few patients for inner folds)",
        **thr.as_dict(),
    }
    return NestedFit(probe, name, thr.value, chosen, p)


def penalty_path(x: F32, y: I64, test: F32, lambdas: Sequence[float]) -> F64:
    """Logits of `test` under the probe fitted on (x, y) for each penalty, strongest first: one
    standardisation, and each fit warm-started from the previous (the objective is convex, so
    this reaches the same optimum as a cold start, in fewer iterations)."""
    scaler = StandardScaler().fit(x)
    xs, ts = scaler.transform(x), scaler.transform(test)
    model = LogisticRegression(
        class_weight="balanced", max_iter=LBFGS_MAX_ITER, tol=LBFGS_TOL, warm_start=True
    )
    out = np.zeros((len(lambdas), len(test)))
    for j, lam in enumerate(lambdas):
        model.set_params(C=1.0 / (2.0 * lam * len(y)))
        model.fit(xs, y)
        out[j] = model.decision_function(ts)
    return out


def inner_logits(
    bank: FeatureBank, name: str, y: I64, folds: list[IDX], lambdas: Sequence[float]
) -> F64:
    """[len(lambdas), n] out-of-fold probe logits of every patient over the inner folds."""
    z = np.zeros((len(lambdas), len(y)))
    everyone = np.arange(len(y))
    for f in folds:
        x, yy = design(bank, name, np.setdiff1d(everyone, f), y)
        z[:, f] = penalty_path(x, yy, bank[name][f], lambdas)
    return z


def _warn_edge(lam: float, lambdas: Sequence[float], where: str) -> str | None:
    edge = grid_edge(lam, lambdas)
    if edge is not None:
        log.warning(
            "%sL2 penalty %.3g chosen at the %s edge of the grid %.3g..%.3g",
            f"{where}: " if where else "",
            lam,
            edge,
            min(lambdas),
            max(lambdas),
        )
    return edge


def nested_fit(
    feats: dict[str, F32] | FeatureBank,
    y: I64,
    old: npt.NDArray[np.bool_],
    seed: int,
    sets: Sequence[str] = ("last",),
    lambdas: Sequence[float] = PROBE_LAMBDAS,
    where: str = "",
) -> NestedFit:
    """Inner stratified CV (label x era) on these patients picks the feature set and the L2
    penalty (`criterion` on inner out-of-fold scores; ties keep the earlier, simpler set and the
    stronger penalty), fits Platt scaling and the threshold (sensitivity >= 0.90) on the chosen
    pair's inner out-of-fold scores, and refits the probe on all of them."""
    bank = as_bank(feats)
    k = int(min(INNER_FOLDS, np.bincount(y, minlength=2).min()))
    if k < 2:
        return _too_few(bank, y, sets, lambdas)
    folds = label_safe_folds(y, 2 * y + old.astype(np.int64), k, seed)
    best: tuple[float, str, float, F64] | None = None
    table: dict[str, dict[str, float]] = {}
    for name in sets:
        path = inner_logits(bank, name, y, folds, lambdas)
        table[name] = {}
        for lam, z in zip(lambdas, path, strict=True):
            score = criterion(y, old, z)
            table[name][f"{lam:.3g}"] = round(score, 4)
            if best is None or score > best[0]:
                best = (score, name, lam, z)
    assert best is not None
    score, name, lam, z = best
    edge = _warn_edge(lam, lambdas, where)
    a, c = fit_platt(z, y)
    inner_prob = 1.0 / (1.0 + np.exp(-(a * z + c)))
    thr = calibration.choose_threshold(y, inner_prob, TARGET_SENSITIVITY)
    x, yy = design(bank, name, np.arange(len(y)), y)
    chosen = {
        "feature_set": name,
        "lambda": lam,
        "lambda_grid_edge": edge,
        "inner_criterion": round(score, 4),
        "inner_auc_all": clean(metrics.roc_auc(y, z)),
        "platt": [round(a, 4), round(c, 4)],
        "inner_scores": table,
        "threshold_basis": f"inner {k}-fold out-of-fold scores (Platt-scaled)",
        **thr.as_dict(),
    }
    probe = fit_probe(x, yy, lam).rescaled(a, c)
    return NestedFit(probe, name, thr.value, chosen, inner_prob)
