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
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline import DISCLAIMER, __version__
from pipeline.data.dmr import DataError
from pipeline.preprocess import PreprocessConfig, render
from training import datasets, metrics, splits
from training.datasets import limit_images
from training.models import DEFAULT_ARCH, HEADS, ModelBuildError, build_model, check_arch
from training.presets import EvalPreset, TrainPreset

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
DEFAULT_LABELS = ("healthy", "sick")
RUN_JSON = "run.json"
SPLIT_JSON = "split.json"


class TrainError(ValueError):
    """A training request that cannot run; the message is one line naming the fix."""


class TrainConfig(BaseModel):
    """Hyper-parameters of one run, saved in run.json and checked on --resume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field(default=DEFAULT_ARCH, description="torchvision architecture.")
    weights: str = Field(
        default="none", description="Initial weights: none, imagenet or a .pth file."
    )
    epochs: int = Field(
        default=10, ge=1, description="Total epochs (a resumed run stops here too)."
    )
    batch_size: int = Field(default=16, ge=1, description="Images per optimisation step.")
    lr: float = Field(default=1e-3, gt=0, description="AdamW peak learning rate (cosine decay).")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    seed: int = Field(default=0, description="Seed of the split, shuffling, augmentation, init.")
    test_fraction: float = Field(default=0.3, ge=0, lt=1, description="Share of patients in test.")
    val_fraction: float = Field(default=0.0, ge=0, lt=1, description="Share of patients in val.")
    min_epoch_samples: int = Field(
        default=128,
        ge=0,
        description="Small sets: an epoch draws augmented repeats of the training images until it "
        "holds at least this many samples (each image equally often, +-1).",
    )
    workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    max_images: int | None = Field(
        default=None, ge=2, description="Use at most this many images (whole patients; quick runs)."
    )
    preprocessing: PreprocessConfig = Field(
        default_factory=PreprocessConfig, description="Rendering and equalization."
    )


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


def label_space(labels: Sequence[str]) -> tuple[str, ...]:
    """Output order: healthy, sick for DMR-style data; sorted labels otherwise."""
    present = set(labels)
    if present <= set(DEFAULT_LABELS):
        return DEFAULT_LABELS
    return tuple(sorted(present))


def check_classes(items: Sequence[Any], labels: Sequence[str], part: str, data: Path) -> None:
    counts = {label: 0 for label in labels}
    for it in items:
        counts[it.label] += 1
    empty = [label for label, n in counts.items() if n == 0]
    if empty:
        raise TrainError(
            f"{data}: class {empty[0]!r} has no images in the {part} ({counts}); "
            "add images of that class or use a larger --test-fraction/--max-images"
        )


def render_all(items: Sequence[Any], cfg: PreprocessConfig, what: str) -> list[U8]:
    """Parse and render each file once (matrices are slow to parse)."""
    out = []
    for it in tqdm(items, desc=f"render {what}", unit="img", disable=None, leave=False):
        out.append(render(it.load(), cfg))
    return out


class ThermoDataset(Dataset[tuple[torch.Tensor, int]]):
    """Cached renderings -> tensors. Augmentation randomness depends on (seed, epoch, index) only,
    so it is the same with any number of workers and after a resume."""

    def __init__(
        self, images: list[U8], targets: list[int], preset: TrainPreset | EvalPreset, seed: int = 0
    ) -> None:
        self.images = images
        self.targets = targets
        self.preset = preset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Index i >= len() is a repeat of image i % len() with its own augmentation draw."""
        n = len(self.images)
        if isinstance(self.preset, TrainPreset):
            rng = np.random.default_rng([self.seed, self.epoch, i])
            x = self.preset(self.images[i % n], rng)
        else:
            x = self.preset(self.images[i % n])
        return torch.from_numpy(x), self.targets[i % n]


def epoch_order(n: int, min_samples: int, generator: torch.Generator) -> list[int]:
    """Shuffled sample indices of one epoch: whole permutations of the n images, repeated until
    at least `min_samples`; repeat r of image i has index r * n + i (its own augmentation)."""
    repeats = max(1, -(-min_samples // n))
    return [r * n + int(i) for r in range(repeats) for i in torch.randperm(n, generator=generator)]


# ---------------------------------------------------------------- model steps


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
) -> float:
    """One pass over `loader`; returns the mean training loss (the bar shows loss and accuracy)."""
    model.train()
    total, n, right = 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=None, leave=False)
    for x, y in bar:
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        right += int((logits.detach().argmax(dim=1) == y).sum())
        n += len(y)
        bar.set_postfix(loss=f"{total / n:.4f}", acc=f"{right / n:.3f}")
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


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise TrainError(f"{path}: missing; pass a folder written by `thermoscreen train`")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return data


def read_split(run_dir: Path) -> dict[str, list[str]]:
    path = run_dir / SPLIT_JSON
    if not path.is_file():
        raise TrainError(f"{path}: missing; pass a folder written by `thermoscreen train`")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {part: [str(p) for p in data["patients"][part]] for part in ("train", "val", "test")}


def checkpoint_path(run_dir: Path, which: str) -> Path:
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        raise TrainError(f"{path}: missing; train the run first (or use --checkpoint last)")
    return path


def load_run_model(run_dir: Path, which: str = "best") -> nn.Module:
    """The run's architecture with the weights of `best.pt` or `last.pt`, in eval mode."""
    run = read_run(run_dir)
    path = checkpoint_path(run_dir, which)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if list(ckpt.get("labels", run["labels"])) != list(run["labels"]):
        raise TrainError(
            f"{run_dir / RUN_JSON}: labels {run['labels']} differ from the {len(ckpt['labels'])} "
            f"classes {ckpt['labels']} the checkpoint {path.name} outputs; re-train or restore "
            "run.json"
        )
    model = build_model(run["arch"], len(run["labels"]), "none")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise TrainError(f"{path}: does not fit {run['arch']} from run.json ({first})") from exc
    return model.eval()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def make_split(items: list[Any], cfg: TrainConfig) -> dict[str, Any]:
    """split.json: method, seed, fractions, patient ids per part and counts."""
    s = splits.patient_split(
        items, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    return s.to_dict()


def _parts(items: list[Any], split: dict[str, Any]) -> dict[str, list[Any]]:
    return splits.Split.from_patient_ids(items, split["patients"]).parts()


# ---------------------------------------------------------------- the run


def run_training(cfg: TrainConfig, data: Path, out: Path, resume: bool = False) -> dict[str, Any]:
    """Train as configured; returns run.json's content.

    Steps: check a resume, scan and split the data by patient, build the model and optimizer
    (restored from `last.pt` on resume), write run.json, train epoch by epoch (`best.pt` by
    validation AUC, `last.pt` always), then score the test part with `best.pt`.
    """
    started = time.monotonic()
    threads = set_threads()
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out, resume)
    labels, split, parts = _split_data(cfg, data, out, resume)
    index = {label: i for i, label in enumerate(labels)}
    pos = labels.index("sick") if "sick" in labels else len(labels) - 1

    seed_everything(cfg.seed)
    model = build_model(cfg.arch, len(labels), cfg.weights)
    images = {p: render_all(parts[p], cfg.preprocessing, p) for p in ("train", "val")}
    targets = {p: [index[it.label] for it in parts[p]] for p in parts}
    patients = {p: [str(it.patient_id) for it in parts[p]] for p in parts}

    train_preset = TrainPreset()
    train_ds = ThermoDataset(images["train"], targets["train"], train_preset, seed=cfg.seed)
    weights = class_weights(targets["train"], len(labels))
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(cfg.epochs))

    start_epoch, best_key = 0, None
    history: list[dict[str, Any]] = []
    if resume:
        start_epoch, history, best_key = _restore(out, cfg, model, optimizer, scheduler)

    class_weight = dict(zip(labels, [round(float(w), 6) for w in weights], strict=True))
    run = _run_record(cfg, data, labels, pos, split, parts, threads, train_preset, class_weight)
    if start_epoch >= cfg.epochs:
        raise TrainError(f"{out}: already trained {start_epoch} epochs; pass a larger --epochs")
    run["status"] = "training"
    run["best_by"] = (
        "validation AUC (then loss)" if images["val"] else "last epoch (no validation part)"
    )
    run["history"] = history
    if start_epoch:
        run["best_epoch"] = _best_epoch(out)
    _write_json(out / RUN_JSON, run)  # an interrupted run can be resumed and inspected

    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout, and anything else global
        train_ds.epoch = epoch
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        order = epoch_order(len(train_ds), cfg.min_epoch_samples, gen)
        loader = DataLoader(
            train_ds,
            batch_size=cfg.batch_size,
            sampler=order,
            num_workers=cfg.workers,
            drop_last=len(order) > cfg.batch_size and len(order) % cfg.batch_size == 1,
        )
        train_loss = train_one_epoch(model, loader, loss_fn, optimizer, epoch, cfg.epochs)
        scheduler.step()
        recalibrate_batchnorm(model, images["train"])
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": round(train_loss, 6)}
        key = None
        if images["val"]:
            probs = predict(model, images["val"])
            vm = quick_metrics(probs, targets["val"], patients["val"], pos, loss_fn)
            row.update({f"val_{k}": None if np.isnan(v) else round(v, 6) for k, v in vm.items()})
            auc = vm["auc"]
            key = [auc if not np.isnan(auc) else -1.0, -vm["loss"]]
        history.append(row)
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs, _fmt(row))
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "arch": cfg.arch,
            "labels": list(labels),
            "best_key": best_key,
        }
        if key is None or best_key is None or key > best_key:
            best_key = key if key is not None else best_key
            state["best_key"] = best_key
            _save(out / "best.pt", {**state, "best_epoch": epoch + 1})
            run["best_epoch"] = epoch + 1
        _save(out / "last.pt", state)
        run["history"] = history
        _write_json(out / RUN_JSON, run)

    if parts["test"]:
        tm = _test_metrics(
            cfg, out, model, parts["test"], targets["test"], patients["test"], pos, loss_fn
        )
        run["test_metrics"] = {k: (None if np.isnan(v) else round(v, 6)) for k, v in tm.items()}
        log.info("test (best.pt): %s", _fmt(tm))
    run["status"] = "done"
    run["elapsed_s"] = round(time.monotonic() - started, 1)
    _write_json(out / RUN_JSON, run)
    return run


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


def _split_data(
    cfg: TrainConfig, data: Path, out: Path, resume: bool
) -> tuple[list[str], dict[str, Any], dict[str, list[Any]]]:
    """Labels, the patient split (written to split.json, or read back on resume) and its parts."""
    items = datasets.scan(data)
    labels = label_space([it.label for it in items])
    if len(labels) < 2:
        raise TrainError(
            f"{data}: only class {labels[0]!r} present; need images of at least 2 classes"
        )
    check_classes(items, labels, "whole data set", data)
    if cfg.max_images is not None:
        items = limit_images(items, cfg.max_images, cfg.seed)
    if resume:
        split = json.loads((out / SPLIT_JSON).read_text(encoding="utf-8"))
    else:
        try:
            split = make_split(items, cfg)
        except ValueError as exc:
            raise TrainError(f"{data}: cannot split by patient ({exc})") from exc
        _write_json(out / SPLIT_JSON, split)
    parts = _parts(items, split)
    check_classes(parts["train"], labels, "train split", data)
    return list(labels), split, parts


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
    cfg: TrainConfig,
    data: Path,
    labels: list[str],
    pos: int,
    split: dict[str, Any],
    parts: dict[str, list[Any]],
    threads: Any,
    preset: TrainPreset,
    class_weight: dict[str, float],
) -> dict[str, Any]:
    """run.json: what was trained, on what, and how (history and metrics are added later)."""
    return {
        "thermoscreen_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER,
        "config": cfg.model_dump(mode="json"),
        "arch": cfg.arch,
        "head": HEADS[cfg.arch],
        "weights": cfg.weights,
        "labels": list(labels),
        "positive_label": labels[pos],
        "preprocessing": cfg.preprocessing.model_dump(mode="json"),
        "augmentation": preset.describe(),
        "imbalance": {
            "method": "class-weighted cross-entropy (n / (k * n_class), train split)",
            "class_weights": class_weight,
        },
        "optimizer": {"name": "AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        "scheduler": {"name": "cosine (closed form, LambdaLR)", "epochs": cfg.epochs},
        "batchnorm": "running statistics recomputed over the training images after each epoch",
        "epoch_samples": "augmented repeats of the training images up to min_epoch_samples",
        "seed": cfg.seed,
        "threads": threads,
        "data": {
            "source": str(data.resolve()),
            "split": {k: v for k, v in split.items() if k not in ("patients", "summary")},
            "summary": {p: datasets.summary(parts[p]) for p in ("train", "val", "test")},
        },
    }


def _test_metrics(
    cfg: TrainConfig,
    out: Path,
    model: nn.Module,
    items: list[Any],
    targets: list[int],
    patients: list[str],
    pos: int,
    loss_fn: nn.Module,
) -> dict[str, float]:
    """The test part scored once, with best.pt's weights."""
    test_images = render_all(items, cfg.preprocessing, "test")
    model.load_state_dict(
        torch.load(out / "best.pt", map_location="cpu", weights_only=True)["model"]
    )
    probs = predict(model, test_images)
    return quick_metrics(probs, targets, patients, pos, loss_fn)


def _best_epoch(out: Path) -> int:
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    return int(ckpt.get("best_epoch", ckpt["epoch"]))


def _fmt(row: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in row.items()
        if k != "epoch"
    )


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="folder with labels.csv + thermograms"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoints, run.json)"
    )
    parser.add_argument("--arch", default=DEFAULT_ARCH, help=f"one of: {', '.join(HEADS)}")
    parser.add_argument(
        "--weights", default="none", help="none | imagenet (needs internet) | PATH to a .pth file"
    )
    parser.add_argument("--epochs", type=int, default=10, help="total epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init, augmentation")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine decay)")
    parser.add_argument(
        "--test-fraction", type=float, default=0.3, help="share of patients in test"
    )
    parser.add_argument("--val-fraction", type=float, default=0.0, help="share of patients in val")
    win = parser.add_mutually_exclusive_group()
    win.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"), help="Celsius window")
    win.add_argument("--minmax", action="store_true", help="per-frame min-max instead of a window")
    parser.add_argument("--equalization", choices=("global", "clahe", "none"), default="global")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument(
        "--min-epoch-samples",
        type=int,
        default=128,
        help="small sets: repeat the (augmented) training images until an epoch has this many",
    )
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--max-images", type=int, default=None, help="use at most N images")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    window: tuple[float, float] | None = (20.0, 38.0)
    if args.minmax:
        window = None
    elif args.window:
        window = (args.window[0], args.window[1])
    return TrainConfig(
        arch=args.arch,
        weights=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        workers=args.workers,
        min_epoch_samples=args.min_epoch_samples,
        max_images=args.max_images,
        preprocessing=PreprocessConfig(window_c=window, equalization=args.equalization),
    )


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
