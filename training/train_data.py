"""`thermoscreen train`'s data: scan, split by patient (split.json), summarise, render once, and
the dataset whose augmentation depends only on (seed, epoch, index)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from pipeline.preprocess import PreprocessConfig, render
from training import datasets, splits
from training.datasets import limit_images
from training.presets import EvalPreset, TrainPreset
from training.runs import SPLIT_JSON, write_json
from training.train_config import TrainConfig, TrainError

U8 = npt.NDArray[np.uint8]
DEFAULT_LABELS = ("healthy", "sick")


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


def make_split(items: list[Any], cfg: TrainConfig) -> dict[str, Any]:
    """split.json: method, seed, fractions, patient ids per part and counts."""
    s = splits.patient_split(
        items, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    return s.to_dict()


def split_parts(items: list[Any], split: dict[str, Any]) -> dict[str, list[Any]]:
    return splits.Split.from_patient_ids(items, split["patients"]).parts()


# ---------------------------------------------------------------- the run


def split_data(
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
        write_json(out / SPLIT_JSON, split)
    parts = split_parts(items, split)
    check_classes(parts["train"], labels, "train split", data)
    return list(labels), split, parts


def data_summary(data: Path, split: dict[str, Any], parts: dict[str, list[Any]]) -> str:
    """One paragraph: the folder, the split method, and patients/images per class per part."""
    method = split.get("method", "saved")
    lines = [f"data: {data} ({method} split by patient, seed {split.get('seed')})"]
    for name in ("train", "val", "test"):
        s = datasets.summary(parts[name])
        per_class = ", ".join(
            f"{label} {c['patients']} patients / {c['images']} images"
            for label, c in s["classes"].items()
        )
        lines.append(
            f"  {name:<5} {s['patients']:>4} patients {s['images']:>5} images  {per_class}"
        )
    return "\n".join(lines)


def relative_path(path: Path, root: Path) -> str:
    """`path` relative to the data folder `root` (as POSIX text), never an absolute path."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name
