"""CNNs trained end to end inside the outer folds (`training.train`'s recipe on in-memory
renders): per fold, 80% of the training patients train and 20% (stratified) place the threshold."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader

from training import calibration, train
from training.models import build_model
from training.presets import TrainPreset
from training.study.cohort import Cohort, StudyError
from training.study.cv import FoldResult
from training.study.probe import TARGET_SENSITIVITY, stratified_folds

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
IDX = npt.NDArray[np.intp]
BATCH = 16


@dataclass(frozen=True)
class CnnBudget:
    """What one fold's training may spend: epochs of `epoch_samples` augmented samples."""

    epochs: int = 4
    epoch_samples: int = 128


def fit_cnn(
    arch: str,
    images: list[U8],
    targets: list[int],
    budget: CnnBudget,
    seed: int,
    weights: str = "none",
) -> torch.nn.Module:
    """`training.train`'s recipe (augmentation, class-weighted CE, AdamW + cosine, BN recompute)
    on in-memory renders; its `run_training` only knows its own 70/30 split."""
    train.seed_everything(seed)
    model = build_model(arch, 2, weights)
    ds = train.ThermoDataset(images, targets, TrainPreset(), seed=seed)
    loss_fn = torch.nn.CrossEntropyLoss(weight=train.class_weights(targets, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget.epochs)
    for epoch in range(budget.epochs):
        ds.epoch = epoch
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = train.epoch_order(len(ds), budget.epoch_samples, gen)
        loader = DataLoader(ds, batch_size=BATCH, sampler=order, drop_last=len(order) % BATCH == 1)
        train.train_one_epoch(model, loader, loss_fn, opt, epoch, budget.epochs)
        sched.step()
        train.recalibrate_batchnorm(model, images)
    return model.eval()


def cv_cnn(
    arch: str,
    images: list[U8],
    cohort: Cohort,
    folds: list[IDX],
    budget: CnnBudget,
    seed: int,
    weights: str = "none",
) -> list[FoldResult]:
    """Per fold: 80% of the training patients train, 20% (stratified) choose the threshold."""
    out = []
    for i, test in enumerate(folds):
        t0 = time.monotonic()
        train_idx = np.setdiff1d(np.arange(len(cohort.y)), test)
        k = int(min(5, np.bincount(cohort.y[train_idx], minlength=2).min()))
        if k < 2:
            raise StudyError("a training fold has fewer than 2 patients of a class; use more data")
        val_idx = train_idx[stratified_folds(cohort.y[train_idx], k, seed + i)[0]]
        fit_idx = np.setdiff1d(train_idx, val_idx)
        model = fit_cnn(
            arch,
            [images[j] for j in fit_idx],
            [int(cohort.y[j]) for j in fit_idx],
            budget,
            seed + i,
            weights,
        )
        p_val = train.predict(model, [images[j] for j in val_idx])[:, 1].astype(np.float64)
        thr = calibration.choose_threshold(cohort.y[val_idx], p_val, TARGET_SENSITIVITY)
        p_test = train.predict(model, [images[j] for j in test])[:, 1].astype(np.float64)
        chosen: dict[str, Any] = {
            "threshold_basis": "inner validation patients (20% of the training fold)"
        }
        chosen.update(thr.as_dict(), seconds=round(time.monotonic() - t0, 1))
        out.append(FoldResult(test, p_test, thr.value, chosen))
        log.info("%s fold %d/%d: %.0f s", arch, i + 1, len(folds), time.monotonic() - t0)
    return out
