"""Frozen backbone features of rendered thermograms: every feature set of `training.bilateral`,
for the ImageNet Lite0 and for its randomly initialised control."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from training import bilateral, train
from training.lite0 import EfficientNetLite0

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


def probe_features(model: EfficientNetLite0, images: Sequence[U8]) -> dict[str, F32]:
    """Every feature set of `training.bilateral` for rendered thermograms (serving's tensors)."""
    return bilateral.extract(model, bilateral.model_tensors(images))


def random_lite0(images: Sequence[U8], seed: int) -> EfficientNetLite0:
    """The pre-training control: a seeded random Lite0 whose BatchNorm statistics are recomputed
    over `images` (no labels are used)."""
    torch.manual_seed(seed)
    model = EfficientNetLite0(num_classes=2).eval()
    train.recalibrate_batchnorm(model, images)
    return model
