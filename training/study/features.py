"""Frozen backbone features of rendered thermograms: every feature set of `training.bilateral`
for an ImageNet EfficientNet-Lite (or its randomly initialised control), cached on disk per
backbone and rendering, because extracting them is the study's slowest step on a CPU."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from pipeline.preprocess import PreprocessConfig
from training import bilateral, train
from training.lite import EfficientNetLite, load_imagenet
from training.study.renderings import Rendering

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
CACHE_VERSION = "1"  # bump when the feature definitions change


def probe_features(model: EfficientNetLite, images: Sequence[U8]) -> dict[str, F32]:
    """Every feature set of `training.bilateral` for rendered thermograms (serving's tensors)."""
    return bilateral.extract(model, bilateral.model_tensors(images))


def random_lite0(images: Sequence[U8], seed: int) -> EfficientNetLite:
    """The pre-training control: a seeded random Lite0 whose BatchNorm statistics are recomputed
    over `images` (no labels are used)."""
    torch.manual_seed(seed)
    model = EfficientNetLite("lite0", num_classes=2).eval()
    train.recalibrate_batchnorm(model, images)
    return model


def save_arrays(path: Path, arrays: dict[str, npt.NDArray[Any]]) -> None:
    """An .npz of named arrays (no pickles)."""
    np.savez(path, **cast(dict[str, Any], arrays))


def data_key(celsius: F32) -> str:
    """A short fingerprint of the matrices (the cache must never serve other patients)."""
    return hashlib.sha256(np.ascontiguousarray(celsius).tobytes()).hexdigest()[:16]


class FeatureCache:
    """Features per (backbone variant, rendering) of one cohort's matrices, on disk."""

    def __init__(self, folder: Path, celsius: F32, cfg: PreprocessConfig) -> None:
        self.folder, self.celsius, self.cfg = folder, celsius, cfg
        self.key = data_key(celsius)
        self._models: dict[str, EfficientNetLite] = {}

    def _path(self, variant: str, rendering: Rendering) -> Path:
        spec = f"{CACHE_VERSION}|{variant}|{rendering}|{self.cfg.model_dump_json()}|{self.key}"
        digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
        return self.folder / f"feats-{variant}-{digest}.npz"

    def model(self, variant: str) -> EfficientNetLite:
        if variant not in self._models:
            self._models[variant] = load_imagenet(variant)
        return self._models[variant]

    def get(self, variant: str, rendering: Rendering) -> dict[str, F32]:
        """Every feature set of every patient for this backbone and rendering (cached)."""
        path = self._path(variant, rendering)
        if path.is_file():
            with np.load(path) as z:
                return {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
        images = [rendering(c, self.cfg) for c in self.celsius]
        feats = probe_features(self.model(variant), images)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        save_arrays(tmp, feats)
        tmp.replace(path)
        log.info("features %s / %s: %d patients", variant, rendering.name, len(images))
        return feats
