"""End-to-end candidates under the same nested protocol as the probes: inside each outer training
fold, one network per inner fold is trained on the other inner folds (rendering augmentation and
the training recipe of `training.train`), and scored after every epoch on its inner validation
patients and on the outer test patients (the picture and its mirror, and an 8-bit JPEG of it).

From those curves, and only from the inner validation scores:
- early stopping: the epoch with the best inner out-of-fold criterion (AUC all + ID < 300) / 2;
- the fold ensemble: the outer test score is the mean of the inner networks at that epoch (the
  shipped model averages the same way inside one ONNX graph);
- test-time flip averaging: the mean of a picture's and its mirror's scores;
- the threshold (sensitivity >= 0.90) on the inner out-of-fold scores.

Each inner network's curves are kept on disk: a stopped run resumes where it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.preprocess import PreprocessConfig
from training import calibration, train
from training.models import build_model
from training.presets import TrainPreset
from training.study.cohort import Cohort
from training.study.cv import FoldResult, patient_folds
from training.study.features import save_arrays
from training.study.probe import TARGET_SENSITIVITY, criterion, stratified_folds
from training.study.renderings import MATRIX, TEST_JPEG, random_rendering
from training.train_data import epoch_order

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
IDX = npt.NDArray[np.intp]
JPEG = TEST_JPEG[0]  # the JPEG rendering scored every epoch


@dataclass(frozen=True)
class FineTune:
    """One end-to-end recipe (the candidate's name says it)."""

    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"
    epochs: int = 8  # the longest training; early stopping picks an epoch up to this
    epoch_samples: int = 96
    inner_folds: int = 3
    render_augment: bool = True
    lr: float = 1e-3
    batch: int = 16

    @property
    def name(self) -> str:
        aug = " + rendering augmentation" if self.render_augment else ""
        return f"{self.arch} fine-tuned from {self.weights}{aug}"


class CelsiusDataset(Dataset[tuple[torch.Tensor, int]]):
    """Matrices rendered per draw (a random rendering when augmenting), then `TrainPreset`; every
    random choice depends on (seed, epoch, index) only."""

    def __init__(self, celsius: F32, targets: Sequence[int], augment: bool, seed: int) -> None:
        self.celsius, self.targets, self.augment, self.seed = celsius, list(targets), augment, seed
        self.epoch = 0
        self.cfg, self.preset = PreprocessConfig(), TrainPreset()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.targets)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        c = self.celsius[i % n]
        gray = random_rendering(c, self.cfg, rng) if self.augment else MATRIX(c, self.cfg)
        return torch.from_numpy(self.preset(gray, rng)), self.targets[i % n]


def _p(model: torch.nn.Module, images: Sequence[U8]) -> F64:
    return train.predict(model, list(images))[:, 1].astype(np.float64)


@dataclass(frozen=True)
class Views:
    """What is scored after every epoch: inner validation and outer test renders."""

    val: list[U8]
    test: list[U8]
    test_jpeg: list[U8]

    def score(self, model: torch.nn.Module) -> dict[str, F64]:
        flip = [np.ascontiguousarray(im[:, ::-1]) for im in self.val + self.test]
        f = _p(model, flip)
        nv = len(self.val)
        return {
            "val": _p(model, self.val), "val_flip": f[:nv],
            "test": _p(model, self.test), "test_flip": f[nv:],
            "test_jpeg": _p(model, self.test_jpeg),
        }  # fmt: skip


def train_curves(
    ft: FineTune, celsius: F32, y: npt.NDArray[np.int64], fit_idx: IDX, views: Views, seed: int
) -> dict[str, F64]:
    """Train one network on `fit_idx`; [epochs, n] scores of every view after every epoch."""
    train.seed_everything(seed)
    model = build_model(ft.arch, 2, ft.weights)
    targets = [int(y[i]) for i in fit_idx]
    ds = CelsiusDataset(celsius[fit_idx], targets, ft.render_augment, seed)
    loss_fn = torch.nn.CrossEntropyLoss(weight=train.class_weights(targets, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=ft.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, train.cosine_factor(ft.epochs))
    plain = [MATRIX(c, ds.cfg) for c in celsius[fit_idx]]
    curves: dict[str, list[F64]] = {}
    for epoch in range(ft.epochs):
        ds.epoch = epoch
        order = epoch_order(len(ds), ft.epoch_samples, torch.Generator().manual_seed(seed + epoch))
        loader = DataLoader(
            ds, batch_size=ft.batch, sampler=order, drop_last=len(order) % ft.batch == 1
        )
        train.train_one_epoch(model, loader, loss_fn, opt, epoch, ft.epochs)
        sched.step()
        train.recalibrate_batchnorm(model, plain)
        for k, v in views.score(model).items():
            curves.setdefault(k, []).append(v)
    return {k: np.stack(v) for k, v in curves.items()}


class FineTuneRun:
    """The nested fine-tuning of one recipe over split seeds, resumable per inner network."""

    def __init__(self, ft: FineTune, cohort: Cohort, celsius: F32, folder: Path) -> None:
        self.ft, self.cohort, self.celsius, self.folder = ft, cohort, celsius, folder
        cfg = PreprocessConfig()
        self.matrix = [MATRIX(c, cfg) for c in celsius]
        self.jpeg = [JPEG(c, cfg) for c in celsius]

    def _curves(
        self, seed: int, fold: int, j: int, fit_idx: IDX, val_idx: IDX, test: IDX
    ) -> dict[str, F64]:
        safe = "".join(ch if ch.isalnum() else "_" for ch in self.ft.name)
        path = self.folder / f"{safe}-s{seed}-f{fold}-i{j}.npz"
        if path.is_file():
            with np.load(path) as z:
                return {k: np.asarray(z[k]) for k in z.files}
        t0 = time.monotonic()
        views = Views(
            [self.matrix[i] for i in val_idx],
            [self.matrix[i] for i in test],
            [self.jpeg[i] for i in test],
        )
        curves = train_curves(
            self.ft, self.celsius, self.cohort.y, fit_idx, views, 1000 * seed + 10 * fold + j
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        save_arrays(path.with_suffix(".tmp.npz"), curves)
        path.with_suffix(".tmp.npz").replace(path)
        log.info(
            "%s seed %d fold %d net %d: %.0f s", self.ft.name, seed, fold, j, time.monotonic() - t0
        )
        return curves

    def fold(self, seed: int, fold: int, test: IDX) -> dict[str, Any]:
        """Every inner network of one outer fold: their curves and inner out-of-fold scores."""
        c = self.cohort
        train_idx = np.setdiff1d(np.arange(len(c.y)), test)
        inner = stratified_folds(c.strata[train_idx], self.ft.inner_folds, seed + fold)
        oof = {k: np.zeros((self.ft.epochs, len(train_idx))) for k in ("val", "val_flip")}
        tests: dict[str, list[F64]] = {}
        for j, v in enumerate(inner):
            fit_local = np.setdiff1d(np.arange(len(train_idx)), v)
            curves = self._curves(seed, fold, j, train_idx[fit_local], train_idx[v], test)
            for k in oof:
                oof[k][:, v] = curves[k]
            for k in ("test", "test_flip", "test_jpeg"):
                tests.setdefault(k, []).append(curves[k])
        return {
            "train_idx": train_idx,
            "oof": oof,
            "tests": {k: np.mean(v, axis=0) for k, v in tests.items()},
        }


def rows_of_fold(
    cohort: Cohort, f: dict[str, Any], test: IDX, epochs: int, fixed_epoch: int
) -> dict[str, FoldResult]:
    """The candidate rows one outer fold gives: early stopping with and without flip
    averaging, and the fixed-length recipe (no early stopping), each a fold ensemble."""
    tr = f["train_idx"]
    y, old = cohort.y[tr], cohort.old[tr]
    out = {}
    for name, tta in (("early stopping", False), ("early stopping + flip averaging", True)):
        oof = (f["oof"]["val"] + f["oof"]["val_flip"]) / 2 if tta else f["oof"]["val"]
        crits = [criterion(y, old, oof[e]) for e in range(epochs)]
        best = int(np.argmax(crits))
        out[name] = _row(
            cohort,
            f,
            test,
            oof,
            best,
            tta,
            {"epoch": best + 1, "inner_criterion": round(crits[best], 4)},
        )
    e = min(fixed_epoch, epochs) - 1
    out[f"{fixed_epoch} epochs, no early stopping"] = _row(
        cohort, f, test, f["oof"]["val"], e, False, {"epoch": e + 1}
    )
    return out


def _row(
    cohort: Cohort,
    f: dict[str, Any],
    test: IDX,
    oof: F64,
    e: int,
    tta: bool,
    chosen: dict[str, Any],
) -> FoldResult:
    t = f["tests"]
    prob = (t["test"][e] + t["test_flip"][e]) / 2 if tta else t["test"][e]
    thr = calibration.choose_threshold(cohort.y[f["train_idx"]], oof[e], TARGET_SENSITIVITY)
    extra = {JPEG.name: t["test_jpeg"][e]}
    return FoldResult(
        test, prob, thr.value, {**chosen, **thr.as_dict()}, f["train_idx"], extra, oof[e]
    )


def run_fine_tune(
    ft: FineTune,
    cohort: Cohort,
    celsius: F32,
    folder: Path,
    seeds: Sequence[int],
    fixed_epoch: int = 4,
) -> dict[str, dict[int, list[FoldResult]]]:
    """Every row of the recipe per split seed (each a list of outer-fold results)."""
    run = FineTuneRun(ft, cohort, celsius, folder)
    out: dict[str, dict[int, list[FoldResult]]] = {}
    for seed in seeds:
        for i, test in enumerate(patient_folds(cohort, 5, seed)):
            rows = rows_of_fold(cohort, run.fold(seed, i, test), test, ft.epochs, fixed_epoch)
            for name, r in rows.items():
                out.setdefault(f"{ft.name}, fold ensemble, {name}", {}).setdefault(seed, []).append(
                    r
                )
    return out
