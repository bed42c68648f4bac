"""`thermoscreen train`: transfer-learn a torchvision classifier on labelled thermograms.

Read top to bottom: scan the folder, split by patient (saved to split.json), render every file once
(`pipeline.preprocess.render`, cached in memory), then train with class-weighted cross-entropy,
AdamW and a cosine schedule. Each epoch writes `last.pt` (model, optimizer, scheduler, epoch) and,
with a validation part, `best.pt` by validation AUC. `--resume` continues from `last.pt`.

Every random choice of epoch e (shuffling, augmentation, dropout) is seeded from (seed, e), so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import DISCLAIMER, __version__
from pipeline.data.dmr import DataError
from training import datasets, metrics
from training.archs import HEADS, ModelBuildError, check_arch, describe_weights
from training.models import build_model
from training.presets import EvalPreset, TrainPreset
from training.runs import RUN_JSON, best_epoch, checkpoint_path, read_run, save_state, write_json
from training.train_config import TrainConfig, TrainError, config_from_args
from training.train_data import (
    ThermoDataset,
    data_summary,
    epoch_order,
    relative_path,
    render_all,
    split_data,
)

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]


# ---------------------------------------------------------------- seeding, threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads() -> int:
    """Use the cores we have (at most 4: small batches gain nothing beyond), one inter-op thread."""
    n = max(1, min(4, os.cpu_count() or 1))
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # raises when already set in this process
        torch.set_num_interop_threads(1)
    return n


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % 2**31


# ---------------------------------------------------------------- data


def cosine_factor(epochs: int) -> Callable[[int], float]:
    """lr multiplier of epoch e: 0.5 * (1 + cos(pi * e / epochs)). Closed form rather than
    CosineAnnealingLR's recursion, so a run resumed with a larger --epochs follows the new curve."""

    def factor(epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))

    return factor


def class_weights(targets: Sequence[int], n_classes: int) -> torch.Tensor:
    """n / (k * n_c): each class contributes equally to the loss however rare it is."""
    counts = np.bincount(np.asarray(targets), minlength=n_classes).astype(np.float64)
    weights = counts.sum() / (n_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


@torch.no_grad()
def predict(
    model: nn.Module, images: Sequence[U8], batch_size: int = 16
) -> npt.NDArray[np.float32]:
    """Softmax probabilities [N, K] through EvalPreset (serving's tensor)."""
    model.eval()
    preset = EvalPreset()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([preset(im) for im in images[start : start + batch_size]]))
        out.append(torch.softmax(model(x), dim=1).numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Sequence[U8], batch_size: int = 16) -> None:
    """Recompute BatchNorm running statistics as exact averages over the training images.

    With a few hundred steps or fewer, the momentum averages still remember their initial values
    and eval-mode outputs are off; this pass (no gradients, no weight change) fixes that.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not images:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    preset = EvalPreset()
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if len(batch) < 2 and start > 0:
            continue  # a single-image batch gives no variance
        model(torch.from_numpy(np.stack([preset(im) for im in batch])))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    epochs: int,
    bar: tqdm[Any] | None = None,
) -> float:
    """One pass over `loader`; returns the mean training loss. `bar` (one for the whole run: rate
    and time left) advances per batch and shows the epoch, loss and accuracy; without it, the
    epoch gets its own bar."""
    model.train()
    total, n, right = 0.0, 0, 0
    own = bar is None
    if bar is None:
        bar = tqdm(total=len(loader), unit="batch", disable=None, leave=False)
    for x, y in loader:
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        right += int((logits.detach().argmax(dim=1) == y).sum())
        n += len(y)
        bar.update(1)
        bar.set_postfix(
            epoch=f"{epoch + 1}/{epochs}", loss=f"{total / n:.4f}", acc=f"{right / n:.3f}"
        )
    if own:
        bar.close()
    return total / max(n, 1)


def quick_metrics(
    probs: npt.NDArray[np.float32],
    targets: Sequence[int],
    patients: Sequence[str],
    pos: int,
    loss_fn: nn.Module,
) -> dict[str, float]:
    """Loss, per-image and per-patient AUC, accuracy; no intervals (for progress and history)."""
    t = np.asarray(targets)
    y = (t == pos).astype(np.int64)
    log_probs = torch.log(torch.from_numpy(probs).clamp_min(1e-12))
    loss = float(loss_fn(log_probs, torch.from_numpy(t)))  # CE of log p == NLL of p
    _, groups = metrics.group_indices(list(patients))
    pp = metrics.mean_by_group(probs, groups)
    py = np.asarray([y[g[0]] for g in groups])
    return {
        "loss": loss,
        "accuracy": metrics.accuracy(t, np.argmax(probs, axis=1)),
        "auc": metrics.roc_auc(y, probs[:, pos]),
        "patient_auc": metrics.roc_auc(py, pp[:, pos]),
    }


# ---------------------------------------------------------------- run directory


@dataclass
class Prepared:
    """The run's data, split by patient and rendered once: labels, parts, images, targets."""

    labels: list[str]
    pos: int
    split: dict[str, Any]
    parts: dict[str, list[Any]]
    images: dict[str, list[U8]]
    targets: dict[str, list[int]]
    patients: dict[str, list[str]]


@dataclass
class Fit:
    """What one epoch needs: the model, its data, loss, optimizer and schedule."""

    model: nn.Module
    dataset: ThermoDataset
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    class_weights: torch.Tensor


def run_training(cfg: TrainConfig, data: Path, out: Path, resume: bool = False) -> dict[str, Any]:
    """Train as configured; returns run.json's content.

    Steps: check a resume, scan and split the data by patient (summarised in the log), build the
    model and optimizer (restored from `last.pt` on resume), write run.json, train epoch by epoch
    (`best.pt` by validation AUC, `last.pt` always), then score the test part with `best.pt`.
    """
    started = time.monotonic()
    threads = set_threads()
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out, resume)
    prep = _prepare(cfg, data, out, resume)
    seed_everything(cfg.seed)
    log.info("model: %s, weights %s", cfg.arch, describe_weights(cfg.weights))
    fit = _make_fit(cfg, build_model(cfg.arch, len(prep.labels), cfg.weights), prep)
    start_epoch, best_key = 0, None
    history: list[dict[str, Any]] = []
    if resume:
        start_epoch, history, best_key = _restore(out, cfg, fit.model, fit.optimizer, fit.scheduler)
    if start_epoch >= cfg.epochs:
        raise TrainError(f"{out}: already trained {start_epoch} epochs; pass a larger --epochs")
    run = _run_record(cfg, data, prep, threads, fit)
    run["history"] = history
    if start_epoch:
        run["best_epoch"] = best_epoch(out)
    write_json(out / RUN_JSON, run)  # an interrupted run can be resumed and inspected
    _train_epochs(cfg, out, fit, prep, run, start_epoch, best_key)
    if prep.parts["test"]:
        tm = _test_metrics(cfg, out, fit, prep)
        run["test_metrics"] = {k: (None if np.isnan(v) else round(v, 6)) for k, v in tm.items()}
        log.info("test (best.pt): %s", _fmt(tm))
    run["status"] = "done"
    run["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(out / RUN_JSON, run)
    return run


def _prepare(cfg: TrainConfig, data: Path, out: Path, resume: bool) -> Prepared:
    """Split by patient, log what each part holds, render the train and val images once."""
    labels, split, parts = split_data(cfg, data, out, resume)
    log.info("%s", data_summary(data, split, parts))
    index = {label: i for i, label in enumerate(labels)}
    return Prepared(
        labels=labels,
        pos=labels.index("sick") if "sick" in labels else len(labels) - 1,
        split=split,
        parts=parts,
        images={p: render_all(parts[p], cfg.preprocessing, p) for p in ("train", "val")},
        targets={p: [index[it.label] for it in parts[p]] for p in parts},
        patients={p: [str(it.patient_id) for it in parts[p]] for p in parts},
    )


def _make_fit(cfg: TrainConfig, model: nn.Module, prep: Prepared) -> Fit:
    weights = class_weights(prep.targets["train"], len(prep.labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Fit(
        model=model,
        dataset=ThermoDataset(prep.images["train"], prep.targets["train"], TrainPreset(), cfg.seed),
        loss_fn=nn.CrossEntropyLoss(weight=weights),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(cfg.epochs)),
        class_weights=weights,
    )


def _loader(cfg: TrainConfig, fit: Fit, epoch: int) -> DataLoader[Any]:
    """Epoch `epoch`'s shuffled, seeded sample order (augmented repeats of small sets)."""
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout, and anything else global
    fit.dataset.epoch = epoch
    gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    order = epoch_order(len(fit.dataset), cfg.min_epoch_samples, gen)
    return DataLoader(
        fit.dataset,
        batch_size=cfg.batch_size,
        sampler=order,
        num_workers=cfg.workers,
        drop_last=len(order) > cfg.batch_size and len(order) % cfg.batch_size == 1,
    )


def _train_epochs(
    cfg: TrainConfig,
    out: Path,
    fit: Fit,
    prep: Prepared,
    run: dict[str, Any],
    start: int,
    best_key: Any,
) -> None:
    """Epochs `start`..`cfg.epochs` under one progress bar (rate and time left), each followed by
    the BatchNorm recompute, the validation score and the checkpoints."""
    steps = len(_loader(cfg, fit, start))
    bar = tqdm(total=steps * (cfg.epochs - start), unit="batch", desc="training", disable=None)
    t0 = time.monotonic()
    for epoch in range(start, cfg.epochs):
        loss = train_one_epoch(
            fit.model, _loader(cfg, fit, epoch), fit.loss_fn, fit.optimizer, epoch, cfg.epochs, bar
        )
        fit.scheduler.step()
        recalibrate_batchnorm(fit.model, prep.images["train"])
        row, key = _validate(fit, prep, epoch, loss)
        run["history"].append(row)
        done = epoch + 1 - start
        left = (time.monotonic() - t0) / done * (cfg.epochs - epoch - 1)
        log.info("epoch %d/%d %s (%.0f s left)", epoch + 1, cfg.epochs, _fmt(row), left)
        best_key = _checkpoint(cfg, out, fit, prep, run, epoch, key, best_key)
    bar.close()


def _validate(fit: Fit, prep: Prepared, epoch: int, loss: float) -> tuple[dict[str, Any], Any]:
    """The epoch's history row and its ranking key (validation AUC, then loss; None without val)."""
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": round(loss, 6)}
    if not prep.images["val"]:
        return row, None
    probs = predict(fit.model, prep.images["val"])
    vm = quick_metrics(probs, prep.targets["val"], prep.patients["val"], prep.pos, fit.loss_fn)
    row.update({f"val_{k}": None if np.isnan(v) else round(v, 6) for k, v in vm.items()})
    auc = vm["auc"]
    return row, [auc if not np.isnan(auc) else -1.0, -vm["loss"]]


def _checkpoint(
    cfg: TrainConfig,
    out: Path,
    fit: Fit,
    prep: Prepared,
    run: dict[str, Any],
    epoch: int,
    key: Any,
    best_key: Any,
) -> Any:
    """last.pt always, best.pt when the key improves (or without validation); run.json."""
    state = {
        "model": fit.model.state_dict(),
        "optimizer": fit.optimizer.state_dict(),
        "scheduler": fit.scheduler.state_dict(),
        "epoch": epoch + 1,
        "history": run["history"],
        "arch": cfg.arch,
        "labels": list(prep.labels),
        "best_key": best_key,
    }
    if key is None or best_key is None or key > best_key:
        best_key = key if key is not None else best_key
        state["best_key"] = best_key
        save_state(out / "best.pt", {**state, "best_epoch": epoch + 1})
        run["best_epoch"] = epoch + 1
    save_state(out / "last.pt", state)
    write_json(out / RUN_JSON, run)
    return best_key


def _check_resume(cfg: TrainConfig, out: Path, resume: bool) -> None:
    """--resume needs the run's settings (only --epochs may change); a new run, an empty --out."""
    if resume:
        previous = read_run(out)
        old = TrainConfig.model_validate(previous["config"])
        if old.model_copy(update={"epochs": cfg.epochs}) != cfg:
            raise TrainError(
                f"{out / RUN_JSON}: --resume with different settings than the run was started "
                "with; use the same flags (only --epochs may change) or a new --out"
            )
    elif (out / "last.pt").exists():
        raise TrainError(f"{out}: already holds a run; pass --resume to continue it or a new --out")


def _restore(
    out: Path,
    cfg: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> tuple[int, list[dict[str, Any]], Any]:
    """Model, optimizer and schedule from last.pt; returns (epochs done, history, best key)."""
    ckpt = torch.load(checkpoint_path(out, "last"), map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    resumed = cosine_factor(cfg.epochs)(scheduler.last_epoch)  # --epochs may have grown
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * resumed
    log.info("resuming %s at epoch %d of %d", out, int(ckpt["epoch"]) + 1, cfg.epochs)
    return int(ckpt["epoch"]), list(ckpt["history"]), ckpt.get("best_key")


def _run_record(
    cfg: TrainConfig, data: Path, prep: Prepared, threads: Any, fit: Fit
) -> dict[str, Any]:
    """run.json: what was trained, on what, and how (history and metrics are added later)."""
    weights = [round(float(w), 6) for w in fit.class_weights]
    return {
        "thermoscreen_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER,
        "status": "training",
        "config": cfg.model_dump(mode="json"),
        "arch": cfg.arch,
        "head": HEADS[cfg.arch],
        "weights": cfg.weights,
        "weights_described": describe_weights(cfg.weights),
        "labels": list(prep.labels),
        "positive_label": prep.labels[prep.pos],
        "preprocessing": cfg.preprocessing.model_dump(mode="json"),
        "augmentation": fit.dataset.preset.describe(),
        "imbalance": {
            "method": "class-weighted cross-entropy (n / (k * n_class), train split)",
            "class_weights": dict(zip(prep.labels, weights, strict=True)),
        },
        "optimizer": {"name": "AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        "scheduler": {"name": "cosine (closed form, LambdaLR)", "epochs": cfg.epochs},
        "batchnorm": "running statistics recomputed over the training images after each epoch",
        "epoch_samples": "augmented repeats of the training images up to min_epoch_samples",
        "best_by": "validation AUC (then loss)"
        if prep.images["val"]
        else "last epoch (no validation part)",
        "seed": cfg.seed,
        "threads": threads,
        "data": {
            "source": str(data.resolve()),
            "folder": data.resolve().name,
            "files": {
                p: [relative_path(it.path, data) for it in prep.parts[p]]
                for p in ("train", "val", "test")
            },
            "split": {k: v for k, v in prep.split.items() if k not in ("patients", "summary")},
            "summary": {p: datasets.summary(prep.parts[p]) for p in ("train", "val", "test")},
        },
    }


def _test_metrics(cfg: TrainConfig, out: Path, fit: Fit, prep: Prepared) -> dict[str, float]:
    """The test part scored once, with best.pt's weights."""
    test_images = render_all(prep.parts["test"], cfg.preprocessing, "test")
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    fit.model.load_state_dict(best["model"])
    probs = predict(fit.model, test_images)
    t = prep.targets["test"]
    return quick_metrics(probs, t, prep.patients["test"], prep.pos, fit.loss_fn)


def _fmt(row: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in row.items()
        if k != "epoch"
    )


# ---------------------------------------------------------------- CLI


def main(args: argparse.Namespace) -> int:
    try:
        check_arch(args.arch)
        cfg = config_from_args(args)
        if not args.data.is_dir():
            raise TrainError(f"{args.data}: data folder not found; pass --data DIR with labels.csv")
        run = run_training(cfg, args.data, args.out, resume=args.resume)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        print(f"thermoscreen train: --{field.replace('_', '-')}: {err['msg']}", file=sys.stderr)
        return 2
    except (DataError, ModelBuildError, TrainError) as exc:
        print(f"thermoscreen train: {exc}", file=sys.stderr)
        return 2
    tm = run.get("test_metrics")
    print(f"run: {args.out} (best epoch {run['best_epoch']}, {run['elapsed_s']} s)")
    if tm:
        print(f"test: auc={tm['auc']} patient_auc={tm['patient_auc']} accuracy={tm['accuracy']}")
    return 0
